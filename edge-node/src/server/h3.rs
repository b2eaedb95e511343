//! HTTP/3: QUIC (quinn) with the TLS listeners' certificates (ALPN h3), h3 on top, and
//! every request through the same pipeline as HTTP/1.1 and HTTP/2, bodies streaming
//! both ways. Transport concerns live here, each with why:
//! - the source policy and threat score are checked before a handshake is spent;
//! - above `h3_retry_above` handshakes in progress, clients must prove their address
//!   (Retry), so spoofed floods cannot make the node do handshake work;
//! - 0-RTT is off unless configured; then only safe methods are served from early data,
//!   others wait for the handshake to complete (a replayed flight never completes it:
//!   425 Too Early after the head timeout);
//! - streams per connection and idle time are bounded;
//! - shutdown sends GOAWAY and lets requests in flight finish within the drain period;
//! - every request worker has an endpoint of its own on a SO_REUSEPORT socket of the
//!   same address, so a connection's packets, its crypto, its streams and its requests
//!   stay on one thread (the kernel keeps a client's 4-tuple on one socket; a client
//!   whose address changes mid-connection starts a new one).
//! - a binary upgrade hands these sockets to the new process; until the old one has
//!   drained, both read them. A packet of an old connection that the new process reads
//!   is dropped there (its stateless reset carries a token the client does not know),
//!   and QUIC's loss recovery sends it again; a new connection's first packet that the
//!   old process reads is dropped (it no longer takes connections), and the client's
//!   retransmission tries again. Nothing is refused, some packets are late.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::{Buf, Bytes};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info};

use super::{HttpSettings, SharedPipeline, tls::SharedTls};
use crate::{error::BoxError, request::EarlyData, upstream::EarlyHints};

type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type SendStream = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// The QUIC server configuration for the current certificates.
pub fn quic_config(
    tls: &Arc<rustls::ServerConfig>,
    s: &HttpSettings,
) -> Result<quinn::ServerConfig> {
    let mut t = (**tls).clone();
    t.alpn_protocols = vec![b"h3".to_vec()];
    t.max_early_data_size = if s.h3_0rtt { u32::MAX } else { 0 };
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(t))
        .context("the certificates cannot serve QUIC (TLS 1.3)")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(s.max_concurrent_streams.into());
    // The peer's control stream and two QPACK streams, plus room for extensions.
    transport.max_concurrent_uni_streams(8u32.into());
    transport.max_idle_timeout(Some(
        s.h3_idle_timeout
            .try_into()
            .context("http.h3_idle_timeout is too large")?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// One UDP socket of an HTTP/3 address, for one worker.
pub struct Bound {
    socket: std::net::UdpSocket,
    worker: usize,
    /// The address the configuration named (what an upgrade hands over under).
    configured: SocketAddr,
}

impl Bound {
    /// Its address and worker, for logs and `/healthz`.
    pub fn name(&self) -> String {
        let addr = self
            .socket
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        format!("{addr} (worker {})", self.worker)
    }

    /// The socket as an upgrade hands it over.
    pub fn handover(&self) -> crate::upgrade::Socket {
        use std::os::fd::AsRawFd;
        crate::upgrade::Socket {
            kind: crate::upgrade::Kind::H3,
            configured: self.configured,
            fd: self.socket.as_raw_fd(),
        }
    }
}

/// Binds every `http.h3_listen` address (UDP), one SO_REUSEPORT socket per worker. The
/// sockets an upgraded process handed over (`inherited`) are adopted first, all of them
/// (spread over the workers): one left out would stay in the port's SO_REUSEPORT group
/// while the old process drains, and the clients the kernel hashes to it would reach
/// only the old process, which no longer takes connections.
pub fn bind(
    s: &HttpSettings,
    tls: &SharedTls,
    workers: usize,
    mut inherited: Option<&mut crate::upgrade::Inherited>,
) -> Result<Vec<Bound>> {
    // The certificates must serve QUIC before anything is bound.
    quic_config(&crate::sync::read(tls).clone(), s)?;
    let workers = workers.max(1);
    let mut out = Vec::new();
    for addr in &s.h3_listen {
        let mut at = *addr;
        let adopted = inherited
            .as_deref_mut()
            .map(|i| i.udp(*addr))
            .unwrap_or_default();
        let count = adopted.len().max(workers);
        let mut adopted = adopted.into_iter();
        for worker in 0..count {
            let socket = match adopted.next() {
                Some(s) => s,
                None => reuseport_udp(at)
                    .with_context(|| format!("cannot listen on udp {at} (HTTP/3)"))?,
            };
            // Port 0: the others join the port the first one got.
            at = socket.local_addr()?;
            out.push(Bound {
                socket,
                worker: worker % workers,
                configured: *addr,
            });
        }
        info!(addr = %at, endpoints = count, "h3 listening");
    }
    Ok(out)
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A request body arriving on an HTTP/3 stream. (The stream is only used through
/// `&mut`; SyncWrapper gives the Sync the pipeline's body type asks for.)
struct H3Body {
    recv: sync_wrapper::SyncWrapper<RecvStream>,
    done: bool,
}

impl HttpBody for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.recv.get_mut().poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(mut buf))) => {
                let bytes = buf.copy_to_bytes(buf.remaining());
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Ok(None)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Serves `bound` on its worker until `shutdown` flips; then GOAWAY on every connection
/// and up to `drain_timeout` for requests in flight.
pub fn spawn(
    bound: Bound,
    tls: SharedTls,
    pipeline: SharedPipeline,
    settings: HttpSettings,
    workers: &super::Workers,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    workers.spawn_on(bound.worker, async move {
        // Created on the worker: the endpoint's driver and its connections run there.
        let config = match quic_config(&crate::sync::read(&tls).clone(), &settings) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "HTTP/3 endpoint not started");
                return;
            }
        };
        let endpoint = match quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            bound.socket,
            Arc::new(quinn::TokioRuntime),
        ) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "HTTP/3 endpoint not started");
                return;
            }
        };
        serve(endpoint, tls, pipeline, settings, shutdown).await;
    })
}

