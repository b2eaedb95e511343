//! State at the edge: key-value namespaces (`[[kv]]`) in the node's durable store
//! (`[storage]`), served by routes with `handler = { kv = "name" }`
//! (`handlers::kv`). Values carry a content type, optional metadata and an optional
//! TTL; limits per namespace are checked by the store's single writer, so a refused
//! write changes nothing. Functions reach the namespaces granted to them through
//! `wasi:keyvalue` (`functions::keyvalue`), with the same `Namespace` semantics.

pub mod fleet;
pub mod namespace;
pub mod record;
pub mod store;

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use serde::Deserialize;

pub use namespace::Namespace;
pub use record::Entry;
pub use store::{Condition, Listed, Quota, Store, Write, WriteError, Written};

/// `[storage]`: where the node keeps durable state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// The data directory (systemd: `StateDirectory=edge-node`). Holds
    /// `edge-node.redb`; one node per directory. Created if missing, and only when a
    /// `[[kv]]` namespace is configured. Takes effect at start.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// How long an acknowledged write may wait to be on disk. `0s`: a write is answered
    /// once it is on disk (writes arriving together share one fsync); e.g. `1s`:
    /// answered once applied, on disk within a second (Redis' `appendfsync everysec`),
    /// so a power cut may lose the last second. Takes effect at start.
    #[serde(default, with = "crate::duration")]
    pub sync_window: Duration,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            dir: default_dir(),
            sync_window: Duration::ZERO,
        }
    }
}

fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/edge-node")
}

/// The longest `sync_window`: past it "durable" would mean little.
const MAX_SYNC_WINDOW: Duration = Duration::from_secs(60);

impl StorageSettings {
    pub fn validate(&self) -> Result<()> {
        if self.sync_window > MAX_SYNC_WINDOW {
            bail!("storage.sync_window is at most {MAX_SYNC_WINDOW:?}");
        }
        Ok(())
    }
}

/// `[[kv]]`: one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvSettings {
    /// What routes name it by (`handler = { kv = "name" }`); also its table in the store.
    pub name: String,
    /// Longest key (bytes, decoded); longer: 414.
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// Largest value; larger: 413.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: u64,
    /// Largest `X-KV-Metadata`; larger: 413.
    #[serde(default = "default_max_metadata_bytes")]
    pub max_metadata_bytes: usize,
    /// Keys the namespace may hold; a write of a new key beyond: 507.
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
    /// Bytes (keys, values and what is kept with them) it may hold; beyond: 507.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// TTL of a write that names none (none: kept until deleted).
    #[serde(default, with = "crate::duration::option")]
    pub default_ttl: Option<Duration>,
    /// The longest TTL a write may ask for.
    #[serde(default = "default_max_ttl", with = "crate::duration")]
    pub max_ttl: Duration,
    /// `local` (this node's store) or `redis` (shared by the nodes naming the same
    /// Redis and prefix; the local store keeps read copies).
    #[serde(default)]
    pub backend: Backend,
    /// `redis://[user:password@]host:port[/db]` (backend = "redis").
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Prefix of the namespace's keys in Redis (nodes sharing it share the data).
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// Longest wait for Redis; past it a read answers from the local copy (or 503) and
    /// a write is refused (503).
    #[serde(default = "default_redis_timeout", with = "crate::duration")]
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    Redis,
}

fn default_redis_prefix() -> String {
    "edge-kv".into()
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(250)
}

fn default_max_key_bytes() -> usize {
    512
}
fn default_max_value_bytes() -> u64 {
    1 << 20
}
fn default_max_metadata_bytes() -> usize {
    1024
}
fn default_max_keys() -> u64 {
    1_000_000
}
fn default_max_bytes() -> u64 {
    1 << 30
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(365 * 24 * 3600)
}

/// A name a route refers to and the store keeps (`[[kv]]`, `[[rooms]]`, `[[graphql]]`):
/// 1 to 64 letters, digits, '-' or '_'.
pub fn check_name(table: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("{table} name {name:?}: 1 to 64 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// A record's key and value share one redb page run; far beyond this it is not a KV.
const MAX_VALUE_BYTES: u64 = 512 << 20;

impl KvSettings {
    pub fn validate(&self) -> Result<()> {
        let n = &self.name;
        check_name("kv", n)?;
        if self.max_key_bytes == 0 || self.max_key_bytes > 4096 {
            bail!("kv {n}: max_key_bytes must be 1 to 4096");
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > MAX_VALUE_BYTES {
            bail!("kv {n}: max_value_bytes must be 1 to {MAX_VALUE_BYTES}");
        }
        if self.max_metadata_bytes > 8192 {
            bail!("kv {n}: max_metadata_bytes is at most 8192 (it travels in a header)");
        }
        if self.max_keys == 0 || self.max_bytes == 0 {
            bail!("kv {n}: max_keys and max_bytes must be above 0");
        }
        if self.max_ttl.as_secs() == 0 {
            bail!("kv {n}: max_ttl must be at least 1s");
        }
        if let Some(t) = self.default_ttl
            && (t.as_secs() == 0 || t > self.max_ttl)
        {
            bail!("kv {n}: default_ttl must be 1s to max_ttl");
        }
        match (self.backend, &self.redis_url) {
            (Backend::Redis, None) => bail!("kv {n}: backend = \"redis\" needs redis_url"),
            (Backend::Local, Some(_)) => {
                bail!("kv {n}: redis_url is for backend = \"redis\"")
            }
            (Backend::Redis, Some(url)) => {
                redis::Client::open(url.as_str())
                    .map_err(|e| anyhow::anyhow!("kv {n}: redis_url: {e}"))?;
            }
            _ => {}
        }
        Ok(())
    }

    pub fn quota(&self) -> Quota {
        Quota {
            max_keys: self.max_keys,
            max_bytes: self.max_bytes,
        }
    }
}
