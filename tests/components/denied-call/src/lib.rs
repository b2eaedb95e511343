//! Tries to reach `?target=<authority>` (an address, or a name that is not granted) and
//! reports what happened: `error: <code>` or `reached: <status>`.

use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Denied;

impl wasi::exports::http::incoming_handler::Guest for Denied {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let target = guest::query(&req, "target").unwrap_or_else(|| "127.0.0.1".into());
        let text = match guest::get(&target, "/") {
            Ok((status, _)) => format!("reached: {status}"),
            Err(e) => format!("error: {e:?}"),
        };
        guest::respond(out, 200, &[], text.as_bytes());
    }
}

wasi::http::proxy::export!(Denied);
