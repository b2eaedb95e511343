//! The HTTP/1.1 and HTTP/2 (h2c) reverse proxy, driven by curl against a real origin on
//! 127.0.0.1: routing by host, header hygiene, forwarding headers, errors as responses,
//! and reload without a restart. No privileges needed (XDP off).

use std::time::Duration;

use edge_tests::{
    origin::Origin,
    proxy::{
        ADMIN_TOKEN, HeldConnection, Proxy, Reply, admin_section, curl, eventually, raw,
        start_config,
    },
};

fn config(origin: &Origin, extra_route: &str) -> String {
    format!(
        r#"[xdp]
mode = "off"

[http]
listen = ["127.0.0.1:0"]
upstream_connect_timeout = "1s"

[[upstream]]
name = "app"
region = "eu-west"
servers = ["{}"]

[[upstream]]
name = "dead"
servers = ["127.0.0.1:1"]

[[route]]
hosts = ["app.test", "*.wild.test"]
upstream = "app"

[[route]]
hosts = ["dead.test"]
upstream = "dead"
{extra_route}
"#,
        origin.addr
    )
}

fn start(origin: &Origin) -> Proxy {
    start_config(&config(origin, ""))
}

/// `config` with extra `[http]` keys.
fn config_with_http(origin: &Origin, http: &str) -> String {
    config(origin, "").replace(
        "upstream_connect_timeout = \"1s\"",
        &format!("upstream_connect_timeout = \"1s\"\n{http}"),
    )
}

#[test]
fn proxies_http1_and_h2c_to_the_routed_origin() {
    let origin = Origin::start("a");
    let p = start(&origin);
    for (args, version) in [(&[][..], "1.1"), (&["--http2-prior-knowledge"][..], "2")] {
        let r = curl(&p, "app.test", "/x/y?q=1", args);
        assert_eq!((r.status, r.version.as_str()), (200, version), "{}", r.body);
        assert!(
            r.body.contains("origin=a") && r.body.contains("path=/x/y?q=1"),
            "{}",
            r.body
        );
        assert!(
            r.body.contains("host: app.test"),
            "origin sees the client's host: {}",
            r.body
        );
        assert!(r.headers.contains("x-node-id: edge-1"), "{}", r.headers);
        assert!(r.headers.contains("x-region: eu-west"), "{}", r.headers);
        assert!(
            r.headers.contains("via: ") && r.headers.contains("edge-node"),
            "{}",
            r.headers
        );
        assert!(
            r.body.contains("via: 1.1 edge-node") || r.body.contains("via: 2 edge-node"),
            "{}",
            r.body
        );
    }
    // Request bodies reach the origin.
    let r = curl(&p, "app.test", "/upload", &["--data-binary", "hello world"]);
    assert!(
        r.body.contains("method=POST") && r.body.contains("body=11"),
        "{}",
        r.body
    );
    let r = curl(
        &p,
        "app.test",
        "/upload",
        &["--http2-prior-knowledge", "--data-binary", "hello"],
    );
    assert!(r.body.contains("body=5"), "{}", r.body);
    // Wildcards match one or more labels, not the bare domain.
    assert_eq!(curl(&p, "a.b.wild.test", "/", &[]).status, 200);
    assert_eq!(curl(&p, "wild.test", "/", &[]).status, 421);
}

#[test]
fn client_headers_cannot_spoof_identity_or_forwarding() {
    let origin = Origin::start("a");
    let p = start(&origin);
    let r = curl(
        &p,
        "app.test",
        "/",
        &[
            "-H",
            "X-User-Id: admin",
            "-H",
            "X-User-Roles: root",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "Forwarded: for=6.6.6.6",
            "-H",
            "Connection: keep-alive, X-Secret",
            "-H",
            "X-Secret: s3cret",
        ],
    );
    assert_eq!(r.status, 200);
    let b = r.body.to_ascii_lowercase();
    for bad in ["x-user-id", "x-user-roles", "6.6.6.6", "x-secret", "s3cret"] {
        assert!(!b.contains(bad), "{bad} reached the origin: {b}");
    }
    assert!(b.contains("x-forwarded-for: 127.0.0.1"), "{b}");
    assert!(
        b.contains("x-forwarded-proto: http") && b.contains("x-forwarded-host: app.test"),
        "{b}"
    );
    assert!(
        b.contains("forwarded: for=127.0.0.1;proto=http;host=app.test"),
        "{b}"
    );
}

