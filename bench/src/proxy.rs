//! HTTP pass-through proxying: edge-node against nginx and haproxy, all in front of the
//! same origin, loaded by wrk (HTTP/1.1 keep-alive) and h2load (HTTP/2 cleartext, prior
//! knowledge), with the origin served directly as the ceiling.
//!
//! Everything runs on 127.0.0.1 and shares the machine's cores with the load generator,
//! so absolute numbers mean little; the ratios between targets measured in the same
//! round do. Every cell (client, response size, connections) measures every target once
//! per round, one after the other, in an order that rotates from round to round so no
//! target always runs first or last; the report gives medians across rounds.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{report, sys};

/// The goal: edge-node's req/s over nginx's, at equal or lower p99.
const TARGET_VS_NGINX: f64 = 1.2;

/// Response bodies the origin serves, by path.
const SIZES: [(&str, usize); 2] = [("1k", 1024), ("64k", 64 * 1024)];
const CONNECTIONS: [usize; 2] = [32, 256];
/// HTTP/2 streams per connection: with one, h2load stalls about 44 ms per request
/// against every server here, the bare origin included (shared/docs/BENCHMARKING.md).
const H2_STREAMS: usize = 10;
/// Load-generator threads, one per core of the 2-core machines this runs on.
const CLIENT_THREADS: usize = 2;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each measures every target in every cell once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of unmeasured load before each run (same client, same target).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Only targets whose name contains this (the origin always runs: it is the ceiling).
    #[arg(long)]
    only: Option<String>,
    /// Write the report into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Client {
    Wrk,
    H2load,
}

impl Client {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Client::Wrk => "wrk (HTTP/1.1)",
            Client::H2load => "h2load (HTTP/2 h2c)",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Origin,
    EdgeNode,
    Nginx,
    Haproxy,
    /// The cache benchmark's peers (bench/src/cache.rs).
    NginxCache,
    Varnish,
    /// The functions benchmark's peer (bench/src/functions.rs).
    WasmtimeServe,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Origin => "origin direct (ceiling)",
            Kind::EdgeNode => "edge-node",
            Kind::Nginx => "nginx proxy_pass",
            Kind::Haproxy => "haproxy",
            Kind::NginxCache => "nginx proxy_cache",
            Kind::Varnish => "varnish",
            Kind::WasmtimeServe => "wasmtime serve",
        }
    }
}

/// A server under test: where it takes HTTP/1.1 and where HTTP/2 (the same port for
/// edge-node, which tells them apart by the h2 preface).
pub(crate) struct Target {
    pub(crate) kind: Kind,
    pub(crate) h1: SocketAddr,
    pub(crate) h2: SocketAddr,
    /// The server's main process; its CPU time is counted with its children's.
    pub(crate) pid: i32,
}

