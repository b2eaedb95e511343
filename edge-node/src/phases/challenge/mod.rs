//! Challenge phase: a client whose threat score reached `threat.challenge_threshold`
//! must show a clearance cookie; without one it gets a proof-of-work page (browsers) or
//! a 429 with a JSON body (API routes). Solving the work — SHA-256 of the signed token
//! and a nonce with `difficulty` leading zero bits — earns an HMAC-signed, expiring
//! clearance bound to the client's address. Keys rotate: the first signs, all verify.
//! A client at the drop threshold is refused (403) outright. Clean clients: nothing.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use ring::{digest, hmac, rand::SecureRandom};
use serde::Deserialize;
use tracing::warn;

use crate::{
    error::{Body, EdgeError, ErrorKind, empty},
    policy::{Signal, Standing, ThreatEngine},
    request::{Flow, Phase, PhaseFuture, RequestCtx},
};

/// The challenge phase: the page's answer (before routing: on any host served), then
/// each request's standing (with the route known: API routes get JSON).
pub struct ChallengePhase {
    pub challenger: Challenger,
    pub threat: std::sync::Arc<ThreatEngine>,
}

impl Phase for ChallengePhase {
    fn name(&self) -> &'static str {
        "challenge"
    }

    fn early_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut http::Request<Body>,
    ) -> PhaseFuture<'a> {
        Box::pin(async move {
            if req.uri().path() != ANSWER_PATH || req.method() != http::Method::POST {
                return Ok(Flow::Continue);
            }
            let body = std::mem::replace(req.body_mut(), crate::error::empty());
            let form = crate::body::read_bounded(body, 4096).await.map_err(|e| {
                EdgeError::new(ErrorKind::BadRequest, format!("challenge answer: {e}"))
            })?;
            self.challenger
                .answer(ctx.client_ip, &form, ctx.scheme == "https")
                .map(Flow::Answer)
                .inspect_err(|_| {
                    self.threat.signal(ctx.source(), Signal::ChallengeFailed);
                })
        })
    }

    fn request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut http::Request<Body>,
    ) -> PhaseFuture<'a> {
        Box::pin(std::future::ready(self.standing(ctx, req)))
    }
}

impl ChallengePhase {
    fn standing(&self, ctx: &RequestCtx, req: &mut http::Request<Body>) -> Result<Flow, EdgeError> {
        match self.threat.standing(ctx.client_ip) {
            // The clearance cookie is the node's: never forwarded, challenged or not.
            Standing::Clear => {
                self.challenger.remove_clearance(req.headers_mut());
            }
            Standing::Drop => {
                return Err(EdgeError::new(
                    ErrorKind::Forbidden,
                    "source over the drop threshold",
                ));
            }
            Standing::Challenge => {
                if !self
                    .challenger
                    .take_clearance(req.headers_mut(), ctx.client_ip)
                {
                    let back = req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string();
                    return Err(self.challenger.challenge(ctx.client_ip, &back, ctx.api()));
                }
            }
        }
        Ok(Flow::Continue)
    }
}

/// Where the page posts its answer (any host the node serves).
pub const ANSWER_PATH: &str = "/.edge-node/challenge";
const SOLVER_JS: &str = include_str!("solver.js");

/// `[challenge]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeSettings {
    /// HMAC keys (at least 32 characters each): the first signs, all verify, so a key
    /// can be rotated in without voiding clearances. Or `secret_file`, one per line.
    /// With neither, a random key per start (clearances end at a restart).
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Leading zero bits the work needs (each bit doubles the average work).
    #[serde(default = "default_difficulty")]
    pub difficulty: u32,
    /// How long a clearance lasts.
    #[serde(default = "default_ttl", with = "crate::duration")]
    pub clearance_ttl: Duration,
    /// The clearance cookie's name (never forwarded to origins).
    #[serde(default = "default_cookie")]
    pub cookie: String,
}

fn default_difficulty() -> u32 {
    16
}
fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_cookie() -> String {
    "edge_clearance".into()
}

impl Default for ChallengeSettings {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            secret_file: None,
            difficulty: default_difficulty(),
            clearance_ttl: default_ttl(),
            cookie: default_cookie(),
        }
    }
}

impl ChallengeSettings {
    fn keys(&self) -> Result<Vec<String>> {
        let mut keys = self.secrets.clone();
        if let Some(p) = &self.secret_file {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("challenge.secret_file {}", p.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        if keys.iter().any(|k| k.len() < 32) {
            bail!("challenge: every secret needs at least 32 characters");
        }
        Ok(keys)
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=32).contains(&self.difficulty) {
            bail!("challenge.difficulty must be 1..=32 bits");
        }
        if self.cookie.is_empty()
            || !self
                .cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bail!("challenge.cookie {:?} is not a cookie name", self.cookie);
        }
        self.keys().map(|_| ())
    }
}

