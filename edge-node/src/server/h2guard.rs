//! HTTP/2 frame floods (the CVE-2019-9511..9518 family): frames a peer can send as fast
//! as it likes, each work for the node and nothing for the peer. hyper bounds streams
//! reset before they are served (rapid reset) but not these, so a guard on the byte
//! stream follows the frames, header by header, and ends the connection past a budget,
//! as the rapid-reset guard does; the caller makes it a threat signal.
//!
//! - PING and SETTINGS (9512 ping flood, 9515 settings flood) ask for an acknowledgement:
//!   a burst of `BURST`, refilled at `PER_SECOND`.
//! - WINDOW_UPDATE (9511, 9517) comes in proportion to the DATA the node sends (a
//!   download of a gigabyte brings thousands), so its budget is not per second but
//!   grows with the DATA frames the node wrote and the streams the client opened: the
//!   guard follows the outbound frames too (as Envoy's
//!   `max_inbound_window_update_frames_per_data_frame_sent`).
//! - PRIORITY (9513): a budget per stream the client opened (a HEADERS frame on a new
//!   stream id), plus a base.
//! - Empty frames (9518): DATA, HEADERS and CONTINUATION frames that carry nothing
//!   (padding and priority fields aside) and do not end their stream, cut after
//!   `EMPTY_IN_ROW` in a row.
//!
//! Counts are for the connection's life. The cost is a few comparisons per frame header
//! (payloads are skipped, never looked at, but for the pad length of a padded frame), and
//! nothing is allocated.

use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// PING and SETTINGS: far above what clients send (a SETTINGS or two per connection,
/// keep-alive and RTT PINGs), far below a flood.
const BURST: f64 = 100.0;
const PER_SECOND: f64 = 10.0;
/// WINDOW_UPDATE. Before any DATA: a connection-level update after the preface and the
/// odd stream-level one (Envoy allows 5), a flood is thousands. Per stream opened: one
/// widening its window at the start, one at its end. Per DATA frame sent: a receiver
/// returns credit for it once per level (stream and connection) when it consumes it,
/// twice that for clients returning it in pieces as their application reads: 4, with
/// room to spare, is 8. Credit for a DATA frame costs the node less than sending it did,
/// so the ratio bounds what a flood can add to serving.
const WINDOW_UPDATE_BASE: u64 = 32;
const WINDOW_UPDATES_PER_STREAM: u64 = 2;
const WINDOW_UPDATES_PER_DATA: u64 = 8;
/// PRIORITY. Base: the tree a browser builds on connecting (Firefox's 5 placeholder
/// streams, nghttp's too). Per stream: reprioritisations as a page loads and scrolls,
/// a handful per request; a flood sends thousands on no stream at all.
const PRIORITY_BASE: u64 = 64;
const PRIORITIES_PER_STREAM: u64 = 16;
/// Empty DATA, HEADERS or CONTINUATION frames in a row not ending their stream: clients
/// send none, or the odd empty DATA frame when their body yields an empty chunk (Envoy
/// allows 1); the flood is an endless run.
const EMPTY_IN_ROW: u32 = 8;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
/// ACK on PING and SETTINGS, END_STREAM on DATA and HEADERS.
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const PADDED: u8 = 0x8;
/// HEADERS with the 5 bytes of a priority before its block.
const WITH_PRIORITY: u8 = 0x20;

/// The flood a connection was cut for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Ping,
    Settings,
    WindowUpdate,
    Priority,
    EmptyFrames,
}

impl fmt::Display for Flood {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flood::Ping => "PING",
            Flood::Settings => "SETTINGS",
            Flood::WindowUpdate => "WINDOW_UPDATE",
            Flood::Priority => "PRIORITY",
            Flood::EmptyFrames => "empty frames",
        })
    }
}

