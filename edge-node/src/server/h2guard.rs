//! HTTP/2 control-frame floods (CVE-2019-9512 ping flood, CVE-2019-9515 settings flood):
//! a peer may make the node acknowledge PING and SETTINGS frames as fast as it can send
//! them, each one work for the node and nothing for the peer. hyper bounds streams reset
//! before they are served (rapid reset) but not these, so a guard on the inbound byte
//! stream counts them, frame header by frame header, and ends the connection past a
//! budget, as the rapid-reset guard does; the caller makes it a threat signal.
//!
//! Budget: a burst of `BURST` frames, refilled at `PER_SECOND`: far above what clients
//! send (a SETTINGS or two per connection, keep-alive and RTT PINGs), far below a flood.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const BURST: f64 = 100.0;
const PER_SECOND: f64 = 10.0;
const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// An HTTP/2 connection's inbound bytes (from the client preface on), counting the
/// PING and SETTINGS frames that ask for an acknowledgement.
pub struct H2FloodGuard<S> {
    inner: S,
    /// Preface bytes still to pass.
    preface: usize,
    header: [u8; FRAME_HEADER],
    /// Bytes of the current frame header seen.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload: u64,
    tokens: f64,
    refilled: Instant,
    on_flood: Option<Box<dyn FnOnce() + Send>>,
    flooded: bool,
}

impl<S> H2FloodGuard<S> {
    /// `on_flood` runs once, when the budget is exceeded.
    pub fn new(inner: S, on_flood: impl FnOnce() + Send + 'static) -> Self {
        Self {
            inner,
            preface: PREFACE_LEN,
            header: [0; FRAME_HEADER],
            have: 0,
            payload: 0,
            tokens: BURST,
            refilled: Instant::now(),
            on_flood: Some(Box::new(on_flood)),
            flooded: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Follows `bytes`; false once the peer is over its budget.
    fn follow(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.payload > 0 {
                let n = (self.payload.min(bytes.len() as u64)) as usize;
                self.payload -= n as u64;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == FRAME_HEADER {
                    self.have = 0;
                    let h = self.header;
                    self.payload = u64::from(h[0]) << 16 | u64::from(h[1]) << 8 | u64::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    if (kind == PING || kind == SETTINGS) && flags & ACK == 0 && !self.charge() {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn charge(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for H2FloodGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.flooded {
            return Poll::Ready(Err(io::Error::other("HTTP/2 control frame flood")));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if !this.follow(&buf.filled()[before..]) {
            this.flooded = true;
            if let Some(f) = this.on_flood.take() {
                f();
            }
            // Nothing of the flood reaches hyper: the connection ends here.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::other("HTTP/2 control frame flood")));
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn floods_are_cut_and_ordinary_traffic_is_not() {
        let mut g = H2FloodGuard::new((), || {});
        let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        start.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        // A HEADERS frame whose payload looks like PING headers is payload, not frames.
        start.extend(frame(0x1, 0x4, &frame(PING, 0, &[0; 8])));
        assert!(g.follow(&start));
        // Acks and DATA cost nothing; split anywhere, frames are still found.
        let mut acks = Vec::new();
        for _ in 0..1000 {
            acks.extend(frame(PING, ACK, &[0; 8]));
            acks.extend(frame(0x0, 0, &[7; 100]));
        }
        for chunk in acks.chunks(7) {
            assert!(g.follow(chunk));
        }
        // Pings within the burst pass; a flood does not.
        let mut pings = Vec::new();
        for _ in 0..(BURST as usize - 2) {
            pings.extend(frame(PING, 0, &[0; 8]));
        }
        assert!(g.follow(&pings));
        let flood: Vec<u8> = (0..50).flat_map(|_| frame(PING, 0, &[0; 8])).collect();
        assert!(!g.follow(&flood));
    }
}
