//! Prometheus metrics: requests by upstream, status and protocol, latency histograms,
//! and the XDP program's per-reason counters (read from the pinned maps at scrape).

use std::{
    cell::RefCell,
    hash::{Hash, Hasher},
    sync::atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use edge_common::Reason;

use crate::{error::ErrorKind, upstream::health, xdp::maps::Counters};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route that matched ("" when none did).
    pub route: String,
    /// The upstream pool that served it ("" when no route matched).
    pub upstream: String,
    pub status: u16,
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
    /// `handler`, `request_filter` or `response_filter`.
    pub role: &'static str,
    /// `ok`, `failed` (trap, memory, no response), `timeout`, `busy`, or `error` (a
    /// refusal that is not the guest's: an invalid filter answer, a stalled body).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompressedLabels {
    pub encoding: &'static str,
    pub how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoomsLabels {
    pub rooms: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionRoleLabels {
    pub function: String,
    pub role: &'static str,
}

/// The counter and histogram of one label set, as a worker thread looked them up: the
/// shared families take a lock and hash four owned label strings per lookup, which every
/// request paid for before.
type Handles = (Counter, Histogram);

const MAX_CACHED_HANDLES: usize = 4096;

/// The values of `X-Cache`, the label of `edge_cache_results`.
const CACHE_OUTCOMES: [&str; 6] = ["HIT", "REGIONAL-HIT", "MISS", "EXPIRED", "STALE", "BYPASS"];

thread_local! {
    static HANDLES: RefCell<hashbrown::HashMap<HandleKey, Handles>> =
        RefCell::new(hashbrown::HashMap::new());
}

struct HandleKey {
    metrics: u64,
    route: Box<str>,
    upstream: Box<str>,
    status: u16,
    protocol: &'static str,
}

/// A lookup key borrowing the request's labels; hashes like [`HandleKey`].
struct HandleRef<'a> {
    metrics: u64,
    route: &'a str,
    upstream: &'a str,
    status: u16,
    protocol: &'static str,
}

impl HandleKey {
    fn borrowed(&self) -> HandleRef<'_> {
        HandleRef {
            metrics: self.metrics,
            route: &self.route,
            upstream: &self.upstream,
            status: self.status,
            protocol: self.protocol,
        }
    }
}

impl Hash for HandleKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.borrowed().hash(h);
    }
}

impl PartialEq for HandleKey {
    fn eq(&self, other: &Self) -> bool {
        hashbrown::Equivalent::equivalent(&self.borrowed(), other)
    }
}

impl Eq for HandleKey {}

impl Hash for HandleRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.metrics.hash(h);
        self.route.hash(h);
        self.upstream.hash(h);
        self.status.hash(h);
        self.protocol.hash(h);
    }
}

impl hashbrown::Equivalent<HandleKey> for HandleRef<'_> {
    fn equivalent(&self, k: &HandleKey) -> bool {
        self.metrics == k.metrics
            && self.route == &*k.route
            && self.upstream == &*k.upstream
            && self.status == k.status
            && self.protocol == k.protocol
    }
}

pub struct Metrics {
    /// Tells this instance's handles apart in the threads' handle caches.
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<UpstreamLabels, Histogram>,
    /// Cache answers by `X-Cache` (`edge_cache_results`), by [`CACHE_OUTCOMES`]: looked
    /// up once, since every cached request counts.
    cache_by_outcome: Vec<Counter>,
    /// Intent predictions by class, and requests that went on without one.
    intent: Family<OutcomeLabels, Counter>,
    /// Origin servers' health and load, read at scrape.
    servers: health::Registry,
    /// Connections closed at accept because `http.max_connections` were open.
    connections_shed: Counter,
    /// Connections closed at accept by the source policy, by reason.
    connections_refused: Family<ReasonLabels, Counter>,
    fleet_threats: Family<OutcomeLabels, Counter>,
    /// Responses compressed, by coding and how (streamed, stored once, reused).
    compressed: Family<CompressedLabels, Counter>,
    /// WebAssembly function calls by function, role and outcome, and their time to a
    /// response head.
    function_calls: Family<FunctionLabels, Counter>,
    function_time: Family<FunctionRoleLabels, Histogram>,
    /// Rooms in memory and their members, by `[[rooms]]` name.
    rooms_live: Family<RoomsLabels, Gauge>,
    room_members: Family<RoomsLabels, Gauge>,
    /// ACME orders by result (`ok`, `failed`).
    acme_orders: Family<ResultLabels, Counter>,
    /// When each ACME certificate in use expires (Unix seconds), by its first name.
    acme_expiry: Family<NameLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub name: String,
}

