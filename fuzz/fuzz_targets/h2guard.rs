//! The HTTP/2 frame-flood guard (`edge_node::server::h2guard::H2FloodGuard`) on arbitrary
//! client byte streams, delivered in arbitrary pieces, while arbitrary node bytes are
//! written through it in pieces the stream takes partly. It never panics; until it cuts
//! the connection it yields exactly the bytes it was given, in order; once it cut, every
//! later read fails and its flood callback ran exactly once (and never without a cut);
//! writes pass through whole, as the stream took them.
#![no_main]

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use edge_node::server::h2guard::H2FloodGuard;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client's bytes in pieces whose sizes cycle through `pieces`; what the node writes,
/// at most `take` bytes a call.
struct Wire<'a> {
    data: &'a [u8],
    pieces: [usize; 3],
    next: usize,
    take: usize,
    written: Vec<u8>,
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let piece = self.pieces[self.next % 3];
        self.next += 1;
        let n = piece.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = b.len().min(self.take);
        self.written.extend_from_slice(&b[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut n = 0;
        for b in bufs {
            let t = b.len().min(self.take - n);
            self.written.extend_from_slice(&b[..t]);
            n += t;
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

fuzz_target!(|data: &[u8]| {
    // [read pieces: 3][write take: 1][node bytes length: 2][client stream…][node stream…]
    let Some((head, rest)) = data.split_first_chunk::<6>() else {
        return;
    };
    let node_len = (u16::from_le_bytes([head[4], head[5]]) as usize).min(rest.len());
    let (client, node) = rest.split_at(rest.len() - node_len);
    let wire = Wire {
        data: client,
        pieces: [0, 1, 2].map(|i| head[i] as usize % 61 + 1),
        next: 0,
        take: head[3] as usize % 29 + 1,
        written: Vec::new(),
    };
    let floods = Arc::new(AtomicUsize::new(0));
    let counted = floods.clone();
    let mut guard = H2FloodGuard::new(wire, move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let mut cx = Context::from_waker(Waker::noop());
    let (mut out, mut to_write, mut cut) = (Vec::new(), node, false);
    let mut buf = [0u8; 4096];
    for round in 0.. {
        assert!(round < 4 * (client.len() + node.len()) + 16, "no end");
        // Some of the node's bytes, alternately plain and vectored.
        if !to_write.is_empty() {
            let half = to_write.len().div_ceil(2);
            let w = if round % 2 == 0 {
                Pin::new(&mut guard).poll_write(&mut cx, &to_write[..half])
            } else {
                let (a, b) = to_write.split_at(half);
                let bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
                Pin::new(&mut guard).poll_write_vectored(&mut cx, &bufs)
            };
            let Poll::Ready(Ok(n)) = w else {
                panic!("a write failed");
            };
            assert!(n > 0 && n <= to_write.len());
            to_write = &to_write[n..];
        }
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                assert!(!cut, "a read succeeded after the cut");
                if rb.filled().is_empty() && to_write.is_empty() {
                    break;
                }
                out.extend_from_slice(rb.filled());
            }
            Poll::Ready(Err(_)) => {
                assert!(rb.filled().is_empty(), "a cut read yielded bytes");
                cut = true;
                if to_write.is_empty() {
                    break;
                }
            }
            Poll::Pending => panic!("the wire never waits"),
        }
    }
    assert!(
        client.starts_with(&out),
        "bytes changed or reordered: {} read",
        out.len()
    );
    assert!(cut || out.len() == client.len(), "bytes lost without a cut");
    assert_eq!(
        floods.load(Ordering::Relaxed),
        usize::from(cut),
        "callback runs"
    );
    assert_eq!(guard.get_ref().written, node, "writes passed through");
});
