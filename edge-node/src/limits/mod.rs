//! Request rate limits, sans-IO: keyed GCRA buckets (the same admission rule the XDP
//! program uses per packet) with time passed in. Keys live in a bounded cache, so an
//! attacker cycling through millions of keys costs a bounded amount of memory: the
//! least recently used buckets are forgotten first (a forgotten bucket is a full one).

use std::{
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use edge_common::{BucketParams, gcra_admit};

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still allowed right now (after this one).
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    /// When refused: until the next request would be admitted.
    pub retry_after: Duration,
}

/// The GCRA parameters of `per_second` sustained with bursts of `burst` (at least 1).
fn params(per_second: f64, burst: u64) -> BucketParams {
    let burst = burst.max(1);
    let interval_ns = if per_second > 0.0 {
        ((1e9 / per_second) as u64).max(1)
    } else {
        u64::MAX / (burst + 1)
    };
    BucketParams {
        interval_ns,
        limit_ns: interval_ns.saturating_mul(burst),
    }
}

/// At most one log line per period however often something happens (a flood must not
/// become a flood of log lines), telling how many were left out since.
pub struct LogEvery {
    period_ns: u64,
    next_ns: std::sync::atomic::AtomicU64,
    left_out: std::sync::atomic::AtomicU64,
}

impl LogEvery {
    pub const fn new(period_ns: u64) -> Self {
        Self {
            period_ns,
            next_ns: std::sync::atomic::AtomicU64::new(0),
            left_out: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(how many were left out since the last line)` when a line is due.
    pub fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = crate::clock::now_ns();
        let next = self.next_ns.load(Relaxed);
        if now >= next
            && self
                .next_ns
                .compare_exchange(next, now + self.period_ns, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.left_out.swap(0, Relaxed));
        }
        self.left_out.fetch_add(1, Relaxed);
        None
    }
}

/// One bucket with one owner (a WebSocket member's messages): no sharing, no map.
pub struct Bucket {
    params: BucketParams,
    tat: u64,
}

impl Bucket {
    pub fn new(per_second: f64, burst: u64) -> Self {
        Self {
            params: params(per_second, burst),
            tat: 0,
        }
    }

    /// Admits (and counts) one event at `now_ns`, or refuses it.
    pub fn admit(&mut self, now_ns: u64) -> bool {
        match gcra_admit(self.tat, now_ns, &self.params) {
            Some(next) => {
                self.tat = next;
                true
            }
            None => false,
        }
    }
}

/// One limit (rate and burst) applied per key.
pub struct KeyedLimiter<K> {
    params: BucketParams,
    burst: u64,
    buckets: moka::sync::Cache<K, Arc<AtomicU64>>,
}

impl<K: Hash + Eq + Send + Sync + Clone + 'static> KeyedLimiter<K> {
    /// `per_second` sustained (fractions allowed), bursts of `burst`, at most
    /// `max_keys` buckets remembered.
    pub fn new(per_second: f64, burst: u64, max_keys: u64) -> Self {
        let burst = burst.max(1);
        let params = params(per_second, burst);
        // A bucket idle for longer than it takes to refill is full: forget it.
        let idle = Duration::from_nanos(params.limit_ns.min(86_400_000_000_000))
            .max(Duration::from_secs(1));
        Self {
            params,
            burst,
            buckets: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Admits or refuses one request of `key` at `now_ns` (any monotonic clock in ns).
    pub fn check(&self, key: &K, now_ns: u64) -> Decision {
        let tat = self
            .buckets
            .get_with_by_ref(key, || Arc::new(AtomicU64::new(0)));
        let p = &self.params;
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            match gcra_admit(current, now_ns, p) {
                Some(next) => match tat.compare_exchange_weak(
                    current,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let ahead = next - now_ns;
                        return Decision {
                            allowed: true,
                            remaining: (p.limit_ns - ahead) / p.interval_ns,
                            reset_after: Duration::from_nanos(ahead),
                            retry_after: Duration::ZERO,
                        };
                    }
                    Err(actual) => current = actual,
                },
                None => {
                    let ahead = current.saturating_sub(now_ns);
                    // The next request fits once `ahead + interval` is within the limit.
                    let wait = (ahead + p.interval_ns).saturating_sub(p.limit_ns);
                    return Decision {
                        allowed: false,
                        remaining: 0,
                        reset_after: Duration::from_nanos(ahead),
                        retry_after: Duration::from_nanos(wait),
                    };
                }
            }
        }
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Seconds over which `burst` requests are allowed at the sustained rate.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.params.limit_ns)
    }

    /// Buckets remembered (approximate; for tests and metrics).
    pub fn tracked(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_and_the_advice_is_right() {
        let l = KeyedLimiter::new(10.0, 5, 1000);
        let t0 = 5_000_000_000;
        let admitted = (0..20).filter(|_| l.check(&"a", t0).allowed).count();
        assert_eq!(admitted, 5);
        let d = l.check(&"a", t0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        // Other keys are not affected.
        assert!(l.check(&"b", t0).allowed);
        // After the advised wait, exactly one more.
        let later = t0 + d.retry_after.as_nanos() as u64;
        assert!(l.check(&"a", later).allowed);
        assert!(!l.check(&"a", later).allowed);
        // A full second later the bucket is full again: a burst of five.
        let much_later = later + 1_000_000_000;
        assert_eq!(
            (0..20)
                .filter(|_| l.check(&"a", much_later).allowed)
                .count(),
            5
        );
    }

    #[test]
    fn memory_is_bounded_by_the_key_cap() {
        let l = KeyedLimiter::new(1.0, 1, 1000);
        for i in 0..50_000u32 {
            l.check(&i, 1_000_000_000);
        }
        assert!(l.tracked() <= 1100, "{}", l.tracked());
    }
}
