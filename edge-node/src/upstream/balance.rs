//! Choosing a server of a pool: round robin, least outstanding requests, or a consistent
//! hash ring; servers out of rotation are skipped. And the retry budget that keeps
//! retries a bounded fraction of the traffic.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use super::{health::ServerState, settings::Balance};
use crate::hash::stable_hash;

/// Points per server on the ring: enough that load spreads evenly over a few servers.
const RING_POINTS: u32 = 160;

pub struct Balancer {
    policy: Balance,
    next: AtomicUsize,
    /// (point, server index), sorted by point.
    ring: Vec<(u64, usize)>,
}

impl Balancer {
    /// Whether `pick` uses the request's key (only the hash ring does).
    pub fn uses_key(&self) -> bool {
        self.policy == Balance::ConsistentHash
    }

    pub fn new(policy: Balance, servers: &[String]) -> Self {
        let mut ring = Vec::new();
        if policy == Balance::ConsistentHash {
            for (i, s) in servers.iter().enumerate() {
                for p in 0..RING_POINTS {
                    ring.push((stable_hash(format!("{s}#{p}").as_bytes()), i));
                }
            }
            ring.sort_unstable();
        }
        Self {
            policy,
            next: AtomicUsize::new(0),
            ring,
        }
    }

    /// The next server to try: not in `tried`, in rotation unless `ignore_health`
    /// (every server is out and the pool is tried anyway).
    pub fn pick(
        &self,
        servers: &[Arc<ServerState>],
        key: u64,
        tried: &[usize],
        ignore_health: bool,
    ) -> Option<usize> {
        let n = servers.len();
        let ok = |i: usize| !tried.contains(&i) && (ignore_health || servers[i].usable());
        match self.policy {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
            }
            Balance::LeastOutstanding => {
                // Ties go round robin, so an idle pool still spreads its load.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| servers[i].outstanding())
            }
            Balance::ConsistentHash => {
                if self.ring.is_empty() {
                    return None;
                }
                let at = self.ring.partition_point(|(p, _)| *p < key);
                (0..self.ring.len())
                    .map(|k| self.ring[(at + k) % self.ring.len()].1)
                    .find(|&i| ok(i))
            }
        }
    }
}

/// Retries allowed: `ratio` per request plus `min_per_sec`, saved up to a cap. Each
/// retry spends one.
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: f64) -> Self {
        Self {
            ratio,
            min_per_sec,
            state: Mutex::new((min_per_sec, Instant::now())),
        }
    }

    fn cap(&self) -> f64 {
        // Ten seconds' worth of the floor, and room for a burst of ratio-earned ones.
        (self.min_per_sec * 10.0)
            .max(10.0 * self.ratio.ceil())
            .max(1.0)
    }

    /// A request came in: it earns `ratio` of a retry.
    pub fn deposit(&self) {
        let mut s = self.state.lock().expect("budget lock");
        s.0 = (s.0 + self.ratio).min(self.cap());
    }

    /// Whether a retry may go out now (and spends it).
    pub fn withdraw(&self) -> bool {
        let mut s = self.state.lock().expect("budget lock");
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.min_per_sec;
        s.0 = (s.0 + refill).min(self.cap());
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::health::Registry;

    fn servers(n: usize) -> (Vec<String>, Vec<Arc<ServerState>>) {
        let r = Registry::default();
        let names: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
        let states = names.iter().map(|s| r.state("u", s)).collect();
        (names, states)
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_little_when_a_server_goes() {
        let (names, states) = servers(4);
        let b = Balancer::new(Balance::ConsistentHash, &names);
        let keys: Vec<u64> = (0..2000)
            .map(|i| stable_hash(format!("user-{i}").as_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| b.pick(&states, k, &[], false).unwrap())
            .collect();
        let mut per = [0usize; 4];
        for &i in &before {
            per[i] += 1;
        }
        assert!(per.iter().all(|&c| c > 300), "uneven spread {per:?}");
        // Server 2 out: only its keys move.
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|&(&k, &was)| b.pick(&states, k, &[2], false).unwrap() != was)
            .count();
        assert_eq!(moved, per[2]);
    }

    #[test]
    fn least_outstanding_avoids_the_busy_server() {
        let (names, states) = servers(3);
        let b = Balancer::new(Balance::LeastOutstanding, &names);
        let _busy = (states[0].begin(), states[0].begin(), states[1].begin());
        for _ in 0..5 {
            assert_eq!(b.pick(&states, 0, &[], false), Some(2));
        }
    }

    #[test]
    fn retry_budget_is_a_fraction_of_requests() {
        let b = RetryBudget::new(0.5, 0.0);
        assert!(!b.withdraw());
        for _ in 0..4 {
            b.deposit();
        }
        assert!(b.withdraw() && b.withdraw() && !b.withdraw());
    }

    #[test]
    fn round_robin_takes_turns_past_servers_out_of_rotation_or_tried() {
        let (names, states) = servers(3);
        let b = Balancer::new(Balance::RoundRobin, &names);
        assert!(!b.uses_key());
        let turns: Vec<_> = (0..4).map(|_| b.pick(&states, 0, &[], false)).collect();
        assert_eq!(turns, [Some(0), Some(1), Some(2), Some(0)]);
        // Ejected (one failure of one allowed): skipped.
        states[1].record_failure(1, std::time::Duration::from_secs(60));
        for _ in 0..6 {
            assert_ne!(b.pick(&states, 0, &[], false), Some(1));
        }
        // A retry goes to a server not tried yet; none left, none.
        assert_eq!(b.pick(&states, 0, &[0, 2], false), None);
        // Every server out: tried anyway when the caller says so.
        for s in &states {
            s.record_failure(1, std::time::Duration::from_secs(60));
        }
        assert_eq!(b.pick(&states, 0, &[], false), None);
        assert!(b.pick(&states, 0, &[], true).is_some());
    }

    #[test]
    fn consistent_hash_goes_round_a_server_out_of_rotation() {
        let (names, states) = servers(3);
        let b = Balancer::new(Balance::ConsistentHash, &names);
        assert!(b.uses_key());
        let key = stable_hash(b"user-7");
        let home = b.pick(&states, key, &[], false).unwrap();
        assert_eq!(
            b.pick(&states, key, &[], false),
            Some(home),
            "the same every time"
        );
        states[home].record_failure(1, std::time::Duration::from_secs(60));
        let next = b.pick(&states, key, &[], false).unwrap();
        assert_ne!(next, home);
        assert_eq!(
            b.pick(&states, key, &[home], true),
            Some(next),
            "as for a retry"
        );
    }
}
