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
//! Times are nanoseconds of `CLOCK_MONOTONIC`: the kernel reads the coarse variant
//! (`bpf_ktime_get_coarse_ns`, a few ns; the precise `bpf_ktime_get_ns` costs more than
//! the rest of the drop path on our machines, see bench/RESULTS.md), userspace
//! `clock_gettime(CLOCK_MONOTONIC)`. The two differ by at most one tick (≤ 4 ms), far
//! below any TTL. An expiry of 0 means "never".
//!
//! Per packet the program does one LPM lookup for everything known about the source
//! (allow, block, threat score: [`SourceRule`]); userspace keeps each rule's *effective*
//! fields (inherited from the covering prefixes) up to date, so the longest match alone
//! decides. Token buckets live in a direct-mapped array indexed by a hash of the source:
//! on the machines we measured an array slot costs a fraction of a hash-map lookup.
//!
//! The decision helpers at the bottom are pure functions used both by the XDP program
//! and by userspace enforcement when XDP is not attached, so the two cannot drift.
#![no_std]

/// Bumped whenever a map layout changes; part of the pin directory
/// (`<pin root>/v<ABI_VERSION>`) so an old node's pinned maps are never misread.
pub const ABI_VERSION: u32 = 2;

/// Names of the maps in the object (also their file names under the pin directory).
pub mod map_names {
    pub const SOURCES: &str = "EDGE_SOURCES";
    pub const BUCKETS: &str = "EDGE_BUCKETS";
    pub const CONFIG: &str = "EDGE_CONFIG";
    pub const STATS: &str = "EDGE_STATS";
    pub const ATTACH: &str = "EDGE_ATTACH";
    pub const VERDICTS: &str = "EDGE_VERDICTS";
    pub const GENERATION: &str = "EDGE_GEN";
    /// Every map, in a fixed order (pin, unpin, status).
    pub const ALL: [&str; 7] = [
        SOURCES, BUCKETS, CONFIG, STATS, ATTACH, VERDICTS, GENERATION,
    ];
}

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "edge_xdp";

/// Map capacities. The source trie holds operator prefixes and scored hosts; the bucket
/// array is fixed-size, so a flood of distinct sources cannot grow memory.
pub const SOURCES_MAX_ENTRIES: u32 = 524_288;
/// Number of token-bucket slots (a power of two).
pub const BUCKET_SLOTS: u32 = 1 << 18;
pub const ATTACH_MAX_ENTRIES: u32 = 16;
/// Slots of the per-CPU source-verdict cache (a power of two).
pub const VERDICT_SLOTS: u32 = 4096;

/// One slot of the per-CPU verdict cache: the outcome of the source-rule step (allow /
/// block / threat) for `addr`, valid while the rules' generation (element 0 of
/// `EDGE_GEN`, rewritten by userspace after every change to the rules or the config)
/// equals `generation`. A flooding source then costs a hash and one per-CPU slot
/// instead of a trie walk per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictSlot {
    pub addr: Addr16,
    pub generation: u64,
    /// A [`Reason`] as u32: `PassAllowed`, `DropBlocked`, `DropThreat`, or `Pass` for
    /// "no source rule applies".
    pub reason: u32,
    pub _pad: u32,
    /// When the cached drop stops applying (0 = never).
    pub expires_at_ns: u64,
}

/// A source address in 16-byte form; the data of the source trie's keys (a u32 prefix
/// length followed by these bytes, the kernel's `struct bpf_lpm_trie_key`).
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

/// Bits of [`SourceRule::flags`].
pub mod rule_flags {
    /// Effective: this prefix or a covering one is allowed. Checked by the kernel.
    pub const ALLOWED: u32 = 1 << 0;
    /// Effective: this prefix or a covering one is blocked until `block_expires_at_ns`.
    pub const BLOCKED: u32 = 1 << 1;
    /// This entry itself is an allow prefix.
    pub const OWN_ALLOW: u32 = 1 << 2;
    /// This entry itself is a block prefix (until `own_block_expires_at_ns`).
    pub const OWN_BLOCK: u32 = 1 << 3;
    /// The entry's own allow came from the configuration file (so a restart with a file
    /// that no longer lists it removes it).
    pub const CONFIG_ALLOW: u32 = 1 << 4;
    /// The entry's own block came from the configuration file.
    pub const CONFIG_BLOCK: u32 = 1 << 5;
    /// The bits that belong to the entry itself (kept by [`super::SourceRule::inherit`]).
    pub const OWN: u32 = OWN_ALLOW | OWN_BLOCK | CONFIG_ALLOW | CONFIG_BLOCK;
}

