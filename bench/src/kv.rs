//! KV namespaces (issue 17): GET and PUT of 1 KiB values on an edge-node route
//! `handler = { kv = "bench" }` against Redis GET / SET (`redis-benchmark`) on the same
//! machine, at 32 and 256 connections.
//!
//! - edge-node (release, log level warn, XDP off, threat off) with `[storage]
//!   sync_window = "1s"`: answered once applied, on disk within a second, the
//!   durability of Redis' `appendfsync everysec` (the issue's comparison); a second node
//!   with `sync_window = "0s"` (answered once fsynced, writes arriving together sharing
//!   the fsync) is reported for information. Writes go through `[route.auth] mode =
//!   "optional"` with no role rules: anonymous writes are allowed, as a token-less Redis
//!   takes them.
//! - redis-server started here on loopback, `appendonly yes`, `appendfsync everysec`,
//!   no RDB snapshots, otherwise defaults.
//! - The same key space for everyone: `key:000000000000` … `key:000000009999`
//!   (`redis-benchmark -r 10000` names its keys so), filled with 1 KiB values before
//!   anything is measured, so every GET finds its key.
//! - Clients: wrk (HTTP/1.1 keep-alive, a Lua script picking a random key per request)
//!   and `redis-benchmark --threads 2 -c N -r 10000 -d 1024` (one command in flight per
//!   connection, as wrk has one request per connection). Rounds interleave the
//!   contenders as in the proxy benchmark (bench/src/proxy.rs); medians over rounds.
//! - Each contender is checked to have done the work: a sample of node GETs answers 200
//!   with the 1024 bytes written; in every run wrk's non-2xx count is 0 and a GET run read
//!   at least 1024 bytes per response; Redis' `keyspace_hits`/`keyspace_misses` and
//!   `cmdstat_set` counters moved by what redis-benchmark sent; at the end the node lists
//!   all the keys with 1024-byte values and Redis' DBSIZE is the key count.
//! - Durability: after the rounds, a short PUT burst on each node; the ETags of a sample
//!   of keys right after it; the node SIGKILLed once its window has passed (at once for
//!   "0s"); restarted on the same directory; the sample read again.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    proxy::{
        Medians, Proc, Sample, Workdir, cpu_model, fmt_ms, free_port, interleaved, medians_of,
        parse_wrk, raise_nofile, run_client, tree_pids,
    },
    report, sys,
};

/// The issue's goals against Redis: GET req/s, PUT req/s (edge-node with the window
/// that matches `appendfsync everysec`).
const TARGET_GET: f64 = 0.8;
const TARGET_PUT: f64 = 0.5;
const VALUE_BYTES: usize = 1024;
const NAMESPACE: &str = "bench";
const PREFIX: &str = "/kv";
/// Load-generator threads, one per core of the 2-core machines this runs on (wrk -t,
/// redis-benchmark --threads).
const CLIENT_THREADS: usize = 2;
/// Keys whose ETags the durability check compares (every n-th key).
const DURABILITY_SAMPLE: usize = 200;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each measures every contender in every cell once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per run (redis-benchmark: requests for about this long at the
    /// rate its warm-up run reached).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of unmeasured load before each run (same client, same contender).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Connections, one cell each (per operation).
    #[arg(long, value_delimiter = ',', default_value = "32,256")]
    connections: Vec<usize>,
    /// Keys in the key space (all filled before measuring).
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Seconds of the PUT burst before each node's kill in the durability check.
    #[arg(long, default_value_t = 2)]
    burst: u64,
    /// Write the report into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Get,
    Put,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Put => "PUT / SET",
        }
    }
}

#[derive(Clone, Copy)]
struct Cell {
    op: Op,
    conns: usize,
}

impl Cell {
    fn label(&self) -> String {
        format!(
            "{} of 1 KiB values, {} connections",
            self.op.name(),
            self.conns
        )
    }
}

fn key(i: usize) -> String {
    // redis-benchmark's `key:__rand_int__` with -r: twelve digits.
    format!("key:{i:012}")
}

fn value() -> Vec<u8> {
    // redis-benchmark's SET writes 'x' × -d.
    vec![b'x'; VALUE_BYTES]
}

// ---------------------------------------------------------------------------------
// A small keep-alive HTTP/1.1 client for the fill and the checks.

