//! The rooms benchmark's load generator (`edge-bench rooms-load`, started by `edge-bench
//! rooms`): a process of its own, so that its CPU is never counted as the node's.
//!
//! It joins `rooms × members` WebSocket members over loopback (tokio-tungstenite, a
//! tokio multi-thread runtime, at most `handshakes` handshakes at once), each room's
//! first `senders` members sending at `rate` messages per second (paced, spread over
//! the period), every member counting what it receives. The sender's clock is in the
//! message (`data.t` / `state.t`, µs since this process started); a receiver takes
//! `now − t` as the delivery latency. Everything is bounded: the joins, the wait for
//! each command, the drain, the whole process (`limit`).
//!
//! The protocol with the runner, one line each way:
//! - out `joined <members> <seconds>` once every member has its `init`;
//! - in `go`: the warm-up starts 50 ms later, then the measured window;
//! - out `measure` at the window's start, `end` at its end (the runner reads the
//!   node's CPU on each);
//! - out `result <json>` ([`LoadResult`]) once every member has what the others in its
//!   room sent (or the drain's time is up);
//! - in `quit` (or the end of stdin): the members disconnect, the process ends.

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::{
    net::TcpStream,
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
    time::MissedTickBehavior,
};
use tokio_tungstenite::{
    client_async,
    tungstenite::{Message, client::IntoClientRequest},
};

/// How long the senders may take to stop, and the members to have everything the
/// others sent, after the window's end.
const DRAIN: Duration = Duration::from_secs(15);

#[derive(clap::Args, Clone)]
pub struct LoadArgs {
    /// The node's HTTP listener.
    #[arg(long)]
    pub addr: SocketAddr,
    /// The rooms route's prefix and the room names' prefix: rooms are `<path>/<prefix><n>`.
    #[arg(long, default_value = "/rooms")]
    pub path: String,
    #[arg(long, default_value = "bench-")]
    pub prefix: String,
    /// Rooms, and members in each.
    #[arg(long)]
    pub rooms: usize,
    #[arg(long)]
    pub members: usize,
    /// Members of each room that send (the first ones).
    #[arg(long)]
    pub senders: usize,
    /// Messages per second of each sender (at most 1000: the timer has 1 ms steps).
    #[arg(long)]
    pub rate: f64,
    /// `message` (sent on, not stored) or `update` (stored, sent on, acknowledged).
    #[arg(long, default_value = "message")]
    pub kind: String,
    /// Bytes of padding in each message's data, besides its stamp.
    #[arg(long, default_value_t = 64)]
    pub pad: usize,
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// WebSocket handshakes in progress at most.
    #[arg(long, default_value_t = 64)]
    pub handshakes: usize,
    /// The whole process ends (failing) after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub limit: u64,
}

/// What the load generator saw, printed as one JSON line.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct LoadResult {
    pub members: usize,
    /// From the first connect to the last member's `init`.
    pub join_seconds: f64,
    /// Messages (or updates) sent, warm-up included, and in the measured window.
    pub sent: u64,
    pub sent_in_window: u64,
    pub window_seconds: f64,
    /// Messages (or updates) from others received during the window (by receive time).
    pub delivered_in_window: u64,
    /// Over all members: what the others in its room sent, and what it received.
    pub expected: u64,
    pub received: u64,
    /// Expected but never received (after the drain), and received beyond what was sent.
    pub lost: u64,
    pub extra: u64,
    /// Members that miss some of what they should have received (or of their acks).
    pub members_short: usize,
    /// Updates only: acks received, and updates sent (one ack each).
    pub acks: u64,
    pub acks_expected: u64,
    /// Events whose sequence number was not above the previous one a member saw.
    pub out_of_order: u64,
    /// `{"type":"error"}` answers and unparsable messages.
    pub errors: u64,
    /// Members whose connection ended before the end of the run.
    pub closed: usize,
    /// Senders that had not stopped when the drain began.
    pub senders_late: usize,
    /// Delivery latencies of the messages sent in the window: samples, percentiles, µs.
    pub latencies: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// From the window's end until every member had everything (or `DRAIN`).
    pub drain_seconds: f64,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    data: Option<Stamp>,
    #[serde(default)]
    state: Option<Stamp>,
}

