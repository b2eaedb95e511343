//! The request pipeline: one context per request, phases in a fixed order
//! (early → route → challenge → auth → rate limit → upstream → response), and errors
//! turned into responses in one place.

pub mod retained;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Instant};

use anyhow::{Result, bail};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use tracing::{info, warn};

use crate::{
    admin::Metrics,
    auth::JwtProvider,
    config::Config,
    error::{Body, EdgeError},
    headers,
    phases::{
        auth::RouteAuth,
        cache::{CacheFetch, CacheStep, RouteCache},
        challenge::{self, Challenger},
        early,
        personalize::{Assignment, Experiment},
        rate_limit,
        route::{Route, RouteTable},
        upgrade,
    },
    policy::{Signal, Source, Standing, ThreatEngine},
    upstream::{Origin, Pool, Upstream, demo},
    xdp::SharedPolicy,
};

/// A request body the pipeline can take: hyper's (HTTP/1.1, HTTP/2) or the HTTP/3
/// listener's.
pub trait RequestBody:
    HttpBody<Data = bytes::Bytes, Error: Into<crate::error::BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: HttpBody<Data = bytes::Bytes, Error: Into<crate::error::BoxError>>
        + Send
        + Sync
        + Unpin
        + 'static
{
}

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
    /// X-Forwarded-For as received from a trusted proxy.
    pub forwarded_chain: Option<String>,
    /// `Forwarded` (RFC 7239) as received from a trusted proxy, and how that proxy
    /// reached the node ("http" / "https"): the node appends its own element to it.
    pub forwarded_elements: Option<(String, &'static str)>,
    /// X-Forwarded-Host as received from a trusted proxy (the host the client asked).
    pub forwarded_host: Option<String>,
    /// Lower-case host without port.
    pub host: String,
    pub region: String,
    /// "http" or "https": how the client reached the node.
    pub scheme: &'static str,
    /// The route that matched ("" before routing).
    pub route: String,
    /// The upstream pool the route chose ("" before routing).
    pub upstream: String,
    /// The route is an API (errors as JSON).
    pub api: bool,
    /// The authenticated user (`sub`), if any.
    pub user: Option<String>,
    /// The route's A/B experiment and the variant this request was given.
    pub experiment: Option<(Arc<Experiment>, Assignment)>,
    /// The intent model's class for the request, if it gave one.
    pub intent: Option<&'static str>,
    pub started: Instant,
}

/// A request extension the HTTP/3 listener sets on requests that arrived in 0-RTT early
/// data, before the client's address was validated.
#[derive(Debug, Clone, Copy)]
pub struct EarlyData;

impl RequestCtx {
    /// Who threat signals from this request are about (`policy::Source`).
    pub fn source(&self) -> Source {
        Source {
            client: self.client_ip,
            peer: self.client.ip(),
            peer_trusted: self.peer_trusted,
            validated: self.validated,
        }
    }

    pub fn new(client: SocketAddr) -> Self {
        Self {
            client,
            client_ip: client.ip(),
            peer_trusted: false,
            validated: true,
            forwarded_chain: None,
            forwarded_elements: None,
            forwarded_host: None,
            host: String::new(),
            region: String::new(),
            scheme: "http",
            route: String::new(),
            upstream: String::new(),
            api: false,
            user: None,
            experiment: None,
            intent: None,
            started: Instant::now(),
        }
    }
}

