//! Errors of the request path and the one place they become HTTP responses: clients get
//! a status and a generic body; the detail goes to the log.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Errors of bodies in transit (the client's or an origin's connection, a timeout).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the node produces or relays.
pub type Body = BoxBody<Bytes, BoxError>;

/// Which side a failure belongs to (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Node,
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed (missing Host, bad URI, ...).
    BadRequest,
    /// No route serves this host: the node is not an open proxy.
    UnknownHost,
    /// A route matched the host but not the path or method.
    NoRoute,
    /// The request body is larger than `http.max_body_bytes`.
    PayloadTooLarge,
    /// Connecting to or talking with the origin failed.
    UpstreamFailed,
    /// No origin of the route's pool can take the request.
    NoUpstreamAvailable,
    /// The origin did not answer in time.
    UpstreamTimeout,
}

#[derive(Debug)]
pub struct EdgeError {
    pub kind: ErrorKind,
    pub side: Side,
    /// Whether another attempt (another origin) could succeed.
    pub retryable: bool,
    pub detail: String,
}

impl EdgeError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        let (side, retryable) = match kind {
            ErrorKind::BadRequest
            | ErrorKind::UnknownHost
            | ErrorKind::NoRoute
            | ErrorKind::PayloadTooLarge => (Side::Client, false),
            ErrorKind::NoUpstreamAvailable => (Side::Node, false),
            ErrorKind::UpstreamFailed => (Side::Upstream, true),
            ErrorKind::UpstreamTimeout => (Side::Upstream, false),
        };
        Self {
            kind,
            side,
            retryable,
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorKind::NoUpstreamAvailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response the client sees: status and a generic body, never the detail.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let text = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let mut resp = Response::new(full(text));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        // After a malformed request nothing else on the connection can be trusted.
        if matches!(
            self.kind,
            ErrorKind::BadRequest | ErrorKind::PayloadTooLarge
        ) {
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

impl std::fmt::Display for EdgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} ({:?} side): {}", self.kind, self.side, self.detail)
    }
}

impl std::error::Error for EdgeError {}

/// A complete body from bytes.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}
