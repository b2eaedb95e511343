//! HTTP listeners: plain TCP with HTTP/1.1 and HTTP/2 (h2c prior knowledge) on the same
//! port, every request handed to the pipeline. Transport concerns live here, each with
//! the reason it sits at the edge of the server.

pub mod conn;
pub mod framing;
pub mod h2guard;
pub mod h3;
pub mod send_deadline;

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use hyper::{
    Request,
    body::Incoming,
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

// Re-exported: their old paths under `server` keep working.
pub use crate::{
    config::HttpSettings,
    tls,
    workers::{self, Workers},
};

use crate::pipeline::Pipeline;

/// The pipeline in force; a reload swaps it while requests in flight keep theirs.
/// The pipeline, replaced whole on reload; read for every request (no lock to bounce
/// between the workers).
pub type SharedPipeline = Arc<arc_swap::ArcSwap<Pipeline>>;

/// Which listeners have ended while the node was not shutting down. A listener that
/// is gone serves nobody: `/healthz` says so instead of "ok".
#[derive(Default)]
pub struct ListenerHealth {
    dead: std::sync::Mutex<Vec<String>>,
}

impl ListenerHealth {
    /// The listeners that ended, by name.
    pub fn dead(&self) -> Vec<String> {
        crate::sync::lock(&self.dead).clone()
    }

    /// Watches a listener's task: if it ends (returns or panics) before `stopping`
    /// flips, it is recorded as dead and logged. The returned task ends with it.
    pub fn supervise(
        self: &Arc<Self>,
        name: String,
        task: JoinHandle<()>,
        stopping: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            let ended = task.await;
            if *stopping.borrow() {
                return;
            }
            match ended {
                Ok(()) => tracing::error!(listener = %name, "listener ended: it serves nobody now"),
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "listener task failed: it serves nobody now")
                }
            }
            crate::sync::lock(&health.dead).push(name);
        })
    }
}

/// A bound listener, whether it speaks TLS, and the address the configuration named.
pub struct Bound {
    pub listener: TcpListener,
    pub tls: bool,
    pub configured: SocketAddr,
}

/// Binds every configured address (before anything else starts, so a taken port fails
/// the start loudly) and returns the bound listeners. A listener the process being
/// upgraded handed over (`inherited`) is adopted instead of bound.
pub async fn bind(
    settings: &HttpSettings,
    mut inherited: Option<&mut crate::upgrade::Inherited>,
) -> Result<Vec<Bound>> {
    use crate::upgrade::Kind;
    let mut out = Vec::new();
    for (addrs, tls) in [(&settings.listen, false), (&settings.tls_listen, true)] {
        for addr in addrs {
            let kind = if tls { Kind::Https } else { Kind::Http };
            let adopted = inherited
                .as_deref_mut()
                .and_then(|i| i.tcp(kind, *addr))
                .map(TcpListener::from_std)
                .transpose()?;
            let listener = match adopted {
                Some(l) => l,
                None => TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            };
            let what = if tls {
                "https listening"
            } else {
                "http listening"
            };
            info!(addr = %listener.local_addr()?, "{what}");
            out.push(Bound {
                listener,
                tls,
                configured: *addr,
            });
        }
    }
    Ok(out)
}

