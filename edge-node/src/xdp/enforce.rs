//! One interface to the source policy, whoever enforces it: the kernel (XDP attached,
//! tables in pinned maps) or userspace (XDP unavailable: the same tables in memory and
//! the same decisions, applied per connection or request by the proxy).

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::Result;
use edge_common::{
    BucketClass, BucketParams, Reason, SourceRule, XdpConfig, flags, gcra_admit, is_live,
    later_expiry, rule_flags, threat_drops,
};
use ipnet::IpNet;

use super::{
    addr::{canonical, expiry, net_holds, source_net},
    maps::{Listing, PinnedMaps},
};
use crate::clock::now_ns;

/// Operations on the allow/block/threat tables and the verdict for a source.
pub trait SourcePolicy: Send {
    fn block(&mut self, net: IpNet, ttl: Option<Duration>) -> Result<()>;
    fn unblock(&mut self, net: IpNet) -> Result<bool>;
    fn allow(&mut self, net: IpNet) -> Result<()>;
    fn unallow(&mut self, net: IpNet) -> Result<bool>;
    /// Sets the threat score of the source `ip` belongs to: the address, or for IPv6 its
    /// `ipv6_source_prefix` (0 clears it, and any score of the host itself).
    fn set_score(&mut self, ip: IpAddr, score: u32, ttl: Option<Duration>) -> Result<()>;
    fn list(&self) -> Result<Listing>;
    fn set_config(&mut self, config: &XdpConfig) -> Result<()>;
    /// True when packets are judged in the kernel, so userspace need not call `check`.
    fn in_kernel(&self) -> bool;
    /// The verdict for a new connection or request from `ip`. With the kernel enforcing,
    /// this is always `Pass`: anything it would drop never reached userspace.
    fn check(&mut self, ip: IpAddr, class: BucketClass) -> Reason;
    /// Drops blocks and scores whose TTL has passed; returns how many.
    fn purge_expired(&mut self) -> Result<usize>;
    /// Allow / block entries owned by the configuration file (set with the `*_configured`
    /// calls), as found in the tables, so a start can drop what the file no longer lists.
    fn configured(&self) -> Result<(Vec<IpNet>, Vec<IpNet>)>;
    fn allow_configured(&mut self, net: IpNet) -> Result<()> {
        self.allow(net)
    }
    fn block_configured(&mut self, net: IpNet) -> Result<()> {
        self.block(net, None)
    }
    /// The XDP program's per-reason counters, when it is loaded.
    fn counters(&self) -> Option<super::maps::Counters> {
        None
    }
}

/// The lookup side of the tables, wherever they live.
pub trait PolicyTables {
    fn config(&self) -> XdpConfig;
    /// The effective rule for `ip`, as the kernel's longest-prefix lookup sees it.
    fn rule(&self, ip: IpAddr) -> Option<SourceRule>;
}

/// Token buckets kept in userspace, laid out as the kernel keeps its own in
/// `EDGE_BUCKETS`: a fixed array of slots, each source hashed to two of them. Memory is
/// bounded and every charge costs two probes, however many sources an attacker cycles
/// through; when both slots are busy with others, the source shares the first one's
/// budget (stricter, never looser), as in the kernel.
pub struct Buckets {
    /// Per slot: the source key's halves, and a TAT per bucket class.
    slots: Vec<([u64; 2], [u64; 3])>,
    seed: u64,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            // Zeroed memory: pages are only touched as sources arrive.
            slots: vec![([0; 2], [0; 3]); edge_common::BUCKET_SLOTS as usize],
            seed: fastrand::u64(..) | 1,
        }
    }
}

impl Buckets {
    fn admit(&mut self, ip: IpAddr, class: BucketClass, p: &BucketParams, now: u64) -> bool {
        if p.interval_ns == 0 {
            return true;
        }
        let key = edge_common::addr_halves(&super::addr::addr16(ip));
        let slot = self.slot(key, now);
        let tat = &mut self.slots[slot].1[class as usize];
        match gcra_admit(*tat, now, p) {
            Some(next) => {
                *tat = next;
                true
            }
            None => false,
        }
    }

