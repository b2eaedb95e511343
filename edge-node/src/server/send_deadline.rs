//! `http.send_timeout`: a response body the client stops taking is abandoned after this
//! long without progress, so a client that never reads (an HTTP/2 stream window of zero,
//! a full TCP window, a stalled QUIC stream) cannot hold the origin connection behind it
//! for as long as it likes. It sits at the edge of the server because only the server
//! sees whether the client takes the bytes; nginx's `send_timeout` is the model.
//!
//! A body nobody polls cannot time itself out, so a watchdog task checks on it. Only
//! bodies that can outlast the socket's and the protocol's buffers get one: a small body
//! is read from the origin whole whether the client reads or not.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::error::{Body, BoxError};

/// Bodies up to this size are not watched (they fit the windows and buffers between
/// the origin and a client that does not read).
const WATCHED_ABOVE: u64 = 256 * 1024;

/// Wraps `body` so that it is dropped (and its origin connection with it) when the
/// client takes nothing for `timeout`. Zero: no deadline.
pub fn guard(body: Body, timeout: Duration) -> Body {
    if timeout.is_zero()
        || body.is_end_stream()
        || body.size_hint().exact().is_some_and(|n| n <= WATCHED_ABOVE)
    {
        return body;
    }
    let shared = Arc::new(Shared {
        body: Mutex::new(Some(body)),
        progress: AtomicU64::new(0),
        awaiting_origin: AtomicBool::new(false),
        done: AtomicBool::new(false),
        started: Instant::now(),
    });
    let watched = Arc::downgrade(&shared);
    tokio::spawn(async move {
        let mut seen = u64::MAX;
        loop {
            tokio::time::sleep(timeout).await;
            let Some(s) = watched.upgrade() else { return };
            if s.done.load(Ordering::Relaxed) {
                return;
            }
            let now = s.progress.load(Ordering::Relaxed);
            // Waiting for the origin's next bytes (a quiet event stream, a long poll) is
            // not the client's doing: only a body the client stopped asking for is.
            if now == seen && !s.awaiting_origin.load(Ordering::Relaxed) {
                tracing::info!(
                    ?timeout,
                    "client took no response bytes in send_timeout: abandoned"
                );
                crate::sync::lock(&s.body).take();
                s.done.store(true, Ordering::Relaxed);
                return;
            }
            seen = now;
        }
    });
    BodyExt::boxed(Guarded { shared })
}

struct Shared {
    body: Mutex<Option<Body>>,
    /// Bumped on every frame the client takes.
    progress: AtomicU64,
    /// The last poll found the origin had nothing yet.
    awaiting_origin: AtomicBool,
    done: AtomicBool,
    started: Instant,
}

struct Guarded {
    shared: Arc<Shared>,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let s = &self.shared;
        let mut slot = crate::sync::lock(&s.body);
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(Some(Err(format!(
                "the client took no bytes for the send timeout (after {:?})",
                s.started.elapsed()
            )
            .into())));
        };
        let polled = Pin::new(body).poll_frame(cx);
        s.awaiting_origin
            .store(polled.is_pending(), Ordering::Relaxed);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                s.progress.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Ready(_) => s.done.store(true, Ordering::Relaxed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        crate::sync::lock(&self.shared.body)
            .as_ref()
            // Abandoned: not an end (that would pass a cut response off as complete).
            .is_some_and(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        crate::sync::lock(&self.shared.body)
            .as_ref()
            .map_or_else(SizeHint::default, HttpBody::size_hint)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.shared.done.store(true, Ordering::Relaxed);
    }
}
