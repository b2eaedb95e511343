//! The request pipeline: an ordered list of phases built from the configuration, one
//! context per request, the route's handler, and errors turned into responses in one
//! place. `Pipeline::run` is the whole life of a request; the hooks and their order are
//! documented on [`Phase`].

pub mod retained;
mod traces;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Instant};

use anyhow::{Result, bail};
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use tracing::{info, warn};

use crate::{
    auth::JwtProvider,
    config::Config,
    error::Body,
    functions::Functions,
    handlers::{
        DemoHandler, FunctionHandler, GraphqlHandler, KvHandler, ProxyHandler, RoomsHandler,
    },
    headers,
    metrics::Metrics,
    phases::{
        auth::{AuthPhase, RouteAuth},
        cache::{CachePhase, RouteCache},
        challenge::{ChallengePhase, Challenger},
        early::EarlyPhase,
        filter::{RequestFilterPhase, ResponseFiltered},
        infer::InferPhase,
        personalize::{Experiment, PersonalizePhase},
        rate_limit::{self, RateLimitPhase},
        route::{HandlerSettings, Route, RoutePhase, RouteTable},
    },
    policy::{Signal, Source, Standing, ThreatEngine},
    request::{Flow, Handler, Phase, Reply, RequestCtx, RouteInfo},
    upstream::{Pool, Upstream},
    xdp::SharedPolicy,
};

pub use crate::request::EarlyData;

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

