//! A real redis-server of the test's own, on a free loopback port, without persistence;
//! killed on drop. `redis-cli` reads and edits it. Also a three-shard Redis Cluster and
//! a primary with a replica watched by a Sentinel, both of real redis-servers.

use crate::{Scratch, free_port};

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Redis {
    pub port: u16,
    child: Child,
    /// Its working directory: what a replica saves of its primary lands here.
    _dir: Scratch,
}

impl Redis {
    /// Starts one, or `None` (after a loud message) when redis-server is not installed
    /// outside CI; with CI=true a missing redis-server is a failure.
    pub fn start(test: &str) -> Option<Self> {
        available(test).then(|| Self::start_on(free_port()))
    }

    /// Starts one on `port` (where a killed one ran: it comes back, empty).
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// Starts one with more `redis-server` options (TLS ones, say), or `None` as
    /// [`Redis::start`] does.
    pub fn start_configured(test: &str, options: &[&str]) -> Option<Self> {
        available(test).then(|| Self::start_with(free_port(), options))
    }

    /// Starts one on `port` with more `redis-server` options.
    pub fn start_with(port: u16, options: &[&str]) -> Self {
        let dir = Scratch::new("redis");
        let redis = Self {
            port,
            child: spawn(port, &dir, options),
            _dir: dir,
        };
        wait_for_ping(port);
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this server; its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_at(self.port, args)
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .lines()
            .map(String::from)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Stops the server (the node must carry on without it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether redis-server is installed; outside CI a missing one skips `test` (loudly).
fn available(test: &str) -> bool {
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok()
    {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{test}: redis-server is missing and CI=true forbids skipping"
    );
    eprintln!(
        "\n!!!!!!!! SKIPPED {test}: redis-server is missing (`cargo xtask test` as root \
         installs it) !!!!!!!!\n"
    );
    false
}

/// A free port whose cluster bus port (10000 above it) is free too.
fn cluster_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn spawn(port: u16, dir: &Scratch, options: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(&dir.0)
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .args(options)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

fn wait_for_ping(port: u16) {
    wait_until(&format!("redis-server on {port} up"), || {
        cli_at(port, &["PING"]) == "PONG"
    });
}

/// Polls `done` for up to 20 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cli_at(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Redis Cluster of three primaries (the slots split in three), made with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub shards: Vec<Redis>,
    _dir: Scratch,
}

impl RedisCluster {
    pub fn start(test: &str) -> Option<Self> {
        if !available(test) {
            return None;
        }
        let dir = Scratch::new("redis-cluster");
        let shards: Vec<Redis> = (0..3)
            .map(|_| {
                let port = cluster_port();
                let conf = dir.0.join(format!("nodes-{port}.conf"));
                Redis::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        conf.to_str().unwrap(),
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let nodes: Vec<String> = shards
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for r in &shards {
            wait_until("the cluster's state is ok", || {
                r.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
        }
        Some(Self { shards, _dir: dir })
    }

    /// The TOML value naming it.
    pub fn toml(&self) -> String {
        let urls: Vec<String> = self
            .shards
            .iter()
            .map(|r| format!("\"{}\"", r.url()))
            .collect();
        format!("{{ cluster = [{}] }}", urls.join(", "))
    }
}

/// A primary, its replica, and a Sentinel watching them as `edge` (quorum 1); named
/// after a Sentinel that never answers (a listener nobody reads), which clients must
/// get past.
pub struct RedisSentinel {
    pub primary: Redis,
    pub replica: Redis,
    sentinel: Redis,
    silent: TcpListener,
    _dir: Scratch,
}

impl RedisSentinel {
    pub fn start(test: &str) -> Option<Self> {
        if !available(test) {
            return None;
        }
        let dir = Scratch::new("redis-sentinel");
        let primary = Redis::start_on(free_port());
        let replica = Redis::start_with(
            free_port(),
            &["--replicaof", "127.0.0.1", &primary.port.to_string()],
        );
        wait_until("the replica in sync", || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        let port = free_port();
        let conf = dir.0.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor edge 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds edge 1000\n\
                 sentinel failover-timeout edge 5000\n",
                dir.0.display(),
                primary.port
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        let sentinel = Redis {
            port,
            child,
            _dir: Scratch::new("redis-sentinel-run"),
        };
        wait_for_ping(port);
        wait_until("the Sentinel knows the replica", || {
            sentinel
                .cli(&["SENTINEL", "REPLICAS", "edge"])
                .contains(&replica.port.to_string())
        });
        Some(Self {
            primary,
            replica,
            sentinel,
            silent: TcpListener::bind("127.0.0.1:0").unwrap(),
            _dir: dir,
        })
    }

    /// The TOML value naming it.
    pub fn toml(&self) -> String {
        format!(
            "{{ sentinel = [\"redis://{}\", \"{}\"], master = \"edge\" }}",
            self.silent.local_addr().unwrap(),
            self.sentinel.url()
        )
    }

    /// The port of the primary the Sentinel names now.
    pub fn primary_port(&self) -> u16 {
        let out = self
            .sentinel
            .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "edge"]);
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Fails over to the replica (the Sentinel promotes it) and waits until it is the
    /// primary; then stops the old primary.
    pub fn fail_over(&mut self) {
        let to = self.replica.port;
        wait_until("the Sentinel accepts the failover", || {
            self.sentinel.cli(&["SENTINEL", "FAILOVER", "edge"]) == "OK"
                || self.primary_port() == to
        });
        wait_until("the replica promoted", || {
            self.primary_port() == to
                && self
                    .replica
                    .cli(&["INFO", "replication"])
                    .contains("role:master")
        });
        self.primary.kill();
    }
}