/// A process we started, in its own directory's log; stopped (TERM, then KILL) on drop,
/// so nothing outlives the benchmark, errors and panics included.
pub(crate) struct Proc {
    name: String,
    pub(crate) child: Child,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails if the process has exited (a server must not).
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// Waits for the process to end by itself within `limit`; kills it past that.
    fn wait_bounded(mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > limit {
                bail!("{} still running after {limit:?}: killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SIGTERM first: nginx's master stops its workers on it, which SIGKILL would
        // leave behind.
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private directory (configs, logs, the origin's files), removed on drop.
pub(crate) struct Workdir(pub(crate) PathBuf);

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port. The listener is closed before the server binds it; nothing
/// else on this machine is expected to grab it meanwhile.
pub(crate) fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One GET over HTTP/1.1: the status and the body length.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, usize)> {
    http_get_full(addr, path).map(|(status, _, body)| (status, body.len()))
}

/// One GET over HTTP/1.1 (`path` without its leading slash): the status, the response
/// head (status line and headers) and the body.
pub(crate) fn http_get_full(addr: SocketAddr, path: &str) -> Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, head, buf[head_end + 4..].to_vec()))
}

/// Waits until `addr` serves every size in full (HTTP/1.1), or fails with the log.
pub(crate) fn wait_serving(p: &mut Proc, addr: SocketAddr) -> Result<()> {
    let start = Instant::now();
    loop {
        p.check_alive()?;
        let ok = SIZES
            .iter()
            .all(|(path, len)| matches!(http_get(addr, path), Ok((200, n)) if n == *len));
        if ok {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "{} does not serve the files on {addr}:\n{}",
                p.name,
                p.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The temp paths nginx would otherwise put under its compiled-in prefix.
fn nginx_paths(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "pid {d}/{name}.pid;\n\
         error_log {d}/{name}.error.log warn;\n\
         worker_rlimit_nofile 65536;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n\
         client_body_temp_path {d}/{name}-body;\n\
         proxy_temp_path {d}/{name}-proxy;\n\
         fastcgi_temp_path {d}/{name}-fastcgi;\n\
         uwsgi_temp_path {d}/{name}-uwsgi;\n\
         scgi_temp_path {d}/{name}-scgi;\n"
    )
}

pub(crate) fn start_nginx(dir: &Path, name: &str, http_block: &str) -> Result<Proc> {
    start_nginx_with(dir, name, "", http_block)
}

/// [`start_nginx`] with `main` directives first (`load_module`).
pub(crate) fn start_nginx_with(
    dir: &Path,
    name: &str,
    main: &str,
    http_block: &str,
) -> Result<Proc> {
    let conf = dir.join(format!("{name}.conf"));
    // worker_processes auto: one per core, as in Debian's own nginx.conf. A request on a
    // keep-alive connection is never the one that closes it (keepalive_requests is
    // 1000 by default), so every server keeps its clients' connections for the whole run
    // as edge-node and haproxy do; h2load does not reconnect after a GOAWAY.
    let text = format!(
        "{main}daemon off;\nworker_processes auto;\n{}\
         access_log off;\n\
         keepalive_requests 1000000;\n\
         {http_block}\n}}\n",
        nginx_paths(dir, name)
    );
    std::fs::write(&conf, text)?;
    let mut cmd = Command::new("nginx");
    // -e: the error log before the config is read, away from /var/log/nginx.
    cmd.arg("-e")
        .arg(dir.join(format!("{name}.error.log")))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf);
    Proc::spawn(name, cmd, dir.join(format!("{name}.out")))
}

/// Where the origin's files are (`/1k`, `/64k`).
pub(crate) fn origin_root(dir: &Path) -> PathBuf {
    dir.join("www")
}

/// The origin: nginx serving static files, HTTP/1.1 on one port and h2c on another (its
/// 1.22 takes HTTP/2 on a cleartext port only as prior knowledge, so not on the same one).
/// `server_extra` goes into its `server` block (headers, more locations).
pub(crate) fn start_origin(dir: &Path, server_extra: &str) -> Result<(Proc, Target)> {
    let www = origin_root(dir);
    std::fs::create_dir_all(&www)?;
    // Bodies that do not compress or repeat, from a fixed-seed generator.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (path, len) in SIZES {
        let body: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        std::fs::write(www.join(path), body)?;
    }
    let (h1, h2) = (free_port()?, free_port()?);
    let http = format!(
        "sendfile on;\n\
         server {{\n listen {h1};\n listen {h2} http2;\n root {};\n{server_extra}}}",
        www.display()
    );
    let mut p = start_nginx(dir, "origin", &http)?;
    wait_serving(&mut p, h1)?;
    let pid = p.child.id() as i32;
    Ok((
        p,
        Target {
            kind: Kind::Origin,
            h1,
            h2,
            pid,
        },
    ))
}

fn start_nginx_proxy(dir: &Path, origin: SocketAddr) -> Result<(Proc, Target)> {
    let (h1, h2) = (free_port()?, free_port()?);
    // keepalive per worker as large as edge-node's idle pool (256 per origin), so neither
    // reconnects to the origin more than the other; HTTP/1.1 and an empty Connection
    // header are what let nginx reuse upstream connections at all.
    let http = format!(
        "upstream origin {{\n server {origin};\n keepalive 256;\n}}\n\
         server {{\n listen {h1};\n listen {h2} http2;\n\
         location / {{\n  proxy_pass http://origin;\n  proxy_http_version 1.1;\n  \
         proxy_set_header Connection \"\";\n }}\n}}"
    );
    let mut p = start_nginx(dir, "nginx-proxy", &http)?;
    wait_serving(&mut p, h1)?;
    let pid = p.child.id() as i32;
    Ok((
        p,
        Target {
            kind: Kind::Nginx,
            h1,
            h2,
            pid,
        },
    ))
}

fn start_haproxy(dir: &Path, origin: SocketAddr) -> Result<(Proc, Target)> {
    let (h1, h2) = (free_port()?, free_port()?);
    // Threads default to one per core. http-reuse always: any idle origin connection
    // serves any request, like the other two proxies' pools.
    let text = format!(
        "global\n  maxconn 8000\n\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  \
         timeout server 30s\n  http-reuse always\n\n\
         frontend bench\n  bind {h1}\n  bind {h2} proto h2\n  default_backend origin\n\n\
         backend origin\n  server origin {origin}\n"
    );
    let conf = dir.join("haproxy.cfg");
    std::fs::write(&conf, text)?;
    let mut cmd = Command::new("haproxy");
    // -db: foreground, no daemon.
    cmd.arg("-db").arg("-f").arg(&conf);
    let mut p = Proc::spawn("haproxy", cmd, dir.join("haproxy.out"))?;
    wait_serving(&mut p, h1)?;
    let pid = p.child.id() as i32;
    Ok((
        p,
        Target {
            kind: Kind::Haproxy,
            h1,
            h2,
            pid,
        },
    ))
}

fn start_edge_node(dir: &Path, origin: SocketAddr) -> Result<(Proc, Target)> {
    start_edge_node_with(
        dir,
        origin,
        "[[route]]\nhosts = [\"*\"]\nupstream = \"origin\"\n",
        "",
    )
}

/// edge-node in front of `origin` (the upstream "origin") with these `[[route]]`s and
/// `extra` sections, otherwise as the proxy benchmark runs it.
pub(crate) fn start_edge_node_with(
    dir: &Path,
    origin: SocketAddr,
    routes: &str,
    extra: &str,
) -> Result<(Proc, Target)> {
    let listen = free_port()?;
    // Log level warn: the access log (target "access") is info, one line per request to
    // stderr, which neither peer writes here. XDP off: this measures the HTTP path, and
    // leaves the system's bpffs alone. No per-source SYN budget: every client here is
    // 127.0.0.1, opening up to 256 connections per run, which the default budget (burst
    // 200, 100/s) refuses at accept in userspace; neither peer limits connections.
    let text = format!(
        "[node]\nid = \"bench\"\n\n[log]\nlevel = \"warn\"\n\n\
         [http]\nlisten = [\"{listen}\"]\n\n\
         [[upstream]]\nname = \"origin\"\nservers = [\"{origin}\"]\n\n\
         {routes}\n\
         [xdp]\nmode = \"off\"\n\n[xdp.rate]\nsyn_per_sec = 0\n\n{extra}"
    );
    let conf = dir.join("edge-node.toml");
    std::fs::write(&conf, text)?;
    let bin = edge_tests::edge_node_bin();
    sys::run(
        bin.to_str().context("path")?,
        &["-c", conf.to_str().context("path")?, "check"],
    )
    .context("edge-node check")?;
    let mut cmd = Command::new(&bin);
    // RUST_LOG would override the configured level.
    cmd.env_remove("RUST_LOG").arg("-c").arg(&conf).arg("run");
    let mut p = Proc::spawn("edge-node", cmd, dir.join("edge-node.log"))?;
    wait_serving(&mut p, listen)?;
    let pid = p.child.id() as i32;
    Ok((
        p,
        Target {
            kind: Kind::EdgeNode,
            h1: listen,
            h2: listen,
            pid,
        },
    ))
}

#[derive(Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Requests that failed, non-2xx/3xx responses and socket errors.
    pub(crate) errors: u64,
    /// CPU time the target (all its processes) spent per request, µs.
    pub(crate) cpu_us_per_req: f64,
    /// The part of it in the kernel (system time), µs.
    pub(crate) system_us_per_req: f64,
    /// CPU time the rest of the machine spent per request meanwhile (the load
    /// generator, the origin, whatever else ran), µs.
    pub(crate) others_us_per_req: f64,
}

