//! The policy engine: what the proxy learns about a client (failed auth, rate-limit
//! hits, malformed requests, failed challenges, probes of blocked paths) raises a
//! per-source threat score that decays over time. At `challenge_threshold` the client is
//! challenged; at the XDP drop threshold its address is written into the kernel's source
//! trie with a TTL, so its next packets die at the NIC (or, without XDP, at accept).

pub mod settings;

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tracing::{error, warn};

pub use settings::{Signal, ThreatSettings};

use crate::{
    fleet::threats::{Change, ThreatFeed},
    xdp::SharedPolicy,
};

/// Who a signal is about, as the connection and the early phase established it.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The client the request is judged as: the socket peer, or the address a trusted
    /// proxy in front reported.
    pub client: IpAddr,
    /// The socket peer.
    pub peer: IpAddr,
    /// The peer is one of `http.trusted_proxies`.
    pub peer_trusted: bool,
    /// The peer's address is proven: a completed TCP or QUIC handshake. Requests from
    /// QUIC 0-RTT early data are not (their source can be forged).
    pub validated: bool,
    /// A browser may have sent the request on another site's behalf (Fetch Metadata:
    /// `Sec-Fetch-Site` other than `same-origin` or `none`): any page its user opens can
    /// make it request `/.env` (`<img src>`). Such signals may get the client
    /// challenged, which a browser passes, but never dropped.
    pub induced: bool,
}

impl Source {
    /// A connection's own peer (a request it could not even frame).
    pub fn peer(peer: IpAddr, trusted_proxies: &[ipnet::IpNet]) -> Self {
        Self {
            client: peer,
            peer,
            peer_trusted: trusted_proxies.iter().any(|n| n.contains(&peer)),
            validated: true,
            induced: false,
        }
    }

    /// Whether a signal counts at all: never against an unproven address (anyone could
    /// have earned it a score in its owner's name), never against a trusted proxy itself
    /// (what it sends is its clients' doing; with a client it could not name, nobody's).
    pub fn counts(&self) -> bool {
        self.validated && !(self.peer_trusted && self.client == self.peer)
    }

    /// Whether the score may reach the kernel's maps: only for the address the packets
    /// come from, so a drop at the NIC hits this client and never a proxy carrying many.
    pub fn escalatable(&self) -> bool {
        self.counts() && !self.induced && !self.peer_trusted && self.client == self.peer
    }
}

/// A score and when it was last brought up to date.
#[derive(Clone, Copy)]
struct Score {
    value: f64,
    at: Instant,
    /// Already written into the source policy (until `escalated_until`).
    escalated_until: Option<Instant>,
}

/// What a client's score calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Clear,
    Challenge,
    Drop,
}

/// An escalation for the writer task: source, score, TTL.
type Escalation = (IpAddr, u32, Duration);

/// One engine for the life of the process: scores survive reloads, which swap the
/// settings.
pub struct ThreatEngine {
    /// Read on every request by every worker: a lock (and the Arc's count) would bounce
    /// between cores.
    config: ArcSwap<(ThreatSettings, u32)>,
    scores: moka::sync::Cache<IpAddr, Arc<Mutex<Score>>>,
    /// `xdp.allow`: never dropped, whatever else says, so never refused for a score.
    allowed: ArcSwap<Vec<ipnet::IpNet>>,
    /// `xdp.ipv6_source_prefix`: how much of an IPv6 address names a source ([`Self::key`]).
    ipv6_prefix: AtomicU32,
    escalate: Option<mpsc::Sender<Escalation>>,
    /// The fleet's threat stream, when this node shares: escalations go there too.
    feed: Arc<arc_swap::ArcSwapOption<ThreatFeed>>,
}

impl ThreatEngine {
    /// `drop_threshold` is the XDP program's (xdp.drop_threshold): one number decides
    /// in both halves. Without a policy (tests, `check`) nothing is written anywhere.
    pub fn new(
        settings: &ThreatSettings,
        drop_threshold: u32,
        policy: Option<SharedPolicy>,
    ) -> Self {
        let feed = Arc::new(arc_swap::ArcSwapOption::empty());
        let escalate = policy.map(|p| spawn_writer(p, feed.clone()));
        Self {
            config: ArcSwap::from_pointee((settings.clone(), drop_threshold)),
            scores: moka::sync::Cache::builder()
                .max_capacity(settings.max_tracked)
                // A score idle for ten half-lives is under a thousandth of itself.
                // (moka refuses idle times over 1000 years.)
                .time_to_idle(settings.half_life.saturating_mul(10).clamp(
                    Duration::from_secs(1),
                    Duration::from_secs(100 * 365 * 86400),
                ))
                .build(),
            allowed: ArcSwap::from_pointee(Vec::new()),
            ipv6_prefix: AtomicU32::new(crate::xdp::settings::DEFAULT_IPV6_SOURCE_PREFIX.into()),
            escalate,
            feed,
        }
    }