async fn serve(
    endpoint: quinn::Endpoint,
    tls: SharedTls,
    pipeline: SharedPipeline,
    settings: HttpSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    {
        let handshaking = Arc::new(AtomicUsize::new(0));
        let mut connections = tokio::task::JoinSet::new();
        let mut tls_now = crate::sync::read(&tls).clone();
        let mut refresh = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let peer = incoming.remote_address();
                    let current = pipeline.load_full();
                    if !current.admit_connection(peer.ip()) {
                        debug!(%peer, "QUIC connection refused by the source policy");
                        incoming.refuse();
                        continue;
                    }
                    drop(current);
                    if handshaking.load(Ordering::Relaxed) >= settings.h3_retry_above
                        && !incoming.remote_address_validated()
                    {
                        // Under load: the client must echo a token before any work is done.
                        let _ = incoming.retry();
                        continue;
                    }
                    connections.spawn(connection(
                        incoming,
                        pipeline.clone(),
                        settings.clone(),
                        handshaking.clone(),
                        shutdown.clone(),
                    ));
                }
                _ = refresh.tick() => {
                    // Reloaded or renewed certificates: new connections get them.
                    let now = crate::sync::read(&tls).clone();
                    if !Arc::ptr_eq(&now, &tls_now) {
                        match quic_config(&now, &settings) {
                            Ok(c) => {
                                endpoint.set_server_config(Some(c));
                                info!("HTTP/3 certificates reloaded");
                            }
                            Err(e) => debug!(error = %format!("{e:#}"), "HTTP/3 keeps its certificates"),
                        }
                        tls_now = now;
                    }
                }
                _ = shutdown.changed() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // No new connections; the open ones got GOAWAY from their tasks.
        endpoint.set_server_config(None);
        let drained = tokio::time::timeout(settings.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            info!("HTTP/3 drain timeout reached; closing the remaining connections");
        }
        endpoint.close(
            h3::error::Code::H3_NO_ERROR
                .value()
                .try_into()
                .unwrap_or_default(),
            b"shutdown",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

async fn connection(
    incoming: quinn::Incoming,
    pipeline: SharedPipeline,
    settings: HttpSettings,
    handshaking: Arc<AtomicUsize>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    handshaking.fetch_add(1, Ordering::Relaxed);
    let established = async {
        let connecting = incoming.accept()?;
        // Early data: requests may arrive before the handshake completes; until then
        // only safe methods are served.
        let (confirm, confirmed) = watch::channel(!settings.h3_0rtt);
        if settings.h3_0rtt {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    tokio::spawn(async move {
                        accepted.await;
                        let _ = confirm.send(true);
                    });
                    return Ok::<_, quinn::ConnectionError>((conn, confirmed));
                }
                Err(connecting) => {
                    let _ = confirm.send(true);
                    return Ok((connecting.await?, confirmed));
                }
            }
        }
        Ok((connecting.await?, confirmed))
    };
    let established = tokio::time::timeout(settings.header_read_timeout, established).await;
    handshaking.fetch_sub(1, Ordering::Relaxed);
    let (conn, confirmed) = match established {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "QUIC handshake timed out");
            return;
        }
    };
    let mut h3 = match h3::server::builder()
        .max_field_section_size(settings.max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(h) => h,
        Err(e) => {
            debug!(%peer, error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    let mut requests = tokio::task::JoinSet::new();
    let mut closing = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let (pipeline, confirmed) = (pipeline.clone(), confirmed.clone());
                    let (wait, send_timeout) = (settings.header_read_timeout, settings.send_timeout);
                    let fut = async move {
                        match resolver.resolve_request().await {
                            Ok((req, stream)) => {
                                request(req, stream, peer, pipeline, confirmed, wait, send_timeout).await
                            }
                            Err(e) => debug!(%peer, error = %e, "HTTP/3 request head refused"),
                        }
                    };
                    // Boxed: a request's future is kilobytes, and a task's future is moved
                    // whole when it is spawned and when its output is taken (measured: 13 %
                    // of the node's HTTP/3 CPU went to memcpy before).
                    requests.spawn(Box::pin(fut));
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "HTTP/3 connection ended");
                    break;
                }
            },
            _ = shutdown.changed(), if !closing => {
                closing = true;
                // GOAWAY: no new requests; those in flight go on.
                let _ = h3.shutdown(0).await;
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    while requests.join_next().await.is_some() {}
}

