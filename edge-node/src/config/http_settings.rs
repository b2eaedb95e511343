//! `[http]`: listeners and the limits that protect them. Kept with the configuration
//! rather than in `server`: the pipeline reads them too, and `server` sits above it.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Addresses serving HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Addresses serving TLS (ALPN h2 and http/1.1), with the `[[certificate]]`s.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// UDP addresses serving HTTP/3 (QUIC) with the `[[certificate]]`s; the first one's
    /// port is advertised in `Alt-Svc` on HTTP/1.1 and HTTP/2 responses.
    #[serde(default)]
    pub h3_listen: Vec<SocketAddr>,
    /// Accept 0-RTT early data (only GET, HEAD and OPTIONS are served from it; others
    /// wait for the handshake, and get 425 Too Early if it does not complete in time).
    #[serde(default)]
    pub h3_0rtt: bool,
    /// A QUIC connection idle this long is closed.
    #[serde(default = "default_h3_idle", with = "crate::duration")]
    pub h3_idle_timeout: Duration,
    /// Handshakes in progress above which new clients must validate their address first
    /// (QUIC Retry): cheap for real clients, costly for spoofed floods.
    #[serde(default = "default_h3_retry_above")]
    pub h3_retry_above: usize,
    /// How long clients may cache the `Alt-Svc` advertisement.
    #[serde(default = "default_alt_svc_max_age", with = "crate::duration")]
    pub alt_svc_max_age: Duration,
    /// Time a client has, from the accept, to complete its first request head: TLS
    /// handshake, HTTP/2 preface and head included; and on HTTP/1.1 to send each next
    /// head once it started (slowloris protection).
    #[serde(default = "default_header_read_timeout", with = "crate::duration")]
    pub header_read_timeout: Duration,
    /// A connection (HTTP/1.1 keep-alive, HTTP/2) with no request in progress for this
    /// long is closed; HTTP/2 peers are also sent a PING this often while requests are
    /// in progress, and one that does not answer within `header_read_timeout` is gone.
    #[serde(default = "default_idle_timeout", with = "crate::duration")]
    pub idle_timeout: Duration,
    /// Longest wait for the next piece of a request body: a stalled upload gets 408 (or
    /// its exchange is aborted once the origin is answering).
    #[serde(default = "default_body_read_timeout", with = "crate::duration")]
    pub body_read_timeout: Duration,
    /// Connections served at once (all TCP listeners); past it a new connection is
    /// closed as soon as it is accepted (`edge_connections_shed_total`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request head accepted (bytes).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1 request head (more: 431).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Concurrent streams per HTTP/2 connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Largest declared request body (Content-Length) accepted, bytes (0 = no limit):
    /// above it the request is refused with 413 before any origin is contacted.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Peers whose X-Forwarded-For / -Proto / -Host and Forwarded are believed (load
    /// balancers in front of the node). Everyone else's copies are removed.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Time to open a connection to an origin.
    #[serde(default = "default_connect_timeout", with = "crate::duration")]
    pub upstream_connect_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    #[serde(default = "default_drain_timeout", with = "crate::duration")]
    pub drain_timeout: Duration,
    /// A response the client takes no bytes of for this long is abandoned, and the
    /// origin connection behind it released (`0s`: never).
    #[serde(default = "default_send_timeout", with = "crate::duration")]
    pub send_timeout: Duration,
    /// An upgraded connection (WebSocket) that carries no byte either way this long is
    /// closed on both sides.
    #[serde(default = "default_tunnel_idle_timeout", with = "crate::duration")]
    pub tunnel_idle_timeout: Duration,
    /// `[http.path]`: how request paths are made canonical (`crate::target`).
    #[serde(default)]
    pub path: crate::target::PathSettings,
    /// Responses carry `Server-Timing` with the edge's time per step (routes may turn
    /// it off with `server_timing = false`).
    #[serde(default = "default_server_timing")]
    pub server_timing: bool,
    /// `Timing-Allow-Origin` on responses with Server-Timing, so pages of these
    /// origins can read the timings (`"*"`: any). Unset: the header is not sent.
    #[serde(default)]
    pub timing_allow_origin: Option<String>,
}

fn default_server_timing() -> bool {
    true
}