#[derive(Deserialize, Clone, Copy)]
struct Stamp {
    t: u64,
}

/// The timeline of the run, µs since `Shared::base`.
#[derive(Clone, Copy)]
struct Plan {
    start_us: u64,
    m0_us: u64,
    m1_us: u64,
}

struct Shared {
    base: Instant,
    sent: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    acks: Vec<AtomicU64>,
    sent_in_window: AtomicU64,
    joined: AtomicUsize,
    senders_done: AtomicUsize,
    out_of_order: AtomicU64,
    errors: AtomicU64,
    closed: AtomicUsize,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

#[derive(Default)]
struct MemberOut {
    lats: Vec<u32>,
    in_window: u64,
}

pub fn run(args: LoadArgs) -> Result<()> {
    ensure!(
        args.rooms > 0 && args.members > 1 && args.senders <= args.members,
        "rooms > 0, members > 1, senders <= members"
    );
    ensure!(
        args.rate > 0.0 && args.rate <= 1000.0,
        "rate is 0 to 1000 messages per second per sender"
    );
    ensure!(
        args.kind == "message" || args.kind == "update",
        "kind is message or update"
    );
    let limit = Duration::from_secs(args.limit);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        tokio::time::timeout(limit, load(args))
            .await
            .unwrap_or_else(|_| bail!("the load generator ran out of time ({limit:?})"))
    });
    // Whatever is left (a member stuck in a write) goes with the runtime.
    rt.shutdown_timeout(Duration::from_secs(1));
    out
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Waits for `word` on stdin (`None` from the channel: stdin ended).
async fn wait_for_line(
    lines: &mut mpsc::UnboundedReceiver<String>,
    word: &str,
    within: Duration,
) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Err(_) => bail!("no {word:?} on stdin within {within:?}"),
            Ok(None) => return Ok(false),
            Ok(Some(l)) if l.trim() == word => return Ok(true),
            Ok(Some(l)) => eprintln!("rooms-load: ignoring {l:?}"),
        }
    }
}

