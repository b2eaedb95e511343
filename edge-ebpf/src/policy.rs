//! The verdict for one packet, in the documented order. Pure decisions come from
//! `edge_common` so userspace enforcement applies exactly the same rules.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key, programs::XdpContext,
};
use aya_log_ebpf::info;
use edge_common::{
    Addr16, BucketClass, BucketParams, BucketSlot, MAX_QUIC_PORTS, Reason, VERDICT_SLOTS,
    XdpConfig, addr_from_halves, addr_halves, bucket_slots_of, flags, gcra_admit, is_live,
    rule_flags, source_hash_halves, source_key_halves, threat_drops,
};

use crate::{
    EDGE_BUCKETS, EDGE_CONFIG, EDGE_GEN, EDGE_SOURCES, EDGE_VERDICTS,
    parse::{L4, Parsed, Transport, parse, transport},
};

/// CLOCK_MONOTONIC at tick resolution: a few ns, where the precise clock costs more than
/// the rest of the drop path. Read at most once per packet, and only when needed.
#[inline(always)]
fn clock() -> u64 {
    // SAFETY: helper without arguments or side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn decide(ctx: &XdpContext) -> Reason {
    let Some(cfg) = EDGE_CONFIG.get(0) else {
        return Reason::Pass;
    };
    let (src, l4) = match parse(ctx) {
        Parsed::NotIp => return Reason::PassNotIp,
        Parsed::Malformed => return malformed(cfg),
        Parsed::Ip { src, l4 } => (src, l4),
    };
    let reason = decide_source(ctx, cfg, &src, l4);
    if cfg.flags & flags::DEBUG_LOG != 0 && reason.is_drop() {
        info!(ctx, "edge-xdp: drop {:i} reason {}", src, reason as u32);
    }
    reason
}

#[inline(always)]
fn malformed(cfg: &XdpConfig) -> Reason {
    if cfg.flags & flags::DROP_MALFORMED != 0 {
        Reason::DropMalformed
    } else {
        Reason::PassMalformed
    }
}

/// The source-rule step (allow → block → threat) by the trie: the reason and, for a
/// drop with a TTL, when it stops applying. `Pass` means no source rule applies.
#[inline(always)]
fn source_rule(cfg: &XdpConfig, src: &Addr16, now: &mut u64) -> (Reason, u64) {
    if cfg.flags & (flags::ALLOW | flags::BLOCK | flags::THREAT) == 0 {
        return (Reason::Pass, 0);
    }
    let Some(rule) = EDGE_SOURCES.get(Key::new(128, *src)) else {
        return (Reason::Pass, 0);
    };
    if cfg.flags & flags::ALLOW != 0 && rule.flags & rule_flags::ALLOWED != 0 {
        return (Reason::PassAllowed, 0);
    }
    if cfg.flags & flags::BLOCK != 0 && rule.flags & rule_flags::BLOCKED != 0 {
        if rule.block_expires_at_ns == 0 {
            return (Reason::DropBlocked, 0);
        }
        if *now == 0 {
            *now = clock();
        }
        if is_live(rule.block_expires_at_ns, *now) {
            return (Reason::DropBlocked, rule.block_expires_at_ns);
        }
    }
    if cfg.flags & flags::THREAT != 0 && rule.score != 0 {
        if *now == 0 {
            *now = clock();
        }
        if threat_drops(rule, cfg.drop_threshold, *now) {
            return (Reason::DropThreat, rule.score_expires_at_ns);
        }
    }
    (Reason::Pass, 0)
}

