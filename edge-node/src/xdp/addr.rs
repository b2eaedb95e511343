//! Conversions between std/ipnet addresses and the kernel's 16-byte mapped form, and
//! expiries on the clock the kernel uses (`clock::now_ns`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use edge_common::{Addr16, V4_MAPPED_PREFIX_BITS, map_v4, source_key};
use ipnet::IpNet;

use crate::clock::now_ns;

pub fn addr16(ip: IpAddr) -> Addr16 {
    match ip {
        IpAddr::V4(v4) => map_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address back from its 16-byte form (IPv4-mapped addresses become IPv4).
pub fn from_addr16(a: Addr16) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Trie key data and prefix length of a network (host bits cleared).
pub fn prefix16(net: IpNet) -> (Addr16, u32) {
    let net = net.trunc();
    match net {
        IpNet::V4(n) => (
            map_v4(n.network().octets()),
            V4_MAPPED_PREFIX_BITS + u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    }
}

/// The network of a trie key.
pub fn net_from_prefix16(data: Addr16, prefix_len: u32) -> IpNet {
    let v6 = Ipv6Addr::from(data);
    if let Some(v4) = v6.to_ipv4_mapped()
        && prefix_len >= V4_MAPPED_PREFIX_BITS
    {
        let len = (prefix_len - V4_MAPPED_PREFIX_BITS).min(32) as u8;
        return IpNet::new(IpAddr::V4(v4), len).expect("prefix <= 32");
    }
    IpNet::new(IpAddr::V6(v6), prefix_len.min(128) as u8).expect("prefix <= 128")
}

/// Whether the first `len` bits of `a` and `b` agree: containment in the kernel's one
/// 16-byte address space, where `::/0` covers IPv4 too and `::ffff:10.0.0.0/104` is
/// `10.0.0.0/8`. (`IpNet::contains` keeps the families apart, the trie does not.)
pub fn prefix_matches(a: &Addr16, b: &Addr16, len: u32) -> bool {
    let x = u128::from_be_bytes(*a);
    let y = u128::from_be_bytes(*b);
    match len {
        0 => true,
        1..=127 => (x ^ y) >> (128 - len) == 0,
        _ => x == y,
    }
}

/// Whether `net` holds `ip`, in the 16-byte space.
pub fn net_holds(net: IpNet, ip: IpAddr) -> bool {
    let (data, len) = prefix16(net);
    prefix_matches(&data, &addr16(ip), len)
}

/// Absolute monotonic expiry of a TTL (0 = never).
pub fn expiry(ttl: Option<Duration>) -> u64 {
    match ttl {
        None => 0,
        Some(ttl) => now_ns().saturating_add(ttl.as_nanos().min(u64::MAX as u128) as u64),
    }
}

/// Time left before an expiry, `None` for never, zero when already expired.
pub fn remaining(expires_at_ns: u64) -> Option<Duration> {
    if expires_at_ns == 0 {
        return None;
    }
    Some(Duration::from_nanos(expires_at_ns.saturating_sub(now_ns())))
}

/// `a.b.c.d` stays IPv4 even when written as `::ffff:a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The source `ip` belongs to for budgets and scores (`xdp.ipv6_source_prefix`): an IPv4
/// address on its own, an IPv6 address as the prefix of `ipv6_prefix` bits holding it.
/// The kernel's own rule ([`source_key`]), so the two halves agree.
pub fn source_net(ip: IpAddr, ipv6_prefix: u32) -> IpNet {
    match canonical(ip) {
        IpAddr::V6(v6) if (1..128).contains(&ipv6_prefix) => IpNet::new(
            from_addr16(source_key(&v6.octets(), ipv6_prefix)),
            ipv6_prefix as u8,
        )
        .expect("prefix < 128"),
        ip => IpNet::from(ip),
    }
}

pub const UNSPECIFIED_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip() {
        for s in [
            "10.1.0.0/16",
            "192.0.2.7/32",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::/0",
        ] {
            let net: IpNet = s.parse().unwrap();
            let (data, len) = prefix16(net);
            assert_eq!(net_from_prefix16(data, len), net, "{s}");
        }
        // Host bits are cleared.
        let (_, len) = prefix16("10.1.2.3/8".parse().unwrap());
        assert_eq!(len, 104);
        assert_eq!(
            net_from_prefix16(prefix16("10.1.2.3/8".parse().unwrap()).0, 104),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn containment_is_in_one_address_space() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(net_holds("10.0.0.0/8".parse().unwrap(), ip));
        assert!(net_holds("::ffff:10.0.0.0/104".parse().unwrap(), ip));
        assert!(net_holds("::/0".parse().unwrap(), ip));
        assert!(!net_holds("11.0.0.0/8".parse().unwrap(), ip));
        assert!(!net_holds("2001:db8::/32".parse().unwrap(), ip));
        assert!(net_holds(
            "2001:db8::/32".parse().unwrap(),
            "2001:db8::1".parse().unwrap()
        ));
        assert!(net_holds("0.0.0.0/0".parse().unwrap(), ip));
        assert!(!net_holds(
            "0.0.0.0/0".parse().unwrap(),
            "2001:db8::1".parse().unwrap()
        ));
    }

    #[test]
    fn ipv6_sources_are_their_prefix_ipv4_its_address() {
        let net = |ip: &str, p| source_net(ip.parse().unwrap(), p).to_string();
        assert_eq!(net("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(net("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::/48");
        assert_eq!(net("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1/128");
        assert_eq!(net("2001:db8:1:2:aaaa::1", 0), "2001:db8:1:2:aaaa::1/128");
        assert_eq!(net("203.0.113.9", 64), "203.0.113.9/32");
        assert_eq!(net("::ffff:203.0.113.9", 64), "203.0.113.9/32");
    }

    #[test]
    fn addresses_round_trip() {
        for s in ["203.0.113.9", "2001:db8::1"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(from_addr16(addr16(ip)), ip);
        }
        assert_eq!(
            canonical("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
