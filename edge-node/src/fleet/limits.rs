//! Rate limits counted across the fleet (`[[route.rate_limit]] scope = "fleet"`): one
//! GCRA state per key in Redis, changed by one atomic script per decision, which grants
//! a node a small lease of tokens (what the limit allows in `LEASE_SHARE` of a second,
//! at least one) so most requests on a busy key never wait for Redis. Tokens a node was
//! leased and did not use within `LEASE_TTL` are lost to the fleet: the admitted rate
//! errs low, never high. A key Redis refused is refused locally until the time Redis
//! named. Redis unreachable: the node falls back to its share of the limit (rate and
//! burst divided by the live members it last counted).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{
    limits::{Decision, KeyedLimiter},
    redis_link::RedisConn,
};

/// Takes up to `ARGV[3]` tokens for `KEYS[1]` (interval `ARGV[1]` µs, burst tolerance
/// `ARGV[2]` µs), on Redis' clock; answers the tokens granted and how far (µs) the
/// state is ahead of now.
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tol, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now + tol - tat) / interval) + 1
if room < 0 then room = 0 end
local grant = math.min(want, room)
if grant > 0 then
  tat = tat + grant * interval
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return {grant, string.format('%d', tat - now)}
"#;

/// A lease covers what the limit allows in this share of a second.
const LEASE_SHARE: f64 = 0.05;
/// Leased tokens unused for this long are dropped.
const LEASE_TTL: Duration = Duration::from_millis(250);

/// One node's view of a key: its leased tokens, or Redis' refusal.
#[derive(Default)]
struct Lease {
    tokens: u64,
    until: Option<Instant>,
    refused_until: Option<Instant>,
}

pub struct FleetLimit {
    conn: RedisConn,
    script: redis::Script,
    /// `<prefix>:rl:<limit>:` (the key's hash follows).
    prefix: String,
    interval_us: u64,
    tolerance_us: u64,
    lease: u64,
    timeout: Duration,
    leases: moka::sync::Cache<u64, Arc<tokio::sync::Mutex<Lease>>>,
    per_second: f64,
    burst: u64,
    max_keys: u64,
    /// This node's share while Redis is away: the live count it was made for.
    fallback: Mutex<Option<(u32, Arc<KeyedLimiter<u64>>)>>,
}

static FALLBACK_LOG: crate::limits::LogEvery = crate::limits::LogEvery::new(10_000_000_000);

impl FleetLimit {
    /// A limit of `per_second` with bursts of `burst` per key, named `name` in Redis.
    pub fn new(
        conn: RedisConn,
        name: &str,
        per_second: f64,
        burst: u64,
        max_keys: u64,
        timeout: Duration,
    ) -> Self {
        let burst = burst.max(1);
        let interval_us = ((1e6 / per_second) as u64).max(1);
        Self {
            conn,
            script: redis::Script::new(TAKE),
            prefix: format!("{name}:"),
            interval_us,
            tolerance_us: interval_us.saturating_mul(burst - 1),
            lease: ((per_second * LEASE_SHARE) as u64).clamp(1, burst),
            timeout,
            leases: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(LEASE_TTL.max(Duration::from_secs(1)))
                .build(),
            per_second,
            burst,
            max_keys,
            fallback: Mutex::new(None),
        }
    }

    /// Admits or refuses one request of `key`.
    pub async fn check(&self, key: u64) -> Decision {
        let entry = self.leases.get_with(key, Default::default);
        let mut lease = entry.lock().await;
        let now = Instant::now();
        if lease.tokens > 0 && lease.until.is_some_and(|u| now < u) {
            lease.tokens -= 1;
            return self.allowed(lease.tokens);
        }
        if let Some(until) = lease.refused_until.filter(|u| now < *u) {
            return refused(until - now);
        }
        let mut call = self.script.key(format!("{}{key:016x}", self.prefix));
        call.arg(self.interval_us)
            .arg(self.tolerance_us)
            .arg(self.lease);
        let mut conn = self.conn.clone();
        let took =
            tokio::time::timeout(self.timeout, call.invoke_async::<(u64, u64)>(&mut conn)).await;
        match took {
            Ok(Ok((granted, _))) if granted > 0 => {
                lease.tokens = granted - 1;
                lease.until = Some(now + LEASE_TTL);
                lease.refused_until = None;
                self.allowed(lease.tokens)
            }
            Ok(Ok((_, ahead_us))) => {
                // The next request fits once the state is within the tolerance again.
                let wait = Duration::from_micros(ahead_us.saturating_sub(self.tolerance_us).max(1));
                lease.tokens = 0;
                lease.refused_until = Some(now + wait);
                refused(wait)
            }
            failed => {
                drop(lease);
                if let Some(more) = FALLBACK_LOG.admit() {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    warn!(%error, failures_since_last_log = more,
                        "fleet rate limit: Redis unreachable; this node applies its share of the limit");
                }
                self.fallback().check(&key, crate::clock::now_ns())
            }
        }
    }

    /// This node's share of the limit: divided by the live members last counted.
    fn fallback(&self) -> Arc<KeyedLimiter<u64>> {
        let live = super::members::live_nodes().max(1);
        let mut f = crate::sync::lock(&self.fallback);
        match &*f {
            Some((n, l)) if *n == live => l.clone(),
            _ => {
                let l = Arc::new(KeyedLimiter::new(
                    self.per_second / f64::from(live),
                    (self.burst / u64::from(live)).max(1),
                    self.max_keys,
                ));
                *f = Some((live, l.clone()));
                l
            }
        }
    }

    fn allowed(&self, remaining: u64) -> Decision {
        Decision {
            allowed: true,
            remaining,
            reset_after: Duration::from_micros(self.interval_us.saturating_mul(self.burst)),
            retry_after: Duration::ZERO,
        }
    }
}

fn refused(wait: Duration) -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        reset_after: wait,
        retry_after: wait,
    }
}
