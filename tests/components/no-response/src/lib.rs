//! Returns without ever setting a response.

use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Nothing;

impl wasi::exports::http::incoming_handler::Guest for Nothing {
    fn handle(_req: IncomingRequest, out: ResponseOutparam) {
        drop(out);
    }
}

wasi::http::proxy::export!(Nothing);
