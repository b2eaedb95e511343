//! WebAssembly functions: edge-node running a `wasi:http/proxy` component on a route
//! (`handler = { function = "hello" }`, its whole pipeline in front) against `wasmtime
//! serve` running the same component, with edge-node's built-in demo handler as the
//! no-function baseline; wrk (HTTP/1.1 keep-alive), interleaved rounds as in the proxy
//! benchmark (bench/src/proxy.rs). Every contender is checked to answer before anything
//! is measured (hello: 200 "hello, world"; demo: 200 with its page) and non-2xx answers
//! during a run count as errors.
//!
//! Two more measurements go into the same report:
//! - the cost of one instance, without HTTP: `edge_node::functions::Functions::handle`
//!   called in this process on hello.wasm, N times, body collected: median and p99 µs
//!   per call (next to it: the CPU µs/req the function route costs over the demo route
//!   in the HTTP runs);
//! - cold start: a node's start until its function first answers, with an empty and
//!   with a warm compiled-code cache (`[functions] cache_dir`); and a deploy: `PUT
//!   /functions/hello` on the admin API with a component never compiled before (echo),
//!   how long the PUT took (it compiles, writes, reloads) and the time from its 200 to
//!   the first answer of the new component.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    proxy::{
        Cell, Client, Kind, Medians, Proc, Sample, Target, Timing, Workdir, cell_table, cpu_model,
        fmt_ms, free_port, http_get_full, interleaved, measure_path, medians_of, raise_nofile,
    },
    report, sys,
};

/// The goal: edge-node's req/s on the function route over `wasmtime serve`'s.
const TARGET_VS_WASMTIME: f64 = 1.0;
/// The goal for one instance (instantiate, run, collect the body), µs.
const TARGET_INSTANCE_US: f64 = 20.0;
/// `functions.keep_resident_bytes` of the second instance-cost measurement.
const KEPT_RESIDENT: u64 = 0;
const HELLO_BODY: &str = "hello, world";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each measures every contender in every cell once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of unmeasured load before each run (same client, same contender).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// wrk connections, one cell each.
    #[arg(long, value_delimiter = ',', default_value = "32,256")]
    connections: Vec<usize>,
    /// In-process calls of `Functions::handle` for the instance cost (after 10% more
    /// unmeasured ones).
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Node starts (each empty cache, then warm cache) and deploys for the cold start.
    #[arg(long, default_value_t = 3)]
    starts: usize,
    /// Write the report into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
    /// Run one part only and print its numbers (no report): `cost`, the in-process
    /// instance cost (`--calls` of them), e.g. for A/B runs of settings or builds.
    #[arg(long, value_enum, conflicts_with = "write")]
    only: Option<Part>,
    /// With `--only cost`: `[functions] keep_resident_bytes` instead of the default.
    #[arg(long, requires = "only")]
    keep_resident_bytes: Option<u64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Part {
    Cost,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench lives in the workspace")
        .to_path_buf()
}

/// `target/components/<name>.wasm`, built by `cargo xtask build-components`.
fn component(name: &str) -> Result<PathBuf> {
    let p = workspace()
        .join("target/components")
        .join(format!("{name}.wasm"));
    if !p.is_file() {
        bail!(
            "{} is missing: run `cargo xtask build-components` (cargo xtask bench functions does)",
            p.display()
        );
    }
    Ok(p)
}

/// The project-local wasmtime-cli (`cargo xtask bench functions` installs it), else
/// whatever `wasmtime` is on PATH.
fn wasmtime_bin() -> PathBuf {
    let local = workspace().join(".tools/bin/wasmtime");
    if local.is_file() {
        local
    } else {
        PathBuf::from("wasmtime")
    }
}

/// What an edge-node under test is given (apart from its routes and functions).
fn node_config(listen: SocketAddr, body: &str) -> String {
    // As the proxy benchmark runs it: log level warn (the access log is info), XDP off,
    // no per-source SYN budget (every client is 127.0.0.1); threat scoring off.
    format!(
        "[node]\nid = \"bench\"\n\n[log]\nlevel = \"warn\"\n\n\
         [http]\nlisten = [\"{listen}\"]\n\n\
         [xdp]\nmode = \"off\"\n\n[xdp.rate]\nsyn_per_sec = 0\n\n\
         [threat]\nenabled = false\n\n{body}"
    )
}