async fn load(args: LoadArgs) -> Result<()> {
    let a = Arc::new(args);
    let total = a.rooms * a.members;
    let sh = Arc::new(Shared {
        base: Instant::now(),
        sent: (0..total).map(|_| AtomicU64::new(0)).collect(),
        received: (0..total).map(|_| AtomicU64::new(0)).collect(),
        acks: (0..total).map(|_| AtomicU64::new(0)).collect(),
        sent_in_window: AtomicU64::new(0),
        joined: AtomicUsize::new(0),
        senders_done: AtomicUsize::new(0),
        out_of_order: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        closed: AtomicUsize::new(0),
    });
    let (plan_tx, plan_rx) = watch::channel::<Option<Plan>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(a.handshakes.max(1)));
    let (line_tx, mut lines) = mpsc::unbounded_channel::<String>();
    // A thread, not a task: a blocking read of stdin must not hold a runtime worker.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..total {
        set.spawn(member(
            i,
            a.clone(),
            sh.clone(),
            sem.clone(),
            plan_rx.clone(),
            stop_rx.clone(),
        ));
    }
    let join_deadline = started + Duration::from_secs(120);
    while sh.joined.load(Relaxed) < total {
        if let Some(r) = set.try_join_next() {
            match r {
                Ok(Ok(_)) => bail!("a member's connection ended while the others joined"),
                Ok(Err(e)) => return Err(e.context("joining")),
                Err(e) => bail!("a member task failed: {e}"),
            }
        }
        ensure!(
            Instant::now() < join_deadline,
            "only {} of {total} members joined within 120 s",
            sh.joined.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let join_seconds = started.elapsed().as_secs_f64();
    say(&format!("joined {total} {join_seconds:.3}"));

    if !wait_for_line(&mut lines, "go", Duration::from_secs(120)).await? {
        bail!("stdin ended before go");
    }
    let start_us = sh.now_us() + 50_000;
    let m0_us = start_us + (a.warmup * 1e6) as u64;
    let m1_us = m0_us + (a.seconds * 1e6) as u64;
    plan_tx.send(Some(Plan {
        start_us,
        m0_us,
        m1_us,
    }))?;
    let at = |us: u64| tokio::time::Instant::from_std(sh.base + Duration::from_micros(us));
    tokio::time::sleep_until(at(m0_us)).await;
    say("measure");
    tokio::time::sleep_until(at(m1_us)).await;
    say("end");
    let ended = Instant::now();

    // The senders stop at the window's end (one may be in a write).
    let senders = a.rooms * a.senders;
    while sh.senders_done.load(Relaxed) < senders && ended.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let senders_late = senders - sh.senders_done.load(Relaxed).min(senders);
    let update = a.kind == "update";
    // Everyone has what the others in its room sent (and its acks), or the time is up.
    let tally = || {
        let mut t = Tally::default();
        for r in 0..a.rooms {
            let ids = r * a.members..(r + 1) * a.members;
            let room_sent: u64 = ids.clone().map(|i| sh.sent[i].load(Relaxed)).sum();
            for i in ids {
                let sent = sh.sent[i].load(Relaxed);
                let expected = room_sent - sent;
                let got = sh.received[i].load(Relaxed);
                let acks = sh.acks[i].load(Relaxed);
                t.sent += sent;
                t.expected += expected;
                t.received += got;
                t.lost += expected.saturating_sub(got);
                t.extra += got.saturating_sub(expected);
                if update {
                    t.acks += acks;
                    t.acks_expected += sent;
                }
                if got < expected || (update && acks < sent) {
                    t.short += 1;
                }
            }
        }
        t
    };
    let mut t = tally();
    while t.short > 0 && ended.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(20)).await;
        t = tally();
    }
    let drain_seconds = ended.elapsed().as_secs_f64();
    let closed_before_stop = sh.closed.load(Relaxed);
    stop_tx.send(true)?;

    let mut lats: Vec<u32> = Vec::new();
    let mut delivered_in_window = 0;
    let collect_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(r)) = tokio::time::timeout_at(collect_deadline, set.join_next()).await {
        if let Ok(Ok(out)) = r {
            lats.extend_from_slice(&out.lats);
            delivered_in_window += out.in_window;
        }
    }
    set.abort_all();
    lats.sort_unstable();
    let pct = |q: f64| -> f64 {
        if lats.is_empty() {
            return f64::NAN;
        }
        let rank = (q * lats.len() as f64).ceil() as usize;
        f64::from(lats[rank.clamp(1, lats.len()) - 1])
    };
    let result = LoadResult {
        members: total,
        join_seconds,
        sent: t.sent,
        sent_in_window: sh.sent_in_window.load(Relaxed),
        window_seconds: (m1_us - m0_us) as f64 / 1e6,
        delivered_in_window,
        expected: t.expected,
        received: t.received,
        lost: t.lost,
        extra: t.extra,
        members_short: t.short,
        acks: t.acks,
        acks_expected: t.acks_expected,
        out_of_order: sh.out_of_order.load(Relaxed),
        errors: sh.errors.load(Relaxed),
        closed: closed_before_stop,
        senders_late,
        latencies: lats.len() as u64,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: lats.last().map_or(f64::NAN, |&v| f64::from(v)),
        drain_seconds,
    };
    say(&format!("result {}", serde_json::to_string(&result)?));
    // The runner reads the node's gauges and memory first; then everyone leaves.
    let _ = wait_for_line(&mut lines, "quit", Duration::from_secs(60)).await;
    Ok(())
}

#[derive(Default)]
struct Tally {
    sent: u64,
    expected: u64,
    received: u64,
    lost: u64,
    extra: u64,
    acks: u64,
    acks_expected: u64,
    short: usize,
}

