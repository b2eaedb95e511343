//! Helpers the test components share, over the plain `wasi:http` bindings (the `wasi`
//! crate): what a component built for `wasmtime serve` or Spin does, nothing node-specific.

use std::io::{Read as _, Write as _};

use wasi::http::{
    outgoing_handler,
    types::{
        ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
        OutgoingResponse, ResponseOutparam, Scheme,
    },
};

/// Answers `status` with `headers` and the whole of `body`.
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let body_out = start(out, status, headers);
    write_all(&body_out, body);
    OutgoingBody::finish(body_out, None).expect("finish the body");
}

/// Sends the status line and headers; the body follows through the returned handle
/// (finish it with `OutgoingBody::finish`).
pub fn start(out: ResponseOutparam, status: u16, headers: &[(&str, &str)]) -> OutgoingBody {
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .expect("a valid header");
    }
    let resp = OutgoingResponse::new(fields);
    resp.set_status_code(status).expect("a valid status");
    let body = resp.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(resp));
    body
}

/// Writes `bytes` to a body, waiting for the host to take them (backpressure).
pub fn write_all(body: &OutgoingBody, bytes: &[u8]) {
    let mut stream = body.write().expect("the body's stream, once");
    stream.write_all(bytes).expect("write the body");
    stream.flush().expect("flush the body");
}

/// The request's body, all of it.
pub fn read_body(req: &IncomingRequest) -> Vec<u8> {
    let body = req.consume().expect("the request body, once");
    let mut data = Vec::new();
    {
        let mut stream = body.stream().expect("the body's stream, once");
        stream
            .read_to_end(&mut data)
            .expect("read the request body");
    }
    drop(body);
    data
}

/// The value of `key` in the request's query string.
pub fn query(req: &IncomingRequest, key: &str) -> Option<String> {
    let pq = req.path_with_query()?;
    let (_, q) = pq.split_once('?')?;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

/// The request's path without the query.
pub fn path(req: &IncomingRequest) -> String {
    let pq = req.path_with_query().unwrap_or_default();
    pq.split('?').next().unwrap_or("/").to_string()
}

/// GET `http://{authority}{path}`: the status and body, or the error the host gave.
pub fn get(authority: &str, path: &str) -> Result<(u16, Vec<u8>), ErrorCode> {
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).expect("GET");
    req.set_scheme(Some(&Scheme::Http)).expect("http");
    req.set_authority(Some(authority))
        .map_err(|()| ErrorCode::HttpRequestUriInvalid)?;
    req.set_path_with_query(Some(path))
        .map_err(|()| ErrorCode::HttpRequestUriInvalid)?;
    let pending = outgoing_handler::handle(req, None)?;
    pending.subscribe().block();
    let resp = pending
        .get()
        .expect("ready after block")
        .expect("taken once")?;
    let status = resp.status();
    let body = resp.consume().expect("the response body, once");
    let mut data = Vec::new();
    {
        let mut stream = body.stream().expect("the body's stream, once");
        stream
            .read_to_end(&mut data)
            .map_err(|_| ErrorCode::HttpProtocolError)?;
    }
    drop(body);
    Ok((status, data))
}

/// The request method as it is written on the wire.
pub fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}
