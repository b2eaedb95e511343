//! One context per request, passed to every phase in turn.

use std::{any::Any, net::SocketAddr, sync::Arc, time::Instant};

use crate::{policy::Source, upstream::Upstream};

use super::timing::Timings;

/// What the phases learn about one request.
pub struct RequestCtx {
    /// The socket peer.
    pub client: SocketAddr,
    /// The client: the peer, or the address a trusted proxy in front reported.
    pub client_ip: std::net::IpAddr,
    /// The peer is one of `http.trusted_proxies` (set by the early phase).
    pub peer_trusted: bool,
    /// The peer's address is proven (false for HTTP/3 requests from 0-RTT early data).
    pub validated: bool,
    /// A browser may have sent it on another site's behalf (`policy::Source::induced`).
    pub induced: bool,
    /// X-Forwarded-For as received from a trusted proxy.
    pub forwarded_chain: Option<String>,
    /// `Forwarded` (RFC 7239) as received from a trusted proxy, and how that proxy
    /// reached the node ("http" / "https"): the node appends its own element to it.
    pub forwarded_elements: Option<(String, &'static str)>,
    /// X-Forwarded-Host as received from a trusted proxy (the host the client asked).
    pub forwarded_host: Option<String>,
    /// Lower-case host without port.
    pub host: String,
    /// The path routes, role rules and blocked paths match (`target::match_form`), when
    /// it differs from the canonical target's path.
    pub match_path: Option<String>,
    /// "http" or "https": how the client reached the node.
    pub scheme: &'static str,
    /// The route that matched (`None` before routing).
    pub route: Option<RouteInfo>,
    /// The route's pools for this client: its region's first, those with a server in
    /// rotation before the others (set by routing).
    pub pools: Vec<Arc<Upstream>>,
    /// The region and pool that serve the request ("" until known).
    pub region: String,
    pub upstream: String,
    /// The authenticated user (`sub`), if any.
    pub user: Option<String>,
    /// The intent model's input, taken from the request as the client sent it.
    pub intent_features: Option<[f32; crate::intent::features::FEATURE_COUNT]>,
    /// The intent model's class for the request, if it gave one.
    pub intent: Option<&'static str>,
    /// What the cache did (`X-Cache`'s value), when a cache looked.
    pub cache_outcome: Option<&'static str>,
    /// The node's forwarding headers are on the request already.
    pub forwarding_set: bool,
    /// The personalization variant the request was given (part of the cache key).
    pub variant: Option<String>,
    /// Time spent per step, for Server-Timing and the access log.
    pub timings: Timings,
    /// The request's trace when traces are on (`[traces]`), else `None`.
    pub trace: Option<Box<super::trace::Trace>>,
    /// What phases keep for their later hooks, one value per type.
    pub state: PhaseState,
    pub started: Instant,
}

/// Per-request values of the phases, by type: a phase keeps what its response hook
/// needs under a type of its own, so the context does not grow a field per feature.
#[derive(Default)]
pub struct PhaseState(Vec<Box<dyn Any + Send>>);

impl PhaseState {
    /// Keeps `value`, replacing one of the same type.
    pub fn put<T: Send + 'static>(&mut self, value: T) {
        self.take::<T>();
        self.0.push(Box::new(value));
    }

    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.iter().find_map(|v| v.downcast_ref())
    }

    pub fn take<T: 'static>(&mut self) -> Option<T> {
        let i = self.0.iter().position(|v| v.is::<T>())?;
        self.0.swap_remove(i).downcast().ok().map(|b| *b)
    }
}

/// The matched route, as every phase sees it; a phase keeps its own per-route settings
/// by `index`.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub index: usize,
    pub name: Arc<str>,
    /// The route is an API (errors as JSON).
    pub api: bool,
    /// Responses carry Server-Timing.
    pub server_timing: bool,
    /// The handler speaks WebSocket itself (rooms): the one kind of route an HTTP/2
    /// extended CONNECT (RFC 8441) may reach.
    pub websocket: bool,
}

/// A request extension the HTTP/3 listener sets on requests that arrived in 0-RTT early
/// data, before the client's address was validated: the handshake that proves it, and
/// how long a request may wait for it.
#[derive(Debug, Clone)]
pub struct EarlyData {
    handshake: tokio::sync::watch::Receiver<bool>,
    wait: std::time::Duration,
}

impl EarlyData {
    /// `handshake` turns true once the connection's handshake completed.
    pub fn new(handshake: tokio::sync::watch::Receiver<bool>, wait: std::time::Duration) -> Self {
        Self { handshake, wait }
    }

    /// Waits for the handshake; false when it did not complete within the wait (a flight
    /// replayed or sent from a forged address, which nobody can complete).
    pub async fn proven(mut self) -> bool {
        matches!(
            tokio::time::timeout(self.wait, self.handshake.wait_for(|done| *done)).await,
            Ok(Ok(_))
        )
    }
}

impl RequestCtx {
    pub fn new(client: SocketAddr) -> Self {
        Self {
            client,
            client_ip: client.ip(),
            peer_trusted: false,
            validated: true,
            induced: false,
            forwarded_chain: None,
            forwarded_elements: None,
            forwarded_host: None,
            host: String::new(),
            match_path: None,
            scheme: "http",
            route: None,
            pools: Vec::new(),
            region: String::new(),
            upstream: String::new(),
            user: None,
            intent_features: None,
            intent: None,
            cache_outcome: None,
            forwarding_set: false,
            variant: None,
            timings: Timings::default(),
            trace: None,
            state: PhaseState::default(),
            started: Instant::now(),
        }
    }

    /// Who threat signals from this request are about (`policy::Source`).
    pub fn source(&self) -> Source {
        Source {
            client: self.client_ip,
            peer: self.client.ip(),
            peer_trusted: self.peer_trusted,
            validated: self.validated,
            induced: self.induced,
        }
    }

    /// The path rules match: `match_path`, or the request's own.
    pub fn match_path<'a>(&'a self, path: &'a str) -> &'a str {
        self.match_path.as_deref().unwrap_or(path)
    }

    /// The matched route's name ("" before routing).
    pub fn route_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| &r.name)
    }

    /// The route is an API: refusals answer with JSON.
    pub fn api(&self) -> bool {
        self.route.as_ref().is_some_and(|r| r.api)
    }

    /// The matched route's index, for phases' per-route settings.
    pub fn route_index(&self) -> Option<usize> {
        self.route.as_ref().map(|r| r.index)
    }
}
