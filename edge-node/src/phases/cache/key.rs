//! The cache key of a request, the URL its entry is stored under, and what of a cacheable
//! request is not forwarded (the client's conditionals; with `strip_unkeyed`, all that is
//! outside the key).

use http::{HeaderMap, HeaderName, HeaderValue, Request, header};

use super::{CLIENT_CONDITIONALS, FORWARDING, RouteCache};
use crate::cache::CacheKey;

/// Whether a header of a cacheable request reaches the origin whatever the key: the
/// forwarding headers and the default identity headers, the node's own.
fn always_forwarded(name: &HeaderName) -> bool {
    let n = name.as_str();
    FORWARDING.contains(&n) || n == "x-user-id" || n == "x-user-roles"
}

impl RouteCache {
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
}

/// Host and port as the client sent them (`:authority` or Host), lower-case.
pub(super) fn authority<B>(req: &Request<B>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::cache::RouteCacheSettings;

    fn route(settings: &str) -> RouteCache {
        let s: RouteCacheSettings = toml::from_str(settings).expect("settings");
        RouteCache::new(&s).expect("route")
    }

    fn get(uri: &str, headers: &[(&'static str, &'static str)]) -> Request<()> {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn the_key_holds_what_the_route_keys_on_and_nothing_else() {
        let rc = route("key_headers = [\"accept-language\"]\nkey_cookies = [\"region\"]");
        let key = |req: &Request<()>| rc.key("https", req, None, None).digest;
        let base = key(&get("https://a.test/p?x=1&y=2", &[]));
        // The query's parameters in any order, the host in any case, an unkeyed header:
        // one entry.
        assert_eq!(
            key(&get("https://A.test/p?y=2&x=1", &[("user-agent", "u")])),
            base
        );
        // Each keyed part makes another.
        for other in [
            get("https://a.test:8443/p?x=1&y=2", &[]),
            get("https://a.test/p?x=1&y=3", &[]),
            get("https://a.test/p?x=1&y=2", &[("accept-language", "fr")]),
            get("https://a.test/p?x=1&y=2", &[("cookie", "region=eu")]),
        ] {
            assert_ne!(
                rc.key("https", &other, None, None).digest,
                base,
                "{:?}",
                other.uri()
            );
        }
        let req = get("https://a.test/p?x=1&y=2", &[]);
        // The scheme is how the client reached the node, whatever the URI says.
        assert_ne!(rc.key("http", &req, None, None).digest, base, "the scheme");
        assert_ne!(
            rc.key("https", &req, Some("b"), None).digest,
            base,
            "the variant"
        );
        assert_ne!(
            rc.key("https", &req, None, Some("b.test")).digest,
            base,
            "X-Forwarded-Host"
        );
        let canary = route("").for_route_headers(&[("x-canary".into(), "1".into())].into());
        assert_ne!(
            canary.key("https", &req, None, None).digest,
            route("").key("https", &req, None, None).digest,
            "the route's header conditions"
        );
        assert_eq!(RouteCache::url("https", &req), "https://a.test/p?x=1&y=2");
    }

    #[test]
    fn only_the_key_and_the_nodes_headers_reach_the_origin_when_stripping() {
        let client = get(
            "http://a.test/",
            &[
                ("accept-language", "fr"),
                ("user-agent", "u"),
                ("cookie", "session=1; region=eu"),
                ("if-none-match", "\"e\""),
                ("x-forwarded-for", "192.0.2.1"),
                ("x-user-id", "alice"),
                ("x-variant", "b"),
            ],
        );
        let keep = [HeaderName::from_static("x-variant")];
        let mut headers = client.headers().clone();
        route("").strip(&mut headers, &keep);
        // By default only the conditionals the cache answers itself go.
        assert!(!headers.contains_key(header::IF_NONE_MATCH));
        assert_eq!(headers.len(), client.headers().len() - 1);

        let rc = route(
            "strip_unkeyed = true\nkey_headers = [\"accept-language\"]\nkey_cookies = [\"region\"]",
        );
        let mut headers = client.headers().clone();
        rc.strip(&mut headers, &keep);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "accept-language",
                "cookie",
                "x-forwarded-for",
                "x-user-id",
                "x-variant"
            ]
        );
        assert_eq!(headers[header::COOKIE], "region=eu");
    }
}
