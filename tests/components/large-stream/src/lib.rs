//! Streams `?bytes=N` bytes (8 MiB without it) in 64 KiB writes; byte `i` is `i % 251`,
//! so the receiver can check order as well as count.

use std::io::Write as _;

use wasi::http::types::{IncomingRequest, OutgoingBody, ResponseOutparam};

struct Large;

impl wasi::exports::http::incoming_handler::Guest for Large {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let total: usize = guest::query(&req, "bytes")
            .and_then(|b| b.parse().ok())
            .unwrap_or(8 << 20);
        let body = guest::start(out, 200, &[("content-type", "application/octet-stream")]);
        {
            let mut stream = body.write().expect("stream");
            let mut chunk = vec![0u8; 64 * 1024];
            let mut sent = 0usize;
            while sent < total {
                let n = chunk.len().min(total - sent);
                for (i, b) in chunk[..n].iter_mut().enumerate() {
                    *b = ((sent + i) % 251) as u8;
                }
                stream.write_all(&chunk[..n]).expect("write");
                sent += n;
            }
            stream.flush().expect("flush");
        }
        OutgoingBody::finish(body, None).expect("finish");
    }
}

wasi::http::proxy::export!(Large);
