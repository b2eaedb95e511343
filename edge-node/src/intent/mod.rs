//! Intent prediction: an ONNX model (tract) classifies each request as browse,
//! purchase, api, scraper or attack from features of the request (`features.rs`, the
//! twin of the training script's extraction). The prediction goes to the origin in a
//! header and, when it is a confident attack or scraper, to the policy engine as a
//! signal.
//!
//! Inference never runs on the async workers: jobs go to a small pool of threads of its
//! own through a bounded queue, and the request waits at most `timeout` for the answer.
//! A full queue or a late answer means the request goes on without a prediction (and a
//! counter says so).

pub mod features;

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;
use tracing::warn;
use tract_onnx::prelude::*;

use features::{CLASSES, FEATURE_COUNT, RequestFacts};

/// The model shipped with the node (`intent-model/`, see its README and EVALUATION).
const BUILTIN_MODEL: &[u8] = include_bytes!("../../../intent-model/intent.onnx");

/// `[intent]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntentSettings {
    /// Classify requests at all.
    #[serde(default)]
    pub enabled: bool,
    /// An ONNX model with input `[1, 41]` f32 and output `[1, 5]` probabilities (see
    /// intent-model/README.md); none: the model built into the binary. Read again on
    /// reload.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// The header that tells the origin the class (and `<header>-confidence` the
    /// probability); clients' copies are removed.
    #[serde(default = "default_header")]
    pub header: String,
    /// Longest wait for a prediction; later, the request goes on without one (`0s`:
    /// never wait).
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Inference threads.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Requests waiting for a thread; when full, requests go on without a prediction.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Probability from which an "attack" or "scraper" prediction is a threat signal.
    #[serde(default = "default_confidence")]
    pub signal_confidence: f32,
    /// The window of the client's recent request rate (a feature).
    #[serde(default = "default_rate_window", with = "crate::duration")]
    pub rate_window: Duration,
    /// Clients whose rates are tracked (least recently seen go first).
    #[serde(default = "default_max_clients")]
    pub max_clients: u64,
}

fn default_header() -> String {
    "x-intent".into()
}
fn default_timeout() -> Duration {
    Duration::from_millis(5)
}
fn default_threads() -> usize {
    1
}
fn default_queue() -> usize {
    256
}
fn default_confidence() -> f32 {
    0.8
}
fn default_rate_window() -> Duration {
    Duration::from_secs(10)
}
fn default_max_clients() -> u64 {
    100_000
}

impl Default for IntentSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            model: None,
            header: default_header(),
            timeout: default_timeout(),
            threads: default_threads(),
            queue: default_queue(),
            signal_confidence: default_confidence(),
            rate_window: default_rate_window(),
            max_clients: default_max_clients(),
        }
    }
}