async fn request(
    req: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    peer: SocketAddr,
    pipeline: SharedPipeline,
    confirmed: watch::Receiver<bool>,
    wait: Duration,
    send_timeout: Duration,
) {
    let (mut send, recv) = stream.split();
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // RFC 8470: a request that would do harm if replayed is not served from early
    // data; it waits for the handshake, which a replayed flight never completes.
    let too_early =
        !safe && !*confirmed.borrow() && !EarlyData::new(confirmed.clone(), wait).proven().await;
    let resp = if too_early {
        // Early data whose handshake never completed: a replayed flight, most likely.
        // At most one line a second: the rate is the attacker's to choose.
        static LOGGED_AT: AtomicU64 = AtomicU64::new(u64::MAX);
        let second = crate::clock::unix_now();
        if LOGGED_AT.swap(second, Ordering::Relaxed) != second {
            info!(%peer, method = %req.method(), path = %req.uri().path(), status = 425,
                "HTTP/3 request from early data refused: the handshake did not complete");
        }
        let mut r = Response::new(crate::error::full("425 Too Early\n"));
        *r.status_mut() = StatusCode::TOO_EARLY;
        r
    } else {
        let current = pipeline.load_full();
        // Served from early data: the client's address is not proven yet.
        let early = !*confirmed.borrow();
        let mut req = req.map(|()| H3Body {
            recv: sync_wrapper::SyncWrapper::new(recv),
            done: false,
        });
        if early {
            req.extensions_mut()
                .insert(EarlyData::new(confirmed.clone(), wait));
        }
        let hints = EarlyHints::default();
        req.extensions_mut().insert(hints.clone());
        // Boxed as well (measured: 7.2 against 7.9 µs/req of node CPU with the request task's
        // box alone): the task's own future stays small, and so does what it moves.
        let mut answer = Box::pin(current.handle(req, peer, "https"));
        let mut hinted = 0;
        let resp = loop {
            tokio::select! {
                resp = &mut answer => break resp,
                // The origin's 103 Early Hints, while the answer is still coming
                // (RFC 9114 4.1: interim responses precede the final one).
                arrived = hints.next(), if hinted < EarlyHints::MAX => {
                    for links in arrived.into_iter().take(EarlyHints::MAX - hinted) {
                        hinted += 1;
                        let mut interim = Response::new(());
                        *interim.status_mut() = StatusCode::from_u16(103).expect("103");
                        *interim.headers_mut() = links;
                        if let Err(e) = send.send_response(interim).await {
                            debug!(%peer, error = %e, "HTTP/3 early hints not sent");
                        }
                    }
                }
            }
        };
        resp.map(|b| super::send_deadline::guard(b, send_timeout))
    };
    if let Err(e) = respond(&mut send, resp).await {
        debug!(%peer, error = %e, "HTTP/3 response not completed");
    }
}

async fn respond(
    send: &mut SendStream,
    resp: Response<crate::error::Body>,
) -> Result<(), BoxError> {
    let (mut parts, mut body) = resp.into_parts();
    // Connection-specific fields do not exist in HTTP/3 (RFC 9114 4.2).
    parts.headers.remove(header::CONNECTION);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.version = http::Version::HTTP_3;
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Err(e);
            }
        };
        match frame.into_data() {
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}
