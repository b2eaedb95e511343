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
    /// Per route: stale-while-revalidate may refresh off the request path. Not where a
    /// response filter edits what the origin answers: a refresh goes straight to the
    /// pools, and the copy it stored would skip the filter (those routes revalidate
    /// in the request instead).
    pub background_refresh: Vec<bool>,
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
            && ctx
                .route_index()
                .is_some_and(|i| self.background_refresh[i])
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Response, StatusCode, header};

    use super::*;
    use crate::{
        cache::CacheSettings,
        error::{EdgeError, ErrorKind, full},
        request::RouteInfo,
    };

    /// The phase with one route caching by `settings` (`[route.cache]`), an empty store
    /// and no pools (nothing here goes to an origin by itself).
    fn phase(settings: &str) -> CachePhase {
        let settings = toml::from_str(settings).expect("route cache settings");
        CachePhase {
            store: Store::new(&CacheSettings::default()).expect("store"),
            pool: Pool::new(Duration::from_secs(1), 1),
            node_headers: Vec::new(),
            routes: vec![Some(Arc::new(RouteCache::new(&settings).expect("route")))],
            background_refresh: vec![true],
        }
    }

    fn context() -> RequestCtx {
        let mut ctx = RequestCtx::new("192.0.2.7:40000".parse().unwrap());
        ctx.host = "app.test".into();
        ctx.route = Some(RouteInfo {
            index: 0,
            name: "app".into(),
            api: false,
            server_timing: false,
            websocket: false,
        });
        ctx
    }

    fn request(method: Method, path: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(format!("http://app.test{path}"))
            .header(header::HOST, "app.test")
            .body(empty())
            .unwrap()
    }

    /// An origin's answer.
    fn reply(status: u16, headers: &[(&'static str, &'static str)], body: &'static str) -> Reply {
        let mut resp = Response::new(full(body));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, body.len().into());
        for (k, v) in headers {
            resp.headers_mut()
                .append(*k, http::HeaderValue::from_static(v));
        }
        Ok(resp)
    }

    /// What a request hook decided: the answer, or `None` to go on.
    async fn before(
        p: &CachePhase,
        ctx: &mut RequestCtx,
        req: &mut Request<Body>,
    ) -> Option<Response<Body>> {
        match p.request(ctx, req).await.expect("no error") {
            Flow::Answer(resp) => Some(resp),
            Flow::Continue => None,
        }
    }

    async fn text(resp: Response<Body>) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn x_cache(resp: &Response<Body>) -> &str {
        resp.headers()[crate::headers::X_CACHE].to_str().unwrap()
    }

    /// A miss that goes to the origin, whose answer streams through the phase to the
    /// end (which stores it, when it may be).
    async fn fetch(
        p: &CachePhase,
        method: Method,
        path: &str,
        origin: Reply,
    ) -> (RequestCtx, Reply) {
        let mut ctx = context();
        let mut req = request(method, path);
        assert!(
            before(p, &mut ctx, &mut req).await.is_none(),
            "not answered by the cache"
        );
        let out = p.origin_response(&mut ctx, origin);
        let out = match out {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                Ok(Response::from_parts(parts, full(bytes)))
            }
            Err(e) => Err(e),
        };
        (ctx, out)
    }

    const FRESH: &[(&str, &str)] = &[("cache-control", "max-age=60")];

    #[tokio::test]
    async fn a_stored_answer_is_a_hit_on_the_next_request() {
        let p = phase("");
        let (ctx, out) = fetch(&p, Method::GET, "/a", reply(200, FRESH, "hello")).await;
        let out = out.unwrap();
        assert_eq!(ctx.cache_outcome, Some("MISS"));
        assert_eq!(x_cache(&out), "MISS");
        assert_eq!(out.headers()["cache-status"], "edge-node; fwd=miss; stored");

        let mut ctx = context();
        let mut req = request(Method::GET, "/a");
        let hit = before(&p, &mut ctx, &mut req)
            .await
            .expect("answered from the cache");
        assert_eq!(ctx.cache_outcome, Some("HIT"));
        assert_eq!(x_cache(&hit), "HIT");
        assert_eq!(text(hit).await, "hello");

        // Another path is another entry.
        let (ctx, _) = fetch(&p, Method::GET, "/b", reply(200, FRESH, "b")).await;
        assert_eq!(ctx.cache_outcome, Some("MISS"));
    }

    #[tokio::test]
    async fn what_must_not_be_stored_is_fetched_every_time() {
        let p = phase("");
        let no_store = &[("cache-control", "no-store")][..];
        let (ctx, out) = fetch(&p, Method::GET, "/private", reply(200, no_store, "x")).await;
        assert_eq!(ctx.cache_outcome, Some("MISS"));
        assert_eq!(
            out.unwrap().headers()["cache-status"],
            "edge-node; fwd=miss"
        );
        // The next miss does not wait on another (hit-for-pass), and says why.
        let (ctx, out) = fetch(&p, Method::GET, "/private", reply(200, no_store, "x")).await;
        assert_eq!(ctx.cache_outcome, Some("MISS"));
        assert_eq!(
            out.unwrap().headers()["cache-status"],
            "edge-node; fwd=miss; detail=uncacheable"
        );
    }

    #[tokio::test]
    async fn only_if_cached_on_a_miss_is_a_504_without_the_origin() {
        let p = phase("");
        let mut ctx = context();
        let mut req = request(Method::GET, "/a");
        req.headers_mut()
            .insert(header::CACHE_CONTROL, "only-if-cached".parse().unwrap());
        let resp = before(&p, &mut ctx, &mut req).await.expect("answered");
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(ctx.cache_outcome, Some("MISS"));
    }

    /// A copy of `/s` stored already expired (its `Age` is past its max-age), with the
    /// Cache-Control `cache_control`.
    async fn stored_stale(p: &CachePhase, cache_control: &'static str) {
        let headers = [("cache-control", cache_control), ("age", "100")];
        let (_, out) = fetch(p, Method::GET, "/s", reply(200, &headers, "old")).await;
        assert!(out.is_ok());
    }

    #[tokio::test]
    async fn an_origin_failure_is_answered_with_the_stale_copy_in_its_window() {
        let p = phase("");
        stored_stale(&p, "max-age=1, stale-if-error=600").await;
        // The origin is unreachable...
        let failed = Err(EdgeError::new(ErrorKind::UpstreamFailed, "refused"));
        let (ctx, out) = fetch(&p, Method::GET, "/s", failed).await;
        let out = out.expect("the stale copy");
        assert_eq!(ctx.cache_outcome, Some("STALE"));
        assert_eq!(x_cache(&out), "STALE");
        assert_eq!(text(out).await, "old");
        // ...or answers 5xx.
        let (ctx, out) = fetch(&p, Method::GET, "/s", reply(503, &[], "down")).await;
        assert_eq!(ctx.cache_outcome, Some("STALE"));
        assert_eq!(text(out.unwrap()).await, "old");
        // A 4xx is the origin's answer, not a failure.
        let (ctx, out) = fetch(&p, Method::GET, "/s", reply(404, &[], "gone")).await;
        assert_eq!(ctx.cache_outcome, Some("EXPIRED"));
        assert_eq!(out.unwrap().status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn past_the_window_the_failure_stands() {
        let p = phase("");
        stored_stale(&p, "max-age=1, stale-if-error=10").await;
        let failed = Err(EdgeError::new(ErrorKind::UpstreamTimeout, "slow"));
        let (_, out) = fetch(&p, Method::GET, "/s", failed).await;
        assert_eq!(out.unwrap_err().kind, ErrorKind::UpstreamTimeout);
        let (_, out) = fetch(&p, Method::GET, "/s", reply(502, &[], "bad")).await;
        assert_eq!(out.unwrap().status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn within_stale_while_revalidate_the_stale_copy_answers_at_once() {
        let p = phase("");
        let headers = [
            ("cache-control", "max-age=1, stale-while-revalidate=600"),
            ("age", "100"),
        ];
        let (_, stored) = fetch(&p, Method::GET, "/r", reply(200, &headers, "old")).await;
        assert!(stored.is_ok());
        let mut ctx = context();
        let mut req = request(Method::GET, "/r");
        let resp = before(&p, &mut ctx, &mut req)
            .await
            .expect("answered at once");
        assert_eq!(ctx.cache_outcome, Some("STALE"));
        assert_eq!(text(resp).await, "old");
    }

    #[tokio::test]
    async fn a_successful_unsafe_request_invalidates_the_url() {
        let p = phase("");
        let (_, stored) = fetch(&p, Method::GET, "/a", reply(200, FRESH, "v1")).await;
        assert!(stored.is_ok());
        // A failed POST changes nothing.
        let (ctx, _) = fetch(&p, Method::POST, "/a", reply(500, &[], "")).await;
        assert_eq!(ctx.cache_outcome, None, "unsafe requests are not looked up");
        let mut ctx = context();
        assert!(
            before(&p, &mut ctx, &mut request(Method::GET, "/a"))
                .await
                .is_some()
        );
        // A successful one does.
        let (_, posted) = fetch(&p, Method::POST, "/a", reply(204, &[], "")).await;
        assert!(posted.is_ok());
        let (ctx, out) = fetch(&p, Method::GET, "/a", reply(200, FRESH, "v2")).await;
        assert_eq!(ctx.cache_outcome, Some("MISS"));
        assert_eq!(text(out.unwrap()).await, "v2");
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_origin_request() {
        let p = Arc::new(phase(""));
        let mut leader = context();
        let mut req = request(Method::GET, "/c");
        assert!(before(&p, &mut leader, &mut req).await.is_none());
        // A second request for the key waits for the first one's answer...
        let waiter = tokio::spawn({
            let p = p.clone();
            async move {
                let mut ctx = context();
                let mut req = request(Method::GET, "/c");
                let resp = before(&p, &mut ctx, &mut req).await;
                (ctx.cache_outcome, resp)
            }
        });
        // (on this single-threaded runtime it now runs until it waits)
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the second request waits for the first"
        );
        // ...and streams it as it arrives.
        let resp = p
            .origin_response(&mut leader, reply(200, FRESH, "shared"))
            .unwrap();
        // (the waiter takes the answer while its body is still to come)
        tokio::task::yield_now().await;
        assert_eq!(text(resp).await, "shared");
        let (outcome, resp) = waiter.await.unwrap();
        let resp = resp.expect("answered without the origin");
        assert_eq!(outcome, Some("HIT"));
        assert_eq!(resp.headers()["cache-status"], "edge-node; hit; collapsed");
        assert_eq!(text(resp).await, "shared");
    }
}
