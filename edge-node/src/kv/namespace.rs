//! One namespace as its users see it (the KV route, functions through `wasi:keyvalue`):
//! its settings, the local store and, for `backend = "redis"`, the fleet's Redis, with
//! one set of semantics for all of them.
//!
//! - A read answers the local copy if there is one; a fleet namespace otherwise asks
//!   Redis and keeps what it got as the local copy. Redis unreachable: the local copy,
//!   or an error (never a made-up absence).
//! - A write goes to Redis first for a fleet namespace (then to the local copy), else
//!   to the local store. Redis unreachable: refused, nothing written anywhere.
//! - Limits (key and value sizes, keys and bytes per namespace) refuse a whole write.

use std::{sync::Arc, time::Duration};

use super::{
    Condition, Entry, KvSettings, Listed, Store, Write, WriteError, Written, fleet::Fleet,
};

pub struct Namespace {
    pub settings: KvSettings,
    pub store: Arc<Store>,
    /// The fleet's Redis, for `backend = "redis"`.
    pub fleet: Option<Arc<Fleet>>,
}

impl Namespace {
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The key's live entry (see the module's notes).
    pub async fn read(&self, key: &str) -> Result<Option<Entry>, WriteError> {
        let ns = &self.settings;
        let local = self.store.get(&ns.name, key)?;
        let Some(fleet) = &self.fleet else {
            return Ok(local);
        };
        if local.is_some() {
            return Ok(local);
        }
        let Some(entry) = fleet.get(&ns.name, key).await? else {
            return Ok(None);
        };
        let copy = Write::Put {
            namespace: ns.name.clone(),
            key: key.to_string(),
            entry: entry.clone(),
            condition: Condition::Always,
            quota: ns.quota(),
        };
        if let Err(e) = self.store.write(copy).await {
            tracing::debug!(namespace = %ns.name, key, error = %e, "fleet value not copied");
        }
        Ok(Some(entry))
    }

    /// The key's live entry where writes are decided: Redis for a fleet namespace
    /// (never a local copy, which may be stale), else the local store. For a
    /// read-modify-write conditional on the version read.
    pub async fn read_latest(&self, key: &str) -> Result<Option<Entry>, WriteError> {
        match &self.fleet {
            Some(f) => f.get(&self.settings.name, key).await,
            None => self.store.get(&self.settings.name, key),
        }
    }

    /// A put or delete (see the module's notes). The caller checks sizes against the
    /// settings; the quota is checked by whoever applies the write (the store's
    /// writer, or Redis' script), so a refused write changes nothing.
    pub async fn write(&self, write: Write) -> Result<Written, WriteError> {
        let Some(fleet) = &self.fleet else {
            return self.store.write(write).await;
        };
        let written = fleet.write(&write).await?;
        let copy = match (write, written) {
            (
                Write::Put {
                    namespace,
                    key,
                    mut entry,
                    quota,
                    ..
                },
                Written::Created { version } | Written::Replaced { version },
            ) => {
                entry.version = version;
                Write::Put {
                    namespace,
                    key,
                    entry,
                    condition: Condition::Always,
                    quota,
                }
            }
            (Write::Put { namespace, key, .. } | Write::Delete { namespace, key, .. }, _) => {
                Write::Delete {
                    namespace,
                    key,
                    condition: Condition::Always,
                }
            }
            (Write::Forget { .. }, _) => return Ok(written),
        };
        if let Err(e) = self.store.write(copy).await {
            tracing::debug!(error = %e, "local copy of a fleet write not kept");
        }
        Ok(written)
    }

    /// Up to `limit` live keys starting with `prefix`, after `after`, in key order (a
    /// fleet namespace's from Redis); and whether the listing is complete.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Listed>, bool), WriteError> {
        let name = &self.settings.name;
        match &self.fleet {
            Some(f) => f.list(name, prefix, after, limit).await,
            None => self.store.list(name, prefix, after, limit),
        }
    }

    /// When a value written now without a TTL of its own expires: the namespace's
    /// `default_ttl`, if any (Unix ms).
    pub fn default_expiry(&self, now_ms: u64) -> Option<u64> {
        self.settings.default_ttl.map(|t| expiry(now_ms, t))
    }
}

/// `now_ms` plus `ttl`, in Unix ms.
pub fn expiry(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}