pub struct Pipeline {
    node_id: String,
    node_id_header: HeaderValue,
    routes: RouteTable,
    pool: Pool,
    metrics: Arc<Metrics>,
    trusted_proxies: Vec<ipnet::IpNet>,
    path_policy: crate::target::PathSettings,
    tunnel_idle_timeout: std::time::Duration,
    max_body_bytes: u64,
    body_read_timeout: std::time::Duration,
    geo: crate::phases::geo::Geo,
    upstreams: Vec<Arc<Upstream>>,
    providers: Vec<Arc<JwtProvider>>,
    /// Identity headers of every provider: removed from every request, whatever its route.
    identity_headers: Vec<http::HeaderName>,
    /// Request headers the phases set before the cache (identity, experiment, intent):
    /// forwarded even by routes that strip unkeyed headers.
    node_headers: Vec<http::HeaderName>,
    threat: Arc<ThreatEngine>,
    challenger: Challenger,
    /// `Alt-Svc` for HTTP/1.1 and HTTP/2 responses when HTTP/3 is served.
    alt_svc: Option<HeaderValue>,
    /// The in-memory cache tier (shared across reloads).
    cache: Arc<crate::cache::Store>,
    /// Intent prediction (its model is loaded again on reload).
    intent: Option<crate::intent::Intent>,
    /// The source policy when userspace enforces it (XDP not active); `None` when the
    /// kernel does, or without XDP state at all.
    userspace_policy: Option<SharedPolicy>,
}

impl Pipeline {
    /// Builds the pipeline of a (validated) configuration. `threat` and `retained`
    /// (JWKS keys, verified tokens, rate-limit buckets) live across reloads;
    /// `userspace_policy` is the source policy when XDP is not enforcing it.
    pub fn new(
        config: &Config,
        pool: Pool,
        metrics: Arc<Metrics>,
        threat: Arc<ThreatEngine>,
        userspace_policy: Option<SharedPolicy>,
        cache: Arc<crate::cache::Store>,
        retained: &retained::Retained,
    ) -> Result<Self> {
        let mut providers = HashMap::new();
        for p in &config.jwt_provider {
            let provider = JwtProvider::keeping(p, |material| retained.provider(p, material))?;
            providers.insert(p.name.clone(), Arc::new(provider));
        }
        let mut identity_headers = Vec::new();
        for p in providers.values() {
            for h in [&p.settings.user_header, &p.settings.roles_header] {
                identity_headers.push(http::HeaderName::from_bytes(h.as_bytes())?);
            }
        }
        let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
        for u in &config.upstream {
            if upstreams
                .insert(u.name.clone(), Arc::new(pool.upstream(u)?))
                .is_some()
            {
                bail!("upstream {} is defined twice", u.name);
            }
        }
        let mut node_headers = identity_headers.clone();
        let mut routes = Vec::new();
        // Routes of one name so far (names need not be unique): which one a route is.
        let mut named: HashMap<String, usize> = HashMap::new();
        for r in &config.route {
            let name = r.display_name();
            let route_nth = *named
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_default();
            let mut pools = Vec::new();
            for name in r.pools() {
                let Some(up) = upstreams.get(name) else {
                    bail!(
                        "route for {:?} names upstream {name:?}, which is not defined",
                        r.hosts
                    );
                };
                pools.push(up.clone());
            }
            let mut limits = Vec::new();
            for (i, l) in r.rate_limit.iter().enumerate() {
                let nth = r.rate_limit[..i]
                    .iter()
                    .filter(|o| o.identity() == l.identity())
                    .count();
                let buckets = retained.buckets(&name, route_nth, l, nth);
                limits.push(rate_limit::RateLimit::sharing(l, buckets)?);
            }
            routes.push(Route {
                name,
                hosts: r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                path_prefix: r.path_prefix.clone(),
                methods: r
                    .methods
                    .iter()
                    .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
                headers: r.header_matches()?,
                upstreams: pools,
                api: r.api,
                auth: match &r.auth {
                    Some(a) => RouteAuth::new(a, &providers)?,
                    None => None,
                },
                limits,
                cache: r
                    .cache
                    .as_ref()
                    .map(|c| {
                        RouteCache::new(c).map(|rc| Arc::new(rc.for_route_headers(&r.headers)))
                    })
                    .transpose()?,
                experiment: r
                    .experiment
                    .as_ref()
                    .map(|e| Experiment::new(e).map(Arc::new))
                    .transpose()?,
            });
            if let Some(e) = &routes.last().expect("pushed").experiment {
                node_headers.extend(e.forwarded_headers());
            }
        }
        let intent = config
            .intent
            .enabled
            .then(|| crate::intent::Intent::start(&config.intent))
            .transpose()?;
        if let Some(i) = &intent {
            node_headers.extend([i.header.clone(), i.confidence_header.clone()]);
        }
        threat.update(&config.threat, config.xdp.drop_threshold);
        threat.set_allowed(&config.xdp.allow);
        threat.set_ipv6_source_prefix(config.xdp.ipv6_source_prefix);
        Ok(Self {
            node_id_header: HeaderValue::from_str(&config.node.id)?,
            node_id: config.node.id.clone(),
            routes: RouteTable::new(routes),
            pool,
            metrics,
            trusted_proxies: config.http.trusted_proxies.clone(),
            path_policy: config.http.path,
            tunnel_idle_timeout: config.http.tunnel_idle_timeout,
            max_body_bytes: config.http.max_body_bytes,
            body_read_timeout: config.http.body_read_timeout,
            geo: crate::phases::geo::Geo::new(&config.geo)?,
            upstreams: upstreams.into_values().collect(),
            providers: providers.into_values().collect(),
            identity_headers,
            threat,
            challenger: Challenger::new(&config.challenge)?,
            alt_svc: config.http.h3_listen.first().and_then(|a| {
                HeaderValue::from_str(&format!(
                    "h3=\":{}\"; ma={}",
                    a.port(),
                    config.http.alt_svc_max_age.as_secs()
                ))
                .ok()
            }),
            userspace_policy,
            cache,
            intent,
            node_headers,
        })
    }

