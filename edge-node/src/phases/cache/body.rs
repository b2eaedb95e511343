//! The cache's body adapters: the tee that stores a response as it streams to the client
//! (and to the requests waiting on it), the client's Range part of a body being stored,
//! and the body of a response another request is fetching.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::{
    cache::{FillGuard, Partial},
    error::{Body, BoxError, empty},
};

/// The body of a response being fetched, from its first byte, as it arrives.
pub(super) fn partial_body(partial: &Arc<Partial>) -> Body {
    let rx = partial.subscribe();
    let stream = futures_util::stream::unfold((rx, 0usize), |(mut rx, next)| async move {
        if next == usize::MAX {
            return None;
        }
        loop {
            // What the fetch has now: the next chunk, the end, or nothing yet.
            let step = {
                let progress = rx.borrow_and_update();
                match (progress.chunks.get(next), progress.end) {
                    (Some(chunk), _) => Some(Ok(chunk.clone())),
                    (None, Some(true)) => Some(Err(None)),
                    (None, Some(false)) => Some(Err(Some("the origin's body failed"))),
                    (None, None) => None,
                }
            };
            match step {
                Some(Ok(chunk)) => return Some((Ok(Frame::data(chunk)), (rx, next + 1))),
                Some(Err(None)) => return None,
                Some(Err(Some(why))) => {
                    let e: BoxError = why.into();
                    return Some((Err(e), (rx, usize::MAX)));
                }
                None => {}
            }
            if rx.changed().await.is_err() {
                let e: BoxError = "the fetch was abandoned".into();
                return Some((Err(e), (rx, usize::MAX)));
            }
        }
    });
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

/// The client's part (`start..=end`) of a body that a task of its own reads: to the end
/// when the whole body is being stored (so it still is when the client has its part or
/// goes away), otherwise only while the client still wants bytes.
pub(super) struct RangeSlice {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>,
    /// Offset of the next byte the task sends.
    offset: u64,
    start: u64,
    end: u64,
}

impl RangeSlice {
    /// `start > end`: the client gets nothing (416), the body is still read.
    pub(super) fn spawn(mut body: Body, start: u64, end: u64, read_to_end: bool) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut client = Some(tx);
            while let Some(frame) = body.frame().await {
                let data = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => Ok(d),
                        Err(_) => continue,
                    },
                    Err(e) => Err(e),
                };
                let failed = data.is_err();
                if let Some(tx) = &client
                    && tx.send(data).await.is_err()
                {
                    client = None;
                }
                // Nobody left to read for: the origin's connection goes, not its bytes.
                if failed || (client.is_none() && !read_to_end) {
                    break;
                }
            }
        });
        BodyExt::boxed(RangeSlice {
            rx,
            offset: 0,
            start,
            end,
        })
    }
}

impl HttpBody for RangeSlice {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.is_end_stream() {
                return Poll::Ready(None);
            }
            let data = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(d))) => d,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Some(Err("the origin's body ended early".into())));
                }
                Poll::Pending => return Poll::Pending,
            };
            let first = self.offset;
            let last = first + data.len() as u64; // exclusive
            self.offset = last;
            let from = self.start.max(first);
            let to = (self.end + 1).min(last);
            if from < to {
                let part = data.slice((from - first) as usize..(to - first) as usize);
                return Poll::Ready(Some(Ok(Frame::data(part))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.start > self.end || self.offset > self.end
    }
}

/// Streams a response to the client and keeps a copy; the copy is stored when the body
/// ends complete and within the size limit.
pub(super) struct Tee {
    pub(super) inner: Body,
    pub(super) buf: Option<BytesMut>,
    pub(super) max: usize,
    pub(super) done: Option<Box<dyn FnOnce(Bytes) + Send + Sync>>,
    pub(super) fill: Option<FillGuard>,
    /// Waiters streaming the body as it arrives.
    pub(super) partial: Option<Arc<Partial>>,
}

impl Drop for Tee {
    /// The client went away before the end: when others are streaming this response, a
    /// task reads it to the end for them (and stores it).
    fn drop(&mut self) {
        let Some(p) = &self.partial else { return };
        if p.waiters() == 0 {
            return;
        }
        let inner = std::mem::replace(&mut self.inner, empty());
        let rest = Tee {
            inner,
            buf: self.buf.take(),
            max: self.max,
            done: self.done.take(),
            fill: self.fill.take(),
            partial: self.partial.take(),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut rest = rest;
                while let Some(frame) = rest.frame().await {
                    if frame.is_err() {
                        break;
                    }
                }
            });
        }
    }
}

impl Tee {
    /// The body is complete: store the copy, then let the waiters look again.
    fn finish(&mut self) {
        let complete = self.buf.is_some();
        if let (Some(buf), Some(done)) = (self.buf.take(), self.done.take()) {
            done(buf.freeze());
        }
        if let Some(p) = self.partial.take() {
            p.end(complete);
        }
        self.fill = None;
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(p) = &this.partial {
                        p.push(data.clone());
                    }
                    let over = this
                        .buf
                        .as_ref()
                        .is_some_and(|b| b.len() + data.len() > this.max);
                    if over {
                        this.buf = None;
                    } else if let Some(b) = &mut this.buf {
                        b.extend_from_slice(data);
                    }
                }
                // A body of known length ends with its last frame: the server may never
                // poll for the end.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.buf = None;
                if let Some(p) = this.partial.take() {
                    p.end(false);
                }
                this.fill = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
