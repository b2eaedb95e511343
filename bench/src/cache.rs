//! Caching reverse proxies serving hits: edge-node with `[route.cache]` against nginx
//! `proxy_cache` and varnish, all in front of the proxy benchmark's origin (nginx serving
//! 1 KiB and 64 KiB files, here with `Cache-Control: max-age=3600`), loaded by wrk
//! (HTTP/1.1) and h2load (h2c, prior knowledge) in the proxy benchmark's cells, rounds
//! interleaved the same way (bench/src/proxy.rs). Every peer is warmed and checked to
//! answer from its cache before anything is measured, and the origin's request counter
//! is read after every run: a run that reached the origin fails the benchmark.
//!
//! Two more measurements go into the same report:
//! - memory per cached object: a fresh instance of each peer, its resident memory before
//!   and after it stores N distinct 1 KiB objects (distinct query strings, fetched by a
//!   small keep-alive HTTP/1.1 client), divided by N; with nginx's on-disk store and
//!   varnish's own byte count beside it;
//! - the miss path: the same edge-node, same run, on a cached route where every request
//!   misses (the origin answers `no-store`, or every URL is new) against a route without
//!   `[route.cache]`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::MetadataExt,
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    proxy::{
        Cell, Client, Kind, Medians, Proc, Sample, Target, Timing, Workdir, budget_row,
        budget_section, cell_table, cells, cpu_model, fmt_ms, free_port, http_get_full,
        interleaved, measure, measure_path, medians_of, origin_root, raise_nofile, run_client,
        start_edge_node_with, start_nginx, start_origin, tree_pids, versus, wait_serving,
    },
    report, sys,
};

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each measures every peer in every cell once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of unmeasured load before each run (same client, same peer).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Distinct 1 KiB objects stored for the memory measurement.
    #[arg(long, default_value_t = 20_000)]
    objects: usize,
    /// Only peers whose name contains this (edge-node always runs).
    #[arg(long)]
    only: Option<String>,
    /// Write the report into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

/// What the report asks of edge-node in every cell: this much nginx proxy_cache's req/s
/// and at least varnish's, at an equal or lower p99 than each.
const TARGET_VS_NGINX: f64 = 1.3;
const TARGET_VS_VARNISH: f64 = 1.0;
/// Origin requests one hit run may cause (its own status read excluded) before the
/// benchmark fails: none are expected.
const MAX_ORIGIN_REQUESTS_PER_RUN: u64 = 10;
/// Keep-alive connections of the memory fill.
const FILL_CONNECTIONS: usize = 4;

/// The origin's `server` block additions: every file fresh for an hour (`expires 1h`
/// sends `Cache-Control: max-age=3600` and `Expires`), the same files under `/pass/` and
/// `/nostore/` with `Cache-Control: no-store` (the miss path), and a request counter.
fn origin_extra(dir: &Path) -> String {
    let www = origin_root(dir);
    let www = www.display();
    format!(
        " expires 1h;\n\
         location = /origin-status {{ stub_status; }}\n\
         location /pass/ {{ alias {www}/; expires off; add_header Cache-Control no-store; }}\n\
         location /nostore/ {{ alias {www}/; expires off; add_header Cache-Control no-store; }}\n"
    )
}

/// Requests the origin has served so far (nginx stub_status; the read itself included).
fn origin_requests(origin: SocketAddr) -> Result<u64> {
    let (status, _, body) = http_get_full(origin, "origin-status")?;
    let text = String::from_utf8_lossy(&body);
    // "Active connections: 1\nserver accepts handled requests\n 5 5 7\n…"
    let n = text
        .lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok());
    match (status, n) {
        (200, Some(n)) => Ok(n),
        _ => bail!("unexpected origin status page ({status}):\n{text}"),
    }
}

/// edge-node's routes: `/pass` without a cache (the miss path's baseline), everything
/// else through `[route.cache]` with its defaults (the origin's max-age decides).
const EDGE_ROUTES: &str = "[[route]]\nname = \"pass\"\nhosts = [\"*\"]\npath_prefix = \"/pass\"\n\
     upstream = \"origin\"\n\n\
     [[route]]\nname = \"cached\"\nhosts = [\"*\"]\nupstream = \"origin\"\n\n[route.cache]\n";
/// The threat engine off (neither peer scores clients); the memory tier at the size of
/// varnish's `-s malloc,256m`.
const EDGE_EXTRA: &str = "[threat]\nenabled = false\n\n[cache]\nmax_bytes = 268435456\n";

