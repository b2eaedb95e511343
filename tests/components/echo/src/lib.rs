//! Echoes the request: a text head (method, path and query, authority, one `h:` line per
//! header) then a blank line and the request body, streamed back as it arrives.

use std::io::Write as _;

use wasi::http::types::{IncomingRequest, OutgoingBody, ResponseOutparam};

struct Echo;

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let mut head = format!(
            "{} {}\nauthority: {}\n",
            guest::method_name(&req.method()),
            req.path_with_query().unwrap_or_default(),
            req.authority().unwrap_or_default()
        );
        for (name, value) in req.headers().entries() {
            head.push_str(&format!("h: {name}: {}\n", String::from_utf8_lossy(&value)));
        }
        head.push('\n');
        let body_out = guest::start(out, 200, &[("content-type", "text/plain")]);
        {
            let mut w = body_out.write().expect("response stream");
            w.write_all(head.as_bytes()).expect("write head");
            let body_in = req.consume().expect("request body");
            {
                let mut r = body_in.stream().expect("request stream");
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = std::io::Read::read(&mut r, &mut buf).expect("read request body");
                    if n == 0 {
                        break;
                    }
                    w.write_all(&buf[..n]).expect("write body");
                }
            }
            w.flush().expect("flush");
        }
        OutgoingBody::finish(body_out, None).expect("finish");
    }
}

wasi::http::proxy::export!(Echo);