/// The fields of /proc/PID/stat after the parenthesised command name: state ppid … utime
/// stime …
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// `pid` and its direct children (nginx's workers, varnish's cache process).
pub(crate) fn tree_pids(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![pid];
    };
    let mut pids = vec![pid];
    for entry in dir.flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let ppid = stat_fields(p).and_then(|f| f.get(1).and_then(|v| v.parse::<i32>().ok()));
        if p != pid && ppid == Some(pid) {
            pids.push(p);
        }
    }
    pids
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU time of `pid` and its direct children (nginx's workers) in user and system mode,
/// seconds.
pub(crate) fn tree_cpu_split(pid: i32) -> (f64, f64) {
    let (user, system) = tree_pids(pid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| {
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (field(11), field(12))
        })
        .fold((0, 0), |(u, s), (du, ds)| (u + du, s + ds));
    (user as f64 / clock_ticks(), system as f64 / clock_ticks())
}

/// CPU time (user + system) of `pid` and its direct children, seconds.
pub(crate) fn tree_cpu_seconds(pid: i32) -> f64 {
    let (user, system) = tree_cpu_split(pid);
    user + system
}

/// CPU time every core of the machine spent busy (anything but idle, I/O wait and
/// steal), seconds.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq steal …: steal is time the
    // hypervisor kept from this machine, not work anyone here did.
    let busy: u64 = line
        .split_whitespace()
        .skip(1)
        .take(7)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    busy as f64 / clock_ticks()
}

