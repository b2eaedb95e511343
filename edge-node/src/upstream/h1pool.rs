//! Keep-alive HTTP/1.1 connections to plain origins, one pool shared by all workers:
//! each worker keeps its own idle list per origin server, so a request first reuses a
//! connection that lives on its own thread (no cross-thread wakeups, no lock another
//! worker holds). Before opening a new connection a worker borrows one that another
//! worker (or the control runtime) has left idle for a while: the origin sees as few
//! connections as the node's concurrency needs, not one set per core. A borrowed
//! connection goes back to its own worker's list.
//!
//! Why not a general-purpose client: on the proxy's hot path every request paid for a
//! pool shared behind one map and lock, a connector cloned per request, and a task
//! spawned per response to watch the connection become reusable. Here a connection goes
//! back to its worker's idle list when its response body has been read to the end; a
//! body dropped early, an upgrade (101) or `Connection: close` retire it instead.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header, uri::Authority};
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    client::conn::http1,
};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::error::{Body, BoxError};

/// Idle connections older than this are closed rather than reused (origins commonly
/// close theirs after 60–120 s; a stale one costs a failed write and a retry).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin server and worker.
const MAX_IDLE_PER_SERVER: usize = 256;
/// A connection its worker has not needed for this long is surplus there: another
/// worker may borrow it rather than open one (sooner, and a worker under load would
/// keep borrowing its neighbour's connections, each use a cross-thread round trip).
const LEND_AFTER: Duration = Duration::from_millis(100);
/// After a borrow attempt found nothing, a worker waits this long before looking into
/// the other workers' lists again: under a load that opens connections all the time
/// (more concurrency than idle connections kept), every miss would otherwise lock a
/// list another worker is busy with.
const BORROW_RETRY_AFTER: Duration = Duration::from_millis(10);

/// Why an exchange failed, and whether anything reached the origin.
#[derive(Debug)]
pub struct ExchangeError {
    /// Nothing was sent: the connection could not be made.
    pub connect: bool,
    pub source: BoxError,
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.connect {
            write!(f, "connect: {}", self.source)
        } else {
            write!(f, "{}", self.source)
        }
    }
}

impl std::error::Error for ExchangeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

