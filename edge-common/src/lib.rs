//! The ABI shared by edge-node's XDP program and its userspace half.
//!
//! Every type that crosses the kernel/userspace boundary lives here, once: map names,
//! keys, values, the run-time configuration and the verdict/reason indices of the
//! per-CPU counters. All types are `#[repr(C)]`, contain no `bool` and no implicit
//! padding (explicit `_pad` fields), and their sizes are asserted at compile time.
//!
//! Addresses are stored as 16 bytes in network byte order; IPv4 addresses use the
//! IPv4-mapped IPv6 form (`::ffff:a.b.c.d`), so one trie or hash serves both families
//! and a v4 prefix `a.b.c.d/n` is the mapped prefix `/96+n`.
//!
//! Times are nanoseconds of `CLOCK_BOOTTIME` (`bpf_ktime_get_boot_ns` in the kernel,
//! `clock_gettime(CLOCK_BOOTTIME)` in userspace), so expiries written by userspace and
//! checked by the kernel use the same clock. An expiry of 0 means "never".
//!
//! The decision helpers at the bottom are pure functions used both by the XDP program
//! and by userspace enforcement when XDP is not attached, so the two cannot drift.
#![no_std]

/// Bumped whenever a map layout changes; part of the pin directory
/// (`<pin root>/v<ABI_VERSION>`) so an old node's pinned maps are never misread.
pub const ABI_VERSION: u32 = 1;

/// Names of the maps in the object (also their file names under the pin directory).
pub mod map_names {
    pub const ALLOW: &str = "EDGE_ALLOW";
    pub const BLOCK: &str = "EDGE_BLOCK";
    pub const THREAT: &str = "EDGE_THREAT";
    pub const BUCKETS: &str = "EDGE_BUCKETS";
    pub const CONFIG: &str = "EDGE_CONFIG";
    pub const STATS: &str = "EDGE_STATS";
    pub const ATTACH: &str = "EDGE_ATTACH";
    /// Every map, in a fixed order (pin, unpin, status).
    pub const ALL: [&str; 7] = [ALLOW, BLOCK, THREAT, BUCKETS, CONFIG, STATS, ATTACH];
}

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "edge_xdp";

/// Map capacities. Tries hold operator-managed prefixes; the hashes are LRU so a flood of
/// distinct sources evicts the coldest entries instead of failing inserts.
pub const ALLOW_MAX_ENTRIES: u32 = 16_384;
pub const BLOCK_MAX_ENTRIES: u32 = 262_144;
pub const THREAT_MAX_ENTRIES: u32 = 262_144;
pub const BUCKET_MAX_ENTRIES: u32 = 524_288;
pub const ATTACH_MAX_ENTRIES: u32 = 16;

/// Key of the allow and block LPM tries: `prefix_len` bits of `addr` (16-byte mapped form).
/// Layout matches the kernel's `struct bpf_lpm_trie_key`: a u32 prefix length followed by
/// the data; userspace and the kernel side both use their crate's `Key<Addr16>`.
pub type Addr16 = [u8; 16];

/// IPv4-mapped form of an IPv4 address given as its four network-order bytes.
#[inline(always)]
pub const fn map_v4(v4: [u8; 4]) -> Addr16 {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Prefix length in the 16-byte space of an IPv4 prefix length.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// Value of the allow trie. `reserved` must be 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    pub reserved: u32,
}

/// Value of the block trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// Boot-time ns after which the block no longer applies; 0 = never expires.
    pub expires_at_ns: u64,
}

/// Value of the threat-score hash (key: [`Addr16`] of the source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreatEntry {
    /// Current score; at or above [`XdpConfig::drop_threshold`] the source is dropped.
    pub score: u32,
    pub _pad: u32,
    /// Boot-time ns after which the score no longer applies; 0 = never expires.
    pub expires_at_ns: u64,
}

/// Which token bucket of a source a packet is charged to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketClass {
    /// Every packet of the source.
    Packets = 0,
    /// TCP segments with SYN set and ACK clear (new connections).
    TcpSyn = 1,
    /// UDP datagrams to one of the configured QUIC ports.
    Quic = 2,
}

/// Key of the token-bucket hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketKey {
    pub addr: Addr16,
    /// A [`BucketClass`] as u32.
    pub class: u32,
}

