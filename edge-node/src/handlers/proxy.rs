//! `handler = "proxy"`: the request goes to the route's pools (the client's region's
//! first, the next region's when it cannot be reached), with the node's forwarding
//! headers; a body is checked before any origin sees it; an origin's 101 turns the
//! exchange into a tunnel. The cache, when the route has one, is a phase before this.

use std::time::Instant;

use http::{HeaderValue, Request, header};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tracing::warn;

use super::demo;
use crate::{
    error::{Body, EdgeError, ErrorKind, empty},
    phases::{early, forwarding, upgrade},
    request::{Handler, HandlerFuture, Reply, RequestCtx},
    upstream::{Origin, Pool},
};

pub struct ProxyHandler {
    pub pool: Pool,
    pub node_id: String,
    pub max_body_bytes: u64,
    pub body_read_timeout: std::time::Duration,
    pub tunnel_idle_timeout: std::time::Duration,
}

impl Handler for ProxyHandler {
    fn name(&self) -> &'static str {
        "proxy"
    }

    fn handle<'a>(&'a self, ctx: &'a mut RequestCtx, req: Request<Body>) -> HandlerFuture<'a> {
        Box::pin(self.proxy(ctx, req))
    }
}

impl ProxyHandler {
    async fn proxy(&self, ctx: &mut RequestCtx, mut req: Request<Body>) -> Reply {
        // The built-in demo origin answers here.
        if ctx.pools.first().is_some_and(|p| p.origin == Origin::Demo) {
            return Ok(demo::respond(
                ctx,
                &self.node_id,
                req.method(),
                req.uri().path(),
            ));
        }
        forwarding::set(ctx, &mut req);
        let version = req.version();
        let upgrade = ctx.state.take::<upgrade::Requested>();
        if let Some(u) = &upgrade {
            u.forward(req.headers_mut());
        }
        let body_is_empty = req.body().is_end_stream() || req.body().size_hint().exact() == Some(0);
        let (parts, body) = req.into_parts();
        let body = if body_is_empty {
            body
        } else if self.max_body_bytes != 0 {
            // Bodies without a declared length (chunked) are held to the same limit
            // while they stream: past it the exchange is aborted and the client gets 413.
            let checked = first_frame_checked(body, self.body_read_timeout).await?;
            http_body_util::Limited::new(checked, self.max_body_bytes as usize).boxed()
        } else {
            first_frame_checked(body, self.body_read_timeout).await?
        };
        // A body that turned out empty once read (HTTP/3 says so only when polled) can
        // be sent again: the request may be retried and failed over like any other.
        let body_is_empty = body_is_empty || body.is_end_stream();
        let started = Instant::now();
        let served = self.send(ctx, parts, body, body_is_empty).await;
        ctx.timings.record("origin", None, started.elapsed());
        if let Some(t) = &mut ctx.trace {
            let status = served.as_ref().ok().map(|r| r.status().as_u16());
            t.exchange_done(&ctx.upstream, status);
        }
        let mut resp = served?;
        // The client's protocol version, whatever the origin spoke.
        *resp.version_mut() = version;
        match upgrade {
            Some(u) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                early::strip_hop_by_hop(resp.headers_mut());
                let mut resp = u.tunnel(resp, ctx.upstream.clone(), self.tunnel_idle_timeout);
                resp.headers_mut().append(
                    header::VIA,
                    HeaderValue::from_static(forwarding::via(version)),
                );
                return Ok(resp);
            }
            _ => upgrade::unexpected_switch(&resp)?,
        }
        early::strip_hop_by_hop(resp.headers_mut());
        resp.headers_mut().append(
            header::VIA,
            HeaderValue::from_static(forwarding::via(version)),
        );
        Ok(resp)
    }

    /// The client's region's pool first; the next region's when it cannot be reached
    /// (every origin refused the connection). A request body can only be sent once:
    /// failover is for requests without one.
    async fn send(
        &self,
        ctx: &mut RequestCtx,
        parts: http::request::Parts,
        body: Body,
        body_is_empty: bool,
    ) -> Reply {
        let pools = std::mem::take(&mut ctx.pools);
        let mut body = Some(body);
        let mut parts = Some(parts);
        let mut last = None;
        for (i, up) in pools.iter().enumerate() {
            // Cloned only while another pool may still need them.
            let p = if i + 1 < pools.len() {
                parts.clone()
            } else {
                parts.take()
            };
            let Some(p) = p else { break };
            let b = match body.take() {
                Some(b) => b,
                None if body_is_empty => empty(),
                None => break,
            };
            match self
                .pool
                .send(up, Request::from_parts(p, b), body_is_empty, ctx.client_ip)
                .await
            {
                Ok(r) => {
                    if i > 0 {
                        ctx.region = up.region.clone();
                        ctx.upstream = up.name.clone();
                    }
                    ctx.pools = pools;
                    return Ok(r);
                }
                Err(e) if e.pool_unreachable() => {
                    warn!(upstream = %up.name, region = %up.region, error = %e, "pool unreachable; failing over");
                    last = Some(e);
                }
                Err(e) => {
                    // Not failed over (a timeout: the origin may be working on it).
                    last = Some(e);
                    break;
                }
            }
        }
        ctx.pools = pools;
        Err(last.unwrap_or_else(|| {
            EdgeError::new(
                ErrorKind::NoUpstreamAvailable,
                "no pool could take the request",
            )
        }))
    }
}

/// Reads the first frame of a request body before any origin is contacted, so a body that
/// is malformed from the start (an invalid chunk size, say) is the client's 400 and never
/// reaches an origin; the rest still streams. A client that stops sending its body for
/// `timeout` gets 408 if nothing was forwarded yet; past that the exchange is aborted.
pub async fn first_frame_checked(
    body: Body,
    timeout: std::time::Duration,
) -> Result<Body, EdgeError> {
    use http_body_util::StreamBody;
    // A stalled upload would hold its worker slot and origin connection forever.
    let mut body = crate::body::TimedBody::new(body, timeout);
    let first = match body.frame().await {
        None => return Ok(empty()),
        Some(Err(e)) if e.is::<crate::body::BodyReadTimeout>() => {
            return Err(EdgeError::new(
                ErrorKind::RequestTimeout,
                "no request body within http.body_read_timeout",
            ));
        }
        Some(Err(e)) => {
            return Err(EdgeError::new(
                ErrorKind::BadRequest,
                format!("request body: {e}"),
            ));
        }
        Some(Ok(frame)) => frame,
    };
    let rest = http_body_util::BodyStream::new(body);
    let stream = futures_util::stream::StreamExt::chain(
        futures_util::stream::once(async move { Ok(first) }),
        rest,
    );
    Ok(StreamBody::new(stream).boxed())
}
