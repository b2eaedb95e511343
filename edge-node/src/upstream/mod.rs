//! Upstream pools: the clients that reach origins (one keep-alive pool per request
//! worker; HTTP/1.1 or HTTP/2; plain or verified TLS), server choice (`balance`), health
//! (active checks and passive ejection), timeouts, and retries within a budget.
//!
//! `client`: how a pool reaches its origins; `send`: one request's attempts, retries and
//! timeouts.

pub mod balance;
mod client;
pub mod h1pool;
pub mod health;
mod send;
pub mod settings;
#[cfg(test)]
mod test_origin;

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use http::{
    HeaderValue, Request, Uri, header,
    request::Parts,
    uri::{Authority, PathAndQuery, Scheme},
};
use tracing::debug;

pub use send::EarlyHints;
use settings::{HashKey, HealthCheckSettings, OriginProtocol};
pub use settings::{Origin, UpstreamSettings};

use crate::{error::empty, hash::stable_hash};
use balance::{Balancer, RetryBudget};
use client::Clients;
use h1pool::H1Pool;
use health::ServerState;

/// A named pool of origins in one region.
pub struct Upstream {
    pub name: String,
    pub region: String,
    pub origin: Origin,
    servers: Vec<String>,
    /// `servers`, parsed once: the origin URI of a request is built from them.
    authorities: Vec<Authority>,
    states: Vec<Arc<ServerState>>,
    balancer: Balancer,
    hash_key: HashKey,
    budget: RetryBudget,
    clients: Clients,
    scheme: &'static str,
    response_timeout: Duration,
    total_timeout: Duration,
    max_fails: u32,
    fail_timeout: Duration,
    health_check: Option<HealthCheckSettings>,
}

impl Upstream {
    /// Whether any server is in rotation (a pool without one is failed over).
    pub fn has_usable_server(&self) -> bool {
        self.origin == Origin::Demo || self.states.iter().any(|s| s.usable())
    }

    fn request_key(&self, parts: &Parts, client_ip: IpAddr) -> u64 {
        let ip = || stable_hash(client_ip.to_string().as_bytes());
        match &self.hash_key {
            HashKey::ClientIp => ip(),
            HashKey::Path => stable_hash(parts.uri.path().as_bytes()),
            HashKey::Header(name) => parts
                .headers
                .get(name)
                .map_or_else(ip, |v| stable_hash(v.as_bytes())),
            HashKey::Cookie(name) => crate::headers::cookie(&parts.headers, name)
                .map_or_else(ip, |v| stable_hash(v.as_bytes())),
        }
    }

    /// The URI of `path` on server `i`.
    fn uri(&self, i: usize, path: &PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if self.scheme == "https" {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = Some(self.authorities[i].clone());
        parts.path_and_query = Some(path.clone());
        Uri::from_parts(parts).expect("a scheme, an authority and a path make a URI")
    }

    /// Probes every server of the pool every `interval` until the pool is dropped (a
    /// reload replaces it).
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let Some(hc) = self.health_check.clone() else {
            return;
        };
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(hc.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(up) = pool.upgrade() else { break };
                let probes = up.states.iter().enumerate().map(|(i, state)| {
                    let up = up.clone();
                    let hc = &hc;
                    async move {
                        let passed = up.probe(i, hc).await;
                        state.record_probe(passed, hc.healthy_threshold, hc.unhealthy_threshold);
                    }
                });
                futures_util::future::join_all(probes).await;
            }
        });
    }

    async fn probe(&self, i: usize, hc: &HealthCheckSettings) -> bool {
        let server = self.servers[i].as_str();
        let Ok(path) = PathAndQuery::try_from(hc.path.as_str()) else {
            return false;
        };
        let mut req = Request::get(self.uri(i, &path));
        if self.scheme == "http" || hc.host.is_some() {
            let host = hc.host.as_deref().unwrap_or(server);
            if let Ok(v) = HeaderValue::from_str(host) {
                req = req.header(header::HOST, v);
            }
        }
        req = req.header(header::USER_AGENT, "edge-node-health-check");
        let Ok(req) = req.body(empty()) else {
            return false;
        };
        match tokio::time::timeout(hc.timeout, self.clients.request(req)).await {
            Ok(Ok(resp)) => {
                let ok = resp.status().is_success() || resp.status().is_redirection();
                if !ok {
                    debug!(upstream = %self.name, %server, status = resp.status().as_u16(), "health check failed");
                }
                ok
            }
            Ok(Err(e)) => {
                debug!(upstream = %self.name, %server, error = %e, "health check failed");
                false
            }
            Err(_) => {
                debug!(upstream = %self.name, %server, "health check timed out");
                false
            }
        }
    }
}

