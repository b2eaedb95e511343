//! Shared threat intelligence: every escalation, and every block, unblock and score an
//! operator sets through the admin API, is appended to a Redis Stream
//! (`<prefix>:threats`); every node reads
//! the stream and applies what other nodes decided to its own source policy (the XDP
//! maps, or the userspace tables), keeping the deciding node's TTL.
//!
//! A Stream, not pub/sub: a node that was away (restarted, or cut off from Redis) reads
//! on from where it was, or from `catch_up` ago at start, and applies what is still live.
//! Redis down: the node's own decisions apply locally as always; what it would publish
//! waits in a bounded backlog (the oldest go first, counted) and is sent on reconnect.
//! Nothing here is on the request path: publishing is a channel send that never waits.
//!
//! An entry is refused (counted, logged at most once a second) when it comes from
//! another format version, when its node's clock was further than `max_clock_skew` from
//! Redis' (the entry id is Redis' time), when it is malformed, or when it would block or
//! score an `xdp.allow` prefix or a trusted proxy (a proxy carries many clients: never a
//! block from afar).
//!
//! Entry fields: `v` (format, 1), `node`, `region`, `kind` (`score`, `block`, `unblock`),
//! `target` (address or prefix), `score`, `ttl_ms` (0: none), `age_ms` (how long before
//! the append the node decided).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use redis::{aio::ConnectionManager, streams::StreamReadReply};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use super::{FleetSettings, Scope};
use crate::{metrics::Metrics, xdp::SharedPolicy};

const FORMAT: &str = "1";
/// How long one XREAD waits for new entries before asking again.
const BLOCK: Duration = Duration::from_secs(2);
/// Entries read per call.
const BATCH: usize = 256;
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

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

/// What a remote event may never stop: `xdp.allow` and the trusted proxies.
#[derive(Default)]
struct Protected(Vec<IpNet>);

/// The node's end of the fleet's threat stream.
pub struct ThreatFeed {
    tx: mpsc::Sender<Pending>,
    protected: Arc<ArcSwap<Protected>>,
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
    /// Connects (lazily: Redis may be down now) and starts the publisher and the reader.
    pub fn start(
        settings: &FleetSettings,
        node: &str,
        policy: SharedPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        let url = settings.redis.as_deref().context("fleet.redis")?;
        let client = redis::Client::open(url).with_context(|| format!("fleet.redis {url:?}"))?;
        let manager = |response: Duration| {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.timeout))
                .set_response_timeout(Some(response))
                .set_number_of_retries(1)
                .set_max_delay(MAX_RETRY_DELAY);
            client
                .get_connection_manager_lazy(config)
                .context("fleet redis")
        };
        // The reader blocks in XREAD: a connection of its own, so appends never queue
        // behind it.
        let (writer, reader) = (
            manager(settings.timeout)?,
            manager(BLOCK + settings.timeout)?,
        );
        let (tx, rx) = mpsc::channel(settings.backlog);
        let protected = Arc::new(ArcSwap::from_pointee(Protected::default()));
        let me = Identity {
            node: node.to_string(),
            region: settings.region.clone(),
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
                protected.clone(),
                metrics.clone(),
            )),
        ];
        info!(stream = %settings.key("threats"), scope = ?settings.scope, "fleet threat sharing on");
        Ok(Arc::new(Self {
            tx,
            protected,
            metrics,
            tasks,
        }))
    }

    /// What remote events may never block or score (`xdp.allow`, `http.trusted_proxies`);
    /// set at start and on every reload.
    pub fn protect(&self, nets: impl IntoIterator<Item = IpNet>) {
        self.protected
            .store(Arc::new(Protected(nets.into_iter().collect())));
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
    region: String,
}

static FAILURE_LOG: crate::limits::LogEvery = crate::limits::LogEvery::new(1_000_000_000);
static REFUSAL_LOG: crate::limits::LogEvery = crate::limits::LogEvery::new(1_000_000_000);

