//! Strict HTTP/1 framing in front of hyper. hyper already rejects most ambiguous framing
//! (conflicting Content-Lengths, bad chunk sizes, obs-fold), but a request carrying both
//! Content-Length and Transfer-Encoding is, as RFC 9112 6.1 allows, re-framed by the
//! chunked coding. An edge refuses it outright (400, connection closed): such requests
//! are how smuggling between proxies starts.
//!
//! The guard follows the inbound byte stream: request heads line by line, then each
//! body by its length or its chunks, so it knows where the next head starts. When a
//! head's second framing header completes, that line is made unparseable before hyper
//! sees it, and hyper answers 400 and closes. Only the current incomplete line is
//! ever held back; upgrades, CONNECT and HTTP/2 turn the guard into a plain pass-through.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::info;

/// Where in the request stream the next byte belongs.
#[derive(Debug, PartialEq)]
enum State {
    /// Request line and header lines.
    Head,
    /// A body of this many more bytes.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data, then its CRLF (counted in).
    ChunkData(u64),
    /// Trailer lines up to the empty line.
    Trailers,
    /// No more inspection (HTTP/2, an upgrade, or framing hyper will refuse anyway).
    Passthrough,
}

/// What the current head has said so far.
#[derive(Debug, Default)]
struct HeadSeen {
    started: bool,
    transfer_encoding: bool,
    chunked_last: bool,
    content_length: Option<u64>,
    bad_length: bool,
    upgrade: bool,
    connection_upgrade: bool,
    connect: bool,
    refused: bool,
}

pub struct Framing {
    state: State,
    head: HeadSeen,
    /// The incomplete line (head, chunk size or trailer).
    line: Vec<u8>,
    max_line: usize,
    /// Requests refused so far (for the log).
    pub refused: u32,
}

impl Framing {
    pub fn new(max_line: usize) -> Self {
        Self {
            state: State::Head,
            head: HeadSeen::default(),
            line: Vec::new(),
            max_line: max_line.max(1024),
            refused: 0,
        }
    }

