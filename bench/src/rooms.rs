//! Rooms (issue 17): WebSocket members of edge-node rooms (`handler = { rooms = … }`)
//! over loopback, in two layouts: one room of 1000 members (every message fans out to
//! 999) and 1000 rooms of 2 members (every message goes to one other). Reported:
//! messages delivered per second, delivery latency (the sender's clock in the message,
//! the receiver's `now − sent`), the node's CPU per delivered message, and its memory
//! per member (VmRSS before the members join against with all of them joined).
//!
//! - The load generator is a separate process (`edge-bench rooms-load`,
//!   bench/src/rooms_load.rs: tokio-tungstenite clients on a 2-worker tokio runtime),
//!   so that /proc tells the node's CPU from the client's.
//! - A fresh node per run (so that every memory reading starts from the same place):
//!   `[[rooms]]` with the limits raised for the load (members per room, message rate and
//!   burst, the per-member queue), `persist_window = "1s"`, and an `[admin]` listener
//!   whose /metrics gauges `edge_rooms_live` / `edge_room_members` are checked against
//!   what joined.
//! - `message` rows (`{"type":"message","data":…}`: sent on, not stored) at several
//!   offered rates, and an `update` row (`{"type":"update","state":…}`: stored
//!   write-behind within a second, sent on, acknowledged to the sender).
//! - Every member's count is checked after the senders stop: it must have received
//!   exactly what the others in its room sent (and, for updates, an ack per update it
//!   sent); anything missing is reported as lost. There is no peer: the numbers are
//!   absolute, rounds interleave the cells (their order rotating), medians over rounds.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    proxy::{Proc, Workdir, cpu_model, fmt_ms, free_port, raise_nofile, tree_cpu_split},
    report,
    rooms_load::LoadResult,
    sys,
};

/// The admin API's token in the bench's nodes.
pub(crate) const ADMIN_TOKEN: &str = "edge-bench-admin-token-0123456789";
const ROOMS: &str = "bench";
const PREFIX: &str = "/rooms";

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each runs every cell once (a fresh node per run).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of sending before the measured window (same run).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Offered deliveries per second of the `message` rows, one row each per layout
    /// (the senders' rate follows: offered ÷ (senders × (members − 1))).
    #[arg(long, value_delimiter = ',', default_value = "20000,100000,200000")]
    loads: Vec<u64>,
    /// Offered deliveries per second of the `update` rows (0: none).
    #[arg(long, default_value_t = 20_000)]
    update_load: u64,
    /// The fan-out layout: members of the one room, and how many of them send.
    #[arg(long, default_value_t = 1000)]
    big_members: usize,
    #[arg(long, default_value_t = 10)]
    big_senders: usize,
    /// The many-rooms layout: rooms of two members, both sending.
    #[arg(long, default_value_t = 1000)]
    small_rooms: usize,
    /// Bytes of padding in each message's data (besides its ~50-byte stamp).
    #[arg(long, default_value_t = 64)]
    pad: usize,
    /// Only cells whose label contains this.
    #[arg(long)]
    only: Option<String>,
    /// Write the report into bench/RESULTS.md.
    #[arg(long)]
    write: bool,
}

#[derive(Clone, Copy)]
struct Layout {
    name: &'static str,
    rooms: usize,
    members: usize,
    senders: usize,
}

#[derive(Clone, Copy)]
struct Cell {
    layout: Layout,
    update: bool,
    offered: u64,
}

impl Cell {
    fn kind(&self) -> &'static str {
        if self.update { "update" } else { "message" }
    }

    fn label(&self) -> String {
        format!(
            "{}, {}s, {} deliveries/s offered",
            self.layout.name,
            self.kind(),
            self.offered
        )
    }

    /// Messages per second of each sender.
    fn rate(&self) -> f64 {
        let l = self.layout;
        self.offered as f64 / (l.rooms * l.senders * (l.members - 1)) as f64
    }

    fn members(&self) -> usize {
        self.layout.rooms * self.layout.members
    }
}

