//! RFC 9111 decisions, without I/O: whether a response may be stored by a shared cache,
//! for how long it is fresh, and whether a request may be served from the cache.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode, header};

/// The directives of the Cache-Control fields of a message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// Request only: the answer must stay fresh this much longer (RFC 9111 5.2.1.3).
    pub min_fresh: Option<u64>,
    /// Request only: answer from the cache or with 504, never from the origin (5.2.1.7).
    pub only_if_cached: bool,
    /// RFC 5861: how long a stale copy may answer when the origin fails.
    pub stale_if_error: Option<u64>,
    /// RFC 5861: how long a stale copy may answer while it is refreshed in the background.
    pub stale_while_revalidate: Option<u64>,
    /// Fields named by the qualified forms `private="…"` and `no-cache="…"` (RFC 9111
    /// 5.2.2.7, 5.2.2.4), lower-case: the rest of the response may be stored and served
    /// to others, those fields never.
    pub withheld: Vec<String>,
}

impl Directives {
    /// Whether a qualified `private` / `no-cache` names this (lower-case) field.
    pub fn withholds(&self, field: &str) -> bool {
        self.withheld.iter().any(|f| f == field)
    }
}

/// Fields a qualified `private` / `no-cache` cannot withhold from a stored copy: without
/// them the body would be misread (a gzip body served as plain text).
const NOT_WITHHOLDABLE: [&str; 5] = [
    "content-encoding",
    "content-type",
    "content-range",
    "content-length",
    "transfer-encoding",
];

