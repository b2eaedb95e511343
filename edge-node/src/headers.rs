//! Names of the non-standard headers the node reads or writes on every request, built
//! once (a string name is parsed and validated again at each use), and the small parsers
//! of header values that several modules share.

use http::{HeaderMap, HeaderName, header::AsHeaderName};

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
pub const X_NODE_ID: HeaderName = HeaderName::from_static("x-node-id");
pub const X_REGION: HeaderName = HeaderName::from_static("x-region");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
pub const TIMING_ALLOW_ORIGIN: HeaderName = HeaderName::from_static("timing-allow-origin");
/// W3C Trace Context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The members of a comma-separated list field (RFC 9110 5.6.1) over all its lines,
/// trimmed, empty ones skipped (lines that are not text count as none).
pub fn list(headers: &HeaderMap, name: impl AsHeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
}

/// Whether a list field holds `token`, without case (`Connection: close`).
pub fn has_token(headers: &HeaderMap, name: impl AsHeaderName, token: &str) -> bool {
    list(headers, name).any(|m| m.eq_ignore_ascii_case(token))
}

/// `value` split at each `sep` outside quoted strings (inside quotes a backslash escapes
/// the next character, RFC 9110 5.6.4), pieces untrimmed; and whether every quoted string
/// ended (one left open means the value cannot be read reliably).
pub fn split_unquoted(value: &str, sep: char) -> (Vec<&str>, bool) {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    (parts, !quoted)
}

/// The `name=value` pairs of the request's Cookie fields, trimmed, empty ones skipped.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
}

/// The value of cookie `name` in the request's Cookie fields.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(headers)
        .filter_map(|c| c.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Headers that describe one hop's connection and must not be forwarded (RFC 9110 7.6.1).
/// Names, not strings: a `&str` would be parsed into a name on every lookup.
pub const HOP_BY_HOP: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
];

/// Header prefixes only the node may set toward origins: client copies are removed so
/// nothing a client sends can spoof an identity or a forwarding chain.
pub const NODE_OWNED_PREFIXES: [&str; 2] = ["x-user-", "x-edge-"];
pub const NODE_OWNED: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-region",
];

/// Whether the early phase removes this client header before anything looks at it
/// (hop-by-hop, or only the node may set it): a route cannot match on it.
pub fn removed_before_routing(name: &HeaderName) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(name)
        || NODE_OWNED.contains(&n)
        || NODE_OWNED_PREFIXES.iter().any(|p| n.starts_with(p))
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, header};

    use super::*;

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn lists_span_lines_and_skip_empty_members() {
        let h = map(&[
            ("connection", " keep-alive, ,Upgrade"),
            ("connection", "close"),
        ]);
        let got: Vec<&str> = list(&h, header::CONNECTION).collect();
        assert_eq!(got, ["keep-alive", "Upgrade", "close"]);
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "keep"));
        assert_eq!(list(&h, "vary").count(), 0);
    }

    #[test]
    fn quoted_separators_do_not_split() {
        let (parts, closed) = split_unquoted(r#"a="x, y", b;c, d="q\"r,s""#, ',');
        assert_eq!(parts, [r#"a="x, y""#, " b;c", r#" d="q\"r,s""#]);
        assert!(closed);
        let (parts, closed) = split_unquoted(r#"for=x;proto="http;s";by=y"#, ';');
        assert_eq!(parts, ["for=x", r#"proto="http;s""#, "by=y"]);
        assert!(closed);
        let (parts, closed) = split_unquoted(r#"a, b="open, c"#, ',');
        assert_eq!(parts, ["a", r#" b="open, c"#]);
        assert!(!closed, "an unterminated quoted string is reported");
        // Outside quotes a backslash is a plain character.
        assert_eq!(split_unquoted(r"a\,b", ',').0, [r"a\", "b"]);
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = map(&[("cookie", "a=1; ab=2;;  b = 3"), ("cookie", "c=x=y")]);
        assert_eq!(
            cookies(&h).collect::<Vec<_>>(),
            ["a=1", "ab=2", "b = 3", "c=x=y"]
        );
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "ab"), Some("2"));
        assert_eq!(cookie(&h, "c"), Some("x=y"));
        // Spaces around `=` are not stripped: `b ` is not `b`.
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(cookie(&h, "d"), None);
    }
}