fn start_edge_node(dir: &Path, origin: SocketAddr) -> Result<(Proc, Target)> {
    start_edge_node_with(dir, origin, EDGE_ROUTES, EDGE_EXTRA)
}

fn start_nginx_cache(dir: &Path, origin: SocketAddr) -> Result<(Proc, Target)> {
    let (h1, h2) = (free_port()?, free_port()?);
    let d = dir.display();
    // The proxy benchmark's upstream keep-alive, plus the cache: keys in a shared zone,
    // bodies in files. sendfile on as in Debian's nginx.conf (hits are files); no
    // tcp_nopush, which stalls the last segment of 64 KiB hits on loopback
    // (shared/docs/BENCHMARKING.md).
    let http = format!(
        "proxy_cache_path {d}/nginx-cache.store levels=1:2 keys_zone=bench:64m \
         max_size=1g inactive=2h use_temp_path=off;\n\
         upstream origin {{\n server {origin};\n keepalive 256;\n}}\n\
         server {{\n listen {h1};\n listen {h2} http2;\n sendfile on;\n\
         location / {{\n  proxy_pass http://origin;\n  proxy_http_version 1.1;\n  \
         proxy_set_header Connection \"\";\n  proxy_cache bench;\n  \
         proxy_cache_valid 200 1h;\n  \
         add_header X-Cache-Status $upstream_cache_status;\n }}\n}}"
    );
    let mut p = start_nginx(dir, "nginx-cache", &http)?;
    wait_serving(&mut p, h1)?;
    let pid = p.child.id() as i32;
    Ok((
        p,
        Target {
            kind: Kind::NginxCache,
            h1,
            h2,
            pid,
        },
    ))
}

fn start_varnish(dir: &Path, origin: SocketAddr) -> Result<(Proc, Target)> {
    let listen = free_port()?;
    // The built-in VCL does the rest: GET/HEAD without cookies or authorization are
    // cached for the origin's max-age.
    let vcl = dir.join("varnish.vcl");
    std::fs::write(
        &vcl,
        format!(
            "vcl 4.1;\n\nbackend origin {{\n  .host = \"{}\";\n  .port = \"{}\";\n}}\n",
            origin.ip(),
            origin.port()
        ),
    )?;
    let mut cmd = Command::new("varnishd");
    // -F: manager in the foreground (its cache process is its child); -n: its working
    // directory (shared memory log, compiled VCL) in ours; -T none: no management port.
    // feature=+http2 makes it take HTTP/2 on the same port, prior knowledge included.
    cmd.arg("-F")
        .arg("-a")
        .arg(listen.to_string())
        .arg("-n")
        .arg(dir.join("varnish"))
        .arg("-f")
        .arg(&vcl)
        .args(["-s", "malloc,256m", "-p", "feature=+http2", "-T", "none"]);
    let mut p = Proc::spawn("varnish", cmd, dir.join("varnish.out"))?;
    wait_serving(&mut p, listen)?;
    let pid = p.child.id() as i32;
    Ok((
        p,
        Target {
            kind: Kind::Varnish,
            h1: listen,
            h2: listen,
            pid,
        },
    ))
}

/// The value of header `name` in a response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The header that shows `path` came from `t`'s cache, or an error with the response.
fn check_hit(t: &Target, path: &str) -> Result<String> {
    let (status, head, _) = http_get_full(t.h1, path)?;
    let evidence = match t.kind {
        Kind::EdgeNode => header(&head, "x-cache")
            .filter(|v| v == "HIT")
            .map(|v| format!("X-Cache: {v}")),
        Kind::NginxCache => header(&head, "x-cache-status")
            .filter(|v| v == "HIT")
            .map(|v| format!("X-Cache-Status: {v}")),
        // Two transaction ids: this request's and the one that stored the object.
        Kind::Varnish => header(&head, "x-varnish")
            .filter(|v| v.split_whitespace().count() == 2)
            .map(|v| {
                format!(
                    "X-Varnish: {v}, Age: {}",
                    header(&head, "age").unwrap_or_default()
                )
            }),
        _ => None,
    };
    match evidence {
        Some(e) if status == 200 => Ok(e),
        _ => bail!(
            "{} did not answer /{path} from its cache:\n{head}",
            t.kind.name()
        ),
    }
}