    /// Starts the pools' active health checks and the JWKS refreshes (they stop when
    /// the pipeline is replaced and dropped).
    pub fn start_background(&self) {
        for up in &self.upstreams {
            up.spawn_health_checks();
        }
        for p in &self.providers {
            p.start();
        }
    }

    pub fn threat(&self) -> &Arc<ThreatEngine> {
        &self.threat
    }

    /// A connection's peer as a threat source (a request it could not even frame).
    pub fn connection_source(&self, peer: std::net::IpAddr) -> Source {
        Source::peer(peer, &self.trusted_proxies)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether a new connection from `ip` may proceed: the source policy when userspace
    /// enforces it (XDP not active), and the threat score's drop standing.
    pub fn admit_connection(&self, ip: std::net::IpAddr) -> bool {
        // Runs inline in the accept loops: a panic here costs one connection, never the
        // listener.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.admit(ip))).unwrap_or_else(
            |_| {
                warn!(%ip, "admission check panicked; connection refused");
                false
            },
        )
    }

    fn admit(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        // A trusted proxy in front carries many clients: its connections are not held to
        // one source's budget (its clients are judged per request, by their own address).
        if self.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        if let Some(p) = &self.userspace_policy {
            let reason = crate::sync::lock(p).check(ip, edge_common::BucketClass::TcpSyn);
            if reason.is_drop() {
                return false;
            }
        }
        self.threat.standing(ip) != Standing::Drop
    }

    /// Classifies the request (bounded wait); a confident attack or scraper is a threat
    /// signal.
    async fn infer(
        &self,
        intent: &crate::intent::Intent,
        ctx: &mut RequestCtx,
        x: [f32; crate::intent::features::FEATURE_COUNT],
    ) -> Option<crate::intent::Prediction> {
        match intent.predict(x).await {
            Ok(p) => {
                self.metrics.intent(p.name());
                ctx.intent = Some(p.name());
                if p.confidence >= intent.signal_confidence {
                    let signal = match p.name() {
                        "attack" => Some(Signal::AttackIntent),
                        "scraper" => Some(Signal::ScraperIntent),
                        _ => None,
                    };
                    if let Some(s) = signal {
                        self.threat.signal(ctx.source(), s);
                    }
                }
                Some(p)
            }
            Err(skipped) => {
                self.metrics.intent(skipped.label());
                None
            }
        }
    }

