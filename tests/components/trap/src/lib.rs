//! `/panic` panics (a trap for the host); anything else answers `ok`.

use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

impl wasi::exports::http::incoming_handler::Guest for Trap {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        if guest::path(&req) == "/panic" {
            panic!("the trap component was asked to panic");
        }
        guest::respond(out, 200, &[], b"ok");
    }
}

wasi::http::proxy::export!(Trap);
