//! Cache phase (routes with `[route.cache]`): GET and HEAD are answered from the
//! in-memory tier while fresh, then from the regional tier (Redis) when configured;
//! concurrent misses for one key make one origin request (the others wait for it, up to
//! `cache.lock_timeout`, or take a stale copy while it runs); storable responses are kept
//! as they stream to the client. Expired copies with a validator are revalidated with a
//! conditional request (a 304 refreshes them); within stale-while-revalidate they answer
//! at once and refresh in the background. Clients' own conditional and Range requests are
//! answered from stored copies (304, 206, 416). End-to-end request headers reach the
//! origin, which declares what its answers vary on (`Vary`, matched against the request
//! as the origin got it); `strip_unkeyed` routes forward only the key. Successful unsafe
//! requests invalidate what they change (RFC 9111 4.4); `CDN-Cache-Control` (RFC 9213)
//! speaks to this cache alone. Responses say where they came from (`X-Cache`,
//! `Cache-Status`). Routes without `[route.cache]`: nothing.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;

mod phase;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
pub use phase::CachePhase;
use serde::Deserialize;

use crate::{
    cache::{CacheKey, Entry, Fill, FillGuard, FillState, Lookup, Partial, Store, policy},
    error::{Body, BoxError, empty, full},
    headers,
};

/// `[route.cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSettings {
    /// Lifetime of responses the origin gives none (`0s`: store only what the origin
    /// marks fresh).
    #[serde(default, with = "crate::duration")]
    pub default_ttl: Duration,
    /// Larger responses stream through without being stored.
    #[serde(default = "default_max_object")]
    pub max_object_bytes: usize,
    /// Request headers that are part of the key, besides those the origin names in
    /// `Vary` (which every stored copy is matched on anyway).
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Cookies that are part of the key.
    #[serde(default)]
    pub key_cookies: Vec<String>,
    /// Forward only the key headers and cookies (and the node's own headers) to the
    /// origin on cacheable requests, so nothing outside the key can shape a stored
    /// answer, for origins that vary on headers without saying so. Off (the default):
    /// every end-to-end header reaches the origin, as at every CDN, and what an answer
    /// varies on the origin declares with `Vary`.
    #[serde(default)]
    pub strip_unkeyed: bool,
    /// Answer from the cache even when a client asks for a fresh copy (`no-cache`,
    /// `max-age=0`, `Pragma: no-cache`), so reloads cannot be aimed at the origin.
    #[serde(default)]
    pub ignore_client_no_cache: bool,
    /// Store responses to authenticated requests even without `public` / `s-maxage`
    /// (only for routes whose responses do not depend on the user).
    #[serde(default)]
    pub share_authorized: bool,
    /// Store responses that set cookies.
    #[serde(default)]
    pub share_set_cookie: bool,
    /// How long past expiry a stored copy answers when the origin fails (unreachable,
    /// timed out, 5xx), unless the response's own `stale-if-error` says otherwise. Not
    /// for responses that forbid stale use (no-cache, must-revalidate, proxy-revalidate,
    /// s-maxage).
    #[serde(default, with = "crate::duration")]
    pub stale_if_error: Duration,
    /// How long past expiry a stored copy answers at once while a background request
    /// refreshes it, unless the response's own `stale-while-revalidate` says otherwise
    /// (not for responses that forbid stale use, as above).
    #[serde(default, with = "crate::duration")]
    pub stale_while_revalidate: Duration,
}

fn default_max_object() -> usize {
    8 << 20
}

/// The cache policy of one route.
pub struct RouteCache {
    /// Set once the origin stored an answer varying on a forwarding header: from then on
    /// those headers are set before lookups (otherwise after, sparing hits the work).
    varies_on_forwarding: std::sync::atomic::AtomicBool,
    key_headers: Vec<HeaderName>,
    strip_unkeyed: bool,
    ignore_client_no_cache: bool,
    key_cookies: Vec<String>,
    max_object: usize,
    policy: policy::RoutePolicy,
    stale_if_error: Duration,
    stale_while_revalidate: Duration,
    /// The route's own header conditions (`headers` of `[[route]]`), in the key: two
    /// routes for one host and path that differ only by a header (a canary pool) keep
    /// their answers apart.
    route_match: String,
}

