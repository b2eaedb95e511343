//! The edge cache, sans-IO where it can be: what may be stored and for how long
//! (RFC 9111 freshness from Cache-Control / Expires), cache keys, and the in-memory
//! tier (moka, bounded by bytes) with one entry per `Vary` variant. The pipeline phase
//! (`phases::cache`) does the I/O: lookups, coalescing, and storing responses as they
//! stream to the client.

pub mod policy;
pub mod regional;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use tokio::sync::watch;

/// `[cache]`: the in-memory tier shared by every route that caches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Bytes of response bodies and headers kept (least recently used go first).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// How long concurrent misses for one key wait for the first one's response before
    /// fetching on their own.
    #[serde(default = "default_lock_timeout", with = "crate::duration")]
    pub lock_timeout: Duration,
    /// `[cache.regional]`: the second tier, in Redis, shared by the nodes of a region.
    #[serde(default)]
    pub regional: Option<regional::RegionalSettings>,
}

fn default_max_bytes() -> u64 {
    256 << 20
}
fn default_lock_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            lock_timeout: default_lock_timeout(),
            regional: None,
        }
    }
}

/// Copies kept for one URL (its key-header, cookie, A/B and `Vary` combinations).
const MAX_COPIES_PER_URL: usize = 64;

/// How long a response that could not be stored exempts its key from coalescing.
const UNCACHEABLE_FOR: Duration = Duration::from_secs(10);

/// Whether `request` is the variant stored for the `Vary` headers and values `vary`.
fn vary_matches(vary: &[(HeaderName, Option<HeaderValue>)], request: &HeaderMap) -> bool {
    vary.iter()
        .all(|(name, value)| request.get(name) == value.as_ref())
}

/// The URL an entry is stored under and purges name, in one spelling: scheme and host
/// lower-cased, the scheme's default port dropped, the path canonical under `policy`
/// (`crate::target`: the node's `[http.path]`, as requests were keyed), the query's parameters in a stable order of their
/// names (values of one name keep their order) and otherwise as sent. `None` for a URL
/// that is not absolute or whose path cannot be made canonical.
pub fn canonical_url(url: &str, policy: crate::target::PathSettings) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    let path = crate::target::canonical_path(path, policy).ok()?;
    // No host (`https://:443/`): nothing a request could have been stored under.
    if authority.host().is_empty() {
        return None;
    }
    Some(canonical_parts(
        &scheme,
        authority.as_str(),
        &path,
        uri.query(),
    ))
}

/// The query's parameters as sent (still escaped, so `a=1%26b%3D2` stays one parameter),
/// in a stable order of their names: clients that order parameters differently share
/// copies; the values of a repeated name keep their order, which origins may read.
pub fn sorted_query(query: &str) -> Vec<&str> {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_by_key(|p| p.split('=').next().unwrap_or(p));
    pairs
}

/// `canonical_url` from its parts (the authority as a request gave it, the path
/// already canonical).
pub fn canonical_parts(scheme: &str, authority: &str, path: &str, query: Option<&str>) -> String {
    let authority = canonical_authority(scheme, authority);
    let path = if path.is_empty() { "/" } else { path };
    let mut url = format!("{scheme}://{authority}{path}");
    // A query of no parameters (`?`, `?&`) is no query, as in the key.
    let pairs = sorted_query(query.unwrap_or(""));
    if !pairs.is_empty() {
        url.push('?');
        url.push_str(&pairs.join("&"));
    }
    url
}

/// An authority lower-cased, without the scheme's default port.
pub fn canonical_authority(scheme: &str, authority: &str) -> String {
    let mut authority = authority.to_ascii_lowercase();
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => "",
    };
    if !default_port.is_empty() && authority.ends_with(default_port) {
        authority.truncate(authority.len() - default_port.len());
    }
    authority
}

/// The 128-bit digest a key is found by (SHA-256, truncated): collision-resistant, so
/// nobody can build a request whose key lands on another's.
pub type KeyDigest = [u8; 16];

/// A cache key: its digest (coalescing and hit-for-pass go by it), the digest of its URL
/// part (the copies of one URL, all its key-header and variant combinations, are stored
/// together, so a purge or an invalidation by URL is one removal), and the material it
/// was made of, which every stored copy keeps and every hit compares (a digest alone is
/// never trusted).
#[derive(Clone, Debug)]
pub struct CacheKey {
    pub digest: KeyDigest,
    pub url: KeyDigest,
    pub material: Arc<[u8]>,
}