    /// What events from other nodes must leave alone (every configuration load says it
    /// again: `Config::fleet_guard`).
    pub fn guard_from_fleet(&self, guarded: crate::fleet::threats::Guarded) {
        if let Some(f) = self.feed.load().as_ref() {
            f.guard(guarded);
        }
    }

    /// Shares an operator's change with the fleet (when this node shares).
    pub fn share(&self, change: Change, ttl: Option<Duration>) {
        if let Some(f) = self.feed.load().as_ref() {
            f.publish(change, ttl);
        }
    }

    /// Shares this node's escalations with the fleet from now on.
    pub fn share_with(&self, feed: Arc<ThreatFeed>) {
        self.feed.store(Some(feed));
    }

    /// The prefixes that are never refused (`xdp.allow`; a reload swaps them).
    pub fn set_allowed(&self, nets: &[ipnet::IpNet]) {
        self.allowed.store(Arc::new(nets.to_vec()));
    }

    /// How many leading bits of an IPv6 address name its source (`xdp.ipv6_source_prefix`;
    /// a reload may change it).
    pub fn set_ipv6_source_prefix(&self, bits: u8) {
        self.ipv6_prefix.store(bits.into(), Ordering::Relaxed);
    }

    /// The key a client's score is kept under: an IPv4 address itself, an IPv6 address
    /// its source prefix, so rotating addresses inside it (a host usually has a /64)
    /// neither sheds a score nor starts a fresh one. The kernel and the userspace
    /// enforcement key budgets and scores the same way, and an escalation of this key
    /// writes the prefix (`SourcePolicy::set_score`). Per-client rate limits count the
    /// same key.
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        crate::xdp::addr::source_net(ip, self.ipv6_prefix.load(Ordering::Relaxed)).addr()
    }

    /// New weights and thresholds (a reload); the scores stay.
    pub fn update(&self, settings: &ThreatSettings, drop_threshold: u32) {
        self.config
            .store(Arc::new((settings.clone(), drop_threshold)));
    }

    fn config(&self) -> arc_swap::Guard<Arc<(ThreatSettings, u32)>> {
        self.config.load()
    }

    fn decayed(&self, s: &Score, now: Instant) -> f64 {
        let half = self.config().0.half_life.as_secs_f64();
        if half <= 0.0 {
            return s.value;
        }
        let dt = now.saturating_duration_since(s.at).as_secs_f64();
        s.value * 0.5f64.powf(dt / half)
    }

    /// The client's score now.
    pub fn score(&self, ip: IpAddr) -> f64 {
        self.scores.get(&self.key(ip)).map_or(0.0, |s| {
            self.decayed(&crate::sync::lock(&s), Instant::now())
        })
    }

    pub fn standing(&self, ip: IpAddr) -> Standing {
        let c = self.config();
        let (settings, drop_threshold) = (&c.0, c.1);
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let plain = crate::xdp::addr::canonical(ip);
        if !settings.enabled || self.allowed.load().iter().any(|n| n.contains(&plain)) {
            return Standing::Clear;
        }
        let s = self.score(ip);
        if drop_threshold != 0 && s >= f64::from(drop_threshold) {
            Standing::Drop
        } else if settings.challenge_threshold > 0.0 && s >= settings.challenge_threshold {
            Standing::Challenge
        } else {
            Standing::Clear
        }
    }

    /// Records `signal` against `source`; returns the client's new score. Whether it
    /// counts, and whether it may reach the kernel, is decided here and only here
    /// (`Source::counts`, `Source::escalatable`).
    pub fn signal(&self, source: Source, signal: Signal) -> f64 {
        let c = self.config();
        let (settings, drop_threshold) = (&c.0, c.1);
        if !settings.enabled || !source.counts() {
            return 0.0;
        }
        let (ip, escalatable) = (self.key(source.client), source.escalatable());
        let weight = settings.weights.of(signal);
        if weight <= 0.0 {
            return self.score(ip);
        }
        let now = Instant::now();
        let entry = self.scores.get_with(ip, || {
            Arc::new(Mutex::new(Score {
                value: 0.0,
                at: now,
                escalated_until: None,
            }))
        });
        let mut s = crate::sync::lock(&entry);
        let before = self.decayed(&s, now);
        s.value = before + weight;
        if source.induced && drop_threshold != 0 {
            // Up to just under the drop threshold, and never lower than it already was.
            s.value = s.value.min((f64::from(drop_threshold) - 1.0).max(before));
        }
        s.at = now;
        let value = s.value;
        let crossed = drop_threshold != 0 && value >= f64::from(drop_threshold);
        let fresh = s.escalated_until.is_none_or(|u| now >= u);
        if crossed && fresh && escalatable {
            let ttl = settings.block_ttl;
            s.escalated_until = Some(crate::duration::instant_after(now, ttl));
            drop(s);
            if let Some(tx) = &self.escalate {
                let kernel_score = (value as u32).max(drop_threshold);
                if tx.try_send((ip, kernel_score, ttl)).is_err() {
                    warn!(%ip, "escalation queue full; this source is enforced in userspace only");
                }
            }
            warn!(%ip, score = value, ?signal, ?ttl, "threat score crossed the drop threshold: source escalated to XDP");
        }
        value
    }

    /// Forgets a source's score (an operator cleared it).
    pub fn clear(&self, ip: IpAddr) {
        self.scores.invalidate(&self.key(ip));
    }

    /// Whether the (canonical) path is a probe: equal to a blocked path, or under one
    /// that ends in `/`. Without case: a deny list errs toward matching, and origins on
    /// case-folding file systems serve `/.ENV` as `/.env`.
    pub fn is_blocked_path(&self, path: &str) -> bool {
        self.config().0.blocked_paths.iter().any(|p| {
            path.eq_ignore_ascii_case(p)
                || (p.ends_with('/')
                    && path
                        .get(..p.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(p)))
        })
    }
}

