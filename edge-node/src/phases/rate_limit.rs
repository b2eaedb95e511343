//! Rate-limit phase: token buckets per route, keyed by the client's address (the peer,
//! or what a trusted hop reported), the authenticated user, the route as a whole, or an
//! API-key header. Over the limit: 429 with `Retry-After` and the IETF `RateLimit-Policy`
//! / `RateLimit` fields. With no `[[route.rate_limit]]` the phase does nothing.

use std::{net::IpAddr, sync::Arc};

use anyhow::{Result, bail};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Deserialize;

use crate::{
    error::{Body, EdgeError, ErrorKind},
    hash::stable_hash,
    limits::{Decision, KeyedLimiter},
    policy::{Signal, ThreatEngine},
    request::{EarlyData, Flow, Phase, PhaseFuture, RequestCtx},
};

/// The rate-limit phase: every limit of the route; the tightest one's fields go on
/// the response.
pub struct RateLimitPhase {
    /// Per route (by index).
    pub routes: Vec<Vec<RateLimit>>,
    pub threat: Arc<ThreatEngine>,
}

/// The RateLimit fields of a request that passed, for its response.
struct LimitFields(Vec<(HeaderName, HeaderValue)>);

impl Phase for RateLimitPhase {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut http::Request<Body>,
    ) -> PhaseFuture<'a> {
        let limited = ctx
            .route_index()
            .is_some_and(|i| !self.routes[i].is_empty());
        if !limited {
            return Box::pin(std::future::ready(Ok(Flow::Continue)));
        }
        if ctx.validated {
            return Box::pin(self.check(ctx, req));
        }
        // 0-RTT early data: whoever sent it may have forged the source address, and its
        // requests must not spend the buckets of the address's owner. They wait for the
        // handshake that proves the address (a round trip for a real client); a flight
        // nobody can complete gets 425 and charges nothing.
        let early = req.extensions().get::<EarlyData>().cloned();
        Box::pin(async move {
            let proven = match early {
                Some(early) => early.proven().await,
                None => false,
            };
            if !proven {
                return Err(EdgeError::new(
                    ErrorKind::TooEarly,
                    "early data on a rate-limited route; the handshake did not complete",
                ));
            }
            ctx.validated = true;
            self.check(ctx, req).await
        })
    }

    fn response(&self, ctx: &mut RequestCtx, resp: &mut http::Response<Body>) {
        if let Some(LimitFields(fields)) = ctx.state.take() {
            for (k, v) in fields {
                resp.headers_mut().insert(k, v);
            }
        }
    }
}

impl RateLimitPhase {
    async fn check(
        &self,
        ctx: &mut RequestCtx,
        req: &http::Request<Body>,
    ) -> Result<Flow, EdgeError> {
        let Some(limits) = ctx
            .route_index()
            .map(|i| &self.routes[i])
            .filter(|l| !l.is_empty())
        else {
            return Ok(Flow::Continue);
        };
        let fields = check(
            limits,
            // An IPv6 client by its source prefix, as scores and the kernel count it.
            self.threat.key(ctx.client_ip),
            ctx.user.as_deref(),
            req.headers(),
        )
        .await
        .inspect_err(|_| {
            self.threat.signal(ctx.source(), Signal::RateLimited);
        })?;
        ctx.state.put(LimitFields(fields));
        Ok(Flow::Continue)
    }
}

/// `[[route.rate_limit]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// `client_ip`, `user` (the token's `sub`; the client IP without one), `route`, or
    /// `header:NAME` (the client IP without the header).
    #[serde(default = "default_key")]
    pub key: String,
    /// Sustained requests per second (fractions allowed).
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: u64,
    /// Most keys remembered (least recently seen forgotten first).
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
    /// `local` (this node counts alone) or `fleet` (counted across the nodes sharing
    /// `[fleet] redis`).
    #[serde(default)]
    pub scope: LimitScope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    #[default]
    Local,
    Fleet,
}

fn default_key() -> String {
    "client_ip".into()
}
fn default_max_keys() -> u64 {
    100_000
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LimitKey {
    ClientIp,
    User,
    Route,
    Header(HeaderName),
}

impl LimitKey {
    fn name(&self) -> &'static str {
        match self {
            LimitKey::ClientIp => "client_ip",
            LimitKey::User => "user",
            LimitKey::Route => "route",
            LimitKey::Header(_) => "header",
        }
    }
}

pub struct RateLimit {
    key: LimitKey,
    limiter: Arc<KeyedLimiter<u64>>,
    /// Counted across the fleet (`scope = "fleet"`) instead of by `limiter`.
    fleet: Option<Arc<crate::fleet::limits::FleetLimit>>,
}

impl RateLimitSettings {
    pub fn validate(&self) -> Result<()> {
        if !(self.per_second > 0.0 && self.per_second.is_finite()) || self.burst == 0 {
            bail!("rate_limit: per_second must be above 0 and burst at least 1");
        }
        // The bucket counts nanoseconds: a refill time past the longest duration would
        // overflow the arithmetic (and a year-long window is not a rate limit).
        let window = self.burst as f64 / self.per_second;
        if window > crate::duration::MAX.as_secs_f64() {
            bail!(
                "rate_limit: burst / per_second = {window:.0} s, more than a year (365d) to refill"
            );
        }
        if self.max_keys == 0 {
            bail!("rate_limit: max_keys must be at least 1");
        }
        self.limit_key().map(|_| ())
    }

