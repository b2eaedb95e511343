//! The HTTP/1 framing guard (`edge_node::server::framing::FramingGuard`) on arbitrary
//! byte streams, delivered in arbitrary pieces and read in arbitrary sizes. It never
//! panics, never yields a byte it was not given (it only rewrites the first byte of a
//! refused head's line to `(`, and only drops what follows a head line over the limit),
//! and no request head that hyper would parse from what it yields carries both
//! Content-Length and Transfer-Encoding.
//!
//! The last property needs to know where hyper finds each head: `Hyper` below follows
//! what it yields the way hyper 1.x's server does (httparse for heads, then the body by
//! Content-Length or hyper's chunked decoder, byte for byte, trailers included), and
//! stops where hyper would close the connection. A response to an upgrade is assumed
//! not to be 101, so hyper goes on reading requests after it.
#![no_main]

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use edge_node::server::framing::FramingGuard;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client side: `data` in pieces whose sizes cycle through `pieces`, with a
/// `Pending` before every piece when `stall`.
struct Client<'a> {
    data: &'a [u8],
    pieces: Vec<usize>,
    next: usize,
    stall: bool,
    stalled: bool,
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stall && !self.stalled {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.stalled = false;
        let piece = self.pieces[self.next % self.pieces.len()];
        self.next += 1;
        let n = piece.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The node's limits, as `server::spawn` gives them to hyper.
const MAX_HEADERS: usize = 100;
const TRAILER_LIMIT: usize = 16 * 1024;
const EXTENSIONS_LIMIT: u64 = 16 * 1024;

/// Follows `out` as hyper's HTTP/1 server does; panics on a head with both framing
/// headers. Returns at the first point where hyper would stop reading requests.
fn hyper_follows(mut rest: &[u8]) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = req.parse(rest) else {
            return;
        };
        let named = |name: &str| {
            req.headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(name))
        };
        assert!(
            !(named("content-length") && named("transfer-encoding")),
            "a head with both Content-Length and Transfer-Encoding got through: {:?}",
            String::from_utf8_lossy(&rest[..n])
        );
        let http11 = req.version == Some(1);
        let mut keep_alive = http11;
        let (mut te, mut chunked, mut length) = (false, false, None::<u64>);
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value).ok();
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                chunked = value
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let digits = !h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit);
                let Some(len) = value.filter(|_| digits).and_then(|v| v.parse().ok()) else {
                    return;
                };
                if length.is_some_and(|l| l != len) {
                    return;
                }
                length = Some(len);
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = value.unwrap_or("").to_ascii_lowercase();
                let has = |t: &str| v.split(',').any(|x| x.trim() == t);
                if has("close") {
                    keep_alive = false;
                } else if !http11 && has("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        rest = &rest[n..];
        if te {
            if !http11 || !chunked {
                return;
            }
            match chunked_body(rest) {
                Some(n) => rest = &rest[n..],
                None => return,
            }
        } else if let Some(len) = length {
            let Some(after) = usize::try_from(len).ok().and_then(|l| rest.get(l..)) else {
                return;
            };
            rest = after;
        }
        if !keep_alive {
            return;
        }
    }
}

