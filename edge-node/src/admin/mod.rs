//! The admin listener: a separate address, every endpoint but `/healthz` behind a bearer
//! token. `/metrics` (Prometheus), `/readyz`, `POST /reload`, `POST /upgrade`, and the
//! source policy:
//! `GET /policy`, `POST /policy/score`, `/policy/block`, `/policy/unblock`;
//! `PUT /functions/<name>` (a function's new component, then a reload).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use http::{Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

// Re-exported: their old paths under `admin` keep working.
pub use crate::{
    config::admin::AdminSettings,
    metrics::{self, Metrics},
};

use crate::{
    error::{Body, full},
    xdp::SharedPolicy,
};

/// What the admin API asks of the running node.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// An upgrade asked through the admin API: the new process's pid, or why there is none.
pub type UpgradeRequest = oneshot::Sender<Result<u32, String>>;

#[derive(Clone)]
pub struct AdminState {
    pub token: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub policy: SharedPolicy,
    /// The listeners' state, for `/healthz`.
    pub listeners: Arc<crate::server::ListenerHealth>,
    /// The XDP program's counters, read without the policy's lock.
    pub stats: Option<Arc<crate::xdp::maps::StatsReader>>,
    pub threat: Arc<crate::policy::ThreatEngine>,
    pub cache: Arc<crate::cache::Store>,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// `POST /upgrade`: the node hands its listeners to the binary on disk.
    pub upgrade: mpsc::Sender<UpgradeRequest>,
    /// The functions runtime: checks and writes uploaded components.
    pub functions: crate::functions::Runtime,
    /// One deploy at a time: each answer then says what its own upload did (a second
    /// upload of the same function waits instead of racing the first one's reload).
    pub deploying: Arc<tokio::sync::Mutex<()>>,
    /// How long an upload may take (`UPLOAD_TIMEOUT`).
    pub upload_timeout: std::time::Duration,
    /// True once the node is shutting down: `/readyz` answers 503 while requests drain.
    pub draining: watch::Receiver<bool>,
}

pub async fn bind(
    settings: &AdminSettings,
    inherited: Option<&mut crate::upgrade::Inherited>,
) -> Result<TcpListener> {
    let adopted = inherited
        .and_then(|i| i.tcp(crate::upgrade::Kind::Admin, settings.listen))
        .map(TcpListener::from_std)
        .transpose()?;
    let l = match adopted {
        Some(l) => l,
        None => TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", settings.listen))?,
    };
    info!(addr = %l.local_addr()?, "admin listening");
    Ok(l)
}

/// The admin API, served until [`AdminServer::stop`]: through the drain too, so load
/// balancers read `/readyz` as 503 rather than a refused connection.
pub struct AdminServer {
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

/// How long a stopping admin API gives the requests in flight to be answered.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl AdminServer {
    /// Stops accepting and answers the requests in flight (within `STOP_GRACE`), idle
    /// connections closed: the answer to the `POST /upgrade` that ends this process is
    /// written before it exits.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(STOP_GRACE * 2, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

pub fn spawn(listener: TcpListener, state: AdminState) -> AdminServer {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let connections = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let st = state.clone();
            let service = service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
            });
            let watcher = connections.watcher();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let _ = watcher.watch(conn).await;
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(STOP_GRACE, connections.shutdown()).await;
    });
    AdminServer {
        task,
        stop: Some(stop),
    }
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

/// `/healthz`: ok while every listener serves; 503 naming those that ended.
fn health(listeners: &crate::server::ListenerHealth) -> (StatusCode, String) {
    let dead = listeners.dead();
    if dead.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("listener ended: {}\n", dead.join(", ")),
        )
    }
}