/// Map writes are syscalls under a lock: one task does them, off the request path.
/// Each escalation written here is then shared with the fleet (when it is on).
fn spawn_writer(
    policy: SharedPolicy,
    feed: Arc<arc_swap::ArcSwapOption<ThreatFeed>>,
) -> mpsc::Sender<Escalation> {
    let (tx, mut rx) = mpsc::channel::<Escalation>(4096);
    tokio::spawn(async move {
        while let Some((ip, score, ttl)) = rx.recv().await {
            let p = policy.clone();
            let written = tokio::task::spawn_blocking(move || {
                p.lock()
                    .expect("policy lock")
                    .set_score(ip, score, Some(ttl))
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    if let Some(f) = feed.load().as_ref() {
                        f.publish(Change::Score { ip, score }, Some(ttl));
                    }
                }
                Ok(Err(e)) => {
                    error!(%ip, error = %format!("{e:#}"), "writing the threat score failed")
                }
                Err(e) => error!(%ip, error = %e, "threat writer task failed"),
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(ip: IpAddr) -> Source {
        Source::peer(ip, &[])
    }

    #[test]
    fn one_gate_decides_what_counts_and_what_reaches_the_kernel() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let client: IpAddr = "198.51.100.9".parse().unwrap();
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let direct = Source::peer(client, &trusted);
        assert!(direct.counts() && direct.escalatable());
        // A trusted proxy's own connection (a parse error, a client it did not name).
        let own = Source::peer(proxy, &trusted);
        assert!(!own.counts() && !own.escalatable());
        // A client a trusted proxy named: scored, but its packets are the proxy's.
        let behind = Source { client, ..own };
        assert!(behind.counts() && !behind.escalatable());
        // 0-RTT early data: the address is not proven.
        let early = Source {
            validated: false,
            ..direct
        };
        assert!(!early.counts() && !early.escalatable());

        let t = ThreatEngine::new(&ThreatSettings::default(), 100, None);
        for _ in 0..20 {
            t.signal(own, Signal::MalformedRequest);
            t.signal(early, Signal::BlockedPath);
        }
        assert_eq!(t.score(proxy), 0.0);
        assert_eq!(t.score(client), 0.0);
    }

    #[test]
    fn what_another_site_makes_a_browser_request_challenges_at_most() {
        let client: IpAddr = "198.51.100.9".parse().unwrap();
        let induced = Source {
            induced: true,
            ..direct(client)
        };
        assert!(induced.counts() && !induced.escalatable());
        let t = ThreatEngine::new(&ThreatSettings::default(), 100, None);
        // `<img src=/.env>` forty times on a page the user opened.
        for _ in 0..40 {
            t.signal(induced, Signal::BlockedPath);
        }
        // (Decaying with the time the test takes.)
        assert!(
            (98.0..=99.0).contains(&t.score(client)),
            "{}",
            t.score(client)
        );
        assert_eq!(t.standing(client), Standing::Challenge);
        // The client's own probe still counts in full, on top.
        t.signal(direct(client), Signal::BlockedPath);
        assert_eq!(t.standing(client), Standing::Drop);
        // And an induced signal never lowers a score already past the cap.
        t.signal(induced, Signal::BlockedPath);
        assert!(t.score(client) >= 120.0);
    }

    #[test]
    fn ipv6_clients_are_scored_per_prefix() {
        let t = ThreatEngine::new(&ThreatSettings::default(), 100, None);
        // Every failure from a fresh address of one /64: one client all the same.
        for i in 0..12u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 1, 2, i, 0, 0, 1]);
            t.signal(direct(ip), Signal::AuthFailure);
        }
        let same: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(t.standing(same), Standing::Drop);
        assert_eq!(
            t.standing("2001:db8:1:3::1".parse().unwrap()),
            Standing::Clear
        );
        t.clear("2001:db8:1:2::77".parse().unwrap());
        assert_eq!(t.standing(same), Standing::Clear);
        // xdp.ipv6_source_prefix = 128: every address on its own.
        t.set_ipv6_source_prefix(128);
        for i in 0..12u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 1, 2, i, 0, 0, 1]);
            t.signal(direct(ip), Signal::AuthFailure);
        }
        assert_eq!(t.standing(same), Standing::Clear);
    }

    /// The escalation writes the client's prefix, not its address, into the source
    /// policy, so its next packets from any address of the /64 are dropped.
    #[tokio::test]
    async fn escalation_writes_the_ipv6_prefix() {
        let mut xdp = crate::xdp::XdpSettings::default();
        xdp.rate.packets_per_sec = 0;
        let policy: SharedPolicy = Arc::new(Mutex::new(Box::new(
            crate::xdp::UserspacePolicy::new(xdp.kernel_config()),
        )));
        let t = ThreatEngine::new(&ThreatSettings::default(), 100, Some(policy.clone()));
        for i in 0..12u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 1, 2, i, 0, 0, 1]);
            t.signal(direct(ip), Signal::AuthFailure);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let scores = loop {
            let scores = policy.lock().unwrap().list().unwrap().scores;
            if !scores.is_empty() || Instant::now() > deadline {
                break scores;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(scores.len(), 1, "{scores:?}");
        assert_eq!(
            scores[0].0,
            "2001:db8:1:2::/64".parse::<ipnet::IpNet>().unwrap()
        );
        let mut p = policy.lock().unwrap();
        assert_eq!(
            p.check(
                "2001:db8:1:2:abcd::1".parse().unwrap(),
                edge_common::BucketClass::Packets
            ),
            edge_common::Reason::DropThreat
        );
    }

    #[test]
    fn scores_add_up_decay_and_set_the_standing() {
        let mut s = ThreatSettings {
            half_life: Duration::from_secs(3600),
            // Two failures (10 each), less the little they decay in between.
            challenge_threshold: 19.0,
            ..Default::default()
        };
        let t = ThreatEngine::new(&s, 100, None);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(t.standing(ip), Standing::Clear);
        t.signal(direct(ip), Signal::AuthFailure);
        t.signal(direct(ip), Signal::AuthFailure);
        assert_eq!(t.standing(ip), Standing::Challenge);
        for _ in 0..10 {
            t.signal(direct(ip), Signal::AuthFailure);
        }
        assert_eq!(t.standing(ip), Standing::Drop);
        // Another address is untouched.
        assert_eq!(t.standing("192.0.2.8".parse().unwrap()), Standing::Clear);

        // Decay: with a tiny half-life the score is gone almost at once.
        s.half_life = Duration::from_millis(10);
        let t = ThreatEngine::new(&s, 100, None);
        t.signal(direct(ip), Signal::BlockedPath);
        std::thread::sleep(Duration::from_millis(100));
        assert!(t.score(ip) < 1.0, "{}", t.score(ip));
    }

    #[test]
    fn an_unrepresentable_block_ttl_escalates_without_panicking() {
        let s = ThreatSettings {
            block_ttl: Duration::MAX,
            ..Default::default()
        };
        let t = ThreatEngine::new(&s, 5, None);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        // Crosses the drop threshold: the escalation's expiry is now + block_ttl.
        assert!(t.signal(direct(ip), Signal::AuthFailure) >= 5.0);
        assert_eq!(t.standing(ip), Standing::Drop);
        // The score lock was not poisoned on the way.
        assert!(t.signal(direct(ip), Signal::AuthFailure) >= 15.0);
    }

    #[test]
    fn a_poisoned_score_lock_is_still_read() {
        let t = ThreatEngine::new(&ThreatSettings::default(), 5, None);
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        t.signal(direct(ip), Signal::AuthFailure);
        let entry = t.scores.get(&ip).unwrap();
        let _ = std::thread::spawn(move || {
            let _held = entry.lock().unwrap();
            panic!("a panic while holding the score lock");
        })
        .join();
        assert_eq!(t.standing(ip), Standing::Drop);
        assert!(t.signal(direct(ip), Signal::AuthFailure) >= 5.0);
    }
}