pub struct Pipeline {
    /// The phases, in the order a request meets them.
    phases: Vec<Box<dyn Phase>>,
    /// Each route's handler (by route index).
    handlers: Vec<Arc<dyn Handler>>,
    node_id_header: HeaderValue,
    metrics: Arc<Metrics>,
    threat: Arc<ThreatEngine>,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// `Alt-Svc` for HTTP/1.1 and HTTP/2 responses when HTTP/3 is served.
    alt_svc: Option<HeaderValue>,
    /// Responses carry Server-Timing unless their route turns it off.
    server_timing: bool,
    timing_allow_origin: Option<HeaderValue>,
    upstreams: Vec<Arc<Upstream>>,
    providers: Vec<Arc<JwtProvider>>,
    /// The source policy when userspace enforces it (XDP not active); `None` when the
    /// kernel does, or without XDP state at all.
    userspace_policy: Option<SharedPolicy>,
    /// Traces, when `[traces]` names an endpoint.
    traces: Option<traces::Traces>,
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
        let intent = config
            .intent
            .enabled
            .then(|| crate::intent::Intent::start(&config.intent).map(Arc::new))
            .transpose()?;
        // Request headers the phases set before the cache (identity, experiment,
        // intent): forwarded even by routes that strip unkeyed headers.
        let mut node_headers = identity_headers.clone();
        if let Some(i) = &intent {
            node_headers.extend([i.header.clone(), i.confidence_header.clone()]);
        }
        let proxy: Arc<dyn Handler> = Arc::new(ProxyHandler {
            pool: pool.clone(),
            node_id: config.node.id.clone(),
            max_body_bytes: config.http.max_body_bytes,
            body_read_timeout: config.http.body_read_timeout,
            tunnel_idle_timeout: config.http.tunnel_idle_timeout,
        });
        let demo: Arc<dyn Handler> = Arc::new(DemoHandler {
            node_id: config.node.id.clone(),
        });
        // The durable store, opened once per process (it outlives reloads) and only
        // when a namespace needs it.
        let store = if config.kv.is_empty() && config.rooms.is_empty() {
            None
        } else {
            Some(retained.store(&config.storage)?)
        };
        // The KV namespaces, as routes, GraphQL and functions reach them.
        let mut namespaces = HashMap::new();
        for k in &config.kv {
            let store = store.clone().expect("a [[kv]] opened the store");
            let fleet = match k.backend {
                crate::kv::Backend::Redis => Some(retained.fleet(k, &store)?),
                crate::kv::Backend::Local => None,
            };
            let ns = crate::kv::Namespace {
                settings: k.clone(),
                store,
                fleet,
            };
            namespaces.insert(k.name.clone(), Arc::new(ns));
        }
        let functions = Arc::new(Functions::new(
            &retained.functions,
            &config.functions,
            &config.function,
            &upstreams,
            &pool,
            &namespaces,
        )?);
        // GraphQL schemas, built once per configuration (a bad schema fails the load).
        let backends = Arc::new(crate::graphql::Backends {
            namespaces: namespaces.clone(),
            cache: Some(cache.clone()),
            functions: Some(functions.clone()),
            pool: Some(pool.clone()),
            upstreams: upstreams.clone(),
        });
        let mut schemas = HashMap::new();
        for g in &config.graphql {
            let built = crate::graphql::Graphql::build(g, backends.clone())?;
            schemas.insert(g.name.clone(), Arc::new(built));
        }
        let mut request_filters = Vec::new();
        let mut routes = Vec::new();
        let mut handlers = Vec::new();
        let mut auth = Vec::new();
        let mut limits = Vec::new();
        let mut caches = Vec::new();
        let mut experiments = Vec::new();
        // Routes of one name so far (names need not be unique): which one a route is.
        let mut named: HashMap<String, usize> = HashMap::new();
        for (index, r) in config.route.iter().enumerate() {
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
            let mut route_limits = Vec::new();
            for (i, l) in r.rate_limit.iter().enumerate() {
                let nth = r.rate_limit[..i]
                    .iter()
                    .filter(|o| o.identity() == l.identity())
                    .count();
                let buckets = retained.buckets(&name, route_nth, l, nth);
                let mut limit = rate_limit::RateLimit::sharing(l, buckets)?;
                if l.fleet_scoped() {
                    let counted = retained.fleet_limit(&name, route_nth, l, nth, &config.fleet)?;
                    limit = limit.counted_by(counted);
                }
                route_limits.push(limit);
            }
            limits.push(route_limits);
            auth.push(match &r.auth {
                Some(a) => RouteAuth::new(a, &providers)?,
                None => None,
            });
            caches.push(
                r.cache
                    .as_ref()
                    .map(|c| {
                        RouteCache::new(c).map(|rc| Arc::new(rc.for_route_headers(&r.headers)))
                    })
                    .transpose()?,
            );
            let experiment = r
                .experiment
                .as_ref()
                .map(|e| Experiment::new(e).map(Arc::new))
                .transpose()?;
            if let Some(e) = &experiment {
                node_headers.extend(e.forwarded_headers());
            }
            experiments.push(experiment);
            let handler = match &r.handler {
                HandlerSettings::Proxy => proxy.clone(),
                HandlerSettings::Demo => demo.clone(),
                HandlerSettings::Function(f) => Arc::new(FunctionHandler {
                    functions: functions.clone(),
                    name: f.clone(),
                    max_body_bytes: config.http.max_body_bytes,
                    body_read_timeout: config.http.body_read_timeout,
                    metrics: metrics.clone(),
                }),
                HandlerSettings::Kv(ns) => Arc::new(KvHandler {
                    ns: namespaces
                        .get(ns)
                        .cloned()
                        .expect("validated: the namespace exists"),
                    path_prefix: r.path_prefix.clone(),
                    body_read_timeout: config.http.body_read_timeout,
                    writable: r
                        .auth
                        .as_ref()
                        .is_some_and(|a| a.mode != crate::phases::auth::AuthMode::Off),
                    fill: (!r.pools().is_empty())
                        .then(|| crate::handlers::kv::Fill::new(proxy.clone(), r.fill_ttl)),
                    listable: !r.auth.iter().flat_map(|a| &a.roles).any(|rule| {
                        crate::target::path_under(&rule.path_prefix, &r.path_prefix)
                            && rule.path_prefix.trim_end_matches('/')
                                != r.path_prefix.trim_end_matches('/')
                    }),
                }),
                HandlerSettings::Graphql(name) => Arc::new(GraphqlHandler {
                    graphql: schemas
                        .get(name)
                        .cloned()
                        .expect("validated: the schema exists"),
                    body_read_timeout: config.http.body_read_timeout,
                    private: r
                        .auth
                        .as_ref()
                        .is_some_and(|a| a.mode != crate::phases::auth::AuthMode::Off),
                }),
                HandlerSettings::Rooms(name) => {
                    let settings = config
                        .rooms
                        .iter()
                        .find(|k| &k.name == name)
                        .expect("validated: the rooms exist");
                    let store = store.as_ref().expect("[[rooms]] opened the store");
                    Arc::new(RoomsHandler {
                        rooms: retained.rooms(settings, store, &metrics)?,
                        path_prefix: r.path_prefix.clone(),
                    })
                }
            };
            handlers.push(match &r.response_filter {
                Some(f) => Arc::new(ResponseFiltered {
                    inner: handler,
                    functions: functions.clone(),
                    filter: f.clone(),
                    metrics: metrics.clone(),
                }),
                None => handler,
            });
            request_filters.push(r.request_filter.clone());
            routes.push(Route {
                info: RouteInfo {
                    index,
                    name: name.into(),
                    api: r.api,
                    server_timing: r.server_timing,
                    websocket: matches!(r.handler, HandlerSettings::Rooms(_)),
                },
                hosts: r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                path_prefix: r.path_prefix.clone(),
                methods: r
                    .methods
                    .iter()
                    .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
                headers: r.header_matches()?,
                upstreams: pools,
            });
        }
        let table = Arc::new(RouteTable::new(routes));
        threat.update(&config.threat, config.xdp.drop_threshold);
        threat.set_allowed(&config.xdp.allow);
        threat.guard_from_fleet(config.fleet_guard());
        threat.set_ipv6_source_prefix(config.xdp.ipv6_source_prefix);
        // The order a request meets them: the shield before anything costly, the
        // route's own rules, then what shapes the request the origin gets (variant,
        // intent) before the cache keys it.
        let mut phases: Vec<Box<dyn Phase>> = vec![
            // The CA's HTTP-01 requests: answered before anything may turn them away.
            Box::new(crate::phases::acme::AcmeChallengePhase {
                state: retained.acme.clone(),
            }),
            Box::new(EarlyPhase {
                trusted_proxies: config.http.trusted_proxies.clone(),
                path_policy: config.http.path,
                max_body_bytes: config.http.max_body_bytes,
                threat: threat.clone(),
                intent: intent.clone(),
            }),
            Box::new(ChallengePhase {
                challenger: Challenger::new(&config.challenge)?,
                threat: threat.clone(),
            }),
            Box::new(AuthPhase {
                routes: auth,
                identity_headers,
                threat: threat.clone(),
            }),
            Box::new(RoutePhase {
                table: table.clone(),
                geo: crate::phases::geo::Geo::new(&config.geo)?,
            }),
            Box::new(RateLimitPhase {
                routes: limits,
                threat: threat.clone(),
            }),
            Box::new(PersonalizePhase {
                routes: experiments,
            }),
        ];
        if let Some(intent) = intent {
            phases.push(Box::new(InferPhase {
                intent,
                metrics: metrics.clone(),
                threat: threat.clone(),
            }));
        }
        // Before the cache: what a filter lets through (rewritten) is what is keyed,
        // and a cached page is no way around it.
        if request_filters.iter().any(Option::is_some) {
            phases.push(Box::new(RequestFilterPhase {
                functions: functions.clone(),
                routes: request_filters,
                path_policy: config.http.path,
                // Every header the node sets before the cache (identity, variant,
                // intent) is keyed or trusted as the node's: never a filter's.
                protected: node_headers.clone(),
                table: table.clone(),
                threat: threat.clone(),
                metrics: metrics.clone(),
            }));
        }
        // Before the cache: its response hook sees hits too (a kept compressed copy).
        if config.compression.enabled {
            phases.push(Box::new(crate::phases::compress::CompressPhase::new(
                config.compression.clone(),
                config.route.iter().map(|r| r.compress).collect(),
                metrics.clone(),
            )));
        }
        phases.push(Box::new(CachePhase {
            store: cache,
            pool: pool.clone(),
            node_headers,
            routes: caches,
            background_refresh: config
                .route
                .iter()
                .map(|r| r.response_filter.is_none())
                .collect(),
        }));
        Ok(Self {
            phases,
            handlers,
            node_id_header: HeaderValue::from_str(&config.node.id)?,
            metrics,
            threat,
            trusted_proxies: config.http.trusted_proxies.clone(),
            alt_svc: config.http.h3_listen.first().and_then(|a| {
                HeaderValue::from_str(&format!(
                    "h3=\":{}\"; ma={}",
                    a.port(),
                    config.http.alt_svc_max_age.as_secs()
                ))
                .ok()
            }),
            server_timing: config.http.server_timing,
            timing_allow_origin: config
                .http
                .timing_allow_origin
                .as_deref()
                .map(HeaderValue::from_str)
                .transpose()?,
            upstreams: upstreams.into_values().collect(),
            providers: providers.into_values().collect(),
            userspace_policy,
            traces: match config.traces.enabled() {
                true => Some(traces::Traces {
                    settings: config.traces.clone(),
                    exporter: retained.trace_exporter(config.traces.export_key(&config.node.id))?,
                    errors: std::sync::Mutex::new(crate::limits::Bucket::new(
                        f64::from(config.traces.errors_per_second),
                        u64::from(config.traces.errors_per_second),
                    )),
                }),
                false => None,
            },
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
    /// enforces it (XDP not active), and the threat score's drop standing. A refusal is
    /// counted (`edge_connections_refused`) and logged at warn, at most once a second
    /// with how many more there were, naming the setting that refused it.
    pub fn admit_connection(&self, ip: std::net::IpAddr) -> bool {
        // Runs inline in the accept loops: a panic here costs one connection, never the
        // listener.
        let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.admit(ip)))
            .unwrap_or_else(|_| {
                warn!(%ip, "admission check panicked; connection refused");
                Err(Refusal::Panicked)
            });
        match verdict {
            Ok(()) => true,
            Err(r) => {
                self.metrics.connection_refused(r.reason());
                if let Some(more) = REFUSAL_LOG.admit() {
                    warn!(
                        source = %ip,
                        reason = r.reason(),
                        setting = r.setting(),
                        refused_since_last_log = more,
                        "connection refused at accept"
                    );
                }
                false
            }
        }
    }

