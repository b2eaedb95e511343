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
    /// Headers a filter may not set or remove (the node's identity headers).
    pub protected: Vec<HeaderName>,
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
            let answer = answer?;
            if !answer.headers().contains_key(CONTINUE) {
                return Ok(Flow::Answer(answer));
            }
            self.apply(ctx, req, answer.headers())?;
            Ok(Flow::Continue)
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
            super::early::canonicalize_target(req, self.path_policy)?;
            ctx.match_path = match crate::target::match_form(req.uri().path(), self.path_policy) {
                std::borrow::Cow::Owned(p) => Some(p),
                std::borrow::Cow::Borrowed(_) => None,
            };
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
