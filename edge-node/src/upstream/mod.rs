//! Upstream pools: the clients that reach origins (one keep-alive pool per request
//! worker; HTTP/1.1 or HTTP/2; plain or verified TLS), server choice (`balance`), health
//! (active checks and passive ejection), timeouts, and retries within a budget.

pub mod balance;
pub mod h1pool;
pub mod health;
pub mod settings;

use std::{
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, Uri, header,
    request::Parts,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Either};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tracing::{debug, warn};

use settings::{HashKey, HealthCheckSettings, OriginProtocol};
pub use settings::{Origin, UpstreamSettings};

use crate::{
    error::{Body, BoxError, EdgeError, ErrorKind, empty},
    hash::stable_hash,
};
use balance::{Balancer, RetryBudget};
use h1pool::{ExchangeError, H1Pool, PooledBody};
use health::{InFlight, ServerState};

type OriginClient = Client<HttpsConnector<HttpConnector>, Body>;

/// How a pool reaches its origins. Either way one connection pool serves all workers.
#[derive(Clone)]
enum Clients {
    /// Plain HTTP/1.1: this crate's keep-alive pool (the proxy's hot path), which
    /// prefers connections on the requesting worker's own thread.
    Plain(Arc<H1Pool>),
    /// TLS or HTTP/2 origins: one general client and keep-alive pool for every worker
    /// (an HTTP/2 origin sees one multiplexed connection, not one per core).
    General(Box<OriginClient>),
}

type OriginResponse = Response<Either<PooledBody, Incoming>>;

