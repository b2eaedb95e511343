//! Prometheus metrics: requests by upstream, status and protocol, latency histograms,
//! and the XDP program's per-reason counters (read from the pinned maps at scrape).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use edge_common::Reason;

use crate::xdp::maps::Counters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The upstream pool that served it ("" when no route matched).
    pub upstream: String,
    pub status: u16,
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<UpstreamLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "edge_requests",
            "HTTP requests answered, by upstream, status and protocol",
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
        Self {
            registry,
            requests,
            latency,
        }
    }

    pub fn record(&self, upstream: &str, status: u16, protocol: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                upstream: upstream.to_string(),
                status,
                protocol: protocol.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .observe(seconds);
    }

    /// The exposition text, with the XDP counters when the program is loaded.
    pub fn render(&self, xdp: Option<&Counters>) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            return String::new();
        }
        if let Some(c) = xdp {
            let mut extra = String::new();
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
            // Before the OpenMetrics terminator.
            match out.rfind("# EOF") {
                Some(i) => out.insert_str(i, &extra),
                None => out.push_str(&extra),
            }
        }
        out
    }
}
