//! Cache phase (routes with `[route.cache]`): GET and HEAD are answered from the
//! in-memory tier while fresh; concurrent misses for one key make one origin request
//! (the others wait for it, up to `cache.lock_timeout`); storable responses are kept as
//! they stream to the client. Request headers that are not part of the key are not
//! forwarded on cacheable requests, so nothing outside the key can change a stored
//! body. Responses say where they came from (`X-Cache`, `Cache-Status`). Routes without
//! `[route.cache]`: nothing.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde::Deserialize;

use crate::{
    cache::{Entry, FillGuard, Store, policy},
    error::{Body, BoxError, full},
    upstream::balance::stable_hash,
};

/// `[route.cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSettings {
    /// Lifetime of responses the origin gives none (`0s`: store only what the origin
    /// marks fresh).
    #[serde(default, with = "crate::config::duration")]
    pub default_ttl: Duration,
    /// Larger responses stream through without being stored.
    #[serde(default = "default_max_object")]
    pub max_object_bytes: usize,
    /// Request headers that are part of the key (and so the only client headers,
    /// besides the node's own, that reach the origin on cacheable requests).
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Cookies that are part of the key (the only ones forwarded on cacheable requests).
    #[serde(default)]
    pub key_cookies: Vec<String>,
    /// Store responses to authenticated requests even without `public` / `s-maxage`
    /// (only for routes whose responses do not depend on the user).
    #[serde(default)]
    pub share_authorized: bool,
    /// Store responses that set cookies.
    #[serde(default)]
    pub share_set_cookie: bool,
    /// How long past expiry a stored copy answers when the origin fails (unreachable,
    /// timed out, 5xx), unless the response's own `stale-if-error` says otherwise.
    #[serde(default, with = "crate::config::duration")]
    pub stale_if_error: Duration,
}

fn default_max_object() -> usize {
    8 << 20
}

/// The cache policy of one route.
pub struct RouteCache {
    key_headers: Vec<HeaderName>,
    key_cookies: Vec<String>,
    max_object: usize,
    policy: policy::RoutePolicy,
    stale_if_error: Duration,
}

/// Headers of a cacheable request that reach the origin whatever the key: the host and
/// what the node itself sets.
const ALWAYS_FORWARDED: [&str; 8] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "via",
    "x-user-id",
    "x-user-roles",
];