impl CacheKey {
    /// Hex of the digest (the regional tier's key names).
    pub fn hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Key material: fields, each a tag, its length and its bytes, so no two different sets
/// of fields (a `&` inside a value, a newline inside a header) spell the same material.
/// A key's starts with the URL's fields (`url_material`); the default has no URL part.
#[derive(Default)]
pub struct KeyMaterial {
    bytes: Vec<u8>,
    /// Where the URL's fields end.
    url_end: usize,
}

/// The material of a URL (scheme, authority as `canonical_authority` spells it,
/// canonical path, the query's parameters in `sorted_query` order): the part of every
/// key that names what was asked, and what a purge by URL finds copies by.
pub fn url_material(scheme: &str, authority: &str, path: &str, query: Option<&str>) -> KeyMaterial {
    let mut m = KeyMaterial {
        bytes: Vec::with_capacity(64 + path.len() + query.map_or(0, str::len)),
        url_end: 0,
    };
    m.field(b's', scheme.as_bytes())
        .field(b'a', canonical_authority(scheme, authority).as_bytes())
        .field(
            b'p',
            if path.is_empty() {
                b"/"
            } else {
                path.as_bytes()
            },
        );
    for pair in sorted_query(query.unwrap_or("")) {
        m.field(b'q', pair.as_bytes());
    }
    m.url_end = m.bytes.len();
    m
}

/// The digest copies of a `canonical_url` are stored under.
fn url_digest(canonical: &str) -> Option<KeyDigest> {
    let uri: http::Uri = canonical.parse().ok()?;
    let m = url_material(
        uri.scheme_str()?,
        uri.authority()?.as_str(),
        uri.path(),
        uri.query(),
    );
    Some(digest(&m.bytes))
}

fn digest(bytes: &[u8]) -> KeyDigest {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

impl KeyMaterial {
    pub fn field(&mut self, tag: u8, value: &[u8]) -> &mut Self {
        self.bytes.push(tag);
        // Lengths past u32 cannot occur (request heads are bounded); saturating keeps
        // the encoding total anyway.
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(value);
        self
    }

    pub fn finish(self) -> CacheKey {
        CacheKey {
            digest: digest(&self.bytes),
            url: digest(&self.bytes[..self.url_end]),
            material: self.bytes.into(),
        }
    }
}

/// A stored response.
pub struct Entry {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: Instant,
    /// Age the response already had when stored (its `Age` header).
    pub initial_age: Duration,
    /// Freshness lifetime.
    pub lifetime: Duration,
    /// How long past its lifetime it may still answer when the origin fails
    /// (stale-if-error: the response's directive or the route's default).
    pub stale_if_error: Duration,
    /// How long past its lifetime it may answer while a background request refreshes it
    /// (stale-while-revalidate: the response's directive or the route's default).
    pub stale_while_revalidate: Duration,
    /// The request headers the response varies on, with the values it was stored for.
    pub vary: Vec<(HeaderName, Option<HeaderValue>)>,
    /// `scheme://host/path?query` it was stored for (purge by URL or prefix).
    pub url: String,
    /// The material of the key it was stored under: a hit must match it exactly.
    pub key: Arc<[u8]>,
    /// Surrogate keys (`Surrogate-Key` / `Cache-Tag` of the response; purge by tag).
    pub tags: Vec<String>,
}

impl Entry {
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime
    }

    /// Whether it is fresh enough for the request's own limits: `max-age` (no older than
    /// that) and `min-fresh` (fresh for at least that much longer), RFC 9111 5.2.1.
    pub fn satisfies(&self, asked: &policy::Directives, now: Instant) -> bool {
        let age = self.age(now);
        asked.max_age.is_none_or(|m| age <= Duration::from_secs(m))
            && asked
                .min_fresh
                .is_none_or(|m| age + Duration::from_secs(m) <= self.lifetime)
    }

    /// Whether it may answer in place of a failed origin.
    pub fn usable_on_error(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime + self.stale_if_error
    }

    /// Whether it may answer at once while a background request refreshes it.
    pub fn usable_while_revalidating(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime + self.stale_while_revalidate
    }

    /// How long a copy is worth keeping: its lifetime and stale windows, and a while
    /// longer when it can be revalidated (a 304 is cheaper than the body).
    pub fn keep_for(&self) -> Duration {
        let stale = self.stale_if_error.max(self.stale_while_revalidate);
        let revalidation = if policy::has_validators(&self.headers) {
            self.lifetime.max(Duration::from_secs(60))
        } else {
            Duration::ZERO
        };
        self.lifetime + stale + revalidation
    }

    fn matches(&self, request: &HeaderMap) -> bool {
        vary_matches(&self.vary, request)
    }

    /// Bytes the entry is charged in the in-memory tier: all it holds (a long query is
    /// in the URL and in the key material too).
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(k, v)| k.as_str().len() + v.as_ref().map_or(0, HeaderValue::len) + 32)
            .sum();
        let tags: usize = self.tags.iter().map(|t| t.len() + 24).sum();
        let total = self.body.len() + headers + vary + tags + self.url.len() + self.key.len() + 256;
        total.min(u32::MAX as usize) as u32
    }
}

