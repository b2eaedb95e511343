//! The pipeline's side of traces: where a request's trace starts (whose `traceparent`
//! it continues) and what its own span says when it ends. `otel` builds and exports.

use std::{borrow::Cow, net::IpAddr, sync::Arc, time::Duration};

use http::{HeaderMap, Method, StatusCode, Version};
use opentelemetry::KeyValue;

use crate::{
    otel::{Exporter, ParentPolicy, RootSpan, TraceSettings},
    request::{
        RequestCtx,
        trace::{RemoteParent, Trace, parse_traceparent},
    },
};

pub struct Traces {
    pub settings: TraceSettings,
    pub exporter: Arc<Exporter>,
    /// Failed requests traced beyond the ratio, at most `errors_per_second`: whoever
    /// can make requests fail (a dead origin) must not flood the collector.
    pub errors: std::sync::Mutex<crate::limits::Bucket>,
}

impl Traces {
    /// The trace of a request from `peer` with `headers`: a child of its `traceparent`
    /// when the policy accepts it (exactly one, well formed), else a new one.
    pub fn start(
        &self,
        ctx: &RequestCtx,
        headers: &HeaderMap,
        peer: IpAddr,
        trusted: &[ipnet::IpNet],
    ) -> Trace {
        let accepted = match self.settings.parent {
            ParentPolicy::Any => true,
            ParentPolicy::None => false,
            ParentPolicy::Trusted => {
                let peer = crate::xdp::addr::canonical(peer);
                trusted.iter().any(|n| n.contains(&peer))
            }
        };
        let parent = accepted.then(|| single_parent(headers)).flatten();
        Trace::start(ctx.started, parent, self.settings.ratio)
    }

    /// Exports the request's trace if it is kept (sampled, or failed with `errors`).
    pub fn finish(&self, ctx: &RequestCtx, trace: &Trace, end: End<'_>) {
        let failed = end.status.is_server_error();
        let kept = trace.sampled
            || (self.settings.errors
                && failed
                && crate::sync::lock(&self.errors).admit(crate::clock::now_ns()));
        if !kept {
            return;
        }
        let route = ctx.route.as_ref().map(|_| ctx.route_name());
        let name = match &route {
            Some(r) => Cow::Owned(format!("{} {r}", end.method)),
            None => Cow::Owned(end.method.to_string()),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", end.method.to_string()),
            KeyValue::new("url.path", end.path.to_string()),
            KeyValue::new("url.scheme", ctx.scheme),
            KeyValue::new("server.address", ctx.host.clone()),
            KeyValue::new("client.address", ctx.client_ip.to_string()),
            KeyValue::new("network.protocol.version", protocol(end.version)),
            KeyValue::new("http.response.status_code", i64::from(end.status.as_u16())),
        ];
        if let Some(r) = route {
            attributes.push(KeyValue::new("http.route", r.to_string()));
        }
        if let Some(c) = ctx.cache_outcome {
            attributes.push(KeyValue::new("edge.cache", c));
        }
        if !ctx.upstream.is_empty() {
            attributes.push(KeyValue::new("edge.upstream", ctx.upstream.clone()));
        }
        self.exporter.export(
            trace,
            RootSpan {
                name,
                duration: end.elapsed,
                attributes,
                failed,
                error: end.error,
            },
        );
    }
}

/// How the request ended, for its span.
pub struct End<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub version: Version,
    pub status: StatusCode,
    pub elapsed: Duration,
    /// What went wrong, when the node answered with an error.
    pub error: Option<String>,
}

/// The one `traceparent` of a request; two or more are no parent (W3C: invalid).
fn single_parent(headers: &HeaderMap) -> Option<RemoteParent> {
    let mut all = headers.get_all(crate::headers::TRACEPARENT).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    parse_traceparent(first.as_bytes())
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_3 => "3",
        Version::HTTP_2 => "2",
        Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}