/// The largest delta-seconds a cache must represent (RFC 9111 1.2.2): a larger value, or
/// one too large to parse, counts as this (about 68 years), so no later sum overflows.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// A delta-seconds value (RFC 9111 1.2.2): digits only, capped at `MAX_DELTA_SECONDS`;
/// `None` for anything else (a sign, a fraction, nothing).
pub fn delta_seconds(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        v.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

/// The members of a Cache-Control value: split on commas outside quoted strings, so a
/// qualified `private="set-cookie, x-session"` stays one member. `None` when a quoted
/// string never ends (the value cannot be read reliably).
fn members(value: &str) -> Option<Vec<&str>> {
    let (parts, closed) = crate::headers::split_unquoted(value, ',');
    closed.then(|| {
        parts
            .into_iter()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect()
    })
}

pub fn directives(headers: &HeaderMap) -> Directives {
    directives_of(headers, &header::CACHE_CONTROL)
}

/// The directives a shared cache at the edge follows for a response: `CDN-Cache-Control`
/// (RFC 9213) when the origin sent one it could read, which then replaces Cache-Control
/// (and Expires) for this cache; otherwise Cache-Control. Browsers keep reading
/// Cache-Control, so an origin can tell the edge and clients different things.
pub fn response_directives(headers: &HeaderMap) -> Directives {
    if cdn_cache_control(headers) {
        directives_of(headers, &CDN_CACHE_CONTROL)
    } else {
        directives(headers)
    }
}

/// `CDN-Cache-Control` (RFC 9213).
pub const CDN_CACHE_CONTROL: header::HeaderName =
    header::HeaderName::from_static("cdn-cache-control");

/// Whether the response carries a `CDN-Cache-Control` this cache follows: present and
/// parseable (RFC 9213 2.1: an invalid one is ignored, and Cache-Control applies).
pub fn cdn_cache_control(headers: &HeaderMap) -> bool {
    let mut any = false;
    for v in headers.get_all(&CDN_CACHE_CONTROL) {
        match v.to_str().ok().and_then(members) {
            Some(_) => any = true,
            None => return false,
        }
    }
    any
}

fn directives_of(headers: &HeaderMap, field: &header::HeaderName) -> Directives {
    let mut d = Directives::default();
    for v in headers.get_all(field) {
        let Ok(v) = v.to_str() else { continue };
        let Some(parts) = members(v) else {
            // Unreadable: as cautious as the directive could have been.
            d.private = true;
            d.no_cache = true;
            continue;
        };
        for part in parts {
            let (name, arg) = part.split_once('=').map_or((part, None), |(n, a)| {
                (n.trim(), Some(a.trim().trim_matches('"')))
            });
            // Invalid numbers count as 0 where that is the cautious reading.
            let secs = || arg.and_then(delta_seconds);
            // The fields a qualified private / no-cache withholds; `None` when it covers
            // the whole response: unqualified, or naming a field the body cannot be
            // served without.
            let withheld = || -> Option<Vec<String>> {
                let fields: Vec<String> = arg?
                    .split(',')
                    .map(|f| f.trim().to_ascii_lowercase())
                    .filter(|f| !f.is_empty())
                    .collect();
                let partial = !fields.is_empty()
                    && !fields
                        .iter()
                        .any(|f| NOT_WITHHOLDABLE.contains(&f.as_str()));
                partial.then_some(fields)
            };
            match name.to_ascii_lowercase().as_str() {
                "no-store" => d.no_store = true,
                "private" => match withheld() {
                    Some(fields) => d.withheld.extend(fields),
                    None => d.private = true,
                },
                "no-cache" => match withheld() {
                    Some(fields) => d.withheld.extend(fields),
                    None => d.no_cache = true,
                },
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                // RFC 9111 4.2.1: of a directive given twice, the first counts.
                "max-age" => _ = d.max_age.get_or_insert(secs().unwrap_or(0)),
                "s-maxage" => _ = d.s_maxage.get_or_insert(secs().unwrap_or(0)),
                "min-fresh" => d.min_fresh = d.min_fresh.or(secs()),
                "only-if-cached" => d.only_if_cached = true,
                "stale-if-error" => d.stale_if_error = d.stale_if_error.or(secs()),
                "stale-while-revalidate" => {
                    d.stale_while_revalidate = d.stale_while_revalidate.or(secs())
                }
                _ => {}
            }
        }
    }
    d
}

/// Statuses a cache may store without explicit freshness ("heuristically cacheable")
/// are left out: the node stores only what the origin or the route gives a lifetime.
fn storable_status(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

/// What the route allows beyond the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoutePolicy {
    /// Lifetime when the origin gives none (zero: do not store such responses).
    pub default_ttl: Duration,
    /// Store responses to requests carrying Authorization, or carrying Set-Cookie.
    pub share_authorized: bool,
    pub share_set_cookie: bool,
}

/// The freshness lifetime of a response a shared cache may store, or `None` when it
/// must not be stored.
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    route: RoutePolicy,
    now: SystemTime,
) -> Option<Duration> {
    if *method != Method::GET || !storable_status(status) {
        return None;
    }
    let req = directives(request);
    let resp = response_directives(response);
    // With CDN-Cache-Control, Expires speaks to browsers only.
    let expires = !cdn_cache_control(response) && response.contains_key(header::EXPIRES);
    if req.no_store || resp.no_store || resp.private {
        return None;
    }
    if crate::headers::list(response, header::VARY).any(|f| f == "*") {
        return None;
    }
    // RFC 9111 3.5: a request with Authorization only if the response says so.
    if request.contains_key(header::AUTHORIZATION)
        && !(route.share_authorized
            || resp.public
            || resp.s_maxage.is_some()
            || resp.must_revalidate)
    {
        return None;
    }
    // One user's cookie must not reach the others: unless the route shares it, the
    // response is stored only when the origin withholds Set-Cookie from the stored copy.
    if response.contains_key(header::SET_COOKIE)
        && !route.share_set_cookie
        && !resp.withholds("set-cookie")
    {
        return None;
    }
    // A response that must be revalidated on every use is stored with no freshness when
    // it can be revalidated (a validator), and not at all otherwise.
    let validators = has_validators(response);
    if resp.no_cache {
        return validators.then_some(Duration::ZERO);
    }
    let explicit = resp.s_maxage.is_some() || resp.max_age.is_some() || expires;
    let lifetime = if let Some(s) = resp.s_maxage {
        Duration::from_secs(s)
    } else if let Some(m) = resp.max_age {
        Duration::from_secs(m)
    } else if expires {
        // RFC 9111 5.3: an invalid Expires (such as "0") means already expired.
        match http_date(response, header::EXPIRES) {
            Some(expires) => {
                let date = http_date(response, header::DATE).unwrap_or(now);
                expires.duration_since(date).unwrap_or(Duration::ZERO)
            }
            None => Duration::ZERO,
        }
    } else {
        route.default_ttl
    };
    // An origin that says "fresh for 0 s" but gives a validator wants revalidation.
    (!lifetime.is_zero() || (explicit && validators)).then_some(lifetime)
}