/// The variants stored under one key (a response with `Vary` has one per combination).
#[derive(Clone, Default)]
struct Variants(Vec<Arc<Entry>>);

/// The in-memory tier, and the misses in progress (for coalescing).
pub struct Store {
    /// Per URL digest: the copies of that URL (`CacheKey::url`).
    entries: moka::sync::Cache<KeyDigest, Variants>,
    inflight: Mutex<HashMap<KeyDigest, watch::Receiver<FillState>>>,
    pub lock_timeout: Duration,
    /// The regional tier, when configured.
    pub regional: Option<regional::Regional>,
    /// This process among the nodes sharing the regional tier.
    instance: u64,
    /// Keys whose last response could not be stored ("hit-for-pass"): for a while their
    /// misses go straight to the origin instead of queueing behind one another.
    uncacheable: moka::sync::Cache<KeyDigest, ()>,
    /// `[http.path]`: how the stored URLs' paths were made canonical, so a purge or an
    /// invalidation names them in the same spelling (a reload may change it).
    path_policy: arc_swap::ArcSwap<crate::target::PathSettings>,
}

/// A lookup's answer.
pub enum Lookup {
    Hit(Arc<Entry>),
    /// Stored but no longer fresh (kept for stale serving).
    Stale(Arc<Entry>),
    Miss,
}

/// Where a fetch for a key stands, for the requests waiting on it.
#[derive(Clone)]
pub enum FillState {
    /// The origin has not answered yet.
    Pending,
    /// A storable response is arriving: waiters may stream it as it comes.
    Streaming(Arc<Partial>),
    /// Finished (stored or not): look again.
    Done,
}

/// A storable response on its way from the origin, shared with the requests that
/// waited for it.
pub struct Partial {
    pub status: StatusCode,
    /// As stored (no X-Cache / Cache-Status).
    pub headers: HeaderMap,
    pub vary: Vec<(HeaderName, Option<HeaderValue>)>,
    progress: watch::Sender<Progress>,
}

/// The body so far, and how it ended.
#[derive(Default)]
pub struct Progress {
    pub chunks: Vec<Bytes>,
    /// `Some(true)`: complete; `Some(false)`: the origin's body failed.
    pub end: Option<bool>,
}

impl Partial {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        vary: Vec<(HeaderName, Option<HeaderValue>)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            status,
            headers,
            vary,
            progress: watch::channel(Progress::default()).0,
        })
    }

    pub fn push(&self, chunk: Bytes) {
        self.progress.send_modify(|p| p.chunks.push(chunk));
    }

    pub fn end(&self, complete: bool) {
        self.progress.send_modify(|p| {
            if p.end.is_none() {
                p.end = Some(complete);
            }
        });
    }

    /// Whether it is the variant `request` asks for.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        vary_matches(&self.vary, request)
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Requests streaming it now.
    pub fn waiters(&self) -> usize {
        self.progress.receiver_count()
    }
}

/// The right to fetch a key for everyone waiting on it; dropping it releases them.
pub struct FillGuard {
    store: Arc<Store>,
    key: KeyDigest,
    state: watch::Sender<FillState>,
}

impl FillGuard {
    /// Lets the waiters stream the response while it arrives.
    pub fn publish(&self, partial: Arc<Partial>) {
        let _ = self.state.send(FillState::Streaming(partial));
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.store
            .inflight
            .lock()
            .expect("inflight lock")
            .remove(&self.key);
        if let FillState::Streaming(p) = &*self.state.borrow() {
            // Released before the body ended: the fetch failed or was abandoned.
            p.end(false);
        }
        let _ = self.state.send(FillState::Done);
    }
}

