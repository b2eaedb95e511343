//! A fleet of three nodes sharing threat intelligence through a real redis-server: each
//! node runs in the server namespace with its XDP program on its own veth, and the client
//! namespace reaches all three from the same addresses. What one node learns (a client
//! failing auth) or an operator decides on one (a block through the admin API) is
//! dropped at every node's NIC; Redis killed and restarted, the nodes carry on and catch
//! up; a node restarted while it was away applies what it missed; `edge-node fleet
//! status` lists the members, live or lapsed.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use edge_common::Reason;
use edge_node::xdp::PinnedMaps;
use edge_tests::{
    BpfFs, connect_from, http_from,
    netns::{Netns, veth},
    node::Node,
    privileged,
    redis::{Redis, RedisCluster, RedisSentinel},
};

/// The abusive client, on the client namespace's loopback: the same source at every node.
const ABUSER: &str = "10.242.0.10";
/// A client an operator blocks.
const BLOCKED: &str = "10.242.0.11";
/// A client nobody holds anything against.
const NEIGHBOUR: &str = "10.242.0.12";
const TOKEN: &str = "fleet-admin-token-0123456789";

/// The fleet's Redis: one server, a Cluster, or a primary behind a Sentinel.
enum Backend {
    Server(Redis),
    Cluster(RedisCluster),
    Sentinel(RedisSentinel),
}

impl Backend {
    /// The `fleet.redis` value naming it.
    fn toml(&self) -> String {
        match self {
            Self::Server(r) => format!("\"{}\"", r.url()),
            Self::Cluster(c) => c.toml(),
            Self::Sentinel(s) => s.toml(),
        }
    }
}

struct Fleet {
    client: Netns,
    server: Netns,
    redis: Backend,
    nodes: Vec<Node>,
    fs: Vec<BpfFs>,
}

impl Fleet {
    /// Three nodes (a, b, c) on links 10.242.{1,2,3}.0/24, sharing through one Redis.
    fn new(test: &str) -> Option<Self> {
        Self::with(test, |t| Redis::start(t).map(Backend::Server))
    }