impl Metrics {
    pub fn new(servers: health::Registry) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "edge_requests",
            "HTTP requests answered, by route, upstream, status and protocol",
            requests.clone(),
        );
        // 0.5 ms .. ~16 s
        let latency = Family::<UpstreamLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "edge_request_duration_seconds",
            "Time from request head to response head, by upstream",
            latency.clone(),
        );
        let cache = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "edge_cache_results",
            "Responses of cached routes by X-Cache (HIT, REGIONAL-HIT, MISS, EXPIRED, STALE, BYPASS)",
            cache.clone(),
        );
        let intent = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "edge_intent_predictions",
            "Intent predictions by class, and requests without one (skipped_busy, skipped_timeout, failed)",
            intent.clone(),
        );
        let connections_shed = Counter::default();
        registry.register(
            "edge_connections_shed",
            "Connections closed at accept because http.max_connections were open",
            connections_shed.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "edge_connections_refused",
            "Connections closed at accept by the source policy (userspace enforcement: XDP \
             not attached), by reason: syn_rate, blocked, threat",
            connections_refused.clone(),
        );
        let fleet_threats = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "edge_fleet_threat_events",
            "Threat events of the fleet's stream, by outcome: published, publish_dropped \
             (backlog full while Redis was unreachable), applied, refused, expired",
            fleet_threats.clone(),
        );
        let compressed = Family::<CompressedLabels, Counter>::default();
        registry.register(
            "edge_compressed_responses",
            "Responses compressed, by coding and how: streamed (as it arrived), stored \
             (a cached answer, compressed once and kept), reused (the kept copy)",
            compressed.clone(),
        );
        let function_calls = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "edge_function_calls",
            "WebAssembly function calls by function, role (handler, request_filter, response_filter) and outcome (ok, failed, timeout, busy, error)",
            function_calls.clone(),
        );
        // 0.1 ms .. ~3 s
        let function_time = Family::<FunctionRoleLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 15))
        });
        registry.register(
            "edge_function_duration_seconds",
            "Time from calling a function to its response head, by function and role",
            function_time.clone(),
        );
        let rooms_live = Family::<RoomsLabels, Gauge>::default();
        registry.register(
            "edge_rooms_live",
            "Rooms in memory (with members, or idle for less than idle_after), by [[rooms]] name",
            rooms_live.clone(),
        );
        let room_members = Family::<RoomsLabels, Gauge>::default();
        registry.register(
            "edge_room_members",
            "WebSocket members connected to rooms, by [[rooms]] name",
            room_members.clone(),
        );
        let acme_orders = Family::<ResultLabels, Counter>::default();
        registry.register(
            "edge_acme_orders",
            "ACME certificate orders by result (ok, failed)",
            acme_orders.clone(),
        );
        let acme_expiry = Family::<NameLabels, Gauge>::default();
        registry.register(
            "edge_acme_certificate_expiry_timestamp_seconds",
            "When the ACME certificate in use expires (Unix time), by its first name",
            acme_expiry.clone(),
        );
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let cache_by_outcome = CACHE_OUTCOMES
            .iter()
            .map(|outcome| cache.get_or_create(&OutcomeLabels { outcome }).clone())
            .collect();
        Self {
            cache_by_outcome,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            latency,
            intent,
            servers,
            connections_shed,
            connections_refused,
            fleet_threats,
            compressed,
            function_calls,
            function_time,
            rooms_live,
            room_members,
            acme_orders,
            acme_expiry,
        }
    }

    /// One ACME order ended.
    pub fn acme_order(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.acme_orders
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The ACME certificate for `name` in use now expires at `not_after`.
    pub fn acme_expiry(&self, name: &str, not_after: std::time::SystemTime) {
        let secs = not_after
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.acme_expiry
            .get_or_create(&NameLabels {
                name: name.to_string(),
            })
            .set(secs);
    }

    /// The gauges of the rooms `name`: rooms in memory, members connected.
    pub fn rooms_gauges(&self, name: &str) -> (Gauge, Gauge) {
        let labels = RoomsLabels {
            rooms: name.to_string(),
        };
        (
            self.rooms_live.get_or_create(&labels).clone(),
            self.room_members.get_or_create(&labels).clone(),
        )
    }

    /// One call of `function` as `role`: how it ended and how long it took.
    pub fn function_call(
        &self,
        function: &str,
        role: &'static str,
        outcome: Result<(), ErrorKind>,
        elapsed: std::time::Duration,
    ) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(ErrorKind::FunctionFailed) => "failed",
            Err(ErrorKind::FunctionTimeout) => "timeout",
            Err(ErrorKind::FunctionBusy) => "busy",
            Err(_) => "error",
        };
        let function = function.to_string();
        self.function_calls
            .get_or_create(&FunctionLabels {
                function: function.clone(),
                role,
                outcome,
            })
            .inc();
        self.function_time
            .get_or_create(&FunctionRoleLabels { function, role })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record(
        &self,
        route: &str,
        upstream: &str,
        status: u16,
        protocol: &'static str,
        seconds: f64,
    ) {
        let key = HandleRef {
            metrics: self.id,
            route,
            upstream,
            status,
            protocol,
        };
        HANDLES.with_borrow_mut(|handles| {
            if let Some((count, latency)) = handles.get(&key) {
                count.inc();
                latency.observe(seconds);
                return;
            }
            let count = self
                .requests
                .get_or_create(&RequestLabels {
                    route: route.to_string(),
                    upstream: upstream.to_string(),
                    status,
                    protocol: protocol.to_string(),
                })
                .clone();
            let latency = self
                .latency
                .get_or_create(&UpstreamLabels {
                    upstream: upstream.to_string(),
                })
                .clone();
            count.inc();
            latency.observe(seconds);
            // Label sets are bounded by the config (routes × statuses × protocols); a
            // reload that renames routes leaves old keys behind, so cap what is kept.
            if handles.len() >= MAX_CACHED_HANDLES {
                handles.clear();
            }
            handles.insert(
                HandleKey {
                    metrics: self.id,
                    route: route.into(),
                    upstream: upstream.into(),
                    status,
                    protocol,
                },
                (count, latency),
            );
        });
    }

    pub fn cache_result(&self, label: &str) {
        if let Some(i) = CACHE_OUTCOMES.iter().position(|o| *o == label) {
            self.cache_by_outcome[i].inc();
        }
    }

    pub fn connection_shed(&self) {
        self.connections_shed.inc();
    }

    pub fn compressed(&self, encoding: &'static str, how: &'static str) {
        self.compressed
            .get_or_create(&CompressedLabels { encoding, how })
            .inc();
    }

    /// A threat event of the fleet's stream: `published`, `publish_dropped`, `applied`,
    /// `refused`, `expired`.
    pub fn fleet_threat(&self, outcome: &'static str) {
        self.fleet_threats
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn intent(&self, outcome: &'static str) {
        self.intent.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The exposition text, with the XDP counters when the program is loaded.
    pub fn render(&self, xdp: Option<&Counters>) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            return String::new();
        }
        let mut extra = self.render_servers();
        if let Some(c) = xdp {
            for (name, help) in [
                (
                    "edge_xdp_packets",
                    "Packets judged by the XDP program, by verdict reason",
                ),
                (
                    "edge_xdp_bytes",
                    "Bytes judged by the XDP program, by verdict reason",
                ),
            ] {
                extra.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} counter\n"));
                for r in Reason::ALL {
                    let v = if name.ends_with("packets") {
                        c[r as usize].packets
                    } else {
                        c[r as usize].bytes
                    };
                    extra.push_str(&format!("{name}_total{{reason=\"{}\"}} {v}\n", r.name()));
                }
            }
        }
        // Before the OpenMetrics terminator.
        match out.rfind("# EOF") {
            Some(i) => out.insert_str(i, &extra),
            None => out.push_str(&extra),
        }
        out
    }

    fn render_servers(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let servers = self.servers.snapshot();
        let mut out = String::new();
        if servers.is_empty() {
            return out;
        }
        type Read = fn(&health::ServerState) -> u64;
        let families: [(&str, &str, &str, Read); 8] = [
            (
                "edge_upstream_server_up",
                "gauge",
                "1 when the origin server is in rotation (health check passing, not ejected)",
                |s| u64::from(s.usable()),
            ),
            (
                "edge_upstream_server_health_check_passing",
                "gauge",
                "1 when the active health check passes (or none is configured)",
                |s| u64::from(s.probe_healthy()),
            ),
            (
                "edge_upstream_server_outstanding",
                "gauge",
                "Requests in flight to the origin server",
                |s| s.outstanding() as u64,
            ),
            (
                "edge_upstream_server_requests",
                "counter",
                "Requests sent to the origin server",
                |s| s.requests.load(Relaxed),
            ),
            (
                "edge_upstream_server_failures",
                "counter",
                "Connection failures and timeouts of the origin server",
                |s| s.failures.load(Relaxed),
            ),
            (
                "edge_upstream_server_ejections",
                "counter",
                "Times the origin server was ejected after failures in a row",
                |s| s.ejections.load(Relaxed),
            ),
            (
                "edge_upstream_server_retries",
                "counter",
                "Retries on another server after this one failed",
                |s| s.retried.load(Relaxed),
            ),
            (
                "edge_upstream_server_retries_denied",
                "counter",
                "Retries the retry budget refused after this server failed",
                |s| s.retry_denied.load(Relaxed),
            ),
        ];
        for (name, kind, help, read) in families {
            out.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} {kind}\n"));
            // OpenMetrics: counter samples carry the _total suffix, the family does not.
            let suffix = if kind == "counter" { "_total" } else { "" };
            for s in &servers {
                out.push_str(&format!(
                    "{name}{suffix}{{upstream=\"{}\",server=\"{}\"}} {}\n",
                    s.upstream,
                    s.server,
                    read(s)
                ));
            }
        }
        out
    }
}