/// Value of the source trie: what is known about a prefix or a host.
///
/// The `OWN_*` flags, `own_block_expires_at_ns` and the score are what was set on this
/// entry; `ALLOWED`, `BLOCKED` and `block_expires_at_ns` are effective values that
/// userspace derives with [`SourceRule::inherit`] from the longest covering entry, so the
/// kernel's single longest-prefix match sees every rule that applies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRule {
    pub flags: u32,
    /// Threat score of this source (set on a host's entry, or an IPv6 source prefix's:
    /// see [`XdpConfig::ipv6_source_prefix`]; not inherited).
    pub score: u32,
    /// The prefix length of the entry's key, so a lookup tells an exact hit from a
    /// covering entry.
    pub prefix_len: u32,
    pub _pad: u32,
    /// Effective block expiry (0 = never), valid with `BLOCKED`.
    pub block_expires_at_ns: u64,
    /// Expiry of the score (0 = never).
    pub score_expires_at_ns: u64,
    /// Expiry of this entry's own block (0 = never), valid with `OWN_BLOCK`.
    pub own_block_expires_at_ns: u64,
}

/// Of two block expiries, the later one (0 = never wins).
#[inline(always)]
pub const fn later_expiry(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 {
        0
    } else if a > b {
        a
    } else {
        b
    }
}

impl SourceRule {
    /// True when the entry carries nothing of its own and can be deleted.
    pub const fn is_empty(&self) -> bool {
        self.flags & (rule_flags::OWN_ALLOW | rule_flags::OWN_BLOCK) == 0 && self.score == 0
    }

    /// Recomputes the effective fields from this entry's own and those of `parent` (the
    /// longest strictly covering entry, already up to date): allowed if either is;
    /// blocked if either is, until the later of their expiries.
    pub const fn inherit(mut self, parent: Option<&SourceRule>) -> Self {
        let own_allow = self.flags & rule_flags::OWN_ALLOW != 0;
        let own_block = self.flags & rule_flags::OWN_BLOCK != 0;
        let mut flags = self.flags & rule_flags::OWN;
        let mut blocked = own_block;
        let mut expires = self.own_block_expires_at_ns;
        let mut allowed = own_allow;
        if let Some(p) = parent {
            allowed |= p.flags & rule_flags::ALLOWED != 0;
            if p.flags & rule_flags::BLOCKED != 0 {
                expires = if blocked {
                    later_expiry(expires, p.block_expires_at_ns)
                } else {
                    p.block_expires_at_ns
                };
                blocked = true;
            }
        }
        if allowed {
            flags |= rule_flags::ALLOWED;
        }
        if blocked {
            flags |= rule_flags::BLOCKED;
        } else {
            expires = 0;
        }
        self.flags = flags;
        self.block_expires_at_ns = expires;
        self
    }
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

/// One slot of the token-bucket array: the source that owns it and its GCRA state (the
/// "theoretical arrival time") for each [`BucketClass`]. One u64 per class, no division
/// on the fast path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketSlot {
    pub addr: Addr16,
    pub tat_ns: [u64; 3],
}

/// The two candidate slots of a source (two-choice hashing keeps collisions between busy
/// sources rare). `seed` comes from the config so slots cannot be predicted from outside.
#[inline(always)]
pub const fn bucket_slots(addr: &Addr16, seed: u64) -> (u32, u32) {
    bucket_slots_of(source_hash(addr, seed))
}

/// [`bucket_slots`] from an already computed [`source_hash`].
#[inline(always)]
pub const fn bucket_slots_of(h: u64) -> (u32, u32) {
    let first = (h as u32) & (BUCKET_SLOTS - 1);
    let second = ((h >> 32) as u32) & (BUCKET_SLOTS - 1);
    (first, second)
}

/// The source an address belongs to for budgets and scores: an IPv4 address itself, an
/// IPv6 address cut to its first `ipv6_prefix` bits (0 or ≥ 128: the address itself).
#[inline(always)]
pub const fn source_key(a: &Addr16, ipv6_prefix: u32) -> Addr16 {
    let (lo, hi) = addr_halves(a);
    let (lo, hi) = source_key_halves(lo, hi, ipv6_prefix);
    addr_from_halves(lo, hi)
}

