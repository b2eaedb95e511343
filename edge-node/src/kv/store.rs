//! The node's durable store: one redb file in the data directory, a table per KV
//! namespace (and one indexing its keys by expiry), and a single writer thread.
//!
//! Reads run on the caller's thread against the last committed state. Writes queue to
//! the writer, which applies whatever is waiting in one transaction and answers each
//! after the commit (group commit): with `sync_window = 0` that commit is on disk
//! before anyone is answered, and writers arriving together share its fsync; with a
//! window, writes are answered once applied and are on disk within the window (the
//! durability of Redis' `appendfsync everysec`).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use tracing::{error, info, warn};

use super::record::{self, Entry};

/// Keys' records, per namespace: `kv/<namespace>`.
type DataTable<'a> = TableDefinition<'a, &'static str, &'static [u8]>;
/// Expiry index, per namespace: `kvx/<namespace>`, keyed by expiry (big-endian ms)
/// then the key's bytes, so the sweep reads the expired keys first and only them.
type ExpiryTable<'a> = TableDefinition<'a, &'static [u8], ()>;
/// Per namespace: keys held and their bytes (what the limits compare with).
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");
/// The next version (ETag) to hand out.
const STATE: TableDefinition<&str, u64> = TableDefinition::new("state");
const NEXT_VERSION: &str = "next_version";

/// Writes applied per transaction at most (a burst beyond it takes the next one).
const BATCH: usize = 1024;
/// Writes waiting at most; past it writers wait for room. Counted in writes, so the
/// memory it holds is up to this many values (1 GiB at the 1 MiB default).
const QUEUE: usize = 1024;
/// Records a listing page looks at most (expired ones are skipped, not counted).
const LIST_SCAN: usize = 10_000;
/// Expired keys removed per namespace per sweep (each sweep is one short transaction).
const SWEEP_BATCH: usize = 1000;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What one namespace may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max_keys: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// Only if the key holds this version (`If-Match`).
    Version(u64),
    /// Only if the key is absent (`If-None-Match: *`).
    Absent,
    /// Only if the key is present (`If-Match: *`).
    Present,
}

pub enum Write {
    Put {
        namespace: String,
        key: String,
        /// Everything but the version, which the writer assigns; a version given (not
        /// 0) is kept: a copy of a value versioned elsewhere (a fleet's Redis).
        entry: Entry,
        condition: Condition,
        quota: Quota,
    },
    Delete {
        namespace: String,
        key: String,
        condition: Condition,
    },
    /// Every key of the namespace goes (a fleet's copies that may be stale).
    Forget { namespace: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created {
        version: u64,
    },
    Replaced {
        version: u64,
    },
    Deleted,
    /// A delete of a key that was not there.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the condition (If-Match / If-None-Match) does not hold")]
    PreconditionFailed,
    #[error("the namespace holds its most keys ({0})")]
    KeysFull(u64),
    #[error("the namespace holds its most bytes ({0})")]
    BytesFull(u64),
    #[error("storage failed: {0}")]
    Storage(String),
}

struct Job {
    write: Write,
    reply: tokio::sync::oneshot::Sender<Result<Written, WriteError>>,
}

enum Message {
    Write(Job),
    /// Everything acknowledged so far goes to disk before the reply.
    Flush(mpsc::SyncSender<()>),
}

/// A listed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub expires_at: Option<u64>,
    pub metadata: Option<String>,
    pub size: usize,
}

