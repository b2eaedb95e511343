//! Strict HTTP/1 framing in front of hyper. hyper already rejects most ambiguous framing
//! (conflicting Content-Lengths, bad chunk sizes, obs-fold), but a request carrying both
//! Content-Length and Transfer-Encoding is, as RFC 9112 6.1 allows, re-framed by the
//! chunked coding. An edge refuses it outright (400, connection closed): such requests
//! are how smuggling between proxies starts.
//!
//! The guard follows the inbound byte stream exactly as hyper's HTTP/1 server reads it:
//! request heads line by line, then each body by its length or, byte for byte, by
//! hyper's chunked decoder (chunk-size lines with any run of whitespace or leading
//! zeros, extensions, trailers), so it knows where hyper's next head starts. When a
//! head's second framing header completes, that line is made unparseable before hyper
//! sees it, and hyper answers 400 and closes. Only the current incomplete head line is
//! ever held back; a head line longer than hyper's own head limit goes on without its
//! end, so hyper's buffer fills and it answers 431 (hyper could otherwise take such a
//! head whole from one large read). It stops following only where hyper stops reading
//! requests: HTTP/2, a refused head, framing hyper fails, and an upgrade or CONNECT once
//! the response that switches protocols (101, 2xx to CONNECT) has been written; an
//! upgrade answered otherwise leaves the connection in HTTP/1, and the guard on it.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::info;

/// The smallest read buffer hyper accepts (`max_buf_size` is raised to it): the limit
/// of a request head the node gives hyper is `max_header_bytes.max(HYPER_MIN_BUF)`.
pub const HYPER_MIN_BUF: usize = 8192;

/// Where in the request stream the next byte belongs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Request line and header lines.
    Head,
    /// A body of this many more bytes.
    Body(u64),
    /// Chunked framing, outside chunk data.
    Chunked(Chunk),
    /// Chunk data: this many more bytes, then CRLF.
    ChunkData(u64),
    /// No more inspection (HTTP/2, a tunnel, or framing hyper refuses and closes on).
    Passthrough,
    /// A head line past hyper's head limit: its bytes pass, its end never does, so
    /// hyper's buffer fills before the head completes (431).
    Overlong,
    /// After an overlong line: nothing more reaches hyper, which is closing.
    Discard,
}

/// hyper's chunked decoder states (hyper 1.x `proto/h1/decode.rs`), outside chunk data.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// The first hex digit of a chunk size.
    Start,
    /// More hex digits.
    Size,
    /// Whitespace after the size (any amount).
    Lws,
    /// An extension, up to CR.
    Extension,
    /// LF after the size line's CR.
    SizeLf,
    /// CR, then LF, after chunk data.
    DataCr,
    DataLf,
    /// After the last chunk: CR of the final CRLF, or a trailer line's first byte.
    EndCr,
    /// A trailer line, up to CR (a bare LF is part of it).
    Trailer,
    TrailerLf,
    /// The final LF.
    EndLf,
}

/// What the current head has said so far.
#[derive(Debug, Default)]
struct HeadSeen {
    started: bool,
    transfer_encoding: bool,
    chunked_last: bool,
    content_length_field: bool,
    content_length: Option<u64>,
    bad_length: bool,
    upgrade: bool,
    connect: bool,
    refused: bool,
}

/// A request whose answer may turn the connection into a tunnel.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Switch {
    /// Upgrade: a 101 switches.
    Upgrade,
    /// CONNECT: a 2xx switches.
    Connect,
}

pub struct Framing {
    state: State,
    head: HeadSeen,
    /// The chunk size being read.
    chunk_size: u64,
    /// The incomplete head line.
    line: Vec<u8>,
    max_line: usize,
    /// An upgrade or CONNECT was read and not yet answered with a switch.
    switch: Option<Switch>,
    /// Requests refused so far for both framing headers (for the log).
    pub refused: u32,
    /// Heads refused for a line longer than hyper's head limit.
    pub overlong: u32,
}

