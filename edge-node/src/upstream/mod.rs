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

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use http::{
    HeaderValue, Request, Uri, header,
    request::Parts,
    uri::{Authority, PathAndQuery, Scheme},
};
use tracing::debug;

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
