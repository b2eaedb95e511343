//! `handler = { function = "name" }`: a WebAssembly component answers the route
//! (`crate::functions`). The guest gets the request as the phases left it, with the
//! node's forwarding headers, and its time is in Server-Timing (`fn`).

use std::{sync::Arc, time::Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Body as _;

use super::proxy::first_frame_checked;
use crate::{
    error::Body,
    functions::Functions,
    metrics::Metrics,
    phases::forwarding,
    request::{Handler, HandlerFuture, RequestCtx},
};

pub struct FunctionHandler {
    pub functions: Arc<Functions>,
    pub name: String,
    pub max_body_bytes: u64,
    pub body_read_timeout: std::time::Duration,
    pub metrics: Arc<Metrics>,
}

impl Handler for FunctionHandler {
    fn name(&self) -> &'static str {
        "function"
    }

    fn handle<'a>(&'a self, ctx: &'a mut RequestCtx, mut req: Request<Body>) -> HandlerFuture<'a> {
        Box::pin(async move {
            // What an origin would be told: who the client is, how it came.
            forwarding::set(ctx, &mut req);
            // A body is held to the limits a proxied one is: checked before the guest
            // starts, bounded while it streams, and a stalled upload ends (else it
            // would hold an instance until the function's deadline).
            let (parts, body) = req.into_parts();
            let body = if body.is_end_stream() {
                body
            } else {
                let checked = first_frame_checked(body, self.body_read_timeout).await?;
                if self.max_body_bytes == 0 {
                    checked
                } else {
                    http_body_util::Limited::new(checked, self.max_body_bytes as usize).boxed()
                }
            };
            let started = Instant::now();
            let answer = self
                .functions
                .handle(&self.name, Request::from_parts(parts, body), ctx.client_ip)
                .await;
            ctx.timings.record("fn", None, started.elapsed());
            self.metrics.function_call(
                &self.name,
                "handler",
                answer.as_ref().map(|_| ()).map_err(|e| e.kind),
                started.elapsed(),
            );
            answer
        })
    }
}
