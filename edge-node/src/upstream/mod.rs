//! Upstream pools: one shared connection pool (keep-alive, HTTP/1.1) for all workers,
//! round-robin selection, connect and response timeouts, and a retry on another origin
//! for idempotent requests without a body when the connection fails.

pub mod demo;
pub mod settings;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Method, Request, Response, Uri, uri::PathAndQuery};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

pub use settings::{Origin, UpstreamSettings};

use crate::error::{Body, EdgeError, ErrorKind};

/// A named pool of origins in one region.
pub struct Upstream {
    pub name: String,
    pub region: String,
    pub origin: Origin,
    servers: Vec<String>,
    next: AtomicUsize,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(s: &UpstreamSettings) -> Self {
        Self {
            name: s.name.clone(),
            region: s.region.clone(),
            origin: s.origin(),
            servers: s.servers.clone(),
            next: AtomicUsize::new(0),
            response_timeout: s.response_timeout,
        }
    }

    /// Servers in the order to try them for one request (round robin start).
    fn order(&self) -> impl Iterator<Item = &String> {
        let n = self.servers.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| &self.servers[(start + i) % n])
    }
}

/// The client shared by every upstream and worker.
#[derive(Clone)]
pub struct Pool {
    client: Client<HttpConnector, Body>,
}

impl Pool {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self { client }
    }

    /// Sends `req` to one of the upstream's servers.
    pub async fn send(
        &self,
        upstream: &Arc<Upstream>,
        req: Request<Body>,
        body_is_empty: bool,
    ) -> Result<Response<Body>, EdgeError> {
        let (parts, body) = req.into_parts();
        let retryable = body_is_empty && is_idempotent(&parts.method);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut body = Some(body);
        let mut last_error = None;
        for server in upstream.order() {
            let uri: Uri = format!("http://{server}{path}")
                .parse()
                .map_err(|e| EdgeError::new(ErrorKind::BadRequest, format!("uri: {e}")))?;
            let mut out = Request::from_parts(parts.clone(), Body::default());
            *out.uri_mut() = uri;
            // Toward origins: HTTP/1.1 framing, whatever the client spoke.
            *out.version_mut() = http::Version::HTTP_11;
            *out.body_mut() = match body.take() {
                Some(b) => b,
                None => Empty::new().map_err(|never| match never {}).boxed(),
            };
            match tokio::time::timeout(upstream.response_timeout, self.client.request(out)).await {
                Err(_) => {
                    return Err(EdgeError::new(
                        ErrorKind::UpstreamTimeout,
                        format!(
                            "{} ({server}): no response within {:?}",
                            upstream.name, upstream.response_timeout
                        ),
                    ));
                }
                Ok(Ok(resp)) => return Ok(resp.map(|b| b.boxed())),
                Ok(Err(e)) => {
                    let connect = e.is_connect();
                    last_error = Some(format!("{} ({server}): {e:?}", upstream.name));
                    // Another origin only when nothing can have reached this one.
                    if !(connect || retryable) {
                        break;
                    }
                }
            }
        }
        Err(EdgeError::new(
            ErrorKind::UpstreamFailed,
            last_error.unwrap_or_else(|| format!("{}: no servers", upstream.name)),
        ))
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