#[test]
fn unknown_hosts_are_refused_and_failures_become_statuses() {
    let origin = Origin::start("a");
    let p = start(&origin);
    let before = origin.hits();
    for host in ["unknown.test", "127.0.0.1", "app.test.evil"] {
        let r = curl(&p, host, "/", &[]);
        assert_eq!(r.status, 421, "{host}");
        assert!(!r.body.contains("origin="), "{}", r.body);
    }
    assert_eq!(
        origin.hits(),
        before,
        "an unknown host never reaches an origin"
    );
    // An origin that refuses connections: 502 with a generic body (detail in the log).
    let r = curl(&p, "dead.test", "/", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.body.trim(), "502 Bad Gateway");
    assert!(p.node.log().contains("dead"), "{}", p.node.log());
    // No Host at all (HTTP/1.0 without Host): 400.
    let r = curl(&p, "", "/", &["-0", "-H", "Host:"]);
    assert_eq!(r.status, 400);
}

#[test]
fn sighup_reload_adds_routes_and_refuses_a_broken_config() {
    let origin = Origin::start("a");
    let b = Origin::start("b");
    let mut p = start(&origin);
    assert_eq!(curl(&p, "new.test", "/", &[]).status, 421);
    let added = format!(
        "\n[[upstream]]\nname = \"b\"\nservers = [\"{}\"]\n\n[[route]]\nhosts = [\"new.test\"]\nupstream = \"b\"\n",
        b.addr
    );
    std::fs::write(p.node.config_path(), config(&origin, &added)).unwrap();
    p.node.signal(libc::SIGHUP);
    assert!(
        p.node
            .wait_for_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        p.node.log()
    );
    let r = curl(&p, "new.test", "/", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("origin=b"), "{}", r.body);
    // A config naming an undefined upstream is refused; the running one keeps serving.
    std::fs::write(
        p.node.config_path(),
        config(
            &origin,
            "[[route]]\nhosts = [\"x.test\"]\nupstream = \"nope\"\n",
        ),
    )
    .unwrap();
    p.node.signal(libc::SIGHUP);
    assert!(
        p.node
            .wait_for_log("new configuration refused", Duration::from_secs(10)),
        "{}",
        p.node.log()
    );
    assert_eq!(curl(&p, "new.test", "/", &[]).status, 200);
    assert_eq!(curl(&p, "app.test", "/", &[]).status, 200);
    p.node.stop();
}

#[test]
fn admin_api_needs_its_token_and_serves_metrics_and_reload() {
    let origin = Origin::start("a");
    let b = Origin::start("b");
    let token = ADMIN_TOKEN;
    let admin = admin_section();
    let p = start_config(&(config(&origin, "") + &admin));
    let call = |method: &str, path: &str, auth: Option<&str>| p.admin_as(method, path, auth);
    // Liveness is open; everything else needs the token.
    assert_eq!(call("GET", "/healthz", None).0, 200);
    assert_eq!(call("GET", "/metrics", None).0, 401);
    assert_eq!(
        call("GET", "/metrics", Some("wrong-token-0123456789abc")).0,
        401
    );
    assert_eq!(call("POST", "/reload", None).0, 401);
    assert_eq!(call("GET", "/readyz", Some(token)).0, 200);
    // Metrics count what was served.
    assert_eq!(curl(&p, "app.test", "/", &[]).status, 200);
    assert_eq!(curl(&p, "nope.test", "/", &[]).status, 421);
    let (code, m) = call("GET", "/metrics", Some(token));
    assert_eq!(code, 200);
    assert!(
        m.contains("edge_requests_total{route=\"app.test/\",upstream=\"app\",status=\"200\",protocol=\"http/1.1\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "edge_requests_total{route=\"\",upstream=\"\",status=\"421\",protocol=\"http/1.1\"} 1"
        ),
        "{m}"
    );
    assert!(m.contains("edge_request_duration_seconds_bucket"), "{m}");
    // Each request counts once, whichever worker served it (connections are spread over
    // the workers), and each protocol in its own series.
    for _ in 0..6 {
        assert_eq!(curl(&p, "app.test", "/", &[]).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            curl(&p, "app.test", "/", &["--http2-prior-knowledge"]).status,
            200
        );
    }
    let (_, m) = call("GET", "/metrics", Some(token));
    for line in [
        "edge_requests_total{route=\"app.test/\",upstream=\"app\",status=\"200\",protocol=\"http/1.1\"} 7",
        "edge_requests_total{route=\"app.test/\",upstream=\"app\",status=\"200\",protocol=\"h2\"} 2",
        "edge_request_duration_seconds_count{upstream=\"app\"} 9",
    ] {
        assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
    }
    // Reload through the API: a new route, then a broken file refused.
    let added = format!(
        "\n[[upstream]]\nname = \"b\"\nservers = [\"{}\"]\n\n[[route]]\nhosts = [\"new.test\"]\nupstream = \"b\"\n",
        b.addr
    );
    std::fs::write(p.node.config_path(), config(&origin, &added) + &admin).unwrap();
    assert_eq!(
        call("POST", "/reload", Some(token)),
        (200, "reloaded\n".to_string())
    );
    assert_eq!(curl(&p, "new.test", "/", &[]).status, 200);
    std::fs::write(
        p.node.config_path(),
        config(&origin, "[[route]]\nhosts = [\"x\"]\nupstream = \"nope\"\n") + &admin,
    )
    .unwrap();
    let (code, body) = call("POST", "/reload", Some(token));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("nope"), "{body}");
    assert_eq!(curl(&p, "new.test", "/", &[]).status, 200);
}

