//! Function filters on a route (`request_filter = "name"`, `response_filter = "name"`):
//! a WebAssembly component that sees the request before the cache and the handler, or
//! the handler's response head before the cache keeps it. Components are ordinary
//! `wasi:http/proxy` handlers; what their answer means is a small convention:
//!
//! - **Request filter.** The component gets the request's head (method, canonical
//!   target, headers; the body stays with the node). An answer with the header
//!   `x-edge-continue` lets the request go on: its other headers are set on the request
//!   (replacing), `x-edge-remove: a, b` removes headers, `x-edge-path: /p?q` rewrites the
//!   target (made canonical again, or 400). Any other answer goes to the client (a 401,
//!   a redirect) and the request stops here.
//! - **Response filter.** The component gets a request with the client's method and
//!   target, the response's headers, and `x-edge-status`; its answer's status and
//!   headers become the response's. The body streams past untouched.
//!
//! Node-owned request headers (identity, forwarding) cannot be set by a filter: a filter
//! never speaks for the node's auth.

use std::{sync::Arc, time::Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};

use crate::{
    error::{Body, EdgeError, ErrorKind, empty},
    functions::Functions,
    request::{Flow, Handler, HandlerFuture, Phase, PhaseFuture, RequestCtx},
    target::PathSettings,
};

/// The answer header that lets a filtered request go on.
pub const CONTINUE: HeaderName = HeaderName::from_static("x-edge-continue");
const REMOVE: HeaderName = HeaderName::from_static("x-edge-remove");
const PATH: HeaderName = HeaderName::from_static("x-edge-path");
const STATUS: HeaderName = HeaderName::from_static("x-edge-status");

/// The request filters of the routes (by index).
pub struct RequestFilterPhase {
    pub functions: Arc<Functions>,
    pub routes: Vec<Option<String>>,
    pub path_policy: PathSettings,
    /// Headers a filter may not set or remove (those the node sets before the cache).
    pub protected: Vec<HeaderName>,
    /// To check that a rewritten target is still the route's and not a blocked path.
    pub table: Arc<super::route::RouteTable>,
    pub threat: Arc<crate::policy::ThreatEngine>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Phase for RequestFilterPhase {
    fn name(&self) -> &'static str {
        "request_filter"
    }

    fn request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> PhaseFuture<'a> {
        let Some(name) = ctx.route_index().and_then(|i| self.routes[i].as_deref()) else {
            return Box::pin(std::future::ready(Ok(Flow::Continue)));
        };
        Box::pin(async move {
            let head = head_of(req.method(), req.uri(), req.version(), req.headers());
            let started = Instant::now();
            let answer = self.functions.handle(name, head, ctx.client_ip).await;
            ctx.timings
                .record("fn", Some("request_filter"), started.elapsed());
            let flow = match answer {
                Ok(answer) if !answer.headers().contains_key(CONTINUE) => Ok(Flow::Answer(answer)),
                Ok(answer) => self
                    .apply(ctx, req, answer.headers())
                    .map(|()| Flow::Continue),
                Err(e) => Err(e),
            };
            self.metrics.function_call(
                name,
                "request_filter",
                flow.as_ref().map(|_| ()).map_err(|e| e.kind),
                started.elapsed(),
            );
            flow
        })
    }
}

