//! Upstream pools against real origins on 127.0.0.1: how requests are spread (round
//! robin, least outstanding, consistent hash), health (active checks, passive ejection),
//! the retry budget, region failover when a region's origins die and their return, and
//! HTTP/2 and verified TLS toward origins.

use std::{collections::HashMap, time::Duration};

use edge_tests::{
    origin::Origin,
    proxy::{HeldConnection, admin_section, curl, eventually, start_config},
    tls_origin::{HyperOrigin, make_ca_and_leaf},
    unique,
};

const HEAD: &str = "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\nupstream_connect_timeout = \"1s\"\n";

fn pool(name: &str, servers: &[String], extra: &str) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("\n[[upstream]]\nname = \"{name}\"\nservers = [{list}]\n{extra}\n")
}

fn route(hosts: &str, upstream: &str) -> String {
    format!("\n[[route]]\nhosts = [\"{hosts}\"]\nupstream = \"{upstream}\"\n")
}

/// The `x-origin` of a response: who served it.
fn served_by(headers: &str) -> String {
    headers
        .lines()
        .find_map(|l| l.strip_prefix("x-origin: "))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn round_robin_least_outstanding_and_consistent_hash_spread_requests() {
    let (a, b, c) = (Origin::start("a"), Origin::start("b"), Origin::start("c"));
    let servers = vec![a.addr.to_string(), b.addr.to_string(), c.addr.to_string()];
    let cfg = format!(
        "{HEAD}{}{}{}{}{}{}",
        pool("rr", &servers, ""),
        pool(
            "sticky",
            &servers,
            "balance = \"consistent_hash\"\nhash_key = \"header:x-user\""
        ),
        pool("lo", &servers[..2], "balance = \"least_outstanding\""),
        route("rr.test", "rr"),
        route("sticky.test", "sticky"),
        route("lo.test", "lo"),
    );
    let p = start_config(&cfg);

    // Round robin: each origin gets its third.
    for _ in 0..30 {
        assert_eq!(curl(&p, "rr.test", "/", &[]).status, 200);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 10, 10));

    // Consistent hash: a user always lands on the same origin; users spread.
    let mut home: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..20 {
            let user = format!("user-{u}");
            let r = curl(&p, "sticky.test", "/", &["-H", &format!("X-User: {user}")]);
            assert_eq!(r.status, 200);
            let by = served_by(&r.headers);
            match home.get(&user) {
                Some(h) => assert_eq!(h, &by, "{user} moved in round {round}"),
                None => {
                    home.insert(user, by);
                }
            }
        }
    }
    let distinct: std::collections::HashSet<_> = home.values().collect();
    assert!(distinct.len() >= 2, "20 users on one origin: {home:?}");

    // Least outstanding: a slow origin holds its requests, so it gets few of them.
    a.set_delay_ms(400);
    let (a0, b0) = (a.hits(), b.hits());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..5 {
                    assert_eq!(curl(&p, "lo.test", "/", &[]).status, 200);
                }
            });
        }
    });
    let (slow, fast) = (a.hits() - a0, b.hits() - b0);
    assert_eq!(slow + fast, 40);
    assert!(
        slow * 3 < fast,
        "least outstanding sent {slow} to the slow origin and {fast} to the fast one"
    );
}