    /// Refreshes a stale cached copy off the request path (stale-while-revalidate): the
    /// request as it would have been forwarded, as a GET, to the route's pools in order.
    fn refresh_in_background(
        &self,
        rc: Arc<RouteCache>,
        fetch: CacheFetch,
        pools: Vec<Arc<Upstream>>,
        mut parts: http::request::Parts,
        forwarded: HeaderMap,
        ctx: &RequestCtx,
    ) {
        let pool = self.pool.clone();
        let store = self.cache.clone();
        let client_ip = ctx.client_ip;
        let authorized = ctx.user.is_some();
        let fetch = fetch.into_background();
        parts.method = http::Method::GET;
        tokio::spawn(async move {
            for up in &pools {
                let empty = http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed();
                let req = Request::from_parts(parts.clone(), empty);
                match pool.send(up, req, true, client_ip).await {
                    Ok(resp) => {
                        let mut resp =
                            rc.complete(&store, fetch, &parts.method, forwarded, authorized, resp);
                        // Read through: the copy is stored when the body ends.
                        while let Some(frame) = resp.body_mut().frame().await {
                            if frame.is_err() {
                                break;
                            }
                        }
                        return;
                    }
                    Err(e) if e.pool_unreachable() => {
                        warn!(upstream = %up.name, error = %e, "background refresh: pool unreachable");
                    }
                    Err(e) => {
                        warn!(upstream = %up.name, error = %e, "background refresh failed");
                        return;
                    }
                }
            }
        });
    }

