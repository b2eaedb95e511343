//! Three edge-node processes sharing one Redis (a fleet): each node in the server
//! namespace with its XDP program on its own veth (links 10.242.{1,2,3}.0/24), and the
//! client namespace reaching all three from the same addresses. Used by the fleet tests
//! and the fleet benchmark.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    BpfFs, Scratch, connect_from, http_from,
    netns::{Netns, veth},
    node::Node,
    redis::{Redis, RedisCluster, RedisSentinel},
};
use edge_common::Reason;
use edge_node::xdp::PinnedMaps;

/// The abusive client, on the client namespace's loopback: the same source at every node.
pub const ABUSER: &str = "10.242.0.10";
/// A client an operator blocks.
pub const BLOCKED: &str = "10.242.0.11";
/// A client nobody holds anything against.
pub const NEIGHBOUR: &str = "10.242.0.12";
pub const TOKEN: &str = "fleet-admin-token-0123456789";

/// The fleet's Redis: one server, a Cluster, or a primary behind a Sentinel.
pub enum Backend {
    Server(Redis),
    Cluster(RedisCluster),
    Sentinel(RedisSentinel),
}

impl Backend {
    /// The `fleet.redis` value naming it.
    pub fn toml(&self) -> String {
        match self {
            Self::Server(r) => format!("\"{}\"", r.url()),
            Self::Cluster(c) => c.toml(),
            Self::Sentinel(s) => s.toml(),
        }
    }
}

pub struct Fleet {
    pub client: Netns,
    pub server: Netns,
    pub redis: Backend,
    pub nodes: Vec<Node>,
    pub fs: Vec<BpfFs>,
    /// The fleet's secret file.
    _secret: Scratch,
}

impl Fleet {
    /// Three nodes (a, b, c) on links 10.242.{1,2,3}.0/24, sharing through one Redis.
    pub fn new(test: &str) -> Option<Self> {
        Self::with(test, |t| Redis::start(t).map(Backend::Server), "")
    }

    /// The same, sharing through the Redis `start` makes (in the nodes' namespace), with
    /// `threat` added to each node's `[threat]` section.
    pub fn with(
        test: &str,
        start: impl FnOnce(&str) -> Option<Backend> + Send,
        threat: &str,
    ) -> Option<Self> {
        let client = Netns::new("fcl");
        let server = Netns::new("fsv");
        for a in [ABUSER, BLOCKED, NEIGHBOUR] {
            client.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        let redis = server.enter(|| start(test))?;
        // The fleet signs its threat entries, as a production fleet should.
        let secret = Scratch::new("fleet-secret");
        let secret_file = secret.0.join("secret");
        std::fs::write(&secret_file, "a fleet secret of thirty-two bytes or more\n").unwrap();
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
                 [threat]\nchallenge_threshold = 0\nhalf_life = \"60s\"\nblock_ttl = \"60s\"\n{threat}\n\
                 [fleet]\nredis = {url}\nsecret_file = \"{secret}\"\nregion = \"eu\"\ntimeout = \"300ms\"\nheartbeat = \"200ms\"\n\n\
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
                secret = secret_file.display(),
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
            _secret: secret,
        })
    }

    /// The single server the fleet shares through.
    pub fn server_redis(&self) -> &Redis {
        match &self.redis {
            Backend::Server(r) => r,
            _ => panic!("this fleet has no single Redis server"),
        }
    }

    pub fn addr(n: usize) -> SocketAddr {
        format!("10.242.{}.1:8080", n + 1).parse().unwrap()
    }

    /// A request with a bad token from `src` to node `n`.
    pub fn call(&self, n: usize, src: &str) -> std::io::Result<u16> {
        self.client
            .enter(|| http_from(src, Self::addr(n), "not-a-valid-token"))
    }

    /// Whether node `n` drops `src`'s SYNs within `wait` (polled). Connections only,
    /// no requests: a poll must not be a failed request the node scores (it would drop
    /// the client on its own, not because another node told it to).
    pub fn dropped_within(&self, n: usize, src: &str, wait: Duration) -> Option<Duration> {
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
    pub fn answers_within(&self, n: usize, src: &str, wait: Duration) -> bool {
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
    pub fn admin(&self, n: usize, method: &str, path: &str) -> (u16, String) {
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
    pub fn status(&self, n: usize, until: impl Fn(&str) -> bool) -> String {
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

    pub fn maps(&self, n: usize) -> PinnedMaps {
        PinnedMaps::open(&self.fs[n].pin_dir()).expect("pinned maps")
    }

    pub fn threat_drops(&self, n: usize) -> u64 {
        self.maps(n).counters().unwrap()[Reason::DropThreat as usize].packets
    }

    /// The last lines of each node's log (a failure's message stays readable).
    pub fn logs(&self) -> String {
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
    pub fn escalate_at(&self, n: usize) -> usize {
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
