//! `edge_node::target::canonical_path` on arbitrary paths, under every policy: it never
//! panics, and what it returns is canonical (a fixed point, absolute, free of dot
//! segments, of `//` when slashes are merged, and ASCII when the input was).
#![no_main]

use std::borrow::Cow;

use edge_node::target::{EscapedSlashes, PathSettings, TargetError, canonical_path};
use libfuzzer_sys::fuzz_target;

const POLICIES: [EscapedSlashes; 3] = [
    EscapedSlashes::Reject,
    EscapedSlashes::Keep,
    EscapedSlashes::Decode,
];

fn check(path: &str, policy: PathSettings) -> Result<String, TargetError> {
    let out = canonical_path(path, policy)?;
    let borrowed = matches!(out, Cow::Borrowed(_));
    let out = out.into_owned();
    assert!(out.starts_with('/'), "{path:?} -> {out:?}");
    assert!(!borrowed || out == path);
    for seg in out.split('/').skip(1) {
        assert!(
            seg != "." && seg != "..",
            "dot segment: {path:?} -> {out:?}"
        );
    }
    if policy.merge_slashes {
        assert!(!out.contains("//"), "{path:?} -> {out:?} ({policy:?})");
    }
    if path.is_ascii() {
        assert!(out.is_ascii(), "{path:?} -> {out:?}");
    }
    match policy.escaped_slashes {
        EscapedSlashes::Reject => assert!(
            !out.contains('\\') && !out.contains("%2F") && !out.contains("%5C"),
            "{path:?} -> {out:?}"
        ),
        EscapedSlashes::Decode => assert!(
            !out.contains('\\') && !out.contains("%2F") && !out.contains("%5C"),
            "{path:?} -> {out:?}"
        ),
        EscapedSlashes::Keep => {}
    }
    // Idempotent: the canonical form is its own canonical form, and borrowed.
    let again = canonical_path(&out, policy);
    assert!(
        matches!(again, Ok(Cow::Borrowed(p)) if p == out),
        "not a fixed point under {policy:?}: {path:?} -> {out:?} -> {again:?}"
    );
    // What routes match on has no segment parameter left, and is canonical too (with
    // the default slash policies, where parameters cannot hide an escaped slash).
    let matched = edge_node::target::match_form(&out, policy);
    assert!(!matched.contains(';'), "{out:?} -> {matched:?}");
    if policy.merge_slashes && policy.escaped_slashes == EscapedSlashes::Reject {
        assert!(
            matches!(canonical_path(&matched, policy), Ok(Cow::Borrowed(_))),
            "match form not canonical: {out:?} -> {matched:?}"
        );
    }
    Ok(out)
}

fn run(path: &str) {
    for merge_slashes in [true, false] {
        let results = POLICIES.map(|escaped_slashes| {
            check(
                path,
                PathSettings {
                    escaped_slashes,
                    merge_slashes,
                    fold_case: false,
                },
            )
        });
        // What the strict policy accepts holds no escaped slash, so every policy agrees.
        if let Ok(strict) = &results[0] {
            assert_eq!(results[1].as_ref(), Ok(strict), "keep vs reject: {path:?}");
            assert_eq!(
                results[2].as_ref(),
                Ok(strict),
                "decode vs reject: {path:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // A path as hyper hands it over: through http::Uri (origin form).
    if let Ok(uri) = http::Uri::try_from(data)
        && uri.scheme().is_none()
        && uri.path().starts_with('/')
    {
        run(uri.path());
    }
    // And any string at all (the function takes any &str).
    if let Ok(s) = std::str::from_utf8(data) {
        run(s);
        // The same bytes as a path (the first byte must be '/' to get past the check).
        run(&format!("/{s}"));
    }
});