/// Why `t` cannot be loaded by h2load (h2c with prior knowledge), or None if it can.
fn h2c_problem(dir: &Path, t: &Target) -> Option<String> {
    let url = format!("http://{}/1k", t.h2);
    let args: Vec<String> = ["-n", "20", "-c", "1", "-m", "1", &url]
        .map(String::from)
        .to_vec();
    match run_client(dir, "h2load", &args, Duration::from_secs(20)) {
        Ok(out) if out.contains(" 20 succeeded,") => None,
        Ok(out) => Some(format!(
            "h2load against it: {}",
            out.lines()
                .find(|l| l.starts_with("requests:"))
                .unwrap_or("no requests line")
        )),
        Err(e) => Some(format!("h2load against it failed: {e:#}")),
    }
}

/// wrk's script for the miss path: every request a URL not seen before (the command
/// line's path plus `?u=<uuid>-<n>`, a fresh uuid per thread and run).
const UNIQUE_LUA: &str = r#"local prefix, n
function init(args)
  local f = io.open("/proc/sys/kernel/random/uuid")
  prefix = wrk.path .. "?u=" .. f:read("*l") .. "-"
  f:close()
  n = 0
end
function request()
  n = n + 1
  return wrk.format(nil, prefix .. n)
end
"#;

/// One way of missing (or passing) measured on edge-node.
struct MissVariant {
    name: &'static str,
    /// The name in the summary lines.
    short: &'static str,
    path: &'static str,
    /// Every URL new (the Lua script) or one URL for every request.
    unique: bool,
    /// The row (index) this one is compared with.
    baseline: Option<usize>,
}

const MISS_VARIANTS: [MissVariant; 5] = [
    MissVariant {
        name: "pass-through route, new URL each request",
        short: "pass-through, new URLs",
        path: "pass/1k",
        unique: true,
        baseline: None,
    },
    MissVariant {
        name: "cached route, origin says no-store, new URL each request",
        short: "no-store misses, new URLs",
        path: "nostore/1k",
        unique: true,
        baseline: Some(0),
    },
    MissVariant {
        name: "cached route, storable, new URL each request (miss + store)",
        short: "misses stored, new URLs",
        path: "1k",
        unique: true,
        baseline: Some(0),
    },
    MissVariant {
        name: "pass-through route, one URL",
        short: "pass-through, one URL",
        path: "pass/1k",
        unique: false,
        baseline: None,
    },
    MissVariant {
        name: "cached route, origin says no-store, one URL (concurrent misses of one key)",
        short: "no-store misses, one URL",
        path: "nostore/1k",
        unique: false,
        baseline: Some(3),
    },
];

/// The cell of the miss path: wrk, 1 KiB, 32 connections.
const MISS_CELL: Cell = Cell {
    client: Client::Wrk,
    size: "1k",
    conns: 32,
};

/// Checks that the miss path's routes behave as labelled before measuring them.
fn check_miss_routes(edge: &Target) -> Result<()> {
    let (s, head, _) = http_get_full(edge.h1, "pass/1k")?;
    if s != 200 || header(&head, "x-cache").is_some() {
        bail!("edge-node /pass/1k is not a pass-through answer:\n{head}");
    }
    for _ in 0..2 {
        let (s, head, _) = http_get_full(edge.h1, "nostore/1k")?;
        if s != 200 || header(&head, "x-cache").as_deref() != Some("MISS") {
            bail!("edge-node /nostore/1k is not a MISS every time:\n{head}");
        }
    }
    let (s, head, _) = http_get_full(edge.h1, "1k?u=route-check")?;
    if s != 200 || header(&head, "x-cache").as_deref() != Some("MISS") {
        bail!("edge-node /1k?u=route-check (a new URL) is not a MISS:\n{head}");
    }
    check_hit(edge, "1k?u=route-check").context("the new URL was not stored")?;
    Ok(())
}

/// Resident memory of a server: VmRSS and Pss (kB) summed over its processes (Pss
/// splits pages shared between nginx's workers, such as its keys zone, among them).
fn memory_kib(pid: i32) -> (u64, u64) {
    let field = |path: String, key: &str| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    tree_pids(pid).into_iter().fold((0, 0), |(rss, pss), p| {
        (
            rss + field(format!("/proc/{p}/status"), "VmRSS:"),
            pss + field(format!("/proc/{p}/smaps_rollup"), "Pss:"),
        )
    })
}

