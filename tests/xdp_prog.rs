//! The real, verified XDP program run by BPF_PROG_TEST_RUN over crafted packets: every
//! verdict path for IPv4 and IPv6, VLANs, IP options, extension headers, fragments,
//! truncation at every byte offset and random garbage. Each run asserts the action and
//! that exactly one counter moved, by one packet and the packet's bytes.

use std::time::Duration;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use edge_common::{REASON_COUNT, Reason, XdpConfig, flags};
use edge_node::xdp::{PinnedMaps, XdpSettings, loader};
use edge_tests::{
    BpfFs,
    packet::{self, Ext, TCP_ACK, TCP_SYN, TPID_8021AD, TPID_8021Q, V4},
    privileged,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Harness {
    ebpf: Ebpf,
    maps: PinnedMaps,
    _fs: BpfFs,
}

impl Harness {
    fn new(test: &str) -> Option<Self> {
        if !privileged(test) {
            return None;
        }
        let fs = BpfFs::new();
        let ebpf = loader::load(&fs.pin_dir()).expect("load the XDP program");
        let mut maps = PinnedMaps::open(&fs.pin_dir()).expect("open pinned maps");
        maps.set_config(&settings().kernel_config()).unwrap();
        Some(Self {
            ebpf,
            maps,
            _fs: fs,
        })
    }

    fn configure(&mut self, s: &XdpSettings) {
        self.maps.set_config(&s.kernel_config()).unwrap();
    }

    fn set_raw_config(&mut self, c: &XdpConfig) {
        self.maps.set_config(c).unwrap();
    }

    /// Runs one packet; returns the action and the single reason whose counter moved.
    fn run(&mut self, pkt: &[u8]) -> (u32, Reason) {
        let before = self.maps.counters().unwrap();
        let opts = TestRunOptions {
            data_in: Some(pkt),
            repeat: 1,
            ..Default::default()
        };
        let res = loader::program(&mut self.ebpf)
            .unwrap()
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN");
        let after = self.maps.counters().unwrap();
        let moved: Vec<Reason> = Reason::ALL
            .into_iter()
            .filter(|r| after[*r as usize] != before[*r as usize])
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "exactly one counter moves per packet: {moved:?}"
        );
        let r = moved[0];
        assert_eq!(after[r as usize].packets - before[r as usize].packets, 1);
        assert_eq!(
            after[r as usize].bytes - before[r as usize].bytes,
            pkt.len() as u64,
            "bytes counted for {r:?}"
        );
        let expected_action = if r.is_drop() { XDP_DROP } else { XDP_PASS };
        assert_eq!(res.return_value, expected_action, "action for {r:?}");
        (res.return_value, r)
    }

    fn reason(&mut self, pkt: &[u8]) -> Reason {
        self.run(pkt).1
    }
}

/// Defaults with budgets small enough to exhaust in a test.
fn settings() -> XdpSettings {
    let mut s = XdpSettings::default();
    s.rate.packets_per_sec = 1000;
    s.rate.packets_burst = 50;
    s.rate.syn_per_sec = 1;
    s.rate.syn_burst = 3;
    s.rate.quic_per_sec = 1;
    s.rate.quic_burst = 2;
    s.rate.quic_ports = vec![443, 8443];
    s
}

const V4_SRC: [u8; 4] = [203, 0, 113, 10];
fn v6_src(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[5] = 0xaa; // 2001:db8:aa::/48
    a[15] = last;
    a
}

fn v4_udp(src: [u8; 4], port: u16) -> Vec<u8> {
    packet::v4(&[], &V4::from(src), &packet::udp(port))
}
fn v6_udp(src: [u8; 16], port: u16) -> Vec<u8> {
    packet::v6(&[], src, &[], &packet::udp(port))
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

#[test]
fn unmatched_traffic_passes_and_non_ip_is_counted_apart() {
    let Some(mut h) = Harness::new("unmatched_traffic_passes") else {
        return;
    };
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::Pass);
    assert_eq!(h.reason(&v6_udp(v6_src(1), 53)), Reason::Pass);
    assert_eq!(
        h.reason(&packet::v4(&[], &V4::from(V4_SRC), &packet::icmp_echo())),
        Reason::Pass
    );
    assert_eq!(
        h.reason(&packet::v6(&[], v6_src(1), &[], &packet::icmpv6_echo())),
        Reason::Pass
    );
    assert_eq!(h.reason(&packet::arp()), Reason::PassNotIp);
    // A zero config (as after the map is created) enforces nothing.
    h.set_raw_config(&XdpConfig::default());
    h.maps.block(net("0.0.0.0/0"), None).unwrap();
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::Pass);
}

