//! The regional tier: a Redis shared by the nodes of a region. A tier-1 miss looks here
//! before the origin; what the origin sends is stored in both tiers. Redis being slow or
//! down never reaches a client: every call is bounded by `timeout` and a failure reads as
//! a miss (and is counted and logged, at most once a minute).
//!
//! Layout under `prefix`:
//! - `{prefix}:e:{key}`: a hash, one field per `Vary` variant, the value an encoded entry;
//!   it expires when its copies stop being useful (`Entry::keep_for`).
//! - `{prefix}:url:{url}` and `{prefix}:tag:{tag}`: sets of entry keys, for purges by
//!   URL, prefix and surrogate key.
//! - `{prefix}:purge`: a channel every node listens on; a purge on one node is applied
//!   to every node's in-memory tier too.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{CacheKey, Entry};

/// `[cache.regional]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionalSettings {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Longest wait for one Redis call before it counts as a miss.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Prefix of every key the node writes (nodes sharing it share entries).
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_prefix() -> String {
    "edge-cache".into()
}

/// Version of the stored encoding: entries of another version read as misses.
const FORMAT: u8 = 2;

/// A purge, as applied to a tier and published to the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    Url(String),
    Prefix(String),
    Tag(String),
    All,
}

impl Purge {
    /// `kind\tvalue`.
    fn encode(&self) -> String {
        match self {
            Purge::Url(v) => format!("url\t{v}"),
            Purge::Prefix(v) => format!("prefix\t{v}"),
            Purge::Tag(v) => format!("tag\t{v}"),
            Purge::All => "all\t".into(),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (kind, value) = s.split_once('\t')?;
        let value = value.to_string();
        Some(match kind {
            "url" => Purge::Url(value),
            "prefix" => Purge::Prefix(value),
            "tag" => Purge::Tag(value),
            "all" => Purge::All,
            _ => return None,
        })
    }
}

pub struct Regional {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// Calls that failed or timed out (metrics).
    pub errors: Arc<AtomicU64>,
    /// When a failure was last logged (seconds since `since`).
    last_warning: Arc<AtomicU64>,
    since: Instant,
}

/// An entry's metadata; the body follows it raw.
#[derive(Serialize, Deserialize)]
struct Meta {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    stored_unix_ms: u64,
    initial_age_ms: u64,
    lifetime_ms: u64,
    stale_if_error_ms: u64,
    stale_while_revalidate_ms: u64,
    vary: Vec<(String, Option<Vec<u8>>)>,
    url: String,
    tags: Vec<String>,
    /// The key material (a hit compares it, not just the digest in the Redis key).
    key: Vec<u8>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// `[FORMAT][meta length, u32 LE][meta (postcard)][body]`.
fn encode(e: &Entry) -> Result<Vec<u8>> {
    let stored_at = crate::clock::unix_time()
        .saturating_sub(Instant::now().saturating_duration_since(e.stored_at));
    let meta = Meta {
        status: e.status.as_u16(),
        headers: e
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        stored_unix_ms: ms(stored_at),
        initial_age_ms: ms(e.initial_age),
        lifetime_ms: ms(e.lifetime),
        stale_if_error_ms: ms(e.stale_if_error),
        stale_while_revalidate_ms: ms(e.stale_while_revalidate),
        vary: e
            .vary
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.as_ref().map(|v| v.as_bytes().to_vec()),
                )
            })
            .collect(),
        url: e.url.clone(),
        tags: e.tags.clone(),
        key: e.key.to_vec(),
    };
    let meta = postcard::to_allocvec(&meta)?;
    let mut out = Vec::with_capacity(5 + meta.len() + e.body.len());
    out.push(FORMAT);
    out.extend_from_slice(&u32::try_from(meta.len())?.to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&e.body);
    Ok(out)
}