    /// Fresh buckets for these settings.
    pub fn limiter(&self) -> KeyedLimiter<u64> {
        KeyedLimiter::new(self.per_second, self.burst, self.max_keys)
    }

    pub fn fleet_scoped(&self) -> bool {
        self.scope == LimitScope::Fleet
    }

    /// What the settings say the buckets are keyed by, with the same rate and burst:
    /// buckets built for one are good for the other (a reload keeps them).
    pub fn identity(&self) -> (String, u64, u64, u64) {
        (
            self.key.clone(),
            self.per_second.to_bits(),
            self.burst,
            self.max_keys,
        )
    }

    fn limit_key(&self) -> Result<LimitKey> {
        let s = self;
        Ok(match s.key.split_once(':') {
            None if s.key == "client_ip" => LimitKey::ClientIp,
            None if s.key == "user" => LimitKey::User,
            None if s.key == "route" => LimitKey::Route,
            Some(("header", h)) => LimitKey::Header(HeaderName::from_bytes(h.as_bytes())?),
            _ => bail!(
                "rate_limit key {:?} is not client_ip, user, route or header:NAME",
                s.key
            ),
        })
    }
}

impl RateLimit {
    /// The limit with fresh buckets.
    pub fn new(s: &RateLimitSettings) -> Result<Self> {
        Self::sharing(s, Arc::new(s.limiter()))
    }

    /// The limit counting in `limiter` (buckets an earlier configuration filled).
    pub fn sharing(s: &RateLimitSettings, limiter: Arc<KeyedLimiter<u64>>) -> Result<Self> {
        Ok(Self {
            key: s.limit_key()?,
            limiter,
            fleet: None,
        })
    }

    /// The limit counted across the fleet by `fleet`.
    pub fn counted_by(mut self, fleet: Arc<crate::fleet::limits::FleetLimit>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The bucket's key: a hash with the kind mixed in, so a user named like an
    /// address never shares its bucket.
    fn key_of(&self, client: IpAddr, user: Option<&str>, headers: &HeaderMap) -> u64 {
        let ip = || match client {
            IpAddr::V4(v4) => stable_hash(&v4.octets()) ^ 0x4,
            IpAddr::V6(v6) => stable_hash(&v6.octets()) ^ 0x6,
        };
        match &self.key {
            LimitKey::ClientIp => ip(),
            LimitKey::Route => 0,
            LimitKey::User => user
                .filter(|u| !u.is_empty())
                .map_or_else(ip, |u| stable_hash(u.as_bytes()) ^ 0x75),
            LimitKey::Header(h) => headers
                .get(h)
                .map_or_else(ip, |v| stable_hash(v.as_bytes()) ^ 0x68),
        }
    }

    fn fields(&self, d: &Decision) -> [(HeaderName, String); 2] {
        let name = self.key.name();
        [
            (
                HeaderName::from_static("ratelimit-policy"),
                format!(
                    "\"{name}\";q={};w={}",
                    self.limiter.burst(),
                    self.limiter.window().as_secs().max(1)
                ),
            ),
            (
                HeaderName::from_static("ratelimit"),
                format!(
                    "\"{name}\";r={};t={}",
                    d.remaining,
                    d.reset_after.as_secs_f64().ceil() as u64
                ),
            ),
        ]
    }
}

/// Applies every limit of the route; the fields of the tightest are returned for the
/// response, or the 429. A fleet-scoped limit may wait for Redis (bounded by
/// `fleet.timeout`).
pub async fn check(
    limits: &[RateLimit],
    client: IpAddr,
    user: Option<&str>,
    headers: &HeaderMap,
) -> Result<Vec<(HeaderName, HeaderValue)>, EdgeError> {
    // CLOCK_MONOTONIC, as the XDP buckets use: never near zero, so a fresh
    // bucket (TAT 0) is never "ahead".
    let now = crate::clock::now_ns();
    let mut tightest: Option<(&RateLimit, Decision)> = None;
    for l in limits {
        let key = l.key_of(client, user, headers);
        let d = match &l.fleet {
            Some(f) => f.check(key).await,
            None => l.limiter.check(&key, now),
        };
        if !d.allowed {
            let retry = d.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let mut err = EdgeError::new(
                ErrorKind::TooManyRequests,
                format!("over the {} limit", l.key.name()),
            )
            .with_header(header::RETRY_AFTER, retry.to_string());
            for (k, v) in l.fields(&d) {
                err = err.with_header(k, v);
            }
            return Err(err);
        }
        if tightest.is_none_or(|(_, t)| d.remaining < t.remaining) {
            tightest = Some((l, d));
        }
    }
    Ok(tightest
        .map(|(l, d)| {
            l.fields(&d)
                .into_iter()
                .filter_map(|(k, v)| HeaderValue::from_str(&v).ok().map(|v| (k, v)))
                .collect()
        })
        .unwrap_or_default())
}
