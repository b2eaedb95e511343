//! One request to an upstream: a server chosen by the balancer, the response and total
//! timeouts, passive health, and retries on another server within the retry budget (only
//! requests that can be sent twice).

use std::{
    net::IpAddr,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Method, Request, Response, uri::PathAndQuery};
use http_body_util::{BodyExt, Either};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tracing::warn;

use super::{Pool, Upstream, h1pool::PooledBody, health::InFlight};
use crate::error::{Body, BoxError, EdgeError, ErrorKind, empty};

/// A request extension: where the `103 Early Hints` an origin sends before its answer
/// go, set by a listener that can pass them on to its client (HTTP/3: hyper's HTTP/1.1
/// and HTTP/2 servers cannot send a 1xx). Only their `Link` fields travel (what
/// browsers act on; nothing else an origin put there reaches clients), and they are
/// never stored: they are this exchange's, not the response's. At most
/// [`EarlyHints::MAX`] wait at once; more are dropped.
///
/// A queue under a lock rather than a channel: every HTTP/3 request carries one and
/// almost none receive a hint, and a tokio channel allocates a block of slots up front.
#[derive(Clone, Default)]
pub struct EarlyHints(std::sync::Arc<HintQueue>);

#[derive(Default)]
struct HintQueue {
    waiting: std::sync::Mutex<Vec<http::HeaderMap>>,
    arrived: tokio::sync::Notify,
}

impl EarlyHints {
    /// Most hints held at once, and most a listener passes on per request: an origin
    /// sending more is not giving hints any more.
    pub const MAX: usize = 4;

    /// The hints that arrived since the last call; waits for at least one.
    pub async fn next(&self) -> Vec<http::HeaderMap> {
        loop {
            let arrived = std::mem::take(&mut *crate::sync::lock(&self.0.waiting));
            if !arrived.is_empty() {
                return arrived;
            }
            self.0.arrived.notified().await;
        }
    }

    fn push(&self, links: http::HeaderMap) {
        let mut waiting = crate::sync::lock(&self.0.waiting);
        if waiting.len() < Self::MAX {
            waiting.push(links);
            drop(waiting);
            // A permit is kept when nobody waits yet: no hint is missed.
            self.0.arrived.notify_one();
        }
    }

    /// Asks hyper to pass the 103s of `out`'s exchange on (HTTP/1.1 origins).
    fn watch(self, out: &mut Request<Body>) {
        hyper::ext::on_informational(out, move |r| {
            if r.status() != http::StatusCode::from_u16(103).expect("103") {
                return;
            }
            let mut links = http::HeaderMap::new();
            for v in r.headers().get_all(http::header::LINK) {
                links.append(http::header::LINK, v.clone());
            }
            if !links.is_empty() {
                self.push(links);
            }
        });
    }
}

