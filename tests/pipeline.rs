//! The pipeline of phases as a client sees it: Server-Timing per step, routes that turn
//! it off, Timing-Allow-Origin, the same timings in the access log, and cache metrics
//! counted from what the cache did (never from an origin's own X-Cache).

use std::time::Duration;

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, Reply, curl, start_config},
};

fn node(origin: &Origin, http_extra: &str) -> Proxy {
    start_config(&format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n{http_extra}\n\n\
         [threat]\nenabled = false\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n[route.cache]\n\n\
         [[route]]\nhosts = [\"plain.test\"]\nupstream = \"app\"\n\n\
         [[route]]\nhosts = [\"quiet.test\"]\nupstream = \"app\"\nserver_timing = false\n\n\
         [[route]]\nhosts = [\"demo.test\"]\nhandler = \"demo\"\n\n{}\n",
        origin.addr,
        edge_tests::proxy::admin_section(),
    ))
}

fn header(r: &Reply, name: &str) -> String {
    r.headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or("")
        .trim()
        .to_ascii_uppercase()
}

/// The steps of a Server-Timing value, by name: (desc, dur in ms).
fn steps(value: &str) -> Vec<(String, Option<String>, f64)> {
    value
        .split(',')
        .map(|m| {
            let mut parts = m.trim().split(';');
            let name = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut desc, mut dur) = (None, f64::NAN);
            for p in parts {
                if let Some(d) = p.strip_prefix("DESC=") {
                    desc = Some(d.to_string());
                } else if let Some(d) = p.strip_prefix("DUR=") {
                    dur = d.parse().unwrap_or(f64::NAN);
                }
            }
            (name, desc, dur)
        })
        .collect()
}

#[test]
fn server_timing_names_the_edge_the_cache_and_the_origin() {
    let origin = Origin::start("a");
    let p = node(&origin, "");
    let miss = curl(&p, "app.test", "/t?cc=max-age%3D60", &[]);
    assert_eq!(miss.status, 200, "{}", miss.headers);
    let timing = header(&miss, "server-timing");
    let s = steps(&timing);
    let names: Vec<&str> = s.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["edge", "cache", "origin"], "{timing}");
    assert_eq!(s[1].1.as_deref(), Some("MISS"), "{timing}");
    assert!(
        s.iter().all(|(_, _, d)| d.is_finite() && *d >= 0.0),
        "{timing}"
    );
    assert!(header(&miss, "timing-allow-origin").is_empty());
    let hit = curl(&p, "app.test", "/t?cc=max-age%3D60", &[]);
    assert_eq!(header(&hit, "x-cache"), "HIT");
    let timing = header(&hit, "server-timing");
    let s = steps(&timing);
    let names: Vec<&str> = s.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["edge", "cache"],
        "a hit never went to the origin: {timing}"
    );
    assert_eq!(s[1].1.as_deref(), Some("HIT"), "{timing}");
    // A route without a cache: the edge and the origin; the demo handler: the edge.
    let plain = header(&curl(&p, "plain.test", "/x", &[]), "server-timing");
    let names: Vec<String> = steps(&plain).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["edge", "origin"], "{plain}");
    let demo = curl(&p, "demo.test", "/", &[]);
    assert_eq!(demo.status, 200, "{}", demo.headers);
    assert!(demo.body.contains("edge-node is running"), "{}", demo.body);
    let names: Vec<String> = steps(&header(&demo, "server-timing"))
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names, ["edge"]);
    // Refusals carry it too (the edge's own time).
    let unknown = curl(&p, "nobody.test", "/", &[]);
    assert_eq!(unknown.status, 421);
    assert!(header(&unknown, "server-timing").starts_with("EDGE;DUR="));
    // Off for one route.
    let quiet = curl(&p, "quiet.test", "/x", &[]);
    assert_eq!(quiet.status, 200);
    assert!(
        header(&quiet, "server-timing").is_empty(),
        "{}",
        quiet.headers
    );
    // The access log carries the same timings.
    assert!(
        p.node
            .wait_for_log("cache;desc=HIT;dur=", Duration::from_secs(5)),
        "{}",
        p.node.log()
    );
}

#[test]
fn server_timing_can_be_off_and_readable_cross_origin() {
    let origin = Origin::start("a");
    let off = node(&origin, "server_timing = false");
    let r = curl(&off, "plain.test", "/x", &[]);
    assert_eq!(r.status, 200);
    assert!(header(&r, "server-timing").is_empty(), "{}", r.headers);
    let shared = node(&origin, "timing_allow_origin = \"https://app.example\"");
    let r = curl(&shared, "plain.test", "/x", &[]);
    assert!(header(&r, "server-timing").starts_with("EDGE;DUR="));
    assert_eq!(header(&r, "timing-allow-origin"), "HTTPS://APP.EXAMPLE");
}

#[test]
fn cache_metrics_count_what_the_cache_did_not_an_origins_header() {
    let origin = Origin::start("a");
    let p = node(&origin, "");
    // An origin with a cache of its own says HIT; the route has no cache.
    for _ in 0..3 {
        let r = curl(&p, "plain.test", "/own?xcache=HIT", &[]);
        assert_eq!(
            header(&r, "x-cache"),
            "HIT",
            "the origin's header is relayed"
        );
    }
    let miss = curl(&p, "app.test", "/c?cc=max-age%3D60", &[]);
    assert_eq!(header(&miss, "x-cache"), "MISS");
    let hit = curl(&p, "app.test", "/c?cc=max-age%3D60", &[]);
    assert_eq!(header(&hit, "x-cache"), "HIT");
    let count = |outcome: &str| {
        p.metric(&format!(
            "edge_cache_results_total{{outcome=\"{outcome}\"}}"
        ))
        .unwrap_or(0.0)
    };
    assert_eq!(count("HIT"), 1.0, "{}", p.metrics());
    assert_eq!(count("MISS"), 1.0);
}
