//! The fleet (`[fleet]`): nodes that share what any of them learns, through Redis:
//! threat intelligence ([`threats`]: escalations and operator blocks, unblocks and
//! scores on any node are applied by every node to its source policy), membership
//! ([`members`]: heartbeats, `edge-node fleet status`) and rate limits counted across
//! nodes ([`limits`]). Keys live under `prefix`.

pub mod limits;
pub mod members;
pub mod threats;

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::redis_link::RedisTarget;

/// `[fleet]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// The fleet's Redis: `"redis://[user:password@]host:port[/db]"` (`rediss://` for
    /// TLS), `{ cluster = [URLs] }` or `{ sentinel = [URLs], master = "name" }`. None:
    /// this node shares nothing.
    #[serde(default)]
    pub redis: Option<RedisTarget>,
    /// The fleet's shared secret (at least 32 characters), inline or in a file: threat
    /// entries are signed with it (HMAC-SHA256) and entries not signed with it are
    /// refused. Without it, anyone who can write the stream is believed.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// This node's region (for `scope = "region"`; also named in what it publishes).
    #[serde(default)]
    pub region: String,
    /// What is shared: `fleet` (every node), `region` (nodes of this `region`), or
    /// `local` (nothing: decisions stay on this node).
    #[serde(default)]
    pub scope: Scope,
    /// Key prefix: the threat stream is `<prefix>:threats`, membership
    /// `{<prefix>:members}:nodes` and `:beats` (one Cluster slot: a script reads both).
    /// Fleets sharing a Redis keep apart by it.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How often this node says it is alive.
    #[serde(default = "default_heartbeat", with = "crate::duration")]
    pub heartbeat: Duration,
    /// Longest wait for one Redis call.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// How far back a starting node reads the stream (what it missed while away).
    #[serde(default = "default_catch_up", with = "crate::duration")]
    pub catch_up: Duration,
    /// Entries the stream keeps at most (approximately; older ones are trimmed).
    #[serde(default = "default_max_len")]
    pub max_len: u64,
    /// An event whose node clock is further than this from Redis' clock is refused.
    #[serde(default = "default_skew", with = "crate::duration")]
    pub max_clock_skew: Duration,
    /// Events kept for publishing while Redis is unreachable (then the oldest go).
    #[serde(default = "default_backlog")]
    pub backlog: usize,
    /// The longest another node's block or score lasts here (a permanent one too).
    #[serde(default = "default_max_remote_ttl", with = "crate::duration")]
    pub max_remote_ttl: Duration,
    /// The widest prefixes another node may block here: /16 IPv4, /32 IPv6 by default.
    #[serde(default = "default_min_prefix_v4")]
    pub min_prefix_v4: u8,
    #[serde(default = "default_min_prefix_v6")]
    pub min_prefix_v6: u8,
    /// Other nodes' events applied per second at most (bursts of ten times as many).
    #[serde(default = "default_max_applied")]
    pub max_applied_per_second: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Fleet,
    Region,
    Local,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            redis: None,
            secret: None,
            secret_file: None,
            region: String::new(),
            scope: Scope::default(),
            prefix: default_prefix(),
            heartbeat: default_heartbeat(),
            timeout: default_timeout(),
            catch_up: default_catch_up(),
            max_len: default_max_len(),
            max_clock_skew: default_skew(),
            backlog: default_backlog(),
            max_remote_ttl: default_max_remote_ttl(),
            min_prefix_v4: default_min_prefix_v4(),
            min_prefix_v6: default_min_prefix_v6(),
            max_applied_per_second: default_max_applied(),
        }
    }
}

fn default_prefix() -> String {
    "edge-node".into()
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_catch_up() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_len() -> u64 {
    100_000
}
fn default_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_backlog() -> usize {
    10_000
}
fn default_max_remote_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_min_prefix_v4() -> u8 {
    16
}
fn default_min_prefix_v6() -> u8 {
    32
}
fn default_max_applied() -> u64 {
    1000
}

impl FleetSettings {
    /// The Redis key `name` of this fleet.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The membership keys (nodes, beats): in one Cluster hash slot.
    pub fn member_keys(&self) -> (String, String) {
        let tag = format!("{{{}:members}}", self.prefix);
        (format!("{tag}:nodes"), format!("{tag}:beats"))
    }

    /// The key threat entries are signed and checked with, if the fleet has a secret.
    pub fn signing_key(&self) -> Result<Option<ring::hmac::Key>> {
        let secret = crate::secret::read(
            self.secret.as_deref(),
            self.secret_file.as_deref(),
            ("fleet.secret", "fleet.secret_file"),
            32,
        )?;
        Ok(secret.map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())))
    }

    /// The fleet's Redis, or why there is none.
    pub fn target(&self) -> Result<&RedisTarget> {
        self.redis
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no fleet: set fleet.redis in the configuration"))
    }

    /// Whether threat events are shared at all.
    pub fn shares_threats(&self) -> bool {
        self.redis.is_some() && self.scope != Scope::Local
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(target) = &self.redis {
            target.validate().context("fleet.redis")?;
        }
        self.signing_key()?;
        if self.scope == Scope::Region && self.region.is_empty() {
            bail!("fleet.scope = \"region\" needs fleet.region");
        }
        let token = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        };
        if self.prefix.is_empty() || !token(&self.prefix) || !token(&self.region) {
            bail!("fleet.prefix and fleet.region may hold letters, digits and - _ . : only");
        }
        if self.timeout.is_zero() || self.max_clock_skew.is_zero() || self.heartbeat.is_zero() {
            bail!("fleet.timeout, fleet.heartbeat and fleet.max_clock_skew must be longer than 0s");
        }
        if self.max_len < 1000 || self.backlog == 0 {
            bail!("fleet.max_len is at least 1000 and fleet.backlog at least 1");
        }
        if self.min_prefix_v4 > 32 || self.min_prefix_v6 > 128 {
            bail!("fleet.min_prefix_v4 is 0 to 32, fleet.min_prefix_v6 0 to 128");
        }
        if self.max_remote_ttl.is_zero() || self.max_applied_per_second == 0 {
            bail!("fleet.max_remote_ttl and fleet.max_applied_per_second must be above 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_refuse_nonsense() {
        let parse = |s: &str| -> Result<FleetSettings> {
            let f: FleetSettings = toml::from_str(s)?;
            f.validate()?;
            Ok(f)
        };
        assert!(!parse("").unwrap().shares_threats());
        assert!(
            parse("redis = \"redis://127.0.0.1:6379\"")
                .unwrap()
                .shares_threats()
        );
        assert!(
            !parse("redis = \"redis://127.0.0.1:6379\"\nscope = \"local\"")
                .unwrap()
                .shares_threats()
        );
        for bad in [
            "redis = \"http://x\"",
            "scope = \"region\"",
            "scope = \"planet\"",
            "prefix = \"a b\"",
            "heartbeat = \"0s\"",
            "timeout = \"0s\"",
            "max_len = 10",
            "secret = \"shorter than 32 bytes\"",
            "secret = \"a fleet secret of thirty-two bytes\"\nsecret_file = \"/etc/x\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