impl RequestFilterPhase {
    fn apply(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request<Body>,
        answer: &HeaderMap,
    ) -> Result<(), EdgeError> {
        let allowed = |n: &HeaderName| {
            !self.protected.contains(n)
                && !super::early::removed_before_routing(n)
                && *n != http::header::HOST
                && *n != http::header::CONTENT_LENGTH
                && *n != http::header::TRANSFER_ENCODING
        };
        if let Some(p) = answer.get(PATH) {
            let target = p
                .to_str()
                .ok()
                .filter(|t| t.starts_with('/'))
                .and_then(|t| t.parse::<http::uri::PathAndQuery>().ok())
                .ok_or_else(|| {
                    EdgeError::new(
                        ErrorKind::FunctionFailed,
                        "request filter: x-edge-path is not an origin-form target",
                    )
                })?;
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(target);
            *req.uri_mut() = Uri::from_parts(parts).map_err(|e| {
                EdgeError::new(ErrorKind::FunctionFailed, format!("request filter: {e}"))
            })?;
            // The filter's target is held to what the client's was: canonical, not a
            // blocked path, and routed where this request already was (its route's
            // rules and cache apply to it). A filter's mistake is the function's, not
            // the client's: no threat signal.
            let failed = |why: String| {
                EdgeError::new(ErrorKind::FunctionFailed, format!("request filter: {why}"))
            };
            super::early::canonicalize_target(req, self.path_policy)
                .map_err(|e| failed(format!("x-edge-path: {}", e.detail)))?;
            ctx.match_path = match crate::target::match_form(req.uri().path(), self.path_policy) {
                std::borrow::Cow::Owned(p) => Some(p),
                std::borrow::Cow::Borrowed(_) => None,
            };
            let path = ctx.match_path(req.uri().path());
            if self.threat.is_blocked_path(path) {
                return Err(failed(format!("x-edge-path {path} is a blocked path")));
            }
            let same_route = self
                .table
                .select(&ctx.host, req.method(), path, req.headers())
                .is_ok_and(|r| Some(r.info.index) == ctx.route_index());
            if !same_route {
                return Err(failed(format!("x-edge-path {path} leaves the route")));
            }
        }
        for name in answer
            .get_all(REMOVE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        {
            if allowed(&name) {
                req.headers_mut().remove(name);
            }
        }
        let mut set: Vec<(&HeaderName, &HeaderValue)> = Vec::new();
        for (name, value) in answer {
            if *name == CONTINUE || *name == REMOVE || *name == PATH {
                continue;
            }
            // What a wasi:http answer always carries is not a rewrite.
            if *name == http::header::CONTENT_TYPE || *name == http::header::DATE {
                continue;
            }
            if allowed(name) {
                set.push((name, value));
            }
        }
        for (name, _) in &set {
            req.headers_mut().remove(*name);
        }
        for (name, value) in set {
            req.headers_mut().append(name.clone(), value.clone());
        }
        Ok(())
    }
}

/// A route handler whose answer's head passes a response filter first.
pub struct ResponseFiltered {
    pub inner: Arc<dyn Handler>,
    pub functions: Arc<Functions>,
    pub filter: String,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Handler for ResponseFiltered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn handle<'a>(&'a self, ctx: &'a mut RequestCtx, req: Request<Body>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let (method, uri, version) = (req.method().clone(), req.uri().clone(), req.version());
            let resp = self.inner.handle(ctx, req).await?;
            // A tunnel (101) is not an answer to edit.
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                return Ok(resp);
            }
            let started = Instant::now();
            let edited = self
                .filter_head(&method, &uri, version, &resp, &ctx.host, ctx.client_ip)
                .await;
            ctx.timings
                .record("fn", Some("response_filter"), started.elapsed());
            self.metrics.function_call(
                &self.filter,
                "response_filter",
                edited.as_ref().map(|_| ()).map_err(|e| e.kind),
                started.elapsed(),
            );
            let edited = edited?;
            let (mut parts, body) = resp.into_parts();
            let length = parts.headers.remove(http::header::CONTENT_LENGTH);
            parts.status = edited.status();
            parts.headers = edited.headers().clone();
            // The body is the origin's: so is its framing.
            parts.headers.remove(http::header::CONTENT_LENGTH);
            parts.headers.remove(http::header::TRANSFER_ENCODING);
            parts.headers.remove(STATUS);
            if let Some(l) = length {
                parts.headers.insert(http::header::CONTENT_LENGTH, l);
            }
            Ok(Response::from_parts(parts, body))
        })
    }
}

impl ResponseFiltered {
    async fn filter_head(
        &self,
        method: &http::Method,
        uri: &Uri,
        version: http::Version,
        resp: &Response<Body>,
        host: &str,
        client_ip: std::net::IpAddr,
    ) -> Result<Response<Body>, EdgeError> {
        let mut head = head_of(method, uri, version, resp.headers());
        head.headers_mut()
            .insert(STATUS, HeaderValue::from(resp.status().as_u16()));
        // The request's authority (the response's headers carry none).
        if let Ok(host) = HeaderValue::from_str(host) {
            head.headers_mut().insert(http::header::HOST, host);
        }
        let edited = self.functions.handle(&self.filter, head, client_ip).await?;
        Ok(edited)
    }
}