#[test]
fn malformed_framing_oversized_and_slow_heads_never_reach_the_origin() {
    let origin = Origin::start("a");
    // Threat scoring off: this test sends one client's malformed requests on purpose
    // (tests/security.rs covers what they add up to).
    let p = start_config(
        &(config_with_http(
            &origin,
            "header_read_timeout = \"1s\"\nmax_header_bytes = 8192",
        ) + "\n[threat]\nenabled = false\n"),
    );
    let addr = p.base.trim_start_matches("http://").to_string();
    let many_headers: Vec<u8> = [
        b"GET / HTTP/1.1\r\nHost: app.test\r\n".to_vec(),
        (0..150)
            .flat_map(|i| format!("X-H{i}: 1\r\n").into_bytes())
            .collect(),
        b"\r\n".to_vec(),
    ]
    .concat();
    let cases: [(&str, &[u8], &str); 9] = [
        ("too many header fields", &many_headers, "431"),
        (
            "Content-Length then Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "Transfer-Encoding then Content-Length",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            // The classic smuggle, after a clean keep-alive request: the first is
            // answered, the second refused, and the connection closed.
            "pipelined CL.TE smuggle",
            b"GET / HTTP/1.1\r\nHost: nope.test\r\n\r\nPOST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            "421",
        ),
        (
            "conflicting Content-Length",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            "400",
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            "400",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: 1\r\n  folded\r\n\r\n",
            "400",
        ),
        (
            "Transfer-Encoding without chunked",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip\r\n\r\nabc",
            "400",
        ),
        (
            "oversized head",
            &[b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: ".as_slice(), &[b'a'; 20_000], b"\r\n\r\n"].concat(),
            "431",
        ),
    ];
    for (what, bytes, status) in cases {
        let reply = raw(&addr, bytes);
        if what.starts_with("pipelined") {
            let second = reply.split("HTTP/1.1 ").nth(2).unwrap_or("");
            assert!(second.starts_with("400"), "{what}: {reply}");
        }
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {reply}"
        );
        assert!(
            !reply.ends_with("<open>"),
            "{what}: the connection must be closed: {reply}"
        );
    }
    // A client that never finishes its head is cut off by the head timeout, unanswered.
    let reply = raw(&addr, b"GET / HTTP/1.1\r\nHost: app.te");
    assert!(
        !reply.ends_with("<open>"),
        "slowloris connection left open: {reply}"
    );
    assert!(!reply.contains("200"), "{reply}");
    assert_eq!(
        origin.hits(),
        0,
        "nothing malformed or incomplete reached the origin"
    );
    // The node still serves well-formed requests.
    let ok = raw(
        &addr,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(origin.hits(), 1);
}

#[test]
fn trusted_proxies_extend_the_chain_and_large_bodies_are_refused() {
    let origin = Origin::start("a");
    let p = start_config(&config_with_http(
        &origin,
        "trusted_proxies = [\"127.0.0.0/8\"]\nmax_body_bytes = 100",
    ));
    // The peer (127.0.0.1) is a trusted proxy: the client it reports is believed and the
    // chain is extended, not replaced.
    let r = curl(
        &p,
        "app.test",
        "/",
        &[
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Forwarded-Proto: https",
        ],
    );
    let b = r.body.to_ascii_lowercase();
    assert!(b.contains("x-forwarded-for: 6.6.6.6, 127.0.0.1"), "{b}");
    assert!(
        b.contains("forwarded: for=6.6.6.6;proto=https;host=app.test"),
        "{b}"
    );
    assert!(b.contains("x-forwarded-proto: https"), "{b}");
    // What the origin saw of a request carrying these headers (lower case).
    let origin_saw = |headers: &[&str]| {
        let args: Vec<&str> = headers.iter().flat_map(|h| ["-H", h]).collect();
        curl(&p, "app.test", "/", &args).body.to_ascii_lowercase()
    };
    // A proxy that speaks Forwarded (RFC 7239) instead: its elements are kept and this
    // hop's appended; the client, its scheme and the host it asked come from them.
    let b = origin_saw(&[
        "Forwarded: for=7.7.7.7;proto=https;host=shop.example, for=\"127.0.0.2:4711\"",
        "X-Forwarded-Host: shop.example",
    ]);
    assert!(
        b.contains(
            "forwarded: for=7.7.7.7;proto=https;host=shop.example, for=\"127.0.0.2:4711\", \
             for=127.0.0.1;proto=http;host=app.test\n"
        ),
        "{b}"
    );
    assert!(
        b.contains("x-forwarded-for: 7.7.7.7, 127.0.0.2, 127.0.0.1\n"),
        "{b}"
    );
    assert!(b.contains("x-forwarded-proto: https\n"), "{b}");
    assert!(b.contains("x-forwarded-host: shop.example\n"), "{b}");
    // With X-Forwarded-For, a Forwarded the client sent through the proxy is not the
    // proxy's: it is replaced by the node's own element.
    let b = origin_saw(&["X-Forwarded-For: 6.6.6.6", "Forwarded: for=9.9.9.9"]);
    assert!(
        b.contains("forwarded: for=6.6.6.6;proto=http;host=app.test\n"),
        "{b}"
    );
    // Quoted values are one value: a `;for=` inside one is no second address, and an
    // element naming `for` twice is not believed (the client is then the proxy).
    let b = origin_saw(&["Forwarded: for=1.2.3.4;host=\"x;for=6.6.6.6\""]);
    assert!(b.contains("x-forwarded-for: 1.2.3.4, 127.0.0.1\n"), "{b}");
    let b = origin_saw(&["Forwarded: for=1.2.3.4;for=6.6.6.6"]);
    assert!(b.contains("x-forwarded-for: unknown, 127.0.0.1\n"), "{b}");
    // A declared body over the limit never reaches the origin.
    let before = origin.hits();
    let big = "x".repeat(1000);
    let r = curl(&p, "app.test", "/upload", &["--data-binary", &big]);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(origin.hits(), before);
    let r = curl(&p, "app.test", "/upload", &["--data-binary", "small"]);
    assert_eq!(r.status, 200);
}

#[test]
fn clients_go_to_their_regions_pool_and_fail_over_when_it_is_down() {
    let eu = Origin::start("eu");
    let us = Origin::start("us");
    let cfg = |eu_addr: String| {
        format!(
            r#"[xdp]
mode = "off"
[http]
listen = ["127.0.0.1:0"]
upstream_connect_timeout = "1s"
[geo]
default_region = "us"
[[geo.region]]
name = "eu"
cidrs = ["127.0.0.0/8"]
[[upstream]]
name = "app-us"
region = "us"
servers = ["{us}"]
[[upstream]]
name = "app-eu"
region = "eu"
servers = ["{eu_addr}"]
[[route]]
hosts = ["app.test"]
upstreams = ["app-us", "app-eu"]
"#,
            us = us.addr
        )
    };
    let p = start_config(&cfg(eu.addr.to_string()));
    // 127.0.0.1 is in the eu table: the eu pool serves, whatever the config order.
    let r = curl(&p, "app.test", "/", &[]);
    assert!(r.body.contains("origin=eu"), "{}", r.body);
    assert!(r.headers.contains("x-region: eu"), "{}", r.headers);
    // The eu pool down (a port nobody listens on): the next region's pool serves.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(p.node.config_path(), cfg(dead.to_string())).unwrap();
    p.node.signal(libc::SIGHUP);
    assert!(
        p.node
            .wait_for_log("configuration reloaded", Duration::from_secs(10))
    );
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("origin=us"), "{}", r.body);
    assert!(r.headers.contains("x-region: us"), "{}", r.headers);
    assert!(p.node.log().contains("failing over"), "{}", p.node.log());
}

