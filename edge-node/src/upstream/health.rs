//! What the node knows about each origin server: requests in flight, the active health
//! check's verdict, and passive ejection after failures in a row. States live in a
//! registry keyed by (upstream, server) so a reload keeps what was learned.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

/// One origin server of one upstream.
pub struct ServerState {
    pub upstream: String,
    pub server: String,
    /// Requests sent and not yet finished (response body included).
    outstanding: AtomicUsize,
    /// The active health check's verdict (true until a check says otherwise).
    probe_healthy: AtomicBool,
    probe_streak: AtomicU32,
    /// Failures in a row seen by real requests.
    fails: AtomicU32,
    /// Out of rotation until this many ms after `epoch` (0: not ejected).
    ejected_until_ms: AtomicU64,
    epoch: Instant,
    pub ejections: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Retries sent after this server failed, and those the budget refused.
    pub retried: AtomicU64,
    pub retry_denied: AtomicU64,
}

impl ServerState {
    fn new(upstream: &str, server: &str) -> Self {
        Self {
            upstream: upstream.to_string(),
            server: server.to_string(),
            outstanding: AtomicUsize::new(0),
            probe_healthy: AtomicBool::new(true),
            probe_streak: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            ejections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            retry_denied: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn probe_healthy(&self) -> bool {
        self.probe_healthy.load(Ordering::Relaxed)
    }

    pub fn ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// In rotation: the health check passes and passive ejection is not in force.
    pub fn usable(&self) -> bool {
        self.probe_healthy() && !self.ejected()
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn record_success(&self) {
        // Read first: an unconditional store would bounce the line between workers.
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }

    /// A failure seen by a real request; `max_fails` in a row eject the server.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if max_fails != 0 && n >= max_fails {
            self.fails.store(0, Ordering::Relaxed);
            let ms = u64::try_from(fail_timeout.as_millis()).unwrap_or(u64::MAX);
            let until = self.now_ms().saturating_add(ms);
            self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
            self.ejections.fetch_add(1, Ordering::Relaxed);
            warn!(upstream = %self.upstream, server = %self.server, failures = n, ?fail_timeout, "origin ejected after failures in a row");
        }
    }

    /// One active probe's result; a change of verdict needs `threshold` in a row.
    pub fn record_probe(&self, passed: bool, healthy_threshold: u32, unhealthy_threshold: u32) {
        let was = self.probe_healthy();
        if passed == was {
            self.probe_streak.store(0, Ordering::Relaxed);
            return;
        }
        let n = self.probe_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if passed {
            healthy_threshold
        } else {
            unhealthy_threshold
        };
        if n >= needed {
            self.probe_streak.store(0, Ordering::Relaxed);
            self.probe_healthy.store(passed, Ordering::Relaxed);
            if passed {
                // Back by the health check: forget the passive ejection too.
                self.ejected_until_ms.store(0, Ordering::Relaxed);
                info!(upstream = %self.upstream, server = %self.server, "origin healthy again");
            } else {
                warn!(upstream = %self.upstream, server = %self.server, "origin failed its health checks");
            }
        }
    }
}

/// A request in flight on a server; dropping it ends the count.
pub struct InFlight(Arc<ServerState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// (upstream, server) → its state while some pool still uses it.
type StateMap = HashMap<(String, String), Weak<ServerState>>;

/// Server states of every pool, shared across reloads (and read by /metrics).
#[derive(Clone, Default)]
pub struct Registry {
    states: Arc<Mutex<StateMap>>,
}

impl Registry {
    /// The state of `server` in `upstream`: the one a previous configuration used, if
    /// it is still alive, so health survives a reload.
    pub fn state(&self, upstream: &str, server: &str) -> Arc<ServerState> {
        let mut map = self.states.lock().expect("registry lock");
        map.retain(|_, w| w.strong_count() > 0);
        let key = (upstream.to_string(), server.to_string());
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(ServerState::new(upstream, server));
        map.insert(key, Arc::downgrade(&s));
        s
    }

    /// The live states, sorted (for /metrics).
    pub fn snapshot(&self) -> Vec<Arc<ServerState>> {
        let map = self.states.lock().expect("registry lock");
        let mut v: Vec<_> = map.values().filter_map(Weak::upgrade).collect();
        v.sort_by(|a, b| (&a.upstream, &a.server).cmp(&(&b.upstream, &b.server)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_eject_and_probes_need_a_streak() {
        let r = Registry::default();
        let s = r.state("u", "a:1");
        s.record_failure(3, Duration::from_secs(60));
        s.record_failure(3, Duration::from_secs(60));
        s.record_success();
        s.record_failure(3, Duration::from_secs(60));
        assert!(s.usable(), "a success in between resets the count");
        s.record_failure(3, Duration::from_secs(60));
        s.record_failure(3, Duration::from_secs(60));
        assert!(!s.usable() && s.ejected());
        // The same state comes back for the same key while it is alive.
        assert!(Arc::ptr_eq(&s, &r.state("u", "a:1")));

        let p = r.state("u", "b:1");
        p.record_probe(false, 2, 2);
        assert!(p.usable(), "one failed probe is not enough");
        p.record_probe(false, 2, 2);
        assert!(!p.usable());
        p.record_probe(true, 2, 2);
        p.record_probe(false, 2, 2);
        p.record_probe(true, 2, 2);
        assert!(!p.usable(), "the streak was broken");
        p.record_probe(true, 2, 2);
        assert!(p.usable());
    }
}