pub struct Challenger {
    keys: Vec<hmac::Key>,
    difficulty: u32,
    ttl: Duration,
    cookie: String,
    rng: ring::rand::SystemRandom,
}

/// Leading zero bits of a digest.
fn zero_bits(d: &[u8]) -> u32 {
    let mut n = 0;
    for b in d {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Challenger {
    pub fn new(s: &ChallengeSettings) -> Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let mut keys: Vec<hmac::Key> = s
            .keys()?
            .iter()
            .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k.as_bytes()))
            .collect();
        if keys.is_empty() {
            keys.push(
                hmac::Key::generate(hmac::HMAC_SHA256, &rng)
                    .map_err(|_| anyhow::anyhow!("no randomness for the challenge key"))?,
            );
        }
        Ok(Self {
            keys,
            difficulty: s.difficulty,
            ttl: s.clearance_ttl,
            cookie: s.cookie.clone(),
            rng,
        })
    }

    fn sign(&self, msg: &str) -> String {
        B64.encode(hmac::sign(&self.keys[0], msg.as_bytes()).as_ref())
    }

    fn signed_by_us(&self, msg: &str, sig: &str) -> bool {
        let Ok(sig) = B64.decode(sig) else {
            return false;
        };
        self.keys
            .iter()
            .any(|k| hmac::verify(k, msg.as_bytes(), &sig).is_ok())
    }

    /// Whether the request carries a valid clearance for `ip`. The cookie is removed
    /// either way: it is the node's, not the origin's.
    pub fn take_clearance(&self, headers: &mut HeaderMap, ip: IpAddr) -> bool {
        let Some(value) = self.remove_clearance(headers) else {
            return false;
        };
        self.clearance_valid(&value, ip)
    }

    /// Takes the clearance cookie off a request, whatever the client's standing: it is
    /// the node's, never the origin's. Its value, if there was one.
    pub fn remove_clearance(&self, headers: &mut HeaderMap) -> Option<String> {
        // Most requests carry no such cookie: one scan before any parsing.
        let present = headers
            .get_all(header::COOKIE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains(self.cookie.as_str())));
        if !present {
            return None;
        }
        let mut found = None;
        let mut kept = Vec::new();
        for c in crate::headers::cookies(headers) {
            match c.split_once('=') {
                Some((k, val)) if k == self.cookie => found = Some(val.to_string()),
                _ => kept.push(c.to_string()),
            }
        }
        if found.is_some() {
            headers.remove(header::COOKIE);
            if !kept.is_empty()
                && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
            {
                headers.insert(header::COOKIE, v);
            }
        }
        found
    }

    fn clearance_valid(&self, value: &str, ip: IpAddr) -> bool {
        let mut parts = value.split('.');
        let (Some("v1"), Some(exp), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(exp_secs) = exp.parse::<u64>() else {
            return false;
        };
        exp_secs > crate::clock::unix_now() && self.signed_by_us(&format!("clear|{ip}|{exp}"), sig)
    }

    /// The challenge: an HTML page doing the work (browsers), or a JSON 429 (APIs).
    pub fn challenge(&self, ip: IpAddr, return_to: &str, api: bool) -> EdgeError {
        let mut err = EdgeError::new(ErrorKind::Challenged, format!("{ip} must pass a challenge"))
            .with_header(header::CACHE_CONTROL, "no-store");
        if api {
            err.json = true;
            return err.with_header(header::RETRY_AFTER, "60");
        }
        let exp = crate::clock::unix_now() + 300;
        let mut nonce = [0u8; 12];
        let _ = self.rng.fill(&mut nonce);
        let rand = B64.encode(nonce);
        let token = format!(
            "v1.{exp}.{rand}.{}",
            self.sign(&format!("pow|{ip}|{exp}|{rand}"))
        );
        let page = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Checking your browser</title>\
             <meta name=\"robots\" content=\"noindex\"></head><body>\
             <p id=\"edge-status\">Checking your browser before you continue. This takes a moment.</p>\
             <noscript>This check needs JavaScript.</noscript>\
             <form id=\"edge-challenge\" method=\"POST\" action=\"{ANSWER_PATH}\" data-difficulty=\"{}\">\
             <input type=\"hidden\" name=\"t\" value=\"{}\"><input type=\"hidden\" name=\"n\" value=\"\">\
             <input type=\"hidden\" name=\"r\" value=\"{}\"></form>\
             <script>{SOLVER_JS}</script></body></html>\n",
            self.difficulty,
            html_escape(&token),
            html_escape(return_to),
        );
        err.body = Some(("text/html; charset=utf-8", Bytes::from(page)));
        err
    }

    /// A clearance for `ip`, valid for `clearance_ttl` (the cookie's value).
    pub fn clearance(&self, ip: IpAddr) -> String {
        let exp = crate::clock::unix_now().saturating_add(self.ttl.as_secs());
        format!("v1.{exp}.{}", self.sign(&format!("clear|{ip}|{exp}")))
    }

    /// The clearance cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.cookie
    }

    /// The page's answer (`POST ANSWER_PATH`, a form body): a clearance and a redirect
    /// back, or `Err` with a new challenge (and the caller counts a failed challenge).
    pub fn answer(
        &self,
        ip: IpAddr,
        form: &[u8],
        https: bool,
    ) -> Result<Response<Body>, EdgeError> {
        let mut token = String::new();
        let mut nonce = String::new();
        let mut back = String::from("/");
        for (k, v) in form_urlencoded::parse(form) {
            match &*k {
                "t" => token = v.into_owned(),
                "n" => nonce = v.into_owned(),
                "r" => back = v.into_owned(),
                _ => {}
            }
        }
        // Only paths on this host: never an open redirect.
        if !back.starts_with('/') || back.starts_with("//") || back.contains('\\') {
            back = "/".into();
        }
        let valid = (|| {
            let mut p = token.split('.');
            let (Some("v1"), Some(exp), Some(rand), Some(sig), None) =
                (p.next(), p.next(), p.next(), p.next(), p.next())
            else {
                return false;
            };
            let fresh = exp
                .parse::<u64>()
                .is_ok_and(|e| e > crate::clock::unix_now());
            let ours = self.signed_by_us(&format!("pow|{ip}|{exp}|{rand}"), sig);
            let work = nonce.len() <= 20
                && nonce.bytes().all(|b| b.is_ascii_digit())
                && zero_bits(
                    digest::digest(&digest::SHA256, format!("{token}:{nonce}").as_bytes()).as_ref(),
                ) >= self.difficulty;
            fresh && ours && work
        })();
        if !valid {
            warn!(%ip, "challenge answer refused");
            return Err(self.challenge(ip, &back, false));
        }
        let clearance = self.clearance(ip);
        let cookie = format!(
            "{}={clearance}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{}",
            self.cookie,
            self.ttl.as_secs(),
            if https { "; Secure" } else { "" }
        );
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::SEE_OTHER;
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&back) {
            h.insert(header::LOCATION, v);
        }
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.insert(header::SET_COOKIE, v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solve(token: &str, difficulty: u32) -> u64 {
        (0..)
            .find(|n| {
                zero_bits(
                    digest::digest(&digest::SHA256, format!("{token}:{n}").as_bytes()).as_ref(),
                ) >= difficulty
            })
            .unwrap()
    }

    #[test]
    fn work_earns_a_clearance_bound_to_the_address() {
        let s = ChallengeSettings {
            secrets: vec!["k".repeat(32)],
            difficulty: 8,
            ..Default::default()
        };
        let c = Challenger::new(&s).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let page = c.challenge(ip, "/x?y=1", false);
        let html = String::from_utf8(page.body.unwrap().1.to_vec()).unwrap();
        let token = html
            .split("name=\"t\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        // A wrong nonce is refused; the right one gets a cookie and a redirect back.
        let bad = format!("t={token}&n=x&r=%2Fx");
        assert!(c.answer(ip, bad.as_bytes(), false).is_err());
        let n = solve(&token, 8);
        let good = format!("t={token}&n={n}&r=%2Fx%3Fy%3D1");
        // Another address cannot use the token.
        assert!(
            c.answer("192.0.2.2".parse().unwrap(), good.as_bytes(), false)
                .is_err()
        );
        let resp = c.answer(ip, good.as_bytes(), false).unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()[header::LOCATION], "/x?y=1");
        let cookie = resp.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; {cookie}")).unwrap(),
        );
        assert!(c.take_clearance(&mut h.clone(), ip));
        assert!(!c.take_clearance(&mut h.clone(), "192.0.2.2".parse().unwrap()));
        c.take_clearance(&mut h, ip);
        assert_eq!(h[header::COOKIE], "a=1", "the clearance is not forwarded");
        // A key rotated in verifies old clearances while signing new ones.
        let rotated = Challenger::new(&ChallengeSettings {
            secrets: vec!["n".repeat(32), "k".repeat(32)],
            ..s
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        assert!(rotated.take_clearance(&mut h, ip));
        // Open redirects are not followed.
        let evil = format!("t={token}&n={n}&r=%2F%2Fevil.example");
        let resp = c.answer(ip, evil.as_bytes(), false).unwrap();
        assert_eq!(resp.headers()[header::LOCATION], "/");
    }
}