/// One run of one cell.
#[derive(Clone, Default)]
struct Run {
    load: LoadResult,
    /// The node's CPU (user, system) during the window, seconds, and the load
    /// generator's (user + system).
    node_user: f64,
    node_system: f64,
    gen_cpu: f64,
    /// VmRSS of the node (KiB) before anyone joined and with everyone joined.
    rss_before_kib: u64,
    rss_joined_kib: u64,
    /// `edge_rooms_live` and `edge_room_members` with everyone joined, and the members
    /// gauge once the load generator has gone (polled until 0, at most 10 s).
    gauges: (i64, i64),
    members_after: i64,
}

impl Run {
    fn delivered_per_s(&self) -> f64 {
        self.load.delivered_in_window as f64 / self.load.window_seconds
    }

    fn per_delivery_us(&self, cpu_s: f64) -> f64 {
        cpu_s * 1e6 / self.load.delivered_in_window.max(1) as f64
    }

    fn kib_per_member(&self) -> f64 {
        (self.rss_joined_kib as f64 - self.rss_before_kib as f64) / self.load.members.max(1) as f64
    }
}

// ---------------------------------------------------------------------------------
// Small helpers shared with the GraphQL benchmark.

/// One HTTP/1.1 request on its own connection (`Connection: close`): status and body.
pub(crate) fn http_once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    let mut buf = Vec::new();
    s.take(16 << 20).read_to_end(&mut buf)?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let mut body = buf[end + 4..].to_vec();
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        body = dechunk(&body);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// A gauge's value in a /metrics text (`name{rooms="bench"} 3`).
fn gauge(metrics: &str, name: &str) -> Option<i64> {
    let prefix = format!("{name}{{rooms=\"{ROOMS}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}

fn gauges(admin: SocketAddr) -> Result<(i64, i64)> {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, m) = http_once(admin, "GET", "/metrics", &[("Authorization", &auth)], None)?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok((
        gauge(&m, "edge_rooms_live").unwrap_or(0),
        gauge(&m, "edge_room_members").unwrap_or(0),
    ))
}

/// VmRSS of `pid`, KiB.
pub(crate) fn vm_rss_kib(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// `edge-node check`, then the node with `config`, until its admin /healthz and
/// `probe` on the HTTP listener answer `probe_status`.
pub(crate) fn spawn_node(
    dir: &Path,
    name: &str,
    config: &str,
    http: SocketAddr,
    admin: SocketAddr,
    probe: (&str, u16),
) -> Result<Proc> {
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(&conf, config)?;
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
        let ready = http_once(admin, "GET", "/healthz", &[], None).is_ok_and(|(s, _)| s == 200)
            && http_once(http, "GET", probe.0, &[], None).is_ok_and(|(s, _)| s == probe.1);
        if ready {
            return Ok(p);
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{name} does not answer on {http}:\n{}", p.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn node_config(listen: SocketAddr, admin: SocketAddr, data: &Path, max_members: usize) -> String {
    // As the other benchmarks run it: log level warn, XDP off, no per-source SYN budget
    // (every member connects from 127.0.0.1), threat scoring off. The rooms' limits
    // are raised so that none of them shapes the load: members per room, the message
    // rate per member, and the per-member queue (a member whose queue fills is cut off,
    // which the loss count would show).
    format!(
        "[node]\nid = \"bench\"\n\n[log]\nlevel = \"warn\"\n\n\
         [http]\nlisten = [\"{listen}\"]\n\n\
         [admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\n\
         [xdp]\nmode = \"off\"\n\n[xdp.rate]\nsyn_per_sec = 0\n\n\
         [threat]\nenabled = false\n\n\
         [storage]\ndir = \"{}\"\n\n\
         [[rooms]]\nname = \"{ROOMS}\"\nmax_members = {max_members}\nmax_rooms = 10000\n\
         messages_per_second = 100000.0\nmessage_burst = 100000\nmember_queue = 16384\n\
         persist_window = \"1s\"\n\n\
         [[route]]\nhosts = [\"*\"]\npath_prefix = \"{PREFIX}\"\nhandler = {{ rooms = \"{ROOMS}\" }}\n",
        data.display()
    )
}

// ---------------------------------------------------------------------------------
// The load generator, as a child process speaking lines.

struct LoadGen {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: std::path::PathBuf,
}

impl LoadGen {
    fn spawn(dir: &Path, cell: &Cell, addr: SocketAddr, args: &Args) -> Result<Self> {
        let log = dir.join("rooms-load.log");
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("rooms-load")
            .args(["--addr", &addr.to_string()])
            .args(["--path", PREFIX])
            .args(["--rooms", &cell.layout.rooms.to_string()])
            .args(["--members", &cell.layout.members.to_string()])
            .args(["--senders", &cell.layout.senders.to_string()])
            .args(["--rate", &format!("{:.6}", cell.rate())])
            .args(["--kind", cell.kind()])
            .args(["--pad", &args.pad.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--limit", &(args.warmup + args.seconds + 240).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd.spawn().context("cannot start rooms-load")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            log,
        })
    }

    /// The next line starting with `word` (the rest of it), within `within`.
    fn expect(&mut self, word: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(word) {
                        return Ok(rest.trim().to_string());
                    }
                    eprintln!("rooms-load: {l}");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "rooms-load said no {word:?} within {within:?}:\n{}",
                        self.log_tail()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "rooms-load ended ({status:?}) before {word:?}:\n{}",
                        self.log_tail()
                    )
                }
            }
        }
    }

    fn say(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Tells it to quit and waits (bounded) for it to end.
    fn finish(mut self) -> Result<()> {
        let _ = self.say("quit");
        self.stdin = None;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "rooms-load failed ({status}):\n{}",
                    self.log_tail()
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("rooms-load still running 20 s after quit: killed")
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One run: a fresh node, the members joined, the window measured, the counts checked.
fn run_once(dir: &Path, cell: &Cell, args: &Args, n: usize) -> Result<Run> {
    let data = dir.join(format!("data-{n}"));
    let (http, admin) = (free_port()?, free_port()?);
    let config = node_config(http, admin, &data, cell.layout.members.max(1000) + 10);
    // Without an upgrade a rooms route answers 426: the route is there.
    let mut node = spawn_node(
        dir,
        "edge-node",
        &config,
        http,
        admin,
        (&format!("{PREFIX}/probe"), 426),
    )?;
    let pid = node.child.id() as i32;
    // Let the start settle (its threads, the store) before the first reading.
    std::thread::sleep(Duration::from_millis(500));
    let mut run = Run {
        rss_before_kib: vm_rss_kib(pid)?,
        ..Default::default()
    };
    let mut gen_ = LoadGen::spawn(dir, cell, http, args)?;
    let gen_pid = gen_.child.id() as i32;
    let joined = gen_.expect("joined", Duration::from_secs(150))?;
    node.check_alive()?;
    run.rss_joined_kib = vm_rss_kib(pid)?;
    run.gauges = gauges(admin)?;
    eprintln!(
        "  joined: {joined} (members, seconds); gauges rooms {} members {}; VmRSS {} → {} KiB",
        run.gauges.0, run.gauges.1, run.rss_before_kib, run.rss_joined_kib
    );
    gen_.say("go")?;
    let window = Duration::from_secs(args.warmup + args.seconds + 30);
    gen_.expect("measure", window)?;
    let (u0, s0) = tree_cpu_split(pid);
    let g0 = tree_cpu_split(gen_pid);
    gen_.expect("end", window)?;
    let (u1, s1) = tree_cpu_split(pid);
    let g1 = tree_cpu_split(gen_pid);
    let result = gen_.expect("result", Duration::from_secs(60))?;
    run.load = serde_json::from_str(&result).context("rooms-load's result")?;
    run.node_user = u1 - u0;
    run.node_system = s1 - s0;
    run.gen_cpu = (g1.0 - g0.0) + (g1.1 - g0.1);
    gen_.finish()?;
    // Everyone has gone: the members gauge must come back to zero.
    let start = Instant::now();
    loop {
        run.members_after = gauges(admin)?.1;
        if run.members_after == 0 || start.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    node.check_alive()?;
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    Ok(run)
}

pub fn run(args: Args) -> Result<()> {
    raise_nofile();
    let dir = Workdir(std::env::temp_dir().join(edge_tests::unique("edge-bench-rooms-")));
    std::fs::create_dir_all(&dir.0)?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let big = Layout {
        name: "1 room × 1000 members",
        rooms: 1,
        members: args.big_members,
        senders: args.big_senders,
    };
    let small = Layout {
        name: "1000 rooms × 2 members",
        rooms: args.small_rooms,
        members: 2,
        senders: 2,
    };
    let big = Layout {
        name: if args.big_members == 1000 {
            big.name
        } else {
            "1 room (fan-out)"
        },
        ..big
    };
    let small = Layout {
        name: if args.small_rooms == 1000 {
            small.name
        } else {
            "many rooms × 2 members"
        },
        ..small
    };
    let mut cells = Vec::new();
    for layout in [big, small] {
        for &offered in &args.loads {
            cells.push(Cell {
                layout,
                update: false,
                offered,
            });
        }
        if args.update_load > 0 {
            cells.push(Cell {
                layout,
                update: true,
                offered: args.update_load,
            });
        }
    }
    cells.retain(|c| {
        args.only
            .as_ref()
            .is_none_or(|o| c.label().contains(o.as_str()))
    });
    ensure!(!cells.is_empty(), "no cell left to run");
    for c in &cells {
        ensure!(
            c.rate() <= 1000.0,
            "{}: {:.0} messages/s per sender is beyond the load generator's 1 ms timer",
            c.label(),
            c.rate()
        );
    }
    let labels: Vec<String> = cells.iter().map(Cell::label).collect();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); cells.len()];
    let started = Instant::now();
    let mut n = 0;
    for round in 0..args.rounds {
        for k in 0..cells.len() {
            // The cells' order rotates from round to round.
            let c = (k + round) % cells.len();
            n += 1;
            eprintln!(
                "round {} [{:>4.0}s] {}",
                round + 1,
                started.elapsed().as_secs_f64(),
                labels[c]
            );
            let r = match run_once(&dir.0, &cells[c], &args, n) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{}: {e:#}; running it again", labels[c]);
                    n += 1;
                    run_once(&dir.0, &cells[c], &args, n).with_context(|| labels[c].clone())?
                }
            };
            let l = &r.load;
            eprintln!(
                "  sent {} ({} in the window, {:.1}/s offered per sender); delivered {:.0}/s; \
                 latency p50 {} p99 {} max {}; node CPU {:.2} µs/delivery; load generator \
                 {:.2} µs/delivery; {:.1} KiB/member; lost {} of {}; members short {}; \
                 closed {}; out of order {}; errors {}; acks {}/{}; drained in {:.2} s",
                l.sent,
                l.sent_in_window,
                cells[c].rate(),
                r.delivered_per_s(),
                fmt_ms(l.p50_us / 1e3),
                fmt_ms(l.p99_us / 1e3),
                fmt_ms(l.max_us / 1e3),
                r.per_delivery_us(r.node_user + r.node_system),
                r.per_delivery_us(r.gen_cpu),
                r.kib_per_member(),
                l.lost,
                l.expected,
                l.members_short,
                l.closed,
                l.out_of_order,
                l.errors,
                l.acks,
                l.acks_expected,
                l.drain_seconds,
            );
            runs[c].push(r);
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let md = render(&args, &cells, &runs, (&load_before, &load_after));
    println!("{md}");
    if args.write {
        report::write_section("rooms", &md)?;
    }
    Ok(())
}

fn med(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    sys::median(&mut v)
}

fn loadavg(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn render(args: &Args, cells: &[Cell], runs: &[Vec<Run>], load: (&str, &str)) -> String {
    let edge_version = sys::version(edge_tests::edge_node_bin().to_str().unwrap_or(""), "-V");
    let commit = sys::run("git", &["rev-parse", "--short", "HEAD"])
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut md = String::from(
        "## Rooms: one room of 1000 members, 1000 rooms of 2 (deliveries/s, latency, memory)\n\n",
    );
    md.push_str(&format!(
        "Command: `cargo xtask bench rooms` ({} rounds; each run {} s measured after {} s of \
         the same load; a fresh node per run; cells interleaved, their order rotating each \
         round). Machine: {} CPUs ({}), kernel {}; load average {} at the start, {} at the \
         end. Versions: {edge_version} (commit {commit}); load generator tokio-tungstenite \
         0.30 (`edge-bench rooms-load`).\n\n",
        args.rounds,
        args.seconds,
        args.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        sys::kernel_release(),
        loadavg(load.0),
        loadavg(load.1),
    ));
    md.push_str(&format!(
        "Setup, all on 127.0.0.1, the load generator sharing the cores with the node. \
         edge-node (release build, `[log] level = \"warn\"`, XDP off, `[threat] enabled = \
         false`, an `[admin]` listener for /metrics) with one `[[rooms]]` on a route \
         `path_prefix = \"{PREFIX}\"` without `[route.auth]` (members are anonymous): \
         `max_members` = members + 10 (at least 1010), `messages_per_second = 100000.0`, \
         `message_burst = 100000`, `member_queue = 16384`, `persist_window = \"1s\"`, \
         otherwise defaults (`[storage] sync_window = \"0s\"`). The load generator is a \
         separate process (bench/src/rooms_load.rs): one WebSocket connection per member \
         (tokio-tungstenite over loopback TCP, `TCP_NODELAY`, a tokio multi-thread runtime \
         with 2 workers, at most 64 handshakes at once); each room's senders (the 1000-member \
         room: the first {big_senders} members; the 2-member rooms: both) send paced \
         messages at a fixed rate, spread over the period, `{{\"type\":\"message\",\"data\":\
         {{\"t\":…,\"s\":…,\"n\":…,\"p\":\"<{pad} bytes>\"}}}}` (or `{{\"type\":\"update\",\
         \"state\":…}}` with the same object), `t` being the sender's clock in µs; every \
         member parses every message it receives and takes `now − t` as the delivery \
         latency. \"offered\" is the deliveries per second the senders' rate asks for \
         (rate × senders × (members − 1)); \"delivered/s\" counts the messages from others \
         that members received during the measured window; the latency percentiles are \
         over every delivery of the messages sent in the window (after the senders stop, \
         the run waits up to 15 s for stragglers). \"node CPU\" is the node process' CPU \
         time (user + system, in brackets the system part, from /proc/<pid>/stat) during \
         the window ÷ the deliveries of the window; \"load generator CPU\" the same for \
         the client process. \"RSS/member\" is the node's VmRSS (/proc/<pid>/status) with \
         every member joined minus before anyone joined, ÷ members: user-space memory only \
         (socket buffers are the kernel's). \"lost\" sums over the rounds the deliveries \
         some member never received (each member must receive exactly what the others in \
         its room sent; for updates also one ack per update it sent). Cells are medians \
         over the rounds. Rooms have no peer in issue 17: these are absolute numbers.\n\n",
        big_senders = args.big_senders,
        pad = args.pad,
    ));
    md.push_str(
        "| layout | kind | offered deliveries/s | delivered/s | p50 | p99 | max | node CPU µs/delivery (system) | load generator CPU µs/delivery | RSS/member | lost |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (c, cell) in cells.iter().enumerate() {
        let r = &runs[c];
        if r.is_empty() {
            md.push_str(&format!(
                "| {} | {} | {} | n/a | | | | | | | |\n",
                cell.layout.name,
                cell.kind(),
                cell.offered
            ));
            continue;
        }
        let lost: u64 = r.iter().map(|x| x.load.lost).sum();
        let expected: u64 = r.iter().map(|x| x.load.expected).sum();
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.2} ({:.2}) | {:.2} | {:.1} KiB | {} of {} |\n",
            cell.layout.name,
            cell.kind(),
            cell.offered,
            med(r, Run::delivered_per_s),
            fmt_ms(med(r, |x| x.load.p50_us) / 1e3),
            fmt_ms(med(r, |x| x.load.p99_us) / 1e3),
            fmt_ms(med(r, |x| x.load.max_us) / 1e3),
            med(r, |x| x.per_delivery_us(x.node_user + x.node_system)),
            med(r, |x| x.per_delivery_us(x.node_system)),
            med(r, |x| x.per_delivery_us(x.gen_cpu)),
            med(r, Run::kib_per_member),
            lost,
            expected,
        ));
    }
    md.push_str("\n### What was checked\n\n");
    for (c, cell) in cells.iter().enumerate() {
        let r = &runs[c];
        if r.is_empty() {
            continue;
        }
        let members = cell.members() as i64;
        let rooms = cell.layout.rooms as i64;
        let gauges_ok = r.iter().filter(|x| x.gauges == (rooms, members)).count();
        let seen: Vec<String> = r
            .iter()
            .map(|x| format!("{}/{}", x.gauges.0, x.gauges.1))
            .collect();
        let after: Vec<String> = r.iter().map(|x| x.members_after.to_string()).collect();
        let sum = |f: fn(&Run) -> u64| -> u64 { r.iter().map(f).sum() };
        let short: usize = r.iter().map(|x| x.load.members_short).sum();
        let closed: usize = r.iter().map(|x| x.load.closed).sum();
        let late: usize = r.iter().map(|x| x.load.senders_late).sum();
        md.push_str(&format!(
            "- {}: {} runs, {} members joined in each (median {:.2} s to join all); gauges \
             `edge_rooms_live`/`edge_room_members` with everyone joined {} (expected \
             {rooms}/{members}: {gauges_ok} of {} runs match), members after the clients \
             left {}; sent {} (median {:.0} in the window, {:.1}/s per sender offered), \
             expected deliveries {}, received {}, lost {}, duplicates {}, members short {}, \
             connections closed early {}, out-of-order sequence numbers {}, error answers {}, \
             senders late {}{}; latency samples {} (median p99.9 {}).\n",
            cell.label(),
            r.len(),
            r[0].load.members,
            med(r, |x| x.load.join_seconds),
            seen.join(", "),
            r.len(),
            after.join(", "),
            sum(|x| x.load.sent),
            med(r, |x| x.load.sent_in_window as f64),
            cell.rate(),
            sum(|x| x.load.expected),
            sum(|x| x.load.received),
            sum(|x| x.load.lost),
            sum(|x| x.load.extra),
            short,
            closed,
            sum(|x| x.load.out_of_order),
            sum(|x| x.load.errors),
            late,
            if cell.update {
                format!(
                    "; acks {} of {}",
                    sum(|x| x.load.acks),
                    sum(|x| x.load.acks_expected)
                )
            } else {
                String::new()
            },
            sum(|x| x.load.latencies),
            fmt_ms(med(r, |x| x.load.p999_us) / 1e3),
        ));
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read() {
        let m = "# TYPE edge_rooms_live gauge\nedge_rooms_live{rooms=\"bench\"} 1000\n\
                 edge_room_members{rooms=\"bench\"} 2000\n";
        assert_eq!(gauge(m, "edge_rooms_live"), Some(1000));
        assert_eq!(gauge(m, "edge_room_members"), Some(2000));
        assert_eq!(gauge(m, "edge_nothing"), None);
    }

    #[test]
    fn chunks_are_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
