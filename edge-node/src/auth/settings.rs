//! `[[jwt_provider]]`: who issues the tokens a route accepts, and with which keys.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderSettings {
    pub name: String,
    /// Algorithms accepted (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384,
    /// EdDSA). Every key is pinned to the algorithms of its own kind: an RSA public key
    /// is never used as an HMAC secret, and `none` is never accepted.
    pub algorithms: Vec<String>,
    /// Accepted `iss` values (empty: not checked); when set, a token without `iss` fails.
    #[serde(default)]
    pub issuer: Vec<String>,
    /// Accepted `aud` values (empty: not checked); when set, a token without `aud` fails.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "crate::duration")]
    pub leeway: Duration,
    /// Also take the token from this cookie (after `Authorization: Bearer`).
    #[serde(default)]
    pub cookie: Option<String>,
    /// Claim holding the user's roles (an array of strings, or one space-separated string).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Headers the origin receives the identity in (client copies are always removed).
    #[serde(default = "default_user_header")]
    pub user_header: String,
    #[serde(default = "default_roles_header")]
    pub roles_header: String,
    // ---- keys (any combination) ----
    /// HMAC secret (HS* algorithms), or read from `secret_file`.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RSA, EC or Ed25519).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A JWKS document on disk (re-read on reload).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, fetched in the background: refreshed before its max-age runs out (or
    /// every `jwks_refresh`), refetched when a token names an unknown `kid` (at most once
    /// per `jwks_min_refetch`); the last good keys stay while the provider is down.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh", with = "crate::duration")]
    pub jwks_refresh: Duration,
    #[serde(default = "default_jwks_min_refetch", with = "crate::duration")]
    pub jwks_min_refetch: Duration,
}

/// Most clock skew `leeway` may allow.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// Request headers the node or the origin reads to frame, route, authenticate or
/// answer a request.
const NEEDED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "transfer-encoding",
    "te",
    "content-length",
    "content-type",
    "authorization",
    "cookie",
    "expect",
    "accept",
    "accept-encoding",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "cache-control",
];

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_user_header() -> String {
    "x-user-id".into()
}
fn default_roles_header() -> String {
    "x-user-roles".into()
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}
fn default_jwks_min_refetch() -> Duration {
    Duration::from_secs(30)
}

impl JwtProviderSettings {
    pub fn validate(&self) -> Result<()> {
        if self.algorithms.is_empty() {
            bail!("jwt_provider {}: algorithms is empty", self.name);
        }
        for a in &self.algorithms {
            if a.parse::<jsonwebtoken::Algorithm>().is_err() {
                bail!(
                    "jwt_provider {}: algorithm {a:?} is not supported",
                    self.name
                );
            }
        }
        let keys = self.secret.is_some()
            || self.secret_file.is_some()
            || self.public_key_file.is_some()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some();
        if !keys {
            bail!(
                "jwt_provider {}: no keys (secret, secret_file, public_key_file, jwks_file or jwks_url)",
                self.name
            );
        }
        if let Some(u) = &self.jwks_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            bail!("jwt_provider {}: jwks_url must be http(s)://", self.name);
        }
        for h in [&self.user_header, &self.roles_header] {
            let Ok(name) = http::HeaderName::from_bytes(h.as_bytes()) else {
                bail!("jwt_provider {}: {h:?} is not a header name", self.name);
            };
            // The identity headers are removed from every request on every route: never
            // one that framing, routing or authentication reads.
            if NEEDED_REQUEST_HEADERS.contains(&name.as_str()) {
                bail!(
                    "jwt_provider {}: user_header / roles_header {h:?} is a header requests need",
                    self.name
                );
            }
        }
        if self.user_header.eq_ignore_ascii_case(&self.roles_header) {
            bail!(
                "jwt_provider {}: user_header and roles_header are the same header",
                self.name
            );
        }
        if self.leeway > MAX_LEEWAY {
            bail!(
                "jwt_provider {}: leeway is longer than {}s (clock skew, not a grace period)",
                self.name,
                MAX_LEEWAY.as_secs()
            );
        }
        if self.jwks_refresh < Duration::from_secs(1) {
            bail!(
                "jwt_provider {}: jwks_refresh must be at least 1s",
                self.name
            );
        }
        Ok(())
    }
}
