//! A real edge-node process, started with a config file, optionally inside a network
//! namespace, stopped with SIGTERM like systemd does.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{edge_node_bin, netns::Netns, unique};

pub struct Node {
    child: Option<Child>,
    /// Extra environment for the process.
    env: Vec<(String, String)>,
    /// How many times the process was started (the log accumulates across restarts).
    starts: usize,
    dir: PathBuf,
    netns: Option<String>,
    /// Run without `-c`: the embedded default configuration.
    embedded: bool,
}

impl Node {
    /// Starts edge-node with `config` (TOML) inside `netns` (if given).
    pub fn start(config: &str, netns: Option<&Netns>) -> Self {
        Self::start_with_env(config, netns, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(config: &str, netns: Option<&Netns>, env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(unique("edge-node-test-"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("edge-node.toml"), config).unwrap();
        let mut node = Self {
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
            dir,
            netns: netns.map(|n| n.name.clone()),
            embedded: false,
        };
        node.spawn();
        node
    }

    /// Starts edge-node without a configuration file (its embedded default) in `netns`,
    /// where the default's fixed port and the bpffs mount are the namespace's own.
    pub fn start_embedded(netns: &Netns) -> Self {
        let dir = std::env::temp_dir().join(unique("edge-node-test-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut node = Self {
            child: None,
            env: Vec::new(),
            starts: 0,
            dir,
            netns: Some(netns.name.clone()),
            embedded: true,
        };
        node.spawn();
        node
    }

    /// The binary in the node's namespace, with the node's environment (the CLI sees
    /// what the service does).
    fn command(&self) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(edge_node_bin());
                c
            }
            None => Command::new(edge_node_bin()),
        };
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let mut cmd = self.command();
        if !self.embedded {
            cmd.arg("-c").arg(self.config_path());
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .env_remove("EDGE_NODE_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start edge-node");
        self.child = Some(child);
        self.starts += 1;
    }

    /// The HTTP address the current run logged (`http listening addr=…`).
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.logged_addr("http listening")
    }

    /// The address of the last log line containing `what` (`… addr=ip:port` in text
    /// logs, `"addr":"ip:port"` in JSON logs).
    pub fn logged_addr(&self, what: &str) -> Option<std::net::SocketAddr> {
        self.log()
            .lines()
            .rev()
            .filter(|l| l.contains(what))
            .filter_map(|l| {
                l.split("addr=")
                    .nth(1)
                    .or_else(|| l.split("\"addr\":\"").nth(1))
            })
            .filter_map(|a| a.split([' ', '"']).next())
            .filter_map(|a| a.parse().ok())
            .next()
    }

    /// The process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The directory of its config file and log.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Sends a signal to the node (SIGHUP reloads).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits (bounded) until the current run logged that it is running.
    pub fn wait_running(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().matches("edge-node running").count() >= self.starts {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("edge-node.toml")
    }

    /// `edge-node -c <config> args…`, in the node's namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .output()
            .expect("run edge-node cli")
    }

    /// Like `cli`, panicking unless it succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "edge-node {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The node's log so far. The node writes it from a thread of its own, a moment
    /// after the event: this waits (at most half a second) until it stops growing.
    pub fn log(&self) -> String {
        let read = || std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let start = Instant::now();
        let mut last = read();
        while start.elapsed() < Duration::from_millis(500) {
            std::thread::sleep(Duration::from_millis(20));
            let now = read();
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
        last
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().expect("try_wait").is_some(),
            None => true,
        }
    }

    /// Waits (bounded) for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        while start.elapsed() < timeout {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM and wait (bounded); panics if it does not stop cleanly.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "edge-node exited with {status}:\n{}",
                    self.log()
                );
                return;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("edge-node did not stop within 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again with the same config (after `stop`).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
