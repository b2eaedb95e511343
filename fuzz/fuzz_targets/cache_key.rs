//! Cache keys: `KeyMaterial` never spells two different field lists alike, and
//! `canonical_url` / `sorted_query` are fixed points of themselves.
#![no_main]

use edge_node::{
    cache::{KeyMaterial, canonical_url, sorted_query},
    target::{EscapedSlashes, PathSettings},
};
use libfuzzer_sys::fuzz_target;

/// Field lists from bytes: `[tag, len, bytes…]*`, twice, split at the first 0xFF 0xFF.
fn fields(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let [tag, len, rest @ ..] = data {
        let n = (*len as usize).min(rest.len());
        out.push((*tag, &rest[..n]));
        data = &rest[n..];
    }
    out
}

fn material(fields: &[(u8, &[u8])]) -> edge_node::cache::CacheKey {
    let mut m = KeyMaterial::default();
    for (tag, value) in fields {
        m.field(*tag, value);
    }
    m.finish()
}

fuzz_target!(|data: &[u8]| {
    let split = data
        .windows(2)
        .position(|w| w == [0xFF, 0xFF])
        .unwrap_or(data.len());
    let (a, b) = (&data[..split], data.get(split + 2..).unwrap_or_default());
    let (fa, fb) = (fields(a), fields(b));
    let (ka, kb) = (material(&fa), material(&fb));
    assert_eq!(
        fa == fb,
        ka.material == kb.material,
        "field lists {fa:?} / {fb:?} vs their materials"
    );
    assert_eq!(ka.material == kb.material, ka.digest == kb.digest);

    if let Ok(text) = std::str::from_utf8(data) {
        // Under every path policy a node may run with (purges spell URLs by it).
        for escaped_slashes in [
            EscapedSlashes::Reject,
            EscapedSlashes::Keep,
            EscapedSlashes::Decode,
        ] {
            for merge_slashes in [true, false] {
                let policy = PathSettings {
                    escaped_slashes,
                    merge_slashes,
                    fold_case: false,
                };
                if let Some(url) = canonical_url(text, policy) {
                    assert_eq!(
                        canonical_url(&url, policy).as_deref(),
                        Some(url.as_str()),
                        "canonical_url is not a fixed point under {policy:?}: {text:?} -> {url:?}"
                    );
                }
            }
        }
        let sorted = sorted_query(text).join("&");
        assert_eq!(sorted_query(&sorted).join("&"), sorted, "{text:?}");
        // A permutation of the non-empty parameters.
        let mut mine: Vec<&str> = text.split('&').filter(|p| !p.is_empty()).collect();
        let mut theirs = sorted_query(text);
        mine.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(mine, theirs);
    }
});