#[test]
fn allow_beats_block_and_blocks_expire() {
    let Some(mut h) = Harness::new("allow_beats_block") else {
        return;
    };
    h.maps.block(net("203.0.113.0/24"), None).unwrap();
    h.maps.block(net("2001:db8:aa::/48"), None).unwrap();
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::DropBlocked);
    assert_eq!(h.reason(&v6_udp(v6_src(7), 53)), Reason::DropBlocked);
    assert_eq!(h.reason(&v4_udp([203, 0, 114, 1], 53)), Reason::Pass);

    // The allow list wins even over a longer block prefix.
    h.maps.allow(net("203.0.113.8/29")).unwrap();
    h.maps.block(net("203.0.113.10/32"), None).unwrap();
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::PassAllowed);
    h.maps.allow(net("2001:db8:aa::7/128")).unwrap();
    assert_eq!(h.reason(&v6_udp(v6_src(7), 53)), Reason::PassAllowed);
    assert_eq!(h.reason(&v6_udp(v6_src(8), 53)), Reason::DropBlocked);

    // An expired block no longer drops.
    assert!(h.maps.unallow(net("203.0.113.8/29")).unwrap());
    assert!(h.maps.unblock(net("203.0.113.0/24")).unwrap());
    h.maps
        .block(net("203.0.113.10/32"), Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::DropBlocked);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::Pass);

    // Feature switch: with BLOCK off, blocks are ignored.
    let mut c = settings().kernel_config();
    c.flags &= !flags::BLOCK;
    h.set_raw_config(&c);
    assert_eq!(h.reason(&v6_udp(v6_src(8), 53)), Reason::Pass);
}

#[test]
fn threat_scores_drop_at_threshold_until_expiry() {
    let Some(mut h) = Harness::new("threat_scores") else {
        return;
    };
    let v4: std::net::IpAddr = "203.0.113.10".parse().unwrap();
    let v6: std::net::IpAddr = "2001:db8:aa::9".parse().unwrap();
    h.maps.set_score(v4, 99, None).unwrap();
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::Pass);
    h.maps.set_score(v4, 100, None).unwrap();
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::DropThreat);
    h.maps
        .set_score(v6, 250, Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(h.reason(&v6_udp(v6_src(9), 53)), Reason::DropThreat);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.reason(&v6_udp(v6_src(9), 53)), Reason::Pass);

    // The threshold is read per packet: raising it lets the source through at once.
    let mut s = settings();
    s.drop_threshold = 101;
    h.configure(&s);
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::Pass);
    // Threshold 0 disables the check.
    s.drop_threshold = 0;
    h.configure(&s);
    h.maps.set_score(v4, u32::MAX, None).unwrap();
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::Pass);
    // Score 0 clears.
    h.configure(&settings());
    h.maps.set_score(v4, 0, None).unwrap();
    assert_eq!(h.reason(&v4_udp(V4_SRC, 53)), Reason::Pass);
}