/// Where the machine's CPU time went during one run.
pub(crate) struct CpuSnapshot {
    target_user: f64,
    target_system: f64,
    machine_busy: f64,
    at: Instant,
}

impl CpuSnapshot {
    pub(crate) fn take(pid: i32) -> Self {
        let (target_user, target_system) = tree_cpu_split(pid);
        Self {
            target_user,
            target_system,
            machine_busy: machine_busy_seconds(),
            at: Instant::now(),
        }
    }

    /// Fills `s`'s CPU fields from the time since `self`, at `s.rps` requests per second.
    pub(crate) fn charge(&self, pid: i32, s: &mut Sample) {
        let now = Self::take(pid);
        let per_req = |d: f64| d / now.at.duration_since(self.at).as_secs_f64() / s.rps * 1e6;
        let user = per_req(now.target_user - self.target_user);
        let system = per_req(now.target_system - self.target_system);
        s.cpu_us_per_req = user + system;
        s.system_us_per_req = system;
        s.others_us_per_req =
            (per_req(now.machine_busy - self.machine_busy) - s.cpu_us_per_req).max(0.0);
    }
}

/// Runs a load generator to its end (bounded), returning its stdout.
pub(crate) fn run_client(
    dir: &Path,
    program: &str,
    args: &[String],
    limit: Duration,
) -> Result<String> {
    let out = dir.join("client.out");
    let mut cmd = Command::new(program);
    cmd.args(args);
    let p = Proc::spawn(program, cmd, out.clone())?;
    let status = p.wait_bounded(limit)?;
    let text = std::fs::read_to_string(&out)?;
    if !status.success() {
        bail!("{program} {} failed ({status}):\n{text}", args.join(" "));
    }
    Ok(text)
}

/// wrk's durations: "512.00us", "1.23ms", "2.00s".
fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// Requests/sec, the 50% and 99% lines of `--latency`, and the error lines.
pub(crate) fn parse_wrk(out: &str) -> Result<Sample> {
    let mut s = Sample::default();
    let (mut got_rps, mut got_p50, mut got_p99) = (false, false, false);
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse()?;
            got_rps = true;
        } else if let Some(v) = line.strip_prefix("50%") {
            s.p50_ms = parse_duration_ms(v).context("wrk p50")?;
            got_p50 = true;
        } else if let Some(v) = line.strip_prefix("99%") {
            s.p99_ms = parse_duration_ms(v).context("wrk p99")?;
            got_p99 = true;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            s.errors += v.trim().parse::<u64>()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    s.errors += n.parse::<u64>()?;
                }
            }
        }
    }
    if !(got_rps && got_p50 && got_p99) {
        bail!("unexpected wrk output:\n{out}");
    }
    Ok(s)
}

/// h2load prints req/s and failure counts but no percentiles: those come from its
/// per-request log (start µs, status, duration µs per line).
pub(crate) fn parse_h2load(out: &str, log: &str) -> Result<Sample> {
    let mut s = Sample::default();
    let mut got_rps = false;
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in") {
            // "finished in 5.00s, 12345.67 req/s, 12.34MB/s"
            let rps = rest
                .split(',')
                .nth(1)
                .and_then(|p| p.trim().strip_suffix("req/s"))
                .context("h2load req/s")?;
            s.rps = rps.trim().parse()?;
            got_rps = true;
        } else if let Some(rest) = line.strip_prefix("requests:") {
            // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                if let (Some(n), Some(what)) = (w.next(), w.next())
                    && matches!(what, "failed" | "errored" | "timeout")
                {
                    s.errors += n.parse::<u64>()?;
                }
            }
        }
    }
    if !got_rps {
        bail!("unexpected h2load output:\n{out}");
    }
    let mut durations: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2))
        .filter_map(|d| d.trim().parse::<f64>().ok())
        .collect();
    if durations.is_empty() {
        bail!("h2load logged no requests:\n{out}");
    }
    durations.sort_by(|a, b| a.total_cmp(b));
    s.p50_ms = percentile(&durations, 0.50) / 1e3;
    s.p99_ms = percentile(&durations, 0.99) / 1e3;
    Ok(s)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cell {
    pub(crate) client: Client,
    /// The origin's file (1k, 64k): the path requested.
    pub(crate) size: &'static str,
    pub(crate) conns: usize,
}

/// Every cell of the HTTP benchmarks: each client × response size × connections.
pub(crate) fn cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for client in [Client::Wrk, Client::H2load] {
        for (size, _) in SIZES {
            for conns in CONNECTIONS {
                cells.push(Cell {
                    client,
                    size,
                    conns,
                });
            }
        }
    }
    cells
}

impl Cell {
    pub(crate) fn label(&self) -> String {
        format!(
            "{}, {}, {} connections",
            self.client.name(),
            self.size,
            self.conns
        )
    }

