//! `[route.cache]`: what a route's cache keys on, keeps and serves stale.

use std::time::Duration;

use serde::Deserialize;

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
