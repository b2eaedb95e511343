//! Which region a client belongs to: the first `[[geo.region]]` whose prefixes hold its
//! address; else, with a MaxMind-format database (GeoLite2/GeoIP2 Country or City), the
//! region its country or continent maps to; else `geo.default_region`. Routes with
//! several pools send the client to its region's pool first.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use maxminddb::{Reader, geoip2};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoSettings {
    #[serde(default = "default_region")]
    pub default_region: String,
    /// Region tables, first match wins.
    #[serde(default)]
    pub region: Vec<RegionSettings>,
    /// A MaxMind-format database, read at start and on every reload.
    #[serde(default)]
    pub maxmind_db: Option<PathBuf>,
    /// ISO 3166 country code (as in the database) → region.
    #[serde(default)]
    pub country_regions: BTreeMap<String, String>,
    /// Continent code (AF, AN, AS, EU, NA, OC, SA) → region, for countries not listed.
    #[serde(default)]
    pub continent_regions: BTreeMap<String, String>,
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
            maxmind_db: None,
            country_regions: BTreeMap::new(),
            continent_regions: BTreeMap::new(),
        }
    }
}

impl GeoSettings {
    /// Opens the database, if one is configured (a missing or corrupt file is a
    /// configuration error).
    pub fn open_db(&self) -> Result<Option<Arc<Reader<Vec<u8>>>>> {
        let Some(path) = &self.maxmind_db else {
            return Ok(None);
        };
        let reader = Reader::open_readfile(path).with_context(|| {
            format!(
                "geo.maxmind_db {}: not a readable MaxMind database",
                path.display()
            )
        })?;
        Ok(Some(Arc::new(reader)))
    }
}

/// The region lookup of one configuration.
pub struct Geo {
    settings: GeoSettings,
    db: Option<Arc<Reader<Vec<u8>>>>,
}

impl Geo {
    pub fn new(settings: &GeoSettings) -> Result<Self> {
        Ok(Self {
            db: settings.open_db()?,
            settings: settings.clone(),
        })
    }

    pub fn region_of(&self, ip: IpAddr) -> &str {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let s = &self.settings;
        if let Some(r) = s
            .region
            .iter()
            .find(|r| r.cidrs.iter().any(|n| n.contains(&ip)))
        {
            return &r.name;
        }
        if let Some(db) = &self.db
            && let Ok(found) = db.lookup(ip)
            && let Ok(Some(rec)) = found.decode::<geoip2::Country>()
        {
            let by_country = rec.country.iso_code.and_then(|c| s.country_regions.get(c));
            let by_continent = rec.continent.code.and_then(|c| s.continent_regions.get(c));
            if let Some(r) = by_country.or(by_continent) {
                return r;
            }
        }
        &s.default_region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_table_else_default() {
        let g = Geo::new(&GeoSettings {
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
            ..GeoSettings::default()
        })
        .unwrap();
        assert_eq!(g.region_of("10.1.2.3".parse().unwrap()), "eu");
        assert_eq!(g.region_of("10.9.2.3".parse().unwrap()), "ap");
        assert_eq!(g.region_of("::ffff:10.9.2.3".parse().unwrap()), "ap");
        assert_eq!(g.region_of("2001:db8::1".parse().unwrap()), "ap");
        assert_eq!(g.region_of("192.0.2.1".parse().unwrap()), "us");
    }
}
