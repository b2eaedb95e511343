//! OpenTelemetry traces (`[traces]`) exported to a real OTLP/HTTP receiver (decoding
//! with the OpenTelemetry project's protobuf definitions): a request's span with a span
//! per phase, the handler's and the origin exchange's, whose id the origin received as
//! `traceparent`; sampling by ratio and always for failures; a client cannot pick its
//! trace or its sampling, a trusted proxy can; off, nothing is added.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, curl, eventually, start_config},
};
use serde_json::Value;

/// OTLP span kinds.
const SERVER: u64 = 2;
const CLIENT: u64 = 3;
const INTERNAL: u64 = 1;
/// OTLP status code for an error.
const STATUS_ERROR: u64 = 2;

struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/support/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the OTLP receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| l.trim().parse().ok())
            .expect("the receiver prints its port (is opentelemetry-proto installed?)");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let span: Value = serde_json::from_str(&line).expect("a span per line");
                sink.lock().unwrap().push(span);
            }
        });
        Self { child, port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    fn all(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of `trace`, once its server span has arrived (it is exported last).
    fn trace(&self, trace: &str) -> Vec<Value> {
        let arrived = eventually(Duration::from_secs(15), || {
            self.all()
                .iter()
                .any(|s| s["trace_id"] == trace && s["kind"] == SERVER)
        });
        assert!(arrived, "trace {trace} never arrived: {:#?}", self.all());
        self.all()
            .into_iter()
            .filter(|s| s["trace_id"] == trace)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(origin: &Origin, http: &str, traces: &str) -> Proxy {
    start_config(&format!(
        "[node]\nid = \"edge-traced\"\n[xdp]\nmode = \"off\"\n\
         [http]\nlisten = [\"127.0.0.1:0\"]\n{http}\n\
         {traces}\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{addr}\"]\n\
         [[upstream]]\nname = \"gone\"\nservers = [\"127.0.0.1:9\"]\n\
         [[route]]\nname = \"pages\"\nhosts = [\"app.test\"]\nupstream = \"app\"\n\
         [[route]]\nname = \"broken\"\nhosts = [\"gone.test\"]\nupstream = \"gone\"\n",
        addr = origin.addr,
    ))
}

fn traces(receiver: &Receiver, extra: &str) -> String {
    format!(
        "[traces]\nendpoint = \"{}\"\nexport_interval = \"100ms\"\n{extra}\n",
        receiver.endpoint()
    )
}

/// The `traceparent` the origin received (it echoes request headers), split in its
/// fields: trace id, parent span id, flags.
fn origin_traceparent(body: &str) -> Option<(String, String, String)> {
    let v = body.lines().find_map(|l| l.strip_prefix("traceparent: "))?;
    let f: Vec<&str> = v.trim().split('-').collect();
    (f.len() == 4).then(|| (f[1].to_string(), f[2].to_string(), f[3].to_string()))
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

#[test]
fn a_request_is_a_trace_of_its_phases_and_the_origin_continues_it() {
    let receiver = Receiver::start();
    let origin = Origin::start("app");
    let p = node(
        &origin,
        "",
        &traces(
            &receiver,
            "ratio = 1.0\nheaders = { authorization = \"Bearer collector-key\" }",
        ),
    );
    let r = curl(&p, "app.test", "/page?x=1", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let (trace, exchange, flags) =
        origin_traceparent(&r.body).unwrap_or_else(|| panic!("no traceparent: {}", r.body));
    assert_eq!(flags, "01", "a sampled trace says so to the origin");
    let spans = receiver.trace(&trace);

    let root: Vec<&Value> = spans.iter().filter(|s| s["kind"] == SERVER).collect();
    assert_eq!(root.len(), 1, "{spans:#?}");
    let root = root[0];
    assert_eq!(root["name"], "GET pages");
    assert_eq!(root["parent_span_id"], "", "a new trace has no parent");
    let attrs = &root["attributes"];
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["url.path"], "/page");
    assert_eq!(attrs["http.route"], "pages");
    assert_eq!(attrs["http.response.status_code"], 200);
    assert_eq!(attrs["server.address"], "app.test");
    assert_eq!(root["resource"]["service.name"], "edge-node");
    assert_eq!(root["resource"]["service.instance.id"], "edge-traced");
    assert_eq!(root["authorization"], "Bearer collector-key");
    assert_ne!(root["status"], STATUS_ERROR);

    // A span per phase the request went through, children of the request's.
    for phase in ["early", "route", "auth", "rate_limit"] {
        let s = named(&spans, phase);
        assert!(!s.is_empty(), "no {phase} span: {spans:#?}");
        for s in s {
            assert_eq!(s["parent_span_id"], root["span_id"], "{s:#}");
            assert_eq!(s["kind"], INTERNAL);
        }
    }
    // The handler, and under it the exchange the origin saw as its parent.
    let handler = named(&spans, "proxy");
    assert_eq!(handler.len(), 1, "{spans:#?}");
    let handler = handler[0];
    assert_eq!(handler["parent_span_id"], root["span_id"]);
    let upstream = named(&spans, "upstream");
    assert_eq!(upstream.len(), 1, "{spans:#?}");
    let upstream = upstream[0];
    assert_eq!(upstream["kind"], CLIENT);
    assert_eq!(upstream["span_id"], exchange.as_str());
    assert_eq!(upstream["parent_span_id"], handler["span_id"]);
    assert_eq!(upstream["attributes"]["http.response.status_code"], 200);
    assert_eq!(upstream["attributes"]["edge.upstream"], "app");
    // Every span lies within the request's.
    let (start, end) = (
        root["start"].as_u64().unwrap(),
        root["end"].as_u64().unwrap(),
    );
    for s in &spans {
        let (s0, s1) = (s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap());
        assert!(
            start <= s0 && s0 <= s1 && s1 <= end,
            "{s:#} outside {root:#}"
        );
    }
}

#[test]
fn unsampled_requests_stay_home_and_failures_are_always_traced() {
    let receiver = Receiver::start();
    let origin = Origin::start("app");
    let p = node(
        &origin,
        "",
        &traces(&receiver, "ratio = 0.0\nerrors_per_second = 5"),
    );
    let ok = curl(&p, "app.test", "/fine", &[]);
    assert_eq!(ok.status, 200);
    let (quiet, _, flags) = origin_traceparent(&ok.body).expect("traceparent");
    assert_eq!(flags, "00", "an unsampled trace says so to the origin");
    // An origin that cannot be reached: a 502 the node answers.
    let failed = curl(&p, "gone.test", "/broken", &[]);
    assert_eq!(failed.status, 502);
    assert!(
        eventually(Duration::from_secs(15), || {
            receiver
                .all()
                .iter()
                .any(|s| s["kind"] == SERVER && s["attributes"]["url.path"] == "/broken")
        }),
        "the failure was not traced: {:#?}",
        receiver.all()
    );
    let spans = receiver.all();
    let root = spans
        .iter()
        .find(|s| s["kind"] == SERVER && s["attributes"]["url.path"] == "/broken")
        .unwrap();
    assert_eq!(root["status"], STATUS_ERROR, "{root:#}");
    assert_eq!(root["attributes"]["http.response.status_code"], 502);
    let upstream = spans
        .iter()
        .find(|s| s["trace_id"] == root["trace_id"] && s["name"] == "upstream")
        .unwrap_or_else(|| panic!("no exchange span: {spans:#?}"));
    assert_eq!(upstream["status"], STATUS_ERROR);
    // Exports keep their order: the earlier, unsampled request would be here by now.
    assert!(
        !spans.iter().any(|s| s["trace_id"] == quiet.as_str()),
        "an unsampled trace was exported: {spans:#?}"
    );
    // Failures beyond errors_per_second (5) are not traced: a flood of them costs the
    // collector a bounded share.
    let start = std::time::Instant::now();
    for i in 0..40 {
        // 502, then 503 once the pool has ejected its dead server.
        let status = curl(&p, "gone.test", &format!("/flood{i}"), &[]).status;
        assert!(matches!(status, 502 | 503), "{status}");
    }
    let secs = start.elapsed().as_secs_f64();
    // A last failure after the flood, once its export arrived, all before it did too.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert!(curl(&p, "gone.test", "/last", &[]).status >= 500);
    assert!(eventually(Duration::from_secs(15), || {
        receiver
            .all()
            .iter()
            .any(|s| s["attributes"]["url.path"] == "/last")
    }));
    let flooded = receiver
        .all()
        .iter()
        .filter(|s| {
            s["kind"] == SERVER
                && s["attributes"]["url.path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/flood"))
        })
        .count();
    let allowed = 5.0 + 5.0 * secs;
    assert!(
        flooded >= 1 && flooded as f64 <= allowed + 1.0,
        "{flooded} of 40 failures traced in {secs:.2} s (at most {allowed:.0})"
    );
}

#[test]
fn a_client_cannot_choose_its_trace_but_a_trusted_proxy_can() {
    let receiver = Receiver::start();
    let origin = Origin::start("app");
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let args = [
        "-H",
        &format!("traceparent: {theirs}"),
        "-H",
        "tracestate: vendor=opaque",
    ];
    let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();

    // Anyone: a new trace, sampled by the node's ratio (0), and their tracestate gone.
    let p = node(&origin, "", &traces(&receiver, "ratio = 0.0"));
    let r = curl(&p, "app.test", "/from-client", &args);
    let (trace, _, flags) = origin_traceparent(&r.body).expect("traceparent");
    assert_ne!(trace, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(flags, "00", "the client's sampled flag chose nothing");
    assert!(!r.body.contains("tracestate:"), "{}", r.body);
    drop(p);

    // A trusted proxy (loopback here): its trace continues, sampled as it says.
    let p = node(
        &origin,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &traces(&receiver, "ratio = 0.0"),
    );
    let r = curl(&p, "app.test", "/from-proxy", &args);
    let (trace, exchange, flags) = origin_traceparent(&r.body).expect("traceparent");
    assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(flags, "01");
    assert!(r.body.contains("tracestate: vendor=opaque"), "{}", r.body);
    let spans = receiver.trace(&trace);
    let root = spans.iter().find(|s| s["kind"] == SERVER).unwrap();
    assert_eq!(root["parent_span_id"], "b7ad6b7169203331");
    assert!(spans.iter().any(|s| s["span_id"] == exchange.as_str()));
    drop(p);

    // Traces off (the default): the node adds nothing and passes theirs along.
    let p = node(&origin, "", "");
    let r = curl(&p, "app.test", "/untraced", &args);
    assert!(
        r.body.contains(&format!("traceparent: {theirs}")),
        "{}",
        r.body
    );
}
