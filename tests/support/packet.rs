//! Crafted frames for BPF_PROG_TEST_RUN: Ethernet with 0–n VLAN tags, IPv4 with options
//! and fragments, IPv6 with extension headers, TCP/UDP/ICMP. Checksums are left zero: the
//! program never verifies them (the kernel stack does, after XDP).

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

/// A transport header plus a little payload, with its IP protocol number.
#[derive(Clone, Debug)]
pub struct L4 {
    pub proto: u8,
    pub bytes: Vec<u8>,
}

pub fn tcp(flags: u8) -> L4 {
    let mut b = vec![0u8; 20];
    b[0..2].copy_from_slice(&40000u16.to_be_bytes());
    b[2..4].copy_from_slice(&443u16.to_be_bytes());
    b[12] = 5 << 4; // data offset: 5 words
    b[13] = flags;
    b[14..16].copy_from_slice(&64240u16.to_be_bytes());
    L4 { proto: 6, bytes: b }
}

pub fn udp(dst_port: u16) -> L4 {
    let mut b = vec![0u8; 8];
    b[0..2].copy_from_slice(&50000u16.to_be_bytes());
    b[2..4].copy_from_slice(&dst_port.to_be_bytes());
    b.extend_from_slice(b"payload!");
    let len = b.len() as u16;
    b[4..6].copy_from_slice(&len.to_be_bytes());
    L4 {
        proto: 17,
        bytes: b,
    }
}

pub fn icmp_echo() -> L4 {
    L4 {
        proto: 1,
        bytes: vec![8, 0, 0, 0, 0, 1, 0, 1],
    }
}

pub fn icmpv6_echo() -> L4 {
    L4 {
        proto: 58,
        bytes: vec![128, 0, 0, 0, 0, 1, 0, 1],
    }
}

fn ethernet(vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut b = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in vlans.iter().enumerate() {
        b.extend_from_slice(&tpid.to_be_bytes());
        b.extend_from_slice(&(100 + i as u16).to_be_bytes()); // TCI: VLAN id
    }
    b.extend_from_slice(&ethertype.to_be_bytes());
    b
}

/// IPv4 header fields a test may vary.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: [u8; 4],
    /// 32-bit words of options (0..=10), filled with NOPs and an end-of-list.
    pub option_words: u8,
    /// Fragment offset in 8-byte units (non-zero: not the first fragment).
    pub frag_offset: u16,
    pub more_fragments: bool,
}

impl V4 {
    pub fn from(src: [u8; 4]) -> Self {
        Self {
            src,
            option_words: 0,
            frag_offset: 0,
            more_fragments: false,
        }
    }
}

pub fn v4(vlans: &[u16], ip: &V4, l4: &L4) -> Vec<u8> {
    let mut b = ethernet(vlans, 0x0800);
    let ihl = 5 + ip.option_words;
    let total = ihl as usize * 4 + l4.bytes.len();
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | ihl;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    let frag = ip.frag_offset & 0x1fff | if ip.more_fragments { 0x2000 } else { 0 };
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = l4.proto;
    h[12..16].copy_from_slice(&ip.src);
    h[16..20].copy_from_slice(&[198, 51, 100, 1]);
    let mut opts = vec![1u8; ip.option_words as usize * 4]; // NOP
    if let Some(last) = opts.last_mut() {
        *last = 0; // end of option list
    }
    h.extend_from_slice(&opts);
    b.extend_from_slice(&h);
    b.extend_from_slice(&l4.bytes);
    b
}

/// IPv6 extension headers.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    DestOpts,
    Routing,
    /// Fragment header with this offset (8-byte units); 0 = first fragment.
    Fragment(u16),
    Ah,
}

impl Ext {
    fn proto(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment(_) => 44,
            Ext::Ah => 51,
            Ext::DestOpts => 60,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // 16 bytes: hdr ext len 1 (in 8-byte units beyond the first 8), PadN options.
            Ext::HopByHop | Ext::DestOpts => {
                let mut b = vec![next, 1, 1, 12];
                b.extend_from_slice(&[0u8; 12]);
                b
            }
            // Type 0 segments left 0: 8 bytes plus one 16-byte address.
            Ext::Routing => {
                let mut b = vec![next, 2, 0, 0, 0, 0, 0, 0];
                b.extend_from_slice(&[0u8; 16]);
                b
            }
            Ext::Fragment(offset) => {
                let mut b = vec![next, 0];
                b.extend_from_slice(&((offset << 3) | 1).to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 7]);
                b
            }
            // AH length is in 4-byte units minus 2: 4 → 24 bytes.
            Ext::Ah => {
                let mut b = vec![next, 4, 0, 0];
                b.extend_from_slice(&[0u8; 20]);
                b
            }
        }
    }
}

pub fn v6(vlans: &[u16], src: [u8; 16], exts: &[Ext], l4: &L4) -> Vec<u8> {
    let mut b = ethernet(vlans, 0x86dd);
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(l4.proto, |e| e.proto());
        chain.extend_from_slice(&ext.bytes(next));
    }
    chain.extend_from_slice(&l4.bytes);
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(chain.len() as u16).to_be_bytes());
    h[6] = exts.first().map_or(l4.proto, |e| e.proto());
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    let mut dst = [0u8; 16];
    dst[0] = 0x20;
    dst[1] = 0x01;
    dst[2] = 0x0d;
    dst[3] = 0xb8;
    dst[15] = 1;
    h[24..40].copy_from_slice(&dst);
    b.extend_from_slice(&h);
    b.extend_from_slice(&chain);
    b
}

pub fn arp() -> Vec<u8> {
    let mut b = ethernet(&[], 0x0806);
    b.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    b.extend_from_slice(&[0u8; 20]);
    b
}

/// A small deterministic PRNG (xorshift64*) for garbage inputs: reproducible by seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