#[test]
fn budgets_per_source_and_class() {
    let Some(mut h) = Harness::new("budgets_per_source_and_class") else {
        return;
    };
    // TCP SYN: burst 3, then dropped; a SYN-ACK or plain ACK is not a SYN.
    let syn4 = packet::v4(&[], &V4::from(V4_SRC), &packet::tcp(TCP_SYN));
    let syn6 = packet::v6(&[], v6_src(2), &[], &packet::tcp(TCP_SYN));
    for _ in 0..3 {
        assert_eq!(h.reason(&syn4), Reason::Pass);
        assert_eq!(h.reason(&syn6), Reason::Pass);
    }
    assert_eq!(h.reason(&syn4), Reason::DropSynRate);
    assert_eq!(h.reason(&syn6), Reason::DropSynRate);
    let synack = packet::v4(&[], &V4::from(V4_SRC), &packet::tcp(TCP_SYN | TCP_ACK));
    assert_eq!(h.reason(&synack), Reason::Pass);
    // Another source has its own budget.
    let other = packet::v4(&[], &V4::from([203, 0, 113, 11]), &packet::tcp(TCP_SYN));
    assert_eq!(h.reason(&other), Reason::Pass);

    // QUIC ports: burst 2; another UDP port is not charged.
    for port in [443, 8443] {
        let src = [192, 0, 2, (port / 100) as u8];
        assert_eq!(h.reason(&v4_udp(src, port)), Reason::Pass);
        assert_eq!(h.reason(&v4_udp(src, port)), Reason::Pass);
        assert_eq!(h.reason(&v4_udp(src, port)), Reason::DropQuicRate);
        assert_eq!(h.reason(&v4_udp(src, 53)), Reason::Pass);
    }
    assert_eq!(h.reason(&v6_udp(v6_src(3), 443)), Reason::Pass);
    assert_eq!(h.reason(&v6_udp(v6_src(3), 443)), Reason::Pass);
    assert_eq!(h.reason(&v6_udp(v6_src(3), 443)), Reason::DropQuicRate);

    // All packets: burst 50 at 10/s. Sent back to back, 50 pass, plus one per 100 ms
    // that the loop takes (measured, not assumed: the machine may be busy).
    let mut s = settings();
    s.rate.packets_per_sec = 10;
    s.rate.packets_burst = 50;
    h.configure(&s);
    let src = [198, 18, 0, 1];
    // The same budget for an IPv6 source, which has a bucket of its own.
    for (family, pkt) in [("IPv4", v4_udp(src, 53)), ("IPv6", v6_udp(v6_src(9), 53))] {
        let mut passed = 0u64;
        let started = std::time::Instant::now();
        for _ in 0..200 {
            match h.reason(&pkt) {
                Reason::Pass => passed += 1,
                Reason::DropRate => {}
                r => panic!("{family}: unexpected {r:?}"),
            }
        }
        let refill = (started.elapsed().as_millis() / 100) as u64 + 2;
        assert!(
            passed >= 50 && passed <= 50 + refill,
            "{family}: passed {passed}, refill bound {refill}"
        );
    }

    // With rate limiting switched off nothing is charged.
    let mut s = settings();
    s.rate.packets_per_sec = 0;
    s.rate.syn_per_sec = 0;
    s.rate.quic_per_sec = 0;
    h.configure(&s);
    assert_eq!(h.reason(&syn4), Reason::Pass);
    assert_eq!(h.reason(&v4_udp(src, 53)), Reason::Pass);
}

#[test]
fn vlan_tags_options_and_extension_headers_are_followed() {
    let Some(mut h) = Harness::new("vlan_options_ext") else {
        return;
    };
    let mut s = settings();
    s.rate.syn_burst = 1;
    h.configure(&s);
    h.maps.block(net("203.0.113.0/24"), None).unwrap();
    h.maps.block(net("2001:db8:aa::/48"), None).unwrap();
    for vlans in [
        &[][..],
        &[TPID_8021Q],
        &[TPID_8021AD, TPID_8021Q],
        &[TPID_8021Q, TPID_8021Q],
    ] {
        let p4 = packet::v4(vlans, &V4::from(V4_SRC), &packet::udp(53));
        let p6 = packet::v6(vlans, v6_src(1), &[], &packet::udp(53));
        assert_eq!(h.reason(&p4), Reason::DropBlocked, "vlans {vlans:x?}");
        assert_eq!(h.reason(&p6), Reason::DropBlocked, "vlans {vlans:x?}");
    }
    // A third tag is beyond what the program follows: treated as non-IP, passed.
    let triple = packet::v4(
        &[TPID_8021AD, TPID_8021Q, TPID_8021Q],
        &V4::from(V4_SRC),
        &packet::udp(53),
    );
    assert_eq!(h.reason(&triple), Reason::PassNotIp);

    // The transport header is found behind IPv4 options of every length: the second SYN
    // of a source is over its budget of 1.
    for words in 0..=10u8 {
        let mut ip = V4::from([192, 0, 2, 100 + words]);
        ip.option_words = words;
        let syn = packet::v4(&[TPID_8021Q], &ip, &packet::tcp(TCP_SYN));
        assert_eq!(h.reason(&syn), Reason::Pass, "{words} option words");
        assert_eq!(h.reason(&syn), Reason::DropSynRate, "{words} option words");
    }
    // ... and behind IPv6 extension headers.
    let chains: [&[Ext]; 5] = [
        &[Ext::HopByHop],
        &[Ext::HopByHop, Ext::DestOpts, Ext::Routing],
        &[Ext::Fragment(0)],
        &[Ext::Ah],
        &[
            Ext::HopByHop,
            Ext::Routing,
            Ext::Fragment(0),
            Ext::Ah,
            Ext::DestOpts,
        ],
    ];
    for (i, chain) in chains.iter().enumerate() {
        let mut src = v6_src(0);
        src[1] = 0x02; // outside the blocked /48
        src[7] = i as u8; // a /64 (a source) of its own
        let syn = packet::v6(
            &[TPID_8021AD, TPID_8021Q],
            src,
            chain,
            &packet::tcp(TCP_SYN),
        );
        assert_eq!(h.reason(&syn), Reason::Pass, "{chain:?}");
        assert_eq!(h.reason(&syn), Reason::DropSynRate, "{chain:?}");
    }
}

