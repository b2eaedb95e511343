//! Bounds-checked header parsing. Every read goes through [`Frame::at`], which proves to
//! the verifier (and to us) that the bytes lie inside the packet; nothing here can read
//! out of bounds, and every failure is a value, not a trap.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use edge_common::{Addr16, map_v4};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// IPv6 extension headers followed to the transport header. A longer chain gets
/// [`Transport::LongChain`] (a verdict of its own), never a free pass.
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// IPv4 "more fragments" flag in the flags/offset field.
const IPV4_MF: u16 = 0x2000;

#[repr(C)]
#[allow(dead_code)] // every field is kept: the struct documents the wire layout
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: [u8; 2],
}

#[repr(C)]
#[allow(dead_code)] // every field is kept: the struct documents the wire layout
struct VlanHdr {
    tci: [u8; 2],
    proto: [u8; 2],
}

#[repr(C)]
#[allow(dead_code)] // every field is kept: the struct documents the wire layout
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
#[allow(dead_code)] // every field is kept: the struct documents the wire layout
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// The first two bytes shared by hop-by-hop, routing, destination options, fragment and AH.
#[repr(C)]
#[allow(dead_code)] // every field is kept: the struct documents the wire layout
struct Ipv6ExtHdr {
    next_header: u8,
    len: u8,
    rest: [u8; 6],
}

#[repr(C)]
#[allow(dead_code)] // every field is kept: the struct documents the wire layout
struct TcpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    data_off: u8,
    flags: u8,
    window: [u8; 2],
    check: [u8; 2],
    urgent: [u8; 2],
}

#[repr(C)]
#[allow(dead_code)] // every field is kept: the struct documents the wire layout
struct UdpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    len: [u8; 2],
    check: [u8; 2],
}

#[repr(C)]
#[allow(dead_code)] // every field is kept: the struct documents the wire layout
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: [u8; 2],
}

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// What the transport layer tells the policy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with SYN and without ACK: a new connection attempt.
    TcpSyn,
    Tcp,
    Udp {
        dst_port: u16,
    },
    Icmp,
    /// A non-first fragment: no transport header to look at.
    Fragment,
    /// Another protocol.
    Other,
    /// The IP header was fine but the transport header is truncated or invalid.
    Malformed,
    /// A first fragment (more to come) without its whole transport header or IPv6
    /// header chain: what it is (a SYN?) is only known after reassembly.
    SplitHeader,
    /// An IPv6 extension-header chain longer than [`MAX_IPV6_EXT_HEADERS`].
    LongChain,
}

pub enum Parsed {
    NotIp,
    /// Ethernet, VLAN or IP header truncated or invalid: no trustworthy source address.
    Malformed,
    Ip {
        src: Addr16,
        l4: L4,
    },
}

/// Where the transport header is. It is read only when the verdict needs it (budgets):
/// a packet dropped by a source rule never pays for it.
#[derive(Clone, Copy)]
pub enum L4 {
    At {
        offset: usize,
        /// End of the IP datagram (offset in the frame): bytes after it (Ethernet
        /// padding, trailers) are not the datagram's and the kernel trims them.
        end: usize,
        proto: u8,
        /// The datagram is a first fragment with more to come.
        first_fragment: bool,
    },
    /// Known without reading further (fragment, unknown protocol, broken extension chain).
    Known(Transport),
}

struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    /// Pointer to a `T` at `offset`, if all of its bytes are inside the packet.
    #[inline(always)]
    fn at<T>(&self, offset: usize) -> Option<*const T> {
        if self.start + offset + size_of::<T>() > self.end {
            return None;
        }
        Some((self.start + offset) as *const T)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Some(eth) = frame.at::<EthHdr>(0) else {
        return Parsed::Malformed;
    };
    // SAFETY: `at` checked that the header lies inside the packet.
    let mut proto = be16(unsafe { (*eth).proto });
    let mut offset = size_of::<EthHdr>();
    // Up to two VLAN tags (802.1ad outer + 802.1Q inner, or two 802.1Q).
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let Some(vlan) = frame.at::<VlanHdr>(offset) else {
            return Parsed::Malformed;
        };
        proto = be16(unsafe { (*vlan).proto });
        offset += size_of::<VlanHdr>();
    }
    match proto {
        ETH_P_IPV4 => parse_ipv4(&frame, offset),
        ETH_P_IPV6 => parse_ipv6(&frame, offset),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4(frame: &Frame, l3: usize) -> Parsed {
    let Some(ip) = frame.at::<Ipv4Hdr>(l3) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by `at`.
    let (version_ihl, total_len, frag_off, proto, src) = unsafe {
        (
            (*ip).version_ihl,
            be16((*ip).total_len) as usize,
            be16((*ip).frag_off),
            (*ip).proto,
            (*ip).src,
        )
    };
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || header_len < size_of::<Ipv4Hdr>() {
        return Parsed::Malformed;
    }
    // The whole header (with options) and the datagram it announces must be present.
    if total_len < header_len || l3 + total_len > frame.len() {
        return Parsed::Malformed;
    }
    let src = map_v4(src);
    let l4 = if frag_off & 0x1fff != 0 {
        L4::Known(Transport::Fragment)
    } else {
        L4::At {
            offset: l3 + header_len,
            end: l3 + total_len,
            proto,
            first_fragment: frag_off & IPV4_MF != 0,
        }
    };
    Parsed::Ip { src, l4 }
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, l3: usize) -> Parsed {
    let Some(ip) = frame.at::<Ipv6Hdr>(l3) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by `at`.
    let (first, payload_len, mut next, src) = unsafe {
        (
            (*ip).version_class_flow[0],
            be16((*ip).payload_len) as usize,
            (*ip).next_header,
            (*ip).src,
        )
    };
    if first >> 4 != 6 {
        return Parsed::Malformed;
    }
    // payload_len 0 is a jumbogram (hop-by-hop option carries the length): not checked here.
    if payload_len != 0 && l3 + size_of::<Ipv6Hdr>() + payload_len > frame.len() {
        return Parsed::Malformed;
    }
    let end = if payload_len != 0 {
        l3 + size_of::<Ipv6Hdr>() + payload_len
    } else {
        frame.len()
    };
    let mut offset = l3 + size_of::<Ipv6Hdr>();
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_ext(next) {
            break;
        }
        let ext = match frame.at::<Ipv6ExtHdr>(offset) {
            Some(ext) if offset + size_of::<Ipv6ExtHdr>() <= end => ext,
            // The chain goes on past the datagram: into the next fragment (RFC 7112
            // forbids that), or nowhere.
            _ if first_fragment => return known(src, Transport::SplitHeader),
            _ => return known(src, Transport::Malformed),
        };
        // SAFETY: bounds checked by `at`.
        let (ext_next, ext_len, frag) = unsafe { ((*ext).next_header, (*ext).len, (*ext).rest) };
        let len = match next {
            IPPROTO_FRAGMENT => {
                // Fragment offset: upper 13 bits of bytes 2..4; M flag: bit 0 of byte 3.
                if be16([frag[0], frag[1]]) >> 3 != 0 {
                    return known(src, Transport::Fragment);
                }
                first_fragment = frag[1] & 1 != 0;
                8
            }
            IPPROTO_AH => (ext_len as usize + 2) * 4,
            _ => (ext_len as usize + 1) * 8,
        };
        next = ext_next;
        offset += len;
    }
    if is_ipv6_ext(next) {
        return known(src, Transport::LongChain);
    }
    Parsed::Ip {
        src,
        l4: L4::At {
            offset,
            end,
            proto: next,
            first_fragment,
        },
    }
}

#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    )
}

#[inline(always)]
fn known(src: Addr16, transport: Transport) -> Parsed {
    Parsed::Ip {
        src,
        l4: L4::Known(transport),
    }
}

/// Reads the transport header located by [`parse`].
#[inline(always)]
pub fn transport(ctx: &XdpContext, l4: L4) -> Transport {
    match l4 {
        L4::Known(t) => t,
        L4::At {
            offset,
            end,
            proto,
            first_fragment,
        } => {
            let frame = Frame {
                start: ctx.data(),
                end: ctx.data_end(),
            };
            match parse_transport(&frame, offset, end, proto) {
                // Whatever the rest of the header says arrives in a later fragment.
                Transport::Malformed if first_fragment => Transport::SplitHeader,
                t => t,
            }
        }
    }
}

/// The transport header at `l4`, which must end by `end` (the datagram's end).
#[inline(always)]
fn parse_transport(frame: &Frame, l4: usize, end: usize, proto: u8) -> Transport {
    match proto {
        IPPROTO_TCP => {
            let Some(tcp) = frame.at::<TcpHdr>(l4) else {
                return Transport::Malformed;
            };
            // SAFETY: bounds checked by `at`.
            let (data_off, flags) = unsafe { ((*tcp).data_off, (*tcp).flags) };
            let header_len = ((data_off >> 4) as usize) * 4;
            if header_len < size_of::<TcpHdr>() || l4 + header_len > end {
                return Transport::Malformed;
            }
            if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
                Transport::TcpSyn
            } else {
                Transport::Tcp
            }
        }
        IPPROTO_UDP => {
            let Some(udp) = frame.at::<UdpHdr>(l4) else {
                return Transport::Malformed;
            };
            if l4 + size_of::<UdpHdr>() > end {
                return Transport::Malformed;
            }
            // SAFETY: bounds checked by `at`.
            let dst_port = be16(unsafe { (*udp).dst_port });
            Transport::Udp { dst_port }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if frame.at::<IcmpHdr>(l4).is_none() || l4 + size_of::<IcmpHdr>() > end {
                return Transport::Malformed;
            }
            Transport::Icmp
        }
        _ => Transport::Other,
    }
}