fn hello_function(file: &Path, cache_dir: &Path) -> String {
    format!(
        "[functions]\ncache_dir = \"{}\"\n\n\
         [[function]]\nname = \"hello\"\nfile = \"{}\"\n\n\
         [[route]]\nhosts = [\"*\"]\nhandler = {{ function = \"hello\" }}\n\n",
        cache_dir.display(),
        file.display()
    )
}

/// `edge-node check`, then the node. `check` compiles the functions into their cache:
/// `clear` (a cache directory) is removed between the two for a start with an empty cache.
fn spawn_node(dir: &Path, name: &str, text: &str, clear: Option<&Path>) -> Result<Proc> {
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(&conf, text)?;
    let bin = edge_tests::edge_node_bin();
    sys::run(
        bin.to_str().context("path")?,
        &["-c", conf.to_str().context("path")?, "check"],
    )
    .with_context(|| format!("edge-node check of {name}"))?;
    if let Some(c) = clear {
        let _ = std::fs::remove_dir_all(c);
    }
    let mut cmd = Command::new(&bin);
    cmd.env_remove("RUST_LOG").arg("-c").arg(&conf).arg("run");
    Proc::spawn(name, cmd, dir.join(format!("{name}.log")))
}

/// Polls `GET /` on `addr` (a new connection each time, every 2 ms) until `ok` accepts
/// the answer; the time that took. Bounded by `limit`; fails with the log past it.
fn first_answer(
    p: &mut Proc,
    addr: SocketAddr,
    limit: Duration,
    ok: impl Fn(u16, &[u8]) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        p.check_alive()?;
        if let Ok((status, head, body)) = http_get_full(addr, "")
            && ok(status, &dechunk(&head, body))
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!(
                "no expected answer on {addr} within {limit:?}:\n{}",
                p.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The body of a response read to its end: chunked transfer coding removed (both
/// edge-node and `wasmtime serve` stream a function's body chunked).
fn dechunk(head: &str, body: Vec<u8>) -> Vec<u8> {
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return body;
    }
    let mut out = Vec::new();
    let mut rest = &body[..];
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        rest = &rest[eol + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    out
}

fn is_hello(status: u16, body: &[u8]) -> bool {
    status == 200 && String::from_utf8_lossy(body).trim() == HELLO_BODY
}

fn is_demo(status: u16, body: &[u8]) -> bool {
    status == 200 && !body.is_empty()
}

fn target(kind: Kind, addr: SocketAddr, p: &Proc) -> Target {
    Target {
        kind,
        h1: addr,
        h2: addr,
        pid: p.child.id() as i32,
    }
}

fn start_edge_hello(dir: &Path, hello: &Path) -> Result<(Proc, Target)> {
    let listen = free_port()?;
    let text = node_config(listen, &hello_function(hello, &dir.join("fn-cache")));
    let mut p = spawn_node(dir, "edge-node-function", &text, None)?;
    first_answer(&mut p, listen, Duration::from_secs(30), is_hello)?;
    let t = target(Kind::EdgeNode, listen, &p);
    Ok((p, t))
}

fn start_edge_demo(dir: &Path) -> Result<(Proc, Target)> {
    let listen = free_port()?;
    let text = node_config(listen, "[[route]]\nhosts = [\"*\"]\nhandler = \"demo\"\n");
    let mut p = spawn_node(dir, "edge-node-demo", &text, None)?;
    first_answer(&mut p, listen, Duration::from_secs(30), is_demo)?;
    let t = target(Kind::EdgeNode, listen, &p);
    Ok((p, t))
}

/// The flags `wasmtime serve` is run with, besides `--addr`: `-S cli` because the
/// component (built by cargo for wasm32-wasip2, as a user would) imports
/// `wasi:cli/environment`, which `serve` does not link without it; edge-node links it
/// too. Everything else is wasmtime's default.
const WASMTIME_FLAGS: &[&str] = &["serve", "-S", "cli"];

fn start_wasmtime(dir: &Path, hello: &Path) -> Result<(Proc, Target)> {
    let listen = free_port()?;
    let mut cmd = Command::new(wasmtime_bin());
    cmd.args(WASMTIME_FLAGS)
        .arg("--addr")
        .arg(listen.to_string())
        .arg(hello);
    let mut p = Proc::spawn("wasmtime serve", cmd, dir.join("wasmtime.log"))?;
    first_answer(&mut p, listen, Duration::from_secs(60), is_hello)?;
    let t = target(Kind::WasmtimeServe, listen, &p);
    Ok((p, t))
}

/// The instance cost without HTTP: `Functions::handle` on hello.wasm in this process,
/// on a current-thread runtime; µs per call (median, p99) and the thread's CPU per call.
struct InstanceCost {
    median_us: f64,
    p99_us: f64,
    cpu_us: f64,
    calls: usize,
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime on a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn instance_cost(
    dir: &Path,
    hello: &Path,
    calls: usize,
    keep_resident_bytes: u64,
) -> Result<InstanceCost> {
    use edge_node::functions::{FunctionSettings, Functions, FunctionsSettings, Runtime};
    use http_body_util::BodyExt;

    let global = FunctionsSettings {
        cache_dir: dir.join("inproc-cache"),
        keep_resident_bytes,
        ..Default::default()
    };
    let f = FunctionSettings {
        name: "hello".into(),
        file: hello.to_path_buf(),
        memory_limit: 64 << 20,
        timeout: Duration::from_secs(10),
        max_instances: 64,
        upstreams: Vec::new(),
        env: Default::default(),
        kv: Vec::new(),
    };
    let pool = edge_node::upstream::Pool::new(Duration::from_secs(2), 1);
    let runtime = Runtime::default();
    let functions = Arc::new(Functions::new(
        &runtime,
        &global,
        &[f],
        &HashMap::new(),
        &pool,
        &HashMap::new(),
    )?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let one = |functions: &Functions| {
        rt.block_on(async {
            let req = http::Request::get("http://fn.test/")
                .body(edge_node::error::full(bytes::Bytes::new()))
                .expect("request");
            let resp = functions
                .handle("hello", req, client)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .to_bytes();
            if !is_hello(status.as_u16(), &body) {
                bail!(
                    "hello answered {status} {:?}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok::<(), anyhow::Error>(())
        })
    };
    // Bounded in count and in time: the warm-up, then `calls` measured ones.
    let limit = Instant::now() + Duration::from_secs(120);
    for _ in 0..calls / 10 {
        one(&functions)?;
    }
    let mut us = Vec::with_capacity(calls);
    let cpu0 = thread_cpu_seconds();
    for _ in 0..calls {
        let t = Instant::now();
        one(&functions)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        if Instant::now() > limit {
            break;
        }
    }
    let cpu = thread_cpu_seconds() - cpu0;
    let n = us.len();
    us.sort_by(f64::total_cmp);
    let pick = |q: f64| us[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    Ok(InstanceCost {
        median_us: pick(0.5),
        p99_us: pick(0.99),
        cpu_us: cpu * 1e6 / n as f64,
        calls: n,
    })
}

/// `PUT /functions/<name>` with `body` on the admin API: the status and the answer.
fn admin_put(addr: SocketAddr, name: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "PUT /functions/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status from the admin API")?;
    Ok((status, text))
}

/// One cold-start sample (ms).
#[derive(Default, Clone, Copy)]
struct ColdStart {
    start_empty_ms: f64,
    start_warm_ms: f64,
    put_ms: f64,
    after_put_ms: f64,
}

/// A node with hello.wasm (a copy: the deploy writes over it) and the admin API: its
/// start with an empty cache until hello answers, the deploy of echo.wasm (never
/// compiled before by this node nor in its cache), the first echo answer after the
/// PUT's 200; then a restart with hello.wasm again and the cache the first start
/// filled.
fn cold_start(dir: &Path, hello: &Path, echo: &Path, round: usize) -> Result<ColdStart> {
    let d = dir.join(format!("cold-{round}"));
    std::fs::create_dir_all(&d)?;
    let file = d.join("hello.wasm");
    std::fs::copy(hello, &file)?;
    let cache = d.join("fn-cache");
    let listen = free_port()?;
    let admin = free_port()?;
    let text = node_config(
        listen,
        &format!(
            "[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\n{}",
            hello_function(&file, &cache)
        ),
    );
    let limit = Duration::from_secs(60);
    let mut s = ColdStart::default();
    {
        let mut p = spawn_node(&d, "edge-node-cold", &text, Some(&cache))?;
        s.start_empty_ms = first_answer(&mut p, listen, limit, is_hello)?.as_secs_f64() * 1e3;
        let bytes = std::fs::read(echo)?;
        let t = Instant::now();
        let (status, answer) = admin_put(admin, "hello", &bytes)?;
        s.put_ms = t.elapsed().as_secs_f64() * 1e3;
        if status != 200 {
            bail!("PUT /functions/hello answered {status}:\n{answer}");
        }
        // echo answers with the request's head: "GET / ...".
        s.after_put_ms = first_answer(&mut p, listen, limit, |st, b| {
            st == 200 && b.starts_with(b"GET /")
        })?
        .as_secs_f64()
            * 1e3;
    }
    std::fs::copy(hello, &file)?;
    let mut p = spawn_node(&d, "edge-node-warm", &text, None)?;
    s.start_warm_ms = first_answer(&mut p, listen, limit, is_hello)?.as_secs_f64() * 1e3;
    Ok(s)
}

pub fn run(args: Args) -> Result<()> {
    raise_nofile();
    let dir = Workdir(std::env::temp_dir().join(edge_tests::unique("edge-bench-functions-")));
    std::fs::create_dir_all(&dir.0)?;
    let hello = component("hello")?;
    if let Some(Part::Cost) = args.only {
        let keep = args.keep_resident_bytes.unwrap_or_else(|| {
            edge_node::functions::FunctionsSettings::default().keep_resident_bytes
        });
        let cost = instance_cost(&dir.0, &hello, args.calls, keep)?;
        println!(
            "instance cost: median {:.1} µs, p99 {:.1} µs, CPU {:.1} µs per call ({} calls)",
            cost.median_us, cost.p99_us, cost.cpu_us, cost.calls
        );
        return Ok(());
    }
    let echo = component("echo")?;

    // Cold start first, on a quiet machine.
    let mut cold = Vec::new();
    for i in 0..args.starts {
        let s = cold_start(&dir.0, &hello, &echo, i)?;
        eprintln!(
            "cold start {}: start (empty cache) {:.0} ms, start (warm cache) {:.0} ms, PUT {:.0} ms, PUT 200 → first new answer {:.1} ms",
            i + 1,
            s.start_empty_ms,
            s.start_warm_ms,
            s.put_ms,
            s.after_put_ms
        );
        cold.push(s);
    }
    let keep = edge_node::functions::FunctionsSettings::default().keep_resident_bytes;
    let cost = instance_cost(&dir.0, &hello, args.calls, keep)?;
    eprintln!(
        "instance cost: median {:.1} µs, p99 {:.1} µs, CPU {:.1} µs per call ({} calls)",
        cost.median_us, cost.p99_us, cost.cpu_us, cost.calls
    );
    // Each engine is its own process-wide pool: a second one, giving back all that
    // instances wrote.
    let resident = instance_cost(&dir.0, &hello, args.calls, KEPT_RESIDENT)?;
    eprintln!(
        "instance cost, keep_resident_bytes = {KEPT_RESIDENT}: median {:.1} µs, p99 {:.1} µs, CPU {:.1} µs per call",
        resident.median_us, resident.p99_us, resident.cpu_us
    );

    let (p_fn, t_fn) = start_edge_hello(&dir.0, &hello).context("edge-node (function)")?;
    let (p_ws, t_ws) = start_wasmtime(&dir.0, &hello).context("wasmtime serve")?;
    let (p_demo, t_demo) = start_edge_demo(&dir.0).context("edge-node (demo)")?;
    let mut procs = vec![p_fn, p_ws, p_demo];
    let targets = [t_fn, t_ws, t_demo];
    let names = [
        "edge-node, function hello",
        "wasmtime serve hello",
        "edge-node, demo handler",
    ];
    let cells: Vec<Cell> = args
        .connections
        .iter()
        .map(|&conns| Cell {
            client: Client::Wrk,
            size: "",
            conns,
        })
        .collect();
    let labels: Vec<String> = cells
        .iter()
        .map(|c| format!("wrk (HTTP/1.1), GET /, {} connections", c.conns))
        .collect();
    let timing = Timing {
        rounds: args.rounds,
        seconds: args.seconds,
        warmup: args.warmup,
    };
    let samples = interleaved(&mut procs, timing.rounds, &labels, &names, |c, i| {
        measure_path(&dir.0, cells[c], &targets[i], "", &[], timing).map(Some)
    })?;
    drop(procs);
    let md = render(&args, &labels, &names, &samples, &cost, &resident, &cold);
    println!("{md}");
    if args.write {
        report::write_section("functions", &md)?;
    }
    Ok(())
}

fn render(
    args: &Args,
    labels: &[String],
    names: &[&str],
    samples: &[Vec<Vec<Sample>>],
    cost: &InstanceCost,
    resident: &InstanceCost,
    cold: &[ColdStart],
) -> String {
    let edge_version = sys::version(edge_tests::edge_node_bin().to_str().unwrap_or(""), "-V");
    let wasmtime_version = sys::version(wasmtime_bin().to_str().unwrap_or("wasmtime"), "-V");
    let commit = sys::run("git", &["rev-parse", "--short", "HEAD"])
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut md = String::from(
        "## WebAssembly functions: edge-node against `wasmtime serve` (req/s, p50, p99, CPU)\n\n",
    );
    md.push_str(&format!(
        "Command: `cargo xtask bench functions` ({} rounds; each run {} s measured after a {} s \
         warm-up with the same client; contenders interleaved, their order rotating each \
         round; then, before the HTTP runs: {} cold starts and {} in-process calls). Machine: \
         {} CPUs ({}), kernel {}. Versions: {} (commit {commit}); {}; {}.\n\n",
        args.rounds,
        args.seconds,
        args.warmup,
        args.starts,
        cost.calls,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        sys::kernel_release(),
        edge_version,
        wasmtime_version,
        sys::version("wrk", "-v"),
    ));
    md.push_str(&format!(
        "Setup, all on 127.0.0.1 and sharing the cores with the load generator. The \
         component: tests/components/hello (`cargo xtask build-components`, wasm32-wasip2, \
         release), which answers `200 hello, world` and writes one line to stdout per \
         request. edge-node (release build, `[log] level = \"warn\"`, XDP off, `[threat] \
         enabled = false`, otherwise defaults: `[functions]` pool of 1000 instances, the \
         function's `max_instances = 64`, 64 MiB, 10 s) with one route `handler = {{ function \
         = \"hello\" }}`, its whole pipeline in front; the guest's stdout goes to the node's \
         log at info, so at warn it is dropped. `wasmtime serve {}` (wasmtime's defaults \
         otherwise: one fresh instance per request like edge-node, its own allocator \
         settings; `-S cli` because the component imports `wasi:cli/environment`, which \
         edge-node links as well), its stdout (one line per request) into a log file on \
         /tmp. edge-node with `handler = \"demo\"` (the built-in page, no function) as the \
         baseline: the pipeline without the guest. Before anything is measured each \
         contender must answer `GET /` with 200 and `hello, world` (the demo: 200 and its \
         page). Client: `wrk -t2 -cN -dS --latency`, GET /. Cells are medians over the \
         rounds; \"errors\" sums non-2xx answers and socket errors over all rounds. \"CPU \
         µs/req\" is the CPU time (user + system) of the contender's process tree during a \
         run divided by the requests it answered. Target: edge-node ≥ \
         {TARGET_VS_WASMTIME}× `wasmtime serve`'s req/s.\n\n",
        WASMTIME_FLAGS[1..].join(" "),
    ));
    let mut summary = String::new();
    let mut fn_over_demo = Vec::new();
    for (c, label) in labels.iter().enumerate() {
        let m: Vec<Option<Medians>> = samples[c].iter().map(|v| medians_of(v)).collect();
        md.push_str(&format!("### {label}\n\n"));
        let rows: Vec<(&str, Option<Medians>)> =
            names.iter().copied().zip(m.iter().copied()).collect();
        md.push_str(&cell_table(&rows, Some(0)));
        if let (Some(e), Some(w)) = (m[0], m[1]) {
            let ratio = e.rps / w.rps;
            summary.push_str(&format!(
                "- {label}: edge-node ÷ wasmtime serve **{ratio:.2}×** req/s (p99 {} vs {}; CPU {:.1} vs {:.1} µs/req); target **{}**\n",
                fmt_ms(e.p99_ms),
                fmt_ms(w.p99_ms),
                e.cpu_us_per_req,
                w.cpu_us_per_req,
                if ratio >= TARGET_VS_WASMTIME { "met" } else { "NOT met" }
            ));
        }
        if let (Some(e), Some(d)) = (m[0], m[2]) {
            fn_over_demo.push((
                label.clone(),
                e.cpu_us_per_req - d.cpu_us_per_req,
                e.rps / d.rps,
            ));
        }
    }
    if !summary.is_empty() {
        md.push_str(&format!(
            "### Target (edge-node ≥ {TARGET_VS_WASMTIME}× `wasmtime serve` req/s)\n\n{summary}\n"
        ));
    }
    md.push_str(&format!(
        "### The cost of one instance\n\n\
         In process, without HTTP: `edge_node::functions::Functions::handle(\"hello\", GET /, \
         …)` with the response body collected, on a current-thread tokio runtime, {} calls \
         after {} unmeasured ones (the engine and the compiled component built once, as the \
         node does; each call instantiates from the pre-linked component, runs the guest and \
         drops the instance). Target ≤ {TARGET_INSTANCE_US} µs.\n\n\
         | per call | median | p99 | thread CPU (mean) |\n|---|---:|---:|---:|\n\
         | `Functions::handle` (hello), default `keep_resident_bytes` ({} KiB) | **{:.1} µs** | {:.1} µs | {:.1} µs |\n\
         | the same, `keep_resident_bytes = {}` (what instances wrote given back with madvise and faulted in again) | {:.1} µs | {:.1} µs | {:.1} µs |\n\n\
         Target ≤ {TARGET_INSTANCE_US} µs: **{}**.\n\n",
        cost.calls,
        args.calls / 10,
        edge_node::functions::FunctionsSettings::default().keep_resident_bytes >> 10,
        cost.median_us,
        cost.p99_us,
        cost.cpu_us,
        KEPT_RESIDENT,
        resident.median_us,
        resident.p99_us,
        resident.cpu_us,
        if cost.median_us <= TARGET_INSTANCE_US {
            "met"
        } else {
            "NOT met"
        }
    ));
    if !fn_over_demo.is_empty() {
        md.push_str(
            "Over HTTP, what the function adds to the pipeline: the function route's CPU \
             µs/req minus the demo route's (same node build, same run), and the function \
             route's req/s over the demo route's.\n\n\
             | cell | function − demo CPU µs/req | function ÷ demo req/s |\n|---|---:|---:|\n",
        );
        for (label, d, r) in &fn_over_demo {
            md.push_str(&format!("| {label} | {d:.1} | {r:.2}× |\n"));
        }
        md.push('\n');
    }
    if !cold.is_empty() {
        let med = |f: fn(&ColdStart) -> f64| {
            let mut v: Vec<f64> = cold.iter().map(f).collect();
            sys::median(&mut v)
        };
        let range = |f: fn(&ColdStart) -> f64| {
            let v: Vec<f64> = cold.iter().map(f).collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.1} – {hi:.1}")
        };
        md.push_str(&format!(
            "### Cold start and deploy\n\n\
             {} times: a node (as above, plus the admin API) with hello.wasm and an empty \
             `[functions] cache_dir`, from its spawn until `GET /` first answers `hello, world` \
             (polled every 2 ms, a new connection each); then `PUT /functions/hello` with \
             echo.wasm (never compiled before by this node nor in its cache): the PUT from its \
             first byte to its 200 (it compiles, checks, writes the file and reloads), then from \
             that 200 until `GET /` first answers from echo; then the node stopped and \
             started again with hello.wasm and the cache its first start filled. Reported, not \
             asserted. Medians (range).\n\n\
             | what | ms |\n|---|---:|\n\
             | node start until the function answers, empty cache (compiles) | {:.1} ({}) |\n\
             | node start until the function answers, warm disk cache | {:.1} ({}) |\n\
             | `PUT /functions/hello` (new component: compile, write, reload) | {:.1} ({}) |\n\
             | from the PUT's 200 to the first answer of the new component | {:.1} ({}) |\n\n",
            cold.len(),
            med(|s| s.start_empty_ms),
            range(|s| s.start_empty_ms),
            med(|s| s.start_warm_ms),
            range(|s| s.start_warm_ms),
            med(|s| s.put_ms),
            range(|s| s.put_ms),
            med(|s| s.after_put_ms),
            range(|s| s.after_put_ms),
        ));
    }
    md
}