impl Pool {
    /// Sends `req` to one of the upstream's servers; on a connection failure, another
    /// server while the retry budget allows (only requests that can be sent twice).
    pub async fn send(
        &self,
        up: &Upstream,
        req: Request<Body>,
        body_is_empty: bool,
        client_ip: IpAddr,
    ) -> Result<Response<Body>, EdgeError> {
        let (parts, body) = req.into_parts();
        // A body cannot be replayed; a request without one can, when nothing reached
        // the origin (connect failures) or the method is idempotent.
        let replayable = body_is_empty;
        let idempotent = is_idempotent(&parts.method);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // Hashing the key (the client IP formatted, by default) is work only the hash
        // ring needs.
        let key = if up.balancer.uses_key() {
            up.request_key(&parts, client_ip)
        } else {
            0
        };
        // Retries go to another server: a pool of one has no use for the budget (and its
        // lock, shared by every worker).
        if up.servers.len() > 1 {
            up.budget.deposit();
        }
        let all_out = !up.states.iter().any(|s| s.usable());
        let deadline = (!up.total_timeout.is_zero()).then(|| {
            tokio::time::Instant::from_std(crate::duration::instant_after(
                std::time::Instant::now(),
                up.total_timeout,
            ))
        });
        let may_retry = replayable && up.servers.len() > 1;
        let mut parts = Some(parts);
        let mut body = Some(body);
        let mut tried: Vec<usize> = Vec::new();
        let mut last_error = None;
        while let Some(i) = up.balancer.pick(&up.states, key, &tried, all_out) {
            if let Some(&prev) = tried.last() {
                if !up.budget.withdraw() {
                    up.states[prev]
                        .retry_denied
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    warn!(upstream = %up.name, "retry budget exhausted; not retrying");
                    break;
                }
                up.states[prev]
                    .retried
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tried.push(i);
            let (server, state) = (&up.servers[i], &up.states[i]);
            // Parts are cloned only while another attempt may still need them.
            let p = if may_retry {
                parts.clone()
            } else {
                parts.take()
            };
            let Some(p) = p else { break };
            let mut out = Request::from_parts(p, empty());
            if let Some(hints) = out.extensions_mut().remove::<EarlyHints>() {
                hints.watch(&mut out);
            }
            *out.uri_mut() = up.uri(i, &path);
            *out.version_mut() = http::Version::HTTP_11;
            if let Some(b) = body.take() {
                *out.body_mut() = b;
            }
            let in_flight = state.begin();
            let mut wait = up.response_timeout;
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(tokio::time::Instant::now()));
            }
            match tokio::time::timeout(wait, up.clients.request(out)).await {
                Err(_) => {
                    state.record_failure(up.max_fails, up.fail_timeout);
                    // The origin may be working on it: never sent twice.
                    return Err(EdgeError::new(
                        ErrorKind::UpstreamTimeout,
                        format!("{} ({server}): no response within {wait:?}", up.name),
                    ));
                }
                Ok(Ok(resp)) => {
                    state.record_success();
                    return Ok(resp.map(|b| {
                        OriginBody {
                            inner: b,
                            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                            _in_flight: in_flight,
                        }
                        .boxed()
                    }));
                }
                Ok(Err(e)) => {
                    if let Some(client_fault) = request_body_fault(&e) {
                        return Err(client_fault);
                    }
                    state.record_failure(up.max_fails, up.fail_timeout);
                    last_error = Some(format!("{} ({server}): {}", up.name, chain(&e)));
                    let nothing_sent = e.connect;
                    if !replayable || !(nothing_sent || idempotent) {
                        break;
                    }
                }
            }
        }
        let detail = last_error.unwrap_or_else(|| format!("{}: no server to try", up.name));
        // Every server was already out of rotation (tried anyway, in case the verdict
        // was stale): the pool is known to be down, a 503 rather than a 502.
        if all_out {
            return Err(EdgeError::new(
                ErrorKind::NoUpstreamAvailable,
                format!(
                    "no server of {} in rotation; tried anyway: {detail}",
                    up.name
                ),
            ));
        }
        Err(EdgeError::new(ErrorKind::UpstreamFailed, detail))
    }
}

/// A response body from an origin: counts as in flight until done, and ends with an
/// error at the pool's total timeout.
struct OriginBody {
    inner: Either<PooledBody, Incoming>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    _in_flight: InFlight,
}