/// Requests `path`, sends SIGTERM once the request is at the origin (in flight), runs
/// `meanwhile` while the request is still out, and returns what the client got.
fn sigterm_in_flight(p: &Proxy, origin: &Origin, path: &str, meanwhile: impl FnOnce()) -> Reply {
    let before = origin.hits();
    std::thread::scope(|s| {
        let h = s.spawn(|| curl(p, "app.test", path, &[]));
        assert!(eventually(Duration::from_secs(10), || origin.hits() > before));
        p.node.signal(libc::SIGTERM);
        meanwhile();
        h.join().unwrap()
    })
}

#[test]
fn shutdown_drains_requests_in_flight_and_the_access_log_is_json() {
    let origin = Origin::start("a");
    origin.set_delay_ms(700);
    let cfg = config_with_http(&origin, "drain_timeout = \"10s\"")
        + "\n[log]\nformat = \"json\"\n"
        + &admin_section();
    let mut p = start_config(&cfg);
    assert_eq!(p.admin("GET", "/readyz"), (200, "ready\n".into()));
    // A request in flight when SIGTERM arrives still gets its answer; meanwhile the
    // node tells load balancers it is not ready.
    let slow = sigterm_in_flight(&p, &origin, "/slow", || {
        assert!(
            eventually(Duration::from_secs(5), || p.admin("GET", "/readyz").0
                == 503),
            "{}",
            p.node.log()
        );
    });
    assert_eq!(slow.status, 200, "{}", p.node.log());
    assert!(slow.body.contains("path=/slow"));
    // ... and then the node exits cleanly.
    assert_eq!(
        p.node.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        p.node.log()
    );
    // One JSON object per line; the access line carries the request's fields.
    let log = p.node.log();
    let access = log
        .lines()
        .find(|l| l.contains("\"target\":\"access\""))
        .unwrap_or_else(|| panic!("no access line: {log}"));
    assert!(access.starts_with('{') && access.ends_with('}'), "{access}");
    for field in [
        "\"status\":200",
        "\"host\":\"app.test\"",
        "\"path\":\"/slow\"",
        "\"upstream\":\"app\"",
    ] {
        assert!(access.contains(field), "{field} missing: {access}");
    }

    // With a short drain period, a request that outlives it is cut off and the node
    // still exits.
    let cfg = config_with_http(&origin, "drain_timeout = \"300ms\"");
    origin.set_delay_ms(5000);
    let mut p = start_config(&cfg);
    let cut = sigterm_in_flight(&p, &origin, "/too-slow", || {});
    assert_ne!(cut.status, 200);
    assert_eq!(
        p.node.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        p.node.log()
    );
    assert!(
        p.node.log().contains("drain timeout reached"),
        "{}",
        p.node.log()
    );
}