async fn handle(st: AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        let (status, body) = health(&st.listeners);
        return text(status, &body);
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
        (Method::GET, "/readyz") => {
            if *st.draining.borrow() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (Method::GET, "/metrics") => {
            let counters = st.stats.as_ref().and_then(|s| s.counters().ok());
            let mut r = text(StatusCode::OK, st.metrics.render(counters.as_ref()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (Method::POST, "/reload") => match reload(&st).await {
            Ok(()) => text(StatusCode::OK, "reloaded\n"),
            Err((status, why)) => text(status, format!("{why}\n")),
        },
        (Method::POST, "/upgrade") => upgrade(&st).await,
        (Method::PUT, p) if p.starts_with("/functions/") => {
            let name = p["/functions/".len()..].to_string();
            deploy_function(&st, &name, req).await
        }
        (_, p) if p.starts_with("/functions/") => text(StatusCode::METHOD_NOT_ALLOWED, "405\n"),
        (Method::GET, "/policy") => {
            let p = st.policy.clone();
            let listed =
                tokio::task::spawn_blocking(move || p.lock().expect("policy lock").list()).await;
            match listed {
                Ok(Ok(l)) => text(StatusCode::OK, crate::xdp::cli::listing(&l)),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        (Method::POST, "/cache/purge") => cache_purge(&st, req.uri().query().unwrap_or("")).await,
        (Method::POST, "/policy/score" | "/policy/block" | "/policy/unblock") => {
            policy_change(&st, &path, req.uri().query().unwrap_or("")).await
        }
        (
            _,
            "/readyz" | "/metrics" | "/reload" | "/upgrade" | "/policy" | "/policy/score"
            | "/policy/block" | "/policy/unblock",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "405\n"),
        _ => text(StatusCode::NOT_FOUND, "404\n"),
    }
}

/// Asks the node to upgrade (start the binary on disk, hand it the listeners) and waits
/// until the new process accepts or the upgrade failed; this process drains after a
/// success.
async fn upgrade(st: &AdminState) -> Response<Body> {
    if *st.draining.borrow() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let (tx, rx) = oneshot::channel();
    if st.upgrade.send(tx).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match rx.await {
        Ok(Ok(pid)) => text(StatusCode::OK, format!("upgraded: new pid {pid}\n")),
        Ok(Err(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("upgrade failed: {e}\n"),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

/// Asks the node to reload its configuration and waits for the outcome: the status
/// and words to answer with when it did not reload.
async fn reload(st: &AdminState) -> Result<(), (StatusCode, String)> {
    let shutting_down = || (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    // Nobody takes reloads once the drain started.
    if *st.draining.borrow() {
        return Err(shutting_down());
    }
    let (tx, rx) = oneshot::channel();
    if st.reload.send(tx).await.is_err() {
        return Err(shutting_down());
    }
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            warn!(error = %e, "reload through the admin API refused");
            Err((StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {e}")))
        }
        Err(_) => Err(shutting_down()),
    }
}

/// How long an upload may take: a stalled one must not hold an admin connection and its
/// buffer for ever.
pub const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `PUT /functions/<name>` with a component as the body (at most
/// `functions.max_upload_bytes`): checked (compiles, links, exports
/// wasi:http/incoming-handler), written atomically over the function's configured
/// file, then swapped in by a reload; requests in flight finish on the old component.
/// 404 for a function not in the configuration in force, 400 (with the reason) for an
/// invalid component, which changes nothing. When the reload is refused (for another
/// reason: the file is valid), the file stays written and the running configuration
/// keeps serving the old component until the next reload.
async fn deploy_function(st: &AdminState, name: &str, req: Request<Incoming>) -> Response<Body> {
    if *st.draining.borrow() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let limit = st.functions.max_upload_bytes();
    let body = http_body_util::Limited::new(
        req.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    );
    let wait = st.upload_timeout;
    let upload = tokio::time::timeout(wait, http_body_util::BodyExt::collect(body));
    let bytes = match upload.await {
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!("the upload did not complete within {wait:?}\n"),
            );
        }
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a component may be {limit} bytes at most (functions.max_upload_bytes)\n"),
            );
        }
        Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")),
    };
    let _one_at_a_time = st.deploying.lock().await;
    // Compiling is CPU work of up to seconds: off the async workers.
    let (rt, n) = (st.functions.clone(), name.to_string());
    let deployed = match tokio::task::spawn_blocking(move || rt.deploy(&n, &bytes)).await {
        Ok(Ok(d)) => d,
        Ok(Err(crate::functions::DeployError::Unknown)) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("no function named {name:?} in the configuration in force\n"),
            );
        }
        Ok(Err(crate::functions::DeployError::Invalid(why))) => {
            warn!(function = name, reason = %why, "uploaded component refused");
            return text(
                StatusCode::BAD_REQUEST,
                format!("invalid component: {why}\n"),
            );
        }
        Ok(Err(crate::functions::DeployError::Failed(why))) => {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n"));
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let done = format!(
        "{name}: {} written (sha256 {})",
        deployed.file.display(),
        deployed.sha256()
    );
    // `deployed` keeps the component compiled until the reload has picked it up.
    let reloaded = reload(st).await;
    drop(deployed);
    match reloaded {
        Ok(()) => text(StatusCode::OK, format!("{done}; reloaded\n")),
        Err((status, why)) => text(
            status,
            format!("{done}; reload {why}: the old component serves until the next reload\n"),
        ),
    }
}

/// `POST /policy/score?ip=IP&score=N[&ttl=10m]` (score 0 clears it),
/// `/policy/block?cidr=NET[&ttl=..]`, `/policy/unblock?cidr=NET`: the same changes as
/// the CLI, on the running node's policy (kernel maps or userspace tables).
async fn policy_change(st: &AdminState, path: &str, query: &str) -> Response<Body> {
    let args: std::collections::HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let ttl = match args
        .get("ttl")
        .map(|t| humantime::parse_duration(t))
        .transpose()
    {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("ttl: {e}\n")),
    };
    use crate::fleet::threats::Change;
    let change = match path {
        "/policy/score" => {
            let ip = args.get("ip").and_then(|v| v.parse().ok());
            let score = args.get("score").and_then(|v| v.parse().ok());
            match (ip, score) {
                (Some(ip), Some(score)) => Change::Score { ip, score },
                _ => return text(StatusCode::BAD_REQUEST, "need ip=ADDRESS and score=N\n"),
            }
        }
        _ => match args
            .get("cidr")
            .and_then(|v| crate::xdp::cli::parse_cidr(v).ok())
        {
            Some(net) if path == "/policy/block" => Change::Block(net),
            Some(net) => Change::Unblock(net),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "need cidr=PREFIX (or an address)\n",
                );
            }
        },
    };
    if let Change::Score { ip, score: 0 } = change {
        // Cleared by an operator: the proxy forgets what it held against the source too.
        st.threat.clear(ip);
    }
    let p = st.policy.clone();
    let done = tokio::task::spawn_blocking(move || {
        change.apply(&p, ttl).map(|changed| match change {
            Change::Score { ip, score } => format!("score {ip} = {score}\n"),
            Change::Block(net) => format!("blocked {net}\n"),
            Change::Unblock(net) if changed => format!("unblocked {net}\n"),
            Change::Unblock(net) => format!("{net} was not blocked\n"),
        })
    })
    .await;
    if let Ok(Ok(_)) = &done {
        // The same change on every node of the fleet (when this one shares).
        st.threat.share(change, ttl);
    }
    match done {
        Ok(Ok(msg)) => {
            info!(change = %msg.trim(), "source policy changed through the admin API");
            text(StatusCode::OK, msg)
        }
        Ok(Err(e)) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// `POST /cache/purge?url=URL`, `?prefix=URL`, `?tag=KEY` (Surrogate-Key / Cache-Tag),
/// or `?all=1`: removes stored responses from every tier; answers how many keys went
/// (`purged N`, and `regional N` when the regional tier is configured, which also tells
/// the other nodes to purge their in-memory tiers). A regional tier that cannot be
/// reached makes it 502: the purge is not complete.
async fn cache_purge(st: &AdminState, query: &str) -> Response<Body> {
    let args: std::collections::HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    use crate::cache::regional::Purge;
    let purge = if args.get("all").is_some_and(|v| v == "1") {
        Purge::All
    } else if let Some(url) = args.get("url") {
        // Spelled as stored: a reordered query or an explicit default port still match.
        match st.cache.canonical_url(url) {
            Some(u) => Purge::Url(u),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "url= must be absolute: scheme://host/path?query\n",
                );
            }
        }
    } else if let Some(prefix) = args.get("prefix") {
        // Host and scheme as stored (lower case, no default port); the rest as given.
        let prefix = match st.cache.canonical_url(prefix) {
            Some(p) if !prefix.contains('?') && !prefix.ends_with('/') => {
                p.trim_end_matches('/').to_string()
            }
            Some(p) if !prefix.contains('?') => p,
            _ => prefix.clone(),
        };
        Purge::Prefix(prefix)
    } else if let Some(tag) = args.get("tag") {
        Purge::Tag(tag.clone())
    } else {
        return text(
            StatusCode::BAD_REQUEST,
            "need url=, prefix=, tag= or all=1\n",
        );
    };
    let (local, regional) = st.cache.purge(&purge).await;
    let purged = if purge == Purge::All {
        "all".to_string()
    } else {
        local.to_string()
    };
    match regional {
        None => {
            info!(%purged, query, "cache purged through the admin API");
            text(StatusCode::OK, format!("purged {purged}\n"))
        }
        Some(Ok(n)) => {
            info!(%purged, regional = n, query, "cache purged through the admin API");
            text(StatusCode::OK, format!("purged {purged}\nregional {n}\n"))
        }
        Some(Err(e)) => {
            warn!(%purged, error = %e, query, "cache purge: the regional tier failed");
            text(
                StatusCode::BAD_GATEWAY,
                format!("purged {purged}\nregional tier failed: {e}\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_names_a_listener_that_ended() {
        let listeners = Arc::new(crate::server::ListenerHealth::default());
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        // One listener that keeps serving, one whose task panics, one that ends at
        // shutdown (not a failure).
        let serving = listeners.supervise(
            "http 127.0.0.1:1".into(),
            tokio::spawn(std::future::pending()),
            stop.clone(),
        );
        let failed = listeners.supervise(
            "http 127.0.0.1:2".into(),
            tokio::spawn(async { panic!("a listener bug") }),
            stop.clone(),
        );
        failed.await.unwrap();
        assert_eq!(
            health(&listeners),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "listener ended: http 127.0.0.1:2\n".into()
            )
        );
        stop_tx.send(true).unwrap();
        let later = listeners.supervise("h3 x".into(), tokio::spawn(async {}), stop);
        later.await.unwrap();
        assert_eq!(listeners.dead(), ["http 127.0.0.1:2"]);
        serving.abort();
        let fine = crate::server::ListenerHealth::default();
        assert_eq!(health(&fine), (StatusCode::OK, "ok\n".into()));
    }

    /// A PUT of `body` to the admin API at `addr`.
    async fn put(
        addr: std::net::SocketAddr,
        path: &str,
        token: &str,
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::put(path)
            .header(header::HOST, "admin")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn put_functions_deploys_a_valid_component_then_reloads() {
        use crate::functions::{
            Functions, FunctionsSettings, Runtime,
            tests::{component, scratch},
        };
        let dir = scratch("admin-put");
        let file = dir.join("app.wasm");
        std::fs::copy(component("hello"), &file).unwrap();
        let hello = std::fs::read(&file).unwrap();
        let global = FunctionsSettings {
            cache_dir: dir.join("cache"),
            max_total_instances: 8,
            max_upload_bytes: 1 << 20,
            ..Default::default()
        };
        let settings: Vec<crate::functions::FunctionSettings> = vec![
            toml::from_str(&format!("name = \"app\"\nfile = \"{}\"", file.display())).unwrap(),
        ];
        let runtime = Runtime::default();
        runtime.set_deployable(&global, &settings);

        // What the app does on a reload, as far as functions go: build them again.
        let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(1);
        let live: Arc<std::sync::Mutex<Option<Functions>>> = Arc::default();
        let (rt, l) = (runtime.clone(), live.clone());
        tokio::spawn(async move {
            while let Some(reply) = reload_rx.recv().await {
                let pool = crate::upstream::Pool::new(std::time::Duration::from_secs(1), 1);
                let built = Functions::new(
                    &rt,
                    &global,
                    &settings,
                    &std::collections::HashMap::new(),
                    &pool,
                    &std::collections::HashMap::new(),
                );
                let _ = reply.send(match built {
                    Ok(f) => {
                        *l.lock().unwrap() = Some(f);
                        Ok(())
                    }
                    Err(e) => Err(format!("{e:#}")),
                });
            }
        });
        let policy: SharedPolicy = Arc::new(std::sync::Mutex::new(Box::new(
            crate::xdp::enforce::UserspacePolicy::new(
                crate::xdp::XdpSettings::default().kernel_config(),
            ),
        )));
        let (_stop, draining) = watch::channel(false);
        let token = "0123456789abcdef-token";
        let state = AdminState {
            token: token.into(),
            metrics: Arc::new(Metrics::new(Default::default())),
            policy,
            listeners: Arc::default(),
            stats: None,
            threat: Arc::new(crate::policy::ThreatEngine::new(
                &Default::default(),
                100,
                None,
            )),
            cache: crate::cache::Store::new(&Default::default()).unwrap(),
            reload: reload_tx,
            upgrade: mpsc::channel(1).0,
            functions: runtime.clone(),
            deploying: Default::default(),
            upload_timeout: std::time::Duration::from_millis(500),
            draining,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = spawn(listener, state);

        let echo = std::fs::read(component("echo")).unwrap();
        let (status, _) = put(
            addr,
            "/functions/app",
            "wrong-token-0123456789",
            echo.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = put(addr, "/functions/nope", token, echo.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = put(addr, "/functions/app", token, b"\0asm\x01\0\0\0".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("core WebAssembly module"), "{body}");
        let (status, _) = put(addr, "/functions/app", token, vec![0; 2 << 20]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // Nothing refused touched the file or reloaded.
        assert_eq!(std::fs::read(&file).unwrap(), hello);
        assert!(live.lock().unwrap().is_none());

        let (status, body) = put(addr, "/functions/app", token, echo.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("reloaded"), "{body}");
        assert_eq!(std::fs::read(&file).unwrap(), echo);
        let functions = live.lock().unwrap().take().expect("reloaded");
        let req = Request::get("http://fn.test/after")
            .body(full(bytes::Bytes::new()))
            .unwrap();
        let resp = functions
            .handle("app", req, std::net::Ipv4Addr::LOCALHOST.into())
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(body.starts_with(b"GET /after\n"), "{body:?}");

        // An upload that stops halfway is given up, and the component in force stays.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT /functions/app HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: {}\r\n\r\n",
            hello.len()
        );
        stalled.write_all(head.as_bytes()).await.unwrap();
        stalled.write_all(&hello[..hello.len() / 2]).await.unwrap();
        let mut answer = vec![0; 512];
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            stalled.read(&mut answer),
        )
        .await
        .expect("the stalled upload was never answered")
        .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert_eq!(std::fs::read(&file).unwrap(), echo);
        admin.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
