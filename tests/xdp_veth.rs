//! Real traffic over a veth pair between two network namespaces the test creates: the
//! node runs in the "server" namespace with its XDP program on the server's veth, and
//! sockets in the "client" namespace send from several source addresses.

use std::{
    collections::HashMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use edge_common::Reason;
use edge_node::xdp::PinnedMaps;
use edge_tests::{
    BpfFs, http_from, http_from_with,
    netns::{Netns, veth},
    node::Node,
    privileged,
};

pub(crate) const SERVER: &str = "10.231.0.1";
pub(crate) const PLAIN: &str = "10.231.0.10";
pub(crate) const BLOCKED: &str = "10.231.0.20";
const ALLOWED: &str = "10.231.0.21";
const UDP_PORT: u16 = 9000;

/// Two namespaces joined by a veth pair; the client has several addresses.
pub(crate) struct Rig {
    pub(crate) client: Netns,
    pub(crate) server: Netns,
    pub(crate) server_if: String,
    pub(crate) fs: BpfFs,
}

impl Rig {
    pub(crate) fn new() -> Self {
        let client = Netns::new("ecl");
        let server = Netns::new("esv");
        let (client_if, server_if) = veth(
            &client,
            &format!("{PLAIN}/24"),
            &server,
            &format!("{SERVER}/24"),
        );
        for a in [BLOCKED, ALLOWED] {
            client.ip(&["addr", "add", &format!("{a}/24"), "dev", &client_if]);
        }
        Self {
            client,
            server,
            server_if,
            fs: BpfFs::new(),
        }
    }

    pub(crate) fn config(&self, mode: &str, extra: &str) -> String {
        format!(
            "[xdp]\nmode = \"{mode}\"\ninterfaces = [\"{}\"]\npin_root = \"{}\"\n{extra}\n",
            self.server_if,
            self.fs.path().display()
        )
    }

    pub(crate) fn start(&self, mode: &str, extra: &str) -> Node {
        let node = Node::start(&self.config(mode, extra), Some(&self.server));
        assert!(
            node.wait_running(Duration::from_secs(20)),
            "node did not start:\n{}",
            node.log()
        );
        node
    }

    pub(crate) fn maps(&self) -> PinnedMaps {
        PinnedMaps::open(&self.fs.pin_dir()).expect("pinned maps")
    }

    fn server_udp(&self) -> UdpSocket {
        self.server.enter(|| {
            let s = UdpSocket::bind((SERVER, UDP_PORT)).unwrap();
            s.set_nonblocking(true).unwrap();
            // Room for every datagram of a test: what the socket drops is not the filter's.
            let size: libc::c_int = 32 << 20;
            // SAFETY: valid fd and option value.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &size as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            assert_eq!(rc, 0, "SO_RCVBUFFORCE");
            s
        })
    }

    /// Sends `n` datagrams from each source; returns how many the server received from
    /// each (after the link has gone quiet).
    pub(crate) fn udp_exchange(&self, sources: &[&str], n: usize) -> HashMap<IpAddr, usize> {
        let server = self.server_udp();
        let senders: Vec<UdpSocket> = self.client.enter(|| {
            sources
                .iter()
                .map(|s| UdpSocket::bind((*s, 0)).unwrap())
                .collect()
        });
        let to: SocketAddr = format!("{SERVER}:{UDP_PORT}").parse().unwrap();
        for i in 0..n {
            for s in &senders {
                s.send_to(&(i as u32).to_be_bytes(), to).unwrap();
            }
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        drain(&server, Duration::from_millis(300))
    }
}

/// Receives until nothing arrived for `quiet`; counts datagrams per source address.
fn drain(sock: &UdpSocket, quiet: Duration) -> HashMap<IpAddr, usize> {
    let mut got = HashMap::new();
    let mut buf = [0u8; 64];
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while last.elapsed() < quiet && Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((_, from)) => {
                *got.entry(from.ip()).or_insert(0) += 1;
                last = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    got
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn delta(maps: &PinnedMaps, before: &edge_node::xdp::maps::Counters, r: Reason) -> u64 {
    maps.counters().unwrap()[r as usize].packets - before[r as usize].packets
}

#[test]
fn blocked_prefix_dropped_allowed_never_and_counters_agree() {
    if !privileged("blocked_prefix_dropped_allowed_never") {
        return;
    }
    let rig = Rig::new();
    let node = rig.start(
        "native",
        "block = [\"10.231.0.16/28\"]\nallow = [\"10.231.0.21/32\"]\ndebug_log = true\n\
         [admin]\nlisten = \"127.0.0.1:9901\"\ntoken = \"veth-test-token-0123456789\"",
    );
    let status = node.cli_ok(&["xdp", "status"]);
    assert!(
        status.contains(&rig.server_if) && status.contains("native"),
        "{status}"
    );

    let maps = rig.maps();
    let before = maps.counters().unwrap();
    let n = 300;
    let got = rig.udp_exchange(&[PLAIN, BLOCKED, ALLOWED], n);
    assert_eq!(got.get(&ip(PLAIN)).copied().unwrap_or(0), n, "plain source");
    assert_eq!(
        got.get(&ip(BLOCKED)).copied().unwrap_or(0),
        0,
        "blocked source"
    );
    assert_eq!(
        got.get(&ip(ALLOWED)).copied().unwrap_or(0),
        n,
        "allowed inside a blocked prefix"
    );
    assert_eq!(delta(&maps, &before, Reason::DropBlocked), n as u64);
    assert_eq!(delta(&maps, &before, Reason::PassAllowed), n as u64);
    assert_eq!(delta(&maps, &before, Reason::Pass), n as u64);

    // The admin API exports the same kernel counters.
    let metrics = rig.server.exec(&[
        "curl",
        "-s",
        "-H",
        "Authorization: Bearer veth-test-token-0123456789",
        "http://127.0.0.1:9901/metrics",
    ]);
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let blocked = maps.counters().unwrap()[Reason::DropBlocked as usize].packets;
    assert!(
        metrics.contains(&format!(
            "edge_xdp_packets_total{{reason=\"drop_blocked\"}} {blocked}"
        )),
        "{metrics}"
    );

    // The program's own diagnostics arrive in the node's log through aya-log.
    assert!(
        node.wait_for_log("edge-xdp: drop ::ffff:10.231.0.20", Duration::from_secs(5)),
        "no XDP drop log:\n{}",
        node.log()
    );
}

#[test]
fn threat_score_drops_until_its_ttl_expires() {
    if !privileged("threat_score_drops_until_its_ttl_expires") {
        return;
    }
    let rig = Rig::new();
    let node = rig.start("generic", "drop_threshold = 50");
    let status = node.cli_ok(&["xdp", "status"]);
    assert!(status.contains("generic"), "{status}");
    let out = node.cli_ok(&["xdp", "score", PLAIN, "80", "--ttl", "2s"]);
    assert!(out.contains("dropped"), "{out}");
    let got = rig.udp_exchange(&[PLAIN, ALLOWED], 50);
    assert_eq!(got.get(&ip(PLAIN)).copied().unwrap_or(0), 0);
    assert_eq!(got.get(&ip(ALLOWED)).copied().unwrap_or(0), 50);
    std::thread::sleep(Duration::from_millis(2200));
    let got = rig.udp_exchange(&[PLAIN], 50);
    assert_eq!(
        got.get(&ip(PLAIN)).copied().unwrap_or(0),
        50,
        "score expired"
    );
    // The daemon's sweep (every 5 s) then removes the expired entry from the trie.
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while node.cli_ok(&["xdp", "list"]).contains(PLAIN) {
        assert!(
            std::time::Instant::now() < deadline,
            "expired score never swept"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn flood_beyond_the_bucket_passes_rate_times_time_plus_burst() {
    if !privileged("flood_beyond_the_bucket") {
        return;
    }
    let rig = Rig::new();
    let (rate, burst) = (2000.0, 300.0);
    let _node = rig.start(
        "native",
        &format!("[xdp.rate]\npackets_per_sec = {rate}\npackets_burst = {burst}"),
    );
    let maps = rig.maps();
    let server = rig.server_udp();
    let sender = rig.client.enter(|| UdpSocket::bind((PLAIN, 0)).unwrap());
    let before = maps.counters().unwrap();
    // About 20k packets per second for at most one second: ten times the budget.
    let to: SocketAddr = format!("{SERVER}:{UDP_PORT}").parse().unwrap();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < 20_000 && start.elapsed() < Duration::from_secs(1) {
        for _ in 0..100 {
            sender.send_to(b"flood", to).unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let got = drain(&server, Duration::from_millis(300));
    let passed = delta(&maps, &before, Reason::Pass);
    let dropped = delta(&maps, &before, Reason::DropRate);
    let expected = burst + rate * elapsed;
    eprintln!(
        "sent {sent} in {elapsed:.3}s: passed {passed}, dropped {dropped}, expected ~{expected:.0}"
    );
    assert!(
        passed + dropped <= sent,
        "the program saw more than was sent"
    );
    assert!(
        passed + dropped >= sent * 95 / 100,
        "most packets reached the program"
    );
    assert!(
        (passed as f64) >= expected * 0.8 && (passed as f64) <= expected * 1.2 + 20.0,
        "passed {passed}, expected about {expected:.0}"
    );
    let received = got.get(&ip(PLAIN)).copied().unwrap_or(0) as u64;
    assert!(
        received <= passed && received >= passed * 95 / 100,
        "received {received} of {passed}"
    );
}

#[test]
fn syn_budget_and_blocks_stop_new_connections() {
    if !privileged("syn_budget_and_blocks_stop_new_connections") {
        return;
    }
    let rig = Rig::new();
    let _node = rig.start(
        "native",
        "block = [\"10.231.0.20/32\"]\n[xdp.rate]\nsyn_per_sec = 1\nsyn_burst = 3",
    );
    let maps = rig.maps();
    let listener = rig
        .server
        .enter(|| TcpListener::bind((SERVER, 8080)).unwrap());
    let to: SocketAddr = format!("{SERVER}:8080").parse().unwrap();
    let connect_from = |src: &str| {
        let src = src.to_string();
        rig.client.enter(move || {
            let sock = edge_tests::connect_from(&src, to, Duration::from_millis(600));
            sock.is_ok()
        })
    };
    let before = maps.counters().unwrap();
    assert!(!connect_from(BLOCKED), "a blocked source cannot connect");
    assert!(delta(&maps, &before, Reason::DropBlocked) >= 1);
    // The first three SYNs of a source fit its burst; the fourth is dropped at the NIC.
    for i in 0..3 {
        assert!(connect_from(PLAIN), "connection {i} within the SYN burst");
    }
    assert!(
        !connect_from(PLAIN),
        "a fourth connection within a second exceeds the budget"
    );
    assert!(delta(&maps, &before, Reason::DropSynRate) >= 1);
    drop(listener);
}

#[test]
fn cli_edits_a_running_node_and_pinned_state_survives_restarts() {
    if !privileged("cli_edits_a_running_node") {
        return;
    }
    let rig = Rig::new();
    let mut node = rig.start("native", "");
    let plain = |rig: &Rig| {
        rig.udp_exchange(&[PLAIN], 40)
            .get(&ip(PLAIN))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(plain(&rig), 40);

    let out = node.cli_ok(&["xdp", "block", "10.231.0.8/29", "--ttl", "10m"]);
    assert!(out.contains("blocked 10.231.0.8/29"), "{out}");
    assert_eq!(plain(&rig), 0, "blocked by the CLI");
    let list = node.cli_ok(&["xdp", "list"]);
    assert!(list.contains("10.231.0.8/29"), "{list}");
    // The live view samples the counters and stops after --count samples.
    let top = node.cli_ok(&["xdp", "top", "--interval", "200ms", "--count", "2"]);
    assert_eq!(
        top.lines().filter(|l| l.starts_with("dropped=")).count(),
        2,
        "{top}"
    );

    // Restart: the block is still there, read back from the pinned map.
    node.restart();
    assert!(node.wait_running(Duration::from_secs(20)));
    assert_eq!(plain(&rig), 0, "block survived the restart");

    // While the node is stopped (without keep_attached) the program is detached.
    node.stop();
    assert_eq!(plain(&rig), 40, "detached on shutdown");
    let status = PinnedMaps::open(&rig.fs.pin_dir())
        .unwrap()
        .attach_records()
        .unwrap();
    assert!(status.is_empty(), "{status:?}");

    // The CLI edits maps; unblock restores traffic once the node runs again.
    node.restart();
    assert!(node.wait_running(Duration::from_secs(20)));
    assert_eq!(plain(&rig), 0);
    node.cli_ok(&["xdp", "unblock", "10.231.0.8/29"]);
    assert_eq!(plain(&rig), 40);
    let out = node.cli(&["xdp", "unblock", "10.231.0.8/29"]);
    assert!(!out.status.success(), "unblocking twice is an error");
    let out = node.cli(&["xdp", "block", "10.231.0.300/24"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("10.231.0.300/24"));

    // An allowed address inside a blocked prefix passes (the longest prefix decides);
    // once unallowed, the block applies to it again.
    node.cli_ok(&["xdp", "block", "10.231.0.8/29"]);
    assert_eq!(plain(&rig), 0);
    let out = node.cli_ok(&["xdp", "allow", PLAIN]);
    assert!(out.contains(PLAIN), "{out}");
    assert_eq!(plain(&rig), 40, "allowed inside the block");
    assert!(node.cli_ok(&["xdp", "list"]).contains(PLAIN));
    node.cli_ok(&["xdp", "unallow", PLAIN]);
    assert_eq!(plain(&rig), 0, "blocked again once unallowed");
    node.cli_ok(&["xdp", "unblock", "10.231.0.8/29"]);
    assert_eq!(plain(&rig), 40);
}

#[test]
fn keep_attached_filters_while_the_node_is_down() {
    if !privileged("keep_attached_filters_while_the_node_is_down") {
        return;
    }
    let rig = Rig::new();
    let mut node = rig.start(
        "native",
        "keep_attached = true\nblock = [\"10.231.0.10/32\"]",
    );
    let status = node.cli_ok(&["xdp", "status"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains(&rig.server_if) && l.ends_with("yes")),
        "{status}"
    );
    node.stop();
    // Userspace is gone; the pinned link keeps the program on the interface.
    let got = rig.udp_exchange(&[PLAIN, ALLOWED], 30);
    assert_eq!(got.get(&ip(PLAIN)).copied().unwrap_or(0), 0);
    assert_eq!(got.get(&ip(ALLOWED)).copied().unwrap_or(0), 30);
    // A new node takes the link over (no gap) and keeps enforcing.
    node.restart();
    assert!(node.wait_running(Duration::from_secs(20)));
    let got = rig.udp_exchange(&[PLAIN], 30);
    assert_eq!(got.get(&ip(PLAIN)).copied().unwrap_or(0), 0);
    // The interface's row: the program is running and the link is persistent.
    let status = node.cli_ok(&["xdp", "status"]);
    let row: Vec<&str> = status
        .lines()
        .find(|l| l.starts_with(rig.server_if.as_str()))
        .unwrap_or_else(|| panic!("no row for {}: {status}", rig.server_if))
        .split_whitespace()
        .collect();
    assert_eq!(row[4..], ["yes", "yes"], "{status}");
}

#[test]
fn prefixes_removed_from_the_config_do_not_outlive_a_restart() {
    if !privileged("prefixes_removed_from_the_config") {
        return;
    }
    let rig = Rig::new();
    let mut node = rig.start("native", "block = [\"10.231.0.10/32\"]");
    node.cli_ok(&["xdp", "block", "10.231.0.20", "--ttl", "10m"]);
    let got = rig.udp_exchange(&[PLAIN, BLOCKED, ALLOWED], 20);
    assert_eq!(got.get(&ip(PLAIN)).copied().unwrap_or(0), 0);
    assert_eq!(got.get(&ip(BLOCKED)).copied().unwrap_or(0), 0);
    // The operator drops the block from the file and restarts: the file's entry goes,
    // the CLI's stays.
    node.stop();
    std::fs::write(node.config_path(), rig.config("native", "")).unwrap();
    node.restart();
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let got = rig.udp_exchange(&[PLAIN, BLOCKED, ALLOWED], 20);
    assert_eq!(
        got.get(&ip(PLAIN)).copied().unwrap_or(0),
        20,
        "config block removed"
    );
    assert_eq!(
        got.get(&ip(BLOCKED)).copied().unwrap_or(0),
        0,
        "CLI block kept"
    );
    assert_eq!(got.get(&ip(ALLOWED)).copied().unwrap_or(0), 20);
}

#[test]
fn auto_mode_degrades_loudly_and_strict_mode_refuses() {
    if !privileged("auto_mode_degrades_loudly") {
        return;
    }
    let fs = BpfFs::new();
    let cfg = |extra: &str| {
        format!(
            "[xdp]\ninterfaces = [\"nosuchif0\"]\npin_root = \"{}\"\n{extra}\n[http]\nlisten = [\"127.0.0.1:0\"]\n",
            fs.path().display()
        )
    };
    let mut node = Node::start(&cfg(""), None);
    assert!(
        node.wait_for_log("XDP NOT ACTIVE", Duration::from_secs(20)),
        "{}",
        node.log()
    );
    assert!(node.wait_for_log("edge-node running", Duration::from_secs(5)));
    assert!(!node.exited(), "auto mode keeps running");
    node.stop();

    let mut strict = Node::start(&cfg("strict = true"), None);
    let code = strict.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(code, Some(c) if c != 0),
        "strict mode must refuse to start: {code:?}"
    );
    assert!(strict.log().contains("nosuchif0"), "{}", strict.log());
}

/// A node on SERVER:8080 (drop threshold 50, no challenge) whose one route needs an
/// HS256 token; `http` goes into `[http]`, `threat` into `[threat]`.
fn auth_config(http: &str, threat: &str) -> String {
    format!(
        "drop_threshold = 50\n\n[http]\nlisten = [\"{SERVER}:8080\"]\n{http}\n\n\
         [threat]\nchallenge_threshold = 0\n{threat}\n\n\
         [[jwt_provider]]\nname = \"idp\"\nalgorithms = [\"HS256\"]\nsecret = \"an-hmac-secret-of-at-least-32-bytes!\"\n\n\
         [[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\n\
         [[route]]\nhosts = [\"*\"]\nupstream = \"demo\"\n[route.auth]\nprovider = \"idp\"\n"
    )
}

#[test]
fn failing_auth_escalates_the_client_into_xdp_drops_until_the_ttl() {
    if !privileged("failing_auth_escalates_the_client_into_xdp_drops_until_the_ttl") {
        return;
    }
    let rig = Rig::new();
    let node = rig.start(
        "auto",
        &auth_config("", "half_life = \"1s\"\nblock_ttl = \"3s\""),
    );
    let to: SocketAddr = format!("{SERVER}:8080").parse().unwrap();
    let (abuser, neighbour) = (PLAIN, ALLOWED);
    let maps = rig.maps();
    let before = maps.counters().unwrap();
    let call = |src: &str| rig.client.enter(|| http_from(src, to, "not-a-valid-token"));
    assert_eq!(call(neighbour).unwrap(), 401);
    // Bad tokens, one after another: each is a failed auth (10 points; the drop
    // threshold is 50). Within a few more the kernel stops answering the abuser's SYNs.
    // Between the crossing and the map write (a task off the request path) the node
    // itself closes the abuser's connections at accept: those answer nothing (0).
    let (mut failures, mut refused_at, mut closed) = (0, None, 0);
    while failures < 15 && closed < 40 {
        match call(abuser) {
            Ok(401) => failures += 1,
            Ok(0) => {
                closed += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(other) => panic!("after {failures} failures: status {other}"),
            Err(_) => {
                refused_at = Some(failures);
                break;
            }
        }
    }
    let refused_at = refused_at.unwrap_or_else(|| panic!("never escalated:\n{}", node.log()));
    assert!(refused_at >= 5, "dropped after only {refused_at} failures");
    assert!(
        delta(&maps, &before, Reason::DropThreat) >= 1,
        "the connection failed but XDP counted no threat drop"
    );
    assert!(node.log().contains("escalated to XDP"), "{}", node.log());
    let listed = node.cli_ok(&["xdp", "list"]);
    assert!(listed.contains(abuser), "{listed}");
    // The neighbour on the same link is served as before.
    assert_eq!(call(neighbour).unwrap(), 401);
    // After the block's TTL (and the score's decay) the abuser gets through again.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(401) = call(abuser) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused after the TTL:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_trusted_proxy_is_never_dropped_at_the_nic_for_its_clients_or_itself() {
    if !privileged("a_trusted_proxy_is_never_dropped_at_the_nic_for_its_clients_or_itself") {
        return;
    }
    let rig = Rig::new();
    // PLAIN is a load balancer in front of the node: every client's packets come from it.
    let node = rig.start(
        "auto",
        &auth_config(
            &format!("trusted_proxies = [\"{PLAIN}/32\"]"),
            "half_life = \"60s\"\nblock_ttl = \"30s\"",
        ),
    );
    let to: SocketAddr = format!("{SERVER}:8080").parse().unwrap();
    let maps = rig.maps();
    let before = maps.counters().unwrap();
    let via_proxy = |xff: &str| {
        let extra = if xff.is_empty() {
            String::new()
        } else {
            format!("X-Forwarded-For: {xff}\r\n")
        };
        rig.client
            .enter(|| http_from_with(PLAIN, to, "not-a-valid-token", &extra))
            .unwrap_or_else(|e| panic!("the proxy's connection failed: {e}\n{}", node.log()))
    };
    // A client behind the proxy fails auth again and again (10 points each, threshold
    // 50): the node refuses that client itself, in userspace, since its packets are the
    // proxy's.
    let statuses: Vec<u16> = (0..10).map(|_| via_proxy("198.51.100.7")).collect();
    assert_eq!(statuses[0], 401, "{statuses:?}");
    assert_eq!(
        statuses[9], 403,
        "the abusive client was never refused: {statuses:?}"
    );
    // Another client behind the same proxy is still answered as usual.
    assert_eq!(via_proxy("198.51.100.8"), 401);
    // The proxy's own requests (no forwarding header: the client is the proxy) fail
    // the same way, past the threshold: still no drop at the NIC, only answers.
    for i in 0..10 {
        let status = via_proxy("");
        assert!(matches!(status, 401 | 403), "request {i}: {status}");
    }
    assert_eq!(via_proxy("198.51.100.8"), 401);
    assert_eq!(
        delta(&maps, &before, Reason::DropThreat),
        0,
        "XDP dropped the proxy's packets"
    );
    // The proxy is on the allow list at the NIC (so no per-source budget holds its
    // many clients' packets), and never on the block list or among the scores.
    let listed = node.cli_ok(&["xdp", "list"]);
    let (allowed, rest) = listed.split_once("block:").expect("xdp list sections");
    assert!(allowed.contains(&format!("{PLAIN}/32")), "{listed}");
    assert!(!rest.contains(PLAIN), "{listed}");
    assert!(
        delta(&maps, &before, Reason::PassAllowed) > 0,
        "the proxy's packets were not passed as allowed"
    );
    assert!(!node.log().contains("escalated to XDP"), "{}", node.log());
}