    /// Runs the phases; every error becomes its response here and only here.
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        client: SocketAddr,
        scheme: &'static str,
    ) -> Response<Body>
    where
        B: RequestBody,
    {
        let mut ctx = RequestCtx::new(client);
        ctx.scheme = scheme;
        let method = req.method().clone();
        // A clone shares the request's buffer; the path is only read by the logs.
        let uri = req.uri().clone();
        let path = uri.path();
        let version = req.version();
        let span = tracing::info_span!("request", %client, %method, %path);
        let mut resp = match tracing::Instrument::instrument(self.run(&mut ctx, req), span).await {
            Ok(r) => r,
            Err(mut e) => {
                e.json |= ctx.api;
                if e.kind == crate::error::ErrorKind::BadRequest {
                    self.threat.signal(ctx.source(), Signal::MalformedRequest);
                }
                // Client mistakes are routine at an edge; the node's and origins' are not.
                if e.side == crate::error::Side::Client {
                    info!(client = %client, host = %ctx.host, %method, %path, error = %e, "request refused");
                } else {
                    warn!(client = %client, host = %ctx.host, %method, %path, error = %e, "request failed");
                }
                e.into_response()
            }
        };
        if let Some((experiment, assignment)) = &ctx.experiment {
            experiment.set_cookie(*assignment, &mut resp, ctx.scheme == "https");
        }

        if let Some(label) = resp
            .headers()
            .get(headers::X_CACHE)
            .and_then(|v| v.to_str().ok())
        {
            self.metrics.cache_result(label);
        }
        let h = resp.headers_mut();
        h.insert(headers::X_NODE_ID, self.node_id_header.clone());
        if let Some(v) = &self.alt_svc
            && version != http::Version::HTTP_3
        {
            h.insert(header::ALT_SVC, v.clone());
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.region)
            && !ctx.region.is_empty()
        {
            h.insert(headers::X_REGION, v);
        }
        let protocol = match version {
            http::Version::HTTP_3 => "h3",
            http::Version::HTTP_2 => "h2",
            http::Version::HTTP_10 => "http/1.0",
            _ => "http/1.1",
        };
        self.metrics.record(
            &ctx.route,
            &ctx.upstream,
            resp.status().as_u16(),
            protocol,
            ctx.started.elapsed().as_secs_f64(),
        );
        info!(
            target: "access",
            client = %client,
            host = %ctx.host,
            route = %ctx.route,
            upstream = %ctx.upstream,
            user = ctx.user.as_deref().unwrap_or(""),
            region = %ctx.region,
            %method,
            %path,
            version = ?version,
            status = resp.status().as_u16(),
            intent = ctx.intent.unwrap_or(""),
            micros = ctx.started.elapsed().as_micros() as u64,
        );
        resp
    }

    async fn run<B: RequestBody>(
        &self,
        ctx: &mut RequestCtx,
        mut req: Request<B>,
    ) -> Result<Response<Body>, EdgeError> {
        let upgrade = upgrade::requested(&mut req);
        early::on_request(ctx, &mut req, &self.trusted_proxies, self.path_policy)?;
        // The intent model learnt from requests as clients send them: their features
        // are taken before any header is removed (on the canonical target).
        let features = self
            .intent
            .as_ref()
            .map(|i| i.features(req.method(), req.uri(), req.headers(), ctx.client_ip));
        early::strip_client_headers(req.headers_mut());
        if self.max_body_bytes != 0
            && let Some(len) = req.body().size_hint().exact()
            && len > self.max_body_bytes
        {
            return Err(EdgeError::new(
                crate::error::ErrorKind::PayloadTooLarge,
                format!("body of {len} bytes, limit {}", self.max_body_bytes),
            ));
        }
        // Shield: probes of blocked paths, the challenge, then the route's auth and limits.
        // What their signals may do is the policy's decision (`policy::Source`).
        // Routes, role rules and blocked paths match the path without segment
        // parameters (and without case where configured): `target::match_form`.
        let matched = match crate::target::match_form(req.uri().path(), self.path_policy) {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(p) => Some(p),
        };
        if self
            .threat
            .is_blocked_path(matched.as_deref().unwrap_or(req.uri().path()))
        {
            self.threat.signal(ctx.source(), Signal::BlockedPath);
            return Err(EdgeError::new(
                crate::error::ErrorKind::NoRoute,
                "probe of a blocked path",
            ));
        }
        if req.uri().path() == challenge::ANSWER_PATH && req.method() == http::Method::POST {
            let form = http_body_util::Limited::new(req.into_body(), 4096)
                .collect()
                .await
                .map_err(|e| {
                    EdgeError::new(
                        crate::error::ErrorKind::BadRequest,
                        format!("challenge answer: {e}"),
                    )
                })?
                .to_bytes();
            return self
                .challenger
                .answer(ctx.client_ip, &form, ctx.scheme == "https")
                .inspect_err(|_| {
                    self.threat.signal(ctx.source(), Signal::ChallengeFailed);
                });
        }
        for h in &self.identity_headers {
            req.headers_mut().remove(h);
        }
        let route = self.routes.select(
            &ctx.host,
            req.method(),
            matched.as_deref().unwrap_or(req.uri().path()),
            req.headers(),
        )?;
        ctx.route = route.name.clone();
        ctx.api = route.api;
        match self.threat.standing(ctx.client_ip) {
            // The clearance cookie is the node's: never forwarded, challenged or not.
            Standing::Clear => {
                self.challenger.remove_clearance(req.headers_mut());
            }
            Standing::Drop => {
                return Err(EdgeError::new(
                    crate::error::ErrorKind::Forbidden,
                    "source over the drop threshold",
                ));
            }
            Standing::Challenge => {
                if !self
                    .challenger
                    .take_clearance(req.headers_mut(), ctx.client_ip)
                {
                    let back = req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string();
                    return Err(self.challenger.challenge(ctx.client_ip, &back, route.api));
                }
            }
        }
        if let Some(auth) = &route.auth {
            let path = matched
                .clone()
                .unwrap_or_else(|| req.uri().path().to_string());
            match auth.check(req.headers_mut(), &path).await {
                Ok(identity) => ctx.user = identity.map(|i| i.sub),
                Err((e, failed)) => {
                    if failed {
                        self.threat.signal(ctx.source(), Signal::AuthFailure);
                    }
                    return Err(e);
                }
            }
        }
        let limit_fields = if route.limits.is_empty() {
            Vec::new()
        } else {
            rate_limit::check(
                &route.limits,
                // An IPv6 client by its source prefix, as scores and the kernel count it.
                self.threat.key(ctx.client_ip),
                ctx.user.as_deref(),
                req.headers(),
            )
            .inspect_err(|_| {
                self.threat.signal(ctx.source(), Signal::RateLimited);
            })?
        };
        let mut pools = route.pools_for(self.geo.region_of(ctx.client_ip));
        // Pools with a server in rotation first (a region whose origins are all down
        // or ejected is failed over); when none has one, try them anyway.
        if pools.iter().any(|p| p.has_usable_server()) {
            pools.retain(|p| p.has_usable_server());
        }
        let first = *pools.first().expect("validated: a route has a pool");
        ctx.region = first.region.clone();
        ctx.upstream = first.name.clone();
        // Personalize: the request's variant (part of the cache key).
        let assignment = route.experiment.as_ref().map(|e| {
            let a = e.assign(req.headers(), ctx.user.as_deref());
            ctx.experiment = Some((e.clone(), a));
            (e.clone(), a)
        });
        let variant = assignment.as_ref().map(|(e, a)| e.variant_name(*a));
        // Infer: the request's intent, before the cache, so requests answered from it
        // (a scraper's listing pages) are judged too.
        let prediction = match (&self.intent, features) {
            (Some(intent), Some(x)) => self.infer(intent, ctx, x).await,
            _ => None,
        };
        // The built-in demo origin answers here (personalized like any page).
        if first.origin == Origin::Demo {
            let page = demo::respond(ctx, &self.node_id, req.method(), req.uri().path());
            return Ok(match &assignment {
                Some((e, a)) => e.rewrite(*a, page),
                None => page,
            });
        }
        // The node's own headers, before the cache looks up: stored variants are matched
        // on the request as the origin gets it. The forwarding headers (formatted per
        // request) only where a stored answer varies on one of them.
        let forwarding_first = route
            .cache
            .as_ref()
            .is_some_and(|rc| rc.varies_on_forwarding());
        if forwarding_first {
            set_forwarding_headers(ctx, &mut req);
        }
        if let Some((e, a)) = &assignment {
            e.forward(*a, req.headers_mut());
        }
        if let Some(intent) = &self.intent {
            intent.forward(prediction, req.headers_mut());
        }
        // Cache: answered from a stored copy while fresh; concurrent misses for one key
        // make one origin request.
        let method = req.method().clone();
        let mut cache_fetch = None;
        if let Some(rc) = &route.cache
            && (method == http::Method::GET || method == http::Method::HEAD)
        {
            let forwarded_host = ctx.forwarded_host.as_deref().filter(|h| *h != ctx.host);
            match rc
                .lookup(
                    &self.cache,
                    ctx.scheme,
                    &mut req,
                    variant,
                    forwarded_host,
                    &self.node_headers,
                )
                .await
            {
                CacheStep::Answer(resp) => return Ok(resp),
                CacheStep::Forward(fetch) => {
                    RouteCache::prepare(&fetch, req.headers_mut());
                    cache_fetch = Some(fetch);
                }
            }
        }
        if !forwarding_first {
            set_forwarding_headers(ctx, &mut req);
        }
        let version = req.version();
        if let Some(u) = &upgrade {
            u.forward(req.headers_mut());
        }
        // An unsafe request invalidates its URL's stored copies once it succeeds.
        let invalidates = route
            .cache
            .as_ref()
            .filter(|_| !method.is_safe())
            .map(|_| RouteCache::url(ctx.scheme, &req));
        let body_is_empty = req.body().is_end_stream() || req.body().size_hint().exact() == Some(0);
        let (parts, body) = req.into_parts();
        // The request as forwarded, for matching stored variants (cacheable requests only).
        let forwarded_headers = cache_fetch.as_ref().map(|_| parts.headers.clone());
        // stale-while-revalidate: the stale copy answers now, the refresh runs on its own.
        if let (Some(rc), Some(fetch)) = (&route.cache, &cache_fetch)
            && fetch.refresh_in_background
            && let Some(answer) = RouteCache::stale_answer(fetch, &method)
        {
            let fetch = cache_fetch.take().expect("checked");
            self.refresh_in_background(
                rc.clone(),
                fetch,
                pools.into_iter().cloned().collect(),
                parts,
                forwarded_headers.unwrap_or_default(),
                ctx,
            );
            return Ok(answer);
        }
        let body = if body_is_empty {
            body.map_err(Into::into).boxed()
        } else if self.max_body_bytes != 0 {
            // Bodies without a declared length (chunked) are held to the same limit
            // while they stream: past it the exchange is aborted and the client gets 413.
            let checked = first_frame_checked(body, self.body_read_timeout).await?;
            http_body_util::Limited::new(checked, self.max_body_bytes as usize).boxed()
        } else {
            first_frame_checked(body, self.body_read_timeout).await?
        };
        // A body that turned out empty once read (HTTP/3 says so only when polled) can
        // be sent again: the request may be retried and failed over like any other.
        let body_is_empty = body_is_empty || body.is_end_stream();
        // The client's region's pool first; the next region's when it cannot be reached
        // (every origin refused the connection). A request body can only be sent once:
        // failover is for requests without one.
        let mut body = Some(body);
        let mut parts = Some(parts);
        let mut last = None;
        let mut served = None;
        for up in &pools {
            // Cloned only while another pool may still need them.
            let p = if pools.len() > 1 {
                parts.clone()
            } else {
                parts.take()
            };
            let Some(p) = p else { break };
            let b = match body.take() {
                Some(b) => b,
                None if body_is_empty => http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
                None => break,
            };
            match self
                .pool
                .send(up, Request::from_parts(p, b), body_is_empty, ctx.client_ip)
                .await
            {
                Ok(r) => {
                    if !Arc::ptr_eq(up, first) {
                        ctx.region = up.region.clone();
                        ctx.upstream = up.name.clone();
                    }
                    served = Some(r);
                    break;
                }
                Err(e) if e.pool_unreachable() => {
                    warn!(upstream = %up.name, region = %up.region, error = %e, "pool unreachable; failing over");
                    last = Some(e);
                }
                Err(e) => {
                    // Not failed over (a timeout: the origin may be working on it).
                    last = Some(e);
                    break;
                }
            }
        }
        // stale-if-error: the origin failed, a stored copy is still within its window.
        let failed = served.as_ref().is_none_or(|r| r.status().is_server_error());
        if failed
            && let Some(fetch) = &cache_fetch
            && let Some(entry) = &fetch.stale
            && entry.usable_on_error(Instant::now())
        {
            if let Some(e) = &last {
                warn!(upstream = %ctx.upstream, error = %e, "origin failed; serving a stale copy");
            }
            return Ok(crate::phases::cache::respond(
                entry,
                &method,
                Instant::now(),
                "STALE",
                &HeaderMap::new(),
            ));
        }
        let Some(mut resp) = served else {
            return Err(last.unwrap_or_else(|| {
                EdgeError::new(
                    crate::error::ErrorKind::NoUpstreamAvailable,
                    "no pool could take the request",
                )
            }));
        };
        if let Some(url) = invalidates {
            crate::phases::cache::invalidate_after_unsafe(
                &self.cache,
                ctx.scheme,
                url,
                resp.status(),
                resp.headers(),
            );
        }
        // The client's protocol version, whatever the origin spoke.
        *resp.version_mut() = version;
        match upgrade {
            Some(u) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                early::strip_hop_by_hop(resp.headers_mut());
                let mut resp = u.tunnel(resp, ctx.upstream.clone(), self.tunnel_idle_timeout);
                resp.headers_mut()
                    .append(header::VIA, HeaderValue::from_static(via(version)));
                return Ok(resp);
            }
            _ => upgrade::unexpected_switch(&resp)?,
        }
        early::strip_hop_by_hop(resp.headers_mut());
        resp.headers_mut()
            .append(header::VIA, HeaderValue::from_static(via(version)));
        // The variant's HTML edits, before the cache keeps the page (per variant).
        if let Some((e, a)) = &assignment {
            resp = e.rewrite(*a, resp);
        }
        if let (Some(rc), Some(fetch)) = (&route.cache, cache_fetch) {
            resp = rc.complete(
                &self.cache,
                fetch,
                &method,
                forwarded_headers.unwrap_or_default(),
                ctx.user.is_some(),
                resp,
            );
        }
        for (k, v) in limit_fields {
            resp.headers_mut().insert(k, v);
        }
        Ok(resp)
    }
}