#[test]
fn failures_eject_a_server_and_retries_stay_within_the_budget() {
    let a = Origin::start("a");
    // A server that refuses connections, listed first so round robin tries it first.
    let dead = "127.0.0.1:1".to_string();
    let servers = vec![dead.clone(), a.addr.to_string()];
    let cfg = format!(
        "{HEAD}{}{}{}{}{}",
        pool(
            "nobudget",
            &servers,
            "max_fails = 1\nfail_timeout = \"60s\"\nretry_budget_ratio = 0.0\nretry_budget_min_per_sec = 0.0"
        ),
        pool("budget", &servers, "max_fails = 1\nfail_timeout = \"60s\""),
        route("nobudget.test", "nobudget"),
        route("budget.test", "budget"),
        admin_section(),
    );
    let p = start_config(&cfg);
    // No budget: the first request meets the dead server and is not retried...
    assert_eq!(curl(&p, "nobudget.test", "/", &[]).status, 502);
    // ... which ejects it: everything after goes to the live one.
    for _ in 0..10 {
        assert_eq!(curl(&p, "nobudget.test", "/", &[]).status, 200);
    }
    let m = |s: &str| p.metric(s).unwrap_or(-1.0);
    let nb = format!("{{upstream=\"nobudget\",server=\"{dead}\"}}");
    assert_eq!(m(&format!("edge_upstream_server_ejections_total{nb}")), 1.0);
    assert_eq!(
        m(&format!("edge_upstream_server_retries_denied_total{nb}")),
        1.0
    );
    assert_eq!(m(&format!("edge_upstream_server_up{nb}")), 0.0);
    // With the default budget the failed attempt is retried on the next server.
    for _ in 0..5 {
        assert_eq!(curl(&p, "budget.test", "/", &[]).status, 200);
    }
    let b = format!("{{upstream=\"budget\",server=\"{dead}\"}}");
    assert_eq!(m(&format!("edge_upstream_server_retries_total{b}")), 1.0);
    assert_eq!(m(&format!("edge_upstream_server_requests_total{b}")), 1.0);
}

#[test]
fn region_pools_fail_over_when_origins_die_and_health_checks_bring_them_back() {
    let eu = Origin::start("eu-1");
    let us = Origin::start("us-1");
    let check = "[upstream.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";
    let cfg = format!(
        "{HEAD}\n[geo]\ndefault_region = \"us\"\n[[geo.region]]\nname = \"eu\"\ncidrs = [\"127.0.0.0/8\"]\n{}{}\n[[route]]\nhosts = [\"app.test\"]\nupstreams = [\"app-eu\", \"app-us\"]\n{}",
        pool(
            "app-eu",
            &[eu.addr.to_string()],
            &format!("region = \"eu\"\n{check}")
        ),
        pool(
            "app-us",
            &[us.addr.to_string()],
            &format!("region = \"us\"\n{check}")
        ),
        admin_section(),
    );
    let p = start_config(&cfg);
    let region = |r: &edge_tests::proxy::Reply| {
        r.headers
            .lines()
            .find_map(|l| l.strip_prefix("x-region: "))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!((r.status, region(&r).as_str()), (200, "eu"));

    // The EU origin dies: requests fail over to the US pool at once, and the health
    // check takes the EU server out of rotation.
    let eu_addr = eu.kill();
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!((r.status, region(&r).as_str()), (200, "us"), "{}", r.body);
    let up = format!("edge_upstream_server_up{{upstream=\"app-eu\",server=\"{eu_addr}\"}}");
    assert!(
        eventually(Duration::from_secs(10), || p.metric(&up) == Some(0.0)),
        "health check never marked the dead origin down:\n{}",
        p.metrics()
    );
    for _ in 0..5 {
        let r = curl(&p, "app.test", "/", &[]);
        assert_eq!((r.status, region(&r).as_str()), (200, "us"));
    }

    // It comes back on the same address: the health check returns it to rotation.
    let eu = Origin::start_on("eu-1", eu_addr);
    assert!(
        eventually(Duration::from_secs(10), || p.metric(&up) == Some(1.0)),
        "health check never brought the origin back:\n{}",
        p.metrics()
    );
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!((r.status, region(&r).as_str()), (200, "eu"));
    assert!(eu.hits() >= 1);

    // An origin that answers but fails its health check (503) leaves rotation too.
    eu.health_status
        .store(503, std::sync::atomic::Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(10), || p.metric(&up) == Some(0.0)));
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!((r.status, region(&r).as_str()), (200, "us"));

    // Every pool out of rotation: the node still tries (a health verdict can be stale),
    // and the EU origin, which answers requests though its health check fails, serves.
    let us_addr = us.kill();
    let us_up = format!("edge_upstream_server_up{{upstream=\"app-us\",server=\"{us_addr}\"}}");
    assert!(eventually(Duration::from_secs(10), || p.metric(&us_up) == Some(0.0)));
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!((r.status, region(&r).as_str()), (200, "eu"), "{}", r.body);
    // When nothing answers either, the service is unavailable: 503, detail in the log.
    eu.kill();
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body.trim(), "503 Service Unavailable");
    assert!(
        p.node.log().contains("in rotation; tried anyway"),
        "{}",
        p.node.log()
    );
}

