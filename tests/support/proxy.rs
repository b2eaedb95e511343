//! A proxy node under test and the clients that talk to it: curl (its status, version,
//! headers and body) and raw bytes on a socket.

use std::{process::Command, time::Duration};

use crate::node::Node;

pub struct Proxy {
    pub node: Node,
    /// `http://addr`
    pub base: String,
}

/// Starts a node with `cfg` and waits until it serves.
pub fn start_config(cfg: &str) -> Proxy {
    let node = Node::start(cfg, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let addr = node.http_addr().expect("listening address in the log");
    Proxy {
        base: format!("http://{addr}"),
        node,
    }
}

pub struct Reply {
    pub status: u16,
    pub version: String,
    /// Lower-cased.
    pub headers: String,
    pub body: String,
}

/// curl with `args`, to `path` of the proxy with Host `host`.
pub fn curl(p: &Proxy, host: &str, path: &str, args: &[&str]) -> Reply {
    let dir = std::env::temp_dir().join(crate::unique("edge-curl-"));
    std::fs::create_dir_all(&dir).unwrap();
    let headers = dir.join("h");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "-", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code} %{http_version}", "-H"])
        .arg(format!("Host: {host}"))
        .args(args)
        .arg(format!("{}{path}", p.base))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut t = tail.split_whitespace();
    let status = t.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = t.next().unwrap_or("").to_string();
    let headers = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let _ = std::fs::remove_dir_all(&dir);
    Reply {
        status,
        version,
        headers,
        body: body.to_string(),
    }
}

/// Sends raw bytes on a fresh connection; returns what came back until the server closed
/// the connection (or 10 s passed: then "<open>" is appended).
pub fn raw(addr: &str, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                out.extend_from_slice(b"<open>");
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The admin token the helpers below use.
pub const ADMIN_TOKEN: &str = "test-token-0123456789abcdef";

/// An `[admin]` section on an ephemeral port with `ADMIN_TOKEN`.
pub fn admin_section() -> String {
    format!("\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n")
}

impl Proxy {
    /// `127.0.0.1:port` of the HTTP listener.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// An admin API call with `ADMIN_TOKEN` (the node runs with `admin_section()`):
    /// (status, body).
    pub fn admin(&self, method: &str, path: &str) -> (u16, String) {
        self.admin_as(method, path, Some(ADMIN_TOKEN))
    }

    /// An admin API call with `token` as bearer (or none): (status, body).
    pub fn admin_as(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let admin = self
            .node
            .logged_addr("admin listening")
            .expect("admin address in the log");
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        let out = cmd
            .arg(format!("http://{admin}{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The admin API's /metrics text.
    pub fn metrics(&self) -> String {
        self.admin("GET", "/metrics").1
    }

    /// The value of the metric sample starting with `sample` (name and labels), if any.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(sample))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// A keep-alive HTTP/1.1 client connection held open. The node gives each new connection
/// to the worker with the fewest, so connections open at the same time are served by
/// different workers (as many as there are).
pub struct HeldConnection(std::net::TcpStream);

impl HeldConnection {
    pub fn open(p: &Proxy) -> Self {
        let s = std::net::TcpStream::connect(p.addr()).expect("connect to the node");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self(s)
    }

    /// GET `path` on this connection: the status and the body (framed by
    /// Content-Length, or chunked).
    pub fn get(&mut self, host: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        write!(self.0, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("send");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.0.read(&mut chunk).expect("read the answer");
            assert!(
                n > 0,
                "the node closed the connection: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head}"));
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, value) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        };
        let mut body = buf.split_off(head_end);
        if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
            // Chunked (RFC 9112 7.1): read until the last chunk and the empty trailer.
            loop {
                if let Some(decoded) = decode_chunked(&body) {
                    return (status, String::from_utf8_lossy(&decoded).to_string());
                }
                let n = self.0.read(&mut chunk).expect("read the body");
                assert!(n > 0, "the node closed the connection mid-body");
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length nor chunked: {head}"));
        while body.len() < length {
            let n = self.0.read(&mut chunk).expect("read the body");
            assert!(n > 0, "the node closed the connection mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        (status, String::from_utf8_lossy(&body[..length]).to_string())
    }
}

/// A whole chunked body from `raw`, or `None` while it is incomplete.
fn decode_chunked(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + raw[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[at..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
        at = line_end + 2;
        if size == 0 {
            // No trailers from the node: the final CRLF ends the message.
            return (raw.len() >= at + 2).then_some(out);
        }
        if raw.len() < at + size + 2 {
            return None;
        }
        out.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

/// The status of a raw HTTP/1 response (`HTTP/1.1 200 OK…`), 0 if there is none.
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Reads a response head (up to the empty line) from `r`, lower-cased.
pub fn read_head(r: &mut impl std::io::BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    head.to_ascii_lowercase()
}
