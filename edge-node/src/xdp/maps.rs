//! Typed access to the program's pinned maps: what the daemon writes and what the
//! operator CLI reads and edits while a node runs.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use edge_common::{
    Addr16, AttachRecord, BucketSlot, Counter, REASON_COUNT, Reason, SourceRule, XdpConfig,
    is_live, map_names, rule_flags,
};
use ipnet::IpNet;

use super::addr::{addr16, expiry, net_from_prefix16, prefix_matches, prefix16, source_net};
use crate::clock::now_ns;

/// Everything the policy tables hold, for `xdp list` and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub allow: Vec<IpNet>,
    /// Blocked prefixes and their monotonic expiry (0 = never).
    pub block: Vec<(IpNet, u64)>,
    /// Scored sources: host or IPv6 source prefix, score, monotonic expiry (0 = never).
    pub scores: Vec<(IpNet, u32, u64)>,
}

/// Per-reason counters summed over all CPUs, indexed by `Reason as usize`.
pub type Counters = [Counter; REASON_COUNT as usize];

pub struct PinnedMaps {
    dir: PathBuf,
    sources: LpmTrie<MapData, Addr16, SourceRule>,
    buckets: Array<MapData, BucketSlot>,
    config: Array<MapData, XdpConfig>,
    stats: PerCpuArray<MapData, Counter>,
    attach: Array<MapData, AttachRecord>,
    generation: Array<MapData, u64>,
}

fn open<T>(dir: &Path, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open pinned map {} (is edge-node running with XDP, and are you root?)",
            path.display()
        )
    })?;
    let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
    T::try_from(map).with_context(|| format!("map {} has an unexpected type", path.display()))
}

type TrieKey = Key<Addr16>;

/// A handle of its own on the pinned per-CPU counters: `/metrics` reads them without
/// the policy's lock, which the accept path and escalations take.
pub struct StatsReader {
    stats: PerCpuArray<MapData, Counter>,
}

impl StatsReader {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            stats: open(dir, map_names::STATS)?,
        })
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        sum_counters(&self.stats)
    }
}

fn sum_counters(stats: &PerCpuArray<MapData, Counter>) -> Result<Counters> {
    let mut out = [Counter::default(); REASON_COUNT as usize];
    for reason in Reason::ALL {
        let per_cpu = stats.get(&(reason as u32), 0)?;
        for c in per_cpu.iter() {
            out[reason as usize].packets += c.packets;
            out[reason as usize].bytes += c.bytes;
        }
    }
    Ok(out)
}

impl PinnedMaps {
    /// Opens the maps pinned in `dir` (`<pin_root>/v<ABI>`).
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            sources: open(dir, map_names::SOURCES)?,
            buckets: open(dir, map_names::BUCKETS)?,
            config: open(dir, map_names::CONFIG)?,
            stats: open(dir, map_names::STATS)?,
            attach: open(dir, map_names::ATTACH)?,
            generation: open(dir, map_names::GENERATION)?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> Result<XdpConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    pub fn set_config(&mut self, config: &XdpConfig) -> Result<()> {
        self.config.set(0, config, 0)?;
        self.bump_generation()
    }

    /// Tells the kernel that rules or config changed: every CPU's cached verdicts become
    /// stale. Written after the change itself, so a verdict cached under the new
    /// generation saw the change. A fresh value (not +1) stays distinct even when two
    /// writers (daemon and CLI) race.
    fn bump_generation(&mut self) -> Result<()> {
        let previous = self.generation.get(&0, 0)?;
        let next = now_ns().max(previous + 1);
        self.generation.set(0, next, 0)?;
        Ok(())
    }