pub(crate) struct Http {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Http {
    pub(crate) fn connect(addr: SocketAddr) -> Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Self {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Answer> {
        self.request_typed(method, path, "application/octet-stream", body)
    }

    /// A request whose body (if any) is of `content_type`.
    pub(crate) fn request_typed(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        self.w.write_all(head.as_bytes())?;
        if let Some(b) = body {
            self.w.write_all(b)?;
        }
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line: {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                bail!("connection closed in the response head");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut a = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if a.header("transfer-encoding").is_some() {
            bail!("{method} {path}: a chunked answer ({status}); this client reads lengths only");
        }
        let len: usize = a
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if method != "HEAD" && status != 204 && status != 304 {
            a.body.resize(len, 0);
            self.r.read_exact(&mut a.body)?;
        }
        Ok(a)
    }
}

/// PUTs every key with `value`, from `threads` keep-alive connections (so writes share
/// commits); the statuses seen, by count.
fn fill_node(addr: SocketAddr, keys: usize, threads: usize) -> Result<Vec<(u16, usize)>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let results: Vec<Result<Vec<u16>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Vec<u16>> {
                    let mut c = Http::connect(addr)?;
                    let v = value();
                    let mut statuses = Vec::new();
                    for i in (t..keys).step_by(threads) {
                        ensure!(Instant::now() < deadline, "filling took over 300 s");
                        let a = c.request("PUT", &format!("{PREFIX}/{}", key(i)), Some(&v))?;
                        statuses.push(a.status);
                    }
                    Ok(statuses)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panic"))))
            .collect()
    });
    let mut counts: Vec<(u16, usize)> = Vec::new();
    for r in results {
        for st in r? {
            match counts.iter_mut().find(|(s, _)| *s == st) {
                Some((_, n)) => *n += 1,
                None => counts.push((st, 1)),
            }
        }
    }
    counts.sort();
    Ok(counts)
}

/// Every `step`-th key: 200 with the 1024 bytes written? Returns the checked count.
fn check_node_values(addr: SocketAddr, keys: usize, step: usize) -> Result<usize> {
    let mut c = Http::connect(addr)?;
    let v = value();
    let mut n = 0;
    for i in (0..keys).step_by(step.max(1)) {
        let a = c.request("GET", &format!("{PREFIX}/{}", key(i)), None)?;
        ensure!(
            a.status == 200 && a.body == v,
            "GET {} answered {} with {} bytes (expected 200 and the {VALUE_BYTES} bytes written)",
            key(i),
            a.status,
            a.body.len()
        );
        n += 1;
    }
    Ok(n)
}

/// The ETags of every `step`-th key (`None`: not 200).
fn etags(addr: SocketAddr, keys: usize, step: usize) -> Result<Vec<Option<String>>> {
    let mut c = Http::connect(addr)?;
    (0..keys)
        .step_by(step.max(1))
        .map(|i| {
            let a = c.request("GET", &format!("{PREFIX}/{}", key(i)), None)?;
            Ok((a.status == 200)
                .then(|| a.header("etag").map(str::to_string))
                .flatten())
        })
        .collect()
}

/// The whole listing, page by page: (keys, keys whose size is not 1024).
fn list_all(addr: SocketAddr) -> Result<(usize, usize)> {
    let mut c = Http::connect(addr)?;
    let (mut n, mut wrong) = (0, 0);
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let path = match &cursor {
            Some(cur) => format!("{PREFIX}?limit=1000&cursor={cur}"),
            None => format!("{PREFIX}?limit=1000"),
        };
        let a = c.request("GET", &path, None)?;
        ensure!(a.status == 200, "listing answered {}", a.status);
        let v: serde_json::Value = serde_json::from_slice(&a.body)?;
        let keys = v["keys"].as_array().context("no keys in the listing")?;
        n += keys.len();
        wrong += keys
            .iter()
            .filter(|k| k["size"].as_u64() != Some(VALUE_BYTES as u64))
            .count();
        if v["list_complete"].as_bool() == Some(true) {
            return Ok((n, wrong));
        }
        cursor = v["cursor"].as_str().map(str::to_string);
        ensure!(cursor.is_some(), "an incomplete listing without a cursor");
    }
    bail!("the listing did not end within 10000 pages")
}

// ---------------------------------------------------------------------------------
// edge-node

fn node_config(listen: SocketAddr, data: &Path, window: &str) -> String {
    // As the proxy benchmark runs it: log level warn, XDP off, no per-source SYN budget
    // (every client is 127.0.0.1), threat scoring off. `[route.auth]` makes the route
    // writable; optional mode with no role rules lets anonymous clients write.
    format!(
        "[node]\nid = \"bench\"\n\n[log]\nlevel = \"warn\"\n\n\
         [http]\nlisten = [\"{listen}\"]\n\n\
         [xdp]\nmode = \"off\"\n\n[xdp.rate]\nsyn_per_sec = 0\n\n\
         [threat]\nenabled = false\n\n\
         [storage]\ndir = \"{}\"\nsync_window = \"{window}\"\n\n\
         [[jwt_provider]]\nname = \"bench\"\nalgorithms = [\"HS256\"]\n\
         secret = \"a-benchmark-secret-of-at-least-32-bytes\"\n\n\
         [[kv]]\nname = \"{NAMESPACE}\"\n\n\
         [[route]]\nhosts = [\"*\"]\npath_prefix = \"{PREFIX}\"\nhandler = {{ kv = \"{NAMESPACE}\" }}\n\
         [route.auth]\nprovider = \"bench\"\nmode = \"optional\"\n",
        data.display()
    )
}

struct Node {
    window: &'static str,
    data: PathBuf,
    addr: SocketAddr,
}

impl Node {
    fn store_file(&self) -> PathBuf {
        self.data.join("edge-node.redb")
    }

    fn store_bytes(&self) -> u64 {
        std::fs::metadata(self.store_file()).map_or(0, |m| m.len())
    }
}