    /// The slot of `key`: the candidate it owns, else an idle one it takes over (all its
    /// buckets refilled), else the first candidate, shared with its busy owner.
    fn slot(&mut self, key: (u64, u64), now: u64) -> usize {
        let hash = edge_common::source_hash_halves(key.0, key.1, self.seed);
        let (a, b) = edge_common::bucket_slots_of(hash);
        let (a, b) = (a as usize, b as usize);
        let key = [key.0, key.1];
        for i in [a, b] {
            if self.slots[i].0 == key {
                return i;
            }
        }
        for i in [a, b] {
            if self.slots[i].1.iter().all(|&t| t <= now) {
                self.slots[i] = (key, [0; 3]);
                return i;
            }
        }
        a
    }
}

/// The verdict for a source at `now_ns` (monotonic ns), in the kernel program's order:
/// allow → block → threat → class budget → packet budget → pass.
pub fn decide(
    tables: &impl PolicyTables,
    buckets: &mut Buckets,
    ip: IpAddr,
    class: BucketClass,
    now_ns: u64,
) -> Reason {
    let ip = canonical(ip);
    let cfg = tables.config();
    if let Some(rule) = tables.rule(ip) {
        if cfg.flags & flags::ALLOW != 0 && rule.flags & rule_flags::ALLOWED != 0 {
            return Reason::PassAllowed;
        }
        if cfg.flags & flags::BLOCK != 0
            && rule.flags & rule_flags::BLOCKED != 0
            && is_live(rule.block_expires_at_ns, now_ns)
        {
            return Reason::DropBlocked;
        }
        if cfg.flags & flags::THREAT != 0 && threat_drops(&rule, cfg.drop_threshold, now_ns) {
            return Reason::DropThreat;
        }
    }
    if cfg.flags & flags::RATE_LIMIT != 0 {
        // One budget per source, as in the kernel: an IPv6 address by its prefix.
        let ip = source_net(ip, cfg.ipv6_source_prefix).addr();
        let class_budget = match class {
            BucketClass::TcpSyn => Some((cfg.tcp_syn, Reason::DropSynRate)),
            BucketClass::Quic => Some((cfg.quic, Reason::DropQuicRate)),
            BucketClass::Packets => None,
        };
        if let Some((params, reason)) = class_budget
            && !buckets.admit(ip, class, &params, now_ns)
        {
            return reason;
        }
        if !buckets.admit(ip, BucketClass::Packets, &cfg.packets, now_ns) {
            return Reason::DropRate;
        }
    }
    Reason::Pass
}

/// The policy tables in memory, for hosts where the program cannot even be loaded.
#[derive(Default)]
pub struct MemoryTables {
    config: XdpConfig,
    allow: Vec<IpNet>,
    block: Vec<(IpNet, u64)>,
    /// Score and its expiry per source (host, or IPv6 source prefix).
    threat: HashMap<IpNet, (u32, u64)>,
}

impl PolicyTables for MemoryTables {
    fn config(&self) -> XdpConfig {
        self.config
    }
    /// The same effective rule the kernel's trie would hold: allowed if any allow prefix
    /// covers the address, blocked until the latest expiry of the covering blocks.
    fn rule(&self, ip: IpAddr) -> Option<SourceRule> {
        let mut rule = SourceRule::default();
        if self.allow.iter().any(|n| net_holds(*n, ip)) {
            rule.flags |= rule_flags::ALLOWED;
        }
        for (_, expires) in self.block.iter().filter(|(n, _)| net_holds(*n, ip)) {
            rule.block_expires_at_ns = if rule.flags & rule_flags::BLOCKED != 0 {
                later_expiry(rule.block_expires_at_ns, *expires)
            } else {
                *expires
            };
            rule.flags |= rule_flags::BLOCKED;
        }
        // The longest scored entry, as in the trie: the host's own, else its source's.
        let scored = [128, self.config.ipv6_source_prefix]
            .into_iter()
            .find_map(|p| self.threat.get(&source_net(ip, p)));
        if let Some((score, expires)) = scored {
            rule.score = *score;
            rule.score_expires_at_ns = *expires;
        }
        Some(rule)
    }
}