/// The clients shared by every upstream and worker, and what is known about every
/// origin server.
#[derive(Clone)]
pub struct Pool {
    /// Plain HTTP/1.1: one keep-alive pool for every such upstream, kept across reloads.
    plain: Clients,
    connect_timeout: Duration,
    pub registry: health::Registry,
}

impl Pool {
    /// Clients for `workers` request workers (and the control runtime).
    pub fn new(connect_timeout: Duration, workers: usize) -> Self {
        Self {
            plain: Clients::Plain(H1Pool::new(workers, connect_timeout)),
            connect_timeout,
            registry: health::Registry::default(),
        }
    }

    /// The pool of one `[[upstream]]` (validated settings).
    pub fn upstream(&self, s: &UpstreamSettings) -> Result<Upstream> {
        let clients = if !s.tls && s.protocol == OriginProtocol::Http1 {
            self.plain.clone()
        } else {
            self.dedicated_clients(s)
                .with_context(|| format!("upstream {}", s.name))?
        };
        let authorities = s
            .servers
            .iter()
            .map(|srv| {
                Authority::try_from(srv.as_str())
                    .with_context(|| format!("upstream {}: server {srv:?}", s.name))
            })
            .collect::<Result<_>>()?;
        Ok(Upstream {
            name: s.name.clone(),
            region: s.region.clone(),
            origin: s.origin(),
            authorities,
            states: s
                .servers
                .iter()
                .map(|srv| self.registry.state(&s.name, srv))
                .collect(),
            balancer: Balancer::new(s.balance, &s.servers),
            servers: s.servers.clone(),
            hash_key: s.hash_key()?,
            budget: RetryBudget::new(s.retry_budget_ratio, s.retry_budget_min_per_sec),
            clients,
            scheme: if s.tls { "https" } else { "http" },
            response_timeout: s.response_timeout,
            total_timeout: s.total_timeout,
            max_fails: s.max_fails,
            fail_timeout: s.fail_timeout,
            health_check: s.health_check.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn settings(more: &str) -> UpstreamSettings {
        let text = format!("name = \"u\"\nservers = [\"10.0.0.1:80\", \"10.0.0.2:8080\"]\n{more}");
        let s: UpstreamSettings = toml::from_str(&text).expect("settings");
        s.validate().expect("valid");
        s
    }

    fn parts(uri: &str, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_reload_keeps_what_was_learned_about_each_server() {
        let pool = Pool::new(Duration::from_secs(1), 1);
        let first = pool.upstream(&settings("max_fails = 1")).unwrap();
        first.states[0].record_failure(1, Duration::from_secs(60));
        // The same pool in the next configuration: the server is still out.
        let second = pool.upstream(&settings("max_fails = 1")).unwrap();
        assert!(Arc::ptr_eq(&first.states[0], &second.states[0]));
        assert!(!second.states[0].usable() && second.states[1].usable());
        assert!(second.has_usable_server());
        second.states[1].record_failure(1, Duration::from_secs(60));
        assert!(!first.has_usable_server());
    }

    #[test]
    fn requests_go_to_the_chosen_server_by_its_address() {
        let pool = Pool::new(Duration::from_secs(1), 1);
        let up = pool.upstream(&settings("")).unwrap();
        let path = PathAndQuery::from_static("/a?b=1");
        assert_eq!(up.uri(1, &path), "http://10.0.0.2:8080/a?b=1");
    }

    #[test]
    fn an_unreadable_ca_file_is_refused() {
        let pool = Pool::new(Duration::from_secs(1), 1);
        let err = pool
            .upstream(&settings("tls = true\ntls_ca_file = \"/nonexistent.pem\""))
            .err()
            .expect("an unreadable CA file is refused");
        assert!(format!("{err:#}").contains("tls_ca_file"), "{err:#}");
    }

    #[test]
    fn the_hash_key_falls_back_to_the_client_address() {
        let pool = Pool::new(Duration::from_secs(1), 1);
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
        let by_ip = stable_hash(b"192.0.2.9");
        let key = |hash_key: &str, p: &Parts| {
            let up = pool
                .upstream(&settings(&format!(
                    "balance = \"consistent_hash\"\nhash_key = \"{hash_key}\""
                )))
                .unwrap();
            up.request_key(p, client)
        };
        let plain = parts("/p?q=1", &[]);
        let marked = parts("/p", &[("x-shard", "7"), ("cookie", "a=1; session=s9")]);
        assert_eq!(key("client_ip", &plain), by_ip);
        assert_eq!(key("path", &plain), stable_hash(b"/p"));
        assert_eq!(key("header:x-shard", &marked), stable_hash(b"7"));
        assert_eq!(key("header:x-shard", &plain), by_ip);
        assert_eq!(key("cookie:session", &marked), stable_hash(b"s9"));
        assert_eq!(key("cookie:session", &plain), by_ip);
    }
}
