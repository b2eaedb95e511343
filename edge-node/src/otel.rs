//! OpenTelemetry traces (`[traces]`, off by default). A request records its steps as
//! plain offsets while it runs (`request::trace`); when it ends, the trace is kept if the
//! ratio chose it up front, if a trusted parent sampled it, or (with `errors`) if it
//! failed; only then does it become OTLP spans: the request's server span, one span per
//! phase hook and the handler, and a client span per upstream exchange (whose id is the
//! `traceparent` the origin received). The SDK's batch processor exports them over
//! OTLP/HTTP (protobuf) from its own thread; a full queue drops spans, never waits.
//! Off, no trace is recorded and no span is built.

use std::{borrow::Cow, collections::BTreeMap, time::Duration};

use anyhow::{Result, bail};
use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
    },
};
use serde::Deserialize;

use crate::request::trace::{Step, StepKind, Trace};

/// `[traces]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces endpoint (e.g. `http://127.0.0.1:4318/v1/traces`); traces
    /// are off without one.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Share of requests traced, 0 to 1, decided on the trace id.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Every failed request (5xx) is traced too, up to `errors_per_second`.
    #[serde(default = "yes")]
    pub errors: bool,
    /// Failed requests traced beyond the ratio per second at most (bursts of as many).
    #[serde(default = "default_errors_per_second")]
    pub errors_per_second: u32,
    /// Whose incoming `traceparent` continues their trace: `trusted` (the
    /// `http.trusted_proxies`), `any`, or `none`. Others start a new trace, so a client
    /// cannot choose to be sampled.
    #[serde(default)]
    pub parent: ParentPolicy,
    /// `service.name` of the spans (`service.instance.id` is `node.id`).
    #[serde(default = "default_service")]
    pub service_name: String,
    /// Headers sent with every export (a collector's API key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long one export may take.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// How often spans are sent (sooner when a batch is full).
    #[serde(default = "default_interval", with = "crate::duration")]
    pub export_interval: Duration,
    /// Spans waiting for export at most; past it new ones are dropped.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParentPolicy {
    #[default]
    Trusted,
    Any,
    None,
}

impl Default for TraceSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            ratio: default_ratio(),
            errors: true,
            errors_per_second: default_errors_per_second(),
            parent: ParentPolicy::default(),
            service_name: default_service(),
            headers: BTreeMap::new(),
            timeout: default_timeout(),
            export_interval: default_interval(),
            queue: default_queue(),
        }
    }
}

