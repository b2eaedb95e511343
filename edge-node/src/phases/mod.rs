//! The request phases, in the order the pipeline runs them. Each documents what it does
//! when it has nothing to do.

pub mod auth;
pub mod cache;
pub mod challenge;
pub mod early;
pub mod forwarding;
pub mod geo;
pub mod infer;
pub mod personalize;
pub mod rate_limit;
pub mod route;
pub mod upgrade;

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

/// Seconds since the Unix epoch (token and cookie expiries).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
