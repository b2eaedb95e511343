//! `handler = { function = "name" }`: a WebAssembly component answers the route
//! (`crate::functions`). The guest gets the request as the phases left it, with the
//! node's forwarding headers, and its time is in Server-Timing (`fn`).

use std::{sync::Arc, time::Instant};

use http::Request;

use crate::{
    error::Body,
    functions::Functions,
    phases::forwarding,
    request::{Handler, HandlerFuture, RequestCtx},
};

pub struct FunctionHandler {
    pub functions: Arc<Functions>,
    pub name: String,
}

impl Handler for FunctionHandler {
    fn name(&self) -> &'static str {
        "function"
    }

    fn handle<'a>(&'a self, ctx: &'a mut RequestCtx, mut req: Request<Body>) -> HandlerFuture<'a> {
        Box::pin(async move {
            // What an origin would be told: who the client is, how it came.
            forwarding::set(ctx, &mut req);
            let started = Instant::now();
            let answer = self.functions.handle(&self.name, req, ctx.client_ip).await;
            ctx.timings.record("fn", None, started.elapsed());
            answer
        })
    }
}
