//! Shared threat intelligence: every escalation, and every block, unblock and score an
//! operator sets through the admin API, is appended to a Redis Stream
//! (`<prefix>:threats`); every node reads the stream and applies what other nodes
//! decided to its own source policy (the XDP maps, or the userspace tables), keeping
//! the deciding node's TTL (capped by `max_remote_ttl`).
//!
//! A Stream, not pub/sub: a node that was away (restarted, or cut off from Redis) reads
//! on from where it was, or from `catch_up` ago at start, and applies what is still live.
//! Redis down: the node's own decisions apply locally as always; what it would publish
//! waits in a bounded backlog (the oldest go first, counted) and is sent on reconnect.
//! Nothing here is on the request path: publishing is a channel send that never waits.
//!
//! Time is Redis': an entry carries the moment Redis appended it (`redis_ms`, from a
//! script), the reader asks Redis for its now, and the deciding node says how long it
//! waited (`age_ms`, a monotonic duration), so no node's wall clock sets a TTL. A node
//! whose clock (`node_ms`) is further than `max_clock_skew` from Redis' is refused: its
//! clock is broken, and so may be the rest of what it says.
//!
//! What a remote event may do is bounded, whoever wrote it: never block or score an
//! `xdp.allow` prefix, a trusted proxy or anything containing one (compared in the
//! kernel's single address space, where `::/0` covers IPv4 too); never a prefix wider
//! than `min_prefix_v4` / `min_prefix_v6`; never touch a block of the configuration
//! file; at most `max_remote_ttl`; at most `max_applied_per_second`. An entry that does
//! not parse is skipped, never retried: the reader always moves on.
//!
//! Entry fields: `v` (format, 1), `node` (its id, for logs), `proc` (the process, so a
//! node skips its own entries even where ids were left at their default), `region`,
//! `kind` (`score`, `block`, `unblock`), `target` (address or prefix), `score`, `ttl_ms`
//! (0: none), `age_ms`, `node_ms`, `redis_ms`.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use arc_swap::{ArcSwap, ArcSwapOption};
use ipnet::IpNet;
use redis::Value;

use crate::redis_link::RedisConn;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use super::{FleetSettings, Scope};
use crate::{
    limits::Bucket,
    metrics::Metrics,
    xdp::{
        SharedPolicy,
        addr::{prefix_matches, prefix16},
    },
};

const FORMAT: &str = "1";
/// How long one XREAD waits for new entries before asking again.
const BLOCK: Duration = Duration::from_secs(2);
/// Entries read per call.
const BATCH: usize = 256;
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Appends one entry stamped with Redis' own time: `ARGV[1]` the stream's length
/// bound, then field, value pairs.
const APPEND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local args = {KEYS[1], 'MAXLEN', '~', ARGV[1], '*'}
for i = 2, #ARGV do table.insert(args, ARGV[i]) end
table.insert(args, 'redis_ms'); table.insert(args, tostring(now))
return redis.call('XADD', unpack(args))
"#;

/// A change to a source policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Score { ip: IpAddr, score: u32 },
    Block(IpNet),
    Unblock(IpNet),
}

impl Change {
    fn kind(&self) -> &'static str {
        match self {
            Change::Score { .. } => "score",
            Change::Block(_) => "block",
            Change::Unblock(_) => "unblock",
        }
    }

    fn target(&self) -> String {
        match self {
            Change::Score { ip, .. } => ip.to_string(),
            Change::Block(n) | Change::Unblock(n) => n.to_string(),
        }
    }

    /// The prefix it would stop (none for an unblock or a cleared score).
    fn stops(&self) -> Option<IpNet> {
        match *self {
            Change::Score { ip, score } if score > 0 => Some(IpNet::from(ip)),
            Change::Block(n) => Some(n),
            _ => None,
        }
    }

    /// Applies it to `policy`; false when an unblock found nothing blocked.
    pub fn apply(&self, policy: &SharedPolicy, ttl: Option<Duration>) -> Result<bool> {
        let mut p = crate::sync::lock(policy);
        match *self {
            Change::Score { ip, score } => p.set_score(ip, score, ttl).map(|()| true),
            Change::Block(net) => p.block(net, ttl).map(|()| true),
            Change::Unblock(net) => p.unblock(net),
        }
    }
}

