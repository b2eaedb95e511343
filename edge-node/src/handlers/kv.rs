//! `handler = { kv = "name" }`: a `[[kv]]` namespace over HTTP. Under the route's
//! path prefix, `/<key>` is one key (percent-decoded, UTF-8) and the prefix itself is
//! the listing:
//!
//! - `GET` / `HEAD /<key>`: the value, its `Content-Type`, `ETag`, `Last-Modified`,
//!   `X-KV-Expires` (Unix seconds) and `X-KV-Metadata`; `If-None-Match` → 304.
//! - `PUT /<key>`: stores the body (201 created, 204 replaced); TTL from `?ttl=<s>` or
//!   `X-KV-TTL: <s>`, metadata from `X-KV-Metadata`; `If-Match: <etag>|*` and
//!   `If-None-Match: *` make it conditional (412).
//! - `DELETE /<key>`: 204, or 404 when absent; `If-Match` as for `PUT`.
//! - `GET /?prefix=&cursor=&limit=`: `{"keys":[{"name","expires","metadata","size"}],
//!   "list_complete":bool,"cursor":…}` in key order.
//!
//! Who may read or write is the route's `[route.auth]` (role rules by method); a
//! route without it is read-only (405). The limits are the namespace's.
//!
//! With an upstream on the route, a read of a missing key is a read-through: the
//! request goes to the upstream as the proxy would send it, a 200 is stored for the
//! route's `fill_ttl` (unless the origin says `no-store` / `private`) and answered
//! (`X-KV-Source: origin`); concurrent misses of one key share one origin request.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Body as _;

use super::proxy::first_frame_checked;
use crate::{
    error::{Body, EdgeError, ErrorKind, empty, full},
    kv::{Condition, Entry, Namespace, Write, WriteError, Written},
    request::{Handler, HandlerFuture, RequestCtx},
};

pub const X_KV_TTL: http::HeaderName = http::HeaderName::from_static("x-kv-ttl");
pub const X_KV_METADATA: http::HeaderName = http::HeaderName::from_static("x-kv-metadata");
pub const X_KV_EXPIRES: http::HeaderName = http::HeaderName::from_static("x-kv-expires");
pub const X_KV_SOURCE: http::HeaderName = http::HeaderName::from_static("x-kv-source");

/// Keys per listing page by default, and at most.
const LIST_DEFAULT: usize = 100;
const LIST_MAX: usize = 1000;

pub struct KvHandler {
    pub ns: Arc<Namespace>,
    /// The route's path prefix: what comes after it is the key.
    pub path_prefix: String,
    pub body_read_timeout: Duration,
    /// Whether the route takes writes: only with `[route.auth]`, whose role rules
    /// (by method) decide who may.
    pub writable: bool,
    /// Read-through from the route's upstream, when it has one.
    pub fill: Option<Fill>,
    /// Whether the namespace may be listed here: not on a route whose role rules
    /// guard prefixes under it (a listing would show those keys' names to anyone
    /// allowed the route's prefix).
    pub listable: bool,
}

/// Fetching missing keys from the route's upstream.
pub struct Fill {
    /// The proxy handler: the request reaches the origin exactly as on a proxy route.
    pub proxy: Arc<dyn Handler>,
    pub ttl: Duration,
    /// Misses being fetched, by key: a second miss waits for the first one's answer.
    pub inflight: std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Filled>>>>,
}

impl Fill {
    pub fn new(proxy: Arc<dyn Handler>, ttl: Duration) -> Self {
        Self {
            proxy,
            ttl,
            inflight: Default::default(),
        }
    }
}

/// A stored content type's longest (a longer one is stored as octet-stream).
const MAX_CONTENT_TYPE: usize = 256;

/// Removes a key's in-flight fetch from the map when its last user is done.
struct InflightGuard<'a> {
    fill: &'a Fill,
    key: &'a str,
    cell: &'a Arc<tokio::sync::OnceCell<Filled>>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = crate::sync::lock(&self.fill.inflight);
        // Two references: the map's and this request's. More: others still wait.
        if inflight
            .get(self.key)
            .is_some_and(|c| Arc::ptr_eq(c, self.cell) && Arc::strong_count(c) <= 2)
        {
            inflight.remove(self.key);
        }
    }
}

/// What one origin fetch came to, shared by every miss that waited for it.
#[derive(Clone)]
pub enum Filled {
    Value(Entry),
    /// Marked `no-store` / `private` by the origin: for its requester only.
    Private(Entry),
    /// The origin has no such thing either (404 / 410).
    Missing,
    Failed(String),
}

