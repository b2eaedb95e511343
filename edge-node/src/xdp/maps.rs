//! Typed access to the program's pinned maps: what the daemon writes and what the
//! operator CLI reads and edits while a node runs.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use edge_common::{
    Addr16, AllowEntry, AttachRecord, BlockEntry, BucketKey, BucketState, Counter, REASON_COUNT,
    Reason, ThreatEntry, XdpConfig, map_names,
};
use ipnet::IpNet;

use super::addr::{addr16, expiry, from_addr16, net_from_prefix16, prefix16};

/// Everything the policy tables hold, for `xdp list` and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub allow: Vec<IpNet>,
    /// Blocked prefixes and their boot-time expiry (0 = never).
    pub block: Vec<(IpNet, u64)>,
    /// Scored sources: address, score, boot-time expiry (0 = never).
    pub scores: Vec<(IpAddr, u32, u64)>,
}

/// Per-reason counters summed over all CPUs, indexed by `Reason as usize`.
pub type Counters = [Counter; REASON_COUNT as usize];

pub struct PinnedMaps {
    dir: PathBuf,
    allow: LpmTrie<MapData, Addr16, AllowEntry>,
    block: LpmTrie<MapData, Addr16, BlockEntry>,
    threat: HashMap<MapData, Addr16, ThreatEntry>,
    buckets: HashMap<MapData, BucketKey, BucketState>,
    config: Array<MapData, XdpConfig>,
    stats: PerCpuArray<MapData, Counter>,
    attach: Array<MapData, AttachRecord>,
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

impl PinnedMaps {
    /// Opens the maps pinned in `dir` (`<pin_root>/v<ABI>`).
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            allow: open(dir, map_names::ALLOW)?,
            block: open(dir, map_names::BLOCK)?,
            threat: open(dir, map_names::THREAT)?,
            buckets: open(dir, map_names::BUCKETS)?,
            config: open(dir, map_names::CONFIG)?,
            stats: open(dir, map_names::STATS)?,
            attach: open(dir, map_names::ATTACH)?,
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
        Ok(())
    }

    pub fn block(&mut self, net: IpNet, ttl: Option<Duration>) -> Result<()> {
        let (data, len) = prefix16(net);
        let entry = BlockEntry {
            expires_at_ns: expiry(ttl),
        };
        self.block
            .insert(&Key::new(len, data), entry, 0)
            .with_context(|| format!("block {net}"))
    }

    /// Removes a block; `false` if it was not there.
    pub fn unblock(&mut self, net: IpNet) -> Result<bool> {
        let (data, len) = prefix16(net);
        not_found_is_false(self.block.remove(&Key::new(len, data)))
    }

    pub fn allow(&mut self, net: IpNet) -> Result<()> {
        let (data, len) = prefix16(net);
        self.allow
            .insert(&Key::new(len, data), AllowEntry::default(), 0)
            .with_context(|| format!("allow {net}"))
    }

    pub fn unallow(&mut self, net: IpNet) -> Result<bool> {
        let (data, len) = prefix16(net);
        not_found_is_false(self.allow.remove(&Key::new(len, data)))
    }

    /// Sets a source's threat score; 0 removes it.
    pub fn set_score(&mut self, ip: IpAddr, score: u32, ttl: Option<Duration>) -> Result<()> {
        let key = addr16(ip);
        if score == 0 {
            not_found_is_false(self.threat.remove(&key))?;
            return Ok(());
        }
        let entry = ThreatEntry {
            score,
            _pad: 0,
            expires_at_ns: expiry(ttl),
        };
        self.threat
            .insert(key, entry, 0)
            .with_context(|| format!("score {ip}"))
    }

    pub fn score(&self, ip: IpAddr) -> Result<Option<ThreatEntry>> {
        match self.threat.get(&addr16(ip), 0) {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn list(&self) -> Result<Listing> {
        let mut listing = Listing::default();
        for item in self.allow.iter() {
            let (key, _) = item?;
            listing
                .allow
                .push(net_from_prefix16(key.data(), key.prefix_len()));
        }
        for item in self.block.iter() {
            let (key, entry) = item?;
            listing.block.push((
                net_from_prefix16(key.data(), key.prefix_len()),
                entry.expires_at_ns,
            ));
        }
        for item in self.threat.iter() {
            let (addr, entry) = item?;
            listing
                .scores
                .push((from_addr16(addr), entry.score, entry.expires_at_ns));
        }
        listing.allow.sort();
        listing.block.sort();
        listing.scores.sort();
        Ok(listing)
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let mut out = [Counter::default(); REASON_COUNT as usize];
        for reason in Reason::ALL {
            let per_cpu = self.stats.get(&(reason as u32), 0)?;
            for c in per_cpu.iter() {
                out[reason as usize].packets += c.packets;
                out[reason as usize].bytes += c.bytes;
            }
        }
        Ok(out)
    }

    /// Number of live token buckets (sources seen recently).
    pub fn bucket_count(&self) -> usize {
        self.buckets.keys().filter(|k| k.is_ok()).count()
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

fn not_found_is_false(r: Result<(), MapError>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

impl super::enforce::PolicyTables for PinnedMaps {
    fn config(&self) -> XdpConfig {
        // An unreadable config map enforces nothing, like the kernel's all-zero default.
        PinnedMaps::config(self).unwrap_or_default()
    }
    fn allowed(&self, ip: IpAddr) -> bool {
        // A lookup in an LPM trie returns the longest prefix holding the address.
        self.allow.get(&Key::new(128, addr16(ip)), 0).is_ok()
    }
    fn block_expiry(&self, ip: IpAddr) -> Option<u64> {
        self.block
            .get(&Key::new(128, addr16(ip)), 0)
            .ok()
            .map(|e| e.expires_at_ns)
    }
    fn threat(&self, ip: IpAddr) -> Option<ThreatEntry> {
        self.threat.get(&addr16(ip), 0).ok()
    }
}