impl Clients {
    /// One exchange with the server `req`'s URI names.
    async fn request(&self, req: Request<Body>) -> Result<OriginResponse, ExchangeError> {
        match self {
            Self::Plain(pool) => Ok(pool.request(req).await?.map(Either::Left)),
            Self::General(client) => match client.request(req).await {
                Ok(r) => Ok(r.map(Either::Right)),
                Err(e) => Err(ExchangeError {
                    connect: e.is_connect(),
                    source: Box::new(e),
                }),
            },
        }
    }
}

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

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    // The https connector wraps it: let it take https:// URIs.
    http.enforce_http(false);
    http
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

    fn builder() -> hyper_util::client::legacy::Builder {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        b
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

    /// Clients of its own: HTTP/2 (prior knowledge or ALPN), or TLS with the pool's
    /// trust roots and server name.
    fn dedicated_clients(&self, s: &UpstreamSettings) -> Result<Clients> {
        let mut roots = rustls::RootCertStore::empty();
        if s.tls {
            match &s.tls_ca_file {
                Some(path) => {
                    for cert in CertificateDer::pem_file_iter(path)
                        .with_context(|| format!("cannot read tls_ca_file {}", path.display()))?
                    {
                        let cert = cert
                            .with_context(|| format!("tls_ca_file {}: bad PEM", path.display()))?;
                        roots.add(cert).with_context(|| {
                            format!("tls_ca_file {}: not a CA certificate", path.display())
                        })?;
                    }
                }
                None => {
                    let native = rustls_native_certs::load_native_certs();
                    for e in &native.errors {
                        warn!(error = %e, "reading the system's CA certificates");
                    }
                    let (added, _) = roots.add_parsable_certificates(native.certs);
                    if added == 0 {
                        anyhow::bail!(
                            "tls = true but the system has no CA certificates: set tls_ca_file"
                        );
                    }
                }
            }
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = match s.protocol {
            OriginProtocol::Http2 => vec![b"h2".to_vec()],
            OriginProtocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        let http = http_connector(self.connect_timeout);
        let connector = match &s.tls_server_name {
            Some(name) => HttpsConnector::new(
                http,
                tls,
                s.tls,
                Arc::new(FixedServerNameResolver::new(ServerName::try_from(
                    name.clone(),
                )?)),
            ),
            None => HttpsConnector::new(
                http,
                tls,
                s.tls,
                Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
            ),
        };
        let mut b = Self::builder();
        if s.protocol == OriginProtocol::Http2 {
            b.http2_only(true);
        }
        Ok(Clients::General(Box::new(b.build(connector))))
    }

    /// Sends `req` to one of the upstream's servers; on a connection failure, another
    /// server while the retry budget allows (only requests that can be sent twice).
    pub async fn send(
        &self,
        up: &Upstream,
        req: Request<Body>,
        body_is_empty: bool,
        client_ip: IpAddr,
    ) -> Result<Response<Body>, EdgeError> {
        let (parts, body) = req.into_parts();
        // A body cannot be replayed; a request without one can, when nothing reached
        // the origin (connect failures) or the method is idempotent.
        let replayable = body_is_empty;
        let idempotent = is_idempotent(&parts.method);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // Hashing the key (the client IP formatted, by default) is work only the hash
        // ring needs.
        let key = if up.balancer.uses_key() {
            up.request_key(&parts, client_ip)
        } else {
            0
        };
        // Retries go to another server: a pool of one has no use for the budget (and its
        // lock, shared by every worker).
        if up.servers.len() > 1 {
            up.budget.deposit();
        }
        let all_out = !up.states.iter().any(|s| s.usable());
        let deadline = (!up.total_timeout.is_zero()).then(|| {
            tokio::time::Instant::from_std(crate::duration::instant_after(
                std::time::Instant::now(),
                up.total_timeout,
            ))
        });
        let may_retry = replayable && up.servers.len() > 1;
        let mut parts = Some(parts);
        let mut body = Some(body);
        let mut tried: Vec<usize> = Vec::new();
        let mut last_error = None;
        while let Some(i) = up.balancer.pick(&up.states, key, &tried, all_out) {
            if let Some(&prev) = tried.last() {
                if !up.budget.withdraw() {
                    up.states[prev]
                        .retry_denied
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    warn!(upstream = %up.name, "retry budget exhausted; not retrying");
                    break;
                }
                up.states[prev]
                    .retried
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tried.push(i);
            let (server, state) = (&up.servers[i], &up.states[i]);
            // Parts are cloned only while another attempt may still need them.
            let p = if may_retry {
                parts.clone()
            } else {
                parts.take()
            };
            let Some(p) = p else { break };
            let mut out = Request::from_parts(p, empty());
            *out.uri_mut() = up.uri(i, &path);
            *out.version_mut() = http::Version::HTTP_11;
            if let Some(b) = body.take() {
                *out.body_mut() = b;
            }
            let in_flight = state.begin();
            let mut wait = up.response_timeout;
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(tokio::time::Instant::now()));
            }
            match tokio::time::timeout(wait, up.clients.request(out)).await {
                Err(_) => {
                    state.record_failure(up.max_fails, up.fail_timeout);
                    // The origin may be working on it: never sent twice.
                    return Err(EdgeError::new(
                        ErrorKind::UpstreamTimeout,
                        format!("{} ({server}): no response within {wait:?}", up.name),
                    ));
                }
                Ok(Ok(resp)) => {
                    state.record_success();
                    return Ok(resp.map(|b| {
                        OriginBody {
                            inner: b,
                            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                            _in_flight: in_flight,
                        }
                        .boxed()
                    }));
                }
                Ok(Err(e)) => {
                    if let Some(client_fault) = request_body_fault(&e) {
                        return Err(client_fault);
                    }
                    state.record_failure(up.max_fails, up.fail_timeout);
                    last_error = Some(format!("{} ({server}): {}", up.name, chain(&e)));
                    let nothing_sent = e.connect;
                    if !replayable || !(nothing_sent || idempotent) {
                        break;
                    }
                }
            }
        }
        let detail = last_error.unwrap_or_else(|| format!("{}: no server to try", up.name));
        // Every server was already out of rotation (tried anyway, in case the verdict
        // was stale): the pool is known to be down, a 503 rather than a 502.
        if all_out {
            return Err(EdgeError::new(
                ErrorKind::NoUpstreamAvailable,
                format!(
                    "no server of {} in rotation; tried anyway: {detail}",
                    up.name
                ),
            ));
        }
        Err(EdgeError::new(ErrorKind::UpstreamFailed, detail))
    }
}

/// A response body from an origin: counts as in flight until done, and ends with an
/// error at the pool's total timeout.
struct OriginBody {
    inner: Either<PooledBody, Incoming>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    _in_flight: InFlight,
}

impl HttpBody for OriginBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(d) = &mut this.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err("origin response exceeded total_timeout".into())));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The exchange failed because of the client's request body (over the size limit, or
/// the client's connection broke mid-body): the client's error, not the origin's.
fn request_body_fault(e: &(dyn std::error::Error + 'static)) -> Option<EdgeError> {
    let mut cur = Some(e);
    let mut in_user_body = false;
    while let Some(err) = cur {
        if err.is::<crate::body::BodyReadTimeout>() {
            return Some(EdgeError::new(
                ErrorKind::RequestTimeout,
                "request body stalled past http.body_read_timeout",
            ));
        }
        if err.is::<http_body_util::LengthLimitError>() {
            return Some(EdgeError::new(
                ErrorKind::PayloadTooLarge,
                "request body over http.max_body_bytes",
            ));
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if in_user_body {
                // The client's own connection failed while its body was relayed.
                return Some(EdgeError::new(
                    ErrorKind::BadRequest,
                    format!("request body: {h}"),
                ));
            }
            in_user_body = h.is_user();
        }
        cur = err.source();
    }
    None
}

/// An error and its causes, one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let more = c.to_string();
        if !out.contains(&more) {
            out.push_str(": ");
            out.push_str(&more);
        }
        cur = c.source();
    }
    out
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