/// Appends this node's changes in order; while Redis fails, keeps them (bounded) and
/// retries with backoff.
async fn publish(
    mut rx: mpsc::Receiver<Pending>,
    mut conn: ConnectionManager,
    settings: FleetSettings,
    me: Identity,
    metrics: Arc<Metrics>,
) {
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
            let (score, ttl_ms) = (
                match p.change {
                    Change::Score { score, .. } => score,
                    _ => 0,
                },
                p.ttl.map_or(0, |t| t.as_millis().max(1) as u64),
            );
            let mut cmd = redis::cmd("XADD");
            cmd.arg(settings.key("threats"))
                .arg("MAXLEN")
                .arg("~")
                .arg(settings.max_len)
                .arg("*")
                .arg(&[
                    ("v", FORMAT.to_string()),
                    ("node", me.node.clone()),
                    ("region", me.region.clone()),
                    ("kind", p.change.kind().to_string()),
                    ("target", p.change.target()),
                    ("score", score.to_string()),
                    ("ttl_ms", ttl_ms.to_string()),
                    ("age_ms", (age.as_millis() as u64).to_string()),
                ]);
            let sent =
                tokio::time::timeout(settings.timeout, cmd.query_async::<String>(&mut conn)).await;
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

/// Reads the stream from `catch_up` ago, then follows it, applying other nodes' changes.
async fn read(
    mut conn: ConnectionManager,
    settings: FleetSettings,
    me: Identity,
    policy: SharedPolicy,
    protected: Arc<ArcSwap<Protected>>,
    metrics: Arc<Metrics>,
) {
    let since = crate::clock::unix_ms().saturating_sub(settings.catch_up.as_millis() as u64);
    let mut last = format!("{since}-0");
    let mut delay = Duration::from_millis(100);
    loop {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(settings.key("threats"))
            .arg(&last);
        let got = tokio::time::timeout(
            BLOCK + settings.timeout,
            cmd.query_async::<Option<StreamReadReply>>(&mut conn),
        )
        .await;
        let reply = match got {
            Ok(Ok(r)) => {
                delay = Duration::from_millis(100);
                r
            }
            failed => {
                if let Some(more) = FAILURE_LOG.admit() {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer".to_string(),
                    };
                    warn!(%error, failures_since_last_log = more,
                        "fleet: cannot read threat events; will catch up when Redis is back");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                continue;
            }
        };
        let Some(reply) = reply else { continue };
        let mut batch = Vec::new();
        for key in reply.keys {
            for entry in key.ids {
                last.clone_from(&entry.id);
                match accept(&entry.id, &entry.map, &settings, &me, &protected.load()) {
                    Verdict::Apply(change, ttl) => batch.push((change, ttl)),
                    Verdict::Skip => {}
                    Verdict::Expired => metrics.fleet_threat("expired"),
                    Verdict::Refuse(why) => {
                        metrics.fleet_threat("refused");
                        if let Some(more) = REFUSAL_LOG.admit() {
                            warn!(entry = %entry.id, reason = %why, refused_since_last_log = more,
                                "fleet: threat event refused");
                        }
                    }
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let p = policy.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let mut n = 0;
            for (change, ttl) in batch {
                match change.apply(&p, ttl) {
                    Ok(_) => n += 1,
                    Err(e) => {
                        warn!(change = ?change, error = %format!("{e:#}"), "fleet: applying a threat event failed")
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

enum Verdict {
    Apply(Change, Option<Duration>),
    /// Ours, or another region's under `scope = "region"`.
    Skip,
    Expired,
    Refuse(String),
}

/// What to do with one stream entry (`id` is `<redis ms>-<seq>`).
fn accept(
    id: &str,
    fields: &HashMap<String, redis::Value>,
    settings: &FleetSettings,
    me: &Identity,
    protected: &Protected,
) -> Verdict {
    let field = |k: &str| -> Option<String> {
        fields
            .get(k)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    };
    let number = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
    if field("v").as_deref() != Some(FORMAT) {
        return Verdict::Refuse(format!(
            "format {:?}, this node reads {FORMAT} (a node of another version?)",
            field("v")
        ));
    }
    let (Some(node), Some(region), Some(kind), Some(target)) = (
        field("node"),
        field("region"),
        field("kind"),
        field("target"),
    ) else {
        return Verdict::Refuse("missing fields".into());
    };
    if node == me.node {
        return Verdict::Skip;
    }
    if settings.scope == Scope::Region && region != me.region {
        return Verdict::Skip;
    }
    let (Some(redis_ms), Some(ttl_ms), Some(age_ms), Some(score)) = (
        id.split('-').next().and_then(|v| v.parse::<u64>().ok()),
        number("ttl_ms"),
        number("age_ms"),
        number("score"),
    ) else {
        return Verdict::Refuse("malformed numbers".into());
    };
    // When the node decided, on Redis' clock: the append's time less what the node says
    // it waited (a backlog while Redis was away), so no node's own clock is trusted.
    let decided_ms = redis_ms.saturating_sub(age_ms);
    let change = match kind.as_str() {
        "score" => match (target.parse::<IpAddr>(), u32::try_from(score)) {
            (Ok(ip), Ok(score)) => Change::Score { ip, score },
            _ => return Verdict::Refuse(format!("score target {target:?}")),
        },
        "block" | "unblock" => match crate::xdp::cli::parse_cidr(&target) {
            Ok(net) if kind == "block" => Change::Block(net),
            Ok(net) => Change::Unblock(net),
            Err(_) => return Verdict::Refuse(format!("prefix {target:?}")),
        },
        other => return Verdict::Refuse(format!("kind {other:?}")),
    };
    if let Some(stops) = change.stops()
        && let Some(p) = protected
            .0
            .iter()
            .find(|p| p.contains(&stops) || stops.contains(*p))
    {
        return Verdict::Refuse(format!(
            "{} {} would stop {p}, an xdp.allow prefix or trusted proxy here",
            change.kind(),
            stops
        ));
    }
    let now_ms = crate::clock::unix_ms();
    // Redis' clock against ours: an entry stamped well after our now means one of the
    // two is off, and its TTL would be wrong here.
    if redis_ms > now_ms + settings.max_clock_skew.as_millis() as u64 {
        return Verdict::Refuse(format!(
            "stamped {} ms ahead of this node's clock (max_clock_skew {:?})",
            redis_ms - now_ms,
            settings.max_clock_skew
        ));
    }
    let ttl = if ttl_ms == 0 {
        None
    } else {
        let until = decided_ms.saturating_add(ttl_ms);
        if until <= now_ms {
            return Verdict::Expired;
        }
        Some(Duration::from_millis(until - now_ms))
    };
    Verdict::Apply(change, ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, &str)]) -> HashMap<String, redis::Value> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    redis::Value::BulkString(v.as_bytes().to_vec()),
                )
            })
            .collect()
    }

    fn fields<'a>(kind: &'a str, target: &'a str, node: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("v", "1"),
            ("node", node),
            ("region", "eu"),
            ("kind", kind),
            ("target", target),
            ("score", "80"),
            ("ttl_ms", "60000"),
            ("age_ms", "5"),
        ]
    }

    #[test]
    fn entries_are_applied_skipped_or_refused_for_a_reason() {
        let settings = FleetSettings::default();
        let me = Identity {
            node: "b".into(),
            region: "eu".into(),
        };
        let protected = Protected(vec!["10.0.0.0/8".parse().unwrap()]);
        let now = crate::clock::unix_ms();
        let id = format!("{now}-0");
        let check =
            |f: &[(&str, &str)], id: &str| accept(id, &entry(f), &settings, &me, &protected);
        match check(&fields("score", "198.51.100.7", "a"), &id) {
            Verdict::Apply(Change::Score { score: 80, .. }, Some(ttl)) => {
                assert!(ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(50))
            }
            _ => panic!("a live score from another node applies"),
        }
        assert!(matches!(
            check(&fields("block", "203.0.113.0/24", "a"), &id),
            Verdict::Apply(Change::Block(_), Some(_))
        ));
        assert!(matches!(
            check(&fields("score", "198.51.100.7", "b"), &id),
            Verdict::Skip
        ));
        // Trusted proxies and allowed prefixes are never stopped from afar.
        assert!(matches!(
            check(&fields("block", "10.1.2.3", "a"), &id),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            check(&fields("block", "0.0.0.0/0", "a"), &id),
            Verdict::Refuse(_)
        ));
        // An unblock of them is fine.
        assert!(matches!(
            check(&fields("unblock", "10.1.2.3", "a"), &id),
            Verdict::Apply(Change::Unblock(_), _)
        ));
        // Over already.
        let old = format!("{}-0", now - 120_000);
        assert!(matches!(
            check(&fields("score", "198.51.100.7", "a"), &old),
            Verdict::Expired
        ));
        // Another format, malformed values, a clock far ahead.
        let mut f = fields("score", "198.51.100.7", "a");
        f[0] = ("v", "2");
        assert!(matches!(check(&f, &id), Verdict::Refuse(_)));
        assert!(matches!(
            check(&fields("score", "not-an-ip", "a"), &id),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            check(&fields("drop", "198.51.100.7", "a"), &id),
            Verdict::Refuse(_)
        ));
        let ahead = format!("{}-0", now + 3_600_000);
        assert!(matches!(
            check(&fields("score", "198.51.100.7", "a"), &ahead),
            Verdict::Refuse(_)
        ));
        // scope = region: other regions' events are not ours to apply.
        let regional = FleetSettings {
            scope: Scope::Region,
            region: "us".into(),
            ..FleetSettings::default()
        };
        let us = Identity {
            node: "b".into(),
            region: "us".into(),
        };
        assert!(matches!(
            accept(
                &id,
                &entry(&fields("score", "198.51.100.7", "a")),
                &regional,
                &us,
                &protected
            ),
            Verdict::Skip
        ));
    }
}