/// The source-rule step through this CPU's verdict cache: a hit costs one per-CPU slot;
/// a miss, a stale generation or an expired drop falls back to the trie and refills it.
#[inline(always)]
fn cached_source_rule(cfg: &XdpConfig, src: &Addr16, hash: u64, now: &mut u64) -> Reason {
    let generation = EDGE_GEN.get(0).copied().unwrap_or(0);
    let Some(slot) = EDGE_VERDICTS.get_ptr_mut(((hash >> 40) as u32) & (VERDICT_SLOTS - 1)) else {
        return source_rule(cfg, src, now).0;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for this program run.
    unsafe {
        if generation != 0
            && (*slot).generation == generation
            && addr_halves(&(*slot).addr) == addr_halves(src)
        {
            let expires = (*slot).expires_at_ns;
            if expires == 0 {
                return reason_from((*slot).reason);
            }
            if *now == 0 {
                *now = clock();
            }
            if is_live(expires, *now) {
                return reason_from((*slot).reason);
            }
        }
        let (reason, expires) = source_rule(cfg, src, now);
        (*slot).addr = *src;
        (*slot).generation = generation;
        (*slot).reason = reason as u32;
        (*slot).expires_at_ns = expires;
        reason
    }
}

#[inline(always)]
fn reason_from(v: u32) -> Reason {
    match v {
        x if x == Reason::PassAllowed as u32 => Reason::PassAllowed,
        x if x == Reason::DropBlocked as u32 => Reason::DropBlocked,
        x if x == Reason::DropThreat as u32 => Reason::DropThreat,
        _ => Reason::Pass,
    }
}

#[inline(always)]
fn decide_source(ctx: &XdpContext, cfg: &XdpConfig, src: &Addr16, l4: L4) -> Reason {
    let mut now = 0;
    // Budgets belong to the source: an IPv6 address is charged to its prefix, so
    // rotating through a /64 buys nothing. Rules and scores need no cut: the trie's
    // longest match finds a score userspace set on the prefix, and a host's own rule.
    // One hash, of the source, picks the bucket slots and the verdict-cache slot (which
    // still holds and compares the full address).
    let (lo, hi) = addr_halves(src);
    let key = source_key_halves(lo, hi, cfg.ipv6_source_prefix);
    let hash = source_hash_halves(key.0, key.1, cfg.bucket_seed);
    let reason = cached_source_rule(cfg, src, hash, &mut now);
    if reason != Reason::Pass {
        return reason;
    }
    let transport = transport(ctx, l4);
    let budgets = cfg.flags & flags::RATE_LIMIT != 0;
    // Budgets apply to what the kernel would reassemble. A first fragment that hides
    // its transport header (or an IPv6 chain we do not follow to the end) could be a
    // SYN or a QUIC datagram: no budget can be chosen for it, so it is dropped, which
    // costs no legitimate sender anything (RFC 1858 and RFC 7112 say the same; the
    // datagram cannot be reassembled without it). Later fragments are charged to the
    // packet budget below; their datagram's class was charged with its first fragment.
    match transport {
        Transport::SplitHeader if budgets => return Reason::DropFragmentHeader,
        Transport::LongChain if budgets => return Reason::DropExtChain,
        Transport::SplitHeader | Transport::LongChain => return malformed(cfg),
        _ => {}
    }
    if budgets && let Some(drop) = over_budget(cfg, key, hash, transport, &mut now) {
        return drop;
    }
    // A truncated transport header was charged like any packet of its source above: a
    // flood of them must not pass for free.
    if transport == Transport::Malformed {
        return malformed(cfg);
    }
    Reason::Pass
}

/// Charges the packet to its source's budgets: the drop reason when one is exhausted.
#[inline(always)]
fn over_budget(
    cfg: &XdpConfig,
    key: (u64, u64),
    hash: u64,
    transport: Transport,
    now: &mut u64,
) -> Option<Reason> {
    if *now == 0 {
        *now = clock();
    }
    let now = *now;
    let slot = bucket_slot(key, hash, now)?;
    // The class budget first, so a SYN or QUIC flood is counted as such.
    match transport {
        Transport::TcpSyn if !admit(slot, BucketClass::TcpSyn, &cfg.tcp_syn, now) => {
            return Some(Reason::DropSynRate);
        }
        Transport::Udp { dst_port }
            if is_quic_port(cfg, dst_port) && !admit(slot, BucketClass::Quic, &cfg.quic, now) =>
        {
            return Some(Reason::DropQuicRate);
        }
        _ => {}
    }
    if !admit(slot, BucketClass::Packets, &cfg.packets, now) {
        return Some(Reason::DropRate);
    }
    None
}

#[inline(always)]
fn is_quic_port(cfg: &XdpConfig, port: u16) -> bool {
    let count = cfg.quic_port_count as usize;
    for i in 0..MAX_QUIC_PORTS {
        if i < count && cfg.quic_ports[i] == port {
            return true;
        }
    }
    false
}

/// The bucket slot of the source `me` (its key's halves): the one of its two candidates it already owns, else an idle
/// one it takes over (a slot is idle once all its buckets have refilled), else the first
/// candidate, shared with its busy owner. Slots are shared by all CPUs and updated without
/// atomics, so under contention a few extra packets may pass (never fewer).
#[inline(always)]
fn bucket_slot(me: (u64, u64), hash: u64, now: u64) -> Option<*mut BucketSlot> {
    let (a, b) = bucket_slots_of(hash);
    let first = EDGE_BUCKETS.get_ptr_mut(a)?;
    let second = EDGE_BUCKETS.get_ptr_mut(b)?;
    // SAFETY: pointers into the array's values, valid for this program run.
    unsafe {
        if addr_halves(&(*first).addr) == me {
            return Some(first);
        }
        if addr_halves(&(*second).addr) == me {
            return Some(second);
        }
        for slot in [first, second] {
            let t = (*slot).tat_ns;
            if t[0] <= now && t[1] <= now && t[2] <= now {
                (*slot).addr = addr_from_halves(me.0, me.1);
                (*slot).tat_ns = [0; 3];
                return Some(slot);
            }
        }
    }
    Some(first)
}

/// Charges one packet to the `class` bucket of a slot.
#[inline(always)]
fn admit(slot: *mut BucketSlot, class: BucketClass, params: &BucketParams, now: u64) -> bool {
    if params.interval_ns == 0 {
        return true;
    }
    let i = class as usize;
    // SAFETY: pointer into the array's value; `i` < 3 (a BucketClass).
    unsafe {
        let tat = (*slot).tat_ns[i];
        match gcra_admit(tat, now, params) {
            Some(next) => {
                (*slot).tat_ns[i] = next;
                true
            }
            None => false,
        }
    }
}
