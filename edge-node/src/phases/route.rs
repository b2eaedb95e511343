//! Route phase: which route (and so which upstream pool) serves the request. Only
//! configured hosts are served: an unknown host is refused, never proxied.

use std::{collections::BTreeMap, sync::Arc};

use anyhow::{Result, bail};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::{
    error::{Body, EdgeError, ErrorKind},
    request::{Flow, Phase, PhaseFuture, RequestCtx, RouteInfo},
    upstream::Upstream,
};

/// The route phase: the first route that matches the request, and its pools for this
/// client.
pub struct RoutePhase {
    pub table: Arc<RouteTable>,
    pub geo: super::geo::Geo,
}

impl Phase for RoutePhase {
    fn name(&self) -> &'static str {
        "route"
    }

    fn early_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut http::Request<Body>,
    ) -> PhaseFuture<'a> {
        Box::pin(std::future::ready(
            self.route(ctx, req).map(|()| Flow::Continue),
        ))
    }
}

impl RoutePhase {
    fn route(&self, ctx: &mut RequestCtx, req: &http::Request<Body>) -> Result<(), EdgeError> {
        let route = self.table.select(
            &ctx.host,
            req.method(),
            ctx.match_path(req.uri().path()),
            req.headers(),
        )?;
        // An extended CONNECT (RFC 8441) opens a tunnel: only a handler that speaks
        // WebSocket itself takes one; a proxied route would forward a CONNECT.
        if req.extensions().get::<hyper::ext::Protocol>().is_some() && !route.info.websocket {
            return Err(EdgeError::new(
                ErrorKind::MethodNotAllowed,
                "extended CONNECT is served by rooms routes only",
            ));
        }
        ctx.route = Some(route.info.clone());
        if route.upstreams.is_empty() {
            return Ok(());
        }
        let mut pools = route.pools_for(self.geo.region_of(ctx.client_ip));
        // Pools with a server in rotation first (a region whose origins are all down
        // or ejected is failed over); when none has one, try them anyway.
        if pools.iter().any(|p| p.has_usable_server()) {
            pools.retain(|p| p.has_usable_server());
        }
        let first = pools.first().expect("a route with pools");
        ctx.region = first.region.clone();
        ctx.upstream = first.name.clone();
        ctx.pools = pools.into_iter().cloned().collect();
        Ok(())
    }
}

/// `[[route]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Name in metrics and logs (default: the first host and the path prefix).
    #[serde(default)]
    pub name: Option<String>,
    /// Hosts served: exact (`www.example.com`), wildcard (`*.example.com`, one or more
    /// labels), or `*` for any host.
    pub hosts: Vec<String>,
    /// Path prefix, matched on segment boundaries (`/api` matches `/api` and `/api/x`).
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Methods served (empty: all).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers that must match, all of them: name → exact value, or `"*"` for
    /// present with any value (`headers = { "x-canary" = "1" }`). Empty: any request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The upstream pool (its `name`). On a `{ kv = … }` route (optional): where a
    /// missing key is fetched from (read-through, kept for `fill_ttl`).
    #[serde(default)]
    pub upstream: String,
    /// Or several pools, one per region: the client's region's pool first, the others
    /// in this order when it cannot be reached (failover).
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// An API: refusals and challenges answer with JSON, never an HTML page.
    #[serde(default)]
    pub api: bool,
    /// JWT policy (`[route.auth]`).
    #[serde(default)]
    pub auth: Option<super::auth::RouteAuthSettings>,
    /// Rate limits (`[[route.rate_limit]]`), all applied.
    #[serde(default)]
    pub rate_limit: Vec<super::rate_limit::RateLimitSettings>,
    /// Caching (`[route.cache]`; none: responses are not cached).
    #[serde(default)]
    pub cache: Option<super::cache::RouteCacheSettings>,
    /// An A/B experiment (`[route.experiment]`; none: no personalization).
    #[serde(default)]
    pub experiment: Option<super::personalize::ExperimentSettings>,
    /// What answers the route's requests once the phases let them through.
    #[serde(default)]
    pub handler: HandlerSettings,
    /// A `{ kv = … }` route with an upstream: how long a value fetched on a miss is kept.
    #[serde(default = "default_fill_ttl", with = "crate::duration")]
    pub fill_ttl: std::time::Duration,
    /// Responses carry Server-Timing (the edge's time per step).
    #[serde(default = "yes")]
    pub server_timing: bool,
    /// Responses may be compressed (`[compression]`); `false` for routes whose answers
    /// mix secrets with what a client sends back (BREACH).
    #[serde(default = "yes")]
    pub compress: bool,
    /// A `[[function]]` that sees each request before the cache and the handler: it
    /// lets it go on (rewritten) or answers it (`phases::filter`).
    #[serde(default)]
    pub request_filter: Option<String>,
    /// A `[[function]]` that edits the status and headers of what the handler answers,
    /// before the cache keeps it (`phases::filter`).
    #[serde(default)]
    pub response_filter: Option<String>,
}