/// The client headers the cache answers itself (they never reach the origin).
const CLIENT_CONDITIONALS: [HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

/// What the cache decided before the origin.
pub enum CacheStep {
    /// Answered from a stored copy, with its outcome (`X-Cache`).
    Answer(Response<Body>, &'static str),
    /// The origin is needed.
    Forward(CacheFetch),
}

/// A cacheable request on its way to the origin.
pub struct CacheFetch {
    key: CacheKey,
    url: String,
    /// The coalescing lock, when this request fetches for others.
    guard: Option<FillGuard>,
    label: &'static str,
    /// The client's Cache-Control (its no-store holds for what it fetched).
    asked: Option<HeaderValue>,
    /// The client's conditional and Range headers, answered by the cache.
    client: HeaderMap,
    /// An expired copy: revalidated, or served when the origin fails (stale-if-error).
    pub stale: Option<Arc<Entry>>,
    /// Answer with `stale` now and refresh it in the background (stale-while-revalidate).
    pub refresh_in_background: bool,
    /// Not coalesced: the key's last response could not be stored.
    passed: bool,
}

impl CacheFetch {
    /// Why the request goes to the origin (`X-Cache`: MISS, EXPIRED, BYPASS).
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// For a refresh nobody waits on: no client headers to answer.
    pub fn into_background(mut self) -> Self {
        self.client = HeaderMap::new();
        self
    }
}

/// The forwarding headers the node sets toward the origin (`pipeline`): an answer that
/// varies on one of them is matched on the value the node sets.
const FORWARDING: [&str; 6] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "via",
];

/// Whether a header of a cacheable request reaches the origin whatever the key: the
/// forwarding headers and the default identity headers, the node's own.
fn always_forwarded(name: &HeaderName) -> bool {
    let n = name.as_str();
    FORWARDING.contains(&n) || n == "x-user-id" || n == "x-user-roles"
}

impl RouteCache {
    pub fn new(s: &RouteCacheSettings) -> Result<Self> {
        Ok(Self {
            varies_on_forwarding: std::sync::atomic::AtomicBool::new(false),
            key_headers: s
                .key_headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()))
                .collect::<Result<_, _>>()?,
            key_cookies: s.key_cookies.clone(),
            strip_unkeyed: s.strip_unkeyed,
            ignore_client_no_cache: s.ignore_client_no_cache,
            max_object: s.max_object_bytes,
            stale_if_error: s.stale_if_error,
            stale_while_revalidate: s.stale_while_revalidate,
            policy: policy::RoutePolicy {
                default_ttl: s.default_ttl,
                share_authorized: s.share_authorized,
                share_set_cookie: s.share_set_cookie,
            },
            route_match: String::new(),
        })
    }

    /// The cache of a route that matches on these request headers (name → value or `*`).
    pub fn for_route_headers(
        mut self,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        self.route_match = headers
            .iter()
            .map(|(k, v)| format!("{}={v}", k.to_ascii_lowercase()))
            .collect::<Vec<_>>()
            .join("\n");
        self
    }

    /// Whether lookups must see the node's forwarding headers (an answer varies on one).
    pub fn varies_on_forwarding(&self) -> bool {
        self.varies_on_forwarding
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The URL an entry is stored for, in the spelling purges are matched in
    /// (`cache::canonical_url`).
    pub fn url<B>(scheme: &str, req: &Request<B>) -> String {
        crate::cache::canonical_parts(scheme, &authority(req), req.uri().path(), req.uri().query())
    }

    /// The key: scheme, host and port, the (canonical) path, the query's parameters as
    /// sent in a stable order of their names, the key headers and cookies, the A/B
    /// variant, the host a trusted proxy reported and the route's header conditions;
    /// each a length-prefixed field (`cache::KeyMaterial`).
    pub fn key<B>(
        &self,
        scheme: &str,
        req: &Request<B>,
        variant: Option<&str>,
        forwarded_host: Option<&str>,
    ) -> CacheKey {
        let mut m = crate::cache::url_material(
            scheme,
            &authority(req),
            req.uri().path(),
            req.uri().query(),
        );
        for h in &self.key_headers {
            m.field(b'h', h.as_str().as_bytes());
            for v in req.headers().get_all(h) {
                m.field(b'v', v.as_bytes());
            }
        }
        for c in &self.key_cookies {
            match crate::headers::cookie(req.headers(), c) {
                Some(v) => m.field(b'c', c.as_bytes()).field(b'=', v.as_bytes()),
                None => m.field(b'n', c.as_bytes()),
            };
        }
        if let Some(v) = variant {
            m.field(b'x', v.as_bytes());
        }
        // The host a trusted proxy says the client asked reaches the origin
        // (X-Forwarded-Host): it may shape the answer.
        if let Some(h) = forwarded_host {
            m.field(b'f', h.as_bytes());
        }
        if !self.route_match.is_empty() {
            m.field(b'r', self.route_match.as_bytes());
        }
        m.finish()
    }

    /// What of a cacheable request is not forwarded: the client's conditional and Range
    /// headers (the cache answers them from a complete copy), and with `strip_unkeyed`
    /// everything outside the key but the node's own headers and `keep` (identity
    /// headers the auth phase set).
    pub fn strip(&self, headers: &mut HeaderMap, keep: &[HeaderName]) {
        if self.strip_unkeyed {
            self.strip_unkeyed(headers, keep);
        } else {
            for h in &CLIENT_CONDITIONALS {
                headers.remove(h);
            }
        }
    }

    fn strip_unkeyed(&self, headers: &mut HeaderMap, keep: &[HeaderName]) {
        let cookies: Vec<String> = self
            .key_cookies
            .iter()
            .filter_map(|c| crate::headers::cookie(headers, c).map(|v| format!("{c}={v}")))
            .collect();
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| !always_forwarded(k) && !self.key_headers.contains(k) && !keep.contains(k))
            .cloned()
            .collect();
        for k in doomed {
            headers.remove(k);
        }
        if !cookies.is_empty()
            && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
        {
            headers.insert(header::COOKIE, v);
        }
    }

    /// Looks the request (with the node's own headers already set, as the origin would
    /// get it, so stored `Vary` variants match) up in the tiers, and strips what is not
    /// forwarded (`strip`; it is forwarded as it is left).
    pub async fn lookup<B>(
        &self,
        store: &Arc<Store>,
        scheme: &str,
        req: &mut Request<B>,
        variant: Option<&str>,
        forwarded_host: Option<&str>,
        keep: &[HeaderName],
    ) -> CacheStep {
        let method = req.method().clone();
        let key = self.key(scheme, req, variant, forwarded_host);
        // What the client asked of caches, before its unkeyed headers go.
        let mut asked = policy::directives(req.headers());
        if self.ignore_client_no_cache {
            // The origin is protected from clients' reloads: their no-cache, max-age=0
            // and Pragma do not force a fetch (nginx's, varnish's and Cloudflare's
            // default). Their no-store and stricter limits still hold.
            asked.no_cache = false;
            if asked.max_age == Some(0) {
                asked.max_age = None;
            }
        }
        // (Pragma is read from the headers: none when clients' reloads are ignored.)
        let pragma_from = if self.ignore_client_no_cache {
            &HeaderMap::new()
        } else {
            req.headers()
        };
        let serve = policy::may_serve_from_cache(&method, pragma_from, &asked);
        // The client set limits on a stored answer's age: a copy past them is fetched
        // again, never answered stale meanwhile.
        let limited = asked.max_age.is_some() || asked.min_fresh.is_some();
        let mut client = HeaderMap::new();
        for h in CLIENT_CONDITIONALS {
            for v in req.headers().get_all(&h) {
                client.append(h.clone(), v.clone());
            }
        }
        let mut fetch = CacheFetch {
            key,
            // Only a forwarded request needs it (to store the answer): a hit skips it.
            url: String::new(),
            guard: None,
            label: "BYPASS",
            asked: req.headers().get(header::CACHE_CONTROL).cloned(),
            client,
            stale: None,
            refresh_in_background: false,
            passed: false,
        };
        self.strip(req.headers_mut(), keep);
        if !serve {
            if asked.only_if_cached {
                return CacheStep::Answer(not_cached(), "MISS");
            }
            fetch.url = Self::url(scheme, req);
            return CacheStep::Forward(fetch);
        }
        fetch.label = "MISS";
        let mut waited = false;
        loop {
            let now = Instant::now();
            match store.lookup(&fetch.key, req.headers(), now) {
                Lookup::Hit(e) if e.satisfies(&asked, now) => {
                    return CacheStep::Answer(
                        respond(&e, &method, now, "HIT", &fetch.client),
                        "HIT",
                    );
                }
                // Fresh, but older than this client accepts: revalidated for it.
                Lookup::Hit(e) => {
                    fetch.label = "BYPASS";
                    fetch.stale = Some(e);
                }
                Lookup::Stale(e) => {
                    fetch.label = "EXPIRED";
                    fetch.stale = Some(e);
                }
                Lookup::Miss => {}
            }
            if asked.only_if_cached {
                return CacheStep::Answer(not_cached(), "MISS");
            }
            if waited {
                break;
            }
            // Its last response could not be stored: no point queueing behind another.
            if store.is_uncacheable(&fetch.key) {
                fetch.passed = true;
                break;
            }
            // A HEAD's answer is never stored: it neither fetches for nor waits on others.
            if method == Method::HEAD {
                break;
            }
            match store.fill(&fetch.key) {
                Fill::Leader(guard) => {
                    fetch.guard = Some(guard);
                    // The regional tier, before the origin: another node may hold it.
                    if let Some(regional) = &store.regional
                        && let Some(e) = regional.lookup(&fetch.key, req.headers()).await
                    {
                        let e = Arc::new(e);
                        if e.is_fresh(now) && e.satisfies(&asked, now) {
                            store.insert_local(&fetch.key, e.clone());
                            return CacheStep::Answer(
                                respond(&e, &method, now, "REGIONAL-HIT", &fetch.client),
                                "REGIONAL-HIT",
                            );
                        }
                        if fetch.stale.is_none() {
                            fetch.label = "EXPIRED";
                            fetch.stale = Some(e);
                        }
                    }
                    fetch.refresh_in_background = !limited
                        && fetch
                            .stale
                            .as_ref()
                            .is_some_and(|e| e.usable_while_revalidating(now));
                    break;
                }
                Fill::Follower(mut rx) => {
                    // Someone is refreshing it: a copy within stale-while-revalidate
                    // answers now.
                    if !limited
                        && let Some(e) = &fetch.stale
                        && e.usable_while_revalidating(now)
                    {
                        return CacheStep::Answer(
                            respond(e, &method, now, "STALE", &fetch.client),
                            "STALE",
                        );
                    }
                    // Otherwise wait (bounded) for the request already fetching it: its
                    // response streams to us as it arrives, or it ends and we look
                    // again (still missing: fetch too).
                    let deadline = tokio::time::Instant::from_std(crate::duration::instant_after(
                        std::time::Instant::now(),
                        store.lock_timeout,
                    ));
                    let state = tokio::time::timeout_at(
                        deadline,
                        rx.wait_for(|s| !matches!(s, FillState::Pending)),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|s| s.clone());
                    if let Some(FillState::Streaming(partial)) = state {
                        if fetch.client.is_empty() && partial.matches(req.headers()) {
                            return CacheStep::Answer(respond_streaming(&partial, &method), "HIT");
                        }
                        // Conditional or Range requests are answered from the stored
                        // copy once it is complete.
                        let _ = tokio::time::timeout_at(
                            deadline,
                            rx.wait_for(|s| matches!(s, FillState::Done)),
                        )
                        .await;
                    }
                    waited = true;
                }
            }
        }
        fetch.url = Self::url(scheme, req);
        CacheStep::Forward(fetch)
    }

    /// Turns the forwarded request into a revalidation of the stale copy, when it has a
    /// validator.
    pub fn prepare(fetch: &CacheFetch, headers: &mut HeaderMap) {
        let Some(e) = &fetch.stale else { return };
        if let Some(etag) = e.headers.get(header::ETAG) {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = e.headers.get(header::LAST_MODIFIED) {
            headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }

    /// The stale copy's answer while the refresh runs in the background.
    pub fn stale_answer(fetch: &CacheFetch, method: &Method) -> Option<Response<Body>> {
        let e = fetch.stale.as_ref()?;
        Some(respond(e, method, Instant::now(), "STALE", &fetch.client))
    }

    /// The origin's answer to a cacheable request: a 304 refreshes the stale copy and
    /// answers from it; anything else streams to the client and is stored when allowed
    /// (in every tier). `forwarded` is the request as it went to the origin.
    pub fn complete(
        &self,
        store: &Arc<Store>,
        fetch: CacheFetch,
        method: &Method,
        mut forwarded: HeaderMap,
        authorized: bool,
        resp: Response<Body>,
    ) -> Response<Body> {
        if let Some(cc) = &fetch.asked {
            forwarded.insert(header::CACHE_CONTROL, cc.clone());
        }
        // The validators were the cache's, not the client's.
        forwarded.remove(header::IF_NONE_MATCH);
        forwarded.remove(header::IF_MODIFIED_SINCE);
        if resp.status() == StatusCode::NOT_MODIFIED
            && let Some(stale) = &fetch.stale
        {
            let mut entry = self.refreshed(stale, resp.headers(), &forwarded, authorized);
            let now = Instant::now();
            // This client gets what the origin's 304 sent it (its cookie, say); the
            // copy kept for everyone else does not.
            let mut answer = respond(&entry, method, now, fetch.label, &fetch.client);
            let directives = policy::response_directives(&entry.headers);
            withhold(&mut entry.headers, &directives);
            if !self.policy.share_set_cookie {
                entry.headers.remove(header::SET_COOKIE);
            }
            let stored = entry.lifetime > Duration::ZERO || policy::has_validators(&entry.headers);
            answer.headers_mut().insert(
                "cache-status",
                HeaderValue::from_static(if stored {
                    "edge-node; fwd=stale; fwd-status=304; stored"
                } else {
                    "edge-node; fwd=stale; fwd-status=304"
                }),
            );
            if stored {
                store.insert(&fetch.key, entry);
            }
            return answer;
        }
        let range = (*method == Method::GET && resp.status() == StatusCode::OK)
            .then(|| {
                let len = resp
                    .headers()
                    .get(header::CONTENT_LENGTH)?
                    .to_str()
                    .ok()?
                    .parse()
                    .ok()?;
                Some((policy::range(&fetch.client, resp.headers(), len), len))
            })
            .flatten();
        // Read to the end for the client's part only when the whole body is stored.
        let whole_stored = range.as_ref().is_some_and(|&(_, len)| {
            len <= self.max_object as u64
                && self
                    .lifetime(
                        method,
                        &forwarded,
                        authorized,
                        resp.status(),
                        resp.headers(),
                    )
                    .is_some()
        });
        let mut resp = self.store(
            store,
            fetch.key,
            fetch.url,
            method,
            &forwarded,
            authorized,
            resp,
            fetch.guard,
            fetch.label,
        );
        if fetch.passed
            && let Some(v) = resp.headers().get(headers::CACHE_STATUS)
            && let Ok(v) = HeaderValue::from_str(&format!(
                "{}; detail=uncacheable",
                v.to_str().unwrap_or("edge-node; fwd=miss")
            ))
        {
            resp.headers_mut().insert(headers::CACHE_STATUS, v);
        }
        match range {
            Some((policy::RangeAnswer::Full, _)) | None => resp,
            // The client asked for a part: the whole body is still fetched (and stored)
            // by a task of its own, the client gets its part of it.
            Some((answer, len)) => {
                let (mut parts, body) = resp.into_parts();
                let (status, start, end) = match answer {
                    policy::RangeAnswer::Partial { start, end } => {
                        (StatusCode::PARTIAL_CONTENT, start, end)
                    }
                    _ => (StatusCode::RANGE_NOT_SATISFIABLE, 1, 0),
                };
                parts.status = status;
                set_range_headers(&mut parts.headers, status, start, end, len);
                let body = RangeSlice::spawn(body, start, end, whole_stored);
                Response::from_parts(parts, body)
            }
        }
    }

    /// The stale copy with the headers of the origin's 304 (RFC 9111 4.3.4).
    fn refreshed(
        &self,
        stale: &Entry,
        not_modified: &HeaderMap,
        forwarded: &HeaderMap,
        authorized: bool,
    ) -> Entry {
        let mut headers = stale.headers.clone();
        for name in not_modified.keys() {
            if matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "x-cache" | "cache-status" | "via"
            ) {
                continue;
            }
            headers.remove(name);
            for v in not_modified.get_all(name) {
                if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                    headers.append(name.clone(), v);
                }
            }
        }
        let lifetime = self
            .lifetime(&Method::GET, forwarded, authorized, stale.status, &headers)
            .unwrap_or(Duration::ZERO);
        let (stale_if_error, stale_while_revalidate) = policy::stale_windows(
            &policy::response_directives(&headers),
            self.stale_if_error,
            self.stale_while_revalidate,
        );
        Entry {
            status: stale.status,
            body: stale.body.clone(),
            stored_at: Instant::now(),
            initial_age: policy::initial_age(not_modified),
            lifetime,
            stale_if_error,
            stale_while_revalidate,
            vary: stale.vary.clone(),
            url: stale.url.clone(),
            tags: stale.tags.clone(),
            key: stale.key.clone(),
            headers,
        }
    }

    /// The freshness lifetime of a response to `request`, or `None` when it must not be
    /// stored.
    fn lifetime(
        &self,
        method: &Method,
        request: &HeaderMap,
        authorized: bool,
        status: StatusCode,
        response: &HeaderMap,
    ) -> Option<Duration> {
        let mut check = request.clone();
        if authorized {
            // The token was consumed by the auth phase; the response is still per user.
            check.insert(header::AUTHORIZATION, HeaderValue::from_static("x"));
        }
        policy::storable(
            method,
            &check,
            status,
            response,
            self.policy,
            SystemTime::now(),
        )
    }

    /// Whether a response could not be stored whoever had asked: a plain GET without
    /// credentials or cache directives of its own would not have it stored either.
    fn never_storable(&self, status: StatusCode, response: &HeaderMap) -> bool {
        self.lifetime(&Method::GET, &HeaderMap::new(), false, status, response)
            .is_none()
    }

    /// Wraps an origin response so it is stored when it ends (if storable and not too
    /// large); `fill` (the coalescing lock) is released when the body ends either way.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        store: &Arc<Store>,
        key: CacheKey,
        url: String,
        method: &Method,
        request: &HeaderMap,
        authorized: bool,
        mut resp: Response<Body>,
        fill: Option<FillGuard>,
        label: &'static str,
    ) -> Response<Body> {
        let lifetime = self.lifetime(method, request, authorized, resp.status(), resp.headers());
        let stored = lifetime.is_some();
        let h = resp.headers_mut();
        h.insert(headers::X_CACHE, HeaderValue::from_static(label));
        h.insert(
            "cache-status",
            HeaderValue::from_static(forwarded_status(label, stored)),
        );
        let Some(lifetime) = lifetime else {
            // Hit-for-pass only when no request could have had it stored: a HEAD, an
            // authorized request or a client's no-store says nothing about the others.
            if fill.is_some() && self.never_storable(resp.status(), resp.headers()) {
                store.mark_uncacheable(&key);
            }
            drop(fill);
            return resp;
        };
        let vary: Vec<(HeaderName, Option<HeaderValue>)> =
            headers::list(resp.headers(), header::VARY)
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .map(|n| {
                    let v = request
                        .get(&n)
                        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
                    (n, v)
                })
                .collect();
        if vary.iter().any(|(n, _)| FORWARDING.contains(&n.as_str())) {
            self.varies_on_forwarding
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // Copies, not clones: hyper's header values are slices of its read buffer, and
        // keeping one would keep the whole buffer alive as long as the entry.
        let directives = policy::response_directives(resp.headers());
        let mut headers = owned(resp.headers());
        headers.remove(headers::X_CACHE);
        headers.remove(headers::CACHE_STATUS);
        withhold(&mut headers, &directives);
        let tags: Vec<String> = ["surrogate-key", "cache-tag"]
            .iter()
            .flat_map(|h| headers.get_all(*h).iter())
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([' ', ',']))
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        // Surrogate keys are for the cache, not for clients.
        for h in ["surrogate-key", "cache-tag"] {
            headers.remove(h);
            resp.headers_mut().remove(h);
        }
        let status = resp.status();
        let initial_age = policy::initial_age(resp.headers());
        let (stale_if_error, stale_while_revalidate) = policy::stale_windows(
            &directives,
            self.stale_if_error,
            self.stale_while_revalidate,
        );
        let store = store.clone();
        let max = self.max_object;
        // A body of known, storable size that others may be waiting for: they stream it
        // as it arrives (and if this client goes away first, a task reads it to the end
        // for them).
        let length = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let partial = match (&fill, length) {
            (Some(guard), Some(len)) if len <= max => {
                let p = Partial::new(status, headers.clone(), vary.clone());
                guard.publish(p.clone());
                Some(p)
            }
            _ => None,
        };
        resp.map(move |inner| {
            let done: Box<dyn FnOnce(Bytes) + Send + Sync> = Box::new(move |body| {
                store.insert(
                    &key,
                    Entry {
                        status,
                        headers,
                        body,
                        stored_at: Instant::now(),
                        initial_age,
                        lifetime,
                        stale_if_error,
                        stale_while_revalidate,
                        vary,
                        url,
                        tags,
                        key: key.material.clone(),
                    },
                );
            });
            let (buf, partial) = match partial {
                Some(p) => (BytesMut::with_capacity(length.unwrap_or(0)), Some(p)),
                None => (BytesMut::new(), None),
            };
            BodyExt::boxed(Tee {
                inner,
                buf: Some(buf),
                max,
                done: Some(done),
                fill,
                partial,
            })
        })
    }
}