fn default_listen() -> Vec<SocketAddr> {
    vec!["127.0.0.1:8080".parse().expect("static")]
}
fn default_h3_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_h3_retry_above() -> usize {
    64
}
fn default_alt_svc_max_age() -> Duration {
    Duration::from_secs(86400)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_concurrent_streams() -> u32 {
    128
}
fn default_max_body_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_tunnel_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls_listen: Vec::new(),
            h3_listen: Vec::new(),
            h3_0rtt: false,
            h3_idle_timeout: default_h3_idle(),
            h3_retry_above: default_h3_retry_above(),
            alt_svc_max_age: default_alt_svc_max_age(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_connections: default_max_connections(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_body_bytes: default_max_body_bytes(),
            trusted_proxies: Vec::new(),
            upstream_connect_timeout: default_connect_timeout(),
            drain_timeout: default_drain_timeout(),
            send_timeout: default_send_timeout(),
            server_timing: default_server_timing(),
            timing_allow_origin: None,
            tunnel_idle_timeout: default_tunnel_idle_timeout(),
            path: crate::target::PathSettings::default(),
        }
    }
}

/// Bounds of `max_header_bytes`: below 1 KiB no browser's request fits; above 16 MiB a
/// head is a memory attack (and HTTP/2's header list size is a u32).
const HEADER_BYTES: std::ops::RangeInclusive<usize> = 1024..=16 << 20;
const MAX_HEADERS: std::ops::RangeInclusive<usize> = 1..=10_000;

impl HttpSettings {
    pub fn validate(&self) -> Result<()> {
        if let Some(o) = &self.timing_allow_origin
            && http::HeaderValue::from_str(o).is_err()
        {
            bail!("http.timing_allow_origin = {o:?} is not a header value");
        }
        if !HEADER_BYTES.contains(&self.max_header_bytes) {
            bail!(
                "http.max_header_bytes = {} is outside {}..={}",
                self.max_header_bytes,
                HEADER_BYTES.start(),
                HEADER_BYTES.end()
            );
        }
        if !MAX_HEADERS.contains(&self.max_headers) {
            bail!(
                "http.max_headers = {} is outside {}..={}",
                self.max_headers,
                MAX_HEADERS.start(),
                MAX_HEADERS.end()
            );
        }
        if self.max_concurrent_streams == 0 {
            bail!("http.max_concurrent_streams must be at least 1");
        }
        // Deadlines within what they can mean: under 100 ms no real client makes it,
        // and a timer of years is no timer.
        let bounded = |key: &str, d: Duration, max: Duration| {
            if d < Duration::from_millis(100) || d > max {
                bail!(
                    "http.{key} must be between 100ms and {}",
                    humantime::format_duration(max)
                );
            }
            Ok(())
        };
        bounded(
            "header_read_timeout",
            self.header_read_timeout,
            Duration::from_secs(300),
        )?;
        bounded("idle_timeout", self.idle_timeout, Duration::from_secs(3600))?;
        bounded(
            "body_read_timeout",
            self.body_read_timeout,
            Duration::from_secs(3600),
        )?;
        bounded(
            "tunnel_idle_timeout",
            self.tunnel_idle_timeout,
            Duration::from_secs(86400),
        )?;
        // 0 turns the send deadline off.
        if !self.send_timeout.is_zero() {
            bounded(
                "send_timeout",
                self.send_timeout,
                Duration::from_secs(86400),
            )?;
        }
        if self.max_connections == 0 {
            bail!("http.max_connections must be at least 1");
        }
        // A zero timeout would end every connection (or origin connect) at once.
        for (key, d) in [
            ("http.header_read_timeout", self.header_read_timeout),
            ("http.h3_idle_timeout", self.h3_idle_timeout),
            (
                "http.upstream_connect_timeout",
                self.upstream_connect_timeout,
            ),
        ] {
            if d.is_zero() {
                bail!("{key} must be above 0");
            }
        }
        // TCP listeners must not share an address (a port once unspecified, once not,
        // counts too); the bind would fail at start, not here. HTTP/3 is UDP.
        let tcp: Vec<(&str, std::net::SocketAddr)> = self
            .listen
            .iter()
            .map(|a| ("http.listen", *a))
            .chain(self.tls_listen.iter().map(|a| ("http.tls_listen", *a)))
            .collect();
        for (i, (k1, a1)) in tcp.iter().enumerate() {
            for (k2, a2) in &tcp[i + 1..] {
                if addresses_overlap(*a1, *a2) {
                    bail!("{k1} {a1} and {k2} {a2} are the same listening address");
                }
            }
        }
        for (i, a1) in self.h3_listen.iter().enumerate() {
            if self.h3_listen[i + 1..]
                .iter()
                .any(|a2| addresses_overlap(*a1, *a2))
            {
                bail!("http.h3_listen lists {a1} twice");
            }
        }
        Ok(())
    }
}

/// Whether binding both would collide: the same port (not 0, which the kernel picks)
/// on the same address, or on any address where one is unspecified (0.0.0.0, ::).
pub fn addresses_overlap(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