/// What this node decided, waiting to be appended.
struct Pending {
    change: Change,
    ttl: Option<Duration>,
    decided: Instant,
}

/// What remote events must leave alone, as the configuration says.
#[derive(Default)]
pub struct Guarded {
    /// `xdp.allow` and the trusted proxies: never blocked or scored from afar.
    pub protected: Vec<IpNet>,
    /// `xdp.block` of the configuration file: never unblocked or shortened from afar.
    pub configured: Vec<IpNet>,
}

/// Called with an address another node's operator cleared (score 0): the proxy's own
/// memory of it goes too.
pub type OnClear = Box<dyn Fn(IpAddr) + Send + Sync>;

/// The node's end of the fleet's threat stream.
pub struct ThreatFeed {
    tx: mpsc::Sender<Pending>,
    guarded: Arc<ArcSwap<Guarded>>,
    on_clear: Arc<ArcSwapOption<OnClear>>,
    metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ThreatFeed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ThreatFeed {
    /// Connects (lazily: Redis may be down now) and starts the publisher and the reader,
    /// which leaves `guarded` alone from its first entry on.
    pub fn start(
        settings: &FleetSettings,
        node: &str,
        policy: SharedPolicy,
        guarded: Guarded,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        let target = settings.target()?;
        // The reader blocks in XREAD: a connection of its own, so appends never queue
        // behind it.
        let (writer, reader) = (
            target.connect(settings.timeout)?,
            target.connect_with(settings.timeout, BLOCK + settings.timeout)?,
        );
        let (tx, rx) = mpsc::channel(settings.backlog);
        let guarded = Arc::new(ArcSwap::from_pointee(guarded));
        let on_clear = Arc::new(ArcSwapOption::empty());
        let me = Identity {
            node: node.to_string(),
            process: format!("{:016x}", fastrand::u64(..)),
            region: settings.region.clone(),
            signing: settings.signing_key()?,
        };
        let tasks = vec![
            tokio::spawn(publish(
                rx,
                writer,
                settings.clone(),
                me.clone(),
                metrics.clone(),
            )),
            tokio::spawn(read(
                reader,
                settings.clone(),
                me,
                policy,
                guarded.clone(),
                on_clear.clone(),
                metrics.clone(),
            )),
        ];
        info!(stream = %settings.key("threats"), scope = ?settings.scope, "fleet threat sharing on");
        Ok(Arc::new(Self {
            tx,
            guarded,
            on_clear,
            metrics,
            tasks,
        }))
    }

    /// What remote events must leave alone; said again by every configuration load.
    pub fn guard(&self, guarded: Guarded) {
        self.guarded.store(Arc::new(guarded));
    }

    /// What to do when another node's operator clears a score.
    pub fn on_clear(&self, f: OnClear) {
        self.on_clear.store(Some(Arc::new(f)));
    }

    /// Shares a change this node made. Never waits: past the backlog it is dropped
    /// (counted).
    pub fn publish(&self, change: Change, ttl: Option<Duration>) {
        let p = Pending {
            change,
            ttl,
            decided: Instant::now(),
        };
        if self.tx.try_send(p).is_err() {
            self.metrics.fleet_threat("publish_dropped");
        }
    }
}

#[derive(Clone)]
struct Identity {
    node: String,
    process: String,
    region: String,
    /// The fleet's key (`fleet.secret`): entries are signed with it and read only when
    /// signed with it.
    signing: Option<ring::hmac::Key>,
}

/// The fields an entry's signature covers, in this order (`redis_ms` is Redis' own
/// stamp; a replayed entry keeps its `node_ms`, so `max_clock_skew` refuses it).
const SIGNED: [&str; 10] = [
    "v", "node", "proc", "region", "kind", "target", "score", "ttl_ms", "age_ms", "node_ms",
];

/// What the signature of `values` (of the `SIGNED` fields, in order) is computed over:
/// each length-prefixed, so no two lists of values share it.
fn signed_message(values: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn sign(key: &ring::hmac::Key, values: &[&str]) -> String {
    use base64::Engine as _;
    let tag = ring::hmac::sign(key, &signed_message(values));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
}

/// Whether `fields` carry a `sig` of their `SIGNED` values under `key`.
fn signed_by(key: &ring::hmac::Key, fields: &[(String, String)]) -> bool {
    use base64::Engine as _;
    let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let values: Option<Vec<&str>> = SIGNED.iter().map(|k| field(k)).collect();
    let sig = field("sig").and_then(|s| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
    });
    match (values, sig) {
        (Some(values), Some(sig)) => {
            ring::hmac::verify(key, &signed_message(&values), &sig).is_ok()
        }
        _ => false,
    }
}

static FAILURE_LOG: crate::limits::LogEvery = crate::limits::LogEvery::new(1_000_000_000);
static REFUSAL_LOG: crate::limits::LogEvery = crate::limits::LogEvery::new(1_000_000_000);
static APPLY_LOG: crate::limits::LogEvery = crate::limits::LogEvery::new(1_000_000_000);

/// Appends this node's changes in order; while Redis fails, keeps them (bounded) and
/// retries with backoff.
async fn publish(
    mut rx: mpsc::Receiver<Pending>,
    mut conn: RedisConn,
    settings: FleetSettings,
    me: Identity,
    metrics: Arc<Metrics>,
) {
    let script = redis::Script::new(APPEND);
    let mut backlog: VecDeque<Pending> = VecDeque::new();
    let mut delay = Duration::from_millis(100);
    loop {
        if backlog.is_empty() {
            match rx.recv().await {
                Some(p) => backlog.push_back(p),
                None => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            backlog.push_back(p);
        }
        while backlog.len() > settings.backlog {
            backlog.pop_front();
            metrics.fleet_threat("publish_dropped");
        }
        while let Some(p) = backlog.front() {
            let age = p.decided.elapsed();
            if p.ttl.is_some_and(|t| t <= age) {
                // Over before anyone could apply it.
                backlog.pop_front();
                continue;
            }
            let score = match p.change {
                Change::Score { score, .. } => score,
                _ => 0,
            };
            let ttl_ms = p.ttl.map_or(0, |t| t.as_millis().max(1) as u64);
            let mut call = script.key(settings.key("threats"));
            call.arg(settings.max_len);
            let mut entry = vec![
                ("v", FORMAT.to_string()),
                ("node", me.node.clone()),
                ("proc", me.process.clone()),
                ("region", me.region.clone()),
                ("kind", p.change.kind().to_string()),
                ("target", p.change.target()),
                ("score", score.to_string()),
                ("ttl_ms", ttl_ms.to_string()),
                ("age_ms", (age.as_millis() as u64).to_string()),
                ("node_ms", crate::clock::unix_ms().to_string()),
            ];
            debug_assert!(entry.iter().map(|(k, _)| *k).eq(SIGNED));
            if let Some(key) = &me.signing {
                let values: Vec<&str> = entry.iter().map(|(_, v)| v.as_str()).collect();
                let sig = sign(key, &values);
                entry.push(("sig", sig));
            }
            for (k, v) in entry {
                call.arg(k).arg(v);
            }
            let sent =
                tokio::time::timeout(settings.timeout, call.invoke_async::<String>(&mut conn))
                    .await;
            match sent {
                Ok(Ok(_)) => {
                    backlog.pop_front();
                    metrics.fleet_threat("published");
                    delay = Duration::from_millis(100);
                }
                failed => {
                    if let Some(more) = FAILURE_LOG.admit() {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {:?}", settings.timeout),
                        };
                        warn!(%error, waiting = backlog.len(), failures_since_last_log = more,
                            "fleet: cannot publish threat events; applied here only until Redis is back");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                    break;
                }
            }
        }
    }
}

/// The clock of the Redis holding the stream (on a Cluster, the shard whose clock
/// made its entries' ids), in ms.
async fn redis_now(conn: &mut RedisConn, settings: &FleetSettings) -> Result<u64> {
    let timeout = settings.timeout;
    let script = redis::Script::new("return redis.call('TIME')");
    let invocation = script.key(settings.key("threats"));
    let (s, us): (u64, u64) = tokio::time::timeout(timeout, invocation.invoke_async(conn))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??;
    Ok(s * 1000 + us / 1000)
}

/// Reads the stream from `catch_up` ago, then follows it, applying other nodes' changes.
async fn read(
    mut conn: RedisConn,
    settings: FleetSettings,
    me: Identity,
    policy: SharedPolicy,
    guarded: Arc<ArcSwap<Guarded>>,
    on_clear: Arc<ArcSwapOption<OnClear>>,
    metrics: Arc<Metrics>,
) {
    let mut delay = Duration::from_millis(100);
    let mut last: Option<String> = None;
    let rate = settings.max_applied_per_second;
    let budget = Mutex::new(Bucket::new(rate as f64, rate.saturating_mul(10)));
    loop {
        let step = async {
            let from = match &last {
                Some(id) => id.clone(),
                None => {
                    let now = redis_now(&mut conn, &settings).await?;
                    format!(
                        "{}-0",
                        now.saturating_sub(settings.catch_up.as_millis() as u64)
                    )
                }
            };
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("COUNT")
                .arg(BATCH)
                .arg("STREAMS")
                .arg(settings.key("threats"))
                .arg(&from);
            let reply = tokio::time::timeout(
                BLOCK + settings.timeout,
                cmd.query_async::<Value>(&mut conn),
            )
            .await
            .map_err(|_| anyhow::anyhow!("no answer"))??;
            let entries = stream_entries(reply);
            let now = if entries.is_empty() {
                0
            } else {
                redis_now(&mut conn, &settings).await?
            };
            anyhow::Ok((from, entries, now))
        };
        let (from, entries, now) = match step.await {
            Ok(r) => {
                delay = Duration::from_millis(100);
                r
            }
            Err(e) => {
                if let Some(more) = FAILURE_LOG.admit() {
                    warn!(error = %format!("{e:#}"), failures_since_last_log = more,
                        "fleet: cannot read threat events; will catch up when Redis is back");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                continue;
            }
        };
        last = Some(entries.last().map_or(from, |(id, _)| id.clone()));
        let mut batch = Vec::new();
        let g = guarded.load();
        for (id, fields) in &entries {
            let verdict = match accept(fields, now, &settings, &me, &g) {
                Verdict::Apply(..) if !crate::sync::lock(&budget).admit(crate::clock::now_ns()) => {
                    Verdict::Refuse(format!("over fleet.max_applied_per_second ({rate})"))
                }
                v => v,
            };
            match verdict {
                Verdict::Apply(change, ttl) => batch.push((change, ttl)),
                Verdict::Skip => {}
                Verdict::Expired => metrics.fleet_threat("expired"),
                Verdict::Refuse(why) => {
                    metrics.fleet_threat("refused");
                    if let Some(more) = REFUSAL_LOG.admit() {
                        warn!(entry = %id, reason = %why, refused_since_last_log = more,
                            "fleet: threat event refused");
                    }
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Some(clear) = on_clear.load().as_ref() {
            for (c, _) in &batch {
                if let Change::Score { ip, score: 0 } = c {
                    clear(*ip);
                }
            }
        }
        let p = policy.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let mut n = 0;
            for (change, ttl) in batch {
                match change.apply(&p, ttl) {
                    Ok(_) => n += 1,
                    Err(e) => {
                        if let Some(more) = APPLY_LOG.admit() {
                            warn!(change = ?change, error = %format!("{e:#}"), failed_since_last_log = more,
                                "fleet: applying a threat event failed");
                        }
                    }
                }
            }
            n
        })
        .await
        .unwrap_or(0);
        for _ in 0..applied {
            metrics.fleet_threat("applied");
        }
    }
}

/// The entries of an XREAD reply (RESP2 arrays or RESP3 maps): id and field pairs,
/// bytes read leniently (a field that is not UTF-8 becomes one that matches nothing).
fn stream_entries(reply: Value) -> Vec<(String, Vec<(String, String)>)> {
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
    fn pairs(v: &Value) -> Vec<(String, String)> {
        match v {
            Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
                .collect(),
            Value::Map(m) => m
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                .collect(),
            _ => Vec::new(),
        }
    }
    let streams: Vec<&Value> = match &reply {
        Value::Array(items) => items
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) => kv.get(1),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            continue;
        };
        for e in entries {
            let Value::Array(parts) = e else { continue };
            if let Some(id) = parts.first().and_then(text) {
                out.push((id, parts.get(1).map(pairs).unwrap_or_default()));
            }
        }
    }
    out
}

#[derive(Debug)]
enum Verdict {
    Apply(Change, Option<Duration>),
    /// Ours, or another region's under `scope = "region"`.
    Skip,
    Expired,
    Refuse(String),
}

/// The IPv4-mapped range, where the kernel keeps every IPv4 address.
const V4_MAPPED: IpNet = IpNet::V6(
    match ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
        Ok(n) => n,
        Err(_) => panic!("a /96"),
    },
);

/// Whether two prefixes share an address, in the kernel's one 16-byte address space.
fn overlap(a: IpNet, b: IpNet) -> bool {
    let ((x, xl), (y, yl)) = (prefix16(a), prefix16(b));
    prefix_matches(&x, &y, xl.min(yl))
}

/// What to do with one stream entry, Redis' clock now being `now_ms`.
fn accept(
    fields: &[(String, String)],
    now_ms: u64,
    settings: &FleetSettings,
    me: &Identity,
    guarded: &Guarded,
) -> Verdict {
    let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let number = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
    if let Some(key) = &me.signing
        && !signed_by(key, fields)
    {
        return Verdict::Refuse(format!(
            "not signed with fleet.secret (from {:?})",
            field("node").unwrap_or("?")
        ));
    }
    if field("v") != Some(FORMAT) {
        return Verdict::Refuse(format!(
            "format {:?}, this node reads {FORMAT} (a node of another version?)",
            field("v")
        ));
    }
    let (Some(node), Some(process), Some(region), Some(kind), Some(target)) = (
        field("node"),
        field("proc"),
        field("region"),
        field("kind"),
        field("target"),
    ) else {
        return Verdict::Refuse("missing fields".into());
    };
    if process == me.process {
        return Verdict::Skip;
    }
    if settings.scope == Scope::Region && region != me.region {
        return Verdict::Skip;
    }
    let (Some(redis_ms), Some(node_ms), Some(ttl_ms), Some(age_ms), Some(score)) = (
        number("redis_ms"),
        number("node_ms"),
        number("ttl_ms"),
        number("age_ms"),
        number("score"),
    ) else {
        return Verdict::Refuse(format!("malformed numbers (from {node})"));
    };
    if node_ms.abs_diff(redis_ms) > settings.max_clock_skew.as_millis() as u64 {
        return Verdict::Refuse(format!(
            "node {node}'s clock is {} ms off Redis' (max_clock_skew {:?})",
            node_ms.abs_diff(redis_ms),
            settings.max_clock_skew
        ));
    }
    let change = match kind {
        "score" => match (target.parse::<IpAddr>(), u32::try_from(score)) {
            (Ok(ip), Ok(score)) => Change::Score { ip, score },
            _ => return Verdict::Refuse(format!("score target {target:?} (from {node})")),
        },
        "block" | "unblock" => match crate::xdp::cli::parse_cidr(target) {
            Ok(net) if kind == "block" => Change::Block(net.trunc()),
            Ok(net) => Change::Unblock(net.trunc()),
            Err(_) => return Verdict::Refuse(format!("prefix {target:?} (from {node})")),
        },
        other => return Verdict::Refuse(format!("kind {other:?} (from {node})")),
    };
    if let Some(stops) = change.stops() {
        // Width as the kernel sees it: inside the IPv4-mapped range an IPv4 prefix
        // (whichever family it was written in), else an IPv6 one.
        let (data, len16) = prefix16(stops);
        let v4_mapped = len16 >= 96 && prefix_matches(&data, &prefix16(V4_MAPPED).0, 96);
        let too_wide = if v4_mapped {
            len16 - 96 < u32::from(settings.min_prefix_v4)
        } else {
            len16 < u32::from(settings.min_prefix_v6)
        };
        if too_wide {
            return Verdict::Refuse(format!(
                "{kind} {stops} from {node} is wider than fleet.min_prefix_v4 / min_prefix_v6"
            ));
        }
        if let Some(p) = guarded.protected.iter().find(|p| overlap(**p, stops)) {
            return Verdict::Refuse(format!(
                "{kind} {stops} from {node} would stop {p}, an xdp.allow prefix or trusted proxy here"
            ));
        }
    }
    if let Change::Block(net) | Change::Unblock(net) = change
        && guarded.configured.iter().any(|c| overlap(*c, net))
    {
        return Verdict::Refuse(format!(
            "{kind} {net} from {node} touches a block of this node's configuration file"
        ));
    }
    // When the node decided, on Redis' clock; how long the change lasts from there.
    let decided_ms = redis_ms.saturating_sub(age_ms);
    let cap = settings.max_remote_ttl.as_millis() as u64;
    let ttl_ms = if ttl_ms == 0 { cap } else { ttl_ms.min(cap) };
    let until = decided_ms.saturating_add(ttl_ms);
    if until <= now_ms {
        return Verdict::Expired;
    }
    let ttl = match change {
        // An unblock or a clear lasts by nature.
        Change::Unblock(_) | Change::Score { score: 0, .. } => None,
        _ => Some(Duration::from_millis(until - now_ms)),
    };
    Verdict::Apply(change, ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(kind: &str, target: &str, process: &str, redis_ms: u64) -> Vec<(String, String)> {
        [
            ("v", "1".to_string()),
            ("node", "a".to_string()),
            ("proc", process.to_string()),
            ("region", "eu".to_string()),
            ("kind", kind.to_string()),
            ("target", target.to_string()),
            ("score", "80".to_string()),
            ("ttl_ms", "60000".to_string()),
            ("age_ms", "5".to_string()),
            ("node_ms", redis_ms.to_string()),
            ("redis_ms", redis_ms.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn with_a_secret_only_entries_signed_with_it_are_read() {
        let key = |s: &[u8]| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s);
        let me = Identity {
            node: "edge-1".into(),
            process: "me".into(),
            region: "eu".into(),
            signing: Some(key(b"the fleet's secret of 32 bytes or more")),
        };
        let (settings, guarded) = (FleetSettings::default(), Guarded::default());
        let now = 1_800_000_000_000;
        let signed_with = |k: &ring::hmac::Key, target: &str| {
            let mut f = fields("block", target, "other", now);
            let values: Vec<String> = SIGNED
                .iter()
                .map(|n| f.iter().find(|(k, _)| k == n).unwrap().1.clone())
                .collect();
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            f.push(("sig".into(), sign(k, &values)));
            f
        };
        let good = signed_with(me.signing.as_ref().unwrap(), "203.0.113.0/24");
        assert!(matches!(
            accept(&good, now, &settings, &me, &guarded),
            Verdict::Apply(Change::Block(_), _)
        ));
        // Unsigned, signed with another key, or a signed entry edited afterwards.
        let mut edited = good.clone();
        edited.iter_mut().find(|(k, _)| k == "target").unwrap().1 = "198.51.100.0/24".into();
        for bad in [
            fields("block", "203.0.113.0/24", "other", now),
            signed_with(
                &key(b"another fleet's secret, also 32 bytes"),
                "203.0.113.0/24",
            ),
            edited,
        ] {
            assert!(
                matches!(
                    accept(&bad, now, &settings, &me, &guarded),
                    Verdict::Refuse(_)
                ),
                "{bad:?}"
            );
        }
        // Length prefixes: moving a byte between two values changes the message.
        assert_ne!(signed_message(&["ab", "c"]), signed_message(&["a", "bc"]));
    }

    #[test]
    fn entries_are_applied_skipped_or_refused_for_a_reason() {
        let settings = FleetSettings::default();
        let me = Identity {
            node: "edge-1".into(),
            process: "me".into(),
            region: "eu".into(),
            signing: None,
        };
        let guarded = Guarded {
            protected: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            configured: vec!["192.0.2.0/24".parse().unwrap()],
        };
        let now = 1_800_000_000_000;
        let check = |kind: &str, target: &str, process: &str, at: u64| {
            accept(
                &fields(kind, target, process, at),
                now,
                &settings,
                &me,
                &guarded,
            )
        };
        match check("score", "198.51.100.7", "other", now) {
            Verdict::Apply(Change::Score { score: 80, .. }, Some(ttl)) => {
                assert!(ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(59))
            }
            v => panic!("a live score from another node applies: {v:?}"),
        }
        assert!(matches!(
            check("block", "203.0.113.0/24", "other", now),
            Verdict::Apply(Change::Block(_), Some(_))
        ));
        // Our own process's entry (even with another node's default id).
        assert!(matches!(
            check("score", "198.51.100.7", "me", now),
            Verdict::Skip
        ));
        // Never a protected prefix, however it is spelled or wrapped.
        for wide in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "::ffff:0:0/96",
            "::/0",
            "0.0.0.0/0",
            "10.0.0.0/7",
            "2001:db8::1",
            "8.0.0.0/5",
            "2001::/16",
        ] {
            assert!(
                matches!(check("block", wide, "other", now), Verdict::Refuse(_)),
                "{wide}"
            );
        }
        // Nor a block of the configuration file, either way.
        assert!(matches!(
            check("unblock", "192.0.2.0/24", "other", now),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            check("block", "192.0.2.7", "other", now),
            Verdict::Refuse(_)
        ));
        // An unblock of something else is fine, and lasts.
        assert!(matches!(
            check("unblock", "203.0.113.0/24", "other", now),
            Verdict::Apply(Change::Unblock(_), None)
        ));
        // Over already, on Redis' clock.
        assert!(matches!(
            check("score", "198.51.100.7", "other", now - 120_000),
            Verdict::Expired
        ));
        // A node whose clock is off.
        let mut f = fields("score", "198.51.100.7", "other", now);
        f[9].1 = (now + 3_600_000).to_string();
        assert!(matches!(
            accept(&f, now, &settings, &me, &guarded),
            Verdict::Refuse(_)
        ));
        // Another format, malformed values, unknown kinds.
        let mut f = fields("score", "198.51.100.7", "other", now);
        f[0].1 = "2".into();
        assert!(matches!(
            accept(&f, now, &settings, &me, &guarded),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            check("score", "not-an-ip", "other", now),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            check("drop", "198.51.100.7", "other", now),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            accept(&[], now, &settings, &me, &guarded),
            Verdict::Refuse(_)
        ));
        // A permanent block from afar lasts max_remote_ttl.
        let mut f = fields("block", "203.0.113.0/24", "other", now);
        f[7].1 = "0".into();
        match accept(&f, now, &settings, &me, &guarded) {
            Verdict::Apply(_, Some(ttl)) => assert!(ttl <= settings.max_remote_ttl),
            v => panic!("{v:?}"),
        }
        // scope = "region": other regions' events are not ours to apply.
        let regional = FleetSettings {
            scope: Scope::Region,
            region: "us".into(),
            ..FleetSettings::default()
        };
        let us = Identity {
            region: "us".into(),
            ..me.clone()
        };
        assert!(matches!(
            accept(
                &fields("score", "198.51.100.7", "other", now),
                now,
                &regional,
                &us,
                &guarded
            ),
            Verdict::Skip
        ));
    }

    #[test]
    fn replies_of_either_protocol_and_junk_parse_to_what_they_hold() {
        let bulk = |s: &[u8]| Value::BulkString(s.to_vec());
        let entry =
            |id: &str, kv: Vec<Value>| Value::Array(vec![bulk(id.as_bytes()), Value::Array(kv)]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(b"edge-node:threats"),
            Value::Array(vec![
                entry("1-0", vec![bulk(b"v"), bulk(b"1")]),
                entry("2-0", vec![bulk(b"\xff\xfe"), bulk(b"x"), bulk(b"odd")]),
                Value::Int(7),
            ]),
        ])]);
        let got = stream_entries(resp2);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            ("1-0".to_string(), vec![("v".to_string(), "1".to_string())])
        );
        // Junk is read leniently, and the reader still learns the id to move past it.
        assert_eq!(got[1].0, "2-0");
        let resp3 = Value::Map(vec![(
            bulk(b"edge-node:threats"),
            Value::Array(vec![entry("3-0", vec![bulk(b"v"), bulk(b"1")])]),
        )]);
        assert_eq!(stream_entries(resp3)[0].0, "3-0");
        assert!(stream_entries(Value::Nil).is_empty());
    }
}
