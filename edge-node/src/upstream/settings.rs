//! `[[upstream]]`: named pools of origins.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub name: String,
    /// The region this pool serves (sent to clients as `X-Region`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Origins as `host:port` (plain HTTP/1.1).
    #[serde(default)]
    pub servers: Vec<String>,
    /// A built-in origin instead of servers: `"demo"` answers with a page about the node.
    #[serde(default)]
    pub builtin: Option<String>,
    /// Time the origin has to start answering.
    #[serde(default = "default_response_timeout", with = "crate::config::duration")]
    pub response_timeout: Duration,
}

/// Where a pool's responses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Servers,
    Demo,
}

fn default_region() -> String {
    "default".into()
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}

impl UpstreamSettings {
    pub fn origin(&self) -> Origin {
        match self.builtin.as_deref() {
            Some("demo") => Origin::Demo,
            _ => Origin::Servers,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            bail!("upstream with an empty name");
        }
        match (&self.builtin, self.servers.is_empty()) {
            (Some(b), _) if b != "demo" => {
                bail!(
                    "upstream {}: builtin = {b:?} is unknown (only \"demo\")",
                    self.name
                )
            }
            (Some(_), false) => bail!("upstream {}: give either servers or builtin", self.name),
            (None, true) => bail!("upstream {}: no servers", self.name),
            _ => {}
        }
        for s in &self.servers {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok {
                bail!("upstream {}: server {s:?} is not host:port", self.name);
            }
        }
        Ok(())
    }
}
