//! ACME HTTP-01 phase: on the plain HTTP listeners, `GET /.well-known/acme-challenge/
//! <token>` is answered with the token's key authorization, before anything else (the
//! shield, routing, auth and rate limits must not stand between the CA and its
//! answer). An unknown token is a 404. Only for hosts kept over ACME: with nothing kept,
//! or for any other host, the path goes through the pipeline like any other.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};

use crate::{
    acme::AcmeState,
    error::{Body, full},
    request::{Flow, Phase, PhaseFuture, RequestCtx},
};

const PREFIX: &str = "/.well-known/acme-challenge/";

pub struct AcmeChallengePhase {
    pub state: Arc<AcmeState>,
}

impl Phase for AcmeChallengePhase {
    fn name(&self) -> &'static str {
        "acme"
    }

    fn early_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> PhaseFuture<'a> {
        Box::pin(async move {
            let flow = self.answer(ctx.scheme, req);
            // A token this node does not know may be another node's (a fleet sharing
            // certificates through Redis: the CA reaches any of them).
            if let Flow::Answer(resp) = &flow
                && resp.status() == StatusCode::NOT_FOUND
                && (req.method() == Method::GET || req.method() == Method::HEAD)
                && let Some(token) = req.uri().path().strip_prefix(PREFIX)
                && token_like(token)
                && let Some(answer) = self.state.fleet_http_answer(token).await
            {
                return Ok(Flow::Answer(respond(StatusCode::OK, answer)));
            }
            Ok(flow)
        })
    }
}

impl AcmeChallengePhase {
    fn answer(&self, scheme: &str, req: &Request<Body>) -> Flow {
        if scheme != "http" || !self.state.active() {
            return Flow::Continue;
        }
        // Only for the names kept here: another host's challenges (an origin running
        // its own ACME client) go through the pipeline like any other request, and no
        // Redis lookup is spent on them.
        let host = req
            .uri()
            .host()
            .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
            .map(|h| {
                let h = h.strip_suffix('.').unwrap_or(h);
                h.rsplit_once(':')
                    .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                    .map_or(h, |(n, _)| n)
                    .to_ascii_lowercase()
            });
        if !host.is_some_and(|h| self.state.manages(&h)) {
            return Flow::Continue;
        }
        let Some(token) = req.uri().path().strip_prefix(PREFIX) else {
            return Flow::Continue;
        };
        let found = (req.method() == Method::GET || req.method() == Method::HEAD)
            .then(|| self.state.http_answer(token))
            .flatten();
        let (status, body) = match found {
            Some(key_authorization) => (StatusCode::OK, key_authorization),
            None => (
                StatusCode::NOT_FOUND,
                "no such ACME challenge\n".to_string(),
            ),
        };
        Flow::Answer(respond(status, body))
    }
}

/// What an ACME token can be (base64url, RFC 8555 §8.1): anything else is not looked
/// up in Redis.
fn token_like(t: &str) -> bool {
    (1..=128).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn respond(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::{AcmeCert, ChallengeKind};

    fn req(method: Method, path: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "a.example.com:80")
            .body(crate::error::empty())
            .unwrap()
    }

    fn status(f: Flow) -> Option<StatusCode> {
        match f {
            Flow::Continue => None,
            Flow::Answer(r) => Some(r.status()),
        }
    }

    #[test]
    fn answers_known_tokens_only_on_plain_http_and_only_with_acme() {
        let state = Arc::new(AcmeState::default());
        let phase = AcmeChallengePhase {
            state: state.clone(),
        };
        let path = "/.well-known/acme-challenge/tok";
        // No ACME names: the path is the routes' like any other.
        assert_eq!(status(phase.answer("http", &req(Method::GET, path))), None);
        state.set_names(&[AcmeCert {
            names: vec!["a.example.com".into()],
            directory: "https://ca.example/dir".into(),
            contact: None,
            directory_ca: None,
            challenge: ChallengeKind::Http01,
            renew_before: None,
            redis: None,
        }]);
        assert_eq!(
            status(phase.answer("http", &req(Method::GET, path))),
            Some(StatusCode::NOT_FOUND)
        );
        state.add_http("tok", "tok.thumb");
        // Another host's challenge path is its routes', whatever the token.
        let mut other = req(Method::GET, path);
        other.headers_mut().insert(
            header::HOST,
            http::HeaderValue::from_static("b.example.com"),
        );
        assert_eq!(status(phase.answer("http", &other)), None);
        assert_eq!(
            status(phase.answer("http", &req(Method::GET, path))),
            Some(StatusCode::OK)
        );
        assert_eq!(
            status(phase.answer("http", &req(Method::POST, path))),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(status(phase.answer("https", &req(Method::GET, path))), None);
        assert_eq!(
            status(phase.answer("http", &req(Method::GET, "/other"))),
            None
        );
        state.remove_http("tok");
        assert_eq!(
            status(phase.answer("http", &req(Method::GET, path))),
            Some(StatusCode::NOT_FOUND)
        );
    }
}