    /// The entry stored exactly at `key`, if any. A lookup returns the longest match at
    /// most as long as the key; the stored prefix length tells whether that is this entry.
    fn exact(&self, key: &TrieKey) -> Result<Option<SourceRule>> {
        match self.sources.get(key, 0) {
            Ok(r) if r.prefix_len == key.prefix_len() => Ok(Some(r)),
            Ok(_) | Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The longest entry strictly covering `key`.
    fn parent(&self, key: &TrieKey) -> Option<SourceRule> {
        if key.prefix_len() == 0 {
            return None;
        }
        self.sources
            .get(&Key::new(key.prefix_len() - 1, key.data()), 0)
            .ok()
    }

    /// Changes the entry at `net` with `edit`, then brings the effective fields of it and
    /// of every entry inside it up to date. Writers (daemon, CLI) serialise on a lock of
    /// the pin directory, so one's inheritance never overwrites the other's.
    fn update(&mut self, net: IpNet, edit: impl FnOnce(&mut SourceRule)) -> Result<bool> {
        let _lock = self.lock()?;
        let result = self.update_locked(net, edit);
        // Whatever got written (even on a later error) must invalidate cached verdicts.
        self.bump_generation()?;
        result
    }

    fn update_locked(&mut self, net: IpNet, edit: impl FnOnce(&mut SourceRule)) -> Result<bool> {
        let (data, len) = prefix16(net);
        let key = Key::new(len, data);
        let existed = self.exact(&key)?;
        let mut rule = existed.unwrap_or(SourceRule {
            prefix_len: len,
            ..SourceRule::default()
        });
        let before = rule;
        edit(&mut rule);
        if rule.is_empty() {
            if existed.is_some() {
                self.sources.remove(&key)?;
            }
        } else {
            let rule = rule.inherit(self.parent(&key).as_ref());
            self.sources
                .insert(&key, rule, 0)
                .with_context(|| format!("writing the rule for {net}"))?;
        }
        // Entries inside `net` (in the 16-byte space the trie uses) inherit from it:
        // refresh them, outermost first.
        if len < 128 {
            let mut inner: Vec<TrieKey> = self
                .sources
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.prefix_len() > len && prefix_matches(&k.data(), &data, len))
                .collect();
            inner.sort_by_key(|k| k.prefix_len());
            for k in inner {
                let own = self.sources.get(&k, 0)?;
                let fresh = own.inherit(self.parent(&k).as_ref());
                if fresh != own {
                    self.sources.insert(&k, fresh, 0)?;
                }
            }
        }
        Ok(before != rule)
    }

    /// An exclusive lock on the pin directory, held while a rule and its inheritors are
    /// rewritten (flock works on directories, also on bpffs).
    fn lock(&self) -> Result<std::fs::File> {
        let dir = std::fs::File::open(&self.dir)
            .with_context(|| format!("opening {}", self.dir.display()))?;
        // SAFETY: valid fd; the lock is released when the File is dropped.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&dir), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", self.dir.display()));
        }
        Ok(dir)
    }

    pub fn block(&mut self, net: IpNet, ttl: Option<Duration>) -> Result<()> {
        self.block_as(net, ttl, 0)
    }

    /// A block that the configuration file owns.
    pub fn block_configured(&mut self, net: IpNet) -> Result<()> {
        self.block_as(net, None, rule_flags::CONFIG_BLOCK)
    }

    fn block_as(&mut self, net: IpNet, ttl: Option<Duration>, origin: u32) -> Result<()> {
        let expires = expiry(ttl);
        self.update(net, |r| {
            r.flags = (r.flags & !rule_flags::CONFIG_BLOCK) | rule_flags::OWN_BLOCK | origin;
            r.own_block_expires_at_ns = expires;
        })?;
        Ok(())
    }

    /// Removes a block; `false` if it was not there.
    pub fn unblock(&mut self, net: IpNet) -> Result<bool> {
        let mut had = false;
        self.update(net, |r| {
            had = r.flags & rule_flags::OWN_BLOCK != 0;
            r.flags &= !(rule_flags::OWN_BLOCK | rule_flags::CONFIG_BLOCK);
            r.own_block_expires_at_ns = 0;
        })?;
        Ok(had)
    }

    pub fn allow(&mut self, net: IpNet) -> Result<()> {
        self.update(net, |r| r.flags |= rule_flags::OWN_ALLOW)?;
        Ok(())
    }

    /// An allow prefix that the configuration file owns.
    pub fn allow_configured(&mut self, net: IpNet) -> Result<()> {
        self.update(net, |r| {
            r.flags |= rule_flags::OWN_ALLOW | rule_flags::CONFIG_ALLOW
        })?;
        Ok(())
    }

    pub fn unallow(&mut self, net: IpNet) -> Result<bool> {
        let mut had = false;
        self.update(net, |r| {
            had = r.flags & rule_flags::OWN_ALLOW != 0;
            r.flags &= !(rule_flags::OWN_ALLOW | rule_flags::CONFIG_ALLOW);
        })?;
        Ok(had)
    }

    /// The allow and block prefixes a configuration file put here (possibly by an earlier
    /// run of the node).
    pub fn configured(&self) -> Result<(Vec<IpNet>, Vec<IpNet>)> {
        let (mut allow, mut block) = (Vec::new(), Vec::new());
        for item in self.sources.iter() {
            let (key, rule) = item?;
            let net = net_from_prefix16(key.data(), key.prefix_len());
            if rule.flags & rule_flags::CONFIG_ALLOW != 0 {
                allow.push(net);
            }
            if rule.flags & rule_flags::CONFIG_BLOCK != 0 {
                block.push(net);
            }
        }
        Ok((allow, block))
    }

    /// Sets the threat score of the source `ip` belongs to (an IPv6 address: its
    /// `ipv6_source_prefix` in the config map, so rotating through it changes nothing);
    /// 0 removes it, and any score of the host itself.
    pub fn set_score(&mut self, ip: IpAddr, score: u32, ttl: Option<Duration>) -> Result<()> {
        let expires = expiry(ttl);
        let net = source_net(ip, self.config()?.ipv6_source_prefix);
        let host = source_net(ip, 128);
        let set = |r: &mut SourceRule| {
            r.score = score;
            r.score_expires_at_ns = if score == 0 { 0 } else { expires };
        };
        self.update(net, set)?;
        if score == 0 && host != net {
            self.update(host, set)?;
        }
        Ok(())
    }

