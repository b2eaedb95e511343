//! A filter (edge-node's convention, `phases::filter`). As a request filter: without
//! `x-api-key: let-me-in` it answers 401; with it, the request goes on with
//! `x-filtered-by: wasm`, without `x-api-key`, and `/old/…` becomes `/new/…` (query kept). As a
//! response filter (the request carries `x-edge-status`): the status stays, the headers
//! stay, and `x-response-filter: wasm` is added; a 404 becomes a 410.

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Filter;

impl wasi::exports::http::incoming_handler::Guest for Filter {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let headers = req.headers().entries();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        if let Some(status) = get("x-edge-status") {
            // Response filter: the origin's head, edited.
            let mut status: u16 = status.parse().unwrap_or(500);
            if status == 404 {
                status = 410;
            }
            let fields = Fields::new();
            for (n, v) in &headers {
                if !n.eq_ignore_ascii_case("x-edge-status") {
                    fields.append(n, v).expect("header");
                }
            }
            fields
                .append("x-response-filter", b"wasm")
                .expect("header");
            let resp = OutgoingResponse::new(fields);
            resp.set_status_code(status).expect("status");
            let body = resp.body().expect("body");
            ResponseOutparam::set(out, Ok(resp));
            OutgoingBody::finish(body, None).expect("finish");
            return;
        }
        if get("x-api-key").as_deref() != Some("let-me-in") {
            guest::respond(
                out,
                401,
                &[("content-type", "text/plain"), ("www-authenticate", "ApiKey")],
                b"no key\n",
            );
            return;
        }
        let path = req.path_with_query().unwrap_or_default();
        let mut answer = vec![
            ("x-edge-continue", "1".to_string()),
            ("x-filtered-by", "wasm".to_string()),
            ("x-edge-remove", "x-api-key".to_string()),
        ];
        if let Some(rest) = path.strip_prefix("/old/") {
            answer.push(("x-edge-path", format!("/new/{rest}")));
        }
        let answer: Vec<(&str, &str)> = answer.iter().map(|(n, v)| (*n, v.as_str())).collect();
        guest::respond(out, 200, &answer, b"");
    }
}

wasi::http::proxy::export!(Filter);