/// Serves `listener` until `shutdown` flips, then stops accepting and waits (up to the
/// drain timeout) for connections in flight. Connections are served on `workers`.
pub fn spawn(
    listener: TcpListener,
    tls: Option<tls::SharedTls>,
    pipeline: SharedPipeline,
    settings: HttpSettings,
    workers: Workers,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut h1 = http1::Builder::new();
        // Slowloris: a client must finish its request head in time, or the connection
        // is closed before it ties up anything else.
        h1.timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .max_headers(settings.max_headers);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(settings.max_concurrent_streams)
            // WebSockets over HTTP/2 (RFC 8441), for rooms; other routes refuse them.
            .enable_connect_protocol()
            // CONTINUATION floods: a header block is bounded like an HTTP/1 head.
            .max_header_list_size(settings.max_header_bytes as u32)
            // Rapid reset (CVE-2023-44487): streams the client opens and cancels before
            // they are served end the connection with ENHANCE_YOUR_CALM past this many.
            .max_pending_accept_reset_streams(20)
            // Streams the client makes the server reset (protocol errors) are bounded too.
            .max_local_error_reset_streams(256)
            // A peer that vanished with streams open (no FIN) stops answering PINGs: the
            // idle timer does not cover it, since its requests are still in progress.
            .keep_alive_interval(Some(settings.idle_timeout))
            .keep_alive_timeout(settings.header_read_timeout);
        let builders = Arc::new((h1, h2));
        // Every connection task holds a clone; the drain waits until none is left.
        let (live, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
        let mut accept_errors = AcceptBackoff::default();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => {
                            accept_errors.reset();
                            a
                        }
                        Err(e) => {
                            accept_errors.failed(&e).await;
                            continue;
                        }
                    };
                    // Load shedding at the door: past the cap a connection is closed at
                    // once, so its client learns now (and can go elsewhere) instead of
                    // waiting in the kernel's backlog for a slot that may never come.
                    if workers.connections() >= settings.max_connections {
                        pipeline.load().metrics().connection_shed();
                        debug!(%peer, "connection shed: http.max_connections open");
                        drop(stream);
                        continue;
                    }
                    // Every deadline of the connection counts from here.
                    let opened = tokio::time::Instant::now();
                    // The source policy, where the kernel is not enforcing it, and the
                    // threat score: a refused source's connection is closed unread.
                    let current = pipeline.load_full();
                    if !current.admit_connection(peer.ip()) {
                        debug!(%peer, "connection refused by the source policy");
                        continue;
                    }
                    let threat = current.threat().clone();
                    let source = current.connection_source(peer.ip());
                    drop(current);
                    let _ = stream.set_nodelay(true);
                    // Off this runtime's poller: the worker registers it with its own, so
                    // readiness wakes the worker directly.
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            debug!(%peer, error = %e, "cannot hand the connection over");
                            continue;
                        }
                    };
                    let p = pipeline.clone();
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    let send_timeout = settings.send_timeout;
                    let activity = conn::Activity::new(opened);
                    let requests = activity.clone();
                    let draining = shutdown.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let current = p.load_full();
                        // Until its response is sent the connection is not idle.
                        let in_flight = requests.begin();
                        let h1 = req.version() < http::Version::HTTP_2;
                        let draining = draining.clone();
                        // Boxed: the pipeline's future is kilobytes, and hyper moves a
                        // request's future into its slot (HTTP/1.1) or its own task (HTTP/2).
                        Box::pin(async move {
                            let mut resp = current.handle(req, peer, scheme).await;
                            // Draining (shutdown, upgrade): an HTTP/1 client learns from
                            // this answer that the connection ends with it, instead of
                            // sending its next request into a closing connection (hyper
                            // closes after the answer but does not say so).
                            if h1
                                && *draining.borrow()
                                && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                            {
                                resp.headers_mut().insert(
                                    http::header::CONNECTION,
                                    http::HeaderValue::from_static("close"),
                                );
                            }
                            let resp = resp.map(|b| send_deadline::guard(b, send_timeout));
                            Ok::<_, std::convert::Infallible>(conn::Tracked::wrap(resp, in_flight))
                        })
                    });
                    let builders = builders.clone();
                    let tls = tls.as_ref().map(|t| crate::sync::read(t).clone());
                    let first_request = opened + settings.header_read_timeout;
                    let idle_timeout = settings.idle_timeout;
                    let max_head = settings.max_header_bytes;
                    let drain = shutdown.clone();
                    let live = live.clone();
                    // An HTTP/2 frame flood ends the connection and counts against its
                    // source.
                    let flood_signal = {
                        let threat = threat.clone();
                        move |flood: h2guard::Flood| {
                            info!(%peer, %flood, "HTTP/2 frame flood: connection closed");
                            threat.signal(source, crate::policy::Signal::MalformedRequest);
                        }
                    };
                    workers.spawn_connection(async move {
                        let _live = live;
                        let stream = match tokio::net::TcpStream::from_std(stream) {
                            Ok(s) => s,
                            Err(e) => {
                                debug!(%peer, error = %e, "cannot register the connection");
                                return;
                            }
                        };
                        let (h1, h2) = &*builders;
                        // The protocol: on TLS what ALPN chose (a client that negotiated h2
                        // and sends HTTP/1 gets a GOAWAY, one that negotiated http/1.1 is
                        // never served HTTP/2); in the clear, HTTP/2 with prior knowledge
                        // when the connection starts with its preface.
                        let result = match tls {
                            None => {
                                let sniffed = tokio::time::timeout_at(first_request, conn::sniff(stream)).await;
                                match sniffed {
                                    Ok(Ok((true, stream))) => {
                                        let stream = h2guard::H2FloodGuard::new(stream, flood_signal);
                                        let conn = h2.serve_connection(TokioIo::new(stream), service);
                                        conn::drive(conn, &activity, first_request, idle_timeout, drain).await
                                    }
                                    Ok(Ok((false, stream))) => {
                                        let stream = framing::FramingGuard::new(stream, peer, max_head);
                                        let conn = h1.serve_connection(TokioIo::new(stream), service).with_upgrades();
                                        conn::drive(conn, &activity, first_request, idle_timeout, drain).await
                                    }
                                    Ok(Err(_)) => return,
                                    Err(_) => {
                                        debug!(%peer, "connection closed: no request head within header_read_timeout");
                                        return;
                                    }
                                }
                            }
                            Some(config) => {
                                // The handshake counts against the first request's deadline.
                                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                                let stream = match tokio::time::timeout_at(first_request, acceptor.accept(stream)).await {
                                    Ok(Ok(s)) => s,
                                    Ok(Err(e)) => {
                                        debug!(%peer, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        debug!(%peer, "TLS handshake timed out");
                                        return;
                                    }
                                };
                                // A TLS-ALPN-01 validation ends with its handshake.
                                if stream.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                                    debug!(%peer, "acme-tls/1 handshake done: closed");
                                    return;
                                }
                                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                    let stream = match tokio::time::timeout_at(first_request, conn::sniff(stream)).await {
                                        Ok(Ok((true, stream))) => stream,
                                        Ok(Ok((false, mut stream))) => {
                                            debug!(%peer, "h2 negotiated, no HTTP/2 preface: GOAWAY");
                                            threat.signal(source, crate::policy::Signal::MalformedRequest);
                                            let _ = tokio::time::timeout_at(first_request, conn::refuse_h2(stream.get_mut())).await;
                                            return;
                                        }
                                        Ok(Err(_)) => return,
                                        Err(_) => {
                                            debug!(%peer, "connection closed: no request head within header_read_timeout");
                                            return;
                                        }
                                    };
                                    let stream = h2guard::H2FloodGuard::new(stream, flood_signal);
                                    let conn = h2.serve_connection(TokioIo::new(stream), service);
                                    conn::drive(conn, &activity, first_request, idle_timeout, drain).await
                                } else {
                                    let stream = framing::FramingGuard::new(stream, peer, max_head);
                                    let conn = h1.serve_connection(TokioIo::new(stream), service).with_upgrades();
                                    conn::drive(conn, &activity, first_request, idle_timeout, drain).await
                                }
                            }
                        };
                        match result {
                            Ok(None) => {}
                            Ok(Some(conn::Expired::FirstRequest)) => {
                                debug!(%peer, "connection closed: no request head within header_read_timeout");
                            }
                            Ok(Some(conn::Expired::Idle)) => {
                                debug!(%peer, "connection closed: idle for idle_timeout");
                            }
                            Err(e) => {
                                debug!(%peer, error = %e, "connection ended with an error");
                                // Requests hyper could not even parse count against the source.
                                if e.is_parse() {
                                    threat.signal(source, crate::policy::Signal::MalformedRequest);
                                }
                            }
                        }
                    });
                }
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        drop(live);
        if tokio::time::timeout(settings.drain_timeout, all_closed.recv())
            .await
            .is_err()
        {
            info!("drain timeout reached; closing the remaining connections");
        }
    })
}

/// Backoff for accept errors. Most (EMFILE, ENFILE, ENOBUFS) last until something
/// closes, and retrying at once would spin a core; a client that gave up before its
/// connection was taken (ECONNABORTED) is not one of them.
struct AcceptBackoff {
    delay: std::time::Duration,
    failed: u64,
    last_log: Option<tokio::time::Instant>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            delay: Self::FIRST,
            failed: 0,
            last_log: None,
        }
    }
}

impl AcceptBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(10);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);
    /// One warning per this long while accepts keep failing.
    const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn reset(&mut self) {
        self.delay = Self::FIRST;
    }

    async fn failed(&mut self, e: &std::io::Error) {
        use std::io::ErrorKind::*;
        if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
            debug!(error = %e, "accept failed");
            return;
        }
        self.failed += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Self::LOG_EVERY)
        {
            warn!(error = %e, failed = self.failed, backoff_ms = self.delay.as_millis() as u64, "accept failing; backing off");
            self.last_log = Some(now);
            self.failed = 0;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Self::MAX);
    }
}

/// The first bound address (tests and logs).
pub fn local_addr(l: &TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