fn decode(raw: &[u8]) -> Result<Entry> {
    let Some((&format, rest)) = raw.split_first() else {
        bail!("empty entry");
    };
    if format != FORMAT {
        bail!("entry format {format}, expected {FORMAT}");
    }
    let len = u32::from_le_bytes(
        rest.get(..4)
            .context("truncated entry")?
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let meta_bytes = rest.get(4..4 + len).context("truncated entry")?;
    let body = Bytes::copy_from_slice(&rest[4 + len..]);
    let m: Meta = postcard::from_bytes(meta_bytes)?;
    let mut headers = HeaderMap::with_capacity(m.headers.len());
    for (k, v) in m.headers {
        headers.append(
            HeaderName::from_bytes(k.as_bytes())?,
            HeaderValue::from_bytes(&v)?,
        );
    }
    let vary = m
        .vary
        .into_iter()
        .map(|(k, v)| {
            Ok((
                HeaderName::from_bytes(k.as_bytes())?,
                v.map(|v| HeaderValue::from_bytes(&v)).transpose()?,
            ))
        })
        .collect::<Result<_>>()?;
    // Its age carries over: time in Redis counts as time in a cache.
    let now_unix = crate::clock::unix_time();
    let in_redis = now_unix.saturating_sub(Duration::from_millis(m.stored_unix_ms));
    let now = Instant::now();
    // (An `Instant` cannot always go back that far: then the time counts as initial age.)
    let (stored_at, extra_age) = match now.checked_sub(in_redis) {
        Some(t) => (t, Duration::ZERO),
        None => (now, in_redis),
    };
    Ok(Entry {
        status: StatusCode::from_u16(m.status)?,
        headers,
        body,
        stored_at,
        initial_age: Duration::from_millis(m.initial_age_ms) + extra_age,
        lifetime: Duration::from_millis(m.lifetime_ms),
        stale_if_error: Duration::from_millis(m.stale_if_error_ms),
        stale_while_revalidate: Duration::from_millis(m.stale_while_revalidate_ms),
        vary,
        url: m.url,
        tags: m.tags,
        key: m.key.into(),
    })
}

/// The hash field of a variant: its `Vary` names and values.
fn variant_field(e: &Entry) -> String {
    let mut material = Vec::new();
    for (k, v) in &e.vary {
        material.extend_from_slice(k.as_str().as_bytes());
        material.push(b'=');
        if let Some(v) = v {
            material.extend_from_slice(v.as_bytes());
        }
        material.push(b'\n');
    }
    let mut key = super::KeyMaterial::default();
    key.field(b'v', &material);
    key.finish().hex()
}

/// Escapes Redis glob characters, so a purge prefix matches literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Regional {
    /// A client that connects on first use and reconnects after failures.
    pub fn connect(s: &RegionalSettings) -> Result<Self> {
        let client = redis::Client::open(s.url.as_str())
            .with_context(|| format!("cache.regional.url {:?}", s.url))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(s.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_lazy(config)
            .context("cache.regional")?;
        Ok(Self {
            client,
            conn,
            prefix: s.prefix.clone(),
            timeout: s.timeout,
            errors: Arc::new(AtomicU64::new(0)),
            last_warning: Arc::new(AtomicU64::new(u64::MAX)),
            since: Instant::now(),
        })
    }

    fn entry_key(&self, key: &CacheKey) -> String {
        format!("{}:e:{}", self.prefix, key.hex())
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        failed(&self.errors, &self.last_warning, self.since, what, e);
    }

    /// Runs one Redis call within the timeout.
    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => Ok(r?),
            Err(_) => bail!("no answer within {:?}", self.timeout),
        }
    }

    /// The stored variant matching `request`, fresh or not; `None` on a miss or when
    /// Redis cannot answer in time.
    pub async fn lookup(&self, key: &CacheKey, request: &HeaderMap) -> Option<Entry> {
        let fields: Vec<(Vec<u8>, Vec<u8>)> = match self
            .call(redis::cmd("HGETALL").arg(self.entry_key(key)))
            .await
        {
            Ok(f) => f,
            Err(e) => {
                self.failed("lookup", &e);
                return None;
            }
        };
        fields
            .iter()
            .filter_map(|(_, raw)| match decode(raw) {
                Ok(e) => Some(e),
                Err(e) => {
                    self.failed("decoding an entry", &e);
                    None
                }
            })
            .find(|e| e.key == key.material && e.matches(request))
    }

    /// Writes `entry` in a background task.
    pub fn store_in_background(&self, key: &CacheKey, entry: Arc<Entry>) {
        let entry_key = self.entry_key(key);
        let prefix = self.prefix.clone();
        let mut conn = self.conn.clone();
        let timeout = self.timeout;
        let (errors, last_warning, since) =
            (self.errors.clone(), self.last_warning.clone(), self.since);
        // Encoding copies the body: off the request's task too.
        tokio::spawn(async move {
            let raw = match encode(&entry) {
                Ok(r) => r,
                Err(e) => {
                    failed(&errors, &last_warning, since, "encoding an entry", &e);
                    return;
                }
            };
            let ttl = i64::try_from(ms(entry.keep_for()).max(1000)).unwrap_or(i64::MAX);
            let mut pipe = redis::pipe();
            pipe.cmd("HSET")
                .arg(&entry_key)
                .arg(variant_field(&entry))
                .arg(raw)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&entry_key)
                .arg(ttl)
                .ignore();
            let indexes = std::iter::once(format!("{prefix}:url:{}", entry.url))
                .chain(entry.tags.iter().map(|t| format!("{prefix}:tag:{t}")));
            for index in indexes {
                pipe.cmd("SADD")
                    .arg(&index)
                    .arg(&entry_key)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&index)
                    .arg(ttl)
                    .ignore();
            }
            // A store may carry a large body: more time than a lookup.
            let r = tokio::time::timeout(timeout * 4, pipe.query_async::<()>(&mut conn)).await;
            let err = match r {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", timeout * 4),
            };
            failed(&errors, &last_warning, since, "store", &err);
        });
    }

    /// Deletes the entries listed in the index sets `indexes` and the sets themselves;
    /// returns how many entry keys went.
    async fn purge_indexes(&self, indexes: &[String]) -> Result<usize> {
        let mut purged = 0;
        for index in indexes {
            let keys: Vec<String> = self.call(redis::cmd("SMEMBERS").arg(index)).await?;
            if !keys.is_empty() {
                purged += self.call::<usize>(redis::cmd("DEL").arg(&keys)).await?;
            }
            self.call::<()>(redis::cmd("DEL").arg(index)).await?;
        }
        Ok(purged)
    }

    /// Every key matching `pattern` (SCAN, so Redis is never blocked).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>> {
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .call(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            out.extend(keys);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    pub async fn purge_url(&self, url: &str) -> Result<usize> {
        self.purge_indexes(&[format!("{}:url:{url}", self.prefix)])
            .await
    }

    pub async fn purge_prefix(&self, prefix: &str) -> Result<usize> {
        let indexes = self
            .scan(&format!(
                "{}:url:{}*",
                glob_escape(&self.prefix),
                glob_escape(prefix)
            ))
            .await?;
        self.purge_indexes(&indexes).await
    }

    pub async fn purge_tag(&self, tag: &str) -> Result<usize> {
        self.purge_indexes(&[format!("{}:tag:{tag}", self.prefix)])
            .await
    }

    /// Applies `purge` to Redis; returns how many entry keys went.
    pub async fn purge(&self, purge: &Purge) -> Result<usize> {
        match purge {
            Purge::Url(u) => self.purge_url(u).await,
            Purge::Prefix(p) => self.purge_prefix(p).await,
            Purge::Tag(t) => self.purge_tag(t).await,
            Purge::All => self.purge_all().await,
        }
    }

    fn channel(&self) -> String {
        format!("{}:purge", self.prefix)
    }

    /// Tells the other nodes (`instance` is this process's, so it skips its own).
    pub async fn publish(&self, instance: u64, purge: &Purge) -> Result<()> {
        let message = format!("{instance:016x}\t{}", purge.encode());
        self.call::<()>(redis::cmd("PUBLISH").arg(self.channel()).arg(message))
            .await
    }

    /// Applies the other nodes' purges to `store`'s in-memory tier, for as long as the
    /// store lives; reconnects when Redis goes away.
    pub fn listen(&self, instance: u64, store: std::sync::Weak<super::Store>) {
        let client = self.client.clone();
        let channel = self.channel();
        let me = format!("{instance:016x}");
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                if store.strong_count() == 0 {
                    return;
                }
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                let pubsub = match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let mut messages = pubsub.into_on_message();
                while let Some(m) = messages.next().await {
                    let Some(store) = store.upgrade() else { return };
                    let Ok(text) = std::str::from_utf8(m.get_payload_bytes()) else {
                        continue;
                    };
                    let Some((from, purge)) = text.split_once('\t') else {
                        continue;
                    };
                    if from == me {
                        continue;
                    }
                    if let Some(purge) = Purge::decode(purge) {
                        let n = store.purge_local(&purge);
                        tracing::info!(?purge, purged = n, "cache purge from another node");
                    }
                }
                // The connection ended: subscribe again.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    pub async fn purge_all(&self) -> Result<usize> {
        let entries = self
            .scan(&format!("{}:e:*", glob_escape(&self.prefix)))
            .await?;
        let mut all = self
            .scan(&format!("{}:*", glob_escape(&self.prefix)))
            .await?;
        all.sort();
        all.dedup();
        for chunk in all.chunks(500) {
            self.call::<usize>(redis::cmd("UNLINK").arg(chunk)).await?;
        }
        Ok(entries.len())
    }
}