/// The headers the node sets toward the origin: the forwarding chain (X-Forwarded-*,
/// Forwarded), Via, and Host for HTTP/2 and HTTP/3 requests (which carry it as
/// :authority). Set before the cache looks up, so stored `Vary` variants are matched on
/// the request as the origin gets it.
fn set_forwarding_headers<B>(ctx: &RequestCtx, req: &mut Request<B>) {
    let proto = ctx.scheme;
    let req_version = req.version();
    let authority = req.uri().authority().cloned();
    let headers = req.headers_mut();
    // The forwarding chain: what a trusted proxy reported, plus the peer; from anyone
    // else only the peer (the early phase removed their copies).
    let peer = ctx.client.ip().to_string();
    let xff = match &ctx.forwarded_chain {
        Some(chain) => format!("{chain}, {peer}"),
        None => peer,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(headers::X_FORWARDED_FOR, v);
    }
    headers.insert(headers::X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(ctx.forwarded_host.as_deref().unwrap_or(&ctx.host)) {
        headers.insert(headers::X_FORWARDED_HOST, v);
    }
    let node_for = |ip: std::net::IpAddr| {
        if ip.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.to_string()
        }
    };
    // A trusted proxy's elements stay, and this hop's is appended (RFC 7239 5.1);
    // otherwise one element names the client.
    let forwarded = match &ctx.forwarded_elements {
        Some((elements, hop_proto)) => format!(
            "{elements}, for={};proto={hop_proto};host={}",
            node_for(ctx.client.ip()),
            ctx.host
        ),
        None => format!(
            "for={};proto={proto};host={}",
            node_for(ctx.client_ip),
            ctx.host
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, v);
    }
    headers.append(header::VIA, HeaderValue::from_static(via(req_version)));
    // HTTP/2 requests carry the host as :authority; origins get a Host header.
    if !headers.contains_key(header::HOST)
        && let Some(a) = authority
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(header::HOST, v);
    }
}

