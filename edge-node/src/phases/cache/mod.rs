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

mod body;
mod key;
mod lookup;
mod phase;
mod respond;
mod settings;
mod store;

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use http::{HeaderMap, HeaderName, HeaderValue, Response, header};

pub use phase::CachePhase;
pub use respond::respond;
pub use settings::RouteCacheSettings;
pub use store::invalidate_after_unsafe;

use crate::{
    cache::{CacheKey, Entry, FillGuard, policy},
    error::Body,
};

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
}
