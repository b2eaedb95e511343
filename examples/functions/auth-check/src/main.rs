//! Checks a bearer token before the request goes on.
//!
//! Configure, as the function's `env`:
//! - `TOKENS = "alice:token-one,bob:token-two"` (user:token pairs)
//! - `BACKEND = "backend"`: the granted `[[upstream]]` valid requests go to (add it to
//!   the function's `upstreams`).
//!
//! Without a valid `Authorization: Bearer <token>` the answer is 401. With one, the
//! request goes to the backend with `X-Auth-User: <user>` and without the token, and
//! the backend's response streams back. (As a request filter, once the node has them,
//! the function would answer 401 or let the request continue with `X-Auth-User`; see
//! the README.)

use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(user) = presented.and_then(user_of) else {
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", "Bearer realm=\"edge\"")
            .header("content-type", "application/json")
            .body("{\"error\":\"unauthorized\"}\n".into())?);
    };
    forward(req, &user).await
}

/// The user whose token `presented` is.
fn user_of(presented: &str) -> Option<String> {
    let tokens = std::env::var("TOKENS").ok()?;
    // Every token is compared, each in constant time: the answer's timing says
    // nothing about how close a guess was.
    let mut found = None;
    for (user, token) in tokens.split(',').filter_map(|p| p.split_once(':')) {
        if same(token.trim().as_bytes(), presented.as_bytes()) {
            found = Some(user.trim().to_string());
        }
    }
    found
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request, as `user`, to the backend upstream (by name: the node sends it through
/// that pool); its response streams back as is.
async fn forward(req: Request<Body>, user: &str) -> Result<Response<Body>, Error> {
    let backend = std::env::var("BACKEND").unwrap_or_else(|_| "backend".into());
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut out = Request::builder()
        .method(req.method())
        .uri(format!("http://{backend}{path}"));
    for (name, value) in req.headers() {
        // The token stays here; the backend trusts the node's word for the user.
        if name != "authorization" && name != "x-auth-user" {
            out = out.header(name, value);
        }
    }
    let out = out.header("x-auth-user", user).body(req.into_body())?;
    let resp = match Client::new().send(out).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("backend {backend} failed: {e:#}");
            return Ok(Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::empty())?);
        }
    };
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, body))
}
