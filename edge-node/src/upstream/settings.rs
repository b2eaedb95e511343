//! `[[upstream]]`: named pools of origins, how requests are spread over them, how they
//! are reached (HTTP/1.1 or HTTP/2, plain or TLS) and how their health is judged.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub name: String,
    /// The region this pool serves (sent to clients as `X-Region`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Origins as `host:port`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// A built-in origin instead of servers: `"demo"` answers with a page about the node.
    #[serde(default)]
    pub builtin: Option<String>,
    /// How requests are spread over the servers.
    #[serde(default)]
    pub balance: Balance,
    /// What `consistent_hash` hashes: `client_ip`, `path`, `header:NAME` or
    /// `cookie:NAME` (a request without the header or cookie falls back to the client IP).
    #[serde(default = "default_hash_key")]
    pub hash_key: String,
    /// Protocol toward the origins: `http1`, or `http2` (ALPN over TLS, prior knowledge
    /// over plain TCP).
    #[serde(default)]
    pub protocol: OriginProtocol,
    /// TLS toward the origins, always verified.
    #[serde(default)]
    pub tls: bool,
    /// The name sent as SNI and verified in the origin's certificate (default: the host
    /// part of each server).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// PEM file of CA certificates trusted for the origins (default: the system's roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Time the origin has to start answering (response head).
    #[serde(default = "default_response_timeout", with = "crate::duration")]
    pub response_timeout: Duration,
    /// Time for the whole exchange, response body included; 0 = no limit.
    #[serde(default, with = "crate::duration")]
    pub total_timeout: Duration,
    /// Passive health: this many failures in a row (refused or broken connections,
    /// timeouts) take a server out of rotation for `fail_timeout`; 0 = never.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    #[serde(default = "default_fail_timeout", with = "crate::duration")]
    pub fail_timeout: Duration,
    /// Retries (another server after a connection failure) allowed as a fraction of
    /// requests, on top of `retry_budget_min_per_sec`: a struggling pool is not hit by
    /// a retry storm.
    #[serde(default = "default_retry_budget_ratio")]
    pub retry_budget_ratio: f64,
    #[serde(default = "default_retry_budget_min")]
    pub retry_budget_min_per_sec: f64,
    /// Active health checks (off unless given).
    #[serde(default)]
    pub health_check: Option<HealthCheckSettings>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastOutstanding,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OriginProtocol {
    #[default]
    Http1,
    Http2,
}

/// `[upstream.health_check]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSettings {
    /// Path probed with GET; a 2xx or 3xx answer is a pass.
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// Host header of the probe (default: the server's address).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_interval", with = "crate::duration")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Passes in a row that bring a server back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failures in a row that take it out.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// Where a pool's responses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Servers,
    Demo,
}

fn default_region() -> String {
    "default".into()
}
fn default_hash_key() -> String {
    "client_ip".into()
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_fails() -> u32 {
    3
}
fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_budget_ratio() -> f64 {
    0.2
}
fn default_retry_budget_min() -> f64 {
    5.0
}
fn default_probe_path() -> String {
    "/".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

impl UpstreamSettings {
    pub fn origin(&self) -> Origin {
        match self.builtin.as_deref() {
            Some("demo") => Origin::Demo,
            _ => Origin::Servers,
        }
    }

    pub fn hash_key(&self) -> Result<HashKey> {
        let k = self.hash_key.as_str();
        Ok(match k.split_once(':') {
            None if k == "client_ip" => HashKey::ClientIp,
            None if k == "path" => HashKey::Path,
            Some(("header", name)) => match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => HashKey::Header(n),
                Err(_) => bail!(
                    "upstream {}: hash_key {k:?}: {name:?} is not a header name",
                    self.name
                ),
            },
            Some(("cookie", name)) if !name.is_empty() => HashKey::Cookie(name.to_string()),
            _ => bail!(
                "upstream {}: hash_key {k:?} is not client_ip, path, header:NAME or cookie:NAME",
                self.name
            ),
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            bail!("upstream with an empty name");
        }
        match (&self.builtin, self.servers.is_empty()) {
            (Some(b), _) if b != "demo" => {
                bail!(
                    "upstream {}: builtin = {b:?} is unknown (only \"demo\")",
                    self.name
                )
            }
            (Some(_), false) => bail!("upstream {}: give either servers or builtin", self.name),
            (None, true) => bail!("upstream {}: no servers", self.name),
            _ => {}
        }
        for s in &self.servers {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok {
                bail!("upstream {}: server {s:?} is not host:port", self.name);
            }
        }
        self.hash_key()?;
        if !(0.0..=10.0).contains(&self.retry_budget_ratio)
            || !(0.0..=1e6).contains(&self.retry_budget_min_per_sec)
        {
            bail!(
                "upstream {}: retry_budget_ratio must be in 0..=10 and retry_budget_min_per_sec in 0..=1e6",
                self.name
            );
        }
        if let Some(name) = &self.tls_server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            bail!(
                "upstream {}: tls_server_name {name:?} is not a DNS name or IP address",
                self.name
            );
        }
        if self.response_timeout.is_zero() {
            bail!(
                "upstream {}: response_timeout must be above 0 (every request would time out)",
                self.name
            );
        }
        if let Some(h) = &self.health_check {
            if !h.path.starts_with('/') {
                bail!(
                    "upstream {}: health_check.path must start with /",
                    self.name
                );
            }
            if h.interval.is_zero() || h.timeout.is_zero() {
                bail!(
                    "upstream {}: health_check interval and timeout must be above 0",
                    self.name
                );
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                bail!(
                    "upstream {}: health_check thresholds must be at least 1",
                    self.name
                );
            }
        }
        Ok(())
    }
}
