//! edge-node's integration suites, one module each, in one test binary.
//! Run a single suite with `cargo test -p edge-tests --test integration <suite>::`.

mod acme;
mod cache;
mod cache_http;
mod compression;
mod fleet;
mod functions;
mod functions_kv;
mod graphql;
mod http3;
mod http_protocol;
mod http_proxy;
mod intent;
mod kv;
mod package;
mod personalize;
mod pipeline;
mod request_target;
mod rooms;
mod security;
mod service;
mod shield;
mod tls;
mod traces;
mod transport;
mod upgrade;
mod upstreams;
mod xdp_prog;
mod xdp_veth;
