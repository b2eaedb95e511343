//! `handler = { graphql = "name" }`: GraphQL over HTTP (`POST` with a JSON body, or
//! `GET` with `query` / `variables` / `operationName` / `extensions` parameters, which
//! persisted queries make short and cacheable). Every answer, refusals included, is in
//! the GraphQL response format (`{"errors":[{"message":…}]}`).

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Body as _;

use super::proxy::first_frame_checked;
use crate::{
    error::{Body, full},
    graphql::{Graphql, RequestData, aliases},
    request::{Handler, HandlerFuture, RequestCtx},
};

pub struct GraphqlHandler {
    pub graphql: Arc<Graphql>,
    pub body_read_timeout: std::time::Duration,
    /// The route has `[route.auth]`: answers are per user, never for shared caches.
    pub private: bool,
}

/// A request refused before it ran: its status and the one error's message.
struct Refused(StatusCode, String);

fn refused(status: StatusCode, message: &str) -> Refused {
    Refused(status, message.to_string())
}

/// An answer in the GraphQL response format with `message` as its one error.
fn answer(Refused(status, message): Refused) -> Response<Body> {
    let body = serde_json::json!({ "errors": [{ "message": message }] });
    let mut resp = Response::new(full(format!("{body}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl Handler for GraphqlHandler {
    fn name(&self) -> &'static str {
        "graphql"
    }

    fn handle<'a>(&'a self, ctx: &'a mut RequestCtx, req: Request<Body>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let is_get = req.method() == Method::GET;
            let request = match *req.method() {
                Method::GET => of_query(req.uri().query().unwrap_or("")),
                Method::POST => self.of_body(req).await,
                _ => {
                    let mut r = answer(refused(StatusCode::METHOD_NOT_ALLOWED, "GET or POST"));
                    r.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                    return Ok(r);
                }
            };
            let request = match request {
                Ok(r) => r,
                Err(r) => return Ok(answer(r)),
            };
            let max = self.graphql.settings.max_aliases;
            if let Some(n) = aliases(&request.query)
                && n > max
            {
                return Ok(answer(refused(
                    StatusCode::OK,
                    &format!("the query has {n} aliases; at most {max} are served"),
                )));
            }
            let answer = self
                .graphql
                .schema
                .execute(request.data(RequestData {
                    client: ctx.client_ip,
                    calls_left: self.graphql.settings.max_resolver_calls.into(),
                }))
                .await;
            ctx.timings.record("graphql", None, started.elapsed());
            let ok = answer.errors.is_empty();
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            let mut resp = Response::new(full(body));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let age = self.graphql.settings.get_max_age.as_secs();
            let cache = if is_get && ok && age > 0 {
                let scope = if self.private { "private" } else { "public" };
                format!("{scope}, max-age={age}")
            } else {
                "no-cache".to_string()
            };
            if let Ok(v) = HeaderValue::from_str(&cache) {
                h.insert(header::CACHE_CONTROL, v);
            }
            Ok(resp)
        })
    }
}

/// A GET's request: `query`, `operationName`, and `variables` / `extensions` as JSON.
fn of_query(query: &str) -> Result<async_graphql::Request, Refused> {
    let mut fields = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let value = match &*k {
            "query" | "operationName" => serde_json::Value::String(v.into_owned()),
            "variables" | "extensions" => serde_json::from_str(&v)
                .map_err(|_| refused(StatusCode::BAD_REQUEST, &format!("{k} is not JSON")))?,
            _ => continue,
        };
        fields.insert(k.into_owned(), value);
    }
    parse(serde_json::Value::Object(fields))
}

impl GraphqlHandler {
    /// A POST's request: a JSON body within `max_body_bytes`.
    async fn of_body(&self, req: Request<Body>) -> Result<async_graphql::Request, Refused> {
        let max = self.graphql.settings.max_body_bytes;
        let too_large = || {
            refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {max} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let body = req.into_body();
        if body.is_end_stream() {
            return Err(refused(StatusCode::BAD_REQUEST, "no request body"));
        }
        let body = first_frame_checked(body, self.body_read_timeout)
            .await
            .map_err(|e| refused(e.status(), "the request body could not be read"))?;
        let bytes = crate::body::read_bounded(body, max)
            .await
            .map_err(|e| match e {
                crate::body::Unread::TooLarge => too_large(),
                crate::body::Unread::Failed(_) => refused(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                ),
            })?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            refused(
                StatusCode::BAD_REQUEST,
                &format!("the body is not JSON: {e}"),
            )
        })?;
        parse(json)
    }
}

fn parse(json: serde_json::Value) -> Result<async_graphql::Request, Refused> {
    serde_json::from_value(json).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            &format!("not a GraphQL request ({{\"query\",\"variables\",\"operationName\"}}): {e}"),
        )
    })
}