    /// The rule that applies to `ip` (the longest match), as the kernel sees it.
    pub fn rule(&self, ip: IpAddr) -> Option<SourceRule> {
        self.sources.get(&Key::new(128, addr16(ip)), 0).ok()
    }

    pub fn score(&self, ip: IpAddr) -> Result<Option<u32>> {
        let key = Key::new(128, addr16(ip));
        Ok(self.exact(&key)?.map(|r| r.score).filter(|s| *s != 0))
    }

    pub fn list(&self) -> Result<Listing> {
        let mut listing = Listing::default();
        for item in self.sources.iter() {
            let (key, rule) = item?;
            let net = net_from_prefix16(key.data(), key.prefix_len());
            if rule.flags & rule_flags::OWN_ALLOW != 0 {
                listing.allow.push(net);
            }
            if rule.flags & rule_flags::OWN_BLOCK != 0 {
                listing.block.push((net, rule.own_block_expires_at_ns));
            }
            if rule.score != 0 {
                listing
                    .scores
                    .push((net, rule.score, rule.score_expires_at_ns));
            }
        }
        listing.allow.sort();
        listing.block.sort();
        listing.scores.sort();
        Ok(listing)
    }

    /// Removes blocks and scores whose TTL has passed (they already no longer apply; this
    /// keeps the trie and `xdp list` to what is in force). One locked pass: own fields are
    /// edited first, then every entry's effective fields are recomputed once.
    pub fn purge_expired(&mut self) -> Result<usize> {
        let now = now_ns();
        let _lock = self.lock()?;
        let mut purged = 0;
        let mut keys: Vec<TrieKey> = self.sources.keys().filter_map(Result::ok).collect();
        for key in &keys {
            let mut rule = self.sources.get(key, 0)?;
            let mut changed = false;
            if rule.flags & rule_flags::OWN_BLOCK != 0
                && !is_live(rule.own_block_expires_at_ns, now)
            {
                rule.flags &= !(rule_flags::OWN_BLOCK | rule_flags::CONFIG_BLOCK);
                rule.own_block_expires_at_ns = 0;
                changed = true;
            }
            if rule.score != 0 && !is_live(rule.score_expires_at_ns, now) {
                rule.score = 0;
                rule.score_expires_at_ns = 0;
                changed = true;
            }
            if changed {
                purged += 1;
                if rule.is_empty() {
                    self.sources.remove(key)?;
                } else {
                    self.sources.insert(key, rule, 0)?;
                }
            }
        }
        if purged > 0 {
            keys.retain(|k| {
                self.sources
                    .get(k, 0)
                    .is_ok_and(|r| r.prefix_len == k.prefix_len())
            });
            keys.sort_by_key(|k| k.prefix_len());
            for k in keys {
                let own = self.sources.get(&k, 0)?;
                let fresh = own.inherit(self.parent(&k).as_ref());
                if fresh != own {
                    self.sources.insert(&k, fresh, 0)?;
                }
            }
            self.bump_generation()?;
        }
        Ok(purged)
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        sum_counters(&self.stats)
    }

    /// Token-bucket slots in use (sources seen since the slot was last taken over).
    pub fn bucket_slots_used(&self) -> usize {
        self.buckets
            .iter()
            .filter_map(Result::ok)
            .filter(|s| s.addr != [0; 16])
            .count()
    }

    pub fn attach_records(&self) -> Result<Vec<AttachRecord>> {
        let mut out = Vec::new();
        for i in 0..edge_common::ATTACH_MAX_ENTRIES {
            let rec = self.attach.get(&i, 0)?;
            if rec.ifindex != 0 {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Records (or replaces) the attachment of `rec.ifindex`.
    pub fn record_attach(&mut self, rec: AttachRecord) -> Result<()> {
        let mut free = None;
        for i in 0..edge_common::ATTACH_MAX_ENTRIES {
            let cur = self.attach.get(&i, 0)?;
            if cur.ifindex == rec.ifindex {
                self.attach.set(i, rec, 0)?;
                return Ok(());
            }
            if cur.ifindex == 0 && free.is_none() {
                free = Some(i);
            }
        }
        let slot = free.ok_or_else(|| anyhow!("more than 16 attached interfaces"))?;
        self.attach.set(slot, rec, 0)?;
        Ok(())
    }

    pub fn forget_attach(&mut self, ifindex: u32) -> Result<()> {
        for i in 0..edge_common::ATTACH_MAX_ENTRIES {
            if self.attach.get(&i, 0)?.ifindex == ifindex {
                self.attach.set(i, AttachRecord::default(), 0)?;
            }
        }
        Ok(())
    }
}

impl super::enforce::PolicyTables for PinnedMaps {
    fn config(&self) -> XdpConfig {
        // An unreadable config map enforces nothing, like the kernel's all-zero default.
        PinnedMaps::config(self).unwrap_or_default()
    }
    fn rule(&self, ip: IpAddr) -> Option<SourceRule> {
        PinnedMaps::rule(self, ip)
    }
}
