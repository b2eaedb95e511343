//! Protocol upgrades (WebSocket and the like) over HTTP/1.1: the request's Upgrade goes
//! to the origin, and the connection becomes a tunnel only after the origin's own
//! `101 Switching Protocols`. Any other answer is an ordinary response.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use crate::{
    error::{Body, EdgeError, ErrorKind, empty},
    headers,
};

/// A client's request to switch protocols, taken before the early phase strips the
/// hop-by-hop headers that carry it.
pub struct Requested {
    protocol: HeaderValue,
    client: OnUpgrade,
}

/// The upgrade the client asked for (HTTP/1.1, `Connection: upgrade` and `Upgrade`).
pub fn requested<B>(req: &mut Request<B>) -> Option<Requested> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = headers::has_token(req.headers(), header::CONNECTION, "upgrade");
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    if !asks {
        return None;
    }
    let client = hyper::upgrade::on(req);
    Some(Requested { protocol, client })
}

impl Requested {
    /// The protocol asked for (`Upgrade:`).
    pub fn protocol(&self) -> &HeaderValue {
        &self.protocol
    }

    /// The client's connection once the response switched it (for a handler that
    /// speaks the protocol itself).
    pub fn into_client(self) -> OnUpgrade {
        self.client
    }

    /// Puts the upgrade back on the request toward the origin.
    pub fn forward(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// The origin agreed (101): answer the client with the origin's 101 and join the two
    /// connections once both sides have switched.
    /// A tunnel that carries no byte either way for `idle` is closed (both sides), so an
    /// abandoned WebSocket holds neither a client slot nor an origin connection.
    pub fn tunnel(
        self,
        mut resp: Response<Body>,
        upstream: String,
        idle: std::time::Duration,
    ) -> Response<Body> {
        let origin = hyper::upgrade::on(&mut resp);
        let protocol = resp
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(self.protocol);
        let client = self.client;
        tokio::spawn(async move {
            let (client, origin) = match tokio::try_join!(client, origin) {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(%upstream, error = %e, "upgrade did not complete");
                    return;
                }
            };
            let traffic = Arc::new(AtomicU64::new(0));
            let mut c = Counted {
                inner: TokioIo::new(client),
                traffic: traffic.clone(),
            };
            let mut o = TokioIo::new(origin);
            let copy = tokio::io::copy_bidirectional(&mut c, &mut o);
            let idle_watch = async {
                let mut seen = u64::MAX;
                loop {
                    tokio::time::sleep(idle).await;
                    let now = traffic.load(Ordering::Relaxed);
                    if now == seen {
                        return;
                    }
                    seen = now;
                }
            };
            tokio::select! {
                done = copy => match done {
                    Ok((up, down)) => debug!(%upstream, up, down, "upgraded connection closed"),
                    Err(e) => debug!(%upstream, error = %e, "upgraded connection ended"),
                },
                () = idle_watch => debug!(%upstream, ?idle, "upgraded connection idle: closed"),
            }
        });
        let (mut parts, _) = resp.into_parts();
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
        Response::from_parts(parts, empty())
    }
}

/// The client's side of a tunnel, counting the reads and writes that moved bytes.
struct Counted<S> {
    inner: S,
    traffic: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.traffic.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.traffic.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A 101 the client did not ask for cannot be relayed.
pub fn unexpected_switch(resp: &Response<Body>) -> Result<(), EdgeError> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(EdgeError::new(
            ErrorKind::UpstreamFailed,
            "origin switched protocols without being asked",
        ));
    }
    Ok(())
}