/// The answer to `Cache-Control: only-if-cached` when nothing stored fits: 504, and
/// nothing sent to the origin (RFC 9111 5.2.1.7).
fn not_cached() -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(b"not in the cache\n")));
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(headers::X_CACHE, HeaderValue::from_static("MISS"));
    h.insert(
        headers::CACHE_STATUS,
        HeaderValue::from_static("edge-node; detail=only-if-cached"),
    );
    resp
}

/// Removes from a copy to be stored the fields that a qualified `private="…"` or
/// `no-cache="…"` keeps for the one client that got the origin's answer (a Set-Cookie,
/// say): the stored copy serves everyone else without them. `directives` are the
/// response's.
fn withhold(headers: &mut HeaderMap, directives: &policy::Directives) {
    for field in &directives.withheld {
        headers.remove(field.as_str());
    }
}

/// `Cache-Status` (RFC 9211) of an answer that went to the origin: why it was
/// forwarded (`fwd`), and whether it was stored.
fn forwarded_status(label: &str, stored: bool) -> &'static str {
    match (label, stored) {
        // The request's own Cache-Control (no-cache, no-store) sent it on.
        ("BYPASS", false) => "edge-node; fwd=request",
        ("BYPASS", true) => "edge-node; fwd=request; stored",
        ("EXPIRED", false) => "edge-node; fwd=stale",
        ("EXPIRED", true) => "edge-node; fwd=stale; stored",
        (_, false) => "edge-node; fwd=miss",
        (_, true) => "edge-node; fwd=miss; stored",
    }
}