/// [`source_key`] on the halves of [`addr_halves`]: the kernel's form, a few ALU
/// instructions (no byte shuffling, no 128-bit shifts, which the BPF target lacks).
#[inline(always)]
pub const fn source_key_halves(lo: u64, hi: u64, ipv6_prefix: u32) -> (u64, u64) {
    // `::ffff:a.b.c.d`: bytes 0..10 zero, 10..12 0xff.
    const MAPPED_MASK: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    const MAPPED: u64 = u64::from_ne_bytes([0, 0, 0xff, 0xff, 0, 0, 0, 0]);
    if ipv6_prefix == 0 || ipv6_prefix >= 128 || (lo == 0 && hi & MAPPED_MASK == MAPPED) {
        (lo, hi)
    } else if ipv6_prefix > 64 {
        (lo, hi & leading_bits_mask(ipv6_prefix - 64))
    } else {
        (lo & leading_bits_mask(ipv6_prefix), 0)
    }
}

/// Mask of the first `bits` (1..=64) bits of 8 network-order bytes read as a
/// native-endian u64.
#[inline(always)]
const fn leading_bits_mask(bits: u32) -> u64 {
    (u64::MAX << (64 - bits)).to_be()
}

/// A seeded 64-bit hash of a source address (bucket slots, verdict-cache slots).
#[inline(always)]
pub const fn source_hash(addr: &Addr16, seed: u64) -> u64 {
    let (lo, hi) = addr_halves(addr);
    source_hash_halves(lo, hi, seed)
}

/// [`source_hash`] of an address given as its [`addr_halves`].
#[inline(always)]
pub const fn source_hash_halves(lo: u64, hi: u64, seed: u64) -> u64 {
    fmix64(fmix64(lo ^ seed) ^ hi)
}

