//! Which region a client belongs to: the first `[[geo.region]]` whose prefixes hold its
//! address, else `geo.default_region`. Routes with several pools send the client to its
//! region's pool first.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoSettings {
    #[serde(default = "default_region")]
    pub default_region: String,
    /// Region tables, first match wins.
    #[serde(default)]
    pub region: Vec<RegionSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSettings {
    pub name: String,
    pub cidrs: Vec<IpNet>,
}

fn default_region() -> String {
    "default".into()
}

impl Default for GeoSettings {
    fn default() -> Self {
        Self {
            default_region: default_region(),
            region: Vec::new(),
        }
    }
}

impl GeoSettings {
    pub fn region_of(&self, ip: IpAddr) -> &str {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.region
            .iter()
            .find(|r| r.cidrs.iter().any(|n| n.contains(&ip)))
            .map_or(self.default_region.as_str(), |r| r.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_table_else_default() {
        let g = GeoSettings {
            default_region: "us".into(),
            region: vec![
                RegionSettings {
                    name: "eu".into(),
                    cidrs: vec!["10.1.0.0/16".parse().unwrap()],
                },
                RegionSettings {
                    name: "ap".into(),
                    cidrs: vec![
                        "10.0.0.0/8".parse().unwrap(),
                        "2001:db8::/32".parse().unwrap(),
                    ],
                },
            ],
        };
        assert_eq!(g.region_of("10.1.2.3".parse().unwrap()), "eu");
        assert_eq!(g.region_of("10.9.2.3".parse().unwrap()), "ap");
        assert_eq!(g.region_of("::ffff:10.9.2.3".parse().unwrap()), "ap");
        assert_eq!(g.region_of("2001:db8::1".parse().unwrap()), "ap");
        assert_eq!(g.region_of("192.0.2.1".parse().unwrap()), "us");
    }
}