impl IntentSettings {
    pub fn validate(&self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if self.threads == 0 || self.threads > 64 {
            bail!("intent.threads must be 1..=64");
        }
        if self.queue == 0 {
            bail!("intent.queue must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.signal_confidence) {
            bail!("intent.signal_confidence must be within 0..=1");
        }
        if self.rate_window.is_zero() {
            bail!("intent.rate_window must be more than 0s");
        }
        HeaderName::from_bytes(self.header.as_bytes())
            .with_context(|| format!("intent.header {:?}", self.header))?;
        Ok(())
    }
}

type Plan = Arc<TypedRunnableModel>;

/// Loads and checks a model: it must take `[1, FEATURE_COUNT]` and give 5 probabilities.
pub fn load(path: Option<&std::path::Path>) -> Result<Plan> {
    let onnx = tract_onnx::onnx();
    let model = match path {
        Some(p) => onnx
            .model_for_path(p)
            .with_context(|| format!("intent model {}", p.display()))?,
        None => onnx
            .model_for_read(&mut std::io::Cursor::new(BUILTIN_MODEL))
            .context("the built-in intent model")?,
    };
    let plan = model
        .with_input_fact(0, f32::fact([1, FEATURE_COUNT]).into())?
        .into_optimized()?
        .into_runnable()?;
    let out = run(&plan, &[0.0; FEATURE_COUNT])?;
    let sum: f32 = out.iter().sum();
    if !(0.99..=1.01).contains(&sum) {
        bail!("the intent model's outputs are not probabilities (they add up to {sum})");
    }
    Ok(plan)
}

/// One inference: the class probabilities, in `CLASSES` order.
pub fn run(plan: &Plan, x: &[f32; FEATURE_COUNT]) -> Result<[f32; 5]> {
    run_in(&mut plan.spawn()?, x)
}

/// One inference in a state kept across runs (an inference thread's: no per-run set-up).
pub fn run_in(state: &mut TypedSimpleState, x: &[f32; FEATURE_COUNT]) -> Result<[f32; 5]> {
    let input = Tensor::from_shape(&[1, FEATURE_COUNT], x)?;
    let out = state.run(tvec!(input.into()))?;
    let first = out.first().context("the model gave no output")?;
    let view = first.try_as_plain_ram()?;
    let probs = view.as_slice::<f32>()?;
    probs
        .try_into()
        .map_err(|_| anyhow::anyhow!("the model gave {} outputs, not 5", probs.len()))
}

struct Job {
    features: [f32; FEATURE_COUNT],
    reply: tokio::sync::oneshot::Sender<[f32; 5]>,
}

/// A prediction.
#[derive(Debug, Clone, Copy)]
pub struct Prediction {
    pub class: usize,
    pub confidence: f32,
}

impl Prediction {
    pub fn name(&self) -> &'static str {
        CLASSES[self.class]
    }
}

/// Why a request has no prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Every thread busy and the queue full.
    Busy,
    /// No answer within the timeout.
    Timeout,
    /// The model failed on this input (logged).
    Failed,
}

impl Skipped {
    pub fn label(self) -> &'static str {
        match self {
            Skipped::Busy => "skipped_busy",
            Skipped::Timeout => "skipped_timeout",
            Skipped::Failed => "failed",
        }
    }
}

/// The model, its threads and the clients' recent rates.
pub struct Intent {
    jobs: mpsc::SyncSender<Job>,
    pub header: HeaderName,
    pub confidence_header: HeaderName,
    timeout: Duration,
    pub signal_confidence: f32,
    rates: RateMeter,
}

impl Intent {
    /// Loads the model and starts its threads (they stop when this is dropped).
    pub fn start(s: &IntentSettings) -> Result<Self> {
        let plan = load(s.model.as_deref())?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(s.queue);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..s.threads {
            let (plan, queue) = (plan.clone(), queue.clone());
            std::thread::Builder::new()
                .name(format!("edge-intent-{i}"))
                .spawn(move || {
                    let mut state = match plan.spawn() {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(error = %e, "intent inference thread not started");
                            return;
                        }
                    };
                    loop {
                        let job = match queue.lock().expect("intent queue").recv() {
                            Ok(j) => j,
                            // The engine was dropped (a reload replaced it).
                            Err(_) => return,
                        };
                        match run_in(&mut state, &job.features) {
                            Ok(p) => {
                                let _ = job.reply.send(p);
                            }
                            // The waiter sees a closed channel: Failed.
                            Err(e) => warn!(error = %e, "intent inference failed"),
                        }
                    }
                })?;
        }
        Ok(Self {
            jobs,
            header: HeaderName::from_bytes(s.header.as_bytes())?,
            confidence_header: HeaderName::from_bytes(
                format!("{}-confidence", s.header).as_bytes(),
            )?,
            timeout: s.timeout,
            signal_confidence: s.signal_confidence,
            rates: RateMeter::new(s.rate_window, s.max_clients),
        })
    }

    /// The request's features (its rate counted now).
    pub fn features(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> [f32; FEATURE_COUNT] {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        // HTTP/2 and HTTP/3 carry the host as :authority: the model was trained on
        // requests that name it.
        if !headers.contains_key(http::header::HOST) {
            names.push("host");
        }
        let facts = RequestFacts {
            method: method.as_str(),
            path: uri.path(),
            query: uri.query(),
            header_names: &names,
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            recent_rate: self.rates.hit(client, Instant::now()),
        };
        features::extract(&facts)
    }

    /// Classifies on the inference threads, waiting at most the timeout.
    pub async fn predict(&self, features: [f32; FEATURE_COUNT]) -> Result<Prediction, Skipped> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send(Job { features, reply })
            .map_err(|_| Skipped::Busy)?;
        let probs = match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(Skipped::Failed),
            Err(_) => return Err(Skipped::Timeout),
        };
        let (class, confidence) = probs
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("5 classes");
        Ok(Prediction { class, confidence })
    }

    /// The headers for the origin.
    pub fn forward(&self, p: Option<Prediction>, headers: &mut HeaderMap) {
        headers.remove(&self.header);
        headers.remove(&self.confidence_header);
        if let Some(p) = p {
            headers.insert(self.header.clone(), HeaderValue::from_static(p.name()));
            if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", p.confidence)) {
                headers.insert(self.confidence_header.clone(), v);
            }
        }
    }
}