/// MurmurHash3's 64-bit finalizer: every input bit moves every output bit.
#[inline(always)]
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The address as two native-endian u64 (cheap comparisons and hashing).
#[inline(always)]
pub const fn addr_halves(a: &Addr16) -> (u64, u64) {
    (
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

/// The address back from its [`addr_halves`].
#[inline(always)]
pub const fn addr_from_halves(lo: u64, hi: u64) -> Addr16 {
    let (l, h) = (lo.to_ne_bytes(), hi.to_ne_bytes());
    [
        l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], h[0], h[1], h[2], h[3], h[4], h[5], h[6],
        h[7],
    ]
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
    /// Leading bits of an IPv6 source that name the source for budgets and scores
    /// ([`source_key`]): one host gets a whole /64 of addresses to rotate through.
    /// 0 (or 128) = every address on its own. IPv4 sources are always per address.
    pub ipv6_source_prefix: u32,
    /// UDP destination ports (host byte order) whose traffic is charged to the QUIC bucket.
    pub quic_ports: [u16; MAX_QUIC_PORTS],
    pub packets: BucketParams,
    pub tcp_syn: BucketParams,
    pub quic: BucketParams,
    /// Seed of the bucket-slot hash.
    pub bucket_seed: u64,
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
    /// A first fragment without its whole transport header (IPv6: header chain), so the
    /// budget it belongs to cannot be known; no stack sends one (RFC 1858, RFC 7112).
    /// Dropped while budgets are on, else the malformed verdict.
    DropFragmentHeader = 10,
    /// An IPv6 extension-header chain longer than the program follows, so the budget it
    /// belongs to cannot be known. Dropped while budgets are on, else the malformed verdict.
    DropExtChain = 11,
}

/// Number of [`Reason`]s (length of the stats array).
pub const REASON_COUNT: u32 = 12;

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
        Reason::DropFragmentHeader,
        Reason::DropExtChain,
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
                | Reason::DropFragmentHeader
                | Reason::DropExtChain
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
            Reason::DropFragmentHeader => "drop_fragment_header",
            Reason::DropExtChain => "drop_ext_chain",
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

/// Whether a rule's score drops its source at `now_ns`.
#[inline(always)]
pub const fn threat_drops(rule: &SourceRule, threshold: u32, now_ns: u64) -> bool {
    threshold != 0 && rule.score >= threshold && is_live(rule.score_expires_at_ns, now_ns)
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
    assert!(core::mem::size_of::<SourceRule>() == 40);
    assert!(core::mem::size_of::<VerdictSlot>() == 40);
    assert!(VERDICT_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<BucketSlot>() == 40);
    assert!(core::mem::size_of::<BucketParams>() == 16);
    assert!(core::mem::size_of::<XdpConfig>() == 16 + 16 + 3 * 16 + 8);
    assert!(BUCKET_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<AttachRecord>() == 24);
    assert!(Reason::ALL.len() == REASON_COUNT as usize);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers, with no implicit padding
    // (checked by the size asserts above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::SourceRule {}
    unsafe impl aya::Pod for super::BucketSlot {}
    unsafe impl aya::Pod for super::VerdictSlot {}
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::AttachRecord {}
}

#[cfg(test)]
extern crate std;

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
        let e = SourceRule {
            score: 80,
            score_expires_at_ns: 50,
            ..SourceRule::default()
        };
        assert!(threat_drops(&e, 80, 49));
        assert!(!threat_drops(&e, 80, 50));
        assert!(!threat_drops(&e, 81, 10));
        assert!(!threat_drops(&e, 0, 10));
        assert!(is_live(0, u64::MAX));
    }

    #[test]
    fn rules_inherit_allow_and_the_later_block() {
        use rule_flags::*;
        let parent = SourceRule {
            flags: OWN_BLOCK,
            own_block_expires_at_ns: 100,
            ..SourceRule::default()
        }
        .inherit(None);
        assert_eq!(parent.flags, OWN_BLOCK | BLOCKED);
        assert_eq!(parent.block_expires_at_ns, 100);
        let child = SourceRule {
            flags: OWN_BLOCK,
            own_block_expires_at_ns: 50,
            ..SourceRule::default()
        }
        .inherit(Some(&parent));
        assert_eq!(child.block_expires_at_ns, 100, "the later expiry wins");
        let forever = SourceRule {
            flags: OWN_BLOCK | OWN_ALLOW,
            ..SourceRule::default()
        }
        .inherit(Some(&parent));
        assert_eq!(forever.block_expires_at_ns, 0);
        assert_eq!(forever.flags & ALLOWED, ALLOWED);
        let host = SourceRule {
            score: 7,
            ..SourceRule::default()
        }
        .inherit(Some(&forever));
        assert_eq!(host.flags, ALLOWED | BLOCKED);
        assert!(!host.is_empty());
        assert!(SourceRule::default().inherit(Some(&forever)).is_empty());
    }

    #[test]
    fn bucket_slots_spread_and_depend_on_the_seed() {
        let a = map_v4([10, 0, 0, 1]);
        let b = map_v4([10, 0, 0, 2]);
        assert_ne!(bucket_slots(&a, 1), bucket_slots(&b, 1));
        assert_ne!(bucket_slots(&a, 1), bucket_slots(&a, 2));
        let (x, y) = bucket_slots(&a, 1);
        assert!(x < BUCKET_SLOTS && y < BUCKET_SLOTS);
        // Sequential addresses (the usual case: one subnet) spread like random ones:
        // 10k sources in 2^18 slots collide about n²/2m ≈ 190 times.
        for seed in [0, 0x1234_5678_9abc_def0] {
            let mut seen = std::collections::HashSet::new();
            for i in 0..10_000u32 {
                let [_, b, c, d] = i.to_be_bytes();
                seen.insert(bucket_slots(&map_v4([10, b, c, d]), seed).0);
            }
            assert!(
                seen.len() > 9_700,
                "seed {seed}: {} distinct slots",
                seen.len()
            );
        }
    }

    #[test]
    fn ipv6_sources_are_cut_to_the_prefix_ipv4_never() {
        let a: Addr16 = [
            0x20, 0x01, 0x0d, 0xb8, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4,
        ];
        let cut = |p| u128::from_be_bytes(source_key(&a, p));
        let x = u128::from_be_bytes(a);
        for p in 1..128u32 {
            assert_eq!(cut(p), x & (u128::MAX << (128 - p)), "/{p}");
        }
        assert_eq!(cut(0), x);
        assert_eq!(cut(128), x);
        assert_eq!(cut(200), x);
        let v4 = map_v4([10, 1, 2, 3]);
        assert_eq!(source_key(&v4, 64), v4);
        let mut almost = v4;
        almost[9] = 1; // not the mapped form: an IPv6 address
        assert_eq!(source_key(&almost, 64)[8..], [0; 8]);
    }

    #[test]
    fn v4_mapping() {
        assert_eq!(map_v4([10, 1, 2, 3])[10..], [0xff, 0xff, 10, 1, 2, 3]);
    }
}
