//! `wasi:keyvalue` (0.2.0-draft: `store`, `atomics`, `batch`) over the node's own KV
//! namespaces: a bucket is a `[[kv]]` namespace, opened by its name, and only a
//! namespace granted to the function (`kv = ["users"]`) opens; any other name is
//! `access-denied` (the guest learns nothing of namespaces it was not granted) and a
//! line in the node's log.
//!
//! What a function reads and writes is what the KV route reads and writes
//! (`kv::Namespace`): the same keys (strings) and values (bytes), the local copy or
//! the fleet's Redis, a Redis outage refusing writes (an `error`, never a write lost
//! in silence). The namespace's limits hold: a key over `max_key_bytes`, a value over
//! `max_value_bytes`, a namespace at `max_keys` / `max_bytes` → `error::other` naming
//! the limit, nothing written. A value a function sets takes the namespace's
//! `default_ttl` (the interface has no TTL of its own) and is typed
//! `application/octet-stream`.
//!
//! The guest is not trusted, so what it can make the host do is bounded per instance
//! (one request): `MAX_OPS` operations (a batch counts per key), `MAX_BATCH_KEYS` keys
//! per batch call, `MAX_BATCH_BYTES` of values per `get-many`, `LIST_PAGE` keys per
//! `list-keys` page, `MAX_CURSORS` open listing cursors; handles count against the
//! instance's table (`guest::MAX_HANDLES`), and every call runs inside the function's
//! deadline.
//!
//! Listing cursors are handed out per instance: `list-keys` pages through the
//! namespace in key order, and a cursor is good within the request that got it.
//! `increment` keeps a decimal number (ASCII, as the KV route shows it) and is atomic:
//! a compare-and-set on the key's version, retried a few times under contention.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use tracing::{debug, warn};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, ResourceTableError};

use crate::kv::{Condition, Entry, Namespace, Write, WriteError, Written};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::KvError,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// Operations one instance may ask for (each key of a batch counts).
pub const MAX_OPS: u32 = 10_000;
/// Keys in one `get-many`, `set-many` or `delete-many`.
pub const MAX_BATCH_KEYS: usize = 100;
/// Bytes of values one `get-many` may return (the host holds them all at once).
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Keys per `list-keys` page.
pub const LIST_PAGE: usize = 100;
/// Listing cursors one instance may hold; a newer one retires the oldest.
pub const MAX_CURSORS: usize = 16;
/// Attempts of an `increment` whose key keeps changing under it.
const INCREMENT_TRIES: usize = 8;
/// The type a value set through `wasi:keyvalue` is stored with.
const CONTENT_TYPE: &str = "application/octet-stream";

/// The namespaces one function was granted, by name.
pub type Granted = Arc<HashMap<String, Arc<Namespace>>>;

/// An open bucket: the namespace it is.
pub struct Bucket {
    ns: Arc<Namespace>,
}

/// What a host call fails with: one of the interface's errors, or a trap (a handle that
/// is not one).
pub enum KvError {
    AccessDenied,
    Other(String),
    Trap(wasmtime::Error),
}

impl From<ResourceTableError> for KvError {
    fn from(e: ResourceTableError) -> Self {
        Self::Trap(e.into())
    }
}

/// The key-value state of one instance.
pub struct KvCtx {
    function: Arc<str>,
    granted: Granted,
    ops: u32,
    /// Listing cursors handed out: token → (namespace, the last key listed).
    cursors: HashMap<u64, (String, String)>,
    next_cursor: u64,
}

impl KvCtx {
    pub fn new(function: Arc<str>, granted: Granted) -> Self {
        Self {
            function,
            granted,
            ops: 0,
            cursors: HashMap::new(),
            next_cursor: 1,
        }
    }

    /// Counts `n` operations against the instance's budget.
    fn spend(&mut self, n: usize) -> Result<(), KvError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match self.ops.checked_add(n).filter(|&t| t <= MAX_OPS) {
            Some(t) => {
                self.ops = t;
                Ok(())
            }
            None => {
                warn!(function = %self.function, "kv: the instance used its {MAX_OPS} operations");
                Err(KvError::Other(format!(
                    "this request used its {MAX_OPS} key-value operations"
                )))
            }
        }
    }
}

/// What the bindings reach: the instance's key-value state and its handle table.
pub struct KvView<'a> {
    pub ctx: &'a mut KvCtx,
    pub table: &'a mut ResourceTable,
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Links `wasi:keyvalue/{store, atomics, batch}` for stores whose data gives a
/// [`KvView`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKv>(linker, view)?;
    atomics::add_to_linker::<T, HasKv>(linker, view)?;
    batch::add_to_linker::<T, HasKv>(linker, view)?;
    Ok(())
}

