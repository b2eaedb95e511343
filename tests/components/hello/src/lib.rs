//! Answers `200 hello, <GREETING>` (GREETING from the function's `env`, "world" without
//! it) and logs one line on stdout.

use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let who = std::env::var("GREETING").unwrap_or_else(|_| "world".into());
        println!("hello: serving {}", guest::path(&req));
        guest::respond(
            out,
            200,
            &[("content-type", "text/plain")],
            format!("hello, {who}\n").as_bytes(),
        );
    }
}

wasi::http::proxy::export!(Hello);