    /// The client's arguments; `extra` (e.g. wrk's `-s script.lua`) before the URL.
    fn args(
        &self,
        url: &str,
        seconds: u64,
        warmup: u64,
        log: Option<&Path>,
        extra: &[String],
    ) -> Vec<String> {
        let mut a: Vec<String> = match self.client {
            Client::Wrk => vec![
                format!("-t{CLIENT_THREADS}"),
                format!("-c{}", self.conns),
                format!("-d{seconds}s"),
                "--latency".into(),
            ],
            Client::H2load => vec![
                format!("-c{}", self.conns),
                format!("-m{H2_STREAMS}"),
                format!("-t{CLIENT_THREADS}"),
                "-D".into(),
                seconds.to_string(),
                format!("--warm-up-time={warmup}"),
            ],
        };
        if let Some(l) = log {
            a.push(format!("--log-file={}", l.display()));
        }
        a.extend(extra.iter().cloned());
        a.push(url.to_string());
        a
    }
}

/// How a benchmark runs: rounds, and per run the measured seconds after an unmeasured
/// warm-up with the same client.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) rounds: usize,
    pub(crate) seconds: u64,
    pub(crate) warmup: u64,
}

/// One run of `cell` against `t` on the cell's own path.
pub(crate) fn measure(dir: &Path, cell: Cell, t: &Target, timing: Timing) -> Result<Sample> {
    measure_path(dir, cell, t, cell.size, &[], timing)
}

/// One run of `cell`'s client and connections against `t` on `path` (no leading slash),
/// with `extra` client arguments.
pub(crate) fn measure_path(
    dir: &Path,
    cell: Cell,
    t: &Target,
    path: &str,
    extra: &[String],
    timing: Timing,
) -> Result<Sample> {
    let addr = match cell.client {
        Client::Wrk => t.h1,
        Client::H2load => t.h2,
    };
    let url = format!("http://{addr}/{path}");
    let Timing {
        seconds, warmup, ..
    } = timing;
    let limit = Duration::from_secs(warmup + seconds + 30);
    match cell.client {
        Client::Wrk => {
            // wrk has no warm-up phase of its own: a short unmeasured run first.
            if warmup > 0 {
                run_client(dir, "wrk", &cell.args(&url, warmup, 0, None, extra), limit)?;
            }
            let cpu = CpuSnapshot::take(t.pid);
            let out = run_client(dir, "wrk", &cell.args(&url, seconds, 0, None, extra), limit)?;
            let mut s = parse_wrk(&out)?;
            cpu.charge(t.pid, &mut s);
            Ok(s)
        }
        Client::H2load => {
            // h2load's own warm-up keeps its connections into the measured phase and
            // leaves the warm-up out of req/s and of the log. A separate short run would
            // not do: with every client still starting when a 1 s run ends, h2load
            // sometimes never exits.
            let log = dir.join("h2load.log");
            let cpu = CpuSnapshot::take(t.pid);
            let out = run_client(
                dir,
                "h2load",
                &cell.args(&url, seconds, warmup, Some(&log), extra),
                limit,
            )?;
            let text = std::fs::read_to_string(&log)?;
            let _ = std::fs::remove_file(&log);
            let mut s = parse_h2load(&out, &text)?;
            // Over warm-up and measurement alike: both run the same load.
            cpu.charge(t.pid, &mut s);
            Ok(s)
        }
    }
}

/// Lets every server keep as many connections as the load needs (h2load at 256
/// connections × 10 streams has 2560 requests in flight, each of them an origin
/// connection at a proxy).
pub(crate) fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a valid struct; children inherit the new limit.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub(crate) fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else {
        format!("{ms:.2} ms")
    }
}

