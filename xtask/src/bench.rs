//! `cargo xtask bench …`: installs the peers, builds edge-node and the bench runner in
//! release mode, and runs the benchmark as root; `--write` records it in bench/RESULTS.md.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::{cargo, toolchain};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Per-packet cost of every XDP verdict path against an empty program and xdp-filter
    /// (BPF_PROG_TEST_RUN with repeat).
    XdpCost(Common),
    /// A flood over veth: drops/s and receive-CPU ns/packet for edge-node against
    /// iptables, nftables, xdp-filter and a bare XDP_DROP.
    XdpFlood(Common),
    /// Both XDP benchmarks.
    Xdp(Common),
    /// HTTP pass-through proxying (1 KiB and 64 KiB, wrk and h2load, 32 and 256
    /// connections): edge-node against nginx and haproxy, the origin direct as ceiling.
    Proxy(Common),
    /// Caching reverse proxies serving cache hits (1 KiB and 64 KiB, wrk and h2load, 32
    /// and 256 connections): edge-node `[route.cache]` against nginx proxy_cache and
    /// varnish; memory per cached object; the miss path against pass-through.
    Cache(Common),
    /// Security phases: their cost per request (criterion), requests/s with auth off and
    /// on, and the time from crossing the drop threshold to XDP drops.
    Security(Common),
    /// WebAssembly functions: edge-node running hello.wasm on a route against `wasmtime
    /// serve` running it (the demo handler as baseline); the cost of one instance; cold
    /// start and deploy times.
    Functions(Common),
    /// KV namespaces: GET and PUT of 1 KiB values (32 and 256 connections) against Redis
    /// GET / SET with `appendfsync everysec`; CPU per request; durability within the
    /// sync window after a SIGKILL.
    Kv(Common),
    /// Rooms: one room of 1000 WebSocket members and 1000 rooms of 2: messages delivered
    /// per second, delivery latency, CPU per delivery, memory per member.
    Rooms(Common),
    /// GraphQL over KV: a query resolving `user(id)` from a `[[kv]]` namespace against
    /// the KV GET of the same record on the same node (wrk).
    Graphql(Common),
    /// Compression: CPU per compressed response and ratio, edge-node against nginx's
    /// gzip and brotli modules on the same HTML and JSON at the same levels.
    Compression(Common),
    /// The fleet: propagation of an escalation to the other nodes' XDP tries (p50, p99
    /// of 100 trials), and req/s with fleet rate limits against local ones.
    Fleet(Common),
    /// HTTP/3 against HTTP/2 and HTTP/1.1 on one route: req/s, p50, p99.
    H3(Common),
    /// Intent inference latency p50/p99 (criterion) and end-to-end req/s with
    /// personalization and intent prediction on against off.
    Intent(Common),
}

#[derive(Args, Clone)]
pub struct Common {
    /// Rounds (default: the benchmark's own).
    #[arg(long)]
    rounds: Option<usize>,
    /// Do not write bench/RESULTS.md (print only).
    #[arg(long)]
    no_write: bool,
    /// More arguments for the benchmark itself (after `--`; see `edge-bench <name> --help`).
    #[arg(last = true)]
    args: Vec<String>,
}

fn run_bench(name: &str, c: &Common) -> Result<()> {
    run_bench_with(name, c, &[])
}

fn run_bench_with(name: &str, c: &Common, extra: &[&str]) -> Result<()> {
    let rounds = c.rounds.map(|r| r.to_string());
    let mut args = vec![
        "run",
        "--release",
        "--quiet",
        "--package",
        "edge-bench",
        "--",
        name,
    ];
    if let Some(r) = &rounds {
        args.extend(["--rounds", r.as_str()]);
    }
    if !c.no_write {
        args.push("--write");
    }
    args.extend_from_slice(extra);
    args.extend(c.args.iter().map(String::as_str));
    cargo(&args)
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    // Each benchmark installs only its own peers and load generators.
    if matches!(
        cmd,
        BenchCmd::Proxy(_) | BenchCmd::H3(_) | BenchCmd::Intent(_)
    ) {
        toolchain::ensure_proxy_bench_packages()?;
    } else if matches!(cmd, BenchCmd::Cache(_)) {
        toolchain::ensure_proxy_bench_packages()?;
        toolchain::ensure_cache_bench_packages()?;
    } else if matches!(cmd, BenchCmd::Functions(_)) {
        toolchain::ensure_proxy_bench_packages()?;
        toolchain::ensure_wasmtime()?;
        // hello.wasm and echo.wasm, from tests/components.
        crate::components::build_all()?;
    } else if matches!(cmd, BenchCmd::Kv(_) | BenchCmd::Fleet(_)) {
        toolchain::ensure_kv_bench_packages()?;
    } else if matches!(cmd, BenchCmd::Compression(_)) {
        toolchain::ensure_proxy_bench_packages()?;
        toolchain::ensure_compression_bench_packages()?;
    } else if matches!(cmd, BenchCmd::Graphql(_)) {
        toolchain::ensure_graphql_bench_packages()?;
    } else if matches!(cmd, BenchCmd::Rooms(_)) {
        // Its load generator is the bench runner itself.
    } else if matches!(cmd, BenchCmd::Security(_)) {
        toolchain::ensure_proxy_bench_packages()?;
        toolchain::ensure_bench_packages()?;
    } else {
        toolchain::ensure_bench_packages()?;
    }
    toolchain::ensure_bpf_toolchain()?;
    // The flood and the proxy bench run the real daemon: build it next to the runner.
    cargo(&["build", "--release", "--package", "edge-node", "--bins"])?;
    match cmd {
        BenchCmd::Proxy(c) => run_bench("proxy", &c),
        BenchCmd::H3(c) => run_bench("h3", &c),
        BenchCmd::Functions(c) => run_bench("functions", &c),
        BenchCmd::Cache(c) => run_bench("cache", &c),
        BenchCmd::Kv(c) => run_bench("kv", &c),
        BenchCmd::Rooms(c) => run_bench("rooms", &c),
        BenchCmd::Graphql(c) => run_bench("graphql", &c),
        BenchCmd::Compression(c) => run_bench("compression", &c),
        BenchCmd::Fleet(c) => run_bench("fleet", &c),
        BenchCmd::Intent(c) => {
            // Criterion, with its per-call percentiles kept for the report.
            let log = crate::toolchain::workspace_root().join("target/intent-bench.log");
            let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = std::process::Command::new(cargo_bin)
                .args([
                    "bench",
                    "--quiet",
                    "--package",
                    "edge-bench",
                    "--bench",
                    "intent",
                ])
                .current_dir(crate::toolchain::workspace_root())
                .stderr(std::process::Stdio::inherit())
                .output()?;
            std::fs::write(&log, &out.stdout)?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
            anyhow::ensure!(out.status.success(), "cargo bench --bench intent failed");
            run_bench_with(
                "intent",
                &c,
                &["--criterion-log", log.to_str().unwrap_or("")],
            )
        }
        BenchCmd::Security(c) => {
            cargo(&[
                "bench",
                "--quiet",
                "--package",
                "edge-bench",
                "--bench",
                "phases",
            ])?;
            run_bench("security", &c)
        }
        BenchCmd::XdpCost(c) => run_bench("xdp-cost", &c),
        BenchCmd::XdpFlood(c) => run_bench("xdp-flood", &c),
        BenchCmd::Xdp(c) => {
            run_bench("xdp-cost", &c)?;
            run_bench("xdp-flood", &c)
        }
    }
}