pub struct Store {
    db: Arc<Database>,
    queue: Option<mpsc::SyncSender<Message>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

fn data_table(namespace: &str) -> String {
    format!("kv/{namespace}")
}

fn expiry_table(namespace: &str) -> String {
    format!("kvx/{namespace}")
}

fn expiry_key(expires_at: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&expires_at.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn storage(e: impl std::fmt::Display) -> WriteError {
    WriteError::Storage(e.to_string())
}

impl Store {
    /// Opens (or creates) `dir/edge-node.redb`. `sync_window`: how long an acknowledged
    /// write may wait to be on disk (zero: not at all).
    pub fn open(dir: &Path, sync_window: Duration) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let path = dir.join("edge-node.redb");
        let started = Instant::now();
        let db = Database::create(&path).with_context(|| {
            format!(
                "opening {} (another edge-node using the same storage.dir?)",
                path.display()
            )
        })?;
        info!(path = %path.display(), ms = started.elapsed().as_millis() as u64, "store open");
        let db = Arc::new(db);
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = Writer {
            db: db.clone(),
            sync_window,
        };
        let handle = std::thread::Builder::new()
            .name("kv-writer".into())
            .spawn(move || writer.run(rx))
            .context("starting the store's writer thread")?;
        Ok(Arc::new(Self {
            db,
            queue: Some(tx),
            writer: Mutex::new(Some(handle)),
            path,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The live entry under `key` (an expired one reads as absent; the sweep removes it).
    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>, WriteError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let name = data_table(namespace);
        let table = match txn.open_table(DataTable::new(&name)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let Some(raw) = table.get(key).map_err(storage)? else {
            return Ok(None);
        };
        let Some(entry) = record::decode(raw.value()) else {
            warn!(namespace, key, "unreadable record; answered as absent");
            return Ok(None);
        };
        Ok((!entry.expired(crate::clock::unix_ms())).then_some(entry))
    }

    /// Up to `limit` live keys starting with `prefix`, after `after` (exclusive), in
    /// key order; and whether the listing is complete.
    pub fn list(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Listed>, bool), WriteError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let name = data_table(namespace);
        let table = match txn.open_table(DataTable::new(&name)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), true)),
            Err(e) => return Err(storage(e)),
        };
        let start = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        let now = crate::clock::unix_ms();
        let mut out: Vec<Listed> = Vec::new();
        for (scanned, item) in table.range(start..).map_err(storage)?.enumerate() {
            let (k, v) = item.map_err(storage)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                return Ok((out, true));
            }
            // A page ends early rather than walk a namespace of expired keys; its
            // cursor goes on from here.
            if scanned >= LIST_SCAN && !out.is_empty() {
                return Ok((out, false));
            }
            if Some(key) == after {
                continue;
            }
            let Some((expires_at, metadata, size)) = record::head(v.value()) else {
                continue;
            };
            if expires_at.is_some_and(|t| t <= now) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, false));
            }
            out.push(Listed {
                key: key.to_string(),
                expires_at,
                metadata,
                size,
            });
        }
        Ok((out, true))
    }

    /// Queues a write and waits for its commit (and, with `sync_window = 0`, its fsync).
    pub async fn write(&self, write: Write) -> Result<Written, WriteError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queue = self.queue.as_ref().expect("open store").clone();
        let job = Message::Write(Job { write, reply });
        // A full queue blocks this sender until the writer catches up: off the runtime.
        match queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || queue.send(job).map_err(drop))
                    .await
                    .map_err(storage)?
                    .map_err(|()| storage("the writer stopped"))?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(storage("the writer stopped")),
        }
        answer.await.map_err(|_| storage("the writer stopped"))?
    }

    /// Puts everything acknowledged so far on disk (at shutdown).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if let Some(q) = &self.queue
            && q.send(Message::Flush(tx)).is_ok()
        {
            let _ = rx.recv();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue ends the writer after its last commit and fsync.
        self.queue = None;
        if let Some(w) = crate::sync::lock(&self.writer).take() {
            let _ = w.join();
        }
    }
}