/// A copy of `headers` that shares no buffer with the message they came from.
fn owned(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
            out.append(k.clone(), v);
        }
    }
    out
}

/// A waiter's answer: the response another request is fetching, streamed as it arrives.
fn respond_streaming(partial: &Arc<Partial>, method: &Method) -> Response<Body> {
    let body = if *method == Method::HEAD {
        empty()
    } else {
        partial_body(partial)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = partial.status;
    *resp.headers_mut() = partial.headers.clone();
    let h = resp.headers_mut();
    h.insert(header::AGE, HeaderValue::from(0u32));
    h.insert(headers::X_CACHE, HeaderValue::from_static("HIT"));
    h.insert(
        "cache-status",
        HeaderValue::from_static("edge-node; hit; collapsed"),
    );
    resp
}

/// The body of a response being fetched, from its first byte, as it arrives.
fn partial_body(partial: &Arc<Partial>) -> Body {
    let rx = partial.subscribe();
    let stream = futures_util::stream::unfold((rx, 0usize), |(mut rx, next)| async move {
        if next == usize::MAX {
            return None;
        }
        loop {
            // What the fetch has now: the next chunk, the end, or nothing yet.
            let step = {
                let progress = rx.borrow_and_update();
                match (progress.chunks.get(next), progress.end) {
                    (Some(chunk), _) => Some(Ok(chunk.clone())),
                    (None, Some(true)) => Some(Err(None)),
                    (None, Some(false)) => Some(Err(Some("the origin's body failed"))),
                    (None, None) => None,
                }
            };
            match step {
                Some(Ok(chunk)) => return Some((Ok(Frame::data(chunk)), (rx, next + 1))),
                Some(Err(None)) => return None,
                Some(Err(Some(why))) => {
                    let e: BoxError = why.into();
                    return Some((Err(e), (rx, usize::MAX)));
                }
                None => {}
            }
            if rx.changed().await.is_err() {
                let e: BoxError = "the fetch was abandoned".into();
                return Some((Err(e), (rx, usize::MAX)));
            }
        }
    });
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

/// The answer from a stored entry: 304 when the client's conditional request matches,
/// 206 or 416 for a Range request, else the entry (no body for HEAD).
pub fn respond(
    entry: &Entry,
    method: &Method,
    now: Instant,
    label: &'static str,
    client: &HeaderMap,
) -> Response<Body> {
    let mut status = entry.status;
    let mut body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        entry.body.clone()
    };
    let mut headers = entry.headers.clone();
    let full_response = entry.status == StatusCode::OK;
    if full_response && policy::not_modified(client, &entry.headers) {
        status = StatusCode::NOT_MODIFIED;
        body = Bytes::new();
        headers.remove(header::CONTENT_LENGTH);
    } else if full_response && *method == Method::GET {
        let len = entry.body.len() as u64;
        match policy::range(client, &entry.headers, len) {
            policy::RangeAnswer::Full => {}
            policy::RangeAnswer::Partial { start, end } => {
                status = StatusCode::PARTIAL_CONTENT;
                body = entry.body.slice(start as usize..=end as usize);
                set_range_headers(&mut headers, status, start, end, len);
            }
            policy::RangeAnswer::Unsatisfiable => {
                status = StatusCode::RANGE_NOT_SATISFIABLE;
                body = Bytes::new();
                set_range_headers(&mut headers, status, 1, 0, len);
            }
        }
    }
    if full_response {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let age = entry.age(now).as_secs();
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.insert(headers::X_CACHE, HeaderValue::from_static(label));
    let remaining = entry.lifetime.as_secs() as i64 - age as i64;
    if let Ok(v) = HeaderValue::from_str(&format!("edge-node; hit; ttl={remaining}")) {
        headers.insert(headers::CACHE_STATUS, v);
    }
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Content-Range and Content-Length of a 206 (`start..=end` of `len`) or a 416.
fn set_range_headers(headers: &mut HeaderMap, status: StatusCode, start: u64, end: u64, len: u64) {
    let (range, length) = if status == StatusCode::PARTIAL_CONTENT {
        (format!("bytes {start}-{end}/{len}"), end - start + 1)
    } else {
        (format!("bytes */{len}"), 0)
    };
    if let Ok(v) = HeaderValue::from_str(&range) {
        headers.insert(header::CONTENT_RANGE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

/// The client's part (`start..=end`) of a body that a task of its own reads: to the end
/// when the whole body is being stored (so it still is when the client has its part or
/// goes away), otherwise only while the client still wants bytes.
struct RangeSlice {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>,
    /// Offset of the next byte the task sends.
    offset: u64,
    start: u64,
    end: u64,
}

impl RangeSlice {
    /// `start > end`: the client gets nothing (416), the body is still read.
    fn spawn(mut body: Body, start: u64, end: u64, read_to_end: bool) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut client = Some(tx);
            while let Some(frame) = body.frame().await {
                let data = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => Ok(d),
                        Err(_) => continue,
                    },
                    Err(e) => Err(e),
                };
                let failed = data.is_err();
                if let Some(tx) = &client
                    && tx.send(data).await.is_err()
                {
                    client = None;
                }
                // Nobody left to read for: the origin's connection goes, not its bytes.
                if failed || (client.is_none() && !read_to_end) {
                    break;
                }
            }
        });
        BodyExt::boxed(RangeSlice {
            rx,
            offset: 0,
            start,
            end,
        })
    }
}

impl HttpBody for RangeSlice {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.is_end_stream() {
                return Poll::Ready(None);
            }
            let data = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(d))) => d,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Some(Err("the origin's body ended early".into())));
                }
                Poll::Pending => return Poll::Pending,
            };
            let first = self.offset;
            let last = first + data.len() as u64; // exclusive
            self.offset = last;
            let from = self.start.max(first);
            let to = (self.end + 1).min(last);
            if from < to {
                let part = data.slice((from - first) as usize..(to - first) as usize);
                return Poll::Ready(Some(Ok(Frame::data(part))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.start > self.end || self.offset > self.end
    }
}

/// Host and port as the client sent them (`:authority` or Host), lower-case.
fn authority<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase)
        })
        .unwrap_or_default()
}