/// One member: join, read `init`, then receive (and, for a sender, send) until stopped.
async fn member(
    i: usize,
    a: Arc<LoadArgs>,
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    plan: watch::Receiver<Option<Plan>>,
    mut stop: watch::Receiver<bool>,
) -> Result<MemberOut> {
    let room = i / a.members;
    let pos = i % a.members;
    let permit = sem.acquire_owned().await?;
    let req = format!("ws://{}{}/{}{room}", a.addr, a.path, a.prefix).into_client_request()?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(a.addr))
        .await
        .context("connect: no answer within 10 s")?
        .with_context(|| format!("member {i}: connect"))?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(20), client_async(req, tcp))
        .await
        .context("handshake: no answer within 20 s")?
        .with_context(|| format!("member {i}: handshake"))?;
    let first = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .context("no init within 30 s")?
        .context("closed before init")??;
    let text = first.into_text()?;
    let init: Incoming<'_> = serde_json::from_str(&text).context("init is not JSON")?;
    ensure!(init.kind == "init", "first message: {text}");
    let mut last_seq = init.seq.unwrap_or(0);
    drop(permit);
    sh.joined.fetch_add(1, Relaxed);

    let (sink, mut stream) = ws.split();
    let sender = (pos < a.senders).then(|| {
        tokio::spawn(send_loop(
            i,
            room * a.senders + pos,
            a.clone(),
            sh.clone(),
            plan.clone(),
            sink,
        ))
    });
    let mut plan_rx = plan;
    let mut window: Option<Plan> = None;
    let mut out = MemberOut::default();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            () = &mut stopped => break,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                sh.closed.fetch_add(1, Relaxed);
                break;
            }
            Some(Ok(_)) => continue,
        };
        let now = sh.now_us();
        let Ok(m) = serde_json::from_str::<Incoming<'_>>(&text) else {
            sh.errors.fetch_add(1, Relaxed);
            continue;
        };
        if let Some(seq) = m.seq {
            if seq <= last_seq {
                sh.out_of_order.fetch_add(1, Relaxed);
            }
            last_seq = seq;
        }
        match m.kind {
            "message" | "update" => {
                sh.received[i].fetch_add(1, Relaxed);
                if window.is_none() {
                    window = *plan_rx.borrow_and_update();
                }
                if let (Some(s), Some(p)) = (m.data.or(m.state), window) {
                    if (p.m0_us..p.m1_us).contains(&now) {
                        out.in_window += 1;
                    }
                    if (p.m0_us..p.m1_us).contains(&s.t) {
                        out.lats
                            .push(now.saturating_sub(s.t).min(u64::from(u32::MAX)) as u32);
                    }
                }
            }
            "ack" => {
                sh.acks[i].fetch_add(1, Relaxed);
            }
            "error" => {
                sh.errors.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
    if let Some(s) = sender {
        // Stopped at the window's end already, unless stuck in a write.
        if tokio::time::timeout(Duration::from_secs(2), s)
            .await
            .is_err()
        {
            eprintln!("rooms-load: member {i}'s sender did not stop");
        }
    }
    Ok(out)
}

type Sink = futures_util::stream::SplitSink<tokio_tungstenite::WebSocketStream<TcpStream>, Message>;

/// Sends at `rate` from the plan's start (shifted by this sender's share of the
/// period, so that senders do not all send at once) until the window's end.
async fn send_loop(
    i: usize,
    nth_sender: usize,
    a: Arc<LoadArgs>,
    sh: Arc<Shared>,
    mut plan: watch::Receiver<Option<Plan>>,
    mut sink: Sink,
) {
    let p = match plan.wait_for(Option::is_some).await {
        Ok(p) => *p,
        Err(_) => None,
    };
    let Some(p) = p else {
        sh.senders_done.fetch_add(1, Relaxed);
        return;
    };
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let senders = (a.rooms * a.senders).max(1);
    let offset = period.mul_f64(nth_sender as f64 / senders as f64);
    let start = sh.base + Duration::from_micros(p.start_us) + offset;
    let end = sh.base + Duration::from_micros(p.m1_us);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::from_std(start), period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let pad = "x".repeat(a.pad);
    let most = (a.rate * (a.warmup + a.seconds + 1.0)) as u64;
    let update = a.kind == "update";
    for n in 0..most {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let t = sh.now_us();
        let stamp = format!("{{\"t\":{t},\"s\":{i},\"n\":{n},\"p\":\"{pad}\"}}");
        let text = if update {
            format!("{{\"type\":\"update\",\"state\":{stamp}}}")
        } else {
            format!("{{\"type\":\"message\",\"data\":{stamp}}}")
        };
        if sink.send(Message::text(text)).await.is_err() {
            break;
        }
        sh.sent[i].fetch_add(1, Relaxed);
        if (p.m0_us..p.m1_us).contains(&t) {
            sh.sent_in_window.fetch_add(1, Relaxed);
        }
    }
    sh.senders_done.fetch_add(1, Relaxed);
}
