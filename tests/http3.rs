//! HTTP/3 through the same pipeline, driven by clients that are not ours: an aioquic
//! client (Python) for GET and POST, and headless Chromium forced onto QUIC; curl over
//! HTTP/1.1 and HTTP/2 sees `Alt-Svc`; a route answers alike over all three protocols,
//! auth failures included.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use edge_tests::{
    h3::{free_udp_port, h3, h3_job},
    origin::Origin,
    proxy::{Proxy, admin_section, curl, start_config},
    tls_origin::make_ca_and_leaf,
    unique,
};
use serde_json::{Value, json};

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

/// The origin's echo without the lines that name the protocol hop (Via, and the
/// scheme: curl here speaks plain HTTP, HTTP/3 is always TLS).
fn echo_core(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| {
            l.starts_with("origin=")
                || l.starts_with("method=")
                || l.starts_with("path=")
                || l.starts_with("body=")
                || l.starts_with("x-user-id:")
                || l.starts_with("x-forwarded-for:")
        })
        .map(String::from)
        .collect()
}

#[test]
fn http3_serves_the_same_routes_as_http1_and_http2() {
    let dir = std::env::temp_dir().join(unique("edge-h3-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["app.test", "auth.test", "cached.test"]);
    let origin = Origin::start("a");
    let port = free_udp_port();
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\nh3_listen = [\"127.0.0.1:{port}\"]\n\n\
         [threat]\nenabled = false\n\n\
         [[certificate]]\nhosts = [\"app.test\", \"auth.test\", \"cached.test\"]\ncert = \"{leaf}\"\nkey = \"{key}\"\n\n\
         [[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n\n\
         [[route]]\nhosts = [\"auth.test\"]\nupstream = \"app\"\n[route.auth]\nprovider = \"hs\"\n\n\
         [[route]]\nhosts = [\"cached.test\"]\nupstream = \"app\"\n[route.cache]\n{admin}",
        leaf = dir.join("leaf.crt").display(),
        key = dir.join("leaf.key").display(),
        origin = origin.addr,
        admin = admin_section(),
    );
    let p = start_config(&cfg);
    assert!(p.node.log().contains("h3 listening"), "{}", p.node.log());
    let ca = dir.join("ca.crt");
    let answers = h3_job(
        port,
        &ca,
        json!([
            {"method": "GET", "authority": "app.test", "path": "/page?q=1"},
            {"method": "POST", "authority": "app.test", "path": "/form", "body": "x".repeat(3000)},
            {"method": "GET", "authority": "auth.test", "path": "/private"},
            {"method": "GET", "authority": "nope.test", "path": "/"},
        ]),
        json!({"report_retry": true}),
    );
    // Not under load: no Retry round trip.
    assert_eq!(answers[4]["retried"], false, "{answers:?}");
    // GET and POST reach the origin over HTTP/3, bodies streaming through.
    assert_eq!(answers[0]["status"], 200, "{answers:?}");
    let body = answers[0]["body"].as_str().unwrap();
    assert!(
        body.contains("path=/page") && body.contains("via: 3 edge-node"),
        "{body}"
    );
    assert_eq!(answers[0]["headers"]["x-node-id"], "edge-1");
    assert!(
        answers[0]["headers"].get("alt-svc").is_none(),
        "no Alt-Svc over HTTP/3"
    );
    assert_eq!(answers[1]["status"], 200);
    assert!(answers[1]["body"].as_str().unwrap().contains("body=3000"));
    // Auth and unknown hosts answer as they do over TCP.
    assert_eq!(answers[2]["status"], 401);
    assert_eq!(
        answers[2]["headers"]["www-authenticate"],
        "Bearer realm=\"edge-node\""
    );
    assert_eq!(answers[3]["status"], 421);

    // HTTP/1.1 and HTTP/2 advertise HTTP/3 ...
    for args in [&[][..], &["--http2-prior-knowledge"][..]] {
        let r = curl(&p, "app.test", "/page?q=1", args);
        assert_eq!(r.status, 200);
        assert!(
            r.headers
                .contains(&format!("alt-svc: h3=\":{port}\"; ma=86400")),
            "{}",
            r.headers
        );
        // ... and the same route answers the same way (all but the protocol hop).
        assert_eq!(echo_core(&r.body), echo_core(body), "{args:?}");
    }
    // With a valid token, all three protocols get through the auth route alike.
    let token = {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice", "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let a3 = h3(
        port,
        &ca,
        json!([{"method": "GET", "authority": "auth.test", "path": "/private",
                "headers": [["authorization", format!("Bearer {token}")]]}]),
    );
    assert_eq!(a3[0]["status"], 200);
    let h1 = curl(
        &p,
        "auth.test",
        "/private",
        &["-H", &format!("Authorization: Bearer {token}")],
    );
    assert_eq!(h1.status, 200);
    assert_eq!(
        echo_core(a3[0]["body"].as_str().unwrap()),
        echo_core(&h1.body)
    );
    assert!(h1.body.contains("x-user-id: alice"));
    // Cache hits: a response stored through HTTP/1.1 is a hit over h2c, byte for byte;
    // HTTP/3 is https, and the scheme is part of the key, so it has entries of its own,
    // hit the same way.
    let stored = curl(&p, "cached.test", "/c?cc=max-age%3D60", &[]);
    assert!(
        stored.headers.contains("x-cache: miss"),
        "{}",
        stored.headers
    );
    let via_h2 = curl(
        &p,
        "cached.test",
        "/c?cc=max-age%3D60",
        &["--http2-prior-knowledge"],
    );
    assert!(
        via_h2.headers.contains("x-cache: hit"),
        "{}",
        via_h2.headers
    );
    assert_eq!(via_h2.body, stored.body);
    let get_c =
        json!([{"method": "GET", "authority": "cached.test", "path": "/c?cc=max-age%3D60"}]);
    let first = h3(port, &ca, get_c.clone());
    let second = h3(port, &ca, get_c);
    assert_eq!(first[0]["headers"]["x-cache"], "MISS", "{first:?}");
    assert_eq!(second[0]["headers"]["x-cache"], "HIT", "{second:?}");
    assert_eq!(second[0]["body"], first[0]["body"]);
    assert_eq!(
        echo_core(first[0]["body"].as_str().unwrap()),
        echo_core(&stored.body)
    );
    // Metrics and the access log name the protocol.
    assert!(p.metrics().contains("protocol=\"h3\""), "{}", p.metrics());
    assert!(
        p.node.log().contains("version=HTTP/3.0"),
        "{}",
        p.node.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chromium_loads_a_page_over_quic() {
    let browser = "/usr/bin/chromium";
    if !Path::new(browser).exists() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "chromium is missing and CI=true forbids skipping");
        eprintln!("\n!!!!!!!! SKIPPED: /usr/bin/chromium missing !!!!!!!!\n");
        return;
    }
    let dir = std::env::temp_dir().join(unique("edge-h3c-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["app.test"]);
    // Chromium trusts the leaf by the hash of its public key.
    let spki = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in leaf.crt -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64")
        .current_dir(&dir)
        .output()
        .unwrap();
    let spki = String::from_utf8_lossy(&spki.stdout).trim().to_string();
    let origin = Origin::start("a");
    let port = free_udp_port();
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\nh3_listen = [\"127.0.0.1:{port}\"]\n\n\
         [[certificate]]\nhosts = [\"app.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n[[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        dir.join("leaf.crt").display(),
        dir.join("leaf.key").display(),
        origin.addr,
    );
    let p = start_config(&cfg);
    let profile = dir.join("profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-quic",
            "--virtual-time-budget=10000",
            "--timeout=30000",
            "--dump-dom",
        ])
        .arg(format!("--origin-to-force-quic-on=app.test:{port}"))
        .arg("--host-resolver-rules=MAP app.test 127.0.0.1")
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("https://app.test:{port}/from-chromium"))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("path=/from-chromium") && dom.contains("via: 3 edge-node"),
        "Chromium did not load the page over HTTP/3:\n{dom}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.node.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node with 0-RTT on (plus `http_extra` in its `[http]` and `route_extra` after its
/// route), a certificate for app.test and one origin: its directory (with ca.crt),
/// origin, h3 port and proxy.
fn early_data_node(
    prefix: &str,
    http_extra: &str,
    route_extra: &str,
) -> (PathBuf, Origin, u16, Proxy) {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["app.test"]);
    let origin = Origin::start("a");
    let port = free_udp_port();
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\nh3_listen = [\"127.0.0.1:{port}\"]\nh3_0rtt = true\n{http_extra}\n\
         [[certificate]]\nhosts = [\"app.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n[[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n{route_extra}",
        dir.join("leaf.crt").display(),
        dir.join("leaf.key").display(),
        origin.addr,
    );
    let p = start_config(&cfg);
    (dir, origin, port, p)
}

/// Sends four `requests` as 0-RTT early data in a flight whose handshake nobody
/// completes (as from a forged source; held `wait_s` seconds), then waits until the
/// node's log shows `line` once per request.
fn unprovable_flight(p: &Proxy, port: u16, ca: &Path, requests: Value, wait_s: u64, line: &str) {
    let answers = h3_job(
        port,
        ca,
        requests,
        json!({"zero_rtt": true, "intercept_first_flight": wait_s}),
    );
    assert!(
        answers[0]["replayed_datagrams"].as_u64().unwrap() >= 1,
        "{answers:?}"
    );
    assert!(
        edge_tests::proxy::eventually(std::time::Duration::from_secs(5), || p
            .node
            .log()
            .matches(line)
            .count()
            >= 4),
        "{}",
        p.node.log()
    );
}

#[test]
fn zero_rtt_early_data_is_accepted_and_unsafe_methods_wait_for_the_handshake() {
    let (dir, _origin, port, _p) = early_data_node("edge-h3z-", "", "");
    let requests = json!([
        {"method": "GET", "authority": "app.test", "path": "/early-get"},
        {"method": "POST", "authority": "app.test", "path": "/early-post", "body": "pay"},
    ]);
    let answers = h3_job(
        port,
        &dir.join("ca.crt"),
        requests,
        json!({"zero_rtt": true}),
    );
    // Both were sent as early data; the GET is served from it, the POST only once the
    // handshake completed (a replayed flight never completes it; then 425).
    assert_eq!(answers[2]["early_data_accepted"], true, "{answers:?}");
    assert_eq!(answers[0]["status"], 200, "{answers:?}");
    assert_eq!(answers[1]["status"], 200, "{answers:?}");
    assert!(answers[1]["body"].as_str().unwrap().contains("body=3"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replayed_early_data_flight_never_gets_an_unsafe_request_served() {
    let (dir, origin, port, p) = early_data_node("edge-h3r-", "header_read_timeout = \"1s\"\n", "");
    let ca = dir.join("ca.crt");
    let job = |path: &str, mut options: Value| {
        options["zero_rtt"] = json!(true);
        let post =
            json!([{"method": "POST", "authority": "app.test", "path": path, "body": "pay"}]);
        h3_job(port, &ca, post, options)
    };

    // An on-path attacker holds back a resuming client's first flight (its early data
    // included) and sends it as its own. The node takes the early data, but the POST
    // waits for a handshake nobody can complete: 425 after the head timeout, and the
    // origin never sees it.
    let answers = job("/held-back", json!({"intercept_first_flight": 3}));
    assert!(
        answers[0]["replayed_datagrams"].as_u64().unwrap() >= 1,
        "{answers:?}"
    );
    assert!(
        edge_tests::proxy::eventually(std::time::Duration::from_secs(5), || p
            .node
            .log()
            .contains("HTTP/3 request from early data refused")),
        "{}",
        p.node.log()
    );
    assert!(
        p.node.log().contains("path=/held-back status=425"),
        "{}",
        p.node.log()
    );
    assert_eq!(origin.served("POST /held-back"), 0, "{:?}", origin.seen);

    // A flight captured from a client that completed: its session ticket was used up,
    // so the replay's early data is refused outright; the POST was served once.
    let answers = job("/transfer", json!({"replay_first_flight": 3}));
    assert_eq!(answers[0]["status"], 200, "{answers:?}");
    assert_eq!(answers[1]["early_data_accepted"], true, "{answers:?}");
    assert!(
        answers[2]["replayed_datagrams"].as_u64().unwrap() >= 1,
        "{answers:?}"
    );
    assert_eq!(origin.served("POST /transfer"), 1, "{:?}", origin.seen);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn early_data_from_an_unproven_address_never_earns_it_a_score() {
    let (dir, _origin, port, p) = early_data_node("edge-h3p-", "", "");
    // A flight with four probes of a blocked path in its early data (25 points each,
    // drop threshold 100), sent by someone who cannot complete the handshake: with a
    // forged source, they would get the address's owner dropped.
    let probes = json!([
        {"method": "GET", "authority": "app.test", "path": "/.env"},
        {"method": "GET", "authority": "app.test", "path": "/.env?1"},
        {"method": "GET", "authority": "app.test", "path": "/.env?2"},
        {"method": "GET", "authority": "app.test", "path": "/.env?3"},
    ]);
    // The node served them from early data (refused as probes)...
    unprovable_flight(
        &p,
        port,
        &dir.join("ca.crt"),
        probes,
        1,
        "probe of a blocked path",
    );
    // ... and the address they claimed is neither escalated nor refused.
    assert!(!p.node.log().contains("escalated"), "{}", p.node.log());
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!(r.status, 200, "{}", p.node.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn early_data_never_spends_the_rate_limit_of_the_address_it_claims() {
    // Three requests per client, refilled once a minute.
    let (dir, _origin, port, p) = early_data_node(
        "edge-h3l-",
        "header_read_timeout = \"1s\"\n",
        "[[route.rate_limit]]\nper_second = 0.016\nburst = 3\n",
    );
    let ca = dir.join("ca.crt");
    // Someone who cannot complete the handshake (a forged source) sends a flight of
    // four GETs in early data (after one request of its own to earn the ticket).
    let flood = json!([
        {"method": "GET", "authority": "app.test", "path": "/a"},
        {"method": "GET", "authority": "app.test", "path": "/b"},
        {"method": "GET", "authority": "app.test", "path": "/c"},
        {"method": "GET", "authority": "app.test", "path": "/d"},
    ]);
    unprovable_flight(&p, port, &ca, flood, 2, "status=425");
    // The address's owner still has what the ticket request left of its burst: a
    // resuming client's early GET waits for its handshake and is served.
    let answers = h3_job(
        port,
        &ca,
        json!([{"method": "GET", "authority": "app.test", "path": "/mine"}]),
        json!({"zero_rtt": true}),
    );
    assert_eq!(answers[1]["early_data_accepted"], true, "{answers:?}");
    assert_eq!(answers[0]["status"], 200, "{answers:?}\n{}", p.node.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_origins_early_hints_reach_http3_clients_and_are_never_stored() {
    let dir = std::env::temp_dir().join(unique("edge-h3e-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["app.test"]);
    let origin = Origin::start("a");
    let port = free_udp_port();
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\nh3_listen = [\"127.0.0.1:{port}\"]\n\
         [[certificate]]\nhosts = [\"app.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\npath_prefix = \"/cached\"\nupstream = \"app\"\n[route.cache]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        dir.join("leaf.crt").display(),
        dir.join("leaf.key").display(),
        origin.addr,
    );
    let p = start_config(&cfg);
    let get = |path: &str| {
        h3_job(
            port,
            &dir.join("ca.crt"),
            json!([{"method": "GET", "authority": "app.test", "path": path}]),
            json!({}),
        )
        .remove(0)
    };
    // Two 103s before the answer: each reaches the client as an interim response
    // with its Link, and nothing else the origin put in it.
    let r = get("/page?hints=2");
    assert_eq!(r["status"], 200, "{r:?}\n{}", p.node.log());
    let interim = r["interim"].as_array().unwrap();
    assert_eq!(interim.len(), 2, "{r:?}");
    for (i, hint) in interim.iter().enumerate() {
        assert_eq!(hint[":status"], "103", "{r:?}");
        assert_eq!(
            hint["link"],
            format!("</style-{i}.css>; rel=preload; as=style"),
            "{r:?}"
        );
        assert!(hint.get("x-origin-secret").is_none(), "{r:?}");
    }
    // Hints belong to the exchange, not to the response: a cached copy has none.
    let first = get("/cached/page?hints=1&cc=max-age%3D600");
    assert_eq!(first["interim"].as_array().unwrap().len(), 1, "{first:?}");
    assert_eq!(first["headers"]["x-cache"], "MISS", "{first:?}");
    let hit = get("/cached/page?hints=1&cc=max-age%3D600");
    assert_eq!(hit["headers"]["x-cache"], "HIT", "{hit:?}");
    assert_eq!(hit["interim"].as_array().unwrap().len(), 0, "{hit:?}");
    assert!(hit["headers"].get("link").is_none(), "{hit:?}");
    // Over HTTP/1.1 the node cannot send a 1xx (hyper's server has no way to): the
    // client gets the answer alone.
    let r = curl(&p, "app.test", "/page?hints=1", &[]);
    assert_eq!(r.status, 200, "{}", p.node.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn http3_requests_fail_over_like_every_other_protocol() {
    let dir = std::env::temp_dir().join(unique("edge-h3f-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["app.test"]);
    let us = Origin::start("us");
    // The client's region's pool (eu) is a port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let port = free_udp_port();
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\nh3_listen = [\"127.0.0.1:{port}\"]\n\
         upstream_connect_timeout = \"1s\"\n\
         [geo]\ndefault_region = \"us\"\n[[geo.region]]\nname = \"eu\"\ncidrs = [\"127.0.0.0/8\"]\n\
         [[certificate]]\nhosts = [\"app.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[upstream]]\nname = \"app-us\"\nregion = \"us\"\nservers = [\"{}\"]\n\
         [[upstream]]\nname = \"app-eu\"\nregion = \"eu\"\nservers = [\"{dead}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstreams = [\"app-us\", \"app-eu\"]\n",
        dir.join("leaf.crt").display(),
        dir.join("leaf.key").display(),
        us.addr,
    );
    let _p = start_config(&cfg);
    let answers = h3_job(
        port,
        &dir.join("ca.crt"),
        json!([{"method": "GET", "authority": "app.test", "path": "/over"}]),
        json!({}),
    );
    assert_eq!(answers[0]["status"], 200, "{answers:?}");
    assert!(
        answers[0]["body"].as_str().unwrap().contains("origin=us"),
        "{answers:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn address_validation_and_graceful_shutdown_over_quic() {
    let dir = std::env::temp_dir().join(unique("edge-h3s-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["app.test"]);
    let origin = Origin::start("a");
    origin.set_delay_ms(800);
    let port = free_udp_port();
    // h3_retry_above = 0: every new client must first validate its address (Retry).
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\nh3_listen = [\"127.0.0.1:{port}\"]\nh3_retry_above = 0\n\n\
         [[certificate]]\nhosts = [\"app.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n[[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        dir.join("leaf.crt").display(),
        dir.join("leaf.key").display(),
        origin.addr,
    );
    let mut p = start_config(&cfg);
    let ca = dir.join("ca.crt");
    // A request in flight when SIGTERM arrives is answered (GOAWAY stops new ones), and
    // the client got through the Retry round trip first.
    let answers = std::thread::scope(|s| {
        let h = s.spawn(|| {
            h3_job(
                port,
                &ca,
                json!([{"method": "GET", "authority": "app.test", "path": "/slow"}]),
                json!({"report_retry": true}),
            )
        });
        // SIGTERM once the request is at the origin (in flight).
        assert!(edge_tests::proxy::eventually(
            std::time::Duration::from_secs(10),
            || origin.hits() == 1
        ));
        p.node.signal(libc::SIGTERM);
        h.join().unwrap()
    });
    assert_eq!(answers[0]["status"], 200, "{answers:?}");
    assert!(answers[0]["body"].as_str().unwrap().contains("path=/slow"));
    assert_eq!(answers[1]["retried"], true, "the node sent a Retry first");
    assert_eq!(
        p.node.wait_exit(std::time::Duration::from_secs(15)),
        Some(0),
        "{}",
        p.node.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
