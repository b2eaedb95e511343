//! HTTP listeners: plain TCP with HTTP/1.1 and HTTP/2 (h2c prior knowledge) on the same
//! port, every request handed to the pipeline. Transport concerns live here, each with
//! the reason it sits at the edge of the server.

pub mod settings;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, Result};
use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{debug, info};

pub use settings::HttpSettings;

use crate::pipeline::Pipeline;

/// The pipeline in force; a reload swaps it while requests in flight keep theirs.
pub type SharedPipeline = Arc<RwLock<Arc<Pipeline>>>;

/// Binds every configured address (before anything else starts, so a taken port fails
/// the start loudly) and returns the bound listeners.
pub async fn bind(settings: &HttpSettings) -> Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in &settings.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        info!(addr = %l.local_addr()?, "http listening");
        out.push(l);
    }
    Ok(out)
}

/// Serves `listener` until `shutdown` flips, then stops accepting and waits (up to the
/// drain timeout) for connections in flight.
pub fn spawn(
    listener: TcpListener,
    pipeline: SharedPipeline,
    settings: HttpSettings,
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
            .max_buf_size(settings.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.max_concurrent_streams)
            .max_header_list_size(settings.max_header_bytes as u32);
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
                    let _ = stream.set_nodelay(true);
                    let p = pipeline.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let current = p.read().expect("pipeline lock").clone();
                        async move { Ok::<_, std::convert::Infallible>(current.handle(req, peer).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(%peer, error = %e, "connection ended with an error");
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
