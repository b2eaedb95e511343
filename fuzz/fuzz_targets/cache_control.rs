//! The RFC 9111 parsers on arbitrary header bytes: `directives`, `initial_age` and
//! `may_serve_from_cache` never panic, and reading the same fields twice agrees.
#![no_main]

use edge_node::cache::policy::{directives, initial_age, may_serve_from_cache};
use http::{HeaderMap, HeaderValue, Method, header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Fields separated by '\n': Cache-Control values, then Age and Pragma when the line
    // starts with 'A' / 'P'.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let (name, value) = match line {
            [b'A', rest @ ..] => (header::AGE, rest),
            [b'P', rest @ ..] => (header::PRAGMA, rest),
            _ => (header::CACHE_CONTROL, line),
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let d = directives(&headers);
    assert_eq!(d, directives(&headers));
    for f in &d.withheld {
        assert_eq!(*f, f.to_ascii_lowercase());
        assert!(!f.is_empty());
    }
    let _ = initial_age(&headers);
    for m in [Method::GET, Method::HEAD, Method::POST] {
        let may = may_serve_from_cache(&m, &headers, &d);
        if d.no_store || d.no_cache {
            assert!(!may);
        }
    }
});