pub fn refuse(kind: ErrorKind, detail: impl Into<String>) -> EdgeError {
    let mut e = EdgeError::new(kind, detail);
    e.json = true;
    e
}

impl Handler for KvHandler {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn handle<'a>(&'a self, ctx: &'a mut RequestCtx, req: Request<Body>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let key = self.key(req.uri().path())?;
            let resp = match (req.method().clone(), key) {
                (Method::PUT | Method::DELETE, Some(_)) if !self.writable => Err(refuse(
                    ErrorKind::MethodNotAllowed,
                    "writes need [route.auth] on the route",
                )
                .with_header(header::ALLOW, "GET, HEAD")),
                (Method::GET | Method::HEAD, None) if !self.listable => Err(refuse(
                    ErrorKind::Forbidden,
                    "listing is off on a route whose role rules guard keys under it",
                )),
                (Method::GET | Method::HEAD, None) => self.list(&req).await,
                (Method::GET | Method::HEAD, Some(key)) => self.get(ctx, req, &key).await,
                (Method::PUT, Some(key)) => self.put(req, key).await,
                (Method::DELETE, Some(key)) => self.delete(&req, key).await,
                (_, None) => Err(refuse(
                    ErrorKind::MethodNotAllowed,
                    "the namespace itself is only listed",
                )
                .with_header(header::ALLOW, "GET, HEAD")),
                (_, Some(_)) => Err(refuse(ErrorKind::MethodNotAllowed, "not a KV method")
                    .with_header(header::ALLOW, "GET, HEAD, PUT, DELETE")),
            };
            ctx.timings.record("kv", None, started.elapsed());
            resp
        })
    }
}

impl KvHandler {
    /// The key the path names (`None`: the namespace itself), or why there is none.
    fn key(&self, path: &str) -> Result<Option<String>, EdgeError> {
        let Some(key) = name_after_prefix(path, &self.path_prefix)? else {
            return Ok(None);
        };
        if key.len() > self.ns.settings.max_key_bytes {
            return Err(refuse(
                ErrorKind::UriTooLong,
                format!(
                    "key of {} bytes; kv {} takes at most {}",
                    key.len(),
                    self.ns.settings.name,
                    self.ns.settings.max_key_bytes
                ),
            ));
        }
        Ok(Some(key))
    }