fn via(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_3 => "3 edge-node",
        http::Version::HTTP_2 => "2 edge-node",
        http::Version::HTTP_10 => "1.0 edge-node",
        _ => "1.1 edge-node",
    }
}

/// Reads the first frame of a request body before any origin is contacted, so a body that
/// is malformed from the start (an invalid chunk size, say) is the client's 400 and never
/// reaches an origin; the rest still streams. A client that stops sending its body for
/// `timeout` gets 408 if nothing was forwarded yet; past that the exchange is aborted.
async fn first_frame_checked<B: RequestBody>(
    body: B,
    timeout: std::time::Duration,
) -> Result<Body, EdgeError> {
    use http_body_util::StreamBody;
    // A stalled upload would hold its worker slot and origin connection forever.
    let mut body = crate::body::TimedBody::new(body, timeout);
    let first = match body.frame().await {
        None => {
            return Ok(http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed());
        }
        Some(Err(e)) if e.is::<crate::body::BodyReadTimeout>() => {
            return Err(EdgeError::new(
                crate::error::ErrorKind::RequestTimeout,
                "no request body within http.body_read_timeout",
            ));
        }
        Some(Err(e)) => {
            return Err(EdgeError::new(
                crate::error::ErrorKind::BadRequest,
                format!("request body: {e}"),
            ));
        }
        Some(Ok(frame)) => frame,
    };
    let rest = http_body_util::BodyStream::new(body);
    let stream = futures_util::stream::StreamExt::chain(
        futures_util::stream::once(async move { Ok(first) }),
        rest,
    );
    Ok(StreamBody::new(stream).boxed())
}
