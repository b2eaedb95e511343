//! Names of the non-standard headers the node reads or writes on every request, built
//! once (a string name is parsed and validated again at each use), and the small parsers
//! of header values that several modules share.

use http::HeaderName;

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
pub const X_NODE_ID: HeaderName = HeaderName::from_static("x-node-id");
pub const X_REGION: HeaderName = HeaderName::from_static("x-region");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
pub const TIMING_ALLOW_ORIGIN: HeaderName = HeaderName::from_static("timing-allow-origin");

/// The value of cookie `name` in the request's Cookie fields.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}