#[test]
fn origin_connections_are_kept_alive_and_never_reused_mid_body() {
    let origin = Origin::start("a");
    let p = start(&origin);
    // Each request comes on a new client connection; the node keeps its origin
    // connections open between them (at most one per request worker here).
    for i in 0..20 {
        let r = curl(&p, "app.test", &format!("/seq/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains(&format!("path=/seq/{i}\n")), "{}", r.body);
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        origin.connections() <= workers,
        "{} origin connections for 20 requests",
        origin.connections()
    );

    // The origin closes a kept-alive connection after a response without saying so (its
    // keep-alive timeout): the requests after it are answered on a new connection.
    let before = origin.connections();
    let r = curl(&p, "app.test", "/closing?close=1", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..10 {
        let r = curl(&p, "app.test", &format!("/after/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains(&format!("path=/after/{i}\n")), "{}", r.body);
    }
    assert!(origin.connections() > before);

    // A client that leaves halfway through a body: the origin connection still carrying
    // the rest of it must not serve anybody else (they would read the old body).
    let full = curl(&p, "app.test", "/slow?body_delay=1500", &[]);
    assert_eq!(full.status, 200, "{}", full.body);
    for _ in 0..2 {
        let cut = curl(
            &p,
            "app.test",
            "/slow?body_delay=1500",
            &["--max-time", "0.5"],
        );
        // The first half reached the client while the origin paused: the body streams
        // through, it is not buffered whole.
        assert!(
            cut.body.starts_with("origin=a\n") && cut.body.len() < full.body.len(),
            "the client got the first half, then gave up: {:?}",
            cut.body
        );
    }
    for i in 0..10 {
        let r = curl(&p, "app.test", &format!("/fresh/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains(&format!("path=/fresh/{i}\n")), "{}", r.body);
        assert!(!r.body.contains("/slow"), "{}", r.body);
    }
    assert_eq!(origin.served("GET /slow?body_delay=1500"), 3);
}

#[test]
fn routes_match_path_prefix_method_and_headers_in_order() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let c = Origin::start("c");
    let d = Origin::start("d");
    let pools: String = [("a", &a), ("b", &b), ("c", &c), ("d", &d)]
        .iter()
        .map(|(name, o)| {
            format!(
                "[[upstream]]\nname = \"{name}\"\nservers = [\"{}\"]\n\n",
                o.addr
            )
        })
        .collect();
    let cfg = format!(
        r#"[xdp]
mode = "off"

[http]
listen = ["127.0.0.1:0"]

{pools}[[route]]
hosts = ["m.test"]
path_prefix = "/api"
methods = ["POST"]
headers = {{ "x-canary" = "1" }}
upstream = "d"

[[route]]
hosts = ["m.test"]
path_prefix = "/api"
headers = {{ "x-beta" = "*" }}
upstream = "c"

[[route]]
hosts = ["m.test"]
path_prefix = "/api"
methods = ["GET", "HEAD"]
upstream = "b"

[[route]]
hosts = ["m.test"]
path_prefix = "/static/"
upstream = "a"
"#
    );
    let p = start_config(&cfg);
    let served = |path: &str, args: &[&str]| {
        let r = curl(&p, "m.test", path, args);
        if r.status != 200 {
            return r.status.to_string();
        }
        r.body
            .lines()
            .find_map(|l| l.strip_prefix("origin="))
            .unwrap_or("?")
            .to_string()
    };
    let post = ["-X", "POST", "-d", "x=1"];
    // The path prefix matches on segment boundaries.
    assert_eq!(served("/api", &[]), "b");
    assert_eq!(served("/api/users?id=1", &[]), "b");
    assert_eq!(served("/apiary", &[]), "404");
    assert_eq!(served("/static/app.js", &[]), "a");
    assert_eq!(served("/static", &[]), "a");
    // Methods: POST is not in the GET route, so without a header nothing serves it.
    assert_eq!(served("/api/x", &post), "404");
    // Headers: an exact value, or any value ("*"); first match in order wins.
    assert_eq!(
        served("/api/x", &["-X", "POST", "-d", "x=1", "-H", "X-Canary: 1"]),
        "d"
    );
    assert_eq!(
        served("/api/x", &["-X", "POST", "-d", "x=1", "-H", "X-Canary: 2"]),
        "404"
    );
    assert_eq!(served("/api/x", &["-H", "X-Canary: 1"]), "b");
    assert_eq!(served("/api/x", &["-H", "X-Beta: yes"]), "c");
    assert_eq!(
        served("/api/x", &["-X", "POST", "-d", "x=1", "-H", "X-Beta:"]),
        "404"
    );
    // A host nobody serves is refused outright.
    assert_eq!(curl(&p, "other.test", "/api", &[]).status, 421);
    assert_eq!(a.hits() + b.hits() + c.hits() + d.hits(), 7);
}

#[test]
fn a_route_header_that_is_not_one_is_a_config_error() {
    let origin = Origin::start("a");
    let dir = std::env::temp_dir().join(edge_tests::unique("edge-route-cfg-"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("edge.toml");
    // `edge-node check` on the config plus a route with these header conditions.
    let check = |headers: &str| {
        let route =
            format!("[[route]]\nhosts = [\"h.test\"]\nupstream = \"app\"\nheaders = {headers}\n");
        std::fs::write(&file, config(&origin, &route)).unwrap();
        let out = std::process::Command::new(edge_tests::edge_node_bin())
            .args(["check", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{headers} was accepted");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = check("{ \"bad name\" = \"1\" }");
    assert!(err.contains("headers") && err.contains("bad name"), "{err}");
    // A header the node removes before routing could never match.
    let err = check("{ \"x-user-id\" = \"1\" }");
    assert!(
        err.contains("x-user-id") && err.contains("never match"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `edge-node check` on `text`: (exit status success, stderr).
fn check_config(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(edge_tests::unique("edge-check-"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("edge.toml");
    std::fs::write(&file, text).unwrap();
    // As on many build hosts: the operator must still see the message alone.
    let out = std::process::Command::new(edge_tests::edge_node_bin())
        .args(["check", "-c"])
        .arg(&file)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_values_that_would_fail_or_panic_at_run_time() {
    let base = r#"[xdp]
mode = "off"

[node]
id = "edge-1"

[http]
listen = ["127.0.0.1:18480"]
max_headers = 100
max_header_bytes = 65536
header_read_timeout = "10s"
h3_idle_timeout = "30s"

[admin]
listen = "127.0.0.1:19901"
token = "test-token-0123456789abcdef"

[threat]
block_ttl = "10m"
half_life = "2m"

[[jwt_provider]]
name = "hs"
algorithms = ["HS256"]
secret = "an-hmac-secret-of-at-least-32-bytes!"
user_header = "x-user-id"

[[upstream]]
name = "app"
servers = ["127.0.0.1:9"]
total_timeout = "0s"

[[upstream]]
name = "b"
servers = ["127.0.0.1:9"]

[[route]]
hosts = ["app.test"]
upstreams = ["app", "b"]

[[route.rate_limit]]
per_second = 1.0
burst = 5
"#;
    let (ok, err) = check_config(base);
    assert!(ok, "the base config is fine: {err}");
    // (what the base says, what it says instead, what the error must name)
    let cases = [
        // Durations that overflow an Instant (or a quinn VarInt) once added to "now".
        (
            "block_ttl = \"10m\"",
            "block_ttl = \"100000000y\"",
            "block_ttl",
        ),
        (
            "half_life = \"2m\"",
            "half_life = \"100000000y\"",
            "half_life",
        ),
        (
            "header_read_timeout = \"10s\"",
            "header_read_timeout = \"100000000y\"",
            "header_read_timeout",
        ),
        (
            "total_timeout = \"0s\"",
            "total_timeout = \"100000000y\"",
            "total_timeout",
        ),
        (
            "h3_idle_timeout = \"30s\"",
            "h3_idle_timeout = \"100000000y\"",
            "h3_idle_timeout",
        ),
        // A timeout of zero ends every connection at once.
        (
            "header_read_timeout = \"10s\"",
            "header_read_timeout = \"0s\"",
            "header_read_timeout",
        ),
        // node.id goes into a response header on every response.
        ("id = \"edge-1\"", "id = \"edge\\u0000one\"", "node.id"),
        ("id = \"edge-1\"", "id = \"edge\\r\\nx-evil: 1\"", "node.id"),
        ("id = \"edge-1\"", "id = \"edge one\"", "node.id"),
        (
            "id = \"edge-1\"",
            &format!("id = \"{}\"", "e".repeat(65)),
            "node.id",
        ),
        // The admin API on a port a proxy listener has (or would have, on every address).
        (
            "listen = \"127.0.0.1:19901\"",
            "listen = \"127.0.0.1:18480\"",
            "admin.listen",
        ),
        (
            "listen = \"127.0.0.1:19901\"",
            "listen = \"0.0.0.0:18480\"",
            "admin.listen",
        ),
        // Hosts that no request's host can ever be.
        ("hosts = [\"app.test\"]", "hosts = [\"\"]", "hosts"),
        (
            "hosts = [\"app.test\"]",
            "hosts = [\"app.test:8080\"]",
            "hosts",
        ),
        ("hosts = [\"app.test\"]", "hosts = [\"a b.test\"]", "hosts"),
        (
            "hosts = [\"app.test\"]",
            "hosts = [\"app.*.test\"]",
            "hosts",
        ),
        // Limits that refuse every request.
        ("max_headers = 100", "max_headers = 0", "max_headers"),
        (
            "max_header_bytes = 65536",
            "max_header_bytes = 0",
            "max_header_bytes",
        ),
        // One pool twice in one route.
        (
            "upstreams = [\"app\", \"b\"]",
            "upstreams = [\"app\", \"b\", \"app\"]",
            "upstreams",
        ),
        // A bucket that takes centuries to refill overflows its nanosecond clock.
        ("per_second = 1.0", "per_second = 1e-12", "rate_limit"),
        // NaN poisons every score.
        (
            "half_life = \"2m\"",
            "half_life = \"2m\"\nweights = { auth_failure = nan }",
            "auth_failure",
        ),
        // The identity header is removed from every request: never the Host.
        (
            "user_header = \"x-user-id\"",
            "user_header = \"host\"",
            "user_header",
        ),
        // Nonsense that used to pass: scores that never decay (a division by zero), a
        // weight that lowers a score, HTTP/2 unable to open a single stream.
        (
            "half_life = \"2m\"",
            "half_life = \"0s\"",
            "line 20: [threat]: threat.half_life",
        ),
        (
            "half_life = \"2m\"",
            "half_life = \"2m\"\n[threat.weights]\nauth_failure = -5.0",
            "line 22: [threat]: threat.weights.auth_failure",
        ),
        (
            "max_headers = 100",
            "max_headers = 100\nmax_concurrent_streams = 0",
            "line 10: [http]: http.max_concurrent_streams",
        ),
    ];
    for (from, to, key) in cases {
        assert!(base.contains(from), "{from}");
        let (ok, err) = check_config(&base.replacen(from, to, 1));
        assert!(!ok, "`{to}` was accepted");
        assert!(
            err.contains(key),
            "`{to}`: the error does not name {key}: {err}"
        );
        assert!(
            err.starts_with("Error: ") && !err.to_lowercase().contains("backtrace"),
            "`{to}`: the message alone: {err}"
        );
    }
}

#[test]
fn one_origin_connection_serves_every_worker() {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers < 2 {
        eprintln!(
            "one_origin_connection_serves_every_worker: one core, one worker: nothing to share"
        );
    }
    let origin = Origin::start("a");
    let p = start(&origin);
    // One client connection per worker, all held open, so each lands on its own worker;
    // they ask one after the other, with the origin connection idle in between.
    let mut clients: Vec<HeldConnection> = Vec::new();
    for w in 0..workers {
        clients.push(HeldConnection::open(&p));
        std::thread::sleep(Duration::from_millis(300));
        let (status, body) = clients[w].get("app.test", &format!("/worker/{w}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("path=/worker/{w}\n")), "{body}");
    }
    // The connection the first worker opened served them all: the pool is shared.
    assert_eq!(origin.connections(), 1, "{:?}", origin.seen);
    // Each worker still answers on its own client connection after that.
    for (w, c) in clients.iter_mut().enumerate() {
        let (status, body) = c.get("app.test", &format!("/again/{w}"));
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(origin.served("GET /again/0"), 1);
}

#[test]
fn an_early_answer_to_an_upload_does_not_stall_other_requests() {
    use std::io::{Read, Write};
    let origin = Origin::start("a");
    let p = start(&origin);
    let addr = p.base.trim_start_matches("http://").to_string();
    // An upload the origin answers at once, before reading it; the client then goes
    // quiet with most of its body still to send. The origin connection carrying it is
    // busy until the body is through, even though its response is complete. One such
    // upload per request worker (the node gives each new client connection to the
    // worker with the fewest), so every worker has that busy connection in its pool.
    let total = 200_000;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut uploads = Vec::new();
    for u in 0..workers {
        let mut upload = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            upload,
            "POST /upload?early=1&u={u} HTTP/1.1\r\nHost: app.test\r\nContent-Length: {total}\r\n\r\n"
        )
        .unwrap();
        upload.write_all(&vec![b'x'; 1000]).unwrap();
        upload
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = [0u8; 512];
        let n = upload.read(&mut head).unwrap();
        let answer = String::from_utf8_lossy(&head[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        uploads.push(upload);
    }
    // Meanwhile every other request is answered (none waits for that connection).
    for i in 0..10 {
        let r = curl(&p, "app.test", &format!("/other/{i}"), &["--max-time", "5"]);
        assert_eq!(
            r.status, 200,
            "request {i} while the upload is open: {}",
            r.body
        );
        assert!(r.body.contains(&format!("path=/other/{i}\n")), "{}", r.body);
    }
    // The rest of each upload arrives whole at the origin.
    for (u, upload) in uploads.iter_mut().enumerate() {
        upload.write_all(&vec![b'x'; total - 1000]).unwrap();
        let seen = format!("POST /upload?early=1&u={u} body={total}");
        assert!(
            eventually(Duration::from_secs(10), || origin.served(&seen) == 1),
            "{:?}",
            origin.seen
        );
    }
}
