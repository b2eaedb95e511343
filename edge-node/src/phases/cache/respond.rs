//! Answers the cache gives itself: from a stored entry (304, 206, 416 or the entry), from a
//! response another request is fetching, the stale copy, and 504 for only-if-cached; each
//! with `X-Cache` and `Cache-Status`.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::{CacheFetch, RouteCache, body::partial_body};
use crate::{
    cache::{Entry, Partial, policy},
    error::{Body, empty, full},
    headers,
};

impl RouteCache {
    /// The stale copy's answer while the refresh runs in the background.
    pub fn stale_answer(fetch: &CacheFetch, method: &Method) -> Option<Response<Body>> {
        let e = fetch.stale.as_ref()?;
        Some(respond(e, method, Instant::now(), "STALE", &fetch.client))
    }
}

/// The answer to `Cache-Control: only-if-cached` when nothing stored fits: 504, and
/// nothing sent to the origin (RFC 9111 5.2.1.7).
pub(super) fn not_cached() -> Response<Body> {
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

/// A waiter's answer: the response another request is fetching, streamed as it arrives.
pub(super) fn respond_streaming(partial: &Arc<Partial>, method: &Method) -> Response<Body> {
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
    // Which copy answered: what it is compressed into can be kept (`phases::compress`).
    if status == StatusCode::OK {
        resp.extensions_mut()
            .insert(crate::phases::compress::StoredCopy {
                key: entry.key.clone(),
                stored_at: entry.stored_at,
            });
    }
    resp
}

/// Content-Range and Content-Length of a 206 (`start..=end` of `len`) or a 416.
pub(super) fn set_range_headers(
    headers: &mut HeaderMap,
    status: StatusCode,
    start: u64,
    end: u64,
    len: u64,
) {
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
