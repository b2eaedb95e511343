//! The built-in demo origin: a small page about the node and the request, so the
//! embedded default shows a working edge with no origin of its own.

use http::{Request, Response, header};

use crate::{
    error::{Body, full},
    request::{Handler, HandlerFuture, RequestCtx},
};

/// `handler = "demo"`, and routes to a `builtin = "demo"` upstream.
pub struct DemoHandler {
    pub node_id: String,
}

impl Handler for DemoHandler {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn handle<'a>(&'a self, ctx: &'a mut RequestCtx, req: Request<Body>) -> HandlerFuture<'a> {
        let page = respond(ctx, &self.node_id, req.method(), req.uri().path());
        Box::pin(std::future::ready(Ok(page)))
    }
}

pub fn respond(
    ctx: &RequestCtx,
    node_id: &str,
    method: &http::Method,
    path: &str,
) -> Response<Body> {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>edge-node</title></head>\n\
         <body><h1>edge-node is running</h1>\n<p>node <code>{}</code>, region <code>{}</code></p>\n\
         <p>{} <code>{}</code> for host <code>{}</code> from <code>{}</code></p>\n\
         <p>Point a <code>[[route]]</code> at your own <code>[[upstream]]</code> to proxy it.</p>\n\
         </body></html>\n",
        escape(node_id),
        escape(&ctx.region),
        escape(method.as_str()),
        escape(path),
        escape(&ctx.host),
        ctx.client.ip()
    );
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
