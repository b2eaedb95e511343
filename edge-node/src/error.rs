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
    /// The client stopped sending its request body (`http.body_read_timeout`).
    RequestTimeout,
    /// No valid token where the route requires one.
    Unauthorized,
    /// A valid identity without the required role, or a source the policy blocks.
    Forbidden,
    /// Over a rate limit.
    TooManyRequests,
    /// Sent in 0-RTT early data, and the handshake that would prove the client's address
    /// did not complete (RFC 8470): a replayed or forged flight.
    TooEarly,
    /// The client must pass a challenge first (the response is the challenge).
    Challenged,
    /// Connecting to or talking with the origin failed.
    UpstreamFailed,
    /// No origin of the route's pool can take the request.
    NoUpstreamAvailable,
    /// The origin did not answer in time.
    UpstreamTimeout,
    /// A function trapped, ran out of memory or gave no response.
    FunctionFailed,
    /// A function did not finish within its timeout.
    FunctionTimeout,
    /// Every instance a function may have is busy.
    FunctionBusy,
    /// What the request names does not exist (a KV key).
    NotFound,
    /// The handler does not take this method (the response says which it takes).
    MethodNotAllowed,
    /// An `If-Match` / `If-None-Match` condition of a write does not hold.
    PreconditionFailed,
    /// A name in the request (a KV key) is longer than allowed.
    UriTooLong,
    /// A namespace is full (keys or bytes): nothing was written.
    InsufficientStorage,
    /// The node's store failed (disk, commit): nothing was written.
    StorageFailed,
    /// The handler speaks another protocol (a WebSocket): the response says which.
    UpgradeRequired,
    /// At a capacity limit of the node (a full room, too many rooms): try later.
    Unavailable,
}

#[derive(Debug)]
pub struct EdgeError {
    pub kind: ErrorKind,
    pub side: Side,
    /// Whether another attempt (another origin) could succeed.
    pub retryable: bool,
    pub detail: String,
    /// Headers the response carries (WWW-Authenticate, Retry-After, RateLimit, ...).
    pub headers: Vec<(header::HeaderName, header::HeaderValue)>,
    /// A body of its own instead of the generic one (content type, bytes): the
    /// challenge page.
    pub body: Option<(&'static str, Bytes)>,
    /// Answer with JSON (API routes) instead of text.
    pub json: bool,
}

impl EdgeError {
    /// The pool could not take the request at all (its servers unreachable or out of
    /// rotation): another region's pool may.
    pub fn pool_unreachable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::UpstreamFailed | ErrorKind::NoUpstreamAvailable
        )
    }

    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        let (side, retryable) = match kind {
            ErrorKind::BadRequest
            | ErrorKind::UnknownHost
            | ErrorKind::NoRoute
            | ErrorKind::PayloadTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::TooManyRequests
            | ErrorKind::TooEarly
            | ErrorKind::Challenged
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PreconditionFailed
            | ErrorKind::UriTooLong
            | ErrorKind::InsufficientStorage
            | ErrorKind::UpgradeRequired
            | ErrorKind::Unavailable => (Side::Client, false),
            ErrorKind::StorageFailed => (Side::Node, false),
            ErrorKind::NoUpstreamAvailable => (Side::Node, false),
            ErrorKind::UpstreamFailed => (Side::Upstream, true),
            ErrorKind::UpstreamTimeout => (Side::Upstream, false),
            // Functions run in the node: their failures are the node's, and a function
            // is not retried (it may have called out already).
            ErrorKind::FunctionFailed | ErrorKind::FunctionTimeout | ErrorKind::FunctionBusy => {
                (Side::Node, false)
            }
        };
        Self {
            kind,
            side,
            retryable,
            detail: detail.into(),
            headers: Vec::new(),
            body: None,
            json: false,
        }
    }

    /// Adds a response header (values that are not valid header text are dropped).
    pub fn with_header(mut self, name: header::HeaderName, value: impl AsRef<str>) -> Self {
        if let Ok(v) = header::HeaderValue::from_str(value.as_ref()) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::TooEarly => StatusCode::TOO_EARLY,
            ErrorKind::Challenged if self.json => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Challenged => StatusCode::FORBIDDEN,
            ErrorKind::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorKind::NoUpstreamAvailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::FunctionFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::FunctionTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::FunctionBusy => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ErrorKind::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::StorageFailed => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short machine-readable name of the error (JSON bodies).
    fn code(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnknownHost => "unknown_host",
            ErrorKind::NoRoute => "not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::TooManyRequests => "rate_limited",
            ErrorKind::TooEarly => "too_early",
            ErrorKind::Challenged => "challenge_required",
            ErrorKind::UpstreamFailed => "bad_gateway",
            ErrorKind::NoUpstreamAvailable => "unavailable",
            ErrorKind::UpstreamTimeout => "gateway_timeout",
            ErrorKind::FunctionFailed => "function_failed",
            ErrorKind::FunctionTimeout => "function_timeout",
            ErrorKind::FunctionBusy => "function_busy",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PreconditionFailed => "precondition_failed",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::InsufficientStorage => "insufficient_storage",
            ErrorKind::StorageFailed => "storage_unavailable",
            ErrorKind::UpgradeRequired => "upgrade_required",
            ErrorKind::Unavailable => "unavailable",
        }
    }

    /// The response the client sees: status and a generic body, never the detail.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let (content_type, bytes): (&str, Bytes) = match (&self.body, self.json) {
            (Some((ct, b)), _) => (ct, b.clone()),
            (None, true) => (
                "application/json",
                format!(
                    "{{\"error\":\"{}\",\"status\":{}}}\n",
                    self.code(),
                    status.as_u16()
                )
                .into(),
            ),
            (None, false) => (
                "text/plain; charset=utf-8",
                format!(
                    "{} {}\n",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )
                .into(),
            ),
        };
        let mut resp = Response::new(full(bytes));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_str(content_type)
                .unwrap_or(header::HeaderValue::from_static("text/plain")),
        );
        for (k, v) in self.headers {
            resp.headers_mut().append(k, v);
        }
        // After a malformed request nothing else on the connection can be trusted.
        if matches!(
            self.kind,
            ErrorKind::BadRequest | ErrorKind::PayloadTooLarge | ErrorKind::RequestTimeout
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

/// The empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}