impl Framing {
    /// `max_header_bytes` as configured: lines longer than hyper's head limit for it
    /// (`max_header_bytes.max(HYPER_MIN_BUF)`) are refused.
    pub fn new(max_header_bytes: usize) -> Self {
        Self {
            state: State::Head,
            head: HeadSeen::default(),
            chunk_size: 0,
            line: Vec::new(),
            max_line: max_header_bytes.max(HYPER_MIN_BUF),
            switch: None,
            refused: 0,
            overlong: 0,
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
                State::Overlong => {
                    match input.iter().position(|&b| b == b'\n') {
                        Some(end) => {
                            out.extend_from_slice(&input[..end]);
                            self.state = State::Discard;
                        }
                        None => out.extend_from_slice(input),
                    }
                    return;
                }
                State::Discard => return,
                State::Body(n) | State::ChunkData(n) => {
                    let k = (n.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.body_passed(k);
                }
                State::Chunked(_) => {
                    // Framing bytes pass as they are; only the state moves.
                    let mut k = 0;
                    while k < input.len() && matches!(self.state, State::Chunked(_)) {
                        self.chunk_byte(input[k]);
                        k += 1;
                    }
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                }
                State::Head => {
                    let Some(end) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > self.max_line {
                            self.refuse_overlong(out);
                        }
                        return;
                    };
                    if self.line.len() + end >= self.max_line {
                        // Complete, but longer than hyper's limit: the same answer as
                        // when it arrives in pieces.
                        self.line.extend_from_slice(&input[..=end]);
                        self.refuse_overlong(out);
                        return;
                    }
                    self.line.extend_from_slice(&input[..=end]);
                    input = &input[end + 1..];
                    let mut line = std::mem::take(&mut self.line);
                    self.on_head_line(&mut line);
                    out.extend_from_slice(&line);
                }
            }
        }
    }

    /// A head line past the limit: hyper answers 431 when its buffer fills before the
    /// head is complete, but a read can bring it the whole head at once (its buffer
    /// may have room past the limit), and the guard does not follow what it cannot
    /// hold. So the line goes on without its end: the head never completes, and
    /// hyper's buffer fills (431).
    fn refuse_overlong(&mut self, out: &mut Vec<u8>) {
        let complete = self.line.last() == Some(&b'\n');
        if complete {
            self.line.pop();
        }
        out.append(&mut self.line);
        self.overlong += 1;
        self.state = if complete {
            State::Discard
        } else {
            State::Overlong
        };
    }

    /// One byte of chunked framing, as hyper's decoder takes it; what hyper fails on
    /// ends the inspection (hyper closes the connection).
    fn chunk_byte(&mut self, b: u8) {
        let State::Chunked(c) = self.state else {
            return;
        };
        let hex = (b as char).to_digit(16).map(u64::from);
        self.state = match (c, b) {
            (Chunk::Start | Chunk::Size, _) if hex.is_some() => {
                match self
                    .chunk_size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(hex.unwrap_or(0)))
                {
                    Some(s) => {
                        self.chunk_size = s;
                        State::Chunked(Chunk::Size)
                    }
                    None => State::Passthrough,
                }
            }
            (Chunk::Size | Chunk::Lws, b' ' | b'\t') => State::Chunked(Chunk::Lws),
            (Chunk::Size | Chunk::Lws, b';') => State::Chunked(Chunk::Extension),
            (Chunk::Size | Chunk::Lws | Chunk::Extension, b'\r') => State::Chunked(Chunk::SizeLf),
            (Chunk::Extension, b'\n') => State::Passthrough,
            (Chunk::Extension, _) => State::Chunked(Chunk::Extension),
            (Chunk::SizeLf, b'\n') => match std::mem::take(&mut self.chunk_size) {
                0 => State::Chunked(Chunk::EndCr),
                n => State::ChunkData(n),
            },
            (Chunk::DataCr, b'\r') => State::Chunked(Chunk::DataLf),
            (Chunk::DataLf, b'\n') => State::Chunked(Chunk::Start),
            (Chunk::EndCr, b'\r') => State::Chunked(Chunk::EndLf),
            (Chunk::Trailer, b'\r') => State::Chunked(Chunk::TrailerLf),
            (Chunk::EndCr | Chunk::Trailer, _) => State::Chunked(Chunk::Trailer),
            (Chunk::TrailerLf, b'\n') => State::Chunked(Chunk::EndCr),
            (Chunk::EndLf, b'\n') => State::Head,
            _ => State::Passthrough,
        };
    }

    /// Body bytes still expected before the framing needs to look again (a body's
    /// rest, or the current chunk's data); 0 when it is not in a body.
    fn body_left(&self) -> u64 {
        match self.state {
            State::Body(n) | State::ChunkData(n) => n,
            _ => 0,
        }
    }

    /// `k` (at most `body_left`) body bytes went to hyper.
    fn body_passed(&mut self, k: usize) {
        let left = self.body_left().saturating_sub(k as u64);
        self.state = match (self.state, left) {
            (State::Body(_), 0) => State::Head,
            (State::Body(_), l) => State::Body(l),
            (State::ChunkData(_), 0) => State::Chunked(Chunk::DataCr),
            (State::ChunkData(_), l) => State::ChunkData(l),
            (s, _) => s,
        };
    }

    /// What is held back, for when the connection ends.
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.line)
    }

    /// The server starts writing `bytes` (the start of a write): a response that
    /// switches protocols ends the inspection. Returns whether it did.
    pub fn on_response(&mut self, bytes: &[u8]) -> bool {
        let switched = match self.switch {
            Some(Switch::Upgrade) => bytes.starts_with(b"HTTP/1.1 101 "),
            Some(Switch::Connect) => bytes.starts_with(b"HTTP/1.1 2"),
            None => false,
        };
        if switched {
            self.state = State::Passthrough;
            self.switch = None;
        }
        switched
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
        let was_both = self.head.transfer_encoding && self.head.content_length_field;
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.head.transfer_encoding = true;
            if let Some(last) = value.split(',').map(str::trim).rfind(|c| !c.is_empty()) {
                self.head.chunked_last = last == "chunked";
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // The field refuses the request with Transfer-Encoding whatever its value
            // (hyper skips a Content-Length after Transfer-Encoding unread).
            self.head.content_length_field = true;
            match value.trim().parse::<u64>() {
                Ok(n) if self.head.content_length.is_none_or(|m| m == n) => {
                    self.head.content_length = Some(n)
                }
                _ => self.head.bad_length = true,
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.head.upgrade = true;
        }
        if !was_both
            && self.head.transfer_encoding
            && self.head.content_length_field
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
        // hyper takes any Upgrade (HTTP/1.1) or CONNECT as a possible switch; whether
        // the connection switches is the response's to say (`on_response`).
        if h.connect {
            self.switch = Some(Switch::Connect);
        } else if h.upgrade {
            self.switch = Some(Switch::Upgrade);
        }
        self.state = if h.refused || h.bad_length {
            // Refused, or a length hyper refuses: hyper answers 400 and closes.
            State::Passthrough
        } else if h.transfer_encoding {
            if h.chunked_last {
                self.chunk_size = 0;
                State::Chunked(Chunk::Start)
            } else {
                // hyper refuses a request whose last coding is not chunked.
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
    /// `inner` is any byte stream (a socket, a TLS stream, or an in-memory one in
    /// tests); `max_header_bytes` is `http.max_header_bytes`.
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

    /// Requests refused so far (both framing headers, or a head line over the limit).
    pub fn refused(&self) -> u32 {
        self.framing.refused + self.framing.overlong
    }

    /// The server writes `bytes` next: a switch of protocols ends the inspection, and
    /// the line held back goes to the reader after what is already queued.
    fn on_write(&mut self, bytes: &[u8]) {
        if self.framing.on_response(bytes) {
            let partial = self.framing.take_partial();
            self.out.extend_from_slice(&partial);
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
            // straight into the reader's buffer instead of copying them through ours.
            let left = this.framing.body_left();
            if left > 0 && buf.remaining() > 0 {
                let limit = left.min(buf.remaining() as u64) as usize;
                let mut body = buf.take(limit);
                let start = body.filled().as_ptr();
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut body))?;
                let k = body.filled().len();
                if k == 0 {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                // The inner stream may have put another buffer in `body`: then its
                // bytes are what was read, and they are copied (the rare path).
                let swapped = (body.filled().as_ptr() != start)
                    .then(|| body.filled()[..k.min(limit)].to_vec());
                match swapped {
                    None => {
                        // SAFETY: `body` is still the ReadBuf `take` made over `buf`'s
                        // unfilled part (its filled part starts where that part does,
                        // and safe code cannot make another ReadBuf over that memory
                        // and leave it in `body`), so its `k` filled bytes are
                        // initialised bytes of `buf`, at most `limit` of them.
                        unsafe { buf.assume_init(k) };
                        buf.advance(k);
                    }
                    Some(bytes) => buf.put_slice(&bytes),
                }
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
                this.at = 0;
                continue;
            }
            let (refused, overlong) = (this.framing.refused, this.framing.overlong);
            this.framing.feed(rb.filled(), &mut this.out);
            if this.framing.refused != refused {
                info!(peer = %this.peer, "request with both Content-Length and Transfer-Encoding refused (400)");
            }
            if this.framing.overlong != overlong {
                info!(peer = %this.peer, "request head line over the head limit refused (431)");
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
        let this = self.get_mut();
        this.on_write(buf);
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.on_write(first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
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
    fn clean_requests_and_http2_pass_untouched() {
        let clean =
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(run(clean, 2).0, clean);
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        assert_eq!(run(h2, 3).0, h2);
    }

    #[test]
    fn an_upgrade_ends_the_inspection_only_once_the_response_switches() {
        let upgrade = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let smuggled =
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        // Not switched (the origin said no): the connection is still HTTP/1.
        let mut f = Framing::new(8192);
        let mut out = Vec::new();
        f.feed(upgrade, &mut out);
        assert!(!f.on_response(b"HTTP/1.1 404 Not Found\r\n"));
        f.feed(smuggled, &mut out);
        assert_eq!(f.refused, 1);
        // Switched: what follows is the tunnel's, untouched.
        let mut f = Framing::new(8192);
        let mut out = Vec::new();
        f.feed(upgrade, &mut out);
        assert!(f.on_response(b"HTTP/1.1 101 Switching Protocols\r\n"));
        f.feed(smuggled, &mut out);
        assert_eq!((f.refused, &out[upgrade.len()..]), (0, &smuggled[..]));
        // A 101 without an upgrade asked for switches nothing.
        let mut f = Framing::new(8192);
        assert!(!f.on_response(b"HTTP/1.1 101 Switching Protocols\r\n"));
    }

    #[test]
    fn chunk_framing_is_followed_as_hyper_reads_it() {
        // Whitespace runs and leading zeros in a chunk size, however long; an
        // extension; a trailer line holding a bare LF (one trailer line to hyper).
        let mut req = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0000".to_vec();
        req.extend(std::iter::repeat_n(b'0', 20_000));
        req.extend_from_slice(b"3");
        req.extend(std::iter::repeat_n(b' ', 20_000));
        req.extend_from_slice(b";x=y\r\nabc\r\n0\r\nX: 1\n\r\nA: b\r\nContent-Length: 60\r\n\r\n");
        req.extend_from_slice(
            b"POST /s HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        for step in [1, 100, 7000, req.len()] {
            let (out, f) = run(&req, step);
            assert_eq!(f.refused, 1, "step {step}");
            assert_eq!(out.len(), req.len());
        }
    }

    #[test]
    fn a_head_line_past_the_head_limit_is_refused() {
        let mut req = b"POST /s HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: ".to_vec();
        req.extend(std::iter::repeat_n(b' ', 9000));
        req.extend_from_slice(b"chunked\r\n\r\n0\r\n\r\n");
        let line_end = req.len() - b"\r\n\r\n0\r\n\r\n".len() + 1;
        for step in [1, 500, req.len()] {
            let (out, f) = run(&req, step);
            assert_eq!((f.refused, f.overlong), (0, 1), "step {step}");
            // Everything up to the line's end, and nothing from there on.
            assert_eq!(out, &req[..line_end], "step {step}");
        }
        // Up to the limit, nothing changes (the limit is hyper's: at least 8 KiB).
        let mut ok = b"GET / HTTP/1.1\r\nX: ".to_vec();
        ok.extend(std::iter::repeat_n(b'a', 8000));
        ok.extend_from_slice(b"\r\n\r\n");
        let (out, f) = run(&ok, 100);
        assert_eq!((out, f.overlong), (ok, 0));
    }

    /// An in-memory client: `data` in pieces of `step`, then silence (never EOF, so
    /// hyper does not cut short the requests it has read); keeps what is written.
    struct Replay {
        data: Vec<u8>,
        at: usize,
        step: usize,
        written: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Replay {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self
                .step
                .min(self.data.len() - self.at)
                .min(buf.remaining());
            if n == 0 {
                return Poll::Pending;
            }
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Replay {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.lock().unwrap().extend_from_slice(b);
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The requests hyper's HTTP/1 server (set up as `server::spawn` does) hands to
    /// the service from `data` behind the guard: "METHOD path te"; and what it wrote.
    async fn serve(data: &[u8], step: usize, max_header_bytes: usize) -> (Vec<String>, String) {
        use http_body_util::BodyExt;
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let log = log.clone();
            async move {
                let te = req.headers().contains_key(hyper::header::TRANSFER_ENCODING);
                let line = format!("{} {} {te}", req.method(), req.uri());
                let _ = req.into_body().collect().await;
                log.lock().unwrap().push(line);
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            }
        });
        let written = Arc::new(Mutex::new(Vec::new()));
        let client = Replay {
            data: data.to_vec(),
            at: 0,
            step,
            written: written.clone(),
        };
        let guard = FramingGuard::new(client, "127.0.0.1:1".parse().unwrap(), max_header_bytes);
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(max_header_bytes.max(HYPER_MIN_BUF))
            .serve_connection(hyper_util::rt::TokioIo::new(guard), svc)
            .with_upgrades();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), conn).await;
        let written = String::from_utf8_lossy(&written.lock().unwrap()).into_owned();
        (seen.lock().unwrap().clone(), written)
    }

    async fn served(data: &[u8], step: usize, max_header_bytes: usize) -> Vec<String> {
        serve(data, step, max_header_bytes).await.0
    }

    const SMUGGLED: &[u8] =
        b"POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[tokio::test]
    async fn hyper_never_gets_both_framing_headers_however_the_stream_is_spelled() {
        // Each prefix once let the request after it reach hyper unseen (the guard
        // stopped following the stream where hyper did not).
        let mut lws =
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1".to_vec();
        lws.extend(std::iter::repeat_n(b' ', 70_000));
        lws.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        let mut long_te =
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: ".to_vec();
        long_te.extend(std::iter::repeat_n(b' ', 3000));
        long_te.extend_from_slice(b"chunked\r\n\r\n0\r\n\r\n");
        // (what, prefix, bytes per read, max_header_bytes, what hyper serves)
        type Case = (&'static str, Vec<u8>, usize, usize, &'static [&'static str]);
        let cases: [Case; 5] = [
            ("alone", vec![], 4096, 65536, &[]),
            (
                "after an upgrade answered 200",
                b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                    .to_vec(),
                4096,
                65536,
                &["GET /ws false"],
            ),
            (
                "after a trailer line holding a bare LF",
                b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\nA: b\r\nContent-Length: 80\r\n\r\n".to_vec(),
                4096,
                65536,
                &["POST /a true"],
            ),
            ("after a chunk size padded past the line limit", lws, 1000, 65536, &["POST /a true"]),
            // A head line longer than max_header_bytes but under hyper's 8 KiB floor.
            ("with a long Transfer-Encoding line", long_te, 500, 2000, &[]),
        ];
        for (name, mut data, step, max, expected) in cases {
            if name != "with a long Transfer-Encoding line" {
                data.extend_from_slice(SMUGGLED);
            }
            let got = served(&data, step, max).await;
            assert_eq!(got, expected, "{name}");
        }
        // A head line over the limit gets hyper's 431, in one read or many.
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        big.extend_from_slice(b"\r\n\r\n");
        for (step, max) in [(100, 8192), (30_000, 8192), (30_000, 16_384)] {
            let (got, wrote) = serve(&big, step, max).await;
            assert!(
                got.is_empty() && wrote.starts_with("HTTP/1.1 431"),
                "{wrote}"
            );
        }
        // The same stream without the guard's refusal: hyper takes the request.
        let clean = String::from_utf8_lossy(SMUGGLED).replace("Content-Length: 5\r\n", "");
        assert_eq!(served(clean.as_bytes(), 7, 65536).await, ["POST /s true"]);
    }

    /// Puts what it reads into a buffer of its own in place of the reader's (legal for
    /// safe code, if odd: tokio's `Take` panics on it).
    struct Swapper {
        data: &'static [u8],
    }

    impl AsyncRead for Swapper {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.data.len().min(buf.remaining()).min(5);
            let mine: &'static mut [u8] = Box::leak(vec![0u8; n].into_boxed_slice());
            let mut own = ReadBuf::new(mine);
            own.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            *buf = own;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_stream_that_swaps_the_buffer_still_reads_right() {
        use tokio::io::AsyncReadExt;
        let req: &'static [u8] =
            b"POST /a HTTP/1.1\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz";
        // What the guard hands on is in the reader's own buffer: the body part is read
        // directly (where the swap happens), the head through the guard's buffer.
        let mut g = FramingGuard::new(Swapper { data: req }, "127.0.0.1:1".parse().unwrap(), 8192);
        let mut got = Vec::new();
        let mut b = [0xAAu8; 64];
        // The head goes through the guard's own buffer, which the swap does not reach
        // (the guard reads what the stream's buffer holds); then the body.
        for _ in 0..100 {
            let n = g.read(&mut b).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, req);
    }
}