/// Value of the token-bucket hash: GCRA state (the "theoretical arrival time").
/// One u64 per source and class, no division on the fast path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    pub tat_ns: u64,
}

/// Rate of one bucket class, as GCRA parameters computed by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketParams {
    /// ns between packets at the sustained rate (10^9 / rate); 0 = class unlimited.
    pub interval_ns: u64,
    /// burst × interval_ns: how far ahead of real time a source may run.
    pub limit_ns: u64,
}

impl BucketParams {
    /// `rate_pps` packets per second with bursts of `burst` packets (at least 1).
    /// A rate of 0 means unlimited.
    pub const fn from_rate(rate_pps: u64, burst: u64) -> Self {
        if rate_pps == 0 {
            return Self {
                interval_ns: 0,
                limit_ns: 0,
            };
        }
        let interval_ns = if rate_pps >= 1_000_000_000 {
            1
        } else {
            1_000_000_000 / rate_pps
        };
        let burst = if burst == 0 { 1 } else { burst };
        Self {
            interval_ns,
            limit_ns: interval_ns.saturating_mul(burst),
        }
    }
}

/// Feature switches in [`XdpConfig::flags`].
pub mod flags {
    pub const ALLOW: u32 = 1 << 0;
    pub const BLOCK: u32 = 1 << 1;
    pub const THREAT: u32 = 1 << 2;
    pub const RATE_LIMIT: u32 = 1 << 3;
    /// Drop malformed packets instead of passing them to the kernel stack.
    pub const DROP_MALFORMED: u32 = 1 << 4;
    /// Emit aya-log records for every drop (debugging only: costs per packet).
    pub const DEBUG_LOG: u32 = 1 << 5;
    pub const ALL_POLICY: u32 = ALLOW | BLOCK | THREAT | RATE_LIMIT;
}

/// Maximum number of QUIC ports charged to the QUIC budget.
pub const MAX_QUIC_PORTS: usize = 8;

/// Run-time configuration: element 0 of the `EDGE_CONFIG` array, written by userspace at
/// any time; the program reads it per packet, so changes apply without reloading.
/// An all-zero config (the map's initial state) enforces nothing and passes everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// [`flags`] bits.
    pub flags: u32,
    /// Threat score at or above which a source is dropped; 0 disables the threat check.
    pub drop_threshold: u32,
    /// Number of valid entries in `quic_ports`.
    pub quic_port_count: u32,
    pub _pad: u32,
    /// UDP destination ports (host byte order) whose traffic is charged to the QUIC bucket.
    pub quic_ports: [u16; MAX_QUIC_PORTS],
    pub packets: BucketParams,
    pub tcp_syn: BucketParams,
    pub quic: BucketParams,
}

/// Why a packet got its verdict: the index into the per-CPU `EDGE_STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Parsed, no rule matched.
    Pass = 0,
    /// Source inside an allow prefix: never dropped.
    PassAllowed = 1,
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp = 2,
    /// Truncated or malformed headers, passed (the default).
    PassMalformed = 3,
    /// Truncated or malformed headers, dropped (`flags::DROP_MALFORMED`).
    DropMalformed = 4,
    /// Source inside a block prefix that has not expired.
    DropBlocked = 5,
    /// Source threat score at or above the drop threshold.
    DropThreat = 6,
    /// Over the per-source packet budget.
    DropRate = 7,
    /// Over the per-source TCP SYN budget.
    DropSynRate = 8,
    /// Over the per-source QUIC (UDP) budget.
    DropQuicRate = 9,
}

/// Number of [`Reason`]s (length of the stats array).
pub const REASON_COUNT: u32 = 10;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Pass,
        Reason::PassAllowed,
        Reason::PassNotIp,
        Reason::PassMalformed,
        Reason::DropMalformed,
        Reason::DropBlocked,
        Reason::DropThreat,
        Reason::DropRate,
        Reason::DropSynRate,
        Reason::DropQuicRate,
    ];

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropMalformed
                | Reason::DropBlocked
                | Reason::DropThreat
                | Reason::DropRate
                | Reason::DropSynRate
                | Reason::DropQuicRate
        )
    }

    /// Stable snake_case name used by the CLI and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Pass => "pass",
            Reason::PassAllowed => "pass_allowed",
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassMalformed => "pass_malformed",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropBlocked => "drop_blocked",
            Reason::DropThreat => "drop_threat",
            Reason::DropRate => "drop_rate",
            Reason::DropSynRate => "drop_syn_rate",
            Reason::DropQuicRate => "drop_quic_rate",
        }
    }
}

