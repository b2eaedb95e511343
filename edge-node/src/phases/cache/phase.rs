//! The cache phase owns the cache's whole story on a request: the lookup (a hit answers),
//! stale-while-revalidate (the stale copy answers, a refresh runs on its own),
//! stale-if-error (an origin's failure is answered from a copy still in its window),
//! storing what the origin answers, and invalidating a URL after an unsafe request. It
//! records what it did in `ctx.cache_outcome`. Routes without `[route.cache]`: nothing.

use std::{sync::Arc, time::Instant};

use http::{HeaderMap, HeaderName, Method, Request};
use http_body_util::BodyExt;
use tracing::warn;

use super::{CacheFetch, CacheStep, RouteCache};
use crate::{
    cache::Store,
    error::{Body, empty},
    phases::forwarding,
    request::{Flow, Phase, PhaseFuture, Reply, RequestCtx},
    upstream::{Pool, Upstream},
};

pub struct CachePhase {
    pub store: Arc<Store>,
    /// For refreshes off the request path.
    pub pool: Pool,
    /// Request headers the phases set before the cache (identity, experiment, intent):
    /// forwarded even by routes that strip unkeyed headers.
    pub node_headers: Vec<HeaderName>,
    /// Per route (by index).
    pub routes: Vec<Option<Arc<RouteCache>>>,
}

/// A cacheable request on its way to the origin.
struct Fetching {
    rc: Arc<RouteCache>,
    fetch: CacheFetch,
    method: Method,
    /// The request as forwarded, for matching stored variants.
    forwarded: HeaderMap,
}

/// An unsafe request's URL, invalidated once the origin accepts the request.
struct Invalidates(String);

impl Phase for CachePhase {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> PhaseFuture<'a> {
        let Some(rc) = ctx.route_index().and_then(|i| self.routes[i].clone()) else {
            return Box::pin(std::future::ready(Ok(Flow::Continue)));
        };
        Box::pin(self.lookup(rc, ctx, req))
    }

    fn origin_response(&self, ctx: &mut RequestCtx, reply: Reply) -> Reply {
        if let Some(Invalidates(url)) = ctx.state.take()
            && let Ok(resp) = &reply
        {
            super::invalidate_after_unsafe(
                &self.store,
                ctx.scheme,
                url,
                resp.status(),
                resp.headers(),
            );
        }
        let Some(f) = ctx.state.take::<Fetching>() else {
            return reply;
        };
        // stale-if-error: the origin failed, a stored copy is still within its window.
        let failed = reply
            .as_ref()
            .map_or(true, |r| r.status().is_server_error());
        if failed
            && let Some(entry) = &f.fetch.stale
            && entry.usable_on_error(Instant::now())
        {
            if let Err(e) = &reply {
                warn!(upstream = %ctx.upstream, error = %e, "origin failed; serving a stale copy");
            }
            ctx.cache_outcome = Some("STALE");
            return Ok(super::respond(
                entry,
                &f.method,
                Instant::now(),
                "STALE",
                &HeaderMap::new(),
            ));
        }
        let resp = reply?;
        ctx.cache_outcome = Some(f.fetch.label());
        Ok(f.rc.complete(
            &self.store,
            f.fetch,
            &f.method,
            f.forwarded,
            ctx.user.is_some(),
            resp,
        ))
    }
}

impl CachePhase {
    async fn lookup(
        &self,
        rc: Arc<RouteCache>,
        ctx: &mut RequestCtx,
        req: &mut Request<Body>,
    ) -> Result<Flow, crate::error::EdgeError> {
        // Stored variants are matched on the request as the origin gets it: the
        // forwarding headers (formatted per request) go on first only where a stored
        // answer varies on one of them.
        if rc.varies_on_forwarding() {
            forwarding::set(ctx, req);
        }
        let method = req.method().clone();
        if !method.is_safe() {
            ctx.state.put(Invalidates(RouteCache::url(ctx.scheme, req)));
            return Ok(Flow::Continue);
        }
        if method != Method::GET && method != Method::HEAD {
            return Ok(Flow::Continue);
        }
        let started = Instant::now();
        let forwarded_host = ctx.forwarded_host.as_deref().filter(|h| *h != ctx.host);
        let step = rc
            .lookup(
                &self.store,
                ctx.scheme,
                req,
                ctx.variant.as_deref(),
                forwarded_host,
                &self.node_headers,
            )
            .await;
        let fetch = match step {
            CacheStep::Answer(resp, outcome) => {
                ctx.cache_outcome = Some(outcome);
                ctx.timings
                    .record("cache", Some(outcome), started.elapsed());
                return Ok(Flow::Answer(resp));
            }
            CacheStep::Forward(fetch) => fetch,
        };
        ctx.timings
            .record("cache", Some(fetch.label()), started.elapsed());
        RouteCache::prepare(&fetch, req.headers_mut());
        forwarding::set(ctx, req);
        let forwarded = req.headers().clone();
        // stale-while-revalidate: the stale copy answers now, the refresh runs on its own.
        if fetch.refresh_in_background
            && let Some(answer) = RouteCache::stale_answer(&fetch, &method)
        {
            ctx.cache_outcome = Some("STALE");
            let mut parts = request_parts(req);
            parts.method = Method::GET;
            self.refresh_in_background(rc, fetch, ctx, parts, forwarded);
            return Ok(Flow::Answer(answer));
        }
        ctx.state.put(Fetching {
            rc,
            fetch,
            method,
            forwarded,
        });
        Ok(Flow::Continue)
    }

    /// Refreshes a stale cached copy off the request path (stale-while-revalidate): the
    /// request as it would have been forwarded, as a GET, to the route's pools in order.
    fn refresh_in_background(
        &self,
        rc: Arc<RouteCache>,
        fetch: CacheFetch,
        ctx: &RequestCtx,
        parts: http::request::Parts,
        forwarded: HeaderMap,
    ) {
        let pool = self.pool.clone();
        let store = self.store.clone();
        let pools: Vec<Arc<Upstream>> = ctx.pools.clone();
        let client_ip = ctx.client_ip;
        let authorized = ctx.user.is_some();
        let fetch = fetch.into_background();
        tokio::spawn(async move {
            for up in &pools {
                let req = Request::from_parts(parts.clone(), empty());
                match pool.send(up, req, true, client_ip).await {
                    Ok(resp) => {
                        let mut resp =
                            rc.complete(&store, fetch, &parts.method, forwarded, authorized, resp);
                        // Read through: the copy is stored when the body ends.
                        while let Some(frame) = resp.body_mut().frame().await {
                            if frame.is_err() {
                                break;
                            }
                        }
                        return;
                    }
                    Err(e) if e.pool_unreachable() => {
                        warn!(upstream = %up.name, error = %e, "background refresh: pool unreachable");
                    }
                    Err(e) => {
                        warn!(upstream = %up.name, error = %e, "background refresh failed");
                        return;
                    }
                }
            }
        });
    }
}

/// A copy of the request's head (the request keeps its own).
fn request_parts(req: &Request<Body>) -> http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy.into_parts().0
}
