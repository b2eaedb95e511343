//! Outgoing HTTP by grant: a guest reaches the node's `[[upstream]]`s it was granted,
//! by name (`http://<upstream>/path`), through the node's own pools — never an address
//! or a host name of its choosing. Anything else gets `HttpRequestDenied` in the guest
//! and a line in the node's log.

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use sync_wrapper::SyncWrapper;
use tracing::{debug, warn};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::{
    error::{BoxError, EdgeError, ErrorKind},
    upstream::{Pool, Upstream},
};

/// The upstreams one function may call, and the pools that reach them.
pub struct Grants {
    /// By name, lower case (a URI's host is case-insensitive).
    upstreams: HashMap<String, Arc<Upstream>>,
    pool: Pool,
}

/// Why an outgoing request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// An IP address instead of a name.
    Address(String),
    /// A name that is not one of the function's upstreams.
    NotGranted(String),
    /// A port, user info, or no host at all: not the `http://<upstream>/path` form.
    Form(String),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Address(a) => write!(f, "{a} is an address; functions reach upstreams by name"),
            Self::NotGranted(n) => write!(f, "{n:?} is not an upstream granted to the function"),
            Self::Form(u) => write!(f, "{u} is not of the form http://<upstream>/path"),
        }
    }
}

impl Grants {
    /// The grants `names` (validated: each is a defined upstream) out of the node's
    /// `upstreams`.
    pub fn new(
        names: &[String],
        upstreams: &HashMap<String, Arc<Upstream>>,
        pool: &Pool,
    ) -> anyhow::Result<Self> {
        let mut granted = HashMap::new();
        for n in names {
            let Some(up) = upstreams.get(n) else {
                anyhow::bail!("upstream {n:?} is granted but not defined");
            };
            granted.insert(n.to_ascii_lowercase(), up.clone());
        }
        Ok(Self {
            upstreams: granted,
            pool: pool.clone(),
        })
    }

    /// The upstream an outgoing request to `uri` goes to, or why it may not.
    pub fn decide(&self, uri: &Uri) -> Result<Arc<Upstream>, Denied> {
        let Some(authority) = uri.authority() else {
            return Err(Denied::Form(uri.to_string()));
        };
        let host = authority.host();
        // A name, not a way around the grants: no port, no credentials.
        if authority.port().is_some() || authority.as_str().contains('@') || host.is_empty() {
            return Err(Denied::Form(authority.to_string()));
        }
        if let Some(up) = self.upstreams.get(&host.to_ascii_lowercase()) {
            return Ok(up.clone());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Err(Denied::Address(host.to_string()));
        }
        Err(Denied::NotGranted(host.to_string()))
    }
}