pub fn run(args: Args) -> Result<()> {
    raise_nofile();
    let dir = Workdir(std::env::temp_dir().join(edge_tests::unique("edge-bench-proxy-")));
    std::fs::create_dir_all(&dir.0)?;
    // nginx workers drop root; they must read the origin's files.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    let (origin_proc, origin) = start_origin(&dir.0, "")?;
    let wanted = |k: Kind| {
        k == Kind::Origin
            || args
                .only
                .as_ref()
                .is_none_or(|o| k.name().contains(o.as_str()))
    };
    // Procs live until the end of run(): dropping them stops the servers.
    let mut procs = vec![origin_proc];
    let mut targets = vec![origin];
    type Starter = fn(&Path, SocketAddr) -> Result<(Proc, Target)>;
    let starters: [(Kind, Starter); 3] = [
        (Kind::EdgeNode, start_edge_node),
        (Kind::Nginx, start_nginx_proxy),
        (Kind::Haproxy, start_haproxy),
    ];
    for (kind, start) in starters {
        if wanted(kind) {
            let (p, t) = start(&dir.0, targets[0].h1).with_context(|| kind.name())?;
            procs.push(p);
            targets.push(t);
        }
    }

    let cells = cells();
    let timing = Timing {
        rounds: args.rounds,
        seconds: args.seconds,
        warmup: args.warmup,
    };
    let labels: Vec<String> = cells.iter().map(Cell::label).collect();
    let names: Vec<&str> = targets.iter().map(|t| t.kind.name()).collect();
    let samples = interleaved(&mut procs, timing.rounds, &labels, &names, |c, i| {
        measure(&dir.0, cells[c], &targets[i], timing).map(Some)
    })?;
    // Stop the servers before writing anything.
    drop(procs);
    let md = render(&args, &cells, &targets, &samples);
    println!("{md}");
    if args.write {
        report::write_section("proxy", &md)?;
    }
    Ok(())
}

/// Measures every cell against every target, `rounds` times over: `measure(cell,
/// target)` by the indexes of `cells` and `targets` (their labels, for the log), the
/// targets' order rotating from round to round so none always runs first or last; every
/// server in `procs` must still run before each measurement. A measurement that returns
/// `None` is skipped (no sample). Returns the samples by cell, then target.
pub(crate) fn interleaved(
    procs: &mut [Proc],
    rounds: usize,
    cells: &[String],
    targets: &[&str],
    mut measure: impl FnMut(usize, usize) -> Result<Option<Sample>>,
) -> Result<Vec<Vec<Vec<Sample>>>> {
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); targets.len()]; cells.len()];
    let started = Instant::now();
    for round in 0..rounds {
        for (c, cell) in cells.iter().enumerate() {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                for p in procs.iter_mut() {
                    p.check_alive()?;
                }
                let what = || format!("{cell} on {}", targets[i]);
                // One retry: a load generator that hangs (killed at its time limit)
                // should not cost the whole run.
                let s = match measure(c, i) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("{}: {e:#}; measuring again", what());
                        measure(c, i).with_context(what)?
                    }
                };
                let Some(s) = s else { continue };
                eprintln!(
                    "round {} [{:>4.0}s] {:<42} {:<24} {:>9.0} req/s  p50 {:>9}  p99 {:>9}  cpu {:>5.1} µs/req{}",
                    round + 1,
                    started.elapsed().as_secs_f64(),
                    cell,
                    targets[i],
                    s.rps,
                    fmt_ms(s.p50_ms),
                    fmt_ms(s.p99_ms),
                    s.cpu_us_per_req,
                    if s.errors > 0 {
                        format!("  ({} errors)", s.errors)
                    } else {
                        String::new()
                    }
                );
                samples[c][i].push(s);
            }
        }
    }
    Ok(samples)
}

#[derive(Clone, Copy)]
pub(crate) struct Medians {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) cpu_us_per_req: f64,
    pub(crate) system_us_per_req: f64,
    pub(crate) others_us_per_req: f64,
    pub(crate) errors: u64,
}

/// Medians over the rounds; `None` when nothing was measured.
pub(crate) fn medians_of(v: &[Sample]) -> Option<Medians> {
    (!v.is_empty()).then(|| medians(v))
}

fn medians(v: &[Sample]) -> Medians {
    let med = |f: fn(&Sample) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        sys::median(&mut x)
    };
    Medians {
        rps: med(|s| s.rps),
        p50_ms: med(|s| s.p50_ms),
        p99_ms: med(|s| s.p99_ms),
        cpu_us_per_req: med(|s| s.cpu_us_per_req),
        system_us_per_req: med(|s| s.system_us_per_req),
        others_us_per_req: med(|s| s.others_us_per_req),
        errors: v.iter().map(|s| s.errors).sum(),
    }
}

