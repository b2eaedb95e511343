//! What the origin answers a cacheable request: a 304 refreshes the stale copy, anything
//! else streams to the client and is stored when allowed (with the client's Range part
//! cut from it); and the invalidation after an unsafe request (RFC 9111 4.4).

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::{
    CacheFetch, FORWARDING, RouteCache,
    body::{RangeSlice, Tee},
    respond::{respond, set_range_headers},
};
use crate::{
    cache::{CacheKey, Entry, FillGuard, Partial, Store, policy},
    error::Body,
    headers,
};

impl RouteCache {
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
    let origin = store.canonical_url(&request_url).and_then(|u| {
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
            if let Some(u) = store.canonical_url(&absolute)
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
