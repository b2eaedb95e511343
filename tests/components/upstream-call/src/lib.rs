//! Calls the granted upstream named by env UPSTREAM ("origin" without it) by name —
//! `http://<upstream>/<path>` — and answers with what it said.

use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Call;

impl wasi::exports::http::incoming_handler::Guest for Call {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let upstream = std::env::var("UPSTREAM").unwrap_or_else(|_| "origin".into());
        let path = guest::query(&req, "path").unwrap_or_else(|| "/".into());
        match guest::get(&upstream, &path) {
            Ok((status, body)) => {
                let mut text = format!("upstream {upstream} said {status}: ").into_bytes();
                text.extend_from_slice(&body);
                guest::respond(out, 200, &[], &text);
            }
            Err(e) => guest::respond(out, 502, &[], format!("error: {e:?}").as_bytes()),
        }
    }
}

wasi::http::proxy::export!(Call);
