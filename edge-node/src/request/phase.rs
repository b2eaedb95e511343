//! The interface of a phase and of a handler. A request lives through the hooks in this
//! order: every phase's `early_request` (before routing), every phase's `request` (the
//! route is known), the route's handler, every phase's `origin_response` (what the
//! handler answered, before anything keeps it), every phase's `response` (every answer
//! the client gets), every phase's `log`. Each hook does nothing by default.
//!
//! A request hook answers by returning [`Flow::Answer`] (a cache hit, a challenge) or an
//! error; the phases after it and the handler are skipped, and the `response` hooks run
//! for the phases the request went through, up to the one that answered.

use std::{future::Future, pin::Pin};

use http::{Request, Response};

use super::RequestCtx;
use crate::error::{Body, EdgeError};

/// What a request hook decided.
pub enum Flow {
    /// On to the next phase.
    Continue,
    /// Answered: this is the response.
    Answer(Response<Body>),
}

/// The result of an origin (a handler): the response, or the error it becomes.
pub type Reply = Result<Response<Body>, EdgeError>;

/// A request hook's work; boxed so that phases form one list.
pub type PhaseFuture<'a> = Pin<Box<dyn Future<Output = Result<Flow, EdgeError>> + Send + 'a>>;

/// A handler's work.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

/// One feature on the request path.
pub trait Phase: Send + Sync {
    /// Its name in logs.
    fn name(&self) -> &'static str;

    /// Before routing: `ctx.route` is `None`.
    fn early_request<'a>(
        &'a self,
        _ctx: &'a mut RequestCtx,
        _req: &'a mut Request<Body>,
    ) -> PhaseFuture<'a> {
        Box::pin(std::future::ready(Ok(Flow::Continue)))
    }

    /// With the route known (`ctx.route`).
    fn request<'a>(
        &'a self,
        _ctx: &'a mut RequestCtx,
        _req: &'a mut Request<Body>,
    ) -> PhaseFuture<'a> {
        Box::pin(std::future::ready(Ok(Flow::Continue)))
    }

    /// What the handler answered (a response or an error), in phase order: a phase may
    /// rewrite it, keep it, or replace a failure (a stale copy for an origin's error).
    fn origin_response(&self, _ctx: &mut RequestCtx, reply: Reply) -> Reply {
        reply
    }

    /// Every response the client gets from here on (an answer of this phase or a later
    /// one, the handler's, or an error's), in phase order.
    fn response(&self, _ctx: &mut RequestCtx, _resp: &mut Response<Body>) {}

    /// Once the response is on its way.
    fn log(&self, _ctx: &RequestCtx, _status: http::StatusCode) {}
}

/// What answers a route's requests once the phases let them through: the proxy (cache
/// and upstream pools), the demo page, a function.
pub trait Handler: Send + Sync {
    fn name(&self) -> &'static str;

    fn handle<'a>(&'a self, ctx: &'a mut RequestCtx, req: Request<Body>) -> HandlerFuture<'a>;
}
