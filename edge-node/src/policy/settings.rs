//! `[threat]`: signal weights, decay, thresholds.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

/// What a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    AuthFailure,
    RateLimited,
    MalformedRequest,
    ChallengeFailed,
    BlockedPath,
    /// The intent model is confident the request is an attack.
    AttackIntent,
    /// The intent model is confident the request is scraping.
    ScraperIntent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreatSettings {
    /// Score clients at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Scores halve every `half_life`.
    #[serde(default = "default_half_life", with = "crate::duration")]
    pub half_life: Duration,
    /// From this score on, clients must pass a challenge (0: never challenge). The drop
    /// threshold is `xdp.drop_threshold`, shared with the XDP program.
    #[serde(default = "default_challenge_threshold")]
    pub challenge_threshold: f64,
    /// How long an escalated source stays in the XDP threat map.
    #[serde(default = "default_block_ttl", with = "crate::duration")]
    pub block_ttl: Duration,
    /// Most sources scored at once (least recently seen are forgotten first).
    #[serde(default = "default_max_tracked")]
    pub max_tracked: u64,
    /// Paths nobody legitimate asks for (exact, or a prefix when ending in `/`).
    #[serde(default = "default_blocked_paths")]
    pub blocked_paths: Vec<String>,
    #[serde(default)]
    pub weights: Weights,
}

/// Score added per signal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    #[serde(default = "w_auth")]
    pub auth_failure: f64,
    #[serde(default = "w_rate")]
    pub rate_limited: f64,
    #[serde(default = "w_malformed")]
    pub malformed_request: f64,
    #[serde(default = "w_challenge")]
    pub challenge_failed: f64,
    #[serde(default = "w_blocked")]
    pub blocked_path: f64,
    #[serde(default = "w_attack_intent")]
    pub attack_intent: f64,
    #[serde(default = "w_scraper_intent")]
    pub scraper_intent: f64,
}

impl Weights {
    pub fn of(&self, s: Signal) -> f64 {
        match s {
            Signal::AuthFailure => self.auth_failure,
            Signal::RateLimited => self.rate_limited,
            Signal::MalformedRequest => self.malformed_request,
            Signal::ChallengeFailed => self.challenge_failed,
            Signal::BlockedPath => self.blocked_path,
            Signal::AttackIntent => self.attack_intent,
            Signal::ScraperIntent => self.scraper_intent,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_half_life() -> Duration {
    Duration::from_secs(120)
}
fn default_challenge_threshold() -> f64 {
    50.0
}
fn default_block_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_max_tracked() -> u64 {
    200_000
}
fn default_blocked_paths() -> Vec<String> {
    ["/.env", "/.git/", "/wp-login.php", "/xmlrpc.php"]
        .map(String::from)
        .to_vec()
}
fn w_auth() -> f64 {
    10.0
}
fn w_rate() -> f64 {
    2.0
}
fn w_malformed() -> f64 {
    10.0
}
fn w_challenge() -> f64 {
    20.0
}
fn w_blocked() -> f64 {
    25.0
}
fn w_attack_intent() -> f64 {
    15.0
}
fn w_scraper_intent() -> f64 {
    3.0
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            auth_failure: w_auth(),
            rate_limited: w_rate(),
            malformed_request: w_malformed(),
            challenge_failed: w_challenge(),
            blocked_path: w_blocked(),
            attack_intent: w_attack_intent(),
            scraper_intent: w_scraper_intent(),
        }
    }
}

impl Default for ThreatSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            half_life: default_half_life(),
            challenge_threshold: default_challenge_threshold(),
            block_ttl: default_block_ttl(),
            max_tracked: default_max_tracked(),
            blocked_paths: default_blocked_paths(),
            weights: Weights::default(),
        }
    }
}

impl ThreatSettings {
    pub fn validate(&self) -> Result<()> {
        let w = &self.weights;
        for (key, v) in [
            ("threat.challenge_threshold", self.challenge_threshold),
            ("threat.weights.auth_failure", w.auth_failure),
            ("threat.weights.rate_limited", w.rate_limited),
            ("threat.weights.malformed_request", w.malformed_request),
            ("threat.weights.challenge_failed", w.challenge_failed),
            ("threat.weights.blocked_path", w.blocked_path),
            ("threat.weights.attack_intent", w.attack_intent),
            ("threat.weights.scraper_intent", w.scraper_intent),
        ] {
            // NaN or infinity would poison every score it touches.
            if !(v.is_finite() && v >= 0.0) {
                bail!("{key} = {v} must be a finite number, 0 or more");
            }
        }
        // Scores decay by 2^(-elapsed / half_life): zero would divide by zero.
        if self.half_life.is_zero() {
            bail!("threat.half_life must be above 0 (e.g. \"120s\")");
        }
        if self.max_tracked == 0 {
            bail!("threat.max_tracked must be at least 1");
        }
        if self.block_ttl.is_zero() {
            bail!("threat.block_ttl must be above 0");
        }
        Ok(())
    }
}