struct IdleConn {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl IdleConn {
    fn stale(&self) -> bool {
        self.sender.is_closed() || self.since.elapsed() >= IDLE_TIMEOUT
    }
}

/// One worker's idle connections, oldest first per server.
#[derive(Default)]
struct Slot {
    lists: HashMap<Authority, VecDeque<IdleConn>>,
    /// Check-ins since the last sweep of every list (servers no longer asked for too).
    since_sweep: u32,
    /// After a borrow attempt of this worker found nothing: when it may look again.
    borrow_again_at: Option<Instant>,
}

/// Check-ins between two sweeps of a worker's idle lists.
const SWEEP_EVERY: u32 = 4096;

/// The plain HTTP/1.1 pool: `slots[0]` for the control runtime (health checks),
/// `slots[w + 1]` for request worker `w`.
pub struct H1Pool {
    slots: Box<[Mutex<Slot>]>,
    connect_timeout: Duration,
}

/// What the idle list of a server holds for a new request.
enum Checkout {
    Ready(http1::SendRequest<Body>),
    /// Open connections whose previous exchange is still finishing (the request body
    /// still being written after an early response, or the connection's task yet to run).
    Busy,
    Empty,
}

impl H1Pool {
    pub fn new(workers: usize, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..=workers).map(|_| Mutex::default()).collect(),
            connect_timeout,
        })
    }

    fn slot(&self) -> usize {
        crate::workers::current().map_or(0, |w| w + 1) % self.slots.len()
    }

    /// The most recently used idle connection to `server` that is ready for a request
    /// (the likeliest to be alive and warm). One that is open but not ready yet stays;
    /// nothing ever waits on it.
    fn checkout(&self, slot: usize, server: &Authority) -> Checkout {
        let mut slot = self.slots[slot].lock().expect("pool lock");
        let Some(list) = slot.lists.get_mut(server) else {
            return Checkout::Empty;
        };
        let mut busy = false;
        for i in (0..list.len()).rev() {
            if list[i].sender.is_ready() {
                if let Some(conn) = list.remove(i) {
                    return Checkout::Ready(conn.sender);
                }
            } else if list[i].sender.is_closed() {
                list.remove(i);
            } else {
                busy = true;
            }
        }
        if busy {
            Checkout::Busy
        } else {
            Checkout::Empty
        }
    }

    /// An idle connection to `server` that another slot has not used for `LEND_AFTER`,
    /// and the slot it belongs to. Its oldest connection: the one its worker, which
    /// takes the newest first, needs least.
    fn borrow(&self, own: usize, server: &Authority) -> Option<(usize, http1::SendRequest<Body>)> {
        let now = Instant::now();
        let again_at = self.slots[own].lock().expect("pool lock").borrow_again_at;
        if again_at.is_some_and(|at| now < at) {
            return None;
        }
        let found = self.borrow_now(own, server);
        if found.is_none() {
            self.slots[own].lock().expect("pool lock").borrow_again_at =
                Some(now + BORROW_RETRY_AFTER);
        }
        found
    }

    fn borrow_now(
        &self,
        own: usize,
        server: &Authority,
    ) -> Option<(usize, http1::SendRequest<Body>)> {
        let n = self.slots.len();
        for home in (1..n).map(|k| (own + k) % n) {
            let mut slot = self.slots[home].lock().expect("pool lock");
            let Some(list) = slot.lists.get_mut(server) else {
                continue;
            };
            while list.front().is_some_and(IdleConn::stale) {
                list.pop_front();
            }
            if list
                .front()
                .is_some_and(|c| c.sender.is_ready() && c.since.elapsed() >= LEND_AFTER)
            {
                return list.pop_front().map(|c| (home, c.sender));
            }
        }
        None
    }

    fn checkin(&self, slot: usize, server: Authority, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut slot = self.slots[slot].lock().expect("pool lock");
        slot.since_sweep += 1;
        if slot.since_sweep >= SWEEP_EVERY {
            slot.since_sweep = 0;
            for list in slot.lists.values_mut() {
                list.retain(|c| !c.stale());
            }
            slot.lists.retain(|_, list| !list.is_empty());
        }
        let list = slot.lists.entry(server).or_default();
        // The oldest first: past the idle timeout, or over the cap, they are closed.
        while list
            .front()
            .is_some_and(|c| list.len() >= MAX_IDLE_PER_SERVER || c.stale())
        {
            list.pop_front();
        }
        list.push_back(IdleConn {
            sender,
            since: Instant::now(),
        });
    }

    async fn connect(&self, server: &Authority) -> Result<http1::SendRequest<Body>, BoxError> {
        let port = server.port_u16().unwrap_or(80);
        // An IPv6 literal comes bracketed in an authority.
        let host = server.host().trim_start_matches('[').trim_end_matches(']');
        let lookup =
            tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host((host, port)));
        let addrs: Vec<_> = match lookup.await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err(format!("{server}: {e}").into()),
            Err(_) => {
                return Err(
                    format!("{server}: no address within {:?}", self.connect_timeout).into(),
                );
            }
        };
        // Each address gets its share of the timeout, so one that drops packets does
        // not keep the others from being tried.
        let each = self.connect_timeout / addrs.len().max(1) as u32;
        let mut last = format!("{server}: no address for the server");
        let mut connected = None;
        for addr in addrs {
            match tokio::time::timeout(each, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    connected = Some(s);
                    break;
                }
                Ok(Err(e)) => last = format!("{server} ({addr}): {e}"),
                Err(_) => last = format!("{server} ({addr}): no connection within {each:?}"),
            }
        }
        let Some(stream) = connected else {
            return Err(last.into());
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(stream))
            .await?;
        // The connection runs on this thread's runtime, next to the requests using it.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "origin connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (absolute URI, as built for the server) on a pooled connection, or on
    /// a new one: a pooled connection the origin closed before our request was written
    /// is retried once on a fresh connection.
    pub async fn request(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, ExchangeError> {
        let server = req
            .uri()
            .authority()
            .cloned()
            .ok_or_else(|| ExchangeError {
                connect: true,
                source: "origin URI without an authority".into(),
            })?;
        // HTTP/1.1 wants origin-form and a Host.
        if !req.headers().contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(server.as_str())
        {
            req.headers_mut().insert(header::HOST, v);
        }
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = path.into();
        let slot = self.slot();
        let mut home = slot;
        let mut pooled = match self.checkout(slot, &server) {
            Checkout::Ready(s) => Some(s),
            Checkout::Busy => {
                // A connection that just finished an exchange may need its task to run
                // once more; give it that turn, not more.
                tokio::task::yield_now().await;
                match self.checkout(slot, &server) {
                    Checkout::Ready(s) => Some(s),
                    _ => None,
                }
            }
            Checkout::Empty => None,
        };
        if pooled.is_none()
            && let Some((lender, s)) = self.borrow(slot, &server)
        {
            home = lender;
            pooled = Some(s);
        }
        let mut req = Some(req);
        loop {
            let reused = pooled.is_some();
            let mut sender = match pooled.take() {
                Some(s) => s,
                None => {
                    // A new connection lives on this thread and joins its list.
                    home = slot;
                    self.connect(&server)
                        .await
                        .map_err(|source| ExchangeError {
                            connect: true,
                            source,
                        })?
                }
            };
            let r = req.take().expect("the request is still ours");
            match sender.try_send_request(r).await {
                Ok(resp) => {
                    // A connection that is upgraded or closes after this response
                    // cannot serve another request.
                    let reusable =
                        resp.status() != StatusCode::SWITCHING_PROTOCOLS && !closes(resp.headers());
                    let back = reusable.then(|| Checkin {
                        pool: self.clone(),
                        slot: home,
                        server: server.clone(),
                        sender,
                    });
                    return Ok(resp.map(|inner| PooledBody::new(inner, back)));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection had died meanwhile.
                    Some(r) if reused => {
                        debug!(%server, error = %e.error(), "pooled origin connection was closed; reconnecting");
                        req = Some(r);
                    }
                    // Never written on a new connection either: nothing reached the
                    // origin, as with a refused connection.
                    unsent => {
                        return Err(ExchangeError {
                            connect: unsent.is_some(),
                            source: Box::new(e.into_error()),
                        });
                    }
                },
            }
        }
    }
}