/// `handler = "proxy" | "demo" | { function = "name" } | { kv = "name" } |
/// { rooms = "name" } | { graphql = "name" }`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerSettings {
    /// The route's upstream pools, through the cache when `[route.cache]` is set.
    #[default]
    Proxy,
    /// The built-in demo page.
    Demo,
    /// A WebAssembly component (`[[function]]` of that name).
    Function(String),
    /// A key-value namespace (`[[kv]]` of that name): reads by anyone the route lets
    /// through, writes only on routes with `[route.auth]`.
    Kv(String),
    /// Real-time rooms (`[[rooms]]` of that name): WebSocket members, durable state.
    Rooms(String),
    /// GraphQL over edge data (`[[graphql]]` of that name).
    Graphql(String),
}

fn yes() -> bool {
    true
}

fn default_fill_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn default_prefix() -> String {
    "/".into()
}

impl RouteSettings {
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}{}",
                self.hosts.first().map_or("", String::as_str),
                self.path_prefix
            )
        })
    }

    /// The pools this route may use, in configuration order.
    pub fn pools(&self) -> Vec<&str> {
        // A kv route's upstream is optional (read-through); other handlers have none.
        let proxied = match self.handler {
            HandlerSettings::Proxy => true,
            HandlerSettings::Kv(_) => !self.upstream.is_empty() || !self.upstreams.is_empty(),
            _ => false,
        };
        if !proxied {
            Vec::new()
        } else if self.upstreams.is_empty() {
            vec![self.upstream.as_str()]
        } else {
            self.upstreams.iter().map(String::as_str).collect()
        }
    }

    /// `headers`, parsed: the name and the value it must have (`None`: any value).
    pub fn header_matches(&self) -> Result<Vec<(HeaderName, Option<HeaderValue>)>> {
        self.headers
            .iter()
            .map(|(name, value)| {
                let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
                    bail!(
                        "route {}: headers: {name:?} is not a header name",
                        self.display_name()
                    );
                };
                if super::early::removed_before_routing(&n) {
                    bail!(
                        "route {}: headers: {name:?} is removed from client requests before \
                         routing (hop-by-hop, or set only by the node): it can never match",
                        self.display_name()
                    );
                }
                if value == "*" {
                    return Ok((n, None));
                }
                let Ok(v) = HeaderValue::from_str(value) else {
                    bail!(
                        "route {}: headers.{name}: {value:?} is not a header value",
                        self.display_name()
                    );
                };
                Ok((n, Some(v)))
            })
            .collect()
    }

    pub fn validate(&self) -> Result<()> {
        match self.handler {
            HandlerSettings::Proxy => {
                if self.upstream.is_empty() == self.upstreams.is_empty() {
                    bail!(
                        "route for {:?}: give either upstream or upstreams",
                        self.hosts
                    );
                }
            }
            HandlerSettings::Kv(_) if self.cache.is_some() => {
                bail!(
                    "route {}: [route.cache] caches what upstreams answer: it needs \
                     handler = \"proxy\" (a kv route keeps what it fetches itself)",
                    self.display_name()
                );
            }
            HandlerSettings::Kv(_) => {
                if !self.upstream.is_empty() && !self.upstreams.is_empty() {
                    bail!(
                        "route {}: give upstream or upstreams, not both",
                        self.display_name()
                    );
                }
                if self.fill_ttl.as_secs() == 0 {
                    bail!(
                        "route {}: fill_ttl must be at least 1s",
                        self.display_name()
                    );
                }
            }
            _ => {
                if !self.upstream.is_empty() || !self.upstreams.is_empty() {
                    bail!(
                        "route {}: upstream is for handler = \"proxy\"; this route's handler \
                         is {:?}",
                        self.display_name(),
                        self.handler
                    );
                }
                if self.cache.is_some() {
                    bail!(
                        "route {}: [route.cache] caches what upstreams answer: it needs \
                         handler = \"proxy\"",
                        self.display_name()
                    );
                }
            }
        }
        if self.hosts.is_empty() {
            bail!("route to {:?}: hosts is empty", self.pools());
        }
        for h in &self.hosts {
            if !is_host_pattern(h) {
                bail!(
                    "route to {:?}: hosts: {h:?} is not a host pattern (a host name or address \
                     without port, *.domain, or *)",
                    self.pools()
                );
            }
        }
        let pools = self.pools();
        if let Some((i, dup)) = pools
            .iter()
            .enumerate()
            .find(|(i, p)| pools[..*i].contains(p))
            .map(|(i, p)| (i, *p))
        {
            bail!(
                "route {}: upstreams lists {dup:?} twice (again at position {})",
                self.display_name(),
                i + 1
            );
        }
        if !self.path_prefix.starts_with('/') {
            bail!("route to {:?}: path_prefix must start with /", self.pools());
        }
        crate::target::check_prefix(&self.path_prefix)
            .map_err(|e| anyhow::anyhow!("route {}: path_prefix: {e}", self.display_name()))?;
        if let Some(auth) = &self.auth {
            for r in &auth.roles {
                crate::target::check_prefix(&r.path_prefix).map_err(|e| {
                    anyhow::anyhow!("route {}: auth.roles: {e}", self.display_name())
                })?;
            }
        }
        for m in &self.methods {
            if Method::from_bytes(m.as_bytes()).is_err() {
                bail!("route to {:?}: {m:?} is not a method", self.pools());
            }
        }
        self.header_matches()?;
        for l in &self.rate_limit {
            l.validate()
                .map_err(|e| anyhow::anyhow!("route {}: {e}", self.display_name()))?;
        }
        Ok(())
    }
}

