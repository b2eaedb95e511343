//! `/bomb` allocates (and touches) 1 MiB after 1 MiB until memory runs out; anything
//! else answers `ok`.

use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Bomb;

impl wasi::exports::http::incoming_handler::Guest for Bomb {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        if guest::path(&req) == "/bomb" {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        guest::respond(out, 200, &[], b"ok");
    }
}

wasi::http::proxy::export!(Bomb);
