//! Intent inference latency, on the node's own code: feature extraction, one tract run
//! of the shipped model, and the round trip through the inference pool as a request
//! makes it (queue, thread, answer); and the personalization phase's HTML rewrite of a
//! small page (lol_html set-up included, as every rewritten response pays it). Criterion gives the medians; before it, each case
//! is timed call by call to report p50 and p99 (`cargo xtask bench intent` records
//! them in bench/RESULTS.md).

use std::{
    hint::black_box,
    net::IpAddr,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use edge_node::{
    error::full,
    intent::{self, Intent, IntentSettings, features::FEATURE_COUNT},
    phases::personalize::{Assignment, Experiment, ExperimentSettings},
};
use http::{HeaderMap, HeaderValue, Method, Uri, header};
use http_body_util::BodyExt;

/// p50 and p99 of `n` individually timed calls, printed in a line the xtask parses.
fn percentiles(name: &str, n: usize, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "PERCENTILES {name} p50_ns={} p99_ns={} n={n}",
        q(0.50).as_nanos(),
        q(0.99).as_nanos()
    );
}

/// A page like the built-in demo origin's.
const PAGE: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>edge-node</title></head>\n\
    <body><h1>edge-node is running</h1>\n<p>node <code>bench</code>, region <code>default</code></p>\n\
    <p>GET <code>/products/shoes</code> for host <code>shop.bench</code></p>\n</body></html>\n";

fn request() -> (Method, Uri, HeaderMap) {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
        ),
        ("accept", "text/html"),
        ("accept-language", "en-US"),
        ("cookie", "session=abc"),
        ("referer", "https://shop.example/"),
        ("sec-fetch-mode", "navigate"),
    ] {
        h.insert(
            header::HeaderName::from_static(k),
            HeaderValue::from_static(v),
        );
    }
    (
        Method::GET,
        "/products/shoes?page=2&sort=price".parse().unwrap(),
        h,
    )
}

fn inference(c: &mut Criterion) {
    let settings = IntentSettings {
        enabled: true,
        timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async { Intent::start(&settings) }).unwrap();
    let plan = intent::load(None).unwrap();
    let (method, uri, headers) = request();
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let x = engine.features(&method, &uri, &headers, ip);
    assert_eq!(x.len(), FEATURE_COUNT);

    percentiles("intent_features", 20_000, || {
        black_box(engine.features(&method, &uri, &headers, ip));
    });
    let mut state = plan.spawn().unwrap();
    percentiles("intent_model_run", 20_000, || {
        black_box(intent::run_in(&mut state, &x).unwrap());
    });
    percentiles("intent_pool_round_trip", 20_000, || {
        black_box(rt.block_on(engine.predict(x)).unwrap());
    });

    let experiment: ExperimentSettings = toml::from_str(
        "name = \"hero\"\n[[variant]]\nname = \"a\"\nweight = 1\n[[variant]]\nname = \"b\"\nweight = 1\n\
         [[variant.rewrite]]\nselector = \"h1\"\nset_text = \"Variant B\"\n\
         [[variant.rewrite]]\nselector = \"head\"\nappend_html = \"<script>window.v='b'</script>\"\n",
    )
    .unwrap();
    let experiment = Experiment::new(&experiment).unwrap();
    let b = Assignment {
        variant: 1,
        set_cookie: true,
    };
    let rewrite = || {
        let mut page = http::Response::new(full(PAGE));
        page.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        let out = experiment.rewrite(b, page);
        let body = rt.block_on(out.into_body().collect()).unwrap().to_bytes();
        assert!(body.len() > PAGE.len());
        body
    };
    percentiles("personalize_html_rewrite", 20_000, || {
        black_box(rewrite());
    });

    c.bench_function("intent_features", |b| {
        b.iter(|| black_box(engine.features(&method, &uri, &headers, ip)))
    });
    c.bench_function("intent_model_run", |b| {
        b.iter(|| black_box(intent::run_in(&mut state, &x).unwrap()))
    });
    c.bench_function("intent_pool_round_trip", |b| {
        b.iter(|| black_box(rt.block_on(engine.predict(x)).unwrap()))
    });
    c.bench_function("personalize_html_rewrite", |b| {
        b.iter(|| black_box(rewrite()))
    });
}

criterion_group!(benches, inference);
criterion_main!(benches);