    async fn get(
        &self,
        ctx: &mut RequestCtx,
        req: Request<Body>,
        key: &str,
    ) -> Result<Response<Body>, EdgeError> {
        let stored = self.ns.read(key).await.map_err(storage_failed)?;
        let (entry, from_origin) = match (stored, &self.fill) {
            (Some(e), _) => (e, false),
            (None, None) => return Err(refuse(ErrorKind::NotFound, "no such key")),
            (None, Some(fill)) => match self.fill(fill, ctx, &req, key).await {
                Filled::Value(e) | Filled::Private(e) => (e, true),
                Filled::Missing => return Err(refuse(ErrorKind::NotFound, "no such key (origin)")),
                Filled::Failed(why) => {
                    return Err(refuse(ErrorKind::UpstreamFailed, format!("fill: {why}")));
                }
            },
        };
        let etag = (entry.version != 0).then(|| etag(entry.version));
        let mut resp = if etag
            .as_deref()
            .is_some_and(|t| if_none_match(req.headers(), t))
        {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let len = entry.value.len();
            let mut r = Response::new(if req.method() == Method::HEAD {
                empty()
            } else {
                full(entry.value.clone())
            });
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            if let Ok(v) = HeaderValue::from_str(&entry.content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        };
        let h = resp.headers_mut();
        entry_headers(h, &entry, etag.as_deref());
        if from_origin {
            h.insert(X_KV_SOURCE, HeaderValue::from_static("origin"));
        }
        Ok(resp)
    }

    /// The key from the origin: one fetch per key at a time, every concurrent miss
    /// answered from it (a fetch whose client went away is taken over by a waiter). An
    /// answer the origin marks `no-store` / `private` is its requester's alone: a
    /// waiter fetches its own.
    async fn fill(
        &self,
        fill: &Fill,
        ctx: &mut RequestCtx,
        req: &Request<Body>,
        key: &str,
    ) -> Filled {
        let cell = crate::sync::lock(&fill.inflight)
            .entry(key.to_string())
            .or_default()
            .clone();
        // The map entry goes with the last request using it, however that one ends.
        let _done = InflightGuard {
            fill,
            key,
            cell: &cell,
        };
        let led = std::sync::atomic::AtomicBool::new(false);
        let fetch = async {
            led.store(true, std::sync::atomic::Ordering::Relaxed);
            self.fetch(fill, ctx, req, key).await
        };
        let filled = cell.get_or_init(|| fetch).await.clone();
        match filled {
            Filled::Private(e) if led.load(std::sync::atomic::Ordering::Relaxed) => {
                Filled::Value(e)
            }
            Filled::Private(_) => match self.fetch(fill, ctx, req, key).await {
                Filled::Private(e) => Filled::Value(e),
                other => other,
            },
            other => other,
        }
    }

    async fn fetch(
        &self,
        fill: &Fill,
        ctx: &mut RequestCtx,
        req: &Request<Body>,
        key: &str,
    ) -> Filled {
        // What is kept is everyone's: a plain GET of the key's path, without the query
        // or anything of the client's own (cookies, identity, conditions, ranges), so
        // no one's personal or crafted answer is stored for the others.
        let mut fwd = Request::new(empty());
        *fwd.uri_mut() = http::Uri::builder()
            .path_and_query(req.uri().path())
            .build()
            .unwrap_or_default();
        *fwd.version_mut() = req.version();
        for h in [header::HOST, header::ACCEPT] {
            if let Some(v) = req.headers().get(&h) {
                fwd.headers_mut().insert(h, v.clone());
            }
        }
        let resp = match fill.proxy.handle(ctx, fwd).await {
            Ok(r) => r,
            Err(e) => return Filled::Failed(e.to_string()),
        };
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::GONE => return Filled::Missing,
            other => return Filled::Failed(format!("the origin answered {other}")),
        }
        let (parts, body) = resp.into_parts();
        let max = self.ns.settings.max_value_bytes;
        let value = match crate::body::read_bounded(body, max).await {
            Ok(v) => v,
            Err(crate::body::Unread::TooLarge) => {
                return Filled::Failed(format!(
                    "the origin's value is over max_value_bytes ({max})"
                ));
            }
            Err(crate::body::Unread::Failed(e)) => {
                return Filled::Failed(format!("the origin's value: {e}"));
            }
        };
        let keep = !crate::headers::list(&parts.headers, header::CACHE_CONTROL)
            .any(|d| d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private"));
        let now = crate::clock::unix_ms();
        let mut entry = Entry {
            value,
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= MAX_CONTENT_TYPE)
                .unwrap_or("application/octet-stream")
                .to_string(),
            metadata: None,
            expires_at: Some(now + fill.ttl.as_millis() as u64),
            version: 0,
            written_at: now,
        };
        if !keep {
            return Filled::Private(entry);
        }
        // Absent only: a write that landed while the origin answered is newer.
        match self
            .ns
            .write(Write::Put {
                namespace: self.ns.settings.name.clone(),
                key: key.to_string(),
                entry: entry.clone(),
                condition: Condition::Absent,
                quota: self.ns.settings.quota(),
            })
            .await
        {
            Ok(Written::Created { version } | Written::Replaced { version }) => {
                entry.version = version;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(namespace = %self.ns.settings.name, key, error = %e, "fetched value not kept")
            }
        }
        Filled::Value(entry)
    }