/// Userspace enforcement over in-memory tables.
#[derive(Default)]
pub struct UserspacePolicy {
    tables: MemoryTables,
    buckets: Buckets,
}

impl UserspacePolicy {
    pub fn new(config: XdpConfig) -> Self {
        let mut p = Self::default();
        p.tables.config = config;
        p
    }

    pub fn check_at(&mut self, ip: IpAddr, class: BucketClass, now_ns: u64) -> Reason {
        decide(&self.tables, &mut self.buckets, ip, class, now_ns)
    }
}

impl SourcePolicy for UserspacePolicy {
    fn block(&mut self, net: IpNet, ttl: Option<Duration>) -> Result<()> {
        let net = net.trunc();
        self.tables.block.retain(|(n, _)| *n != net);
        self.tables.block.push((net, expiry(ttl)));
        Ok(())
    }
    fn unblock(&mut self, net: IpNet) -> Result<bool> {
        let net = net.trunc();
        let before = self.tables.block.len();
        self.tables.block.retain(|(n, _)| *n != net);
        Ok(before != self.tables.block.len())
    }
    fn allow(&mut self, net: IpNet) -> Result<()> {
        let net = net.trunc();
        if !self.tables.allow.contains(&net) {
            self.tables.allow.push(net);
        }
        Ok(())
    }
    fn unallow(&mut self, net: IpNet) -> Result<bool> {
        let net = net.trunc();
        let before = self.tables.allow.len();
        self.tables.allow.retain(|n| *n != net);
        Ok(before != self.tables.allow.len())
    }
    fn set_score(&mut self, ip: IpAddr, score: u32, ttl: Option<Duration>) -> Result<()> {
        let net = source_net(ip, self.tables.config.ipv6_source_prefix);
        if score == 0 {
            self.tables.threat.remove(&net);
            self.tables.threat.remove(&source_net(ip, 128));
        } else {
            self.tables.threat.insert(net, (score, expiry(ttl)));
        }
        Ok(())
    }
    fn list(&self) -> Result<Listing> {
        let t = &self.tables;
        let mut l = Listing {
            allow: t.allow.clone(),
            block: t.block.clone(),
            scores: t
                .threat
                .iter()
                .map(|(ip, (score, expires))| (*ip, *score, *expires))
                .collect(),
        };
        l.allow.sort();
        l.block.sort();
        l.scores.sort();
        Ok(l)
    }
    fn set_config(&mut self, config: &XdpConfig) -> Result<()> {
        self.tables.config = *config;
        Ok(())
    }
    fn in_kernel(&self) -> bool {
        false
    }
    fn check(&mut self, ip: IpAddr, class: BucketClass) -> Reason {
        self.check_at(ip, class, now_ns())
    }
    fn configured(&self) -> Result<(Vec<IpNet>, Vec<IpNet>)> {
        // Memory starts empty on every run: nothing from an earlier file can linger.
        Ok((Vec::new(), Vec::new()))
    }
    fn purge_expired(&mut self) -> Result<usize> {
        let now = now_ns();
        let t = &mut self.tables;
        let before = t.block.len() + t.threat.len();
        t.block.retain(|(_, e)| is_live(*e, now));
        t.threat.retain(|_, (_, e)| is_live(*e, now));
        Ok(before - t.block.len() - t.threat.len())
    }
}

