//! A fleet of three nodes sharing threat intelligence through a real redis-server: each
//! node runs in the server namespace with its XDP program on its own veth, and the client
//! namespace reaches all three from the same addresses. What one node learns (a client
//! failing auth) or an operator decides on one (a block through the admin API) is
//! dropped at every node's NIC; Redis killed and restarted, the nodes carry on and catch
//! up; a node restarted while it was away applies what it missed; `edge-node fleet
//! status` lists the members, live or lapsed.

use std::time::{Duration, Instant};

use edge_tests::{
    fleet::{ABUSER, BLOCKED, Backend, Fleet, NEIGHBOUR},
    node::Node,
    privileged,
    redis::{Redis, RedisCluster, RedisSentinel},
};

/// Every node is a member, live, in its region, at this version.
fn every_node_is_a_live_member(f: &Fleet) {
    let status = f.status(0, |s| {
        s.lines().filter(|l| l.ends_with("\tlive")).count() == 3
    });
    for name in ["edge-a", "edge-b", "edge-c"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("{name} missing:\n{status}"));
        assert!(
            line.starts_with(&format!("{name}\teu\t{}\t", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
    }
}

/// The abuser fails auth at node a until a drops it at its NIC; b and c drop it too,
/// though it never misbehaved there, and serve everyone else.
fn an_escalation_at_a_is_dropped_everywhere(f: &Fleet) {
    for n in 0..3 {
        assert_eq!(f.call(n, ABUSER).unwrap(), 401, "node {n}");
    }
    let before = [f.threat_drops(1), f.threat_drops(2)];
    let failures = f.escalate_at(0);
    assert!(failures >= 5, "dropped after only {failures} failures");
    for n in [1, 2] {
        let took = f
            .dropped_within(n, ABUSER, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("node {n} never dropped the abuser:\n{}", f.logs()));
        eprintln!("node {n} dropped the abuser {took:?} after node a did");
        assert!(
            f.threat_drops(n) > before[n - 1],
            "node {n}: no XDP threat drop counted"
        );
        let listed = f.nodes[n].cli_ok(&["xdp", "list"]);
        assert!(listed.contains(ABUSER), "node {n}: {listed}");
        assert_eq!(f.call(n, NEIGHBOUR).unwrap(), 401, "node {n}");
    }
}

/// An operator blocks a client on b: a and c drop it; unblocked on b, they serve it.
fn an_operator_block_on_b_reaches_everyone(f: &Fleet, wait: Duration) {
    assert_eq!(f.call(0, BLOCKED).unwrap(), 401);
    let (status, body) = f.admin(
        1,
        "POST",
        &format!("/policy/block?cidr={BLOCKED}/32&ttl=60s"),
    );
    assert_eq!(status, 200, "{body}");
    for n in [0, 1, 2] {
        assert!(
            f.dropped_within(n, BLOCKED, wait).is_some(),
            "node {n} never dropped the operator's block:\n{}",
            f.logs()
        );
    }
    let (status, body) = f.admin(1, "POST", &format!("/policy/unblock?cidr={BLOCKED}/32"));
    assert_eq!(
        (status, body.trim()),
        (200, format!("unblocked {BLOCKED}/32").as_str())
    );
    for n in [0, 2] {
        assert!(
            f.answers_within(n, BLOCKED, wait),
            "node {n} still drops an unblocked client:\n{}",
            f.logs()
        );
    }
}

#[test]
fn what_one_node_learns_or_an_operator_decides_every_node_drops() {
    let test = "what_one_node_learns_or_an_operator_decides_every_node_drops";
    if !privileged(test) {
        return;
    }
    let Some(f) = Fleet::new(test) else { return };
    every_node_is_a_live_member(&f);
    an_escalation_at_a_is_dropped_everywhere(&f);
    an_operator_block_on_b_reaches_everyone(&f, Duration::from_secs(5));
    // An operator on b blocks the neighbour: c follows, a refuses (its allow list).
    let (status, body) = f.admin(
        1,
        "POST",
        &format!("/policy/block?cidr={NEIGHBOUR}&ttl=60s"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        f.dropped_within(2, NEIGHBOUR, Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(f.call(0, NEIGHBOUR).unwrap(), 401, "{}", f.logs());
    assert!(f.nodes[0].wait_for_log("threat event refused", Duration::from_secs(5)));
    f.admin(1, "POST", &format!("/policy/unblock?cidr={NEIGHBOUR}"));
    // Every node counted what it applied from the others.
    let (_, metrics) = f.admin(2, "GET", "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("edge_fleet_threat_events_total{outcome=\"applied\"} ")),
        "{metrics}"
    );
}

#[test]
fn the_fleet_carries_on_without_redis_and_catches_up() {
    let test = "the_fleet_carries_on_without_redis_and_catches_up";
    if !privileged(test) {
        return;
    }
    let Some(mut f) = Fleet::new(test) else {
        return;
    };
    // Redis goes away: a still learns and drops on its own.
    let Backend::Server(redis) = &mut f.redis else {
        unreachable!("Fleet::new shares through one server")
    };
    let port = redis.port;
    redis.kill();
    f.escalate_at(0);
    assert_eq!(f.call(1, ABUSER).unwrap(), 401, "b cannot know yet");
    // Redis is back (empty): a's event waited and is shared now.
    f.redis = Backend::Server(f.server.enter(|| Redis::start_on(port)));
    for n in [1, 2] {
        assert!(
            f.dropped_within(n, ABUSER, Duration::from_secs(10))
                .is_some(),
            "node {n} never caught up after Redis came back:\n{}",
            f.logs()
        );
    }
    // Junk in the stream (written by anyone with access to Redis): an id from the far
    // future, a field that is not UTF-8, another format. The nodes move past it.
    f.server.enter(|| {
        use std::os::unix::ffi::OsStrExt;
        let stream = "edge-node:threats";
        for args in [
            vec![
                "XADD",
                stream,
                "99999999999999-0",
                "v",
                "1",
                "kind",
                "block",
            ],
            vec![
                "XADD",
                stream,
                "*",
                "v",
                "2",
                "kind",
                "block",
                "target",
                "0.0.0.0/0",
            ],
        ] {
            assert!(f.server_redis().cli(&args).contains('-'), "{args:?}");
        }
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &f.server_redis().port.to_string(),
                "XADD",
                stream,
                "*",
            ])
            .arg(std::ffi::OsStr::from_bytes(b"\xff\xfe"))
            .arg("x")
            .output()
            .expect("redis-cli");
        assert!(out.status.success());
        // A well-formed entry blocking the neighbour, written by someone with access to
        // Redis but not the fleet's secret: refused.
        let now = f.server_redis().cli(&["TIME"]);
        let mut t = now.lines().map(|l| l.trim().parse::<u64>().unwrap());
        let ms = (t.next().unwrap() * 1000 + t.next().unwrap() / 1000).to_string();
        let forged = f.server_redis().cli(&[
            "XADD",
            stream,
            "*",
            "v",
            "1",
            "node",
            "edge-b",
            "proc",
            "forged",
            "region",
            "eu",
            "kind",
            "block",
            "target",
            &format!("{NEIGHBOUR}/32"),
            "score",
            "0",
            "ttl_ms",
            "60000",
            "age_ms",
            "0",
            "node_ms",
            &ms,
            "redis_ms",
            &ms,
        ]);
        assert!(forged.contains('-'), "{forged}");
    });
    // c is away while an operator blocks a client on a; back, it applies what it missed.
    f.nodes[2].stop();
    // The others see it lapse.
    f.status(1, |s| {
        s.lines()
            .any(|l| l.starts_with("edge-c\t") && l.ends_with("\tlapsed"))
    });
    let (status, body) = f.admin(
        0,
        "POST",
        &format!("/policy/block?cidr={BLOCKED}/32&ttl=60s"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        f.dropped_within(1, BLOCKED, Duration::from_secs(5))
            .is_some()
    );
    // b has read past the forged entry by now, and refused it.
    assert_eq!(f.call(1, NEIGHBOUR).unwrap(), 401, "{}", f.logs());
    f.nodes[2].restart();
    assert!(f.nodes[2].wait_running(Duration::from_secs(20)));
    assert!(
        f.dropped_within(2, BLOCKED, Duration::from_secs(10))
            .is_some(),
        "node c did not catch up on what it missed:\n{}",
        f.logs()
    );
    assert_eq!(f.call(2, NEIGHBOUR).unwrap(), 401);
}

/// Three nodes on loopback with one fleet-scoped limit (20/s, bursts of 10, the whole
/// route as the key), sharing the Redis `fleet.redis = redis` names.
fn limited_nodes(redis: &str) -> Vec<Node> {
    (0..3)
        .map(|i| {
            let node = Node::start(
                &format!(
                    "[node]\nid = \"edge-{i}\"\n[xdp]\nmode = \"off\"\n\
                     [http]\nlisten = [\"127.0.0.1:0\"]\n[threat]\nenabled = false\n\
                     [fleet]\nredis = {redis}\nheartbeat = \"200ms\"\ntimeout = \"300ms\"\n\
                     [[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\
                     [[route]]\nhosts = [\"*\"]\nupstream = \"demo\"\n\
                     [[route.rate_limit]]\nkey = \"route\"\nper_second = 20.0\nburst = 10\n\
                     scope = \"fleet\"\n",
                ),
                None,
            );
            assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
            node
        })
        .collect()
}

/// Every node asked as fast as one client each can for `secs` (at most 3000 requests
/// each): requests admitted in all, and the seconds it took.
fn hammer(nodes: &[Node], secs: f64) -> (usize, f64) {
    use std::io::{Read, Write};
    let start = Instant::now();
    let admitted: usize = std::thread::scope(|s| {
        let workers: Vec<_> = nodes
            .iter()
            .map(|n| {
                let addr = n.http_addr().expect("address");
                s.spawn(move || {
                    let mut ok = 0;
                    for _ in 0..3000 {
                        if start.elapsed().as_secs_f64() >= secs {
                            break;
                        }
                        let mut c = std::net::TcpStream::connect(addr).expect("connect");
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        write!(
                            c,
                            "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
                        )
                        .unwrap();
                        let mut out = String::new();
                        let _ = c.read_to_string(&mut out);
                        match out.get(9..12) {
                            Some("200") => ok += 1,
                            Some("429") => {}
                            other => panic!("unexpected answer {other:?}: {out}"),
                        }
                    }
                    ok
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    (admitted, start.elapsed().as_secs_f64())
}

/// Three clients, one per node, each far over the limit on its own: what the nodes
/// admit together stays within 10 % of the fleet's limit.
fn admitted_within_the_fleet_limit(nodes: &[Node]) {
    let (admitted, secs) = hammer(nodes, 3.0);
    let allowed = 10.0 + 20.0 * secs;
    eprintln!("fleet: {admitted} admitted in {secs:.2} s (limit: {allowed:.0})");
    assert!(
        (admitted as f64) <= allowed * 1.1,
        "{admitted} admitted in {secs:.2} s: over the fleet limit ({allowed:.0})"
    );
    assert!(
        (admitted as f64) >= 0.9 * 20.0 * secs,
        "{admitted} admitted in {secs:.2} s: far under the fleet limit"
    );
}

#[test]
fn a_fleet_rate_limit_counts_across_nodes_and_falls_back_to_a_share() {
    let Some(mut redis) = Redis::start("a_fleet_rate_limit_counts_across_nodes") else {
        return;
    };
    let nodes = limited_nodes(&format!("\"{}\"", redis.url()));
    admitted_within_the_fleet_limit(&nodes);
    // Redis gone: each node applies its share (a third: 6.7/s, bursts of 3).
    redis.kill();
    let (admitted, secs) = hammer(&nodes, 3.0);
    let allowed = 3.0 * 3.0 + 20.0 * secs;
    eprintln!("fallback: {admitted} admitted in {secs:.2} s (limit: {allowed:.0})");
    assert!(
        (admitted as f64) <= allowed * 1.1 && (admitted as f64) >= 0.8 * 20.0 * secs,
        "{admitted} admitted in {secs:.2} s without Redis; each node's share adds up to {allowed:.0}\n{}",
        nodes[0].log()
    );
    assert!(nodes[0].log().contains("applies its share of the limit"));
}

#[test]
fn a_fleet_on_a_redis_cluster_shares_threats_membership_and_limits() {
    let test = "a_fleet_on_a_redis_cluster_shares_threats_membership_and_limits";
    if !privileged(test) {
        return;
    }
    let Some(f) = Fleet::with(test, |t| RedisCluster::start(t).map(Backend::Cluster), "") else {
        return;
    };
    every_node_is_a_live_member(&f);
    an_escalation_at_a_is_dropped_everywhere(&f);
    an_operator_block_on_b_reaches_everyone(&f, Duration::from_secs(5));
    drop(f);
    // A fleet rate limit counted on the Cluster.
    let Some(cluster) = RedisCluster::start(test) else {
        return;
    };
    let nodes = limited_nodes(&cluster.toml());
    admitted_within_the_fleet_limit(&nodes);
}

#[test]
fn a_fleet_behind_a_sentinel_follows_a_failover() {
    let test = "a_fleet_behind_a_sentinel_follows_a_failover";
    if !privileged(test) {
        return;
    }
    let Some(mut f) = Fleet::with(test, |t| RedisSentinel::start(t).map(Backend::Sentinel), "")
    else {
        return;
    };
    every_node_is_a_live_member(&f);
    an_escalation_at_a_is_dropped_everywhere(&f);
    // The Sentinel promotes the replica and the old primary is gone: every node finds
    // the new primary through the Sentinel, publishes and reads there.
    let Backend::Sentinel(sentinel) = &mut f.redis else {
        unreachable!()
    };
    let old = sentinel.primary.port;
    f.server.enter(|| sentinel.fail_over());
    assert_ne!(f.server.enter(|| sentinel.primary_port()), old);
    an_operator_block_on_b_reaches_everyone(&f, Duration::from_secs(10));
    every_node_is_a_live_member(&f);
}

#[test]
fn a_fleet_reaches_its_redis_over_tls_with_a_password() {
    let test = "a_fleet_reaches_its_redis_over_tls_with_a_password";
    let scratch = edge_tests::Scratch::new("fleet-tls");
    let dir = &scratch.0;
    edge_tests::tls_origin::make_ca_and_leaf(dir, &["localhost"]);
    let tls_port = edge_tests::free_port();
    let file = |name: &str| dir.join(name).display().to_string();
    // TLS on its own port (clients need not show a certificate); the plain port is the
    // test's, and the password is set once the server is up.
    let Some(redis) = Redis::start_configured(
        test,
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &file("leaf.crt"),
            "--tls-key-file",
            &file("leaf.key"),
            "--tls-ca-cert-file",
            &file("ca.crt"),
            "--tls-auth-clients",
            "no",
        ],
    ) else {
        return;
    };
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "requirepass", "fleet-secret"]),
        "OK"
    );
    let node = |password: &str| {
        let node = Node::start_with_env(
            &format!(
                "[node]\nid = \"edge-tls\"\n[xdp]\nmode = \"off\"\n\
                 [http]\nlisten = [\"127.0.0.1:0\"]\n\
                 [fleet]\nredis = \"rediss://:{password}@localhost:{tls_port}\"\n\
                 heartbeat = \"200ms\"\ntimeout = \"500ms\"\n\
                 [[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\
                 [[route]]\nhosts = [\"*\"]\nupstream = \"demo\"\n"
            ),
            None,
            // The test's CA, as an operator with a private CA would name it.
            &[("SSL_CERT_FILE", &file("ca.crt"))],
        );
        assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
        node
    };
    let good = node("fleet-secret");
    let start = Instant::now();
    let status = loop {
        let out = good.cli_ok(&["fleet", "status"]);
        if out
            .lines()
            .any(|l| l.starts_with("edge-tls\t") && l.ends_with("\tlive"))
        {
            break out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{out}\n{}",
            good.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{status}");
    drop(good);
    // A wrong password: refused, said so, and the password never shown.
    let bad = node("not-the-secret");
    let out = bad.cli(&["fleet", "status"]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stderr), bad.log());
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("rediss://:***@localhost"), "{said}");
    assert!(!said.contains("not-the-secret"), "{said}");
}