/// `edge-node check`, then the node, until the listing answers.
fn spawn_node(dir: &Path, name: &str, node: &Node) -> Result<Proc> {
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(&conf, node_config(node.addr, &node.data, node.window))?;
    let bin = edge_tests::edge_node_bin();
    sys::run(
        bin.to_str().context("path")?,
        &["-c", conf.to_str().context("path")?, "check"],
    )
    .with_context(|| format!("edge-node check of {name}"))?;
    let mut cmd = Command::new(&bin);
    // RUST_LOG would override the configured level.
    cmd.env_remove("RUST_LOG").arg("-c").arg(&conf).arg("run");
    let mut p = Proc::spawn(name, cmd, dir.join(format!("{name}.log")))?;
    let start = Instant::now();
    loop {
        p.check_alive()?;
        if Http::connect(node.addr)
            .and_then(|mut c| c.request("GET", &format!("{PREFIX}?limit=1"), None))
            .is_ok_and(|a| a.status == 200)
        {
            return Ok(p);
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{name} does not answer on {}:\n{}", node.addr, p.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------
// Redis

struct Redis {
    port: u16,
    dir: PathBuf,
}

/// The flags redis-server runs with (besides port, bind and dir).
const REDIS_FLAGS: &[&str] = &[
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
    "--save",
    "",
    "--protected-mode",
    "yes",
    "--daemonize",
    "no",
];

impl Redis {
    fn cli(&self, args: &[&str]) -> Result<String> {
        let port = self.port.to_string();
        let mut all = vec!["-h", "127.0.0.1", "-p", port.as_str()];
        all.extend_from_slice(args);
        sys::run("redis-cli", &all)
    }

    /// A field of `INFO <section>` (0 when absent).
    fn info_u64(&self, section: &str, field: &str) -> Result<u64> {
        Ok(info_field(&self.cli(&["INFO", section])?, field).unwrap_or(0))
    }

    /// `cmdstat_<cmd>:calls=N,…` of `INFO commandstats` (0 before the first call).
    fn calls(&self, cmd: &str) -> Result<u64> {
        Ok(cmdstat_calls(&self.cli(&["INFO", "commandstats"])?, cmd).unwrap_or(0))
    }

    /// Bytes in its append-only files.
    fn aof_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }
}

fn info_field(info: &str, field: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
}

fn cmdstat_calls(info: &str, cmd: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("cmdstat_{cmd}:")))
        .and_then(|v| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
        })
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn start_redis(dir: &Path) -> Result<(Proc, Redis)> {
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let port = free_port()?.port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(&data)
        .args(REDIS_FLAGS);
    let mut p = Proc::spawn("redis-server", cmd, dir.join("redis.log"))?;
    let r = Redis { port, dir: data };
    let start = Instant::now();
    while r
        .cli(&["PING"])
        .map(|s| s.trim().to_string())
        .ok()
        .as_deref()
        != Some("PONG")
    {
        p.check_alive()?;
        if start.elapsed() > Duration::from_secs(20) {
            bail!("redis-server does not answer:\n{}", p.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((p, r))
}

/// SETs every key to the 1 KiB value, pipelined over one connection.
fn fill_redis(r: &Redis, keys: usize) -> Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", r.port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let v = value();
    let mut out = Vec::with_capacity(keys * (VALUE_BYTES + 64));
    for i in 0..keys {
        let k = key(i);
        out.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n", k.len(), v.len()).as_bytes(),
        );
        out.extend_from_slice(&v);
        out.extend_from_slice(b"\r\n");
    }
    let mut reader = BufReader::new(s.try_clone()?);
    let writer = std::thread::spawn(move || s.write_all(&out));
    let mut line = String::new();
    for i in 0..keys {
        line.clear();
        reader.read_line(&mut line)?;
        ensure!(line == "+OK\r\n", "SET {} answered {line:?}", key(i));
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    Ok(())
}

/// One line of `redis-benchmark --csv`: req/s, p50, p99 (ms).
fn parse_redis_csv(out: &str) -> Result<(f64, f64, f64)> {
    let rows: Vec<Vec<String>> = out
        .lines()
        // Progress lines end in '\r' when stdout is shared with them.
        .filter_map(|l| l.rsplit('\r').next())
        .filter(|l| l.starts_with('"'))
        .map(|l| {
            l.split(',')
                .map(|f| f.trim_matches('"').to_string())
                .collect()
        })
        .collect();
    let header = rows
        .iter()
        .find(|r| r.first().map(String::as_str) == Some("test"))
        .context("no csv header from redis-benchmark")?;
    let row = rows
        .iter()
        .find(|r| r.first().map(String::as_str) != Some("test"))
        .with_context(|| format!("no result from redis-benchmark:\n{out}"))?;
    let col = |name: &str| -> Result<f64> {
        let i = header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no column {name}"))?;
        row.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("column {name}: {row:?}"))
    };
    Ok((col("rps")?, col("p50_latency_ms")?, col("p99_latency_ms")?))
}

// ---------------------------------------------------------------------------------
// Measuring

/// CPU time (user, system) of `pid` and its live direct children, plus the children it
/// has reaped (Redis forks to rewrite its AOF), seconds.
fn cpu_split(pid: i32) -> (f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let fields = |p: i32| -> Vec<u64> {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.to_string()))
            .map(|r| {
                r.split_whitespace()
                    .map(|v| v.parse().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (mut user, mut system) = (0u64, 0u64);
    for p in tree_pids(pid) {
        let f = fields(p);
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // After the name: state(0) ppid … utime(11) stime(12) cutime(13) cstime(14).
        user += at(11);
        system += at(12);
        if p == pid {
            user += at(13);
            system += at(14);
        }
    }
    (user as f64 / ticks, system as f64 / ticks)
}

/// wrk's "N requests in 5.00s, 12.34MB read": requests and bytes.
pub(crate) fn parse_wrk_totals(out: &str) -> Option<(u64, f64)> {
    let line = out.lines().find(|l| l.contains(" requests in "))?;
    let mut w = line.split_whitespace();
    let n: u64 = w.next()?.parse().ok()?;
    let read = line.split(", ").nth(1)?.trim().strip_suffix(" read")?;
    let (num, scale) = [
        ("GB", 1024.0 * 1024.0 * 1024.0),
        ("MB", 1024.0 * 1024.0),
        ("KB", 1024.0),
        ("B", 1.0),
    ]
    .iter()
    .find_map(|(u, s)| read.strip_suffix(u).map(|n| (n, *s)))?;
    Some((n, num.parse::<f64>().ok()? * scale))
}

const GET_LUA: &str = r#"-- A random key of the bench's key space per request.
local keys = KEYS
local n = 0
function setup(thread)
  n = n + 1
  thread:set("id", n)
end
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
end
function request()
  return wrk.format("GET", string.format("/kv/key:%012d", math.random(0, keys - 1)))
end
"#;

const PUT_LUA: &str = r#"-- A 1 KiB value under a random key of the bench's key space per request.
local keys = KEYS
local body = string.rep("x", 1024)
local headers = { ["Content-Type"] = "application/octet-stream" }
local n = 0
function setup(thread)
  n = n + 1
  thread:set("id", n)
end
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
end
function request()
  return wrk.format("PUT", string.format("/kv/key:%012d", math.random(0, keys - 1)), headers, body)
end
"#;

#[derive(Clone, Copy)]
struct Timing {
    seconds: u64,
    warmup: u64,
}

/// Counts of what the contenders were seen doing, for the report.
#[derive(Default)]
struct Checks {
    /// GET runs whose bytes per response were below the value size.
    short_get_runs: usize,
    /// Smallest bytes per response over the node's GET runs.
    min_get_bytes_per_resp: f64,
    /// Redis: GETs that missed, SETs not counted by the server, requests sent.
    redis_misses: u64,
    redis_hits: u64,
    redis_get_sent: u64,
    redis_set_calls: u64,
    redis_set_sent: u64,
}

fn wrk_run(dir: &Path, op: Op, conns: usize, addr: SocketAddr, seconds: u64) -> Result<String> {
    let script = dir.join(match op {
        Op::Get => "get.lua",
        Op::Put => "put.lua",
    });
    let args = vec![
        format!("-t{CLIENT_THREADS}"),
        format!("-c{conns}"),
        format!("-d{seconds}s"),
        "--latency".into(),
        "-s".into(),
        script.display().to_string(),
        format!("http://{addr}{PREFIX}/"),
    ];
    run_client(dir, "wrk", &args, Duration::from_secs(seconds + 30))
}

fn measure_node(
    dir: &Path,
    cell: Cell,
    node: &Node,
    pid: i32,
    timing: Timing,
    checks: &mut Checks,
) -> Result<Sample> {
    if timing.warmup > 0 {
        wrk_run(dir, cell.op, cell.conns, node.addr, timing.warmup)?;
    }
    let (u0, s0) = cpu_split(pid);
    let out = wrk_run(dir, cell.op, cell.conns, node.addr, timing.seconds)?;
    let (u1, s1) = cpu_split(pid);
    let mut s = parse_wrk(&out)?;
    let (requests, bytes) = parse_wrk_totals(&out).context("wrk's totals line")?;
    ensure!(requests > 0, "wrk made no request:\n{out}");
    if cell.op == Op::Get {
        let per = bytes / requests as f64;
        if checks.min_get_bytes_per_resp == 0.0 || per < checks.min_get_bytes_per_resp {
            checks.min_get_bytes_per_resp = per;
        }
        if per < VALUE_BYTES as f64 {
            checks.short_get_runs += 1;
            s.errors += 1;
        }
    }
    s.cpu_us_per_req = ((u1 - u0) + (s1 - s0)) * 1e6 / requests as f64;
    s.system_us_per_req = (s1 - s0) * 1e6 / requests as f64;
    Ok(s)
}

fn redis_bench(
    dir: &Path,
    r: &Redis,
    op: Op,
    conns: usize,
    n: u64,
    keys: usize,
    limit: Duration,
) -> Result<String> {
    let args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &r.port.to_string(),
        "-t",
        match op {
            Op::Get => "get",
            Op::Put => "set",
        },
        "-d",
        &VALUE_BYTES.to_string(),
        "-c",
        &conns.to_string(),
        "-r",
        &keys.to_string(),
        "-n",
        &n.to_string(),
        "--threads",
        &CLIENT_THREADS.to_string(),
        "--csv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run_client(dir, "redis-benchmark", &args, limit)
}

fn measure_redis(
    dir: &Path,
    cell: Cell,
    r: &Redis,
    pid: i32,
    timing: Timing,
    keys: usize,
    checks: &mut Checks,
) -> Result<Sample> {
    let counters = || -> Result<(u64, u64, u64)> {
        Ok((
            r.info_u64("stats", "keyspace_hits")?,
            r.info_u64("stats", "keyspace_misses")?,
            r.calls("set")?,
        ))
    };
    let before = counters()?;
    // The warm-up also sizes the measured run: requests for about `seconds` at its rate.
    let warm_n = (20_000 * timing.warmup.max(1)).max(cell.conns as u64 * 20);
    let out = redis_bench(
        dir,
        r,
        cell.op,
        cell.conns,
        warm_n,
        keys,
        Duration::from_secs(60),
    )?;
    let (warm_rps, _, _) = parse_redis_csv(&out)?;
    let n = ((warm_rps * timing.seconds as f64) as u64).clamp(10_000, 5_000_000);
    let (u0, s0) = cpu_split(pid);
    let out = redis_bench(
        dir,
        r,
        cell.op,
        cell.conns,
        n,
        keys,
        Duration::from_secs(timing.seconds * 4 + 60),
    )?;
    let (u1, s1) = cpu_split(pid);
    let (rps, p50, p99) = parse_redis_csv(&out)?;
    let after = counters()?;
    let sent = warm_n + n;
    let mut s = Sample {
        rps,
        p50_ms: p50,
        p99_ms: p99,
        cpu_us_per_req: ((u1 - u0) + (s1 - s0)) * 1e6 / n as f64,
        system_us_per_req: (s1 - s0) * 1e6 / n as f64,
        ..Default::default()
    };
    match cell.op {
        Op::Get => {
            let (hits, misses) = (after.0 - before.0, after.1 - before.1);
            checks.redis_hits += hits;
            checks.redis_misses += misses;
            checks.redis_get_sent += sent;
            s.errors = misses + sent.saturating_sub(hits + misses);
        }
        Op::Put => {
            let calls = after.2 - before.2;
            checks.redis_set_calls += calls;
            checks.redis_set_sent += sent;
            s.errors = sent.saturating_sub(calls);
        }
    }
    Ok(s)
}

/// The durability check of one node: a PUT burst, the sample's ETags, the wait, the
/// kill, the restart, the sample again.
struct Durability {
    /// The node's window and when it was killed.
    label: String,
    /// A control: killed at once although its window is not zero, to show that the
    /// check sees a loss when there is one (not part of the target).
    control: bool,
    /// Sampled keys, and how many of them the burst rewrote.
    sampled: usize,
    rewritten: usize,
    /// From the end of the burst to the SIGKILL.
    /// Sampled keys answering after the restart with the ETag they had before the kill.
    same: usize,
    /// Keys listed after the restart, and how many of them are not 1024 bytes.
    listed: usize,
    listed_wrong: usize,
}

/// `proc_` is the running node (killed here); the restarted one is returned. The kill
/// comes `kill_wait` after the burst's end (zero: at once).
fn durability(
    dir: &Path,
    mut proc_: Proc,
    node: &Node,
    kill_wait: Duration,
    args: &Args,
) -> Result<(Durability, Proc)> {
    let step = (args.keys / DURABILITY_SAMPLE).max(1);
    let before = etags(node.addr, args.keys, step)?;
    wrk_run(dir, Op::Put, 32, node.addr, args.burst)?;
    let ended = Instant::now();
    let after = etags(node.addr, args.keys, step)?;
    let kill_at = ended + kill_wait;
    if let Some(wait) = kill_at.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe { libc::kill(proc_.child.id() as i32, libc::SIGKILL) };
    let kill_after = ended.elapsed();
    let _ = proc_.child.wait();
    let name = format!("edge-node-{}-restarted", node.window);
    let restarted = spawn_node(dir, &name, node)?;
    let again = etags(node.addr, args.keys, step)?;
    let (listed, listed_wrong) = list_all(node.addr)?;
    let d = Durability {
        label: format!(
            "{}, killed {:.2} s after the burst",
            node.window,
            kill_after.as_secs_f64()
        ),
        control: node.window != "0s" && kill_wait.is_zero(),
        sampled: after.len(),
        rewritten: before.iter().zip(&after).filter(|(b, a)| b != a).count(),
        same: after
            .iter()
            .zip(&again)
            .filter(|(a, g)| a.is_some() && a == g)
            .count(),
        listed,
        listed_wrong,
    };
    Ok((d, restarted))
}

enum Contender {
    Node(usize),
    Redis,
}

pub fn run(args: Args) -> Result<()> {
    raise_nofile();
    let dir = Workdir(std::env::temp_dir().join(edge_tests::unique("edge-bench-kv-")));
    std::fs::create_dir_all(&dir.0)?;
    // The scripts pick keys in 0..keys (their `KEYS`).
    let keys = args.keys.to_string();
    std::fs::write(dir.0.join("get.lua"), GET_LUA.replace("KEYS", &keys))?;
    std::fs::write(dir.0.join("put.lua"), PUT_LUA.replace("KEYS", &keys))?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let nodes: Vec<Node> = [("1s", "1s"), ("0s", "0s")]
        .into_iter()
        .map(|(window, name)| {
            Ok(Node {
                window,
                data: dir.0.join(format!("data-{name}")),
                addr: free_port()?,
            })
        })
        .collect::<Result<_>>()?;
    let mut procs = Vec::new();
    for n in &nodes {
        procs.push(spawn_node(&dir.0, &format!("edge-node-{}", n.window), n)?);
    }
    let (redis_proc, redis) = start_redis(&dir.0).context("redis-server")?;
    procs.push(redis_proc);

    // The same key space everywhere, every key holding 1 KiB before anything is measured.
    let mut fills = Vec::new();
    for n in &nodes {
        let t = Instant::now();
        let statuses = fill_node(n.addr, args.keys, 32)?;
        ensure!(
            statuses == [(201, args.keys)],
            "filling edge-node ({}) answered {statuses:?}, expected 201 for every key",
            n.window
        );
        let checked = check_node_values(n.addr, args.keys, 50)?;
        eprintln!(
            "edge-node ({}): {} keys filled in {:.1} s (all 201), {checked} read back (200, 1024 bytes)",
            n.window,
            args.keys,
            t.elapsed().as_secs_f64()
        );
        fills.push((n.store_bytes(), checked));
    }
    fill_redis(&redis, args.keys)?;
    let dbsize: u64 = redis.cli(&["DBSIZE"])?.trim().parse()?;
    ensure!(
        dbsize == args.keys as u64,
        "redis DBSIZE {dbsize} after filling"
    );
    let got = redis.cli(&["GET", &key(args.keys - 1)])?;
    ensure!(
        got.trim_end_matches('\n').len() == VALUE_BYTES,
        "redis GET answered {} bytes",
        got.len()
    );
    let redis_aof_filled = redis.aof_bytes();
    eprintln!("redis: {dbsize} keys filled, AOF {redis_aof_filled} bytes");

    let mut cells = Vec::new();
    for op in [Op::Get, Op::Put] {
        for &conns in &args.connections {
            cells.push(Cell { op, conns });
        }
    }
    let labels: Vec<String> = cells.iter().map(Cell::label).collect();
    let contenders = [Contender::Node(0), Contender::Node(1), Contender::Redis];
    let names = [
        "edge-node, sync_window 1s",
        "edge-node, sync_window 0s",
        "Redis, appendfsync everysec",
    ];
    let pids: Vec<i32> = procs.iter().map(|p| p.child.id() as i32).collect();
    let timing = Timing {
        seconds: args.seconds,
        warmup: args.warmup,
    };
    let mut checks = Checks::default();
    let samples = interleaved(&mut procs, args.rounds, &labels, &names, |c, i| {
        let cell = cells[c];
        match contenders[i] {
            Contender::Node(n) => {
                measure_node(&dir.0, cell, &nodes[n], pids[i], timing, &mut checks)
            }
            Contender::Redis => measure_redis(
                &dir.0,
                cell,
                &redis,
                pids[i],
                timing,
                args.keys,
                &mut checks,
            ),
        }
        .map(Some)
    })?;

    let store_after_rounds: Vec<u64> = nodes.iter().map(Node::store_bytes).collect();
    let windows: Vec<&str> = nodes.iter().map(|n| n.window).collect();
    let redis_aof_after = redis.aof_bytes();
    let redis_dbsize_after: u64 = redis.cli(&["DBSIZE"])?.trim().parse()?;

    // Durability last: it kills and restarts the nodes. The window node twice: killed
    // at once (the control: acknowledged writes of its last second may be lost), then
    // killed once its window (and a quarter second for the writer's wake-up) has passed
    // since the last acknowledged write: everything acknowledged must be on disk by then.
    let redis_proc = procs.pop();
    let mut durable = Vec::new();
    let mut last = Vec::new();
    for (node, mut p) in nodes.iter().zip(procs) {
        let waits = match node.window {
            "1s" => vec![Duration::ZERO, Duration::from_millis(1250)],
            _ => vec![Duration::ZERO],
        };
        for wait in waits {
            let (d, restarted) = durability(&dir.0, p, node, wait, &args)?;
            p = restarted;
            eprintln!(
                "durability ({}{}): {} of {} sampled keys rewritten by the burst; {} of {} answer their acknowledged ETag after the restart; {} keys listed ({} not 1024 bytes)",
                d.label,
                if d.control { ", control" } else { "" },
                d.rewritten,
                d.sampled,
                d.same,
                d.sampled,
                d.listed,
                d.listed_wrong
            );
            durable.push(d);
        }
        last.push(p);
    }
    drop(last);
    drop(redis_proc);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let report = Report {
        args: &args,
        labels: &labels,
        cells: &cells,
        names: &names,
        samples: &samples,
        checks: &checks,
        fills: &fills,
        store_after_rounds: &store_after_rounds,
        redis_aof: (redis_aof_filled, redis_aof_after),
        redis_dbsize: (dbsize, redis_dbsize_after),
        durable: &durable,
        windows: &windows,
        load: (load_before, load_after),
    };
    let md = report.render();
    println!("{md}");
    if args.write {
        report::write_section("kv", &md)?;
    }
    Ok(())
}

struct Report<'a> {
    args: &'a Args,
    labels: &'a [String],
    cells: &'a [Cell],
    names: &'a [&'a str],
    samples: &'a [Vec<Vec<Sample>>],
    checks: &'a Checks,
    fills: &'a [(u64, usize)],
    store_after_rounds: &'a [u64],
    redis_aof: (u64, u64),
    redis_dbsize: (u64, u64),
    durable: &'a [Durability],
    /// The nodes' windows, in the order of `fills` and `store_after_rounds`.
    windows: &'a [&'a str],
    load: (String, String),
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn loadavg(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

impl Report<'_> {
    fn render(&self) -> String {
        let args = self.args;
        let edge_version = sys::version(edge_tests::edge_node_bin().to_str().unwrap_or(""), "-V");
        let commit = sys::run("git", &["rev-parse", "--short", "HEAD"])
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let mut md =
            String::from("## KV namespaces against Redis (GET and PUT/SET of 1 KiB values)\n\n");
        md.push_str(&format!(
            "Command: `cargo xtask bench kv` ({} rounds; each run {} s measured after a {} s \
             warm-up with the same client; contenders interleaved, their order rotating each \
             round). Machine: {} CPUs ({}), kernel {}; load average {} at the start, {} at the \
             end. Versions: {} (commit {commit}); {}; {}; {}.\n\n",
            args.rounds,
            args.seconds,
            args.warmup,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model(),
            sys::kernel_release(),
            loadavg(&self.load.0),
            loadavg(&self.load.1),
            edge_version,
            sys::version("redis-server", "--version"),
            sys::deb_version("redis-tools"),
            sys::version("wrk", "-v"),
        ));
        md.push_str(&format!(
            "Setup, all on 127.0.0.1 and sharing the cores with the load generator. Key space: \
             {keys} keys `key:000000000000` … (redis-benchmark's `key:__rand_int__` with `-r \
             {keys}`), every one filled with a 1024-byte value before anything is measured \
             (so every GET hits), a random key per request. edge-node (release build, `[log] \
             level = \"warn\"`, XDP off, `[threat] enabled = false`) with one `[[kv]]` \
             namespace (default limits) on a route `path_prefix = \"{PREFIX}\"`, `handler = {{ \
             kv = \"{NAMESPACE}\" }}`, `[route.auth] mode = \"optional\"` with no role rules \
             (anonymous writes allowed), its store in a directory on /tmp: once with \
             `[storage] sync_window = \"1s\"` (a write is answered once applied and is on disk \
             within a second: the durability of `appendfsync everysec`, the comparison the \
             targets are about), once with `sync_window = \"0s\"` (answered once fsynced, \
             writes arriving together sharing one fsync; for information). Redis: \
             `redis-server {}` (otherwise defaults, AOF rewrite included), its files on the \
             same /tmp. Clients: `wrk -t{CLIENT_THREADS} -cN -dS --latency -s script` (HTTP/1.1 \
             keep-alive; the Lua script picks a random key per request: `GET {PREFIX}/<key>`, \
             or `PUT {PREFIX}/<key>` with 1024 bytes and `Content-Type: \
             application/octet-stream`), `redis-benchmark -t get|set -d {VALUE_BYTES} -c N -r \
             {keys} -n R --threads {CLIENT_THREADS} --csv` (one command in flight per \
             connection like wrk, R sized from the warm-up run's rate to last about S s). \
             Cells are medians over the rounds; \"errors\" sums over all rounds non-2xx \
             answers and socket errors (wrk), GET runs that read less than {VALUE_BYTES} \
             bytes per answer, and for Redis GETs that missed or SETs the server did not \
             count (its `INFO` counters against what redis-benchmark sent). \"CPU µs/req\" \
             is the CPU time (user + system, in brackets the system part) of the server \
             process (all its threads; for Redis also its AOF-rewrite children) during the \
             measured run divided by the requests of that run: what a request costs, \
             however many cores the machine has. Targets (issue 17): edge-node GET ≥ \
             {TARGET_GET}× Redis GET req/s, PUT ≥ {TARGET_PUT}× Redis SET req/s, a PUT durable \
             within the configured window.\n\n",
            REDIS_FLAGS
                .chunks(2)
                .map(|f| format!("{} {}", f[0], if f[1].is_empty() { "\"\"" } else { f[1] }))
                .collect::<Vec<_>>()
                .join(" "),
            keys = args.keys,
        ));
        let mut summary = String::new();
        for (c, label) in self.labels.iter().enumerate() {
            let m: Vec<Option<Medians>> = self.samples[c].iter().map(|v| medians_of(v)).collect();
            md.push_str(&format!("### {label}\n\n"));
            md.push_str(
                "| target | req/s | p50 | p99 | CPU µs/req (system) | errors | req/s ÷ Redis | CPU/req ÷ Redis |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            let redis = m[2];
            for (i, (name, mm)) in self.names.iter().zip(&m).enumerate() {
                let Some(x) = mm else {
                    md.push_str(&format!("| {name} | n/a | | | | | | |\n"));
                    continue;
                };
                let (r, cpu) = match redis {
                    Some(r) if i != 2 => (
                        format!("{:.2}×", x.rps / r.rps),
                        format!("{:.2}×", x.cpu_us_per_req / r.cpu_us_per_req),
                    ),
                    _ => (String::new(), String::new()),
                };
                md.push_str(&format!(
                    "| {name} | {:.0} | {} | {} | {:.1} ({:.1}) | {} | {r} | {cpu} |\n",
                    x.rps,
                    fmt_ms(x.p50_ms),
                    fmt_ms(x.p99_ms),
                    x.cpu_us_per_req,
                    x.system_us_per_req,
                    x.errors
                ));
            }
            md.push('\n');
            if let (Some(e), Some(r)) = (m[0], redis) {
                let goal = match self.cells[c].op {
                    Op::Get => TARGET_GET,
                    Op::Put => TARGET_PUT,
                };
                let ratio = e.rps / r.rps;
                summary.push_str(&format!(
                    "- {label}: edge-node (1s) ÷ Redis **{ratio:.2}×** req/s (target ≥ {goal}×: **{}**); p99 {} vs {}; CPU {:.1} vs {:.1} µs/req{}\n",
                    if ratio >= goal { "met" } else { "NOT met" },
                    fmt_ms(e.p99_ms),
                    fmt_ms(r.p99_ms),
                    e.cpu_us_per_req,
                    r.cpu_us_per_req,
                    m[1].map(|z| format!(
                        "; sync_window 0s: {:.2}× req/s, p99 {}",
                        z.rps / r.rps,
                        fmt_ms(z.p99_ms)
                    ))
                    .unwrap_or_default(),
                ));
            }
        }
        if !summary.is_empty() {
            md.push_str(&format!(
                "### Targets (GET ≥ {TARGET_GET}×, PUT ≥ {TARGET_PUT}× Redis req/s)\n\n{summary}\n"
            ));
        }
        md.push_str(&format!(
            "### Durability\n\n\
             After the rounds, on each node: the ETags of every {}th key; a {} s PUT burst \
             (wrk, 32 connections, random keys, as above); the sample's ETags again (what \
             was acknowledged); the node SIGKILLed once its window had passed since the \
             burst's end (plus 250 ms for the writer's wake-up; at once for `0s`); the node \
             started again on the same directory; the sample read again, and the whole \
             namespace listed. The `1s` node first goes through the same with the kill at \
             once, as a control: its acknowledged writes of the last second are not on disk \
             yet, so the check must see keys answering an older ETag (if it saw none, it \
             could not tell a durable store from one that is not).\n\n\
             | sync_window, kill | sampled keys | rewritten by the burst | same ETag after the restart | keys listed after the restart |\n\
             |---|---:|---:|---:|---:|\n",
            (args.keys / DURABILITY_SAMPLE).max(1),
            args.burst,
        ));
        for d in self.durable {
            md.push_str(&format!(
                "| {}{} | {} | {} | **{} of {}** | {}{} |\n",
                d.label,
                if d.control { " (control)" } else { "" },
                d.sampled,
                d.rewritten,
                d.same,
                d.sampled,
                d.listed,
                if d.listed_wrong > 0 {
                    format!(" ({} not {VALUE_BYTES} bytes)", d.listed_wrong)
                } else {
                    String::new()
                }
            ));
        }
        let ok = self
            .durable
            .iter()
            .filter(|d| !d.control)
            .all(|d| d.same == d.sampled && d.listed == args.keys && d.listed_wrong == 0);
        let control_lost = self
            .durable
            .iter()
            .filter(|d| d.control)
            .map(|d| d.sampled - d.same)
            .sum::<usize>();
        md.push_str(&format!(
            "\nPUT durable within the configured window: **{}**{}.\n\n",
            if ok { "met" } else { "NOT met" },
            if self.durable.iter().any(|d| d.control) {
                format!(
                    " (the control lost {control_lost} acknowledged writes of the sample{})",
                    if control_lost == 0 {
                        ": the check could not have seen a loss, so this says little"
                    } else {
                        ", so the check does see a loss when there is one"
                    }
                )
            } else {
                String::new()
            }
        ));
        let ck = self.checks;
        md.push_str("### What was checked\n\n");
        for ((bytes, checked), window) in self.fills.iter().zip(self.windows) {
            md.push_str(&format!(
                "- edge-node ({}): the fill answered 201 for all {} keys; {checked} of them read \
                 back before the rounds with 200 and the 1024 bytes written; store file {} \
                 after the fill.\n",
                window,
                self.args.keys,
                mib(*bytes),
            ));
        }
        for (window, after) in self.windows.iter().zip(self.store_after_rounds) {
            md.push_str(&format!(
                "- edge-node ({}): store file {} after the rounds.\n",
                window,
                mib(*after)
            ));
        }
        md.push_str(&format!(
            "- edge-node GET runs: at least {:.0} bytes read per answer (wrk's bytes read ÷ \
             requests, headers included); {} run(s) below {VALUE_BYTES}.\n\
             - Redis: DBSIZE {} after the fill and {} after the rounds; GETs sent {}, \
             keyspace hits {}, misses {}; SETs sent {}, counted by the server {}; AOF {} \
             after the fill, {} after the rounds.\n\n",
            ck.min_get_bytes_per_resp,
            ck.short_get_runs,
            self.redis_dbsize.0,
            self.redis_dbsize.1,
            ck.redis_get_sent,
            ck.redis_hits,
            ck.redis_misses,
            ck.redis_set_sent,
            ck.redis_set_calls,
            mib(self.redis_aof.0),
            mib(self.redis_aof.1),
        ));
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
                   \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"GET\",\"98765.43\",\"0.300\",\"0.080\",\"0.287\",\"0.455\",\"0.711\",\"3.103\"\n";
        let (rps, p50, p99) = parse_redis_csv(out).unwrap();
        assert_eq!(rps, 98765.43);
        assert_eq!(p50, 0.287);
        assert_eq!(p99, 0.711);
    }

    #[test]
    fn wrk_totals() {
        let out = "  290413 requests in 5.00s, 350.08MB read\nRequests/sec: 58082.60\n";
        let (n, bytes) = parse_wrk_totals(out).unwrap();
        assert_eq!(n, 290413);
        assert!((bytes - 350.08 * 1024.0 * 1024.0).abs() < 1.0);
    }

    #[test]
    fn info_fields() {
        let info = "# Stats\r\nkeyspace_hits:12\r\nkeyspace_misses:0\r\n";
        assert_eq!(info_field(info, "keyspace_hits"), Some(12));
        assert_eq!(info_field(info, "keyspace_misses"), Some(0));
        let cs =
            "cmdstat_set:calls=41,usec=9,usec_per_call=0.22,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(cmdstat_calls(cs, "set"), Some(41));
        assert_eq!(cmdstat_calls(cs, "get"), None);
    }
}