pub struct Route {
    /// What phases see of it (name, index for their per-route settings).
    pub info: RouteInfo,
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub methods: Vec<Method>,
    /// Request headers that must match (`None`: present with any value).
    pub headers: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Pools in configuration order (see `RouteSettings::upstreams`).
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Route {
    /// The pools to try for a client of `region`: that region's first, then the rest.
    pub fn pools_for(&self, region: &str) -> Vec<&Arc<Upstream>> {
        let mut pools = Vec::with_capacity(self.upstreams.len());
        pools.extend(self.upstreams.iter().filter(|u| u.region == region));
        pools.extend(self.upstreams.iter().filter(|u| u.region != region));
        pools
    }
}

/// A configured host as `host_matches` reads it: `*`, `*.suffix`, or a host spelled the
/// way a request's host is normalized (so it can match one).
fn is_host_pattern(h: &str) -> bool {
    let exact =
        |h: &str| super::early::normalize_host(h).is_some_and(|n| n == h.to_ascii_lowercase());
    match h.strip_prefix("*.") {
        _ if h == "*" => true,
        Some(suffix) => !suffix.starts_with('[') && !suffix.contains('*') && exact(suffix),
        None => !h.contains('*') && exact(h),
    }
}

impl Route {
    fn host_matches(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| {
            if h == "*" {
                true
            } else if let Some(suffix) = h.strip_prefix("*.") {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            } else {
                h.eq_ignore_ascii_case(host)
            }
        })
    }

    fn headers_match(&self, request: &HeaderMap) -> bool {
        self.headers.iter().all(|(name, want)| match want {
            None => request.contains_key(name),
            Some(v) => request.get_all(name).iter().any(|got| got == v),
        })
    }

    fn path_matches(&self, path: &str) -> bool {
        crate::target::path_under(path, &self.path_prefix)
    }
}

/// Routes in configuration order; the first match wins.
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        Self {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn select(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Arc<Route>, EdgeError> {
        let mut host_known = false;
        for r in &self.routes {
            if !r.host_matches(host) {
                continue;
            }
            host_known = true;
            if r.path_matches(path)
                && (r.methods.is_empty() || r.methods.contains(method))
                && r.headers_match(headers)
            {
                return Ok(r.clone());
            }
        }
        if host_known {
            Err(EdgeError::new(
                ErrorKind::NoRoute,
                format!("{host}: no route for {method} {path}"),
            ))
        } else {
            Err(EdgeError::new(
                ErrorKind::UnknownHost,
                format!("host {host:?} is not served"),
            ))
        }
    }
}