/// One cell's table: a row per target (`None`: not measured, shown as n/a), with the
/// req/s of the row `edge` (edge-node) divided by each other row's.
pub(crate) fn cell_table(rows: &[(&str, Option<Medians>)], edge: Option<usize>) -> String {
    let mut md = String::from(
        "| target | req/s | p50 | p99 | CPU µs/req | errors | edge-node req/s ÷ this |\n",
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    let edge_rps = edge.and_then(|e| rows[e].1).map(|m| m.rps);
    for (i, (name, m)) in rows.iter().enumerate() {
        let Some(m) = m else {
            md.push_str(&format!("| {name} | n/a | n/a | n/a | n/a | n/a | n/a |\n"));
            continue;
        };
        let ratio = edge_rps
            .filter(|_| edge != Some(i))
            .map(|e| format!("{:.2}×", e / m.rps))
            .unwrap_or_default();
        md.push_str(&format!(
            "| {name} | {:.0} | {} | {} | {:.1} | {} | {ratio} |\n",
            m.rps,
            fmt_ms(m.p50_ms),
            fmt_ms(m.p99_ms),
            m.cpu_us_per_req,
            m.errors,
        ));
    }
    md.push('\n');
    md
}

/// edge-node against a peer in one cell: req/s ratio, whether edge-node's p99 is equal
/// or lower, and both in words ("1.23× req/s, p99 1.00 ms vs 2.00 ms (≤)").
pub(crate) fn versus(edge: Medians, peer: Medians) -> (f64, bool, String) {
    let ratio = edge.rps / peer.rps;
    let p99_ok = edge.p99_ms <= peer.p99_ms;
    let text = format!(
        "{ratio:.2}× req/s, p99 {} vs {}{}",
        fmt_ms(edge.p99_ms),
        fmt_ms(peer.p99_ms),
        if p99_ok { " (≤)" } else { "" }
    );
    (ratio, p99_ok, text)
}

fn render(args: &Args, cells: &[Cell], targets: &[Target], samples: &[Vec<Vec<Sample>>]) -> String {
    let edge_version = sys::version(edge_tests::edge_node_bin().to_str().unwrap_or(""), "-V");
    let commit = sys::run("git", &["rev-parse", "--short", "HEAD"])
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut md = String::from("## HTTP pass-through proxy (req/s, p50, p99)\n\n");
    md.push_str(&format!(
        "Command: `cargo xtask bench proxy` ({} rounds; each run {} s measured after a {} s \
         warm-up with the same client: a separate wrk run, h2load's own warm-up phase; targets interleaved, their order rotating each \
         round). Machine: {} CPUs ({}), kernel {}. Versions: {} (commit {commit}); {}; {}; \
         {}; {}.\n\n",
        args.rounds,
        args.seconds,
        args.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        sys::kernel_release(),
        edge_version,
        sys::version("nginx", "-v"),
        sys::version("haproxy", "-v"),
        sys::version("wrk", "-v"),
        sys::version("h2load", "--version"),
    ));
    md.push_str(&format!(
        "Setup, all on 127.0.0.1 and sharing the cores with the load generator: one origin, \
         nginx serving static files of 1 KiB and 64 KiB (`sendfile on`, `access_log off`, \
         HTTP/1.1 and h2c ports). Each proxy passes every request through to it over \
         keep-alive HTTP/1.1: edge-node (release build, `[log] level = \"warn\"` so its \
         per-request access log is off, XDP off, otherwise defaults; h1 and h2c on one \
         port); nginx (`worker_processes auto`, `proxy_pass` to an `upstream` with \
         `keepalive 256`, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, \
         `access_log off`, h2c with `listen … http2`); haproxy (`mode http`, \
         `http-reuse always`, default threads, h2c with `bind … proto h2`, no logging). \
         nginx proxy and origin both use `keepalive_requests 1000000` so no server closes \
         a client's connection during a run. Clients: `wrk -t{CLIENT_THREADS} -cN -dS \
         --latency` (p50/p99 from its latency distribution) and `h2load -cN \
         -m{H2_STREAMS} -t{CLIENT_THREADS} -D S --warm-up-time=W` (p50/p99 computed from its \
         `--log-file` per-request times). Cells are medians over the rounds of each run's \
         req/s, p50 and p99; \"errors\" sums failed requests, non-2xx/3xx responses and \
         socket errors over all rounds. \"CPU µs/req\" is the CPU time (user + system) \
         of the target's own processes during a run divided by the requests it served \
         (for a proxy, without the origin's share; kernel TCP work done on its behalf \
         included): what each request costs, whoever shares the cores. Target: edge-node ≥ {TARGET_VS_NGINX}× nginx's req/s at equal \
         or lower p99.\n\n"
    ));
    let idx = |k: Kind| targets.iter().position(|t| t.kind == k);
    let (edge, nginx, haproxy) = (idx(Kind::EdgeNode), idx(Kind::Nginx), idx(Kind::Haproxy));
    let mut summary = String::new();
    let mut budget = String::new();
    for (c, cell) in cells.iter().enumerate() {
        let m: Vec<Medians> = samples[c].iter().map(|v| medians(v)).collect();
        if let (Some(e), Some(n)) = (edge, nginx) {
            budget.push_str(&budget_row(&cell.label(), m[e], m[n], TARGET_VS_NGINX));
        }
        md.push_str(&format!("### {}\n\n", cell.label()));
        let rows: Vec<(&str, Option<Medians>)> = targets
            .iter()
            .zip(&m)
            .map(|(t, m)| (t.kind.name(), Some(*m)))
            .collect();
        md.push_str(&cell_table(&rows, edge));
        if let Some(e) = edge {
            let vs = |p: Option<usize>| p.map(|p| versus(m[e], m[p]));
            let mut line = format!("- {}: edge-node", cell.label());
            if let Some((ratio, p99_ok, text)) = vs(nginx) {
                let met = ratio >= TARGET_VS_NGINX && p99_ok;
                line.push_str(&format!(
                    " / nginx {text}; target **{}**",
                    if met { "met" } else { "NOT met" }
                ));
            }
            if let Some((_, _, text)) = vs(haproxy) {
                line.push_str(&format!("; / haproxy {text}"));
            }
            summary.push_str(&line);
            summary.push('\n');
        }
    }
    if !summary.is_empty() {
        md.push_str(&format!(
            "### Target (edge-node ≥ {TARGET_VS_NGINX}× nginx req/s at equal or lower p99)\n\n"
        ));
        md.push_str(&summary);
    }
    if !budget.is_empty() {
        md.push_str(&budget_section(TARGET_VS_NGINX, "nginx", &budget));
    }
    md
}

/// The CPU-budget table's heading and explanation, for a target of `factor`× `peer`.
pub(crate) fn budget_section(factor: f64, peer: &str, rows: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "\n### What {factor}× {peer} leaves a server on this machine\n\n\
         The load generator, the origin and the server under test share {cores} cores. At \
         {factor}× {peer}'s req/s the machine has {cores} × 10⁶ ÷ that rate µs of CPU per \
         request; the load generator and the origin (everything but the server: the \
         machine's busy time in /proc/stat, steal excluded, minus the server's own, during \
         {peer}'s runs) take their share of it, and what is left is \
         all a server may spend per request to reach the target. Beside it, what each \
         server spent (medians): in the kernel (its socket calls and the loopback TCP work \
         they carry) and in its own code. The client's and origin's costs per request \
         tend to fall a little at higher rates (more work per wakeup), so \"left\" is an \
         estimate, not a bound.\n\n\
         | cell | {factor}× {peer} req/s | CPU µs per request at that rate | client + origin \
         µs/req | left for the server | {peer} kernel + user µs/req | edge-node kernel + \
         user µs/req |\n|---|---:|---:|---:|---:|---:|---:|\n{rows}\n"
    )
}