#[test]
fn fragments_keep_source_policy_without_transport_budgets() {
    let Some(mut h) = Harness::new("fragments") else {
        return;
    };
    let mut s = settings();
    s.rate.syn_burst = 1;
    h.configure(&s);
    let src = [192, 0, 2, 50];
    // A later fragment carries no TCP header: it is not a SYN and not charged as one.
    let mut frag = V4::from(src);
    frag.frag_offset = 185;
    let later = packet::v4(&[], &frag, &packet::tcp(TCP_SYN));
    let first = {
        let mut ip = V4::from(src);
        ip.more_fragments = true;
        packet::v4(&[], &ip, &packet::tcp(TCP_SYN))
    };
    assert_eq!(h.reason(&first), Reason::Pass);
    assert_eq!(h.reason(&first), Reason::DropSynRate);
    assert_eq!(h.reason(&later), Reason::Pass);
    let later6 = packet::v6(
        &[],
        v6_src(60),
        &[Ext::Fragment(100)],
        &packet::tcp(TCP_SYN),
    );
    assert_eq!(h.reason(&later6), Reason::Pass);
    assert_eq!(h.reason(&later6), Reason::Pass);
    // Source policy still applies to fragments.
    h.maps.block(net("192.0.2.50/32"), None).unwrap();
    h.maps.block(net("2001:db8:aa::3c/128"), None).unwrap();
    assert_eq!(h.reason(&later), Reason::DropBlocked);
    assert_eq!(h.reason(&later6), Reason::DropBlocked);
}

#[test]
fn malformed_headers_get_the_configured_verdict() {
    let Some(mut h) = Harness::new("malformed_headers") else {
        return;
    };
    let good = packet::v4(&[], &V4::from(V4_SRC), &packet::tcp(TCP_SYN));
    let l3 = 14;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut p = good.clone();
    p[l3] = 0x44; // IHL 4 < 5
    cases.push(("ihl below 5", p));
    let mut p = good.clone();
    p[l3] = 0x65; // version 6 in an IPv4 frame
    cases.push(("wrong version", p));
    let mut p = good.clone();
    p[l3 + 2..l3 + 4].copy_from_slice(&1500u16.to_be_bytes());
    cases.push(("total length beyond the frame", p));
    let mut p = good.clone();
    p[l3 + 2..l3 + 4].copy_from_slice(&10u16.to_be_bytes());
    cases.push(("total length below the header", p));
    let mut p6 = packet::v6(&[], v6_src(1), &[], &packet::udp(53));
    p6[l3] = 0x40;
    cases.push(("ipv6 frame with version 4", p6));

    for (what, pkt) in &cases {
        assert_eq!(h.reason(pkt), Reason::PassMalformed, "{what}");
    }
    let mut s = settings();
    s.drop_malformed = true;
    h.configure(&s);
    for (what, pkt) in &cases {
        assert_eq!(h.reason(pkt), Reason::DropMalformed, "{what}");
    }

    // A bad TCP header behind a good IP header: the source is known, so source policy
    // applies first; otherwise the malformed verdict.
    let mut bad_tcp = good.clone();
    bad_tcp[l3 + 20 + 12] = 4 << 4; // data offset 4 < 5
    assert_eq!(h.reason(&bad_tcp), Reason::DropMalformed);
    h.maps.block(net("203.0.113.10/32"), None).unwrap();
    assert_eq!(h.reason(&bad_tcp), Reason::DropBlocked);
}

