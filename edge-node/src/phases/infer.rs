//! Infer phase: the intent model's class for the request (features taken by the early
//! phase, as the client sent it), told to the origin in a header; a confident attack or
//! scraper is a threat signal. Runs before the cache, so requests answered from it (a
//! scraper's listing pages) are judged too. With intent off, nothing.

use std::sync::Arc;

use crate::{
    error::Body,
    intent::Intent,
    metrics::Metrics,
    policy::{Signal, ThreatEngine},
    request::{Flow, Phase, PhaseFuture, RequestCtx},
};

pub struct InferPhase {
    pub intent: Arc<Intent>,
    pub metrics: Arc<Metrics>,
    pub threat: Arc<ThreatEngine>,
}

impl Phase for InferPhase {
    fn name(&self) -> &'static str {
        "infer"
    }

    fn request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut http::Request<Body>,
    ) -> PhaseFuture<'a> {
        let Some(x) = ctx.intent_features.take() else {
            return Box::pin(std::future::ready(Ok(Flow::Continue)));
        };
        Box::pin(async move {
            // A bounded wait: without a prediction the request goes on unlabelled.
            let prediction = match self.intent.predict(x).await {
                Ok(p) => {
                    self.metrics.intent(p.name());
                    ctx.intent = Some(p.name());
                    if p.confidence >= self.intent.signal_confidence {
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
            };
            self.intent.forward(prediction, req.headers_mut());
            Ok(Flow::Continue)
        })
    }
}
