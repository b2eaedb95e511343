//! edge-node: an eBPF/XDP-accelerated edge server. The library holds everything; the
//! binary (`main.rs`) only parses the command line.
//!
//! Modules depend downward only, with no import cycles (`layering` checks it). The
//! layers, top to bottom:
//!
//! 1. `app`: the running node, built from the configuration;
//! 2. `admin`: the operator's API over everything below;
//! 3. `server`: listeners and transport, each request handed to the pipeline;
//! 4. `pipeline`: the phases and handlers a configuration builds, a request's whole life;
//! 5. `config`: the file, made of the settings of the modules below (next to each), plus
//!    `[http]` and `[admin]`, which the pipeline reads too;
//! 6. `handlers` (proxy, demo, function, kv, rooms, graphql), then `phases`;
//! 7. `request` (the context, the `Phase` and `Handler` traits) and `metrics`;
//! 8. `functions` (WebAssembly components; over `upstream` and `kv`), `graphql` (over `kv` and
//!    `upstream`), `rooms` (WebSocket
//!    rooms; over `kv`), `kv` (the durable store and its namespaces), `auth`, `upstream`,
//!    `cache`, `policy`, `intent`, `xdp`, `limits` (each over only those after it);
//! 9. leaves, the small helpers everything shares: `body` (over `error`), `error`,
//!    `headers` (names and value parsers), `target`, `tls`, `workers`, `sync`,
//!    `duration`, `clock`, `hash`, `upgrade` (the sockets a binary upgrade hands over),
//!    `redis_link` (a connection to the Redis a configuration names), `secret`.

pub mod acme;
pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
pub mod duration;
pub mod error;
pub mod fleet;
pub mod functions;
pub mod graphql;
pub mod handlers;
pub mod hash;
pub mod headers;
pub mod intent;
pub mod kv;
#[cfg(test)]
mod layering;
pub mod limits;
pub mod metrics;
pub mod otel;
pub mod phases;
pub mod pipeline;
pub mod policy;
pub mod redis_link;
pub mod request;
pub mod rooms;
pub mod secret;
pub mod server;
pub mod sync;
pub mod target;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod workers;
pub mod xdp;