    /// The same, sharing through the Redis `start` makes (in the nodes' namespace).
    fn with(test: &str, start: impl FnOnce(&str) -> Option<Backend> + Send) -> Option<Self> {
        let client = Netns::new("fcl");
        let server = Netns::new("fsv");
        for a in [ABUSER, BLOCKED, NEIGHBOUR] {
            client.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        let redis = server.enter(|| start(test))?;
        let mut nodes = Vec::new();
        let mut fs = Vec::new();
        for i in 1..=3u8 {
            let (_, server_if) = veth(
                &client,
                &format!("10.242.{i}.2/24"),
                &server,
                &format!("10.242.{i}.1/24"),
            );
            // Each node answers the clients over its own link: replies from its address
            // leave by its veth (the clients' addresses are the same behind every link).
            let table = (100 + i).to_string();
            server.ip(&[
                "rule",
                "add",
                "from",
                &format!("10.242.{i}.1"),
                "table",
                &table,
            ]);
            server.ip(&[
                "route",
                "add",
                "10.242.0.0/24",
                "dev",
                &server_if,
                "table",
                &table,
            ]);
            let bpf = BpfFs::new();
            let config = format!(
                "[node]\nid = \"edge-{name}\"\n\n\
                 [xdp]\nmode = \"native\"\ninterfaces = [\"{server_if}\"]\npin_root = \"{pin}\"\n\
                 drop_threshold = 50\n{allow}\n\n\
                 [http]\nlisten = [\"10.242.{i}.1:8080\"]\n\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\n\
                 [threat]\nchallenge_threshold = 0\nhalf_life = \"60s\"\nblock_ttl = \"60s\"\n\n\
                 [fleet]\nredis = {url}\nregion = \"eu\"\ntimeout = \"300ms\"\nheartbeat = \"200ms\"\n\n\
                 [[jwt_provider]]\nname = \"idp\"\nalgorithms = [\"HS256\"]\n\
                 secret = \"an-hmac-secret-of-at-least-32-bytes!\"\n\n\
                 [[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\n\
                 [[route]]\nhosts = [\"*\"]\nupstream = \"demo\"\n[route.auth]\nprovider = \"idp\"\n",
                name = (b'a' + i - 1) as char,
                // Node a never lets anyone stop the neighbour.
                allow = if i == 1 {
                    format!("allow = [\"{NEIGHBOUR}/32\"]")
                } else {
                    String::new()
                },
                pin = bpf.path().display(),
                admin = 9900 + u16::from(i),
                url = redis.toml(),
            );
            let node = Node::start(&config, Some(&server));
            assert!(
                node.wait_running(Duration::from_secs(20)),
                "node {i} did not start:\n{}",
                node.log()
            );
            nodes.push(node);
            fs.push(bpf);
        }
        Some(Self {
            client,
            server,
            redis,
            nodes,
            fs,
        })
    }

    /// The single server the fleet shares through.
    fn server_redis(&self) -> &Redis {
        match &self.redis {
            Backend::Server(r) => r,
            _ => panic!("this fleet has no single Redis server"),
        }
    }

    fn addr(n: usize) -> SocketAddr {
        format!("10.242.{}.1:8080", n + 1).parse().unwrap()
    }

    /// A request with a bad token from `src` to node `n`.
    fn call(&self, n: usize, src: &str) -> std::io::Result<u16> {
        self.client
            .enter(|| http_from(src, Self::addr(n), "not-a-valid-token"))
    }

    /// Whether node `n` drops `src`'s SYNs within `wait` (polled). Connections only,
    /// no requests: a poll must not be a failed request the node scores (it would drop
    /// the client on its own, not because another node told it to).
    fn dropped_within(&self, n: usize, src: &str, wait: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < wait {
            let connected = self
                .client
                .enter(|| connect_from(src, Self::addr(n), Duration::from_millis(700)));
            if connected.is_err() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether node `n` answers `src` again within `wait` (polled).
    fn answers_within(&self, n: usize, src: &str, wait: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < wait {
            if let Ok(401) = self.call(n, src) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// An admin API call on node `n`: status and body.
    fn admin(&self, n: usize, method: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let port = 9901 + n as u16;
        self.server.enter(|| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = out
                .split_once("\r\n\r\n")
                .map_or("", |(_, b)| b)
                .to_string();
            (status, body)
        })
    }

    /// `edge-node fleet status` on node `n`, once `until` holds for it (within 10 s).
    fn status(&self, n: usize, until: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let out = self.nodes[n].cli_ok(&["fleet", "status"]);
            if until(&out) {
                return out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "fleet status never as expected:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn maps(&self, n: usize) -> PinnedMaps {
        PinnedMaps::open(&self.fs[n].pin_dir()).expect("pinned maps")
    }

    fn threat_drops(&self, n: usize) -> u64 {
        self.maps(n).counters().unwrap()[Reason::DropThreat as usize].packets
    }

    /// The last lines of each node's log (a failure's message stays readable).
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let log = n.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                format!("--- node {i} (last lines):\n{tail}\n")
            })
            .collect()
    }

    /// Fails auth at node `n` until its NIC drops the abuser; the failures it took.
    fn escalate_at(&self, n: usize) -> usize {
        let mut failures = 0;
        for _ in 0..60 {
            match self.call(n, ABUSER) {
                Ok(401) => failures += 1,
                // Closed at accept until the kernel's map write lands.
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(other) => panic!("status {other}"),
                Err(_) => return failures,
            }
        }
        panic!("node {n} never dropped the abuser:\n{}", self.logs());
    }
}

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
    let Some(f) = Fleet::with(test, |t| RedisCluster::start(t).map(Backend::Cluster)) else {
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
    let Some(mut f) = Fleet::with(test, |t| RedisSentinel::start(t).map(Backend::Sentinel)) else {
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
    let dir = std::env::temp_dir().join(edge_tests::unique("fleet-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    edge_tests::tls_origin::make_ca_and_leaf(&dir, &["localhost"]);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
    let _ = std::fs::remove_dir_all(&dir);
}