/// A frame header's fields.
#[derive(Debug, Clone, Copy)]
struct Header {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Where a byte stream of frames is, across reads or writes split at any byte.
#[derive(Default)]
struct Framer {
    header: [u8; FRAME_HEADER],
    /// Bytes of the current frame header seen.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload: u32,
    /// The current frame's first payload byte is wanted (a pad length).
    want_first: bool,
}

/// What the framer stopped at.
enum Seen {
    Header(Header),
    First(u8),
}

impl Framer {
    /// Passes `bytes` up to the next complete frame header or wanted payload byte, and
    /// returns it; None once all of `bytes` passed.
    fn next(&mut self, bytes: &mut &[u8]) -> Option<Seen> {
        loop {
            if bytes.is_empty() {
                return None;
            }
            if self.payload > 0 {
                if self.want_first {
                    let (&first, rest) = bytes.split_first()?;
                    self.want_first = false;
                    self.payload -= 1;
                    *bytes = rest;
                    return Some(Seen::First(first));
                }
                let n = bytes.len().min(self.payload as usize);
                self.payload -= n as u32;
                *bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                *bytes = &bytes[n..];
                if self.have == FRAME_HEADER {
                    self.have = 0;
                    let h = self.header;
                    let header = Header {
                        len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    };
                    self.payload = header.len;
                    self.want_first = false;
                    return Some(Seen::Header(header));
                }
            }
        }
    }

    /// Stops at the current frame's first payload byte, if it has one.
    fn want_first(&mut self) {
        self.want_first = self.payload > 0;
    }
}

/// The budgets of one connection, sans IO: what the client sent (from its preface on)
/// against what the node wrote.
struct Budget {
    /// Preface bytes still to pass.
    preface: usize,
    inbound: Framer,
    outbound: Framer,
    /// A padded DATA or HEADERS frame, judged empty or not once its pad length is read.
    padded: Option<Header>,
    tokens: f64,
    refilled: Instant,
    /// The highest stream id a client's HEADERS opened, and how many it opened.
    last_stream: u32,
    opened: u64,
    window_updates: u64,
    priorities: u64,
    empty_in_row: u32,
    /// DATA frames with a payload the node wrote.
    data_sent: u64,
}

impl Budget {
    fn new() -> Self {
        Self {
            preface: PREFACE_LEN,
            inbound: Framer::default(),
            outbound: Framer::default(),
            padded: None,
            tokens: BURST,
            refilled: Instant::now(),
            last_stream: 0,
            opened: 0,
            window_updates: 0,
            priorities: 0,
            empty_in_row: 0,
            data_sent: 0,
        }
    }