/// The wasi:http hooks of one instance: the function's grants, and who the request
/// it serves came from (upstream pools may balance on the client's address).
pub struct Outbound {
    pub function: Arc<str>,
    pub grants: Arc<Grants>,
    pub client_ip: IpAddr,
    /// Outgoing requests of this instance in flight at once: a guest fanning out
    /// thousands would spend the node's sockets.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// Outgoing requests one instance may have in flight.
pub const MAX_OUTGOING: usize = 16;

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn set_host_header(&mut self) -> bool {
        // The upstream's server is the host the origin sees, as for proxied requests
        // (the pools set it); the upstream's name means nothing to the origin.
        false
    }

    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let decision = self.grants.decide(request.uri());
        let function = self.function.clone();
        let grants = self.grants.clone();
        let client_ip = self.client_ip;
        let in_flight = self.in_flight.clone();
        Box::new(async move {
            let Ok(_permit) = in_flight.try_acquire_owned() else {
                warn!(%function, uri = %request.uri(), "outgoing request refused: {MAX_OUTGOING} in flight");
                return Err(HttpError::HttpRequestDenied);
            };
            let up = match decision {
                Ok(up) => up,
                Err(why) => {
                    warn!(%function, uri = %request.uri(), reason = %why, "outgoing request denied");
                    return Err(HttpError::HttpRequestDenied);
                }
            };
            debug!(%function, upstream = %up.name, uri = %request.uri(), "outgoing request");
            let mut request = request;
            // The node's own headers (identity, forwarding) are the node's to set, and
            // hop-by-hop ones are not a guest's to pass on.
            let owned: Vec<_> = request
                .headers()
                .keys()
                .filter(|n| crate::headers::removed_before_routing(n))
                .cloned()
                .collect();
            for n in owned {
                request.headers_mut().remove(n);
            }
            let body_is_empty = request.body().is_end_stream();
            let request = request.map(|b| SyncBody::new(b.map_err(BoxError::from)).boxed());
            let sent = grants.pool.send(&up, request, body_is_empty, client_ip);
            let response = match options.and_then(|o| o.first_byte_timeout) {
                Some(t) => tokio::time::timeout(t, sent).await.unwrap_or_else(|_| {
                    Err(EdgeError::new(
                        ErrorKind::UpstreamTimeout,
                        "first_byte_timeout",
                    ))
                }),
                None => sent.await,
            };
            let response = response.map_err(|e| {
                warn!(%function, upstream = %up.name, error = %e, "outgoing request failed");
                error_code(&e)
            })?;
            let response = response.map(|b| {
                b.map_err(|e| HttpError::InternalError(Some(e.to_string())))
                    .boxed_unsync()
            });
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// What the guest learns of a failed exchange with an upstream (the detail is in the
/// node's log).
fn error_code(e: &EdgeError) -> HttpError {
    match e.kind {
        ErrorKind::UpstreamTimeout => HttpError::HttpResponseTimeout,
        ErrorKind::NoUpstreamAvailable => HttpError::DestinationUnavailable,
        ErrorKind::PayloadTooLarge => HttpError::HttpRequestBodySize(None),
        ErrorKind::UpstreamFailed => HttpError::ConnectionRefused,
        _ => HttpError::InternalError(None),
    }
}

/// A `Send` but not `Sync` body (wasmtime's) as the node's body type, which must be
/// `Sync`: only ever polled through `&mut`, which `SyncWrapper` allows. Its size and
/// end are read when it is wrapped (they need `&self`).
pub struct SyncBody<B> {
    inner: SyncWrapper<B>,
    hint: SizeHint,
    ended: bool,
}

impl<B: HttpBody> SyncBody<B> {
    pub fn new(inner: B) -> Self {
        Self {
            hint: inner.size_hint(),
            ended: inner.is_end_stream(),
            inner: SyncWrapper::new(inner),
        }
    }
}

impl<B> HttpBody for SyncBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(this.inner.get_mut()).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(names: &[&str]) -> Grants {
        let pool = Pool::new(std::time::Duration::from_secs(1), 1);
        let mut ups = HashMap::new();
        for n in ["api", "Users", "10.0.0.1", "other"] {
            let s: crate::upstream::UpstreamSettings =
                toml::from_str(&format!("name = \"{n}\"\nservers = [\"127.0.0.1:9\"]")).unwrap();
            ups.insert(n.to_string(), Arc::new(pool.upstream(&s).unwrap()));
        }
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Grants::new(&names, &ups, &pool).unwrap()
    }

    fn decide(g: &Grants, uri: &str) -> Result<String, Denied> {
        g.decide(&uri.parse().unwrap()).map(|u| u.name.clone())
    }

    #[test]
    fn granted_names_reach_their_upstream() {
        let g = grants(&["api", "Users"]);
        assert_eq!(decide(&g, "http://api/v1/x?y=1").unwrap(), "api");
        assert_eq!(decide(&g, "https://api/").unwrap(), "api");
        // Host names are case-insensitive.
        assert_eq!(decide(&g, "http://API/").unwrap(), "api");
        assert_eq!(decide(&g, "http://users/").unwrap(), "Users");
    }

    #[test]
    fn everything_else_is_denied() {
        let g = grants(&["api"]);
        assert_eq!(
            decide(&g, "http://other/"),
            Err(Denied::NotGranted("other".into()))
        );
        assert_eq!(
            decide(&g, "http://example.com/"),
            Err(Denied::NotGranted("example.com".into()))
        );
        assert_eq!(
            decide(&g, "http://127.0.0.1/"),
            Err(Denied::Address("127.0.0.1".into()))
        );
        assert_eq!(
            decide(&g, "http://[::1]/"),
            Err(Denied::Address("[::1]".into()))
        );
        // An upstream named like an address is reachable only when granted by name.
        assert_eq!(
            decide(&g, "http://10.0.0.1/"),
            Err(Denied::Address("10.0.0.1".into()))
        );
        assert!(matches!(
            decide(&g, "http://api:8080/"),
            Err(Denied::Form(_))
        ));
        assert!(matches!(
            decide(&g, "http://user@api/"),
            Err(Denied::Form(_))
        ));
        assert!(matches!(decide(&g, "/relative"), Err(Denied::Form(_))));
        // No grants at all: nothing.
        let none = grants(&[]);
        assert!(decide(&none, "http://api/").is_err());
    }
}