fn closes(headers: &http::HeaderMap) -> bool {
    crate::headers::has_token(headers, header::CONNECTION, "close")
}

/// A connection waiting for its response body to end before it is reused.
struct Checkin {
    pool: Arc<H1Pool>,
    /// The worker the connection lives on (not the borrower's).
    slot: usize,
    server: Authority,
    sender: http1::SendRequest<Body>,
}

/// An origin response body whose connection returns to the pool once it is read to
/// the end (dropped early, the connection closes with it).
pub struct PooledBody {
    inner: Incoming,
    checkin: Option<Checkin>,
}

impl PooledBody {
    fn new(inner: Incoming, checkin: Option<Checkin>) -> Self {
        let mut body = Self { inner, checkin };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.pool.checkin(c.slot, c.server, c.sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::{
        error::empty,
        upstream::test_origin::{Answer, TestOrigin},
    };

    fn get(origin: &TestOrigin) -> Request<Body> {
        Request::get(format!("http://{}/x", origin.addr))
            .body(empty())
            .unwrap()
    }

    /// Sends a request and reads the answer to the end, as the proxy does.
    async fn exchange(pool: &Arc<H1Pool>, origin: &TestOrigin) -> Bytes {
        let resp = pool.request(get(origin)).await.expect("answered");
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_serves_the_next_request() {
        let origin = TestOrigin::start(Answer::Ok("a")).await;
        let pool = H1Pool::new(1, Duration::from_secs(2));
        for _ in 0..3 {
            assert_eq!(exchange(&pool, &origin).await, "a");
        }
        assert_eq!((origin.connections(), origin.requests()), (1, 3));
    }

    #[tokio::test]
    async fn connection_close_or_a_body_left_unread_retires_the_connection() {
        let origin = TestOrigin::start(Answer::Close("a")).await;
        let pool = H1Pool::new(1, Duration::from_secs(2));
        exchange(&pool, &origin).await;
        exchange(&pool, &origin).await;
        assert_eq!(origin.connections(), 2);

        let origin = TestOrigin::start(Answer::Ok("a")).await;
        drop(pool.request(get(&origin)).await.expect("answered"));
        exchange(&pool, &origin).await;
        assert_eq!(origin.connections(), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_says_nothing_was_sent() {
        let addr = crate::upstream::test_origin::refusing();
        let pool = H1Pool::new(1, Duration::from_secs(2));
        let req = Request::get(format!("http://{addr}/"))
            .body(empty())
            .unwrap();
        let Err(err) = pool.request(req).await else {
            panic!("nothing listens there");
        };
        assert!(err.connect, "{err}");
    }
}
