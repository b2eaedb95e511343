//! The verdict for one packet, in the documented order. Pure decisions come from
//! `edge_common` so userspace enforcement applies exactly the same rules.

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, maps::lpm_trie::Key, programs::XdpContext};
use aya_log_ebpf::info;
use edge_common::{
    Addr16, BucketClass, BucketKey, BucketParams, BucketState, MAX_QUIC_PORTS, Reason, XdpConfig,
    flags, gcra_admit, is_live, threat_drops,
};

use crate::{
    EDGE_ALLOW, EDGE_BLOCK, EDGE_BUCKETS, EDGE_CONFIG, EDGE_THREAT,
    parse::{Parsed, Transport, parse},
};

#[inline(always)]
pub fn decide(ctx: &XdpContext) -> Reason {
    let Some(cfg) = EDGE_CONFIG.get(0) else {
        return Reason::Pass;
    };
    let (src, transport) = match parse(ctx) {
        Parsed::NotIp => return Reason::PassNotIp,
        Parsed::Malformed => return malformed(cfg),
        Parsed::Ip { src, transport } => (src, transport),
    };
    let reason = decide_source(cfg, &src, transport);
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

#[inline(always)]
fn decide_source(cfg: &XdpConfig, src: &Addr16, transport: Transport) -> Reason {
    let key = Key::new(128, *src);
    if cfg.flags & flags::ALLOW != 0 && EDGE_ALLOW.get(&key).is_some() {
        return Reason::PassAllowed;
    }
    // The clock is read once, and only when some check needs it.
    let mut now = 0;
    if cfg.flags & flags::BLOCK != 0
        && let Some(block) = EDGE_BLOCK.get(&key)
    {
        now = unsafe { bpf_ktime_get_boot_ns() };
        if is_live(block.expires_at_ns, now) {
            return Reason::DropBlocked;
        }
    }
    if cfg.flags & flags::THREAT != 0 && cfg.drop_threshold != 0 {
        // SAFETY: the value is only read; a concurrent update can at worst give a stale score.
        if let Some(entry) = unsafe { EDGE_THREAT.get(src) } {
            if now == 0 {
                now = unsafe { bpf_ktime_get_boot_ns() };
            }
            if threat_drops(entry, cfg.drop_threshold, now) {
                return Reason::DropThreat;
            }
        }
    }
    if transport == Transport::Malformed {
        return malformed(cfg);
    }
    if cfg.flags & flags::RATE_LIMIT != 0 {
        if now == 0 {
            now = unsafe { bpf_ktime_get_boot_ns() };
        }
        // The class budget first, so a SYN or QUIC flood is counted as such.
        match transport {
            Transport::TcpSyn if !admit(src, BucketClass::TcpSyn, &cfg.tcp_syn, now) => {
                return Reason::DropSynRate;
            }
            Transport::Udp { dst_port }
                if is_quic_port(cfg, dst_port)
                    && !admit(src, BucketClass::Quic, &cfg.quic, now) =>
            {
                return Reason::DropQuicRate;
            }
            _ => {}
        }
        if !admit(src, BucketClass::Packets, &cfg.packets, now) {
            return Reason::DropRate;
        }
    }
    Reason::Pass
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

/// Charges one packet to a source's bucket of `class`. Buckets are shared by all CPUs;
/// updates are not atomic, so under contention a few extra packets may pass (never fewer).
#[inline(always)]
fn admit(src: &Addr16, class: BucketClass, params: &BucketParams, now: u64) -> bool {
    if params.interval_ns == 0 {
        return true;
    }
    let key = BucketKey {
        addr: *src,
        class: class as u32,
    };
    match EDGE_BUCKETS.get_ptr_mut(key) {
        Some(state) => {
            // SAFETY: pointer into the map value, valid for this program run.
            let tat = unsafe { (*state).tat_ns };
            match gcra_admit(tat, now, params) {
                Some(next) => {
                    unsafe { (*state).tat_ns = next };
                    true
                }
                None => false,
            }
        }
        None => {
            // First packet of this source and class: admitted, the bucket starts now.
            let state = BucketState {
                tat_ns: now + params.interval_ns,
            };
            let _ = EDGE_BUCKETS.insert(key, state, 0);
            true
        }
    }
}