/// Reads one HTTP/1.1 response in full (Content-Length or chunked): its status and
/// whether the server closes the connection after it.
fn read_response(r: &mut impl BufRead) -> Result<(u16, bool)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let (mut len, mut chunked, mut close) = (0u64, false, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed in a response head");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim().to_ascii_lowercase();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.parse()?,
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
    }
    fn skip(r: &mut impl BufRead, n: u64) -> Result<()> {
        if std::io::copy(&mut r.take(n), &mut std::io::sink())? != n {
            bail!("connection closed in a response body");
        }
        Ok(())
    }
    if !chunked {
        skip(r, len)?;
        return Ok((status, close));
    }
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let n = u64::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if n == 0 {
            break;
        }
        skip(r, n + 2)?;
    }
    // Trailers, up to the empty line.
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            return Ok((status, close));
        }
    }
}

/// GETs every path (no leading slash) over `conns` keep-alive HTTP/1.1 connections in
/// parallel, reading each answer in full; fails on any status but 200.
fn fetch_all(addr: SocketAddr, paths: &[String], conns: usize) -> Result<()> {
    let connect = || -> Result<(BufReader<TcpStream>, TcpStream)> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        Ok((BufReader::new(s.try_clone()?), s))
    };
    thread::scope(|scope| {
        let workers: Vec<_> = (0..conns)
            .map(|w| {
                scope.spawn(move || -> Result<()> {
                    let (mut r, mut s) = connect()?;
                    for path in paths.iter().skip(w).step_by(conns) {
                        write!(s, "GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
                        let (status, close) =
                            read_response(&mut r).with_context(|| format!("GET /{path}"))?;
                        if status != 200 {
                            bail!("GET /{path}: {status}");
                        }
                        if close {
                            (r, s) = connect()?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("fill thread panicked"))??;
        }
        Ok(())
    })
}

struct MemoryResult {
    kind: Kind,
    objects: usize,
    rss_kib: (u64, u64),
    pss_kib: (u64, u64),
    /// What the peer itself says it keeps, in words.
    own_count: String,
}

/// Bytes on disk (allocated blocks) and in file sizes under `dir`, and its file count.
fn disk_usage(dir: &Path) -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return total;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            let (b, l, n) = disk_usage(&e.path());
            total = (total.0 + b, total.1 + l, total.2 + n);
        } else {
            total = (total.0 + m.blocks() * 512, total.1 + m.len(), total.2 + 1);
        }
    }
    total
}

/// A varnishstat counter of the instance in `workdir`.
fn varnish_counter(workdir: &Path, name: &str) -> Result<u64> {
    let out = sys::run(
        "varnishstat",
        &["-n", workdir.to_str().context("path")?, "-1", "-f", name],
    )?;
    out.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} in varnishstat output:\n{out}"))
}

/// A fresh instance of one peer in its own directory: resident memory after a warm-up
/// on one URL, then after `n` distinct 1 KiB objects were stored.
fn memory_per_object(
    dir: &Path,
    origin: SocketAddr,
    kind: Kind,
    start: Starter,
    n: usize,
) -> Result<MemoryResult> {
    if n == 0 {
        bail!("--objects must be at least 1");
    }
    let dir = dir.join(format!("memory-{}", kind.name().replace(' ', "-")));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let (mut p, t) = start(&dir, origin)?;
    // Connections, buffers and per-thread allocator state exist before the baseline:
    // the same connections fetch one object many times first.
    let warm: Vec<String> = (0..2000).map(|_| "1k?memory-warm-up".to_string()).collect();
    fetch_all(t.h1, &warm, FILL_CONNECTIONS)?;
    thread::sleep(Duration::from_millis(500));
    let (rss0, pss0) = memory_kib(t.pid);
    let paths: Vec<String> = (0..n).map(|i| format!("1k?object-{i}")).collect();
    fetch_all(t.h1, &paths, FILL_CONNECTIONS)?;
    thread::sleep(Duration::from_secs(1));
    p.check_alive()?;
    let (rss1, pss1) = memory_kib(t.pid);
    // All of them still stored: the first and the last are hits.
    for path in [&paths[0], &paths[n - 1]] {
        check_hit(&t, path).context("an object of the memory fill is not stored")?;
    }
    let own_count = match kind {
        Kind::NginxCache => {
            let (disk, len, files) = disk_usage(&dir.join("nginx-cache.store"));
            format!(
                "{files} files on disk: {:.0} B/object allocated ({:.0} B/object in file sizes); \
                 keys in its shared zone",
                disk as f64 / n as f64,
                len as f64 / n as f64
            )
        }
        Kind::Varnish => {
            let workdir = dir.join("varnish");
            let bytes = varnish_counter(&workdir, "SMA.s0.g_bytes")?;
            let objects = varnish_counter(&workdir, "MAIN.n_object")?;
            format!(
                "SMA.s0.g_bytes {bytes} for MAIN.n_object {objects}: {:.0} B/object",
                bytes as f64 / objects.max(1) as f64
            )
        }
        _ => "—".into(),
    };
    drop(p);
    Ok(MemoryResult {
        kind,
        objects: n,
        rss_kib: (rss0, rss1),
        pss_kib: (pss0, pss1),
        own_count,
    })
}

