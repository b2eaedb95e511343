//! edge-node benchmarks. Each one runs edge-node and its peers side by side in the same
//! run, interleaved, and reports medians and ratios; `--write` puts the report into
//! bench/RESULTS.md. Machines here are small and noisy: only same-run ratios mean much.

mod cache;
mod compress;
mod cost;
mod fleet;
mod flood;
mod functions;
mod graphql;
mod h3;
mod intent;
mod kv;
mod proxy;
mod report;
mod rooms;
mod rooms_load;
mod security;
mod sys;

use anyhow::Result;
use clap::{Parser, Subcommand};

// The node's allocator (edge-node/src/main.rs): what runs in this process (the in-process
// function instance cost, above all) is measured as the node runs it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "edge-node benchmarks (run as root)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-packet cost of every XDP verdict path (BPF_PROG_TEST_RUN with repeat) against
    /// an empty program and xdp-filter.
    XdpCost(cost::Args),
    /// A flood over veth into a namespace: drops per second and receive-CPU ns per packet
    /// for edge-node against iptables, nftables, xdp-filter and a bare XDP_DROP.
    XdpFlood(flood::Args),
    /// HTTP pass-through proxying of 1 KiB and 64 KiB responses from one origin: req/s,
    /// p50 and p99 for edge-node against nginx and haproxy, with wrk and h2load, and the
    /// origin served directly as the ceiling.
    Proxy(proxy::Args),
    /// Cache hits of 1 KiB and 64 KiB responses: req/s, p50 and p99 for edge-node's
    /// `[route.cache]` against nginx proxy_cache and varnish, with wrk and h2load; memory
    /// per cached object; the miss path against a route without a cache.
    Cache(cache::Args),
    /// WebAssembly functions: edge-node running hello.wasm on a route against `wasmtime
    /// serve` running it, the demo handler as baseline; the cost of one instance in
    /// process; cold start and deploy times.
    Functions(functions::Args),
    /// HTTP/3 against HTTP/2 and HTTP/1.1 on the same route (quinn + h3 client).
    H3(h3::Args),
    /// Intent inference latency (p50/p99) and end-to-end req/s with personalization and
    /// intent prediction on against off.
    Intent(intent::Args),
    /// KV namespaces: GET and PUT of 1 KiB values against Redis GET / SET
    /// (`redis-benchmark`, `appendfsync everysec`) at 32 and 256 connections; CPU per
    /// request; acknowledged writes after a SIGKILL within the sync window.
    Kv(kv::Args),
    /// Rooms: one room of 1000 WebSocket members and 1000 rooms of 2: messages
    /// delivered per second, delivery latency p50/p99, CPU per delivery, memory per
    /// member (the load generator is `rooms-load`, a process of its own).
    Rooms(rooms::Args),
    /// The rooms benchmark's load generator (started by `rooms`; speaks lines on
    /// stdin/stdout).
    #[command(hide = true)]
    RoomsLoad(rooms_load::LoadArgs),
    /// GraphQL over KV: a query resolving `user(id)` from a `[[kv]]` namespace against
    /// the same record served by a KV GET on the same node (wrk, random ids).
    Graphql(graphql::Args),
    /// The security phases: criterion costs, auth on/off requests/s, escalation latency.
    Security(security::Args),
    /// The fleet: propagation delay of an escalation to the other nodes' XDP tries
    /// (p50, p99), and requests/s with fleet rate limits against local ones.
    Fleet(fleet::Args),
    /// Compression: CPU per compressed response and ratio, edge-node against nginx's
    /// gzip and brotli modules on the same HTML and JSON at the same levels.
    Compression(compress::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::XdpCost(args) => cost::run(args),
        Cmd::XdpFlood(args) => flood::run(args),
        Cmd::Proxy(args) => proxy::run(args),
        Cmd::Cache(args) => cache::run(args),
        Cmd::Security(args) => security::run(args),
        Cmd::H3(args) => h3::run(args),
        Cmd::Functions(args) => functions::run(args),
        Cmd::Intent(args) => intent::run(args),
        Cmd::Kv(args) => kv::run(args),
        Cmd::Rooms(args) => rooms::run(args),
        Cmd::RoomsLoad(args) => rooms_load::run(args),
        Cmd::Graphql(args) => graphql::run(args),
        Cmd::Compression(args) => compress::run(args),
        Cmd::Fleet(args) => fleet::run(args),
    }
}
