//! edge-node's XDP program: per packet, one longest-prefix lookup of the source (allow →
//! block → threat score) → token buckets → pass, with a per-CPU counter for every
//! verdict and reason.
//!
//! All policy lives in maps (see `edge_common`), written by userspace at run time.
#![no_std]
#![no_main]

mod parse;
mod policy;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use edge_common::{
    ATTACH_MAX_ENTRIES, Addr16, AttachRecord, BUCKET_SLOTS, BucketSlot, Counter, REASON_COUNT,
    Reason, SOURCES_MAX_ENTRIES, SourceRule, VERDICT_SLOTS, VerdictSlot, XdpConfig,
};

// Map names are the static names; `edge_common::map_names` spells them for userspace.
// Every map is pinned by name so its state outlives the userspace process.

#[map]
static EDGE_SOURCES: LpmTrie<Addr16, SourceRule> = LpmTrie::pinned(SOURCES_MAX_ENTRIES, 0);

#[map]
static EDGE_BUCKETS: Array<BucketSlot> = Array::pinned(BUCKET_SLOTS, 0);

#[map]
static EDGE_CONFIG: Array<XdpConfig> = Array::pinned(1, 0);

/// Generation of the rules and config; userspace rewrites it after every change, which
/// invalidates every cached verdict.
#[map]
static EDGE_GEN: Array<u64> = Array::pinned(1, 0);

#[map]
static EDGE_VERDICTS: PerCpuArray<VerdictSlot> = PerCpuArray::pinned(VERDICT_SLOTS, 0);

#[map]
static EDGE_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(REASON_COUNT, 0);

/// Written only by userspace (`xdp status`); declared here so it is created and pinned
/// with the others.
#[map]
static EDGE_ATTACH: Array<AttachRecord> = Array::pinned(ATTACH_MAX_ENTRIES, 0);

#[xdp]
pub fn edge_xdp(ctx: XdpContext) -> u32 {
    let reason = policy::decide(&ctx);
    count(&ctx, reason);
    if reason.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn count(ctx: &XdpContext, reason: Reason) {
    if let Some(counter) = EDGE_STATS.get_ptr_mut(reason as u32) {
        let bytes = (ctx.data_end() - ctx.data()) as u64;
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic; this only satisfies no_std.
    loop {}
}