/// Each client's recent request rate: an exponentially decaying count (time constant
/// `window`), so the rate needs no per-request history; bounded in clients.
struct RateMeter {
    window: f64,
    clients: moka::sync::Cache<IpAddr, Arc<Mutex<(f64, Instant)>>>,
}

impl RateMeter {
    fn new(window: Duration, max_clients: u64) -> Self {
        Self {
            window: window.as_secs_f64(),
            clients: moka::sync::Cache::builder()
                .max_capacity(max_clients)
                .time_to_idle(window.saturating_mul(6).min(crate::duration::MAX))
                .build(),
        }
    }

    /// Counts a request; the client's requests per second over about the window.
    fn hit(&self, ip: IpAddr, now: Instant) -> f32 {
        let c = self
            .clients
            .get_with(ip, || Arc::new(Mutex::new((0.0, now))));
        let mut c = c.lock().expect("rate");
        let dt = now.saturating_duration_since(c.1).as_secs_f64();
        c.0 = c.0 * (-dt / self.window).exp() + 1.0;
        c.1 = now;
        (c.0 / self.window) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The shared test vectors: Rust's features equal the training script's, bit for
    /// bit, and tract's probabilities are within 1e-5 of onnxruntime's.
    #[test]
    fn features_and_outputs_match_the_training_side() {
        let text = include_str!("../../../intent-model/test_vectors.json");
        let v: Value = serde_json::from_str(text).unwrap();
        let plan = load(None).unwrap();
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 30);
        let mut worst = 0f32;
        for case in cases {
            let f = &case["facts"];
            let names: Vec<&str> = f["header_names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            let facts = RequestFacts {
                method: f["method"].as_str().unwrap(),
                path: f["path"].as_str().unwrap(),
                query: f["query"].as_str(),
                header_names: &names,
                user_agent: f["user_agent"].as_str(),
                recent_rate: f["recent_rate"].as_f64().unwrap() as f32,
            };
            let x = features::extract(&facts);
            let expected: Vec<f32> = case["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(x.to_vec(), expected, "{}", case["name"]);
            let probs = run(&plan, &x).unwrap();
            for (got, want) in probs.iter().zip(case["probabilities"].as_array().unwrap()) {
                worst = worst.max((got - want.as_f64().unwrap() as f32).abs());
            }
        }
        assert!(worst <= 1e-5, "tract differs from onnxruntime by {worst}");
    }

    #[test]
    fn the_rate_follows_the_client() {
        let m = RateMeter::new(Duration::from_secs(10), 100);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        let mut r = 0.0;
        for i in 0..200 {
            r = m.hit(a, t + Duration::from_millis(50 * i));
        }
        // 20 per second for 10 s: about 63% of the way to 20/s.
        assert!((11.0..15.0).contains(&r), "{r}");
        assert!(m.hit(b, t) < 0.2);
        // A minute of silence: nearly nothing left.
        assert!(m.hit(a, t + Duration::from_secs(70)) < 0.5);
    }

    #[test]
    fn a_model_that_is_not_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("edge-intent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.onnx");
        std::fs::write(&bad, b"not a model").unwrap();
        assert!(load(Some(&bad)).is_err());
        assert!(load(Some(&dir.join("missing.onnx"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
