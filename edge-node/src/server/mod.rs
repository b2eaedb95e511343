//! HTTP listeners: plain TCP with HTTP/1.1 and HTTP/2 (h2c prior knowledge) on the same
//! port, every request handed to the pipeline. Transport concerns live here, each with
//! the reason it sits at the edge of the server.

pub mod framing;
pub mod h3;
pub mod settings;
pub mod tls;
pub mod workers;

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{debug, info};

pub use settings::HttpSettings;
pub use workers::Workers;

use crate::pipeline::Pipeline;

/// The pipeline in force; a reload swaps it while requests in flight keep theirs.
/// The pipeline, replaced whole on reload; read for every request (no lock to bounce
/// between the workers).
pub type SharedPipeline = Arc<arc_swap::ArcSwap<Pipeline>>;

/// A bound listener and whether it speaks TLS.
pub struct Bound {
    pub listener: TcpListener,
    pub tls: bool,
}

/// Binds every configured address (before anything else starts, so a taken port fails
/// the start loudly) and returns the bound listeners.
pub async fn bind(settings: &HttpSettings) -> Result<Vec<Bound>> {
    let mut out = Vec::new();
    for (addrs, tls) in [(&settings.listen, false), (&settings.tls_listen, true)] {
        for addr in addrs {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let what = if tls {
                "https listening"
            } else {
                "http listening"
            };
            info!(addr = %listener.local_addr()?, "{what}");
            out.push(Bound { listener, tls });
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Slowloris: a client must finish its request head in time, or the connection
        // is closed before it ties up anything else.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .max_headers(settings.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.max_concurrent_streams)
            // CONTINUATION floods: a header block is bounded like an HTTP/1 head.
            .max_header_list_size(settings.max_header_bytes as u32)
            // Rapid reset (CVE-2023-44487): streams the client opens and cancels before
            // they are served end the connection with ENHANCE_YOUR_CALM past this many.
            .max_pending_accept_reset_streams(20)
            // Streams the client makes the server reset (protocol errors) are bounded too.
            .max_local_error_reset_streams(256);
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            debug!(error = %e, "accept failed");
                            continue;
                        }
                    };
                    // The source policy, where the kernel is not enforcing it, and the
                    // threat score: a refused source's connection is closed unread.
                    let current = pipeline.load_full();
                    if !current.admit_connection(peer.ip()) {
                        debug!(%peer, "connection refused by the source policy");
                        continue;
                    }
                    let threat = current.threat().clone();
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
                    let service = service_fn(move |req: Request<Incoming>| {
                        let current = p.load_full();
                        // Boxed: the pipeline's future is kilobytes, and hyper moves a
                        // request's future into its slot (HTTP/1.1) or its own task (HTTP/2).
                        Box::pin(async move {
                            Ok::<_, std::convert::Infallible>(current.handle(req, peer, scheme).await)
                        })
                    });
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    let tls = tls.as_ref().map(|t| crate::sync::read(t).clone());
                    let handshake_timeout = settings.header_read_timeout;
                    let max_head = settings.max_header_bytes;
                    workers.spawn_connection(async move {
                        let stream = match tokio::net::TcpStream::from_std(stream) {
                            Ok(s) => s,
                            Err(e) => {
                                debug!(%peer, error = %e, "cannot register the connection");
                                return;
                            }
                        };
                        let result = match tls {
                            None => {
                                let stream = framing::FramingGuard::new(stream, peer, max_head);
                                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                                watcher.watch(conn).await
                            }
                            Some(config) => {
                                // The handshake counts against the same head timeout.
                                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                                let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
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
                                let stream = framing::FramingGuard::new(stream, peer, max_head);
                                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                                watcher.watch(conn).await
                            }
                        };
                        if let Err(e) = result {
                            debug!(%peer, error = %e, "connection ended with an error");
                            // Requests hyper could not even parse count against the source.
                            if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse) {
                                threat.signal(peer.ip(), crate::policy::Signal::MalformedRequest, true);
                            }
                        }
                    });
                }
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(settings.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            info!("drain timeout reached; closing the remaining connections");
        }
    })
}

/// The first bound address (tests and logs).
pub fn local_addr(l: &TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