#[test]
fn http2_and_verified_tls_toward_origins() {
    let dir = std::env::temp_dir().join(unique("edge-otls-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["origin.test"]);
    let tls_origin = HyperOrigin::start(
        "secure",
        Some((&dir.join("leaf.crt"), &dir.join("leaf.key"))),
    );
    let h2c_origin = HyperOrigin::start("cleartext", None);
    let ca = dir.join("ca.crt");
    let tls = |name: &str, extra: &str| {
        pool(
            name,
            &[tls_origin.addr.to_string()],
            &format!(
                "tls = true\ntls_server_name = \"origin.test\"\ntls_ca_file = \"{}\"\n{extra}",
                ca.display()
            ),
        )
    };
    let cfg = format!(
        "{HEAD}{}{}{}{}{}{}{}{}",
        tls("tls-h2", "protocol = \"http2\""),
        tls("tls-h1", ""),
        pool(
            "tls-wrong-name",
            &[tls_origin.addr.to_string()],
            &format!(
                "tls = true\ntls_server_name = \"other.test\"\ntls_ca_file = \"{}\"",
                ca.display()
            )
        ),
        pool(
            "h2c",
            &[h2c_origin.addr.to_string()],
            "protocol = \"http2\""
        ),
        route("tls-h2.test", "tls-h2"),
        route("tls-h1.test", "tls-h1"),
        route("wrong.test", "tls-wrong-name"),
        route("h2c.test", "h2c"),
    );
    let p = start_config(&cfg);
    let r = curl(&p, "tls-h2.test", "/x", &[]);
    assert_eq!(r.status, 200, "{}", p.node.log());
    assert!(
        r.body.contains("version=HTTP/2.0") && r.body.contains("sni=origin.test"),
        "{}",
        r.body
    );
    let r = curl(&p, "tls-h1.test", "/x", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("version=HTTP/1.1"), "{}", r.body);
    // A certificate that does not name the configured server name is refused.
    let r = curl(&p, "wrong.test", "/x", &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        p.node.log().contains("other.test") || p.node.log().contains("NotValidForName"),
        "{}",
        p.node.log()
    );
    // HTTP/2 with prior knowledge to a cleartext origin, whatever the client spoke.
    let r = curl(&p, "h2c.test", "/y", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("version=HTTP/2.0"), "{}", r.body);

    // One pool for all workers: requests served by different workers (one client
    // connection held open per worker) share the origin connection.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let before = h2c_origin
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut clients: Vec<HeldConnection> = (0..workers).map(|_| HeldConnection::open(&p)).collect();
    for (w, c) in clients.iter_mut().enumerate() {
        let (status, body) = c.get("h2c.test", &format!("/w{w}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("version=HTTP/2.0"), "{body}");
    }
    assert_eq!(
        h2c_origin
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        before,
        "the HTTP/2 origin connection opened first serves every worker"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A MaxMind-format database written by an independent writer (the mmdb-writer Python
/// package): 127.0.0.1 in Germany, 127.0.0.2 in the United States, 127.0.0.3 in Japan.
fn make_mmdb(path: &std::path::Path) {
    let script = format!(
        r#"
from netaddr import IPSet
from mmdb_writer import MMDBWriter
w = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
for net, country, continent in [("127.0.0.1/32", "DE", "EU"), ("127.0.0.2/32", "US", "NA"), ("127.0.0.3/32", "JP", "AS")]:
    w.insert_network(IPSet([net]), {{"country": {{"iso_code": country}}, "continent": {{"code": continent}}}})
w.to_db_file("{}")
"#,
        path.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "mmdb-writer (pip install mmdb-writer; `cargo xtask test` installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn clients_get_their_region_from_a_maxmind_database() {
    let dir = std::env::temp_dir().join(unique("edge-geo-"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("country.mmdb");
    make_mmdb(&db);
    let (eu, us, ap) = (
        Origin::start("eu"),
        Origin::start("us"),
        Origin::start("ap"),
    );
    let cfg = format!(
        "{HEAD}\n[geo]\ndefault_region = \"ap\"\nmaxmind_db = \"{}\"\ncountry_regions = {{ DE = \"eu\" }}\ncontinent_regions = {{ NA = \"us\" }}\n{}{}{}\n[[route]]\nhosts = [\"app.test\"]\nupstreams = [\"p-eu\", \"p-us\", \"p-ap\"]\n",
        db.display(),
        pool("p-eu", &[eu.addr.to_string()], "region = \"eu\""),
        pool("p-us", &[us.addr.to_string()], "region = \"us\""),
        pool("p-ap", &[ap.addr.to_string()], "region = \"ap\""),
    );
    let p = start_config(&cfg);
    // By country (DE → eu), by continent (US is not listed, NA → us), and the default
    // for a country and continent nobody mapped (JP, AS).
    for (from, region) in [
        ("127.0.0.1", "eu"),
        ("127.0.0.2", "us"),
        ("127.0.0.3", "ap"),
    ] {
        let r = curl(&p, "app.test", "/", &["--interface", from]);
        assert_eq!(r.status, 200, "{from}");
        assert!(
            r.headers.contains(&format!("x-region: {region}\r")),
            "{from}: {}",
            r.headers
        );
        assert_eq!(served_by(&r.headers), region);
    }
    // A database that is not one is a configuration error naming the file.
    std::fs::write(dir.join("broken.mmdb"), b"not a database").unwrap();
    let out = std::process::Command::new(edge_tests::edge_node_bin())
        .args(["check", "-c"])
        .arg({
            let c = dir.join("bad.toml");
            std::fs::write(
                &c,
                format!(
                    "[geo]\nmaxmind_db = \"{}\"\n",
                    dir.join("broken.mmdb").display()
                ),
            )
            .unwrap();
            c
        })
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.mmdb"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slow_origins_time_out_with_504_and_a_timed_out_request_is_never_sent_twice() {
    let a = Origin::start("slow-a");
    let b = Origin::start("slow-b");
    for o in [&a, &b] {
        o.set_delay_ms(1500);
    }
    let body_origin = Origin::start("stalling");
    let cfg = format!(
        "{HEAD}{}{}{}{}",
        pool(
            "slow",
            &[a.addr.to_string(), b.addr.to_string()],
            "response_timeout = \"300ms\""
        ),
        pool(
            "stalling",
            &[body_origin.addr.to_string()],
            "total_timeout = \"700ms\""
        ),
        route("slow.test", "slow"),
        route("stalling.test", "stalling"),
    );
    let p = start_config(&cfg);
    // No response head within response_timeout: 504, and the other server is not asked
    // (the first may still be acting on the request).
    let r = curl(&p, "slow.test", "/order", &[]);
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.body.trim(), "504 Gateway Timeout");
    assert_eq!(a.hits() + b.hits(), 1, "sent once");
    // total_timeout covers the body too: a body that stalls past it is cut off, so the
    // client gets fewer bytes than announced rather than waiting for ever.
    let cut = curl(&p, "stalling.test", "/doc?body_delay=3000", &[]);
    assert_eq!(cut.status, 200, "the head had been sent");
    let announced: usize = cut
        .headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", cut.headers));
    assert!(
        cut.body.len() < announced,
        "{} of {announced} bytes",
        cut.body.len()
    );
    assert!(p.node.log().contains("stalling"), "{}", p.node.log());
}