/// A body-less request carrying `headers`, for a filter.
fn head_of(
    method: &http::Method,
    uri: &Uri,
    version: http::Version,
    headers: &HeaderMap,
) -> Request<Body> {
    let mut head = Request::new(empty());
    *head.method_mut() = method.clone();
    *head.uri_mut() = uri.clone();
    *head.version_mut() = version;
    *head.headers_mut() = headers.clone();
    head.headers_mut().remove(http::header::CONTENT_LENGTH);
    head.headers_mut().remove(http::header::TRANSFER_ENCODING);
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        functions::{FunctionsSettings, Runtime},
        phases::route::{Route, RouteTable},
        policy::{ThreatEngine, ThreatSettings},
        request::RouteInfo,
        upstream::Pool,
    };

    fn route(index: usize, prefix: &str) -> Route {
        Route {
            info: RouteInfo {
                index,
                name: prefix.into(),
                api: false,
                server_timing: true,
                websocket: false,
            },
            hosts: vec!["app.test".into()],
            path_prefix: prefix.into(),
            methods: Vec::new(),
            headers: Vec::new(),
            upstreams: Vec::new(),
        }
    }

    /// The filter phase of two routes of app.test: `/private` (0), then `/` (1,
    /// filtered); `/.env` is a blocked path.
    fn phase() -> RequestFilterPhase {
        let functions = Functions::new(
            &Runtime::default(),
            &FunctionsSettings::default(),
            &[],
            &Default::default(),
            &Pool::new(std::time::Duration::from_secs(1), 1),
            &Default::default(),
        )
        .expect("no functions");
        let threat = ThreatEngine::new(
            &ThreatSettings {
                blocked_paths: vec!["/.env".into()],
                ..ThreatSettings::default()
            },
            100,
            None,
        );
        RequestFilterPhase {
            functions: Arc::new(functions),
            routes: vec![None, Some("f".into())],
            path_policy: PathSettings::default(),
            protected: vec![
                HeaderName::from_static("x-variant"),
                HeaderName::from_static("x-intent"),
            ],
            table: Arc::new(RouteTable::new(vec![route(0, "/private"), route(1, "/")])),
            threat: Arc::new(threat),
            metrics: Arc::new(crate::metrics::Metrics::new(Default::default())),
        }
    }

    fn filtered(path: &str) -> (RequestCtx, Request<Body>) {
        let mut ctx = RequestCtx::new("192.0.2.1:1000".parse().unwrap());
        ctx.host = "app.test".into();
        ctx.route = Some(route(1, "/").info);
        let mut req = Request::new(empty());
        *req.uri_mut() = path.parse().unwrap();
        req.headers_mut()
            .insert("x-variant", HeaderValue::from_static("A"));
        req.headers_mut()
            .insert("x-keep", HeaderValue::from_static("1"));
        (ctx, req)
    }

    fn answer(headers: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_filter_sets_and_removes_headers_but_never_the_nodes() {
        let p = phase();
        let (mut ctx, mut req) = filtered("/page");
        p.apply(
            &mut ctx,
            &mut req,
            &answer(&[
                ("x-edge-continue", "1"),
                ("x-checked", "yes"),
                // What the node keys and trusts as its own, and framing: ignored.
                ("x-variant", "B"),
                ("x-intent", "human"),
                ("x-user-id", "admin"),
                ("x-forwarded-for", "10.0.0.1"),
                ("content-length", "5"),
                ("transfer-encoding", "chunked"),
                ("host", "evil.test"),
                ("x-edge-remove", "x-keep, x-variant"),
            ]),
        )
        .unwrap();
        let h = req.headers();
        assert_eq!(h["x-checked"], "yes");
        assert_eq!(h["x-variant"], "A", "a protected header stays the node's");
        assert!(!h.contains_key("x-keep"));
        for absent in [
            "x-intent",
            "x-user-id",
            "x-forwarded-for",
            "content-length",
            "transfer-encoding",
            "host",
            "x-edge-continue",
        ] {
            assert!(!h.contains_key(absent), "{absent} was set by the filter");
        }
    }

    #[test]
    fn a_rewritten_target_is_canonical_stays_on_its_route_and_is_not_blocked() {
        let p = phase();
        let (mut ctx, mut req) = filtered("/old/x?q=1");
        p.apply(
            &mut ctx,
            &mut req,
            &answer(&[
                ("x-edge-continue", "1"),
                ("x-edge-path", "/new/./y/../x?q=1"),
            ]),
        )
        .unwrap();
        assert_eq!(req.uri(), "/new/x?q=1");
        for (target, why) in [
            ("/private/data", "leaves the route"),
            ("/a/../private/data", "leaves the route"),
            ("/.env", "blocked"),
            ("/x%00", ""),
            ("relative", ""),
        ] {
            let (mut ctx, mut req) = filtered("/old/x");
            let e = p
                .apply(
                    &mut ctx,
                    &mut req,
                    &answer(&[("x-edge-continue", "1"), ("x-edge-path", target)]),
                )
                .expect_err(target);
            // The function's failure, never the client's (no threat signal).
            assert_eq!(e.kind, ErrorKind::FunctionFailed, "{target}");
            assert!(e.detail.contains(why), "{target}: {}", e.detail);
        }
    }
}