/// Every prefix of a valid frame, from the Ethernet header on, gets a defined verdict.
#[test]
fn truncation_at_every_offset_is_malformed_never_a_crash() {
    let Some(mut h) = Harness::new("truncation_at_every_offset") else {
        return;
    };
    let mut ip = V4::from(V4_SRC);
    ip.option_words = 3;
    let frames = [
        packet::v4(&[TPID_8021AD, TPID_8021Q], &ip, &packet::tcp(TCP_SYN)),
        packet::v4(&[], &V4::from(V4_SRC), &packet::udp(443)),
        packet::v4(&[TPID_8021Q], &V4::from(V4_SRC), &packet::icmp_echo()),
        packet::v6(
            &[TPID_8021Q],
            v6_src(1),
            &[Ext::HopByHop, Ext::Fragment(0), Ext::Ah],
            &packet::tcp(TCP_SYN),
        ),
        packet::v6(&[], v6_src(1), &[], &packet::icmpv6_echo()),
    ];
    for drop_malformed in [false, true] {
        let mut s = settings();
        s.drop_malformed = drop_malformed;
        s.rate.packets_per_sec = 0;
        s.rate.syn_per_sec = 0;
        s.rate.quic_per_sec = 0;
        h.configure(&s);
        let expected = if drop_malformed {
            Reason::DropMalformed
        } else {
            Reason::PassMalformed
        };
        for frame in &frames {
            assert_eq!(h.reason(frame), Reason::Pass, "the whole frame is fine");
            for len in 14..frame.len() {
                assert_eq!(
                    h.reason(&frame[..len]),
                    expected,
                    "frame of {} bytes cut to {len}",
                    frame.len()
                );
            }
        }
    }
    // Below the Ethernet header the kernel refuses to run XDP at all.
    let opts = TestRunOptions {
        data_in: Some(&frames[0][..13]),
        ..Default::default()
    };
    assert!(
        loader::program(&mut h.ebpf)
            .unwrap()
            .test_run(opts)
            .is_err()
    );
}

#[test]
fn random_garbage_gets_a_verdict_and_a_count() {
    let Some(mut h) = Harness::new("random_garbage") else {
        return;
    };
    h.maps.block(net("0.0.0.0/1"), None).unwrap();
    let mut rng = packet::Rng::new(0x5eed_ed9e);
    let before = h.maps.counters().unwrap();
    let runs = 3000u64;
    for i in 0..runs {
        let len = 14 + rng.below(300) as usize;
        let mut pkt: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Most garbage should get past the EtherType to exercise the IP parsers.
        match i % 4 {
            0 => pkt[12..14].copy_from_slice(&[0x08, 0x00]),
            1 => pkt[12..14].copy_from_slice(&[0x86, 0xdd]),
            2 => pkt[12..14].copy_from_slice(&[0x81, 0x00]),
            _ => {}
        }
        if i % 8 == 0 && len > 15 {
            pkt[14] = 0x45; // a plausible IPv4 start
        }
        h.run(&pkt);
    }
    let after = h.maps.counters().unwrap();
    let total: u64 = (0..REASON_COUNT as usize)
        .map(|i| after[i].packets - before[i].packets)
        .sum();
    assert_eq!(total, runs);
}