type Starter = fn(&Path, SocketAddr) -> Result<(Proc, Target)>;

pub fn run(args: Args) -> Result<()> {
    raise_nofile();
    let dir = Workdir(std::env::temp_dir().join(edge_tests::unique("edge-bench-cache-")));
    std::fs::create_dir_all(&dir.0)?;
    // nginx workers and varnish drop root; they must reach their files.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let (origin_proc, origin) = start_origin(&dir.0, &origin_extra(&dir.0))?;
    let starters: Vec<(Kind, Starter)> = [
        (Kind::EdgeNode, start_edge_node as Starter),
        (Kind::NginxCache, start_nginx_cache),
        (Kind::Varnish, start_varnish),
    ]
    .into_iter()
    .filter(|(k, _)| {
        *k == Kind::EdgeNode
            || args
                .only
                .as_ref()
                .is_none_or(|o| k.name().contains(o.as_str()))
    })
    .collect();
    // Procs live until they are dropped: that stops the servers. The origin is first.
    let mut procs = vec![origin_proc];
    let mut targets = Vec::new();
    for (kind, start) in &starters {
        let (p, t) = start(&dir.0, origin.h1).with_context(|| kind.name())?;
        procs.push(p);
        targets.push(t);
    }

    // wait_serving fetched every file once: each is stored now. Fail loudly otherwise.
    let mut hit_evidence = Vec::new();
    for t in &targets {
        let mut seen = Vec::new();
        for path in ["1k", "64k"] {
            let e = check_hit(t, path)?;
            eprintln!("{}: /{path} is a hit ({e})", t.kind.name());
            seen.push(format!("/{path} `{e}`"));
        }
        hit_evidence.push(format!("{}: {}", t.kind.name(), seen.join(", ")));
    }
    let h2_problems: Vec<Option<String>> = targets.iter().map(|t| h2c_problem(&dir.0, t)).collect();
    for (t, p) in targets.iter().zip(&h2_problems) {
        if let Some(p) = p {
            eprintln!("{}: no h2load cells: {p}", t.kind.name());
        }
    }

    let timing = Timing {
        rounds: args.rounds,
        seconds: args.seconds,
        warmup: args.warmup,
    };
    let cells = cells();
    let labels: Vec<String> = cells.iter().map(Cell::label).collect();
    let names: Vec<&str> = targets.iter().map(|t| t.kind.name()).collect();
    let mut last = origin_requests(origin.h1)?;
    let mut origin_total = 0u64;
    let samples = interleaved(&mut procs, timing.rounds, &labels, &names, |c, i| {
        let (cell, t) = (cells[c], &targets[i]);
        if cell.client == Client::H2load && h2_problems[i].is_some() {
            return Ok(None);
        }
        let s = measure(&dir.0, cell, t, timing)?;
        // Every request of the run was a hit: the origin saw none (but this read).
        let now = origin_requests(origin.h1)?;
        let reached = now.saturating_sub(last + 1);
        last = now;
        origin_total += reached;
        if reached > MAX_ORIGIN_REQUESTS_PER_RUN {
            bail!(
                "{reached} requests reached the origin during a hit run of {}: not a cache hit \
                 benchmark",
                t.kind.name()
            );
        }
        Ok(Some(s))
    })?;
    let served: f64 = samples
        .iter()
        .flatten()
        .flatten()
        .map(|s| s.rps * args.seconds as f64)
        .sum();

    // The miss path, on the same edge-node.
    let edge = &targets[0];
    check_miss_routes(edge)?;
    let script = dir.0.join("unique.lua");
    std::fs::write(&script, UNIQUE_LUA)?;
    let script_args = vec!["-s".to_string(), script.display().to_string()];
    let miss_names: Vec<&str> = MISS_VARIANTS.iter().map(|v| v.name).collect();
    let miss = interleaved(
        &mut procs,
        timing.rounds,
        &[MISS_CELL.label()],
        &miss_names,
        |_, i| {
            let v = &MISS_VARIANTS[i];
            let extra: &[String] = if v.unique { &script_args } else { &[] };
            measure_path(&dir.0, MISS_CELL, edge, v.path, extra, timing).map(Some)
        },
    )?;
    // The measured peers go; the origin stays for the memory fill.
    procs.truncate(1);

    let mut memory = Vec::new();
    for (kind, start) in &starters {
        eprintln!(
            "{}: memory per object ({} objects)",
            kind.name(),
            args.objects
        );
        let m = memory_per_object(&dir.0, origin.h1, *kind, *start, args.objects)
            .with_context(|| format!("memory per object of {}", kind.name()))?;
        eprintln!(
            "{}: RSS {} → {} kB, {:.0} B/object",
            kind.name(),
            m.rss_kib.0,
            m.rss_kib.1,
            per_object(m.rss_kib, m.objects)
        );
        memory.push(m);
    }
    drop(procs);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let md = render(&Report {
        args: &args,
        cells: &cells,
        targets: &targets,
        samples: &samples,
        h2_problems: &h2_problems,
        hit_evidence: &hit_evidence,
        origin_total,
        served,
        miss: &miss[0],
        memory: &memory,
        load: (&load_before, &load_after),
    });
    println!("{md}");
    if args.write {
        report::write_section("cache", &md)?;
    }
    Ok(())
}