/// Counts a failed call and logs it, at most once a minute.
fn failed(
    errors: &AtomicU64,
    last_warning: &AtomicU64,
    since: Instant,
    what: &str,
    e: &dyn std::fmt::Display,
) {
    errors.fetch_add(1, Ordering::Relaxed);
    let now = since.elapsed().as_secs();
    let last = last_warning.load(Ordering::Relaxed);
    if (last == u64::MAX || now >= last + 60)
        && last_warning
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn!(error = %e, "regional cache tier: {what} failed; answering from tier 1 and the origin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let e = Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello \x00 world"),
            stored_at: Instant::now() - Duration::from_secs(3),
            initial_age: Duration::from_secs(2),
            lifetime: Duration::from_secs(60),
            stale_if_error: Duration::from_secs(5),
            stale_while_revalidate: Duration::from_secs(7),
            vary: vec![
                (
                    HeaderName::from_static("accept-language"),
                    Some(HeaderValue::from_static("de")),
                ),
                (HeaderName::from_static("x-absent"), None),
            ],
            url: "http://a.test/x?y".into(),
            tags: vec!["t1".into(), "t2".into()],
            key: Arc::from(&b"\x01\x00material"[..]),
        };
        let d = decode(&encode(&e).unwrap()).unwrap();
        assert_eq!(d.status, e.status);
        assert_eq!(d.headers, e.headers);
        assert_eq!(d.body, e.body);
        assert_eq!(d.vary, e.vary);
        assert_eq!((d.url.as_str(), &d.tags), (e.url.as_str(), &e.tags));
        assert_eq!(d.key, e.key);
        assert_eq!(d.lifetime, e.lifetime);
        assert_eq!(d.stale_while_revalidate, e.stale_while_revalidate);
        let age = d.age(Instant::now()).as_secs_f64();
        assert!((4.9..6.0).contains(&age), "age carried over: {age}");
        // Garbage and other formats are errors, never panics.
        assert!(decode(b"").is_err());
        assert!(decode(&[9, 0, 0, 0, 0]).is_err());
        assert!(decode(&[FORMAT, 255, 255, 255, 255, 1]).is_err());
        assert!(decode(&[FORMAT, 1, 0, 0, 0, 0xff]).is_err());
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        for p in [
            Purge::Url("http://a/b?c\td".into()),
            Purge::Prefix("http://a/".into()),
            Purge::Tag("t".into()),
            Purge::All,
        ] {
            assert_eq!(Purge::decode(&p.encode()), Some(p));
        }
        assert_eq!(Purge::decode("nope"), None);
    }
}