/// RFC 9111 4.4: a successful response to an unsafe request (POST, PUT, DELETE, …)
/// invalidates what is stored for its URL, and for the URLs of the same origin its
/// `Location` and `Content-Location` name.
pub fn invalidate_after_unsafe(
    store: &Arc<Store>,
    scheme: &str,
    request_url: String,
    status: StatusCode,
    response: &HeaderMap,
) {
    if !(status.is_success() || status.is_redirection()) {
        return;
    }
    let origin = crate::cache::canonical_url(&request_url).and_then(|u| {
        let uri: http::Uri = u.parse().ok()?;
        Some(uri.authority()?.as_str().to_string())
    });
    let mut urls = vec![request_url];
    if let Some(authority) = origin {
        for h in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(v) = response.get(h).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let absolute = if v.starts_with('/') && !v.starts_with("//") {
                format!("{scheme}://{authority}{v}")
            } else {
                v.to_string()
            };
            // Another origin's URLs are not this response's to invalidate.
            if let Some(u) = crate::cache::canonical_url(&absolute)
                && u.strip_prefix(&format!("{scheme}://{authority}"))
                    .is_some_and(|rest| rest.starts_with('/'))
            {
                urls.push(u);
            }
        }
    }
    for u in urls {
        store.invalidate(u);
    }
}