    async fn list(&self, req: &Request<Body>) -> Result<Response<Body>, EdgeError> {
        let (mut prefix, mut cursor, mut limit) = (String::new(), None, LIST_DEFAULT);
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match &*k {
                "prefix" => prefix = v.into_owned(),
                "cursor" => {
                    let after = base64::Engine::decode(
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                        v.as_bytes(),
                    )
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| refuse(ErrorKind::BadRequest, "not a cursor this node gave"))?;
                    cursor = Some(after);
                }
                "limit" => {
                    limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=LIST_MAX).contains(n))
                        .ok_or_else(|| {
                            refuse(ErrorKind::BadRequest, format!("limit is 1 to {LIST_MAX}"))
                        })?;
                }
                _ => {}
            }
        }
        let (keys, complete) = self
            .ns
            .list(&prefix, cursor.as_deref(), limit)
            .await
            .map_err(storage_failed)?;
        let next = (!complete).then(|| keys.last()).flatten().map(|last| {
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                last.key.as_bytes(),
            )
        });
        let body = serde_json::json!({
            "keys": keys.iter().map(|k| serde_json::json!({
                "name": k.key,
                "expires": k.expires_at.map(|t| t / 1000),
                "metadata": k.metadata,
                "size": k.size,
            })).collect::<Vec<_>>(),
            "list_complete": complete,
            "cursor": next,
        });
        let mut resp = Response::new(if req.method() == Method::HEAD {
            empty()
        } else {
            full(format!("{body}\n"))
        });
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }

    async fn put(&self, req: Request<Body>, key: String) -> Result<Response<Body>, EdgeError> {
        let ns = &self.ns.settings;
        let ttl = self.ttl(&req)?;
        let metadata = match req.headers().get(&X_KV_METADATA) {
            None => None,
            Some(v) if v.len() > ns.max_metadata_bytes => {
                return Err(refuse(
                    ErrorKind::PayloadTooLarge,
                    format!("X-KV-Metadata over {} bytes", ns.max_metadata_bytes),
                ));
            }
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| refuse(ErrorKind::BadRequest, "X-KV-Metadata is visible ASCII"))?
                    .to_string(),
            ),
        };
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= MAX_CONTENT_TYPE)
            .unwrap_or("application/octet-stream")
            .to_string();
        let condition = write_condition(req.headers())?;
        let value = self.body(req).await?;
        let now = crate::clock::unix_ms();
        let entry = Entry {
            value,
            content_type,
            metadata,
            expires_at: ttl.map(|t| now + t.as_millis() as u64),
            version: 0,
            written_at: now,
        };
        let written = self
            .ns
            .write(Write::Put {
                namespace: ns.name.clone(),
                key,
                entry,
                condition,
                quota: ns.quota(),
            })
            .await
            .map_err(write_refused)?;
        let (status, version) = match written {
            Written::Created { version } => (StatusCode::CREATED, version),
            Written::Replaced { version } => (StatusCode::NO_CONTENT, version),
            other => unreachable!("a put answers created or replaced, not {other:?}"),
        };
        let mut resp = Response::new(empty());
        *resp.status_mut() = status;
        if let Ok(v) = HeaderValue::from_str(&etag(version)) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        Ok(resp)
    }

    async fn delete(&self, req: &Request<Body>, key: String) -> Result<Response<Body>, EdgeError> {
        let condition = write_condition(req.headers())?;
        let written = self
            .ns
            .write(Write::Delete {
                namespace: self.ns.settings.name.clone(),
                key,
                condition,
            })
            .await
            .map_err(write_refused)?;
        match written {
            Written::Deleted => {
                let mut resp = Response::new(empty());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                Ok(resp)
            }
            _ => Err(refuse(ErrorKind::NotFound, "no such key")),
        }
    }

    /// `?ttl=<seconds>` or `X-KV-TTL`, else the namespace's default; bounded by its
    /// `max_ttl`.
    fn ttl(&self, req: &Request<Body>) -> Result<Option<Duration>, EdgeError> {
        let from_query = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "ttl")
            .map(|(_, v)| v.into_owned());
        let from_header = req
            .headers()
            .get(&X_KV_TTL)
            .map(|v| v.to_str().unwrap_or("").to_string());
        let Some(text) = from_query.or(from_header) else {
            return Ok(self.ns.settings.default_ttl);
        };
        let max = self.ns.settings.max_ttl.as_secs();
        match text.trim().parse::<u64>() {
            Ok(s) if (1..=max).contains(&s) => Ok(Some(Duration::from_secs(s))),
            _ => Err(refuse(
                ErrorKind::BadRequest,
                format!("ttl is whole seconds, 1 to {max}"),
            )),
        }
    }

    /// The whole value, refused (413) as soon as it is over the namespace's limit:
    /// nothing is stored from a body that is too large or never ends.
    async fn body(&self, req: Request<Body>) -> Result<Bytes, EdgeError> {
        let max = self.ns.settings.max_value_bytes;
        let too_large = || {
            refuse(
                ErrorKind::PayloadTooLarge,
                format!(
                    "kv {} takes values of at most {max} bytes",
                    self.ns.settings.name
                ),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let body = req.into_body();
        if body.is_end_stream() {
            return Ok(Bytes::new());
        }
        let body = first_frame_checked(body, self.body_read_timeout).await?;
        crate::body::read_bounded(body, max)
            .await
            .map_err(|e| match e {
                crate::body::Unread::TooLarge => too_large(),
                crate::body::Unread::Failed(e) if e.is::<crate::body::BodyReadTimeout>() => refuse(
                    ErrorKind::RequestTimeout,
                    "the value stopped arriving (http.body_read_timeout)",
                ),
                crate::body::Unread::Failed(e) => {
                    refuse(ErrorKind::BadRequest, format!("request body: {e}"))
                }
            })
    }
}

/// What the path names under the route's prefix (`None`: the prefix itself):
/// percent-decoded, UTF-8, no control characters; `/` allowed.
pub fn name_after_prefix(path: &str, prefix: &str) -> Result<Option<String>, EdgeError> {
    let prefix = prefix.trim_end_matches('/');
    // The route matched the path's match form; the name comes from the path as sent,
    // which must then start with the prefix (up to ASCII case, which `fold_case` may
    // have ignored; a `;param` in the prefix part would make the name ambiguous).
    let rest = match path.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => &path[prefix.len()..],
        _ => {
            return Err(refuse(
                ErrorKind::BadRequest,
                format!("{path} does not start with the route's prefix as written"),
            ));
        }
    };
    let rest = match rest.strip_prefix('/') {
        Some(r) => r,
        None if rest.is_empty() => "",
        None => {
            return Err(refuse(
                ErrorKind::BadRequest,
                "not under the route's prefix",
            ));
        }
    };
    if rest.is_empty() {
        return Ok(None);
    }
    // An encoded slash would name `a/b` on a path whose match form (the one role
    // rules see) is not under `a/`: a name's slashes are written as slashes.
    if rest.to_ascii_lowercase().contains("%2f") {
        return Err(refuse(
            ErrorKind::BadRequest,
            "write a name's / as /, not %2F",
        ));
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(rest).collect();
    let Ok(name) = String::from_utf8(decoded) else {
        return Err(refuse(ErrorKind::BadRequest, "a name in the path is UTF-8"));
    };
    if name.chars().any(char::is_control) {
        return Err(refuse(
            ErrorKind::BadRequest,
            "a name in the path holds no control characters",
        ));
    }
    Ok(Some(name))
}

fn etag(version: u64) -> String {
    format!("\"{version:x}\"")
}

fn entry_headers(h: &mut HeaderMap, entry: &Entry, etag: Option<&str>) {
    if let Some(v) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert(header::ETAG, v);
    }
    let written = std::time::UNIX_EPOCH + Duration::from_millis(entry.written_at);
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(written)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Some(t) = entry.expires_at {
        h.insert(X_KV_EXPIRES, HeaderValue::from(t / 1000));
    }
    if let Some(m) = &entry.metadata
        && let Ok(v) = HeaderValue::from_str(m)
    {
        h.insert(X_KV_METADATA, v);
    }
    // Data from a store is not for shared caches on the way.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// Whether `If-None-Match` names this version (or is `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    crate::headers::list(headers, header::IF_NONE_MATCH)
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// A write's condition: `If-Match: "<etag>"` (or its weak form) / `If-Match: *` /
/// `If-None-Match: *`.
fn write_condition(headers: &HeaderMap) -> Result<Condition, EdgeError> {
    let bad = || {
        refuse(
            ErrorKind::BadRequest,
            "If-Match takes one ETag this node gave or *; If-None-Match on a write only *",
        )
    };
    let mut condition = Condition::Always;
    if headers.contains_key(header::IF_MATCH) {
        let tags: Vec<&str> = crate::headers::list(headers, header::IF_MATCH).collect();
        condition = match tags.as_slice() {
            ["*"] => Condition::Present,
            // A tag names a version whatever coding its answer came in: a browser's
            // GET compressed at the edge carries it weak (`phases::compress`).
            [tag] => tag
                .trim_start_matches("W/")
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| u64::from_str_radix(t, 16).ok())
                .map(Condition::Version)
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        };
    }
    if headers.contains_key(header::IF_NONE_MATCH) {
        let tags: Vec<&str> = crate::headers::list(headers, header::IF_NONE_MATCH).collect();
        if tags != ["*"] || condition != Condition::Always {
            return Err(bad());
        }
        condition = Condition::Absent;
    }
    Ok(condition)
}

fn storage_failed(e: WriteError) -> EdgeError {
    refuse(ErrorKind::StorageFailed, e.to_string())
}

fn write_refused(e: WriteError) -> EdgeError {
    match e {
        WriteError::PreconditionFailed => refuse(ErrorKind::PreconditionFailed, e.to_string()),
        WriteError::KeysFull(_) | WriteError::BytesFull(_) => {
            refuse(ErrorKind::InsufficientStorage, e.to_string())
        }
        WriteError::Storage(_) => storage_failed(e),
    }
}