/// How long past its lifetime a stored response may answer when the origin fails, and
/// while it is refreshed in the background: the response's own stale-if-error and
/// stale-while-revalidate (RFC 5861), else the route's defaults. Never for a response
/// that forbids stale use (RFC 9111 4.2.4: no-cache, must-revalidate, proxy-revalidate,
/// or s-maxage, which implies proxy-revalidate): a cache must not ignore those "in all
/// circumstances", whatever else the response says.
pub fn stale_windows(
    d: &Directives,
    route_if_error: Duration,
    route_revalidate: Duration,
) -> (Duration, Duration) {
    if d.no_cache || d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some() {
        return (Duration::ZERO, Duration::ZERO);
    }
    (
        d.stale_if_error.map_or(route_if_error, Duration::from_secs),
        d.stale_while_revalidate
            .map_or(route_revalidate, Duration::from_secs),
    )
}

/// Whether the response can be revalidated (an `ETag` or a `Last-Modified`).
pub fn has_validators(response: &HeaderMap) -> bool {
    response.contains_key(header::ETAG) || response.contains_key(header::LAST_MODIFIED)
}

/// RFC 9110 13.1.1 / 13.1.3: whether a client's conditional GET or HEAD is satisfied by a
/// stored response with these headers, so the answer is 304. `If-None-Match` uses the
/// weak comparison; `If-Modified-Since` counts only without `If-None-Match`.
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
    let inm: Vec<&str> = crate::headers::list(request, header::IF_NONE_MATCH).collect();
    if !inm.is_empty() {
        let weak = |t: &str| t.trim_start_matches("W/").to_string();
        return inm
            .iter()
            .any(|t| *t == "*" || etag.is_some_and(|e| weak(e) == weak(t)));
    }
    match (
        http_date(request, header::IF_MODIFIED_SINCE),
        http_date(stored, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// What a `Range` request asks of a stored body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable single byte range (absent, malformed, several ranges, or `If-Range` does
    /// not match): the whole body with 200, which RFC 9110 14.2 allows.
    Full,
    /// 206 with the bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416: no requested byte exists.
    Unsatisfiable,
}

/// RFC 9110 14: a single `bytes=` range (`a-b`, `a-`, `-n`) against a body of `len` bytes,
/// honouring `If-Range` (a strong ETag or the exact `Last-Modified`).
pub fn range(request: &HeaderMap, stored: &HeaderMap, len: u64) -> RangeAnswer {
    let Some(spec) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Full;
    };
    if let Some(cond) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let cond = cond.trim();
        let matches = if cond.starts_with('"') {
            stored
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|e| e == cond)
        } else {
            stored
                .get(header::LAST_MODIFIED)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|m| m == cond)
        };
        if !matches {
            return RangeAnswer::Full;
        }
    }
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if set.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.is_empty(), parse(first), parse(last)) {
        // `-n`: the last n bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: len.saturating_sub(n),
                    end: len - 1,
                }
            }
        }
        (false, Some(start), end) if last.is_empty() || end.is_some() => {
            if end.is_some_and(|e| e < start) {
                return RangeAnswer::Full;
            }
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial {
                start,
                end: end.map_or(len - 1, |e| e.min(len - 1)),
            }
        }
        _ => RangeAnswer::Full,
    }
}

/// Whether a request may be answered from the cache at all (it may still be stored);
/// `d` is the request's [`directives`].
pub fn may_serve_from_cache(method: &Method, request: &HeaderMap, d: &Directives) -> bool {
    if !(*method == Method::GET || *method == Method::HEAD) {
        return false;
    }
    let pragma_no_cache = request
        .get(header::PRAGMA)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("no-cache"));
    !(d.no_cache || d.no_store || d.max_age == Some(0) || pragma_no_cache)
}