/// One cell's row of the CPU-budget table (see [`budget_section`]).
pub(crate) fn budget_row(label: &str, edge: Medians, peer: Medians, factor: f64) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let goal = factor * peer.rps;
    let per_req = cores * 1e6 / goal;
    let left = per_req - peer.others_us_per_req;
    let split = |m: Medians| {
        format!(
            "{:.1} + {:.1}",
            m.system_us_per_req,
            m.cpu_us_per_req - m.system_us_per_req
        )
    };
    format!(
        "| {label} | {goal:.0} | {per_req:.1} | {:.1} | **{left:.1}** | {} | {} |\n",
        peer.others_us_per_req,
        split(peer),
        split(edge),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:1/1k\n  2 threads and 32 connections\n  \
                   Latency Distribution\n     50%  167.00us\n     75%  351.00us\n     90%  \
                   424.00us\n     99%    2.10ms\n  290413 requests in 2.10s, 350.08MB read\n  \
                   Socket errors: connect 0, read 2, write 0, timeout 3\n  Non-2xx or 3xx \
                   responses: 4\nRequests/sec: 138274.92\nTransfer/sec:    166.68MB\n";
        let s = parse_wrk(out).unwrap();
        assert_eq!(s.rps, 138274.92);
        assert!((s.p50_ms - 0.167).abs() < 1e-9);
        assert!((s.p99_ms - 2.1).abs() < 1e-9);
        assert_eq!(s.errors, 9);
    }

    #[test]
    fn h2load_output() {
        let out = "finished in 2.00s, 181355.50 req/s, 198.90MB/s\nrequests: 10 total, 10 \
                   started, 10 done, 9 succeeded, 1 failed, 0 errored, 0 timeout\n";
        let log: String = (1..=100).map(|d| format!("1795\t200\t{d}\n")).collect();
        let s = parse_h2load(out, &log).unwrap();
        assert_eq!(s.rps, 181355.5);
        assert_eq!(s.errors, 1);
        assert!((s.p50_ms - 0.050).abs() < 1e-9);
        assert!((s.p99_ms - 0.099).abs() < 1e-9);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1.50s"), Some(1500.0));
        assert_eq!(parse_duration_ms("250.00us"), Some(0.25));
        assert_eq!(parse_duration_ms("x"), None);
    }
}
