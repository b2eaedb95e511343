//! edge-node: an eBPF/XDP-accelerated edge server. The library holds everything; the
//! binary (`main.rs`) only parses the command line.

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod cache;
pub mod config;
pub mod error;
pub mod functions;
pub mod headers;
pub mod intent;
pub mod limits;
pub mod phases;
pub mod pipeline;
pub mod policy;
pub mod server;
pub mod sync;
pub mod target;
pub mod upstream;
pub mod xdp;