/// `kv <name>: <what>`: the words a guest's error carries.
fn other(ns: &Namespace, what: impl std::fmt::Display) -> KvError {
    KvError::Other(format!("kv {}: {what}", ns.name()))
}

/// A refused or failed write or read, as the guest hears it (and the log, for what is
/// the node's trouble rather than the guest's).
fn failed(function: &str, ns: &Namespace, e: WriteError) -> KvError {
    if let WriteError::Storage(_) = e {
        warn!(function, namespace = ns.name(), error = %e, "kv: storage unavailable");
    }
    other(ns, e)
}

/// A key the namespace takes: not empty, at most `max_key_bytes`, no control
/// characters (so the KV route can name every key a function writes).
fn check_key(ns: &Namespace, key: &str) -> Result<(), KvError> {
    let max = ns.settings.max_key_bytes;
    if key.is_empty() {
        return Err(other(ns, "a key is not empty"));
    }
    if key.len() > max {
        return Err(other(
            ns,
            format!(
                "key of {} bytes; the namespace takes at most {max}",
                key.len()
            ),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(other(ns, "a key holds no control characters"));
    }
    Ok(())
}

fn check_value(ns: &Namespace, value: &[u8]) -> Result<(), KvError> {
    let max = ns.settings.max_value_bytes;
    if value.len() as u64 > max {
        return Err(other(
            ns,
            format!(
                "value of {} bytes; the namespace takes at most {max}",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn check_batch(ns: &Namespace, n: usize) -> Result<(), KvError> {
    if n > MAX_BATCH_KEYS {
        return Err(other(
            ns,
            format!("{n} keys in one batch; at most {MAX_BATCH_KEYS}"),
        ));
    }
    Ok(())
}

/// A put of `value` under `key` as the KV route would store a value without a type,
/// metadata or TTL of its own.
fn put(ns: &Namespace, key: String, value: Vec<u8>) -> Write {
    let now = crate::clock::unix_ms();
    Write::Put {
        namespace: ns.name().to_string(),
        key,
        entry: Entry {
            value: Bytes::from(value),
            content_type: CONTENT_TYPE.into(),
            metadata: None,
            expires_at: ns.default_expiry(now),
            version: 0,
            written_at: now,
        },
        condition: Condition::Always,
        quota: ns.settings.quota(),
    }
}

impl KvView<'_> {
    fn namespace(&self, bucket: &Resource<Bucket>) -> Result<Arc<Namespace>, KvError> {
        Ok(self.table.get(bucket)?.ns.clone())
    }

    async fn set_one(
        &mut self,
        ns: &Namespace,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        match ns.write(put(ns, key, value)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(failed(&self.ctx.function, ns, e)),
        }
    }

    async fn delete_one(&mut self, ns: &Namespace, key: String) -> Result<(), KvError> {
        let write = Write::Delete {
            namespace: ns.name().to_string(),
            key,
            condition: Condition::Always,
        };
        match ns.write(write).await {
            Ok(_) => Ok(()),
            Err(e) => Err(failed(&self.ctx.function, ns, e)),
        }
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
        let Some(ns) = self.ctx.granted.get(&identifier).cloned() else {
            warn!(
                function = %self.ctx.function,
                namespace = %identifier.escape_debug(),
                "kv: namespace not granted to the function (its kv = [...]); access denied"
            );
            return Err(KvError::AccessDenied);
        };
        Ok(self.table.push(Bucket { ns })?)
    }

    fn convert_error(&mut self, e: KvError) -> wasmtime::Result<store::Error> {
        match e {
            KvError::AccessDenied => Ok(store::Error::AccessDenied),
            KvError::Other(why) => Ok(store::Error::Other(why)),
            KvError::Trap(e) => Err(e),
        }
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let ns = self.namespace(&bucket)?;
        self.ctx.spend(1)?;
        check_key(&ns, &key)?;
        match ns.read(&key).await {
            Ok(entry) => Ok(entry.map(|e| e.value.to_vec())),
            Err(e) => Err(failed(&self.ctx.function, &ns, e)),
        }
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        let ns = self.namespace(&bucket)?;
        self.ctx.spend(1)?;
        check_key(&ns, &key)?;
        check_value(&ns, &value)?;
        self.set_one(&ns, key, value).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        let ns = self.namespace(&bucket)?;
        self.ctx.spend(1)?;
        check_key(&ns, &key)?;
        self.delete_one(&ns, key).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        let ns = self.namespace(&bucket)?;
        self.ctx.spend(1)?;
        check_key(&ns, &key)?;
        match ns.read(&key).await {
            Ok(entry) => Ok(entry.is_some()),
            Err(e) => Err(failed(&self.ctx.function, &ns, e)),
        }
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let ns = self.namespace(&bucket)?;
        self.ctx.spend(1)?;
        let after = match cursor {
            None => None,
            Some(token) => match self.ctx.cursors.remove(&token) {
                Some((name, after)) if name == ns.name() => Some(after),
                _ => return Err(other(&ns, "not a cursor this bucket gave in this request")),
            },
        };
        let (listed, complete) = ns
            .list("", after.as_deref(), LIST_PAGE)
            .await
            .map_err(|e| failed(&self.ctx.function, &ns, e))?;
        let keys: Vec<String> = listed.into_iter().map(|l| l.key).collect();
        let cursor = match keys.last() {
            Some(last) if !complete => {
                if self.ctx.cursors.len() >= MAX_CURSORS
                    && let Some(oldest) = self.ctx.cursors.keys().min().copied()
                {
                    self.ctx.cursors.remove(&oldest);
                }
                let token = self.ctx.next_cursor;
                self.ctx.next_cursor += 1;
                self.ctx
                    .cursors
                    .insert(token, (ns.name().to_string(), last.clone()));
                Some(token)
            }
            _ => None,
        };
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        let ns = self.namespace(&bucket)?;
        self.ctx.spend(1)?;
        check_key(&ns, &key)?;
        let function = self.ctx.function.clone();
        for _ in 0..INCREMENT_TRIES {
            // The latest value (a fleet's from Redis, not a copy that may be stale): the
            // write below applies only if the key still holds this version.
            let current = ns
                .read_latest(&key)
                .await
                .map_err(|e| failed(&function, &ns, e))?;
            let now = crate::clock::unix_ms();
            let (old, condition, expires_at, content_type) = match &current {
                None => (0, Condition::Absent, ns.default_expiry(now), "text/plain"),
                Some(e) => {
                    let n = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                        .ok_or_else(|| other(&ns, "the key holds no decimal number"))?;
                    (
                        n,
                        Condition::Version(e.version),
                        e.expires_at,
                        e.content_type.as_str(),
                    )
                }
            };
            let new = old
                .checked_add(delta)
                .ok_or_else(|| other(&ns, "the increment overflows a u64"))?;
            let write = Write::Put {
                namespace: ns.name().to_string(),
                key: key.clone(),
                entry: Entry {
                    value: Bytes::from(new.to_string()),
                    content_type: content_type.to_string(),
                    metadata: current.as_ref().and_then(|e| e.metadata.clone()),
                    expires_at,
                    version: 0,
                    written_at: now,
                },
                condition,
                quota: ns.settings.quota(),
            };
            match ns.write(write).await {
                Ok(Written::Created { .. } | Written::Replaced { .. }) => return Ok(new),
                Ok(other_outcome) => {
                    return Err(other(&ns, format!("unexpected outcome {other_outcome:?}")));
                }
                Err(WriteError::PreconditionFailed) => {
                    debug!(function = %function, namespace = ns.name(), "kv: increment raced; again");
                }
                Err(e) => return Err(failed(&function, &ns, e)),
            }
        }
        Err(other(
            &ns,
            "the key kept changing; the increment was not applied",
        ))
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        let ns = self.namespace(&bucket)?;
        check_batch(&ns, keys.len())?;
        self.ctx.spend(keys.len())?;
        for k in &keys {
            check_key(&ns, k)?;
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for key in keys {
            let entry = ns
                .read(&key)
                .await
                .map_err(|e| failed(&self.ctx.function, &ns, e))?;
            bytes = bytes.saturating_add(entry.as_ref().map_or(0, |e| e.value.len()));
            if bytes > MAX_BATCH_BYTES {
                return Err(other(
                    &ns,
                    format!("the values are over {MAX_BATCH_BYTES} bytes for one get-many"),
                ));
            }
            out.push(entry.map(|e| (key, e.value.to_vec())));
        }
        Ok(out)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        let ns = self.namespace(&bucket)?;
        check_batch(&ns, key_values.len())?;
        self.ctx.spend(key_values.len())?;
        // Every key and value within the limits before anything is written.
        for (k, v) in &key_values {
            check_key(&ns, k)?;
            check_value(&ns, v)?;
        }
        for (key, value) in key_values {
            self.set_one(&ns, key, value).await?;
        }
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), KvError> {
        let ns = self.namespace(&bucket)?;
        check_batch(&ns, keys.len())?;
        self.ctx.spend(keys.len())?;
        for k in &keys {
            check_key(&ns, k)?;
        }
        for key in keys {
            self.delete_one(&ns, key).await?;
        }
        Ok(())
    }
}
