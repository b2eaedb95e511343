//! Request bodies as the pipeline and the upstream client take them: a deadline between
//! frames (`http.body_read_timeout`), below both so neither depends on the listeners.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::error::BoxError;

/// A request body that stalled: no frame for `http.body_read_timeout`.
#[derive(Debug)]
pub struct BodyReadTimeout;

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body: nothing received within http.body_read_timeout")
    }
}

impl std::error::Error for BodyReadTimeout {}

/// A request body that fails with [`BodyReadTimeout`] when the client sends nothing for
/// `timeout` (counted from the last frame, or from the start).
pub struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + this.timeout;
                this.sleep.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyReadTimeout.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a bounded body was not read whole.
#[derive(Debug)]
pub enum Unread {
    /// Over the limit (given up as soon as it was).
    TooLarge,
    /// The body itself failed (reset, timeout, bad framing).
    Failed(crate::error::BoxError),
}

/// Reads a whole body of at most `max` bytes (a small form, a stored value, an upload
/// the node itself takes), given up as soon as it is longer.
pub async fn read_bounded(mut body: crate::error::Body, max: u64) -> Result<bytes::Bytes, Unread> {
    use http_body_util::BodyExt;
    let mut value = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Unread::Failed)?.into_data() else {
            continue;
        };
        if (value.len() + data.len()) as u64 > max {
            return Err(Unread::TooLarge);
        }
        value.extend_from_slice(&data);
    }
    Ok(value.freeze())
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unread::TooLarge => f.write_str("body over its limit"),
            Unread::Failed(e) => write!(f, "body: {e}"),
        }
    }
}