#[test]
fn config_changes_apply_without_reloading() {
    let Some(mut h) = Harness::new("config_changes_apply") else {
        return;
    };
    let syn = packet::v4(&[], &V4::from([192, 0, 2, 77]), &packet::tcp(TCP_SYN));
    let mut s = settings();
    s.rate.syn_burst = 1;
    h.configure(&s);
    assert_eq!(h.reason(&syn), Reason::Pass);
    assert_eq!(h.reason(&syn), Reason::DropSynRate);
    s.rate.syn_per_sec = 0;
    h.configure(&s);
    assert_eq!(h.reason(&syn), Reason::Pass);
}

/// One longest-prefix lookup decides, so every entry carries what its covering prefixes
/// say: an allow prefix covers the blocks and scores inside it, a block covers the hosts
/// inside it, and the later of two block expiries wins. Edits in any order keep that.
#[test]
fn rules_inside_prefixes_inherit_allow_and_block() {
    let Some(mut h) = Harness::new("rules_inside_prefixes_inherit") else {
        return;
    };
    let host: std::net::IpAddr = "203.0.113.10".parse().unwrap();
    let pkt = v4_udp(V4_SRC, 53);
    // A score below the threshold on a host inside a blocked prefix: the block applies.
    h.maps.set_score(host, 1, None).unwrap();
    assert_eq!(h.reason(&pkt), Reason::Pass);
    h.maps.block(net("203.0.112.0/23"), None).unwrap();
    assert_eq!(h.reason(&pkt), Reason::DropBlocked);
    // An allow prefix added afterwards, around both, wins.
    h.maps.allow(net("203.0.0.0/16")).unwrap();
    assert_eq!(h.reason(&pkt), Reason::PassAllowed);
    assert!(h.maps.unallow(net("203.0.0.0/16")).unwrap());
    assert_eq!(h.reason(&pkt), Reason::DropBlocked);
    // A short block inside a permanent one: when it expires the outer one still holds.
    h.maps
        .block(net("203.0.113.0/24"), Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.reason(&pkt), Reason::DropBlocked);
    // Lifting the outer block leaves only the expired inner one: traffic passes.
    assert!(h.maps.unblock(net("203.0.112.0/23")).unwrap());
    assert_eq!(h.reason(&pkt), Reason::Pass);
    // Scores are the host's own: raising it drops, clearing it passes again.
    h.maps.set_score(host, 100, None).unwrap();
    assert_eq!(h.reason(&pkt), Reason::DropThreat);
    h.maps.set_score(host, 0, None).unwrap();
    assert_eq!(h.reason(&pkt), Reason::Pass);
    // The trie has one 16-byte address space: an IPv4-mapped IPv6 prefix is the IPv4
    // prefix, and hosts inside it are refreshed like any others.
    h.maps.set_score(host, 1, None).unwrap();
    h.maps.block(net("::ffff:203.0.113.0/120"), None).unwrap();
    assert_eq!(h.reason(&pkt), Reason::DropBlocked);
    assert!(h.maps.unblock(net("203.0.113.0/24")).unwrap());
    assert_eq!(h.reason(&pkt), Reason::Pass);
    h.maps.set_score(host, 0, None).unwrap();
    // The sweep removes what expired; the listing shows what is in force.
    h.maps
        .block(net("198.51.100.0/24"), Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(h.maps.purge_expired().unwrap(), 1);
    let l = h.maps.list().unwrap();
    assert!(
        l.block.is_empty() && l.allow.is_empty() && l.scores.is_empty(),
        "{l:?}"
    );
}

/// A transport header cut short: its first `len` bytes.
fn truncated(l4: &packet::L4, len: usize) -> packet::L4 {
    packet::L4 {
        proto: l4.proto,
        bytes: l4.bytes[..len].to_vec(),
    }
}

/// Budgets apply to what the kernel would reassemble. A first fragment must carry its
/// whole transport header (RFC 1858, RFC 7112): one that does not is dropped, whatever
/// bytes follow the datagram in the frame; a datagram whose transport header is cut
/// short, and every later fragment, is charged to the packet budget.
#[test]
fn first_fragments_without_a_transport_header_are_dropped() {
    let Some(mut h) = Harness::new("first_fragments_without_l4") else {
        return;
    };
    let mut s = settings();
    s.rate.syn_burst = 1;
    h.configure(&s);
    // An IPv4 first fragment with 8 bytes of TCP: the flags byte is in the next fragment.
    let tcp8 = truncated(&packet::tcp(TCP_SYN), 8);
    let mut ip = V4::from([192, 0, 2, 61]);
    ip.more_fragments = true;
    let first4 = packet::v4(&[], &ip, &tcp8);
    for _ in 0..3 {
        assert_eq!(h.reason(&first4), Reason::DropFragmentHeader);
    }
    // The same behind Ethernet padding dressed up as the rest of an ACK: bytes past the
    // IP datagram are not part of it (the kernel trims them).
    let mut padded = first4.clone();
    padded.resize(60, 0);
    padded[14 + 20 + 12] = 5 << 4;
    padded[14 + 20 + 13] = TCP_ACK;
    assert_eq!(h.reason(&padded), Reason::DropFragmentHeader);
    // IPv6: 8 bytes of TCP after a first-fragment header, and a header chain that goes
    // on into the next fragment.
    let first6 = packet::v6(&[], v6_src(61), &[Ext::Fragment(0)], &tcp8);
    assert_eq!(h.reason(&first6), Reason::DropFragmentHeader);
    let chain_cut = packet::L4 {
        proto: 60, // destination options, 4 of its 8 bytes
        bytes: vec![6, 0, 1, 0],
    };
    let first6 = packet::v6(&[], v6_src(62), &[Ext::Fragment(0)], &chain_cut);
    assert_eq!(h.reason(&first6), Reason::DropFragmentHeader);
    // A first fragment with its whole header is judged by it: the SYN budget applies.
    let whole = packet::v4(&[], &ip, &packet::tcp(TCP_SYN));
    assert_eq!(h.reason(&whole), Reason::Pass);
    assert_eq!(h.reason(&whole), Reason::DropSynRate);
    // Without budgets there is nothing to escape: the malformed verdict.
    let mut off = settings();
    off.rate.packets_per_sec = 0;
    off.rate.syn_per_sec = 0;
    off.rate.quic_per_sec = 0;
    h.configure(&off);
    assert_eq!(h.reason(&first4), Reason::PassMalformed);
}

#[test]
fn truncated_transport_headers_and_later_fragments_are_charged() {
    let Some(mut h) = Harness::new("truncated_l4_charged") else {
        return;
    };
    let mut s = settings();
    s.rate.packets_per_sec = 1;
    s.rate.packets_burst = 4;
    h.configure(&s);
    let tcp8 = truncated(&packet::tcp(TCP_SYN), 8);
    let mut later4 = V4::from([192, 0, 2, 71]);
    later4.frag_offset = 1;
    let cases = [
        (
            "IPv4, 8 bytes of TCP",
            packet::v4(&[], &V4::from([192, 0, 2, 70]), &tcp8),
            Reason::PassMalformed,
        ),
        (
            "IPv6, 8 bytes of TCP",
            packet::v6(&[], v6_in(70, 1), &[], &tcp8),
            Reason::PassMalformed,
        ),
        (
            "IPv4 later fragment",
            packet::v4(&[], &later4, &packet::tcp(TCP_SYN)),
            Reason::Pass,
        ),
        (
            "IPv6 later fragment",
            packet::v6(
                &[],
                v6_in(71, 1),
                &[Ext::Fragment(1)],
                &packet::tcp(TCP_SYN),
            ),
            Reason::Pass,
        ),
    ];
    for (what, pkt, within) in &cases {
        for i in 0..4 {
            assert_eq!(h.reason(pkt), *within, "{what}: packet {i}");
        }
        assert_eq!(h.reason(pkt), Reason::DropRate, "{what}: over the budget");
    }
}

#[test]
fn ipv6_extension_chains_longer_than_followed_are_dropped() {
    let Some(mut h) = Harness::new("ipv6_long_chains") else {
        return;
    };
    let mut s = settings();
    s.rate.syn_burst = 1;
    h.configure(&s);
    let six = [
        Ext::HopByHop,
        Ext::DestOpts,
        Ext::Routing,
        Ext::Fragment(0),
        Ext::Ah,
        Ext::DestOpts,
    ];
    // Six extension headers are followed to the TCP header: the SYN budget applies.
    let syn = packet::v6(&[], v6_src(80), &six, &packet::tcp(TCP_SYN));
    assert_eq!(h.reason(&syn), Reason::Pass);
    assert_eq!(h.reason(&syn), Reason::DropSynRate);
    // A seventh is beyond the bound: dropped, counted apart, never a free pass.
    let mut seven = six.to_vec();
    seven.push(Ext::DestOpts);
    let syn = packet::v6(&[], v6_src(81), &seven, &packet::tcp(TCP_SYN));
    assert_eq!(h.reason(&syn), Reason::DropExtChain);
    let udp = packet::v6(&[], v6_src(82), &seven, &packet::udp(53));
    assert_eq!(h.reason(&udp), Reason::DropExtChain);
    // Source rules still come first.
    h.maps.allow(net("2001:db8:aa::51/128")).unwrap();
    assert_eq!(h.reason(&syn), Reason::PassAllowed);
}

/// 2001:db8:aa:`net`::12:0:0:`host`, inside 2001:db8:aa:`net`::/64.
fn v6_in(net: u8, host: u8) -> [u8; 16] {
    let mut a = v6_src(host);
    a[7] = net;
    a[8] = 0x12;
    a
}

/// An IPv6 source is its prefix (`xdp.ipv6_source_prefix`, /64 by default): addresses
/// rotated inside it share one budget and one score; another prefix has its own.
#[test]
fn ipv6_sources_share_budgets_and_scores_per_prefix() {
    let Some(mut h) = Harness::new("ipv6_source_prefix") else {
        return;
    };
    let mut s = settings();
    s.rate.syn_burst = 1;
    h.configure(&s);
    let syn = |a| packet::v6(&[], a, &[], &packet::tcp(TCP_SYN));
    assert_eq!(h.reason(&syn(v6_in(1, 1))), Reason::Pass);
    assert_eq!(h.reason(&syn(v6_in(1, 2))), Reason::DropSynRate);
    assert_eq!(h.reason(&syn(v6_in(1, 3))), Reason::DropSynRate);
    assert_eq!(h.reason(&syn(v6_in(2, 1))), Reason::Pass);
    // IPv4 sources stay one per address.
    let syn4 = |a| packet::v4(&[], &V4::from(a), &packet::tcp(TCP_SYN));
    assert_eq!(h.reason(&syn4([192, 0, 2, 91])), Reason::Pass);
    assert_eq!(h.reason(&syn4([192, 0, 2, 92])), Reason::Pass);

    // A score set for one address is its /64's.
    let ip = |a: [u8; 16]| std::net::IpAddr::from(a);
    h.maps.set_score(ip(v6_in(3, 1)), 100, None).unwrap();
    assert_eq!(h.reason(&v6_udp(v6_in(3, 2), 53)), Reason::DropThreat);
    assert_eq!(h.reason(&v6_udp(v6_in(4, 1), 53)), Reason::Pass);
    let l = h.maps.list().unwrap();
    assert_eq!(
        l.scores.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        [(net("2001:db8:aa:3::/64"), 100)]
    );
    // A host's own rule still wins inside it; clearing through any address clears it.
    h.maps.allow(net("2001:db8:aa:3:1200::9/128")).unwrap();
    assert_eq!(h.reason(&v6_udp(v6_in(3, 9), 53)), Reason::PassAllowed);
    h.maps.set_score(ip(v6_in(3, 7)), 0, None).unwrap();
    assert_eq!(h.reason(&v6_udp(v6_in(3, 2), 53)), Reason::Pass);

    // The prefix is configuration, read per packet: a /48 puts 2001:db8:aa:5:: and
    // 2001:db8:aa:6:: together; /128 sets every address apart.
    s.ipv6_source_prefix = 48;
    h.configure(&s);
    assert_eq!(h.reason(&syn(v6_in(5, 1))), Reason::Pass);
    assert_eq!(h.reason(&syn(v6_in(6, 1))), Reason::DropSynRate);
    s.ipv6_source_prefix = 128;
    h.configure(&s);
    assert_eq!(h.reason(&syn(v6_in(7, 1))), Reason::Pass);
    assert_eq!(h.reason(&syn(v6_in(7, 2))), Reason::Pass);
    assert_eq!(h.reason(&syn(v6_in(7, 2))), Reason::DropSynRate);
}