/// Who fetches a missing key.
pub enum Fill {
    /// This request fetches; others wait on it.
    Leader(FillGuard),
    /// Another request is fetching: wait for it (or stream its response), then look
    /// again.
    Follower(watch::Receiver<FillState>),
}

impl Store {
    /// The tiers of `s`. The regional tier connects lazily (and reconnects by itself), so
    /// a Redis that is down at start-up is not an error; this must run inside the Tokio
    /// runtime that will drive that connection.
    pub fn new(s: &CacheSettings) -> anyhow::Result<Arc<Self>> {
        let regional = s
            .regional
            .as_ref()
            .map(regional::Regional::connect)
            .transpose()?;
        Ok(Arc::new(Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(s.max_bytes)
                .weigher(|_, v: &Variants| v.0.iter().map(|e| e.weight()).sum::<u32>())
                .build(),
            inflight: Mutex::new(HashMap::new()),
            lock_timeout: s.lock_timeout,
            regional,
            instance: fastrand::u64(..),
            uncacheable: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(UNCACHEABLE_FOR)
                .build(),
            path_policy: Default::default(),
        }))
    }

    pub fn lookup(&self, key: &CacheKey, request: &HeaderMap, now: Instant) -> Lookup {
        let Some(variants) = self.entries.get(&key.url) else {
            return Lookup::Miss;
        };
        match variants
            .0
            .iter()
            .find(|e| e.key == key.material && e.matches(request))
        {
            Some(e) if e.is_fresh(now) => Lookup::Hit(e.clone()),
            Some(e) => Lookup::Stale(e.clone()),
            None => Lookup::Miss,
        }
    }

    /// The response for `key` could not be stored for anyone: its next misses do not
    /// wait for one another (nothing would come of the wait).
    pub fn mark_uncacheable(&self, key: &CacheKey) {
        self.uncacheable.insert(key.digest, ());
    }

    pub fn is_uncacheable(&self, key: &CacheKey) -> bool {
        self.uncacheable.contains_key(&key.digest)
    }

    /// Stores in the in-memory tier only (a copy promoted from the regional tier).
    pub fn insert_local(&self, key: &CacheKey, entry: Arc<Entry>) {
        debug_assert!(entry.key == key.material);
        self.uncacheable.invalidate(&key.digest);
        let mut variants = self.entries.get(&key.url).unwrap_or_default();
        // A new response for the same key and variant replaces the old one.
        variants
            .0
            .retain(|e| !(e.key == entry.key && e.vary == entry.vary));
        // However many key-header values and variants a client makes up, one URL keeps
        // a bounded number (the oldest go).
        if variants.0.len() >= MAX_COPIES_PER_URL {
            variants.0.remove(0);
        }
        variants.0.push(entry);
        self.entries.insert(key.url, variants);
    }

    /// Removes every copy stored for `url` (`canonical_url` spelling); how many URLs'
    /// copies went (0 or 1).
    pub fn purge_url(&self, url: &str) -> usize {
        let Some(d) = url_digest(url) else { return 0 };
        usize::from(self.entries.remove(&d).is_some())
    }

    /// Stores in every tier: in memory now, in the regional tier in the background (a
    /// slow or absent Redis never holds up a response).
    pub fn insert(&self, key: &CacheKey, entry: Entry) {
        let entry = Arc::new(entry);
        self.insert_local(key, entry.clone());
        if let Some(r) = &self.regional {
            r.store_in_background(key, entry);
        }
    }

    /// Removes every entry `matches` selects; returns how many keys went.
    pub fn purge_where(&self, matches: impl Fn(&Entry) -> bool) -> usize {
        let doomed: Vec<KeyDigest> = self
            .entries
            .iter()
            .filter(|(_, v)| v.0.iter().any(|e| matches(e)))
            .map(|(k, _)| *k)
            .collect();
        for k in &doomed {
            self.entries.invalidate(k);
        }
        doomed.len()
    }

    pub fn purge_all(&self) {
        self.entries.invalidate_all();
    }

    /// Applies `purge` to the in-memory tier; how many keys went (`usize::MAX`: all).
    pub fn purge_local(&self, purge: &regional::Purge) -> usize {
        use regional::Purge;
        match purge {
            Purge::Url(u) => self.purge_url(u),
            Purge::Prefix(p) => self.purge_where(|e| e.url.starts_with(p.as_str())),
            Purge::Tag(t) => self.purge_where(|e| e.tags.iter().any(|x| x == t)),
            Purge::All => {
                self.purge_all();
                usize::MAX
            }
        }
    }

    /// Purges every tier, and every other node's in-memory tier through the regional
    /// tier's channel: `(keys purged here, keys purged in Redis)`.
    pub async fn purge(&self, purge: &regional::Purge) -> (usize, Option<anyhow::Result<usize>>) {
        let local = self.purge_local(purge);
        (local, self.purge_regional(purge).await)
    }

    /// Purges the regional tier and tells the other nodes; `None` without one.
    async fn purge_regional(&self, purge: &regional::Purge) -> Option<anyhow::Result<usize>> {
        let r = self.regional.as_ref()?;
        Some(match r.purge(purge).await {
            Ok(n) => r.publish(self.instance, purge).await.map(|()| n),
            Err(e) => Err(e),
        })
    }

    /// The path policy requests are keyed under (set at start and on every reload).
    pub fn set_path_policy(&self, policy: crate::target::PathSettings) {
        self.path_policy.store(Arc::new(policy));
    }

    /// `url` spelled as the entries stored for it are (`canonical_url` under the node's
    /// path policy); `None` when no request could have been stored under it.
    pub fn canonical_url(&self, url: &str) -> Option<String> {
        canonical_url(url, **self.path_policy.load())
    }

    /// Invalidates what is stored for `url` (RFC 9111 4.4): here at once, in the
    /// regional tier and on the other nodes in the background.
    pub fn invalidate(self: &Arc<Self>, url: String) {
        let purge = regional::Purge::Url(url);
        self.purge_local(&purge);
        if self.regional.is_some() {
            let store = self.clone();
            tokio::spawn(async move {
                let _ = store.purge_regional(&purge).await;
            });
        }
    }

    /// Starts applying other nodes' purges (with a regional tier).
    pub fn listen_for_purges(self: &Arc<Self>) {
        if let Some(r) = &self.regional {
            r.listen(self.instance, Arc::downgrade(self));
        }
    }

    /// Elects who fetches `key`.
    pub fn fill(self: &Arc<Self>, key: &CacheKey) -> Fill {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        if let Some(rx) = inflight.get(&key.digest) {
            return Fill::Follower(rx.clone());
        }
        let (state, rx) = watch::channel(FillState::Pending);
        inflight.insert(key.digest, rx);
        Fill::Leader(FillGuard {
            store: self.clone(),
            key: key.digest,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &CacheKey, url: &str) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"x"),
            stored_at: Instant::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            vary: Vec::new(),
            url: url.into(),
            tags: Vec::new(),
            key: key.material.clone(),
        }
    }

    #[tokio::test]
    async fn one_url_keeps_a_bounded_number_of_copies_and_one_purge_takes_them_all() {
        let store = Store::new(&CacheSettings::default()).unwrap();
        let url = store.canonical_url("http://app.test/x?b=2&a=1").unwrap();
        let keys: Vec<CacheKey> = (0..200)
            .map(|i| {
                let mut m = url_material("http", "app.test", "/x", Some("a=1&b=2"));
                m.field(b'h', format!("lang-{i}").as_bytes());
                m.finish()
            })
            .collect();
        assert!(
            keys.windows(2)
                .all(|k| k[0].url == k[1].url && k[0].digest != k[1].digest)
        );
        for k in &keys {
            store.insert_local(k, Arc::new(entry(k, &url)));
        }
        let now = Instant::now();
        let stored = keys
            .iter()
            .filter(|k| matches!(store.lookup(k, &HeaderMap::new(), now), Lookup::Hit(_)))
            .count();
        assert_eq!(stored, MAX_COPIES_PER_URL);
        // The newest are kept.
        assert!(matches!(
            store.lookup(&keys[199], &HeaderMap::new(), now),
            Lookup::Hit(_)
        ));
        // Found by fuzzing: spellings that were not fixed points of canonical_url.
        assert_eq!(
            store.canonical_url("http://a.test//x/./y?&").as_deref(),
            Some("http://a.test/x/y")
        );
        assert_eq!(store.canonical_url("https://:443/b"), None);
        // The URL as anyone spells it names them all.
        assert_eq!(
            store.purge_url(&store.canonical_url("http://APP.test:80/x?a=1&b=2").unwrap()),
            1
        );
        assert!(matches!(
            store.lookup(&keys[199], &HeaderMap::new(), now),
            Lookup::Miss
        ));
    }
}