/// hyper's chunked decoder (hyper 1.x `proto/h1/decode.rs`, `ChunkedState`): the length
/// of the body with its trailers, or None where hyper fails or the input ends.
fn chunked_body(data: &[u8]) -> Option<usize> {
    #[derive(Clone, Copy)]
    enum S {
        Start,
        Size,
        Lws,
        Ext,
        SizeLf,
        BodyCr,
        BodyLf,
        EndCr,
        Trailer,
        TrailerLf,
        EndLf,
    }
    let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
    let (mut s, mut size, mut ext, mut i) = (S::Start, 0u64, 0u64, 0usize);
    let (mut trailers, mut count): (Option<Vec<u8>>, usize) = (None, 0);
    loop {
        let b = *data.get(i)?;
        i += 1;
        s = match (s, b) {
            (S::Start, b) => {
                size = hex(b)?;
                S::Size
            }
            (S::Size, b) if hex(b).is_some() => {
                size = size.checked_mul(16)?.checked_add(hex(b)?)?;
                S::Size
            }
            (S::Size | S::Lws, b'\t' | b' ') => S::Lws,
            (S::Size | S::Lws, b';') => S::Ext,
            (S::Size | S::Lws | S::Ext, b'\r') => S::SizeLf,
            (S::Ext, b'\n') => return None,
            (S::Ext, _) => {
                ext += 1;
                if ext >= EXTENSIONS_LIMIT {
                    return None;
                }
                S::Ext
            }
            (S::SizeLf, b'\n') if size == 0 => S::EndCr,
            (S::SizeLf, b'\n') => {
                let n = usize::try_from(size).ok()?;
                if data.len() - i < n {
                    return None;
                }
                i += n;
                S::BodyCr
            }
            (S::BodyCr, b'\r') => S::BodyLf,
            (S::BodyLf, b'\n') => {
                size = 0;
                S::Start
            }
            (S::EndCr, b'\r') => {
                if let Some(t) = &mut trailers {
                    t.push(b);
                    if t.len() >= TRAILER_LIMIT {
                        return None;
                    }
                }
                S::EndLf
            }
            (S::EndCr | S::Trailer, b) => {
                let t = trailers.get_or_insert_with(Vec::new);
                t.push(b);
                if t.len() >= TRAILER_LIMIT && !(matches!(s, S::EndCr) && t.len() == 1) {
                    return None;
                }
                if b == b'\r' && matches!(s, S::Trailer) {
                    S::TrailerLf
                } else {
                    S::Trailer
                }
            }
            (S::TrailerLf, b'\n') => {
                if count >= MAX_HEADERS {
                    return None;
                }
                count += 1;
                let t = trailers.as_mut()?;
                t.push(b);
                if t.len() >= TRAILER_LIMIT {
                    return None;
                }
                S::EndCr
            }
            (S::EndLf, b'\n') => {
                if let Some(t) = &mut trailers {
                    t.push(b);
                    if t.len() >= TRAILER_LIMIT {
                        return None;
                    }
                    let mut h = vec![httparse::EMPTY_HEADER; count];
                    match httparse::parse_headers(t, &mut h) {
                        Ok(httparse::Status::Complete(_)) => {}
                        _ => return None,
                    }
                    for h in h.iter().take_while(|h| !h.name.is_empty()) {
                        http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                        http::HeaderValue::from_bytes(h.value).ok()?;
                    }
                }
                return Some(i);
            }
            _ => return None,
        };
    }
}

fuzz_target!(|data: &[u8]| {
    // [max_header_bytes: 2][read sizes: 2][piece sizes: 4][flags: 1][stream…]
    let Some((head, stream)) = data.split_first_chunk::<9>() else {
        return;
    };
    let max_header_bytes = u16::from_le_bytes([head[0], head[1]]) as usize;
    let reads = [head[2] as usize % 64 + 1, head[3] as usize * 64 + 1];
    let pieces: Vec<usize> = head[4..8].iter().map(|&p| p as usize % 97 + 1).collect();
    let client = Client {
        data: stream,
        pieces,
        next: 0,
        stall: head[8] & 1 == 1,
        stalled: false,
    };
    let mut guard = FramingGuard::new(client, "192.0.2.1:1".parse().unwrap(), max_header_bytes);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::with_capacity(stream.len());
    let mut buf = vec![0u8; reads[0].max(reads[1])];
    for round in 0.. {
        let want = reads[round % 2];
        let mut rb = ReadBuf::new(&mut buf[..want]);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut rb) {
            Poll::Pending => continue,
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Ready(Ok(())) => {}
        }
        let got = rb.filled();
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(got);
        assert!(out.len() <= stream.len(), "more bytes out than in");
        assert!(round < 8 * stream.len() + 16, "no end");
    }
    // Every byte arrives, unless a head line over the limit stopped the stream there.
    assert!(
        out.len() == stream.len() || guard.refused() > 0,
        "bytes lost: {} of {}",
        out.len(),
        stream.len()
    );
    for (i, (a, b)) in stream.iter().zip(&out).enumerate() {
        assert!(
            a == b || *b == b'(',
            "byte {i} changed from {a:#x} to {b:#x}"
        );
    }
    hyper_follows(&out);
});