/// The age the response already had (`Age`, RFC 9111 5.1): of a list, the first member;
/// an invalid value is ignored (0); a huge one is capped like any delta-seconds.
pub fn initial_age(response: &HeaderMap) -> Duration {
    Duration::from_secs(
        response
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| delta_seconds(v.split(',').next().unwrap_or("").trim()))
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    /// The lifetime a plain GET gives a 200 with these response headers.
    fn life(resp: &[(&str, &str)]) -> Option<Duration> {
        storable(
            &Method::GET,
            &h(&[]),
            StatusCode::OK,
            &h(resp),
            RoutePolicy::default(),
            SystemTime::now(),
        )
    }

    #[test]
    fn numbers_and_repeats_read_as_rfc_9111_says() {
        // Too large to represent: 2^31 s, and nothing later overflows.
        let d = directives(&h(&[("cache-control", "max-age=99999999999999999999999")]));
        assert_eq!(d.max_age, Some(MAX_DELTA_SECONDS));
        let huge = life(&[(
            "cache-control",
            "s-maxage=18446744073709551615, stale-if-error=18446744073709551615",
        )]);
        assert_eq!(huge, Some(Duration::from_secs(MAX_DELTA_SECONDS)));
        // Not a number: stale at once.
        assert_eq!(life(&[("cache-control", "max-age=-1")]), None);
        assert_eq!(life(&[("cache-control", "max-age=1.5")]), None);
        // Given twice: the first counts.
        let d = directives(&h(&[("cache-control", "max-age=5, max-age=500")]));
        assert_eq!(d.max_age, Some(5));
        let d = directives(&h(&[
            ("cache-control", "max-age=5"),
            ("cache-control", "max-age=500"),
        ]));
        assert_eq!(d.max_age, Some(5));
        // Age: the first member of a list; invalid ignored; huge capped.
        assert_eq!(
            initial_age(&h(&[("age", "10, 20")])),
            Duration::from_secs(10)
        );
        assert_eq!(initial_age(&h(&[("age", "-5")])), Duration::ZERO);
        assert_eq!(initial_age(&h(&[("age", "ten")])), Duration::ZERO);
        assert_eq!(
            initial_age(&h(&[("age", "99999999999999999999")])),
            Duration::from_secs(MAX_DELTA_SECONDS)
        );
    }

    #[test]
    fn cdn_cache_control_speaks_to_the_edge_alone() {
        // The edge keeps it an hour; browsers are told not to store it.
        assert_eq!(
            life(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=3600")
            ]),
            Some(Duration::from_secs(3600))
        );
        // And the other way round: browsers may, the edge may not.
        assert_eq!(
            life(&[
                ("cache-control", "max-age=3600"),
                ("cdn-cache-control", "no-store")
            ]),
            None
        );
        // Expires is for browsers when CDN-Cache-Control is there.
        assert_eq!(
            life(&[
                ("cdn-cache-control", "private"),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT")
            ]),
            None
        );
        // An unreadable CDN-Cache-Control is ignored: Cache-Control applies.
        assert_eq!(
            life(&[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=\"5")
            ]),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn freshness_and_storability_matrix() {
        let now = SystemTime::now();
        let get = Method::GET;
        let ok = StatusCode::OK;
        let r = RoutePolicy::default();
        let s = |req: &[(&str, &str)], resp: &[(&str, &str)]| {
            storable(&get, &h(req), ok, &h(resp), r, now)
        };
        assert_eq!(
            s(&[], &[("cache-control", "max-age=60")]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            s(&[], &[("cache-control", "max-age=60, s-maxage=10")]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(s(&[], &[("cache-control", "no-store, max-age=60")]), None);
        assert_eq!(s(&[], &[("cache-control", "private, max-age=60")]), None);
        assert_eq!(s(&[], &[("cache-control", "no-cache")]), None);
        assert_eq!(
            s(
                &[("cache-control", "no-store")],
                &[("cache-control", "max-age=60")]
            ),
            None
        );
        assert_eq!(s(&[], &[]), None, "no lifetime, no default");
        assert_eq!(
            s(&[], &[("cache-control", "max-age=60"), ("vary", "*")]),
            None
        );
        assert_eq!(
            s(
                &[],
                &[("cache-control", "max-age=60"), ("set-cookie", "a=1")]
            ),
            None
        );
        // ... unless the origin withholds the cookie from the stored copy (qualified
        // private / no-cache, RFC 9111 5.2.2.7 and 5.2.2.4).
        for cc in [
            "max-age=60, private=\"Set-Cookie\"",
            "private=\"x-session, set-cookie\", max-age=60",
            "no-cache=\"set-cookie\", max-age=60",
        ] {
            assert_eq!(
                s(&[], &[("cache-control", cc), ("set-cookie", "a=1")]),
                Some(Duration::from_secs(60)),
                "{cc}"
            );
        }
        assert_eq!(
            s(
                &[],
                &[
                    ("cache-control", "max-age=60, private=\"x-session\""),
                    ("set-cookie", "a=1")
                ]
            ),
            None,
            "another field withheld, not the cookie"
        );
        // Authorization: only when the response allows sharing.
        let auth = [("authorization", "Bearer x")];
        assert_eq!(s(&auth, &[("cache-control", "max-age=60")]), None);
        assert_eq!(
            s(&auth, &[("cache-control", "public, max-age=60")]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            s(&auth, &[("cache-control", "s-maxage=5")]),
            Some(Duration::from_secs(5))
        );
        // Expires relative to Date.
        let date = httpdate::fmt_http_date(now);
        let exp = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            s(&[], &[("date", &date), ("expires", &exp)]),
            Some(Duration::from_secs(120))
        );
        // The route's default applies without origin freshness.
        let with_default = RoutePolicy {
            default_ttl: Duration::from_secs(30),
            ..r
        };
        assert_eq!(
            storable(&get, &h(&[]), ok, &h(&[]), with_default, now),
            Some(Duration::from_secs(30))
        );
        // ... but an invalid Expires is a lifetime given: already expired (RFC 9111 5.3).
        for bad in ["0", "-1", "tomorrow"] {
            assert_eq!(
                storable(
                    &get,
                    &h(&[]),
                    ok,
                    &h(&[("expires", bad)]),
                    with_default,
                    now
                ),
                None,
                "Expires: {bad}"
            );
        }
        assert_eq!(
            storable(
                &get,
                &h(&[]),
                ok,
                &h(&[("expires", "0"), ("etag", "\"v1\"")]),
                with_default,
                now
            ),
            Some(Duration::ZERO),
            "kept to be revalidated on every use"
        );
        // POST and 500 are not stored.
        assert_eq!(
            storable(
                &Method::POST,
                &h(&[]),
                ok,
                &h(&[("cache-control", "max-age=60")]),
                r,
                now
            ),
            None
        );
        assert_eq!(
            storable(
                &get,
                &h(&[]),
                StatusCode::INTERNAL_SERVER_ERROR,
                &h(&[("cache-control", "max-age=60")]),
                r,
                now
            ),
            None
        );
        // Requests that want a fresh answer.
        let may_serve = |method: &Method, request: &HeaderMap| {
            may_serve_from_cache(method, request, &directives(request))
        };
        assert!(!may_serve(&get, &h(&[("cache-control", "no-cache")])));
        assert!(!may_serve(&get, &h(&[("pragma", "no-cache")])));
        assert!(may_serve(&Method::HEAD, &h(&[])));
        let asked = directives(&h(&[(
            "cache-control",
            "max-age=5, min-fresh=10, only-if-cached",
        )]));
        assert_eq!(
            (asked.max_age, asked.min_fresh, asked.only_if_cached),
            (Some(5), Some(10), true)
        );
        // Must-revalidate-every-time responses are kept only when they can be revalidated.
        assert_eq!(
            s(&[], &[("cache-control", "no-cache"), ("etag", "\"v1\"")]),
            Some(Duration::ZERO)
        );
        assert_eq!(
            s(&[], &[("cache-control", "max-age=0"), ("etag", "\"v1\"")]),
            Some(Duration::ZERO)
        );
        assert_eq!(s(&[], &[("etag", "\"v1\"")]), None, "no lifetime given");
    }

    #[test]
    fn qualified_private_and_no_cache_name_fields() {
        let d = directives(&h(&[(
            "cache-control",
            "private=\"Set-Cookie, X-Session\", max-age=60, no-cache=\"x-debug\"",
        )]));
        assert!(!d.private && !d.no_cache);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.withheld, ["set-cookie", "x-session", "x-debug"]);
        // Unqualified: the whole response.
        let d = directives(&h(&[("cache-control", "private, no-cache")]));
        assert!(d.private && d.no_cache && d.withheld.is_empty());
        // A comma inside quotes does not start a directive.
        assert_eq!(
            members(r#"a="x, y", b, c="q\"r,s""#).unwrap(),
            [r#"a="x, y""#, "b", r#"c="q\"r,s""#]
        );
        // A quote that never ends: nothing in the value is believed but caution.
        let d = directives(&h(&[("cache-control", "private=\"set-cookie, max-age=60")]));
        assert!(d.private && d.no_cache && d.max_age.is_none() && d.withheld.is_empty());
        // The body's own framing cannot be withheld: the whole response is private.
        let d = directives(&h(&[(
            "cache-control",
            "private=\"Content-Encoding\", max-age=60",
        )]));
        assert!(d.private && d.withheld.is_empty());
    }

    #[test]
    fn conditional_requests() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sat, 01 Jan 2022 00:00:00 GMT"),
        ]);
        assert!(not_modified(&h(&[("if-none-match", "\"v1\"")]), &stored));
        assert!(not_modified(&h(&[("if-none-match", "W/\"v1\"")]), &stored));
        assert!(not_modified(
            &h(&[("if-none-match", "\"x\", \"v1\"")]),
            &stored
        ));
        assert!(not_modified(&h(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(&h(&[("if-none-match", "\"v2\"")]), &stored));
        assert!(not_modified(
            &h(&[("if-modified-since", "Sun, 02 Jan 2022 00:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Fri, 31 Dec 2021 00:00:00 GMT")]),
            &stored
        ));
        // If-None-Match decides when both are present.
        assert!(!not_modified(
            &h(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Sun, 02 Jan 2022 00:00:00 GMT")
            ]),
            &stored
        ));
        assert!(!not_modified(&h(&[]), &stored));
    }

    #[test]
    fn byte_ranges() {
        let stored = h(&[("etag", "\"v1\"")]);
        let r = |spec: &str| range(&h(&[("range", spec)]), &stored, 100);
        assert_eq!(r("bytes=0-9"), RangeAnswer::Partial { start: 0, end: 9 });
        assert_eq!(r("bytes=90-"), RangeAnswer::Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=-10"), RangeAnswer::Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=-500"), RangeAnswer::Partial { start: 0, end: 99 });
        assert_eq!(
            r("bytes=50-500"),
            RangeAnswer::Partial { start: 50, end: 99 }
        );
        assert_eq!(r("bytes=100-"), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=-0"), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=9-0"), RangeAnswer::Full);
        assert_eq!(r("bytes=0-1,5-6"), RangeAnswer::Full);
        assert_eq!(r("items=0-1"), RangeAnswer::Full);
        assert_eq!(r("bytes=a-b"), RangeAnswer::Full);
        assert_eq!(r("bytes=+1-2"), RangeAnswer::Full);
        assert_eq!(range(&h(&[]), &stored, 100), RangeAnswer::Full);
        let if_range =
            |v: &str| range(&h(&[("range", "bytes=0-0"), ("if-range", v)]), &stored, 100);
        assert_eq!(
            if_range("\"v1\""),
            RangeAnswer::Partial { start: 0, end: 0 }
        );
        assert_eq!(if_range("\"v2\""), RangeAnswer::Full);
    }
}