    fn admit(&self, ip: std::net::IpAddr) -> Result<(), Refusal> {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        // A trusted proxy in front carries many clients: its connections are not held to
        // one source's budget (its clients are judged per request, by their own address).
        if self.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if let Some(p) = &self.userspace_policy {
            use edge_common::Reason;
            let reason = crate::sync::lock(p).check(ip, edge_common::BucketClass::TcpSyn);
            // Loopback never reaches XDP (it attaches to NICs): the userspace stand-in
            // leaves it out of the budgets too (local health checks, benchmarks), not
            // out of blocks and scores.
            let budget = matches!(reason, Reason::DropSynRate | Reason::DropRate);
            if reason.is_drop() && !(budget && ip.is_loopback()) {
                return Err(match reason {
                    Reason::DropSynRate | Reason::DropRate => Refusal::SynRate,
                    Reason::DropThreat => Refusal::Threat,
                    _ => Refusal::Blocked,
                });
            }
        }
        if self.threat.standing(ip) == Standing::Drop {
            return Err(Refusal::Threat);
        }
        Ok(())
    }

    /// Handles one request: the phases, the handler, and every error's response here
    /// and only here; then the node's own response headers, metrics and the access log.
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
        if let Some(t) = &self.traces {
            let trace = t.start(&ctx, req.headers(), client.ip(), &self.trusted_proxies);
            ctx.trace = Some(Box::new(trace));
        }
        let method = req.method().clone();
        // A clone shares the request's buffer; the path is only read by the logs.
        let uri = req.uri().clone();
        let path = uri.path();
        let version = req.version();
        let req = req.map(|b| b.map_err(Into::into).boxed());
        let span = tracing::info_span!("request", %client, %method, %path);
        let reply = tracing::Instrument::instrument(self.run(&mut ctx, req), span).await;
        let mut failure = None;
        let mut resp = reply.unwrap_or_else(|mut e| {
            e.json |= ctx.api();
            if ctx.trace.is_some() {
                failure = Some(e.to_string());
            }
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
        });
        for p in &self.phases {
            p.response(&mut ctx, &mut resp);
        }
        if let Some(outcome) = ctx.cache_outcome {
            self.metrics.cache_result(outcome);
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
        let elapsed = ctx.started.elapsed();
        // Formatted only when a header or the access log carries it (per request).
        let send_timing = self.server_timing && ctx.route.as_ref().is_none_or(|r| r.server_timing);
        let timing = if send_timing || tracing::enabled!(target: "access", tracing::Level::INFO) {
            ctx.timings.header_value(elapsed)
        } else {
            String::new()
        };
        if send_timing && let Ok(v) = HeaderValue::from_str(&timing) {
            h.append(headers::SERVER_TIMING, v);
            if let Some(o) = &self.timing_allow_origin {
                h.insert(headers::TIMING_ALLOW_ORIGIN, o.clone());
            }
        }
        let protocol = match version {
            http::Version::HTTP_3 => "h3",
            http::Version::HTTP_2 => "h2",
            http::Version::HTTP_10 => "http/1.0",
            _ => "http/1.1",
        };
        self.metrics.record(
            ctx.route_name(),
            &ctx.upstream,
            resp.status().as_u16(),
            protocol,
            elapsed.as_secs_f64(),
        );
        info!(
            target: "access",
            client = %client,
            host = %ctx.host,
            route = %ctx.route_name(),
            upstream = %ctx.upstream,
            user = ctx.user.as_deref().unwrap_or(""),
            region = %ctx.region,
            %method,
            %path,
            version = ?version,
            status = resp.status().as_u16(),
            intent = ctx.intent.unwrap_or(""),
            cache = ctx.cache_outcome.unwrap_or(""),
            micros = elapsed.as_micros() as u64,
            timing = %timing,
        );
        for p in &self.phases {
            p.log(&ctx, resp.status());
        }
        if let (Some(t), Some(mut trace)) = (&self.traces, ctx.trace.take()) {
            trace.close_exchange();
            let end = traces::End {
                method: &method,
                path,
                version,
                status: resp.status(),
                elapsed,
                error: failure,
            };
            t.finish(&ctx, &trace, end);
        }
        resp
    }