fn default_ratio() -> f64 {
    0.01
}
fn yes() -> bool {
    true
}
fn default_errors_per_second() -> u32 {
    20
}
fn default_service() -> String {
    "edge-node".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_queue() -> usize {
    4096
}

impl TraceSettings {
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.ratio) {
            bail!("traces.ratio is a share from 0 to 1 (is {})", self.ratio);
        }
        if let Some(e) = &self.endpoint {
            let uri: http::Uri = e
                .parse()
                .map_err(|err| anyhow::anyhow!("traces.endpoint {e:?} is no URL: {err}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                bail!(
                    "traces.endpoint {e:?}: write the OTLP/HTTP URL, e.g. http://127.0.0.1:4318/v1/traces"
                );
            }
        }
        if self.timeout.is_zero() || self.export_interval.is_zero() {
            bail!("traces.timeout and traces.export_interval must be longer than 0s");
        }
        if self.errors_per_second == 0 {
            bail!("traces.errors_per_second must be at least 1 (errors = false turns it off)");
        }
        if !(1..=1_000_000).contains(&self.queue) {
            bail!("traces.queue is 1 to 1000000 spans (is {})", self.queue);
        }
        if self.service_name.is_empty() {
            bail!("traces.service_name is empty");
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                bail!("traces.headers: {k:?} is not a valid header name and value");
            }
        }
        Ok(())
    }

    /// What the exporter is made of: a reload that keeps these keeps the exporter.
    pub fn export_key(&self, node: &str) -> ExportKey {
        ExportKey {
            endpoint: self.endpoint.clone().unwrap_or_default(),
            headers: self.headers.clone(),
            timeout: self.timeout,
            interval: self.export_interval,
            queue: self.queue,
            service: self.service_name.clone(),
            node: node.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExportKey {
    endpoint: String,
    headers: BTreeMap<String, String>,
    timeout: Duration,
    interval: Duration,
    queue: usize,
    service: String,
    node: String,
}

/// The batch processor and its OTLP exporter (a thread of their own).
pub struct Exporter {
    processor: Option<BatchSpanProcessor>,
    scope: InstrumentationScope,
}

impl Exporter {
    /// Starts the exporter's thread. Built on a thread of its own: the blocking HTTP
    /// client must not be made (or dropped) on the async runtime.
    pub fn start(key: &ExportKey) -> Result<Self> {
        let key = key.clone();
        std::thread::spawn(move || Self::build(&key))
            .join()
            .map_err(|_| anyhow::anyhow!("starting the trace exporter panicked"))?
    }

    fn build(key: &ExportKey) -> Result<Self> {
        // The exporter's HTTPS client takes the process's rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(key.endpoint.clone())
            .with_timeout(key.timeout)
            .with_headers(key.headers.clone().into_iter().collect())
            .build()
            .map_err(|e| anyhow::anyhow!("traces.endpoint: {e}"))?;
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(key.queue)
            .with_max_export_batch_size(key.queue.min(512))
            .with_scheduled_delay(key.interval)
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name(key.service.clone())
                .with_attribute(KeyValue::new("service.instance.id", key.node.clone()))
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        Ok(Self {
            processor: Some(processor),
            scope: InstrumentationScope::builder("edge-node")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// Hands a finished request's spans to the exporter (the root last, as its
    /// children ended first).
    pub fn export(&self, trace: &Trace, root: RootSpan) {
        let Some(processor) = &self.processor else {
            return;
        };
        let trace_id = TraceId::from_bytes(trace.trace);
        let flags = TraceFlags::SAMPLED;
        let at = |offset: Duration| trace.started_at + offset;
        let context = |id: [u8; 8]| {
            SpanContext::new(
                trace_id,
                SpanId::from_bytes(id),
                flags,
                false,
                TraceState::NONE,
            )
        };
        for step in &trace.steps {
            processor.on_end(self.span(
                context(step.id),
                SpanId::from_bytes(step.parent),
                false,
                step_span(step, at(step.start), at(step.end)),
            ));
        }
        let (parent, remote) = match trace.parent {
            Some(p) => (SpanId::from_bytes(p.span), true),
            None => (SpanId::INVALID, false),
        };
        processor.on_end(self.span(
            context(trace.root),
            parent,
            remote,
            Partial {
                name: root.name,
                kind: SpanKind::Server,
                start: trace.started_at,
                end: at(root.duration),
                attributes: root.attributes,
                status: if root.failed {
                    Status::error(root.error.unwrap_or_default())
                } else {
                    Status::Unset
                },
            },
        ));
    }

    fn span(&self, ctx: SpanContext, parent: SpanId, remote: bool, p: Partial) -> SpanData {
        SpanData {
            span_context: ctx,
            parent_span_id: parent,
            parent_span_is_remote: remote,
            span_kind: p.kind,
            name: p.name,
            start_time: p.start,
            end_time: p.end,
            attributes: p.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: p.status,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

impl Drop for Exporter {
    /// The last pipeline using it is gone (a reload changed `[traces]`, or shutdown):
    /// what is queued is sent, on a thread of its own, bounded by the export timeout.
    fn drop(&mut self) {
        if let Some(p) = self.processor.take() {
            let _ = std::thread::Builder::new()
                .name("otlp-shutdown".into())
                .spawn(move || {
                    if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                        tracing::debug!(error = %e, "trace exporter shutdown");
                    }
                });
        }
    }
}

/// What the pipeline knows about the request's own span when it ends.
pub struct RootSpan {
    pub name: Cow<'static, str>,
    pub duration: Duration,
    pub attributes: Vec<KeyValue>,
    pub failed: bool,
    pub error: Option<String>,
}

struct Partial {
    name: Cow<'static, str>,
    kind: SpanKind,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

fn step_span(step: &Step, start: std::time::SystemTime, end: std::time::SystemTime) -> Partial {
    Partial {
        name: Cow::Borrowed(step.name),
        kind: match step.kind {
            StepKind::Internal => SpanKind::Internal,
            StepKind::Client => SpanKind::Client,
        },
        start,
        end,
        attributes: step
            .attributes
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()))
            .chain(
                step.status
                    .map(|s| KeyValue::new("http.response.status_code", i64::from(s))),
            )
            .collect(),
        status: if step.failed {
            Status::error("")
        } else {
            Status::Unset
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_refuse_nonsense() {
        let parse = |s: &str| -> Result<TraceSettings> {
            let t: TraceSettings = toml::from_str(s)?;
            t.validate()?;
            Ok(t)
        };
        assert!(!parse("").unwrap().enabled());
        let t = parse("endpoint = \"http://127.0.0.1:4318/v1/traces\"\nratio = 0.5").unwrap();
        assert!(t.enabled());
        for bad in [
            "ratio = 1.5",
            "ratio = -0.1",
            "endpoint = \"127.0.0.1:4318\"",
            "endpoint = \"ftp://x/v1/traces\"",
            "queue = 0",
            "timeout = \"0s\"",
            "parent = \"sometimes\"",
            "headers = { \"bad header\" = \"x\" }",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
