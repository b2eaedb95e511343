//! Reference XDP programs for the benchmarks:
//! - `bench_tx`: transmits every frame back out (XDP_TX). Run with BPF_PROG_RUN in
//!   live-frames mode on the sender's veth it is the flood generator.
//! - `bench_pass`: returns XDP_PASS, nothing else: the floor of any XDP program's cost.
//! - `bench_drop_v4`: checks Ethernet + IPv4 headers and drops: the floor of a drop path.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_drop_v4(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Ethernet (14) + IPv4 (20) must be present, and the EtherType must be IPv4.
    if start + 34 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { *((start + 12) as *const [u8; 2]) };
    if ethertype != [0x08, 0x00] {
        return xdp_action::XDP_PASS;
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