impl RouteCache {
    pub fn new(s: &RouteCacheSettings) -> Result<Self> {
        Ok(Self {
            key_headers: s
                .key_headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()))
                .collect::<Result<_, _>>()?,
            key_cookies: s.key_cookies.clone(),
            max_object: s.max_object_bytes,
            stale_if_error: s.stale_if_error,
            policy: policy::RoutePolicy {
                default_ttl: s.default_ttl,
                share_authorized: s.share_authorized,
                share_set_cookie: s.share_set_cookie,
            },
        })
    }

    /// The URL an entry is stored for (purges match it).
    pub fn url<B>(scheme: &str, req: &Request<B>) -> String {
        let authority = authority(req);
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        format!("{scheme}://{authority}{pq}")
    }

    /// The key: scheme, host and port, path, the query with its parameters sorted, and
    /// the key headers and cookies.
    pub fn key<B>(&self, scheme: &str, req: &Request<B>) -> u64 {
        let authority = authority(req);
        let mut query: Vec<(String, String)> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        query.sort();
        let mut material = format!("{scheme}\n{authority}\n{}\n", req.uri().path());
        for (k, v) in &query {
            material.push_str(&format!("{k}={v}&"));
        }
        for h in &self.key_headers {
            material.push('\n');
            for v in req.headers().get_all(h) {
                material.push_str(&String::from_utf8_lossy(v.as_bytes()));
                material.push(',');
            }
        }
        for c in &self.key_cookies {
            material.push_str(&format!(
                "\ncookie {c}={}",
                super::cookie(req.headers(), c).unwrap_or_default()
            ));
        }
        stable_hash(material.as_bytes())
    }

    /// Removes what is not in the key from a cacheable request before it is forwarded.
    pub fn strip_unkeyed(&self, headers: &mut HeaderMap) {
        let cookies: Vec<String> = self
            .key_cookies
            .iter()
            .filter_map(|c| super::cookie(headers, c).map(|v| format!("{c}={v}")))
            .collect();
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| !ALWAYS_FORWARDED.contains(&k.as_str()) && !self.key_headers.contains(k))
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

    /// The response for a stored entry.
    pub fn respond(
        entry: &Entry,
        method: &Method,
        now: Instant,
        label: &'static str,
    ) -> Response<Body> {
        let body = if *method == Method::HEAD {
            full(Bytes::new())
        } else {
            full(entry.body.clone())
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = entry.status;
        *resp.headers_mut() = entry.headers.clone();
        let h = resp.headers_mut();
        let age = entry.age(now).as_secs();
        h.insert(header::AGE, HeaderValue::from(age));
        h.insert("x-cache", HeaderValue::from_static(label));
        let ttl = entry.lifetime.as_secs().saturating_sub(age);
        if let Ok(v) = HeaderValue::from_str(&format!("edge-node; hit; ttl={ttl}")) {
            h.insert("cache-status", v);
        }
        resp
    }

    /// Wraps an origin response so it is stored when it ends (if storable and not too
    /// large); `fill` (the coalescing lock) is released when the body ends either way.
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &self,
        store: &std::sync::Arc<Store>,
        key: u64,
        url: String,
        method: &Method,
        request: &HeaderMap,
        authorized: bool,
        mut resp: Response<Body>,
        fill: Option<FillGuard>,
        label: &'static str,
    ) -> Response<Body> {
        let policy = self.policy;
        let mut check = request.clone();
        if authorized {
            // The token was consumed by the auth phase; the response is still per user.
            check.insert(header::AUTHORIZATION, HeaderValue::from_static("x"));
        }
        let lifetime = policy::storable(
            method,
            &check,
            resp.status(),
            resp.headers(),
            policy,
            SystemTime::now(),
        );
        let stored = lifetime.is_some();
        let h = resp.headers_mut();
        h.insert("x-cache", HeaderValue::from_static(label));
        let status = if stored {
            "edge-node; fwd=miss; stored"
        } else {
            "edge-node; fwd=miss"
        };
        h.insert("cache-status", HeaderValue::from_static(status));
        let Some(lifetime) = lifetime else {
            drop(fill);
            return resp;
        };
        let vary: Vec<(HeaderName, Option<HeaderValue>)> = resp
            .headers()
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .map(|n| {
                let v = request.get(&n).cloned();
                (n, v)
            })
            .collect();
        let mut headers = resp.headers().clone();
        headers.remove("x-cache");
        headers.remove("cache-status");
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
        let stale_if_error = policy::directives(resp.headers())
            .stale_if_error
            .map_or(self.stale_if_error, Duration::from_secs);
        let store = store.clone();
        let max = self.max_object;
        resp.map(move |inner| {
            let done: Box<dyn FnOnce(Bytes) + Send + Sync> = Box::new(move |body| {
                store.insert(
                    key,
                    Entry {
                        status,
                        headers,
                        body,
                        stored_at: Instant::now(),
                        initial_age,
                        lifetime,
                        stale_if_error,
                        vary,
                        url,
                        tags,
                    },
                );
            });
            http_body_util::BodyExt::boxed(Tee {
                inner,
                buf: Some(BytesMut::new()),
                max,
                done: Some(done),
                fill,
            })
        })
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

/// Streams a response to the client and keeps a copy; the copy is stored when the body
/// ends complete and within the size limit.
struct Tee {
    inner: Body,
    buf: Option<BytesMut>,
    max: usize,
    done: Option<Box<dyn FnOnce(Bytes) + Send + Sync>>,
    fill: Option<FillGuard>,
}

impl Tee {
    /// The body is complete: store the copy, then let the waiters look again.
    fn finish(&mut self) {
        if let (Some(buf), Some(done)) = (self.buf.take(), self.done.take()) {
            done(buf.freeze());
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