    /// The life of a request: before routing, with the route, the route's handler, and
    /// what the handler answered; a phase that answers or fails ends it early.
    /// With traces on, each hook and the handler is a step of the request's trace.
    async fn run(&self, ctx: &mut RequestCtx, mut req: Request<Body>) -> Reply {
        for p in &self.phases {
            let from = ctx.trace.is_some().then(Instant::now);
            let flow = p.early_request(ctx, &mut req).await;
            traced(ctx, p.name(), from, flow.is_err());
            if let Flow::Answer(resp) = flow? {
                return Ok(resp);
            }
        }
        for p in &self.phases {
            let from = ctx.trace.is_some().then(Instant::now);
            let flow = p.request(ctx, &mut req).await;
            traced(ctx, p.name(), from, flow.is_err());
            if let Flow::Answer(resp) = flow? {
                return Ok(resp);
            }
        }
        let index = ctx.route_index().expect("the route phase chose a route");
        let handler = &self.handlers[index];
        let from = Instant::now();
        if let Some(t) = &mut ctx.trace {
            t.handler_started();
        }
        let mut reply = handler.handle(ctx, req).await;
        if let Some(t) = &mut ctx.trace {
            t.handler_done(handler.name(), from, reply.is_err());
        }
        for p in &self.phases {
            reply = p.origin_response(ctx, reply);
        }
        reply
    }
}

/// Records a hook that started at `from` (set only when the request is traced).
fn traced(ctx: &mut RequestCtx, name: &'static str, from: Option<Instant>, failed: bool) {
    if let (Some(t), Some(from)) = (&mut ctx.trace, from) {
        t.record(name, from, failed);
    }
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    SynRate,
    Blocked,
    Threat,
    Panicked,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::SynRate => "syn_rate",
            Self::Blocked => "blocked",
            Self::Threat => "threat",
            Self::Panicked => "check_failed",
        }
    }

    /// What to change if the refusals are not wanted.
    fn setting(self) -> &'static str {
        match self {
            Self::SynRate => "xdp.rate.syn_per_sec / xdp.rate.syn_burst (per source)",
            Self::Blocked => "xdp.block, or an escalation (edge-node xdp status)",
            Self::Threat => "xdp.drop_threshold / [threat] weights",
            Self::Panicked => "none (a bug: please report it)",
        }
    }
}

/// One warning a second for refused connections, however many there are.
static REFUSAL_LOG: crate::limits::LogEvery = crate::limits::LogEvery::new(1_000_000_000);
