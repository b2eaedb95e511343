//! One client connection's life after accept: every phase has a deadline, so a
//! connection that never starts, stalls between requests or sits idle gives its socket
//! and its worker slot back.
//!
//! - accept → first complete request head: `header_read_timeout`, whatever the phase
//!   (TLS handshake, the HTTP/2 preface, an HTTP/1 request line; hyper's own head timer
//!   starts only once hyper has the connection, after the auto builder saw 24 bytes or
//!   the framing guard passed a complete line);
//! - between requests: `idle_timeout` with no request in progress (HTTP/1.1 keep-alive
//!   and HTTP/2; hyper's head timer also holds an HTTP/1.1 client to
//!   `header_read_timeout` for its next head);
//! - an HTTP/2 peer that stops answering PINGs is gone (hyper's keep-alive, set in
//!   `server::spawn`).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::watch,
    time::Instant,
};

use crate::error::{Body, BoxError};

/// What the deadlines of one connection watch: requests in progress, and when the
/// connection last became idle.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// Requests begun (their head complete) on the connection.
    begun: AtomicU64,
    /// Requests whose response has not been sent completely.
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last request in progress ended.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub fn new(opened: Instant) -> Arc<Self> {
        Arc::new(Self {
            opened,
            begun: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// A request's head is complete: the connection is busy until the guard (kept by
    /// the response body) is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.begun.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.idle_since_ms.load(Relaxed))
    }
}

/// A request in progress; dropped with its response body (sent or abandoned).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms
            .store(a.opened.elapsed().as_millis() as u64, Relaxed);
        a.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its request counted as in progress until it is done.
pub struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl Tracked {
    pub fn wrap(resp: http::Response<Body>, in_flight: InFlight) -> http::Response<Body> {
        resp.map(|inner| {
            Body::new(Self {
                inner,
                _in_flight: in_flight,
            })
        })
    }
}

impl HttpBody for Tracked {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A served connection the deadlines and the drain can ask to finish.
pub trait Served: Future<Output = Result<(), hyper::Error>> {
    /// HTTP/1: each answer can say it is the last (`Connection: close`); HTTP/2 has
    /// GOAWAY for the whole connection instead.
    const CLOSES_PER_ANSWER: bool;

    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Served for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
{
    const CLOSES_PER_ANSWER: bool = true;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> Served for hyper::server::conn::http2::Connection<I, S, hyper_util::rt::TokioExecutor>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    const CLOSES_PER_ANSWER: bool = false;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// How a connection ended, when a deadline ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head within `header_read_timeout` of the accept.
    FirstRequest,
    /// No request in progress for `idle_timeout`.
    Idle,
}

/// Closing after a deadline waits this long for a graceful end (GOAWAY, a response
/// finishing) before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// While draining, how often a connection that is not finishing yet looks again.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// While draining, how long an HTTP/1 connection may sit idle between answers before it
/// is closed: a client sending requests back to back gets its next one answered (with
/// `Connection: close`) instead of racing a close.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Whether a draining connection is asked to finish now (`graceful_shutdown`); true once
/// it has been.
///
/// - Its first request not read yet: not now. The connection was accepted just before
///   the drain began and its request may sit unread in the socket: closing now would
///   reset it, and no client resends a request on a fresh connection. It is served (the
///   first-request deadline still holds), then finishes as below.
/// - HTTP/2: now (GOAWAY; streams the client already opened are served).
/// - HTTP/1: its next answer says `Connection: close` (see `server::spawn`) and ends it;
///   once it has sat idle between answers for DRAIN_IDLE_GRACE (at once for one idle
///   that long already), it is closed.
fn drain_step<C: Served>(conn: Pin<&mut C>, activity: &Activity) -> bool {
    if activity.begun.load(Relaxed) == 0 {
        return false;
    }
    let idle_long = activity.in_flight.load(Relaxed) == 0
        && activity.idle_since() + DRAIN_IDLE_GRACE <= Instant::now();
    if C::CLOSES_PER_ANSWER && !idle_long {
        return false;
    }
    conn.graceful_shutdown();
    true
}

/// Serves `conn` until it ends, a deadline passes, or the drain (`shutdown` true) asks
/// it to finish. `first_request` is the instant by which a first request head must be
/// complete (accept + `header_read_timeout`).
pub async fn drive<C: Served>(
    conn: C,
    activity: &Activity,
    first_request: Instant,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Expired>, hyper::Error> {
    let mut conn = std::pin::pin!(conn);
    let timer = tokio::time::sleep_until(first_request);
    let mut timer = std::pin::pin!(timer);
    let mut draining = *shutdown.borrow();
    // Draining, a connection is asked to finish when `drain_step` says so; until then
    // it is looked at every DRAIN_POLL.
    let mut drain_poll = None;
    if draining && !drain_step(conn.as_mut(), activity) {
        drain_poll = Some(tokio::time::interval(DRAIN_POLL));
    }
    let mut expired = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => return r.map(|()| expired),
            changed = shutdown.changed(), if !draining => {
                // The sender gone counts as a drain too.
                if changed.is_err() || *shutdown.borrow() {
                    draining = true;
                    if !drain_step(conn.as_mut(), activity) {
                        drain_poll = Some(tokio::time::interval(DRAIN_POLL));
                    }
                }
            }
            _ = async { drain_poll.as_mut().expect("guarded").tick().await }, if drain_poll.is_some() => {
                if drain_step(conn.as_mut(), activity) {
                    drain_poll = None;
                }
            }
            () = timer.as_mut() => {
                if expired.is_some() {
                    // The graceful end took too long: dropping the connection closes it.
                    return Ok(expired);
                }
                let now = Instant::now();
                let next = if activity.begun.load(Relaxed) == 0 {
                    // Nothing begun, nothing to finish: dropping it closes it.
                    return Ok(Some(Expired::FirstRequest));
                } else if activity.in_flight.load(Relaxed) > 0 {
                    Ok(now + idle_timeout)
                } else {
                    let at = activity.idle_since() + idle_timeout;
                    if at <= now { Err(Expired::Idle) } else { Ok(at) }
                };
                match next {
                    Ok(at) => timer.as_mut().reset(at),
                    Err(why) => {
                        expired = Some(why);
                        conn.as_mut().graceful_shutdown();
                        timer.as_mut().reset(now + CLOSE_GRACE);
                    }
                }
            }
        }
    }
}
/// The HTTP/2 connection preface (RFC 9113 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the start of a connection until it is the whole HTTP/2 preface or cannot be
/// (at most 24 bytes); what was read is put back by [`Replayed`].
pub async fn sniff<S: AsyncRead + Unpin>(mut io: S) -> io::Result<(bool, Replayed<S>)> {
    use tokio::io::AsyncReadExt;
    let mut got = [0u8; 24];
    let mut len = 0;
    while len < got.len() {
        let n = io.read(&mut got[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let matches = got[len..len + n] == H2_PREFACE[len..len + n];
        len += n;
        if !matches {
            break;
        }
    }
    Ok((
        got[..len] == H2_PREFACE[..],
        Replayed {
            got,
            len,
            at: 0,
            inner: io,
        },
    ))
}

/// A client that negotiated h2 and did not send the preface gets SETTINGS and
/// GOAWAY(PROTOCOL_ERROR) (h2 itself would close without a GOAWAY).
pub async fn refuse_h2<S: AsyncWrite + Unpin>(io: &mut S) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    // SETTINGS (empty), then GOAWAY: last stream 0, PROTOCOL_ERROR (0x1).
    let mut out = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
    out.extend_from_slice(&[0, 0, 8, 7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    io.write_all(&out).await?;
    io.shutdown().await
}

/// `inner` with the bytes [`sniff`] read put back in front.
pub struct Replayed<S> {
    got: [u8; 24],
    len: usize,
    at: usize,
    inner: S,
}

impl<S> Replayed<S> {
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.len {
            let n = (this.len - this.at).min(buf.remaining());
            buf.put_slice(&this.got[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
