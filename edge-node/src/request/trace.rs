//! One request's trace (W3C Trace Context) while it runs: its ids and the steps it went
//! through, recorded as plain offsets. Whether it becomes OpenTelemetry spans is decided
//! when the request ends (`otel::Exporter::finish`): most are dropped, so recording a
//! step costs a push, never a span.

use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

/// A span id: 8 random bytes, never all zero.
pub type SpanId = [u8; 8];
/// A trace id: 16 random bytes, never all zero.
pub type TraceId = [u8; 16];

/// The kind of work a step was, for the span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A phase hook or the handler: the node's own work.
    Internal,
    /// An exchange with an origin (its id is the origin's `traceparent` parent).
    Client,
}

/// One step of the request: a phase hook, the handler, the upstream exchange.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub kind: StepKind,
    pub id: SpanId,
    pub parent: SpanId,
    /// Offsets from the request's start.
    pub start: Duration,
    pub end: Duration,
    pub attributes: Vec<(&'static str, String)>,
    /// The HTTP status an exchange got.
    pub status: Option<u16>,
    pub failed: bool,
}

/// A parent from an incoming `traceparent` the node accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteParent {
    pub trace: TraceId,
    pub span: SpanId,
    pub sampled: bool,
}

#[derive(Debug)]
pub struct Trace {
    pub trace: TraceId,
    /// The request's own (server) span.
    pub root: SpanId,
    pub parent: Option<RemoteParent>,
    /// Decided up front (ratio, or a sampled parent): the flag origins are sent.
    pub sampled: bool,
    pub started_at: SystemTime,
    started: Instant,
    pub steps: Vec<Step>,
    /// The handler's span while it runs: origin exchanges are its children.
    handler_span: Option<SpanId>,
    /// The origin exchange under way: its id (sent as `traceparent`) and start.
    exchange: Option<(SpanId, Instant)>,
}

impl Trace {
    /// A trace for a request that started at `started`: a child of `parent` when one was
    /// accepted, a new trace otherwise; sampled when the parent was or `ratio` says so
    /// (decided on the trace id, so every node of a trace decides alike).
    pub fn start(started: Instant, parent: Option<RemoteParent>, ratio: f64) -> Self {
        let trace = parent.map_or_else(new_id::<16>, |p| p.trace);
        let sampled = parent.is_some_and(|p| p.sampled) || ratio_keeps(&trace, ratio);
        Self {
            trace,
            root: new_id::<8>(),
            parent,
            sampled,
            started_at: SystemTime::now() - started.elapsed(),
            started,
            steps: Vec::new(),
            handler_span: None,
            exchange: None,
        }
    }

    /// Offset of `at` from the request's start.
    pub fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }

    /// Records a step of the node's own work (a phase hook) under the request's span.
    pub fn record(&mut self, name: &'static str, from: Instant, failed: bool) {
        let id = new_id::<8>();
        self.push(name, StepKind::Internal, id, self.root, from, failed);
    }

    /// The handler starts: exchanges from here on are its children.
    pub fn handler_started(&mut self) {
        self.handler_span = Some(new_id::<8>());
    }

    /// The handler `name` (started at `from`) answered.
    pub fn handler_done(&mut self, name: &'static str, from: Instant, failed: bool) {
        if let Some(id) = self.handler_span.take() {
            self.push(name, StepKind::Internal, id, self.root, from, failed);
        }
    }

    /// An origin exchange starts: the `traceparent` to send it, naming a new span.
    pub fn exchange_started(&mut self) -> HeaderValue {
        let (id, header) = self.exchange();
        self.exchange = Some((id, Instant::now()));
        header
    }

    /// Ends an exchange some handler started and did not report (a function's or a
    /// room's origin call): its span still exists for the origin that continued it.
    pub fn close_exchange(&mut self) {
        if self.exchange.is_some() {
            self.exchange_done("", None);
            if let Some(s) = self.steps.last_mut() {
                s.failed = false;
                s.attributes.retain(|(k, _)| *k != "edge.upstream");
            }
        }
    }

    /// The exchange under way ended with `status` (none: it failed) from `upstream`.
    pub fn exchange_done(&mut self, upstream: &str, status: Option<u16>) {
        let Some((id, from)) = self.exchange.take() else {
            return;
        };
        let parent = self.handler_span.unwrap_or(self.root);
        let failed = status.is_none_or(|s| s >= 500);
        self.push("upstream", StepKind::Client, id, parent, from, failed);
        if let Some(step) = self.steps.last_mut() {
            step.status = status;
            step.attributes
                .push(("edge.upstream", upstream.to_string()));
        }
    }

    fn push(
        &mut self,
        name: &'static str,
        kind: StepKind,
        id: SpanId,
        parent: SpanId,
        from: Instant,
        failed: bool,
    ) {
        let (start, end) = (self.offset(from), self.offset(Instant::now()));
        self.steps.push(Step {
            name,
            kind,
            id,
            parent,
            start,
            end,
            attributes: Vec::new(),
            status: None,
            failed,
        });
    }

    /// A new span id and the `traceparent` that names it.
    fn exchange(&self) -> (SpanId, HeaderValue) {
        let id = new_id::<8>();
        let value = format!(
            "00-{}-{}-{}",
            hex(&self.trace),
            hex(&id),
            if self.sampled { "01" } else { "00" }
        );
        (
            id,
            HeaderValue::from_str(&value).expect("hex is a header value"),
        )
    }
}

/// Parses a W3C `traceparent` (version 00, or a later version read as 00 would be);
/// `None` for anything malformed or with an all-zero id (the spec's "invalid").
pub fn parse_traceparent(value: &[u8]) -> Option<RemoteParent> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may append more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    u8::from_str_radix(version, 16).ok()?;
    let trace: TraceId = unhex(trace)?;
    let span: SpanId = unhex(span)?;
    let flags: [u8; 1] = unhex(flags)?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some(RemoteParent {
        trace,
        span,
        sampled: flags[0] & 1 == 1,
    })
}

/// Whether a trace id falls within the sampled share: its last 8 bytes, as a number,
/// below `ratio` of their range (the OpenTelemetry ratio sampler's rule).
fn ratio_keeps(trace: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let low = u64::from_be_bytes(trace[8..].try_into().expect("8 bytes"));
    (low >> 1) < (ratio * (1u64 << 63) as f64) as u64
}

fn new_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        fastrand::fill(&mut id);
        if id != [0; N] {
            return id;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex only, as the spec writes it.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let ok = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert!(ok.sampled);
        assert_eq!(hex(&ok.trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&ok.span), "00f067aa0ba902b7");
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some_and(|p| !p.sampled)
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn the_ratio_keeps_its_share_and_the_flag_follows() {
        let kept = (0..20_000)
            .filter(|_| Trace::start(Instant::now(), None, 0.25).sampled)
            .count();
        assert!((4_000..6_000).contains(&kept), "{kept}");
        assert!(!Trace::start(Instant::now(), None, 0.0).sampled);
        assert!(Trace::start(Instant::now(), None, 1.0).sampled);
        // A sampled parent is followed whatever the ratio; its trace id is kept.
        let parent = RemoteParent {
            trace: [7; 16],
            span: [9; 8],
            sampled: true,
        };
        let t = Trace::start(Instant::now(), Some(parent), 0.0);
        assert!(t.sampled);
        assert_eq!(t.trace, [7; 16]);
        let (id, header) = t.exchange();
        let sent = parse_traceparent(header.as_bytes()).expect("ours parses");
        assert_eq!((sent.trace, sent.span, sent.sampled), (t.trace, id, true));
    }
}