    /// Follows `input`, appending what hyper may read now to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Body(n) | State::ChunkData(n) => {
                    let k = (n.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.body_passed(k);
                }
                State::Head | State::ChunkSize | State::Trailers => {
                    let Some(end) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > self.max_line {
                            // hyper's own limits answer this one.
                            out.append(&mut self.line);
                            self.state = State::Passthrough;
                        }
                        return;
                    };
                    self.line.extend_from_slice(&input[..=end]);
                    input = &input[end + 1..];
                    let mut line = std::mem::take(&mut self.line);
                    self.on_line(&mut line);
                    out.extend_from_slice(&line);
                }
            }
        }
    }

    /// Body bytes still expected before the framing needs to look again (a body's
    /// rest, or the current chunk's data and CRLF); 0 when it is not in a body.
    fn body_left(&self) -> u64 {
        match self.state {
            State::Body(n) | State::ChunkData(n) => n,
            _ => 0,
        }
    }

    /// `k` (at most `body_left`) body bytes went to hyper.
    fn body_passed(&mut self, k: usize) {
        let left = self.body_left() - k as u64;
        self.state = match (&self.state, left) {
            (State::Body(_), 0) => State::Head,
            (State::Body(_), l) => State::Body(l),
            (_, 0) => State::ChunkSize,
            (_, l) => State::ChunkData(l),
        };
    }

    /// What is held back, for when the connection ends.
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.line)
    }

    fn on_line(&mut self, line: &mut [u8]) {
        let text = trim_eol(line);
        match self.state {
            State::ChunkSize => {
                let size = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.split(';').next())
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
                self.state = match size {
                    Some(0) => State::Trailers,
                    // The data and its CRLF.
                    Some(n) => State::ChunkData(n.saturating_add(2)),
                    None => State::Passthrough,
                };
            }
            State::Trailers if text.is_empty() => self.state = State::Head,
            State::Head => self.on_head_line(line),
            _ => {}
        }
    }

    fn on_head_line(&mut self, line: &mut [u8]) {
        let text = trim_eol(line);
        if !self.head.started {
            // Empty lines before a request line are allowed (RFC 9112 2.2).
            if text.is_empty() {
                return;
            }
            self.head.started = true;
            if text.starts_with(b"PRI * HTTP/2") {
                self.state = State::Passthrough;
            }
            self.head.connect = text.starts_with(b"CONNECT ");
            return;
        }
        if text.is_empty() {
            self.end_of_head();
            return;
        }
        let Some(colon) = text.iter().position(|&b| b == b':') else {
            return;
        };
        let name = &text[..colon];
        let value = String::from_utf8_lossy(&text[colon + 1..]).to_ascii_lowercase();
        let was_both = self.head.transfer_encoding && self.head.content_length.is_some();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.head.transfer_encoding = true;
            if let Some(last) = value.split(',').map(str::trim).rfind(|c| !c.is_empty()) {
                self.head.chunked_last = last == "chunked";
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            match value.trim().parse::<u64>() {
                Ok(n) if self.head.content_length.is_none_or(|m| m == n) => {
                    self.head.content_length = Some(n)
                }
                _ => self.head.bad_length = true,
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.head.upgrade = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.head.connection_upgrade |= value.split(',').any(|t| t.trim() == "upgrade");
        }
        if !was_both
            && self.head.transfer_encoding
            && self.head.content_length.is_some()
            && !self.head.refused
        {
            // A byte no header name may hold: hyper fails to parse the head and
            // answers 400 before anything reaches a route or an origin.
            line[0] = b'(';
            self.head.refused = true;
            self.refused += 1;
        }
    }

    fn end_of_head(&mut self) {
        let h = std::mem::take(&mut self.head);
        self.state =
            if h.refused || h.bad_length || h.connect || (h.upgrade && h.connection_upgrade) {
                // Refused or ambiguous: hyper closes the connection. An upgrade or CONNECT
                // may turn it into a tunnel: nothing after it is HTTP/1.
                State::Passthrough
            } else if h.transfer_encoding {
                if h.chunked_last {
                    State::ChunkSize
                } else {
                    State::Passthrough
                }
            } else {
                match h.content_length {
                    Some(n) if n > 0 => State::Body(n),
                    _ => State::Head,
                }
            };
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A client connection seen through `Framing`.
pub struct FramingGuard<S> {
    inner: S,
    framing: Framing,
    peer: SocketAddr,
    out: Vec<u8>,
    at: usize,
    eof: bool,
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S, peer: SocketAddr, max_header_bytes: usize) -> Self {
        Self {
            inner,
            framing: Framing::new(max_header_bytes),
            peer,
            out: Vec::new(),
            at: 0,
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.at < this.out.len() {
                let n = (this.out.len() - this.at).min(buf.remaining());
                buf.put_slice(&this.out[this.at..this.at + n]);
                this.at += n;
                if this.at == this.out.len() {
                    this.out.clear();
                    this.at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.framing.state == State::Passthrough {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Inside a body the bytes need no inspection, only counting: read them
            // straight into hyper's buffer instead of copying them through ours.
            let left = this.framing.body_left();
            if left > 0 && buf.remaining() > 0 {
                let limit = left.min(buf.remaining() as u64) as usize;
                let mut body = buf.take(limit);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut body))?;
                let k = body.filled().len();
                if k == 0 {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                // SAFETY: the inner stream initialised and filled these `k` bytes of
                // `buf`'s unfilled part (`take` lends exactly that part).
                unsafe { buf.assume_init(k) };
                buf.advance(k);
                this.framing.body_passed(k);
                return Poll::Ready(Ok(()));
            }
            // Uninitialised: zeroing 8 KiB on every read showed up in profiles.
            let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
            let mut rb = ReadBuf::uninit(&mut tmp);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                this.out = this.framing.take_partial();
                continue;
            }
            let before = this.framing.refused;
            this.framing.feed(rb.filled(), &mut this.out);
            if this.framing.refused != before {
                info!(peer = %this.peer, "request with both Content-Length and Transfer-Encoding refused (400)");
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would read.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Framing) {
        let mut f = Framing::new(8192);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            f.feed(piece, &mut out);
        }
        out.extend(f.take_partial());
        (out, f)
    }

    #[test]
    fn both_framing_headers_make_the_head_unparseable_wherever_it_splits() {
        let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for step in [1, 3, 7, req.len()] {
            let (out, f) = run(req, step);
            assert_eq!(f.refused, 1);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("\r\n(ransfer-Encoding: chunked\r\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn pipelined_requests_are_followed_through_their_bodies() {
        // A body that looks like a head must not be taken for one; the real second
        // request with both headers must be.
        let req = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 49\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Enc\r\nPOST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        for step in [1, 5, req.len()] {
            let (out, f) = run(req, step);
            assert_eq!(f.refused, 1, "step {step}");
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("\r\n(ontent-Length: 3\r\n"), "{text}");
            assert!(text.contains("GET / HTTP/1.1\r\nContent-Length: 1\r\n"));
        }
    }

    /// Yields its input `step` bytes at a time.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_guard_reads_bodies_directly_and_still_follows_the_framing() {
        use tokio::io::AsyncReadExt;
        // Bodies read straight into the reader's buffer must leave the framing exactly
        // where copying them through `feed` would.
        let req = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 49\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Enc\r\nPOST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        let expected = run(req, req.len()).0;
        for (step, chunk) in [(1, 3), (5, 64), (req.len(), 7), (13, 4096), (req.len(), 1)] {
            let mut g = FramingGuard::new(
                Trickle { data: req, step },
                "127.0.0.1:1".parse().unwrap(),
                8192,
            );
            let mut got = Vec::new();
            let mut b = vec![0u8; chunk];
            loop {
                let n = g.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            assert_eq!(got, expected, "step {step}, reads of {chunk}");
            assert_eq!(g.framing.refused, 1);
        }
    }

    #[test]
    fn clean_requests_upgrades_and_http2_pass_untouched() {
        let clean =
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(run(clean, 2).0, clean);
        let upgrade = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n";
        let (out, f) = run(upgrade, 4);
        assert_eq!((out.as_slice(), f.refused), (upgrade.as_slice(), 0));
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        assert_eq!(run(h2, 3).0, h2);
    }
}
