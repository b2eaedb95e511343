//! Fleet membership: every node with `fleet.redis` says it is alive every `heartbeat`
//! (its region, version, start and heartbeat period in `{<prefix>:members}:nodes`, the
//! moment on Redis' clock in `{<prefix>:members}:beats`); `edge-node fleet status` lists them. A node silent
//! for three of its periods is shown lapsed; one silent for an hour is forgotten.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::task::JoinHandle;
use tracing::warn;

use super::FleetSettings;

/// Records `ARGV[1]` (described by `ARGV[2]`) as alive now, forgets nodes silent for
/// `ARGV[3]` ms; answers how many beat within the last `ARGV[4]` ms.
const BEAT: &str = r#"
local nodes, beats = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', nodes, ARGV[1], ARGV[2])
redis.call('ZADD', beats, now, ARGV[1])
for _, n in ipairs(redis.call('ZRANGEBYSCORE', beats, '-inf', now - tonumber(ARGV[3]))) do
  redis.call('ZREM', beats, n); redis.call('HDEL', nodes, n)
end
return redis.call('ZCOUNT', beats, now - tonumber(ARGV[4]), '+inf')
"#;

/// Answers Redis' now, then node, description and last beat for every known node.
const LIST: &str = r#"
local nodes, beats = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local out = {tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
for _, n in ipairs(redis.call('ZRANGE', beats, 0, -1)) do
  table.insert(out, n)
  table.insert(out, redis.call('HGET', nodes, n) or '')
  table.insert(out, redis.call('ZSCORE', beats, n))
end
return out
"#;

/// Nodes silent this long are forgotten.
const FORGET_MS: u64 = 3_600_000;
/// A node is lapsed after this many of its heartbeat periods without one.
const LAPSE_PERIODS: u64 = 3;

/// This node's heartbeats, sent while it is held.
pub struct Heartbeats(JoinHandle<()>);

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends this node's heartbeats; failures are logged (rate-limited) and retried at the
/// next beat.
pub fn start(settings: &FleetSettings, node: &str) -> Result<Heartbeats> {
    let mut conn = settings.target()?.connect(settings.timeout)?;
    let (nodes, beats) = settings.member_keys();
    let description = format!(
        "{}\t{}\t{}\t{}",
        settings.region,
        env!("CARGO_PKG_VERSION"),
        crate::clock::unix_ms(),
        settings.heartbeat.as_millis()
    );
    let (node, every, timeout) = (node.to_string(), settings.heartbeat, settings.timeout);
    let lapse_ms = LAPSE_PERIODS * every.as_millis() as u64;
    Ok(Heartbeats(tokio::spawn(async move {
        let script = redis::Script::new(BEAT);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut call = script.key(&nodes);
            call.key(&beats)
                .arg(&node)
                .arg(&description)
                .arg(FORGET_MS)
                .arg(lapse_ms);
            match tokio::time::timeout(timeout, call.invoke_async::<u32>(&mut conn)).await {
                Ok(Ok(live)) => LIVE.store(live.max(1), Ordering::Relaxed),
                failed => {
                    if let Some(more) = HEARTBEAT_LOG.admit() {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {timeout:?}"),
                        };
                        warn!(%error, failures_since_last_log = more, "fleet: heartbeat failed");
                    }
                }
            }
        }
    })))
}

/// Live members at the last heartbeat (1 before any, or alone).
static LIVE: AtomicU32 = AtomicU32::new(1);

/// How many nodes the fleet had at this node's last heartbeat (itself included; 1 when
/// it has not counted yet): what a fleet rate limit is shared by while Redis is away.
pub fn live_nodes() -> u32 {
    LIVE.load(Ordering::Relaxed)
}

static HEARTBEAT_LOG: crate::limits::LogEvery = crate::limits::LogEvery::new(10_000_000_000);

/// `edge-node fleet status`: the fleet's nodes as Redis knows them, one line each.
pub fn status(settings: &FleetSettings) -> Result<String> {
    let target = settings.target()?;
    let (nodes, beats) = settings.member_keys();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply: Vec<String> = runtime
        .block_on(async {
            let mut conn = target.connect(settings.timeout)?;
            let script = redis::Script::new(LIST);
            let mut call = script.key(nodes);
            call.key(beats);
            // A first call: connecting (the Sentinels asked) is part of it.
            let bound = crate::redis_link::connect_budget(settings.timeout) + settings.timeout;
            tokio::time::timeout(bound, call.invoke_async(&mut conn))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {bound:?}"))?
                .map_err(anyhow::Error::from)
        })
        .with_context(|| format!("reading the fleet's members from {target}"))?;
    let (now, rest) = reply.split_first().context("empty answer")?;
    let now: u64 = now.parse().context("Redis' time")?;
    let mut out = String::from("NODE\tREGION\tVERSION\tSTARTED\tLAST HEARTBEAT\tSTATE\n");
    for n in rest.chunks(3) {
        let [node, description, beat] = n else {
            continue;
        };
        let mut d = description.split('\t');
        let (region, version, started, period) = (
            d.next().unwrap_or(""),
            d.next().unwrap_or("?"),
            d.next().and_then(|v| v.parse::<u64>().ok()),
            d.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(2000),
        );
        let age = now.saturating_sub(beat.parse::<f64>().unwrap_or(0.0) as u64);
        let started = started.map_or_else(
            || "?".to_string(),
            |ms| {
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string()
            },
        );
        let state = if age <= LAPSE_PERIODS * period {
            "live"
        } else {
            "lapsed"
        };
        let _ = writeln!(
            out,
            "{node}\t{}\t{version}\t{started}\t{:.1}s ago\t{state}",
            if region.is_empty() { "-" } else { region },
            age as f64 / 1000.0
        );
    }
    Ok(out)
}