/// Bytes per object from a (before, after) pair in kB.
fn per_object((before, after): (u64, u64), n: usize) -> f64 {
    (after as f64 - before as f64) * 1024.0 / n as f64
}

struct Report<'a> {
    args: &'a Args,
    cells: &'a [Cell],
    targets: &'a [Target],
    samples: &'a [Vec<Vec<Sample>>],
    h2_problems: &'a [Option<String>],
    hit_evidence: &'a [String],
    origin_total: u64,
    served: f64,
    miss: &'a [Vec<Sample>],
    memory: &'a [MemoryResult],
    load: (&'a str, &'a str),
}

fn render(r: &Report) -> String {
    let args = r.args;
    let edge_version = sys::version(edge_tests::edge_node_bin().to_str().unwrap_or(""), "-V");
    let mut commit = sys::run("git", &["rev-parse", "--short", "HEAD"])
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    // The binary is built from the working tree: say so when it is not the commit's.
    let bench_dir = env!("CARGO_MANIFEST_DIR");
    if sys::run(
        "git",
        &[
            "-C",
            bench_dir,
            "status",
            "--porcelain",
            "--",
            "../edge-node",
        ],
    )
    .is_ok_and(|s| !s.trim().is_empty())
    {
        commit.push_str(" plus uncommitted changes under edge-node/");
    }
    let loadavg = |s: &str| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let mut md = String::from("## Cache hits: edge-node against nginx proxy_cache and varnish\n\n");
    md.push_str(&format!(
        "Command: `cargo xtask bench cache` ({} rounds; each run {} s measured after a {} s \
         warm-up with the same client; peers interleaved, their order rotating each round; \
         then the miss path, then memory per object with {} objects). Machine: {} CPUs ({}), \
         kernel {}; load average {} before the run, {} after it. Versions: {} (commit \
         {commit}); {}; {}; {}; {}.\n\n",
        args.rounds,
        args.seconds,
        args.warmup,
        args.objects,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        sys::kernel_release(),
        loadavg(r.load.0),
        loadavg(r.load.1),
        edge_version,
        sys::version("nginx", "-v"),
        sys::version("varnishd", "-V"),
        sys::version("wrk", "-v"),
        sys::version("h2load", "--version"),
    ));
    md.push_str(
        "Setup, all on 127.0.0.1 and sharing the cores with the load generator: the proxy \
         benchmark's origin (nginx serving files of 1 KiB and 64 KiB) adds `expires 1h` \
         (`Cache-Control: max-age=3600`), so every peer keeps them. edge-node: release \
         build, as in the proxy benchmark (`[log] level = \"warn\"`, XDP off, \
         `[xdp.rate] syn_per_sec = 0`, default workers, one per core), plus \
         `[threat] enabled = false`, `[cache] max_bytes = 268435456` and `[route.cache]` \
         with its defaults on the route; h1 and h2c on one port. nginx: `worker_processes \
         auto`, `access_log off`, `keepalive_requests 1000000`, upstream `keepalive 256` \
         with `proxy_http_version 1.1` and an empty `Connection`, `proxy_cache_path … \
         levels=1:2 keys_zone=bench:64m max_size=1g inactive=2h use_temp_path=off` in the \
         benchmark's temp dir, `proxy_cache bench`, `proxy_cache_valid 200 1h`, \
         `add_header X-Cache-Status $upstream_cache_status`, `sendfile on` (no \
         `tcp_nopush`), h2c with `listen … http2`. varnish: `varnishd -F -a ADDR -n DIR \
         -f VCL -s malloc,256m -p feature=+http2 -T none`, the VCL only a backend (the \
         built-in VCL caches by the origin's max-age), default thread pools; h1 and h2c \
         (prior knowledge) on one port. Clients as in the proxy benchmark: `wrk -t2 -cN \
         -dS --latency` and `h2load -cN -m10 -t2 -D S --warm-up-time=W`, p50/p99 from \
         wrk's latency distribution and h2load's per-request log. \"CPU µs/req\" is the \
         CPU time of the peer's own processes per request served.\n\n",
    );
    md.push_str(&format!(
        "Before any run every peer answered both files from its cache ({}); the origin's \
         request counter (nginx `stub_status`) was read after every run: {} requests \
         reached it during the hit runs, which served about {:.0} requests.\n\n",
        r.hit_evidence.join("; "),
        r.origin_total,
        r.served
    ));
    let idx = |k: Kind| r.targets.iter().position(|t| t.kind == k);
    let (edge, nginx, varnish) = (
        idx(Kind::EdgeNode),
        idx(Kind::NginxCache),
        idx(Kind::Varnish),
    );
    let mut summary = String::new();
    let mut budget = String::new();
    let (mut met_cells, mut judged) = (0, 0);
    for (c, cell) in r.cells.iter().enumerate() {
        let m: Vec<Option<Medians>> = r.samples[c].iter().map(|v| medians_of(v)).collect();
        md.push_str(&format!("### {}\n\n", cell.label()));
        let rows: Vec<(&str, Option<Medians>)> = r
            .targets
            .iter()
            .zip(&m)
            .map(|(t, m)| (t.kind.name(), *m))
            .collect();
        md.push_str(&cell_table(&rows, edge));
        for (t, p) in r.targets.iter().zip(r.h2_problems) {
            if let (Client::H2load, Some(p)) = (cell.client, p) {
                md.push_str(&format!("{}: n/a ({p}).\n\n", t.kind.name()));
            }
        }
        let Some(e) = edge.and_then(|e| m[e]) else {
            continue;
        };
        if let Some(Some(n)) = nginx.map(|n| m[n]) {
            budget.push_str(&budget_row(&cell.label(), e, n, TARGET_VS_NGINX));
        }
        let mut line = format!("- {}:", cell.label());
        let mut all = true;
        let mut any = false;
        for (name, peer, need) in [
            ("nginx proxy_cache", nginx, TARGET_VS_NGINX),
            ("varnish", varnish, TARGET_VS_VARNISH),
        ] {
            match peer.map(|p| m[p]) {
                Some(Some(pm)) => {
                    let (ratio, p99_ok, text) = versus(e, pm);
                    let met = ratio >= need && p99_ok;
                    all &= met;
                    any = true;
                    line.push_str(&format!(
                        " / {name} {text}: {};",
                        if met { "met" } else { "not met" }
                    ));
                }
                Some(None) => line.push_str(&format!(" / {name} n/a;")),
                None => {}
            }
        }
        if any {
            judged += 1;
            if all {
                met_cells += 1;
            }
            line.push_str(&format!(
                " target **{}**",
                if all { "met" } else { "NOT met" }
            ));
        }
        summary.push_str(&line);
        summary.push('\n');
    }
    md.push_str(&format!(
        "### Target (edge-node ≥ {TARGET_VS_NGINX}× nginx proxy_cache and ≥ varnish req/s at \
         equal or lower p99)\n\n{summary}\nMet in {met_cells} of {judged} cells.\n\n"
    ));
    if !budget.is_empty() {
        md.push_str(&budget_section(
            TARGET_VS_NGINX,
            "nginx proxy_cache",
            &budget,
        ));
    }

    // Memory per object.
    md.push_str(&format!(
        "### Memory per cached object\n\nA fresh instance of each peer (same configuration) \
         first serves one URL 2000 times over {FILL_CONNECTIONS} keep-alive connections \
         (connections, buffers, allocator caches), then its resident memory is read; then \
         it stores N distinct 1 KiB objects (`/1k?object-<i>`, a keep-alive HTTP/1.1 client \
         on the same {FILL_CONNECTIONS} connections; the first and last are checked to be \
         hits afterwards) and its memory is read again. RSS sums VmRSS over the server's \
         processes; PSS sums their Pss (pages shared between processes, such as nginx's \
         keys zone, counted once). Per object = the difference / N, so it includes the \
         cache's index, headers, body and allocator overhead.\n\n\
         | peer | objects | RSS before → after | RSS Δ / object | PSS Δ / object | the peer's own count |\n\
         |---|---:|---:|---:|---:|---|\n"
    ));
    for m in r.memory {
        md.push_str(&format!(
            "| {} | {} | {} → {} kB | {:.0} B | {:.0} B | {} |\n",
            m.kind.name(),
            m.objects,
            m.rss_kib.0,
            m.rss_kib.1,
            per_object(m.rss_kib, m.objects),
            per_object(m.pss_kib, m.objects),
            m.own_count
        ));
    }
    md.push_str(
        "\nnginx keeps bodies (and a copy of the response head) in files, so its memory \
         delta is the keys zone and the workers' own state only; the page cache holding \
         those files is the kernel's and counted nowhere here. varnish's malloc storage and \
         edge-node's memory tier keep bodies in the process.\n\n",
    );

    // The miss path.
    md.push_str(&format!(
        "### Miss path: edge-node with and without `[route.cache]` ({})\n\n\
         The same node as above, same run, interleaved rounds. \"New URL each request\" \
         runs wrk with a Lua script that appends `?u=<uuid>-<n>` to the path (every \
         request a cache miss; on the storable route every response is stored, so the \
         memory tier fills and evicts); \"one URL\" runs plain wrk. `/pass/…` goes through \
         a route without a cache; `/nostore/…` and `/1k` through the cached route, the \
         origin answering `/nostore/…` with `Cache-Control: no-store`.\n\n",
        MISS_CELL.label()
    ));
    let m: Vec<Option<Medians>> = r.miss.iter().map(|v| medians_of(v)).collect();
    md.push_str(
        "| route, requests | req/s | p50 | p99 | CPU µs/req | errors | ÷ pass-through |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut lines = String::new();
    for (i, v) in MISS_VARIANTS.iter().enumerate() {
        let Some(mi) = m[i] else { continue };
        let base = v.baseline.and_then(|b| m[b]);
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.1} | {} | {} |\n",
            v.name,
            mi.rps,
            fmt_ms(mi.p50_ms),
            fmt_ms(mi.p99_ms),
            mi.cpu_us_per_req,
            mi.errors,
            base.map(|b| format!("{:.2}×", mi.rps / b.rps))
                .unwrap_or_default()
        ));
        if let (Some(b), Some(bi)) = (base, v.baseline) {
            let (_, _, text) = versus(mi, b);
            lines.push_str(&format!(
                "- {} against {}: {text}\n",
                v.short, MISS_VARIANTS[bi].short
            ));
        }
    }
    md.push('\n');
    md.push_str(&lines);
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_read_in_full() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
                    HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                    2\r\nab\r\n1;x=y\r\nc\r\n0\r\nTrailer: 1\r\n\r\n\
                    HTTP/1.1 204 No Content\r\n\r\n";
        let mut r = std::io::Cursor::new(text.as_bytes());
        assert_eq!(read_response(&mut r).unwrap(), (200, false));
        assert_eq!(read_response(&mut r).unwrap(), (404, true));
        assert_eq!(read_response(&mut r).unwrap(), (204, false));
        assert!(read_response(&mut r).is_err());
        let cut = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert!(read_response(&mut std::io::Cursor::new(cut.as_bytes())).is_err());
    }

    #[test]
    fn headers_by_name() {
        let head = "HTTP/1.1 200 OK\r\nX-Varnish: 32770 3\r\nAge: 0\r\nx-cache: HIT";
        assert_eq!(header(head, "x-varnish").as_deref(), Some("32770 3"));
        assert_eq!(header(head, "X-Cache").as_deref(), Some("HIT"));
        assert_eq!(header(head, "via"), None);
    }

    #[test]
    fn bytes_per_object() {
        assert_eq!(per_object((1000, 2000), 1024), 1000.0);
        assert_eq!(per_object((2000, 1000), 1024), -1000.0);
    }
}
