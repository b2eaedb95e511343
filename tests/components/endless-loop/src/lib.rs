//! `/spin` never returns (a CPU loop); `/drip` answers at once, then sends a byte every
//! 10 ms forever; anything else answers `ok`.

use wasi::{
    clocks::monotonic_clock,
    http::types::{IncomingRequest, ResponseOutparam},
};

struct Endless;

impl wasi::exports::http::incoming_handler::Guest for Endless {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        match guest::path(&req).as_str() {
            "/spin" => {
                let mut i = 0u64;
                loop {
                    // Opaque to the optimiser: the loop stays a loop.
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "/drip" => {
                let body = guest::start(out, 200, &[]);
                let stream = body.write().expect("stream");
                loop {
                    stream.blocking_write_and_flush(b".").expect("write");
                    monotonic_clock::subscribe_duration(10_000_000).block();
                }
            }
            _ => guest::respond(out, 200, &[], b"ok"),
        }
    }
}

wasi::http::proxy::export!(Endless);