/// Per-CPU counter of one [`Reason`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// How a program is attached to an interface (kept in `EDGE_ATTACH` for `xdp status`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    None = 0,
    /// Generic (skb) XDP: runs after the skb is built.
    Generic = 1,
    /// Native (driver) XDP.
    Native = 2,
}

/// One element of `EDGE_ATTACH`: an interface the node attached to. `ifindex` 0 = unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachRecord {
    pub ifindex: u32,
    /// An [`AttachMode`] as u32.
    pub mode: u32,
    /// Kernel id of the attached program.
    pub prog_id: u32,
    /// 1 when the link is pinned and stays attached while userspace is down.
    pub persistent: u32,
    /// Boot-time ns of the attach.
    pub attached_at_ns: u64,
}

// ---- decisions shared by the kernel and userspace enforcement ------------------------

/// True while an entry with this expiry applies at `now_ns` (0 = forever).
#[inline(always)]
pub const fn is_live(expires_at_ns: u64, now_ns: u64) -> bool {
    expires_at_ns == 0 || now_ns < expires_at_ns
}

/// Whether a threat entry drops its source at `now_ns`.
#[inline(always)]
pub const fn threat_drops(entry: &ThreatEntry, threshold: u32, now_ns: u64) -> bool {
    threshold != 0 && entry.score >= threshold && is_live(entry.expires_at_ns, now_ns)
}

/// GCRA admission: `Some(new_tat)` admits the packet (store the new state), `None`
/// means over budget (state unchanged). Over a span `d` a source is admitted about
/// `burst + d / interval` packets.
#[inline(always)]
pub const fn gcra_admit(tat_ns: u64, now_ns: u64, params: &BucketParams) -> Option<u64> {
    let base = if tat_ns > now_ns { tat_ns } else { now_ns };
    let next = base.saturating_add(params.interval_ns);
    if next - now_ns <= params.limit_ns {
        Some(next)
    } else {
        None
    }
}

// ---- compile-time layout checks: the kernel and userspace must agree byte for byte ----
const _: () = {
    assert!(core::mem::size_of::<AllowEntry>() == 4);
    assert!(core::mem::size_of::<BlockEntry>() == 8);
    assert!(core::mem::size_of::<ThreatEntry>() == 16);
    assert!(core::mem::size_of::<BucketKey>() == 20);
    assert!(core::mem::size_of::<BucketState>() == 8);
    assert!(core::mem::size_of::<BucketParams>() == 16);
    assert!(core::mem::size_of::<XdpConfig>() == 16 + 16 + 3 * 16);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<AttachRecord>() == 24);
    assert!(Reason::ALL.len() == REASON_COUNT as usize);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers, with no implicit padding
    // (checked by the size asserts above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::ThreatEntry {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::BucketState {}
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::AttachRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_burst_then_rate() {
        let p = BucketParams::from_rate(10, 5); // 100 ms interval, burst 5
        let mut tat = 0;
        let now = 1_000_000_000;
        let mut admitted = 0;
        for _ in 0..20 {
            if let Some(t) = gcra_admit(tat, now, &p) {
                tat = t;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5);
        // One interval later exactly one more packet fits.
        let later = now + 100_000_000;
        assert!(gcra_admit(tat, later, &p).is_some());
        let t = gcra_admit(tat, later, &p).unwrap();
        assert!(gcra_admit(t, later, &p).is_none());
    }

    #[test]
    fn expiry_and_threshold() {
        let e = ThreatEntry {
            score: 80,
            _pad: 0,
            expires_at_ns: 50,
        };
        assert!(threat_drops(&e, 80, 49));
        assert!(!threat_drops(&e, 80, 50));
        assert!(!threat_drops(&e, 81, 10));
        assert!(!threat_drops(&e, 0, 10));
        assert!(is_live(0, u64::MAX));
    }

    #[test]
    fn v4_mapping() {
        assert_eq!(map_v4([10, 1, 2, 3])[10..], [0xff, 0xff, 10, 1, 2, 3]);
    }
}