struct Writer {
    db: Arc<Database>,
    sync_window: Duration,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Message>) {
        // When acknowledged-but-not-synced commits must be on disk.
        let mut sync_due: Option<Instant> = None;
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        loop {
            let wake = sync_due.map_or(next_sweep, |d| d.min(next_sweep));
            let first = match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut jobs = Vec::new();
            let mut flushes = Vec::new();
            let mut next = first;
            while let Some(m) = next.take() {
                match m {
                    Message::Write(j) => jobs.push(j),
                    Message::Flush(f) => flushes.push(f),
                }
                if jobs.len() < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !jobs.is_empty() {
                let immediate = self.sync_window.is_zero();
                self.apply(jobs, immediate);
                if !immediate && sync_due.is_none() {
                    sync_due = Some(Instant::now() + self.sync_window);
                }
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep();
                next_sweep = now + SWEEP_EVERY;
            }
            if !flushes.is_empty() || sync_due.is_some_and(|d| now >= d) {
                self.sync();
                sync_due = None;
                for f in flushes {
                    let _ = f.send(());
                }
            }
        }
        self.sync();
    }

    /// One transaction for the batch; each write checks its own condition and quota,
    /// so one refused write changes nothing and takes none of the others with it.
    fn apply(&self, jobs: Vec<Job>, immediate: bool) {
        let mut results = Vec::with_capacity(jobs.len());
        let outcome = (|| -> Result<(), WriteError> {
            let mut txn = self.db.begin_write().map_err(storage)?;
            txn.set_durability(if immediate {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(storage)?;
            {
                let mut state = txn.open_table(STATE).map_err(storage)?;
                let mut next_version = state
                    .get(NEXT_VERSION)
                    .map_err(storage)?
                    .map_or(1, |v| v.value());
                let mut usage = txn.open_table(USAGE).map_err(storage)?;
                for job in &jobs {
                    results.push(apply_one(&txn, &mut usage, &job.write, &mut next_version)?);
                }
                state.insert(NEXT_VERSION, next_version).map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })();
        match outcome {
            Ok(()) => {
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                error!(error = %e, writes = jobs.len(), "store commit failed; the writes are refused");
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// An empty commit with immediate durability: everything before it reaches disk.
    fn sync(&self) {
        let r = (|| -> Result<(), WriteError> {
            let mut txn = self.db.begin_write().map_err(storage)?;
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            txn.commit().map_err(storage)
        })();
        if let Err(e) = r {
            error!(error = %e, "store sync failed");
        }
    }

    /// Removes up to `SWEEP_BATCH` expired keys per namespace, oldest expiry first.
    fn sweep(&self) {
        let r = (|| -> Result<u64, WriteError> {
            let now = crate::clock::unix_ms();
            let mut txn = self.db.begin_write().map_err(storage)?;
            txn.set_durability(Durability::None).map_err(storage)?;
            let mut removed = 0;
            {
                let mut usage = txn.open_table(USAGE).map_err(storage)?;
                let namespaces: Vec<String> = usage
                    .range(..)
                    .map_err(storage)?
                    .filter_map(|i| i.ok().map(|(k, _)| k.value().to_string()))
                    .collect();
                for ns in namespaces {
                    removed += sweep_namespace(&txn, &mut usage, &ns, now)?;
                }
            }
            txn.commit().map_err(storage)?;
            Ok(removed)
        })();
        match r {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired keys swept"),
            Err(e) => error!(error = %e, "store sweep failed"),
        }
    }
}

/// Removes up to `SWEEP_BATCH` keys of `ns` expired at `now`, oldest expiry first;
/// how many.
fn sweep_namespace(
    txn: &redb::WriteTransaction,
    usage: &mut redb::Table<&str, (u64, u64)>,
    ns: &str,
    now: u64,
) -> Result<u64, WriteError> {
    let xname = expiry_table(ns);
    let dname = data_table(ns);
    let mut index = txn.open_table(ExpiryTable::new(&xname)).map_err(storage)?;
    let end = (now + 1).to_be_bytes();
    let due: Vec<Vec<u8>> = index
        .range(..&end[..])
        .map_err(storage)?
        .take(SWEEP_BATCH)
        .filter_map(|i| i.ok().map(|(k, _)| k.value().to_vec()))
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let mut data = txn.open_table(DataTable::new(&dname)).map_err(storage)?;
    let (mut keys, mut bytes) = usage
        .get(ns)
        .map_err(storage)?
        .map_or((0, 0), |v| v.value());
    let mut removed = 0;
    for ix in due {
        index.remove(ix.as_slice()).map_err(storage)?;
        let (Some(at), Ok(key)) = (ix.get(..8), std::str::from_utf8(ix.get(8..).unwrap_or(&[])))
        else {
            continue;
        };
        let expiry = u64::from_be_bytes(at.try_into().expect("8 bytes"));
        // The index entry of an older write may outlive it; only a record that still
        // expires then goes.
        let current = data
            .get(key)
            .map_err(storage)?
            .map(|v| (record::expires_at(v.value()), v.value().len()));
        if let Some((Some(t), len)) = current
            && t == expiry
        {
            data.remove(key).map_err(storage)?;
            keys = keys.saturating_sub(1);
            bytes = bytes.saturating_sub((key.len() + len) as u64);
            removed += 1;
        }
    }
    usage.insert(ns, (keys, bytes)).map_err(storage)?;
    Ok(removed)
}

/// One write inside the batch's transaction. `Err` only for storage failures (the
/// whole batch fails); refusals are `Ok(Err(_))`. A namespace at its quota first drops
/// its expired keys (they count until swept), then decides.
fn apply_one(
    txn: &redb::WriteTransaction,
    usage: &mut redb::Table<&str, (u64, u64)>,
    write: &Write,
    next_version: &mut u64,
) -> Result<Result<Written, WriteError>, WriteError> {
    let first = try_apply(txn, usage, write, next_version)?;
    if !matches!(
        first,
        Err(WriteError::KeysFull(_) | WriteError::BytesFull(_))
    ) {
        return Ok(first);
    }
    let (Write::Put { namespace, .. }
    | Write::Delete { namespace, .. }
    | Write::Forget { namespace }) = write;
    if sweep_namespace(txn, usage, namespace, crate::clock::unix_ms())? > 0 {
        try_apply(txn, usage, write, next_version)
    } else {
        Ok(first)
    }
}

fn try_apply(
    txn: &redb::WriteTransaction,
    usage: &mut redb::Table<&str, (u64, u64)>,
    write: &Write,
    next_version: &mut u64,
) -> Result<Result<Written, WriteError>, WriteError> {
    let (namespace, key, condition) = match write {
        Write::Put {
            namespace,
            key,
            condition,
            ..
        }
        | Write::Delete {
            namespace,
            key,
            condition,
        } => (namespace.as_str(), key.as_str(), *condition),
        Write::Forget { namespace } => {
            txn.delete_table(DataTable::new(&data_table(namespace)))
                .map_err(storage)?;
            txn.delete_table(ExpiryTable::new(&expiry_table(namespace)))
                .map_err(storage)?;
            usage.remove(namespace.as_str()).map_err(storage)?;
            return Ok(Ok(Written::Deleted));
        }
    };
    let dname = data_table(namespace);
    let xname = expiry_table(namespace);
    let mut data = txn.open_table(DataTable::new(&dname)).map_err(storage)?;
    let now = crate::clock::unix_ms();
    // What the key holds now, an expired record counting as absent.
    let old = data
        .get(key)
        .map_err(storage)?
        .map(|v| (record::decode(v.value()), v.value().len()));
    let live = old
        .as_ref()
        .and_then(|(e, _)| e.as_ref())
        .filter(|e| !e.expired(now));
    let holds = match condition {
        Condition::Always => true,
        Condition::Version(v) => live.is_some_and(|e| e.version == v),
        Condition::Absent => live.is_none(),
        Condition::Present => live.is_some(),
    };
    if !holds {
        return Ok(Err(WriteError::PreconditionFailed));
    }
    let (mut keys, mut bytes) = usage
        .get(namespace)
        .map_err(storage)?
        .map_or((0, 0), |v| v.value());
    let old_bytes = old.as_ref().map_or(0, |(_, len)| (key.len() + len) as u64);
    let old_expiry = old
        .as_ref()
        .and_then(|(e, _)| e.as_ref())
        .and_then(|e| e.expires_at);
    let mut index = txn.open_table(ExpiryTable::new(&xname)).map_err(storage)?;
    let written = match write {
        Write::Put { entry, quota, .. } => {
            let mut entry = entry.clone();
            let copy = entry.version != 0;
            if !copy {
                entry.version = *next_version;
            }
            let raw = record::encode(&entry);
            let new_bytes = (key.len() + raw.len()) as u64;
            let new_keys = keys + u64::from(old.is_none());
            if new_keys > quota.max_keys {
                return Ok(Err(WriteError::KeysFull(quota.max_keys)));
            }
            let total = bytes - old_bytes.min(bytes) + new_bytes;
            if total > quota.max_bytes {
                return Ok(Err(WriteError::BytesFull(quota.max_bytes)));
            }
            data.insert(key, raw.as_slice()).map_err(storage)?;
            if let Some(t) = old_expiry
                && Some(t) != entry.expires_at
            {
                index
                    .remove(expiry_key(t, key).as_slice())
                    .map_err(storage)?;
            }
            if let Some(t) = entry.expires_at {
                index
                    .insert(expiry_key(t, key).as_slice(), ())
                    .map_err(storage)?;
            }
            keys = new_keys;
            bytes = total;
            if !copy {
                *next_version += 1;
            }
            if live.is_some() {
                Written::Replaced {
                    version: entry.version,
                }
            } else {
                Written::Created {
                    version: entry.version,
                }
            }
        }
        Write::Forget { .. } => unreachable!("handled above"),
        Write::Delete { .. } => {
            if old.is_none() {
                return Ok(Ok(Written::Absent));
            }
            data.remove(key).map_err(storage)?;
            if let Some(t) = old_expiry {
                index
                    .remove(expiry_key(t, key).as_slice())
                    .map_err(storage)?;
            }
            keys = keys.saturating_sub(1);
            bytes = bytes.saturating_sub(old_bytes);
            if live.is_some() {
                Written::Deleted
            } else {
                Written::Absent
            }
        }
    };
    usage.insert(namespace, (keys, bytes)).map_err(storage)?;
    Ok(Ok(written))
}