/// Streams a response to the client and keeps a copy; the copy is stored when the body
/// ends complete and within the size limit.
struct Tee {
    inner: Body,
    buf: Option<BytesMut>,
    max: usize,
    done: Option<Box<dyn FnOnce(Bytes) + Send + Sync>>,
    fill: Option<FillGuard>,
    /// Waiters streaming the body as it arrives.
    partial: Option<Arc<Partial>>,
}

impl Drop for Tee {
    /// The client went away before the end: when others are streaming this response, a
    /// task reads it to the end for them (and stores it).
    fn drop(&mut self) {
        let Some(p) = &self.partial else { return };
        if p.waiters() == 0 {
            return;
        }
        let inner = std::mem::replace(&mut self.inner, empty());
        let rest = Tee {
            inner,
            buf: self.buf.take(),
            max: self.max,
            done: self.done.take(),
            fill: self.fill.take(),
            partial: self.partial.take(),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut rest = rest;
                while let Some(frame) = rest.frame().await {
                    if frame.is_err() {
                        break;
                    }
                }
            });
        }
    }
}

impl Tee {
    /// The body is complete: store the copy, then let the waiters look again.
    fn finish(&mut self) {
        let complete = self.buf.is_some();
        if let (Some(buf), Some(done)) = (self.buf.take(), self.done.take()) {
            done(buf.freeze());
        }
        if let Some(p) = self.partial.take() {
            p.end(complete);
        }
        self.fill = None;
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(p) = &this.partial {
                        p.push(data.clone());
                    }
                    let over = this
                        .buf
                        .as_ref()
                        .is_some_and(|b| b.len() + data.len() > this.max);
                    if over {
                        this.buf = None;
                    } else if let Some(b) = &mut this.buf {
                        b.extend_from_slice(data);
                    }
                }
                // A body of known length ends with its last frame: the server may never
                // poll for the end.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.buf = None;
                if let Some(p) = this.partial.take() {
                    p.end(false);
                }
                this.fill = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
