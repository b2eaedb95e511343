//! The admin listener: a separate address, every endpoint but `/healthz` behind a bearer
//! token. `/metrics` (Prometheus), `/readyz`, `POST /reload`.

pub mod metrics;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result, bail};
use http::{Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

pub use metrics::Metrics;

use crate::{
    error::{Body, full},
    xdp::SharedPolicy,
};

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin API (keep it on a management network or loopback).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token required by every endpoint but /healthz.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (first line), instead of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:9901".parse().expect("static")
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token: None,
            token_file: None,
        }
    }
}

impl AdminSettings {
    /// The token, if the admin API is configured. Without one it does not start: an
    /// admin API nobody can authenticate to, or anybody can, is worse than none.
    pub fn token(&self) -> Result<Option<String>> {
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => bail!("admin: set token or token_file, not both"),
            (Some(t), None) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("admin.token_file {}", f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            (None, None) => return Ok(None),
        };
        if token.len() < 16 {
            bail!("admin token must be at least 16 characters");
        }
        Ok(Some(token))
    }
}

/// What the admin API asks of the running node.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

#[derive(Clone)]
pub struct AdminState {
    pub token: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub policy: SharedPolicy,
    pub reload: mpsc::Sender<ReloadRequest>,
}

pub async fn bind(settings: &AdminSettings) -> Result<TcpListener> {
    let l = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", settings.listen))?;
    info!(addr = %l.local_addr()?, "admin listening");
    Ok(l)
}

pub fn spawn(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let st = state.clone();
                    let service = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                    });
                    tokio::spawn(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                _ = shutdown.changed() => break,
            }
        }
    })
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(st: AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(presented.as_bytes(), st.token.as_bytes()) {
        let mut r = text(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"edge-node admin\""),
        );
        return r;
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
        (Method::GET, "/metrics") => {
            let counters = st.policy.lock().expect("policy lock").counters();
            let mut r = text(StatusCode::OK, st.metrics.render(counters.as_ref()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (Method::POST, "/reload") => {
            let (tx, rx) = oneshot::channel();
            if st.reload.send(tx).await.is_err() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            match rx.await {
                Ok(Ok(())) => text(StatusCode::OK, "reloaded\n"),
                Ok(Err(e)) => {
                    warn!(error = %e, "reload through the admin API refused");
                    text(StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {e}\n"))
                }
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            }
        }
        (_, "/readyz" | "/metrics" | "/reload") => text(StatusCode::METHOD_NOT_ALLOWED, "405\n"),
        _ => text(StatusCode::NOT_FOUND, "404\n"),
    }
}