/// Tables in the pinned maps. `attached` says whether the program runs on the
/// interfaces; when it does not (no interface attached), userspace applies the same
/// tables itself.
pub struct KernelPolicy {
    pub maps: PinnedMaps,
    pub attached: bool,
    buckets: Buckets,
}

impl KernelPolicy {
    pub fn new(maps: PinnedMaps, attached: bool) -> Self {
        Self {
            maps,
            attached,
            buckets: Buckets::default(),
        }
    }
}

impl SourcePolicy for KernelPolicy {
    fn block(&mut self, net: IpNet, ttl: Option<Duration>) -> Result<()> {
        self.maps.block(net, ttl)
    }
    fn unblock(&mut self, net: IpNet) -> Result<bool> {
        self.maps.unblock(net)
    }
    fn allow(&mut self, net: IpNet) -> Result<()> {
        self.maps.allow(net)
    }
    fn unallow(&mut self, net: IpNet) -> Result<bool> {
        self.maps.unallow(net)
    }
    fn set_score(&mut self, ip: IpAddr, score: u32, ttl: Option<Duration>) -> Result<()> {
        self.maps.set_score(ip, score, ttl)
    }
    fn list(&self) -> Result<Listing> {
        self.maps.list()
    }
    fn set_config(&mut self, config: &XdpConfig) -> Result<()> {
        self.maps.set_config(config)
    }
    fn in_kernel(&self) -> bool {
        self.attached
    }
    fn check(&mut self, ip: IpAddr, class: BucketClass) -> Reason {
        if self.attached {
            return Reason::Pass;
        }
        decide(&self.maps, &mut self.buckets, ip, class, now_ns())
    }
    fn purge_expired(&mut self) -> Result<usize> {
        self.maps.purge_expired()
    }
    fn configured(&self) -> Result<(Vec<IpNet>, Vec<IpNet>)> {
        self.maps.configured()
    }
    fn allow_configured(&mut self, net: IpNet) -> Result<()> {
        self.maps.allow_configured(net)
    }
    fn block_configured(&mut self, net: IpNet) -> Result<()> {
        self.maps.block_configured(net)
    }
    fn counters(&self) -> Option<super::maps::Counters> {
        self.maps.counters().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::XdpSettings;

    fn policy() -> UserspacePolicy {
        let mut s = XdpSettings::default();
        s.rate.packets_per_sec = 10;
        s.rate.packets_burst = 3;
        s.rate.syn_per_sec = 1;
        s.rate.syn_burst = 1;
        UserspacePolicy::new(s.kernel_config())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn order_is_allow_block_threat_rate() {
        let mut p = policy();
        let now = now_ns();
        p.block("10.0.0.0/8".parse().unwrap(), None).unwrap();
        p.allow("10.1.0.0/16".parse().unwrap()).unwrap();
        p.set_score(ip("192.0.2.1"), 100, None).unwrap();
        p.set_score(ip("192.0.2.2"), 99, None).unwrap();
        assert_eq!(
            p.check_at(ip("10.1.2.3"), BucketClass::Packets, now),
            Reason::PassAllowed
        );
        assert_eq!(
            p.check_at(ip("10.2.2.3"), BucketClass::Packets, now),
            Reason::DropBlocked
        );
        assert_eq!(
            p.check_at(ip("::ffff:10.2.2.3"), BucketClass::Packets, now),
            Reason::DropBlocked
        );
        assert_eq!(
            p.check_at(ip("192.0.2.1"), BucketClass::Packets, now),
            Reason::DropThreat
        );
        assert_eq!(
            p.check_at(ip("192.0.2.2"), BucketClass::Packets, now),
            Reason::Pass
        );
    }

    #[test]
    fn expiries_restore_traffic() {
        let mut p = policy();
        p.block(
            "2001:db8::/32".parse().unwrap(),
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        p.set_score(ip("198.51.100.1"), 500, Some(Duration::from_secs(5)))
            .unwrap();
        let now = now_ns();
        let later = now + 6_000_000_000;
        assert_eq!(
            p.check_at(ip("2001:db8::1"), BucketClass::Packets, now),
            Reason::DropBlocked
        );
        assert_eq!(
            p.check_at(ip("2001:db8::1"), BucketClass::Packets, later),
            Reason::Pass
        );
        assert_eq!(
            p.check_at(ip("198.51.100.1"), BucketClass::Packets, now),
            Reason::DropThreat
        );
        assert_eq!(
            p.check_at(ip("198.51.100.1"), BucketClass::Packets, later),
            Reason::Pass
        );
    }

    #[test]
    fn sources_past_any_table_size_never_open_the_budgets() {
        let mut p = policy();
        let now = now_ns();
        // More sources than the old 100 000-entry table held, each taking its one SYN:
        // every bucket stays live for a second.
        for n in 0..120_000u32 {
            let src = IpAddr::from((0x0a00_0000 | n).to_be_bytes());
            p.check_at(src, BucketClass::TcpSyn, now);
        }
        // Then one more source tries ten: its budget holds (or, where both its slots
        // are another's, the other's spent budget does), never a free pass.
        let passed = (0..10)
            .filter(|_| p.check_at(ip("198.51.100.77"), BucketClass::TcpSyn, now) == Reason::Pass)
            .count();
        assert!(passed <= 1, "{passed} of 10 SYNs passed");
    }

    #[test]
    fn ipv6_sources_are_charged_and_scored_per_prefix() {
        let mut p = policy();
        let now = now_ns();
        // One SYN for the whole /64, however many addresses it rotates through.
        assert_eq!(
            p.check_at(ip("2001:db8:1:2::1"), BucketClass::TcpSyn, now),
            Reason::Pass
        );
        assert_eq!(
            p.check_at(ip("2001:db8:1:2:ffff::2"), BucketClass::TcpSyn, now),
            Reason::DropSynRate
        );
        assert_eq!(
            p.check_at(ip("2001:db8:1:3::1"), BucketClass::TcpSyn, now),
            Reason::Pass
        );
        // A score is the /64's: listed as such, dropping its other addresses.
        p.set_score(ip("2001:db8:1:4::1"), 100, None).unwrap();
        assert_eq!(
            p.list().unwrap().scores,
            [("2001:db8:1:4::/64".parse().unwrap(), 100, 0)]
        );
        assert_eq!(
            p.check_at(ip("2001:db8:1:4::99"), BucketClass::Packets, now),
            Reason::DropThreat
        );
        assert_eq!(
            p.check_at(ip("2001:db8:1:5::1"), BucketClass::Packets, now),
            Reason::Pass
        );
        p.set_score(ip("2001:db8:1:4::7"), 0, None).unwrap();
        assert_eq!(
            p.check_at(ip("2001:db8:1:4::99"), BucketClass::Packets, now),
            Reason::Pass
        );
    }

    #[test]
    fn budgets_are_per_source_and_class() {
        let mut p = policy();
        let now = now_ns();
        let a = ip("203.0.113.1");
        let verdicts: Vec<_> = (0..5)
            .map(|_| p.check_at(a, BucketClass::Packets, now))
            .collect();
        assert_eq!(
            verdicts,
            [
                Reason::Pass,
                Reason::Pass,
                Reason::Pass,
                Reason::DropRate,
                Reason::DropRate
            ]
        );
        // Another source has its own budget; SYNs have their own, smaller one.
        let b = ip("203.0.113.2");
        assert_eq!(p.check_at(b, BucketClass::TcpSyn, now), Reason::Pass);
        assert_eq!(p.check_at(b, BucketClass::TcpSyn, now), Reason::DropSynRate);
        // 100 ms later one more packet fits.
        assert_eq!(
            p.check_at(a, BucketClass::Packets, now + 100_000_000),
            Reason::Pass
        );
    }
}