impl HttpBody for OriginBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(d) = &mut this.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err("origin response exceeded total_timeout".into())));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The exchange failed because of the client's request body (over the size limit, or
/// the client's connection broke mid-body): the client's error, not the origin's.
fn request_body_fault(e: &(dyn std::error::Error + 'static)) -> Option<EdgeError> {
    let mut cur = Some(e);
    let mut in_user_body = false;
    while let Some(err) = cur {
        if err.is::<crate::body::BodyReadTimeout>() {
            return Some(EdgeError::new(
                ErrorKind::RequestTimeout,
                "request body stalled past http.body_read_timeout",
            ));
        }
        if err.is::<http_body_util::LengthLimitError>() {
            return Some(EdgeError::new(
                ErrorKind::PayloadTooLarge,
                "request body over http.max_body_bytes",
            ));
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if in_user_body {
                // The client's own connection failed while its body was relayed.
                return Some(EdgeError::new(
                    ErrorKind::BadRequest,
                    format!("request body: {h}"),
                ));
            }
            in_user_body = h.is_user();
        }
        cur = err.source();
    }
    None
}

/// An error and its causes, one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let more = c.to_string();
        if !out.contains(&more) {
            out.push_str(": ");
            out.push_str(&more);
        }
        cur = c.source();
    }
    out
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr, SocketAddr},
        sync::atomic::Ordering::Relaxed,
        time::Duration,
    };

    use super::*;
    use crate::{
        body::BodyReadTimeout,
        error::full,
        upstream::{
            UpstreamSettings,
            test_origin::{Answer, TestOrigin, refusing},
        },
    };

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    /// A pool of `servers`, tried in their order (round robin from the first), with
    /// `more` settings.
    fn upstream(pool: &Pool, servers: &[SocketAddr], more: &str) -> Upstream {
        let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        let text = format!("name = \"u\"\nservers = [{}]\n{more}", list.join(", "));
        let s: UpstreamSettings = toml::from_str(&text).expect("settings");
        s.validate().expect("valid");
        pool.upstream(&s).expect("upstream")
    }

    fn pool() -> Pool {
        Pool::new(Duration::from_secs(2), 1)
    }

    fn get() -> Request<Body> {
        Request::get("/x").body(empty()).unwrap()
    }

    async fn text(resp: Response<Body>) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn an_idempotent_request_goes_to_another_server_after_a_refused_connection() {
        let origin = TestOrigin::start(Answer::Ok("b")).await;
        let pool = pool();
        let up = upstream(&pool, &[refusing(), origin.addr], "");
        let resp = pool.send(&up, get(), true, CLIENT).await.expect("retried");
        assert_eq!(text(resp).await, "b");
        assert_eq!(origin.requests(), 1);
        assert_eq!(up.states[0].failures.load(Relaxed), 1);
        assert_eq!(up.states[0].retried.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_request_with_a_body_is_never_sent_twice() {
        let origin = TestOrigin::start(Answer::Ok("b")).await;
        let pool = pool();
        let up = upstream(&pool, &[refusing(), origin.addr], "");
        let post = Request::post("/x").body(full("data")).unwrap();
        let err = pool.send(&up, post, false, CLIENT).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamFailed);
        assert_eq!(origin.requests(), 0);
        // Without a body, a POST refused before anything was sent may go elsewhere.
        let up = upstream(&pool, &[refusing(), origin.addr], "");
        let post = Request::post("/x").body(empty()).unwrap();
        assert!(pool.send(&up, post, true, CLIENT).await.is_ok());
        assert_eq!(origin.requests(), 1);
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_gateway_timeout_not_retried() {
        let silent = TestOrigin::start(Answer::Silent).await;
        let other = TestOrigin::start(Answer::Ok("b")).await;
        let pool = pool();
        let up = upstream(
            &pool,
            &[silent.addr, other.addr],
            "response_timeout = \"200ms\"",
        );
        let err = pool.send(&up, get(), true, CLIENT).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamTimeout);
        assert_eq!(err.status(), http::StatusCode::GATEWAY_TIMEOUT);
        // The origin may be working on it: the request goes nowhere else.
        assert_eq!((silent.requests(), other.requests()), (1, 0));
    }

    #[tokio::test]
    async fn a_body_past_the_total_timeout_ends_in_an_error() {
        let origin = TestOrigin::start(Answer::Stall).await;
        let pool = pool();
        let up = upstream(&pool, &[origin.addr], "total_timeout = \"300ms\"");
        let resp = pool.send(&up, get(), true, CLIENT).await.expect("the head");
        let err = resp.into_body().collect().await.unwrap_err();
        assert!(err.to_string().contains("total_timeout"), "{err}");
    }

    #[tokio::test]
    async fn a_pool_whose_servers_are_all_out_is_tried_anyway_and_then_unavailable() {
        let pool = pool();
        let up = upstream(&pool, &[refusing()], "max_fails = 1");
        let err = pool.send(&up, get(), true, CLIENT).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamFailed);
        assert!(!up.has_usable_server(), "ejected after max_fails");
        let err = pool.send(&up, get(), true, CLIENT).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NoUpstreamAvailable);
        assert_eq!(up.states[0].failures.load(Relaxed), 2, "tried anyway");
    }

    #[tokio::test]
    async fn a_stalled_client_body_is_the_clients_fault() {
        let origin = TestOrigin::start(Answer::Silent).await;
        let pool = pool();
        let up = upstream(&pool, &[origin.addr], "");
        let stalled =
            futures_util::stream::iter([Err::<Frame<Bytes>, BoxError>(BodyReadTimeout.into())]);
        let post = Request::post("/x")
            .body(BodyExt::boxed(http_body_util::StreamBody::new(stalled)))
            .unwrap();
        let err = pool.send(&up, post, false, CLIENT).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::RequestTimeout);
        assert_eq!(up.states[0].failures.load(Relaxed), 0, "not the origin's");
    }

    #[test]
    fn idempotent_methods() {
        for m in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }
}