    /// Follows bytes the client sent; the flood once it is over a budget.
    fn read(&mut self, mut bytes: &[u8]) -> Result<(), Flood> {
        if self.preface > 0 {
            let n = self.preface.min(bytes.len());
            self.preface -= n;
            bytes = &bytes[n..];
        }
        while let Some(seen) = self.inbound.next(&mut bytes) {
            match seen {
                Seen::Header(h) => self.frame(h)?,
                Seen::First(pad_len) => {
                    if let Some(h) = self.padded.take() {
                        self.carrying(h, 1 + u32::from(pad_len))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Follows bytes the node wrote: its DATA frames.
    fn wrote(&mut self, mut bytes: &[u8]) {
        while let Some(seen) = self.outbound.next(&mut bytes) {
            if let Seen::Header(h) = seen
                && h.kind == DATA
                && h.len > 0
            {
                self.data_sent = self.data_sent.saturating_add(1);
            }
        }
    }

    fn frame(&mut self, h: Header) -> Result<(), Flood> {
        self.padded = None;
        match h.kind {
            PING if h.flags & ACK == 0 => self.charge(Flood::Ping),
            SETTINGS if h.flags & ACK == 0 => self.charge(Flood::Settings),
            WINDOW_UPDATE => {
                self.window_updates = self.window_updates.saturating_add(1);
                let budget = WINDOW_UPDATE_BASE
                    .saturating_add(WINDOW_UPDATES_PER_STREAM.saturating_mul(self.opened))
                    .saturating_add(WINDOW_UPDATES_PER_DATA.saturating_mul(self.data_sent));
                over(self.window_updates, budget, Flood::WindowUpdate)
            }
            PRIORITY => {
                self.priorities = self.priorities.saturating_add(1);
                let budget =
                    PRIORITY_BASE.saturating_add(PRIORITIES_PER_STREAM.saturating_mul(self.opened));
                over(self.priorities, budget, Flood::Priority)
            }
            DATA | HEADERS | CONTINUATION => {
                // Client streams are odd; a HEADERS frame on a stream id above the last
                // opens one (on a lower id it is trailers, or an error hyper answers).
                if h.kind == HEADERS && h.stream > self.last_stream && h.stream & 1 == 1 {
                    self.last_stream = h.stream;
                    self.opened = self.opened.saturating_add(1);
                }
                if h.kind != CONTINUATION && h.flags & PADDED != 0 && h.len > 0 {
                    // Empty or not depends on the pad length, its first payload byte.
                    self.padded = Some(h);
                    self.inbound.want_first();
                    Ok(())
                } else {
                    self.carrying(h, 0)
                }
            }
            _ => Ok(()),
        }
    }

    /// Judges a DATA, HEADERS or CONTINUATION frame whose padding (pad length byte
    /// included) is `padding` bytes.
    fn carrying(&mut self, h: Header, padding: u32) -> Result<(), Flood> {
        let priority = if h.kind == HEADERS && h.flags & WITH_PRIORITY != 0 {
            5
        } else {
            0
        };
        let carried = h.len.saturating_sub(padding).saturating_sub(priority);
        // END_STREAM means nothing on CONTINUATION: it cannot excuse an empty one.
        let ends = h.kind != CONTINUATION && h.flags & END_STREAM != 0;
        if carried > 0 || ends {
            self.empty_in_row = 0;
            return Ok(());
        }
        self.empty_in_row = self.empty_in_row.saturating_add(1);
        over(
            u64::from(self.empty_in_row),
            u64::from(EMPTY_IN_ROW),
            Flood::EmptyFrames,
        )
    }

    fn charge(&mut self, flood: Flood) -> Result<(), Flood> {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        if self.tokens < 1.0 {
            return Err(flood);
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

fn over(count: u64, budget: u64, flood: Flood) -> Result<(), Flood> {
    if count > budget { Err(flood) } else { Ok(()) }
}

/// An HTTP/2 connection's IO (from the client preface on), following the frames both
/// ways against the budgets above.
pub struct H2FloodGuard<S> {
    inner: S,
    budget: Budget,
    on_flood: Option<Box<dyn FnOnce(Flood) + Send>>,
    flooded: bool,
}

impl<S> H2FloodGuard<S> {
    /// `on_flood` runs once, when a budget is exceeded.
    pub fn new(inner: S, on_flood: impl FnOnce(Flood) + Send + 'static) -> Self {
        Self {
            inner,
            budget: Budget::new(),
            on_flood: Some(Box::new(on_flood)),
            flooded: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for H2FloodGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.flooded {
            return Poll::Ready(Err(io::Error::other("HTTP/2 frame flood")));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Err(flood) = this.budget.read(&buf.filled()[before..]) {
            this.flooded = true;
            if let Some(f) = this.on_flood.take() {
                f(flood);
            }
            // Nothing of the flood reaches hyper: the connection ends here.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::other(format!(
                "HTTP/2 frame flood ({flood})"
            ))));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H2FloodGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        // Only what the stream took: the rest is offered again.
        this.budget.wrote(buf.get(..n).unwrap_or(buf));
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let taken = left.min(b.len());
            this.budget.wrote(&b[..taken]);
            left -= taken;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame_on(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        frame_on(kind, flags, 0, payload)
    }

    fn window_update(stream: u32) -> Vec<u8> {
        frame_on(WINDOW_UPDATE, 0, stream, &16384u32.to_be_bytes())
    }

    fn priority(stream: u32) -> Vec<u8> {
        frame_on(PRIORITY, 0, stream, &[0, 0, 0, 0, 200])
    }

    /// A request's HEADERS (END_HEADERS, and END_STREAM when `ends`).
    fn request(stream: u32, ends: bool) -> Vec<u8> {
        let flags = 0x4 | if ends { END_STREAM } else { 0 };
        frame_on(HEADERS, flags, stream, b"\x82\x86\x84\x41\x08app.test")
    }

    /// A connection that started: preface, SETTINGS, the connection's window widened.
    fn started() -> Budget {
        let mut b = Budget::new();
        let mut start = PREFACE.to_vec();
        start.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        start.extend(window_update(0));
        assert_eq!(b.read(&start), Ok(()));
        b
    }

    /// Reads `bytes` in pieces of `piece`: the first flood, if any.
    fn read_in(b: &mut Budget, bytes: &[u8], piece: usize) -> Result<(), Flood> {
        bytes.chunks(piece).try_for_each(|c| b.read(c))
    }

    #[test]
    fn control_floods_are_cut_and_ordinary_traffic_is_not() {
        let mut b = Budget::new();
        let mut start = PREFACE.to_vec();
        start.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        // A HEADERS frame whose payload looks like PING headers is payload, not frames.
        start.extend(frame_on(
            HEADERS,
            0x4 | END_STREAM,
            1,
            &frame(PING, 0, &[0; 8]),
        ));
        assert_eq!(b.read(&start), Ok(()));
        // Acks and DATA cost nothing; split anywhere, frames are still found.
        let mut acks = Vec::new();
        for _ in 0..1000 {
            acks.extend(frame(PING, ACK, &[0; 8]));
            acks.extend(frame_on(DATA, 0, 1, &[7; 100]));
        }
        assert_eq!(read_in(&mut b, &acks, 7), Ok(()));
        // Pings within the burst pass; a flood does not.
        let mut pings = Vec::new();
        for _ in 0..(BURST as usize - 2) {
            pings.extend(frame(PING, 0, &[0; 8]));
        }
        assert_eq!(b.read(&pings), Ok(()));
        let flood: Vec<u8> = (0..50).flat_map(|_| frame(PING, 0, &[0; 8])).collect();
        assert_eq!(b.read(&flood), Err(Flood::Ping));
        let mut b = started();
        let flood: Vec<u8> = (0..200)
            .flat_map(|_| frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]))
            .collect();
        assert_eq!(read_in(&mut b, &flood, 13), Err(Flood::Settings));
    }

    #[test]
    fn a_window_update_flood_is_cut() {
        // Nothing sent, nothing to acknowledge: the base and no more (the one after the
        // preface counts).
        let mut b = started();
        let ok: Vec<u8> = (1..WINDOW_UPDATE_BASE)
            .flat_map(|_| window_update(0))
            .collect();
        assert_eq!(read_in(&mut b, &ok, 5), Ok(()));
        assert_eq!(b.read(&window_update(0)), Err(Flood::WindowUpdate));
        // Past what a download earned, too.
        let mut b = started();
        b.read(&request(1, true)).unwrap();
        for _ in 0..100 {
            b.wrote(&frame_on(DATA, 0, 1, &[0; 1000]));
        }
        let earned = WINDOW_UPDATE_BASE + WINDOW_UPDATES_PER_STREAM + 100 * WINDOW_UPDATES_PER_DATA;
        let flood: Vec<u8> = (0..earned).flat_map(|_| window_update(1)).collect();
        assert_eq!(read_in(&mut b, &flood, 4096), Err(Flood::WindowUpdate));
    }

    #[test]
    fn a_large_download_acknowledged_frame_by_frame_is_not_cut() {
        // A gigabyte in 16 KiB DATA frames (written in pieces split anywhere, a header
        // frame among them whose payload looks like DATA frames), each acknowledged on
        // the stream and the connection, the client's reads returning credit in four
        // pieces on every fourth frame.
        let mut b = started();
        b.read(&request(1, true)).unwrap();
        b.wrote(&frame_on(HEADERS, 0x4, 1, &frame_on(DATA, 0, 1, &[0; 16])));
        let data = frame_on(DATA, 0, 1, &[0; 16384]);
        let mut acks = window_update(1);
        acks.extend(window_update(0));
        let mut pieces = Vec::new();
        for _ in 0..4 {
            pieces.extend(&acks);
        }
        for n in 0..65536 {
            for piece in data.chunks(4000 + n % 7) {
                b.wrote(piece);
            }
            let acks = if n % 4 == 0 { &pieces } else { &acks };
            assert_eq!(read_in(&mut b, acks, 5 + n % 11), Ok(()), "frame {n}");
        }
        assert_eq!(b.data_sent, 65536);
        // Many streams, each with its small answer, acknowledged alike.
        for stream in (3..2000).step_by(2) {
            b.read(&request(stream, true)).unwrap();
            b.wrote(&frame_on(DATA, END_STREAM, stream, &[1; 300]));
            assert_eq!(b.read(&acks), Ok(()));
        }
    }

    #[test]
    fn a_priority_flood_is_cut_and_browsers_priorities_are_not() {
        // A browser: the placeholder tree on connecting, then requests with their
        // priority in HEADERS, reprioritised as the page loads.
        let mut b = started();
        let tree: Vec<u8> = (3..=11).step_by(2).flat_map(priority).collect();
        assert_eq!(b.read(&tree), Ok(()));
        for stream in (13..2000).step_by(2) {
            // Depends on placeholder 3, weight 100; then the header block.
            let block = [0, 0, 0, 3, 100, 0x82, 0x86, 0x84];
            let mut req = frame_on(HEADERS, 0x4 | END_STREAM | WITH_PRIORITY, stream, &block);
            for _ in 0..4 {
                req.extend(priority(stream));
            }
            assert_eq!(read_in(&mut b, &req, 3), Ok(()), "stream {stream}");
        }
        // Priorities on no stream opened: the base, then cut.
        let mut b = started();
        let ok: Vec<u8> = (0..PRIORITY_BASE as u32)
            .flat_map(|i| priority(2 * i + 1))
            .collect();
        assert_eq!(read_in(&mut b, &ok, 64), Ok(()));
        assert_eq!(b.read(&priority(1)), Err(Flood::Priority));
        // Re-sending HEADERS on a stream already opened (trailers) earns nothing.
        let mut b = started();
        b.read(&request(1, false)).unwrap();
        let budget = PRIORITY_BASE + PRIORITIES_PER_STREAM;
        let mut flood = Vec::new();
        for _ in 0..budget {
            flood.extend(request(1, false));
            flood.extend(priority(1));
        }
        assert_eq!(b.read(&flood), Ok(()));
        assert_eq!(b.read(&priority(1)), Err(Flood::Priority));
    }

    #[test]
    fn empty_frames_in_a_row_are_cut() {
        let empty_data = frame_on(DATA, 0, 1, &[]);
        // Whatever the empty kind: DATA, DATA that is all padding (its pad length read
        // in a later piece), HEADERS that is all priority, CONTINUATION (whose
        // END_STREAM flag means nothing).
        let kinds = [
            empty_data.clone(),
            frame_on(DATA, PADDED, 1, &[3, 0, 0, 0]),
            frame_on(HEADERS, WITH_PRIORITY, 1, &[0, 0, 0, 0, 16]),
            frame_on(HEADERS, WITH_PRIORITY | PADDED, 1, &[1, 0, 0, 0, 0, 16, 0]),
            frame_on(CONTINUATION, END_STREAM, 1, &[]),
        ];
        for (n, empty) in kinds.iter().enumerate() {
            let mut b = started();
            b.read(&request(1, false)).unwrap();
            let run: Vec<u8> = (0..EMPTY_IN_ROW).flat_map(|_| empty.clone()).collect();
            assert_eq!(read_in(&mut b, &run, 1), Ok(()), "kind {n}");
            // Other frames between them change nothing.
            assert_eq!(b.read(&window_update(0)), Ok(()));
            assert_eq!(
                read_in(&mut b, empty, 1),
                Err(Flood::EmptyFrames),
                "kind {n}"
            );
        }
        // Frames that carry something, or end their stream, break the run.
        let breakers = [
            frame_on(DATA, 0, 1, &[1]),
            frame_on(DATA, PADDED, 1, &[2, 9, 0, 0]),
            frame_on(DATA, END_STREAM, 1, &[]),
            frame_on(HEADERS, 0x4 | END_STREAM, 1, &[]),
            frame_on(HEADERS, WITH_PRIORITY, 1, &[0, 0, 0, 0, 16, 0x82]),
            frame_on(CONTINUATION, 0x4, 1, &[0x82]),
        ];
        for (n, breaker) in breakers.iter().enumerate() {
            let mut b = started();
            b.read(&request(1, false)).unwrap();
            for _ in 0..10 {
                let mut run: Vec<u8> = (0..EMPTY_IN_ROW).flat_map(|_| empty_data.clone()).collect();
                run.extend(breaker);
                assert_eq!(read_in(&mut b, &run, 2), Ok(()), "breaker {n}");
            }
        }
    }

    #[test]
    fn any_bytes_in_any_pieces_never_panic() {
        // Arbitrary streams both ways, split anywhere, with frame headers claiming any
        // length, flags and kind.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut b = Budget::new();
            let mut bytes = vec![0u8; (next() % 600) as usize];
            for x in &mut bytes {
                *x = next() as u8;
            }
            // Mostly small lengths, so that many headers are crossed.
            for h in bytes.chunks_mut(13) {
                h[0] = 0;
                if h.len() > 1 && next() % 2 == 0 {
                    h[1] = 0;
                }
            }
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = (next() % 40) as usize % rest.len() + 1;
                let (piece, tail) = rest.split_at(n);
                let _ = b.read(piece);
                b.wrote(piece);
                rest = tail;
            }
        }
        // The largest counts saturate rather than overflow.
        let mut b = started();
        b.data_sent = u64::MAX;
        b.opened = u64::MAX;
        b.window_updates = u64::MAX - 1;
        assert_eq!(b.read(&window_update(0)), Ok(()));
        assert_eq!(b.read(&window_update(0)), Ok(()));
    }

    /// Both ends of a connection in memory: what the client sent, read in pieces of at
    /// most `piece`; what the node writes, taken at most `piece` bytes at a time.
    struct Wire<'a> {
        input: &'a [u8],
        piece: usize,
        output: Vec<u8>,
    }

    impl AsyncRead for Wire<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.input.len().min(self.piece).min(buf.remaining());
            buf.put_slice(&self.input[..n]);
            self.input = &self.input[n..];
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Wire<'_> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.piece);
            self.output.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.piece - n);
                self.output.extend_from_slice(&b[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_guard_counts_what_the_node_wrote_and_cuts_what_it_reads() {
        use std::sync::{Arc, Mutex};
        let mut input = PREFACE.to_vec();
        input.extend(request(1, true));
        let budget = WINDOW_UPDATE_BASE + WINDOW_UPDATES_PER_STREAM + 10 * WINDOW_UPDATES_PER_DATA;
        for _ in 0..budget {
            input.extend(window_update(1));
        }
        input.extend(window_update(1));
        let wire = Wire {
            input: &input,
            piece: 1000,
            output: Vec::new(),
        };
        let floods = Arc::new(Mutex::new(Vec::new()));
        let seen = floods.clone();
        let mut g = H2FloodGuard::new(wire, move |f| seen.lock().unwrap().push(f));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Ten DATA frames, written in pieces, partly vectored: the stream takes at most
        // 1000 bytes a call, and the guard counts only what it took.
        let data = frame_on(DATA, 0, 1, &[0; 2500]);
        for n in 0..10 {
            let mut at = 0;
            while at < data.len() {
                let w = if n % 2 == 0 {
                    let (a, b) = data[at..].split_at((data.len() - at) / 2);
                    let bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
                    Pin::new(&mut g).poll_write_vectored(&mut cx, &bufs)
                } else {
                    Pin::new(&mut g).poll_write(&mut cx, &data[at..])
                };
                let Poll::Ready(Ok(w)) = w else {
                    panic!("write")
                };
                at += w;
            }
        }
        assert_eq!(g.get_ref().output.len(), 10 * data.len());
        // The window updates the ten frames earned pass to the reader; one more ends the
        // connection, once.
        let mut buf = [0u8; 4096];
        let mut read = 0;
        let end = loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut g).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => break None,
                Poll::Ready(Ok(())) => read += rb.filled().len(),
                Poll::Ready(Err(e)) => break Some(e),
                Poll::Pending => unreachable!(),
            }
        };
        let end = end.expect("the flood ends the connection");
        assert!(end.to_string().contains("WINDOW_UPDATE"), "{end}");
        assert!(read < input.len() && read >= input.len() - 1000, "{read}");
        let mut rb = ReadBuf::new(&mut buf);
        assert!(matches!(
            Pin::new(&mut g).poll_read(&mut cx, &mut rb),
            Poll::Ready(Err(_))
        ));
        assert_eq!(*floods.lock().unwrap(), [Flood::WindowUpdate]);
    }
}
