//! JWT verification: providers with their keys (secret, PEM, JWKS file, JWKS URL kept
//! fresh in the background), each key pinned to the algorithms of its kind, and the
//! claims a route needs (exp/nbf with leeway, iss and aud required when configured,
//! roles); a header naming `crit` extensions is refused.

pub mod keys;
pub mod settings;

use std::{collections::HashSet, sync::Arc};

use anyhow::Result;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde_json::Value;

pub use keys::PinnedKey;
pub use settings::JwtProviderSettings;

/// Who a valid token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub roles: Vec<String>,
}

/// Why a token was not accepted (for the log; the client only sees 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid(String),
}

pub struct JwtProvider {
    pub settings: JwtProviderSettings,
    algorithms: Vec<Algorithm>,
    static_keys: Vec<PinnedKey>,
    remote: Option<Arc<keys::RemoteKeys>>,
    /// Tokens already verified (see `VerifiedTokens`).
    verified: Arc<VerifiedTokens>,
}

/// Tokens already verified, with their `exp`: a client sends the same token with every
/// request, and an RSA or ECDSA verification costs 100+ µs. Bounded in size and held at
/// most `VERIFIED_TTL` (so a key removed from a JWKS stops verifying its tokens within
/// that time).
pub type VerifiedTokens = moka::sync::Cache<Arc<str>, (Identity, u64)>;

/// What a provider keeps across reloads: the last good JWKS (per name and URL) and the
/// tokens it verified (per settings and key material, which decide what verifies).
#[derive(Clone)]
pub struct ProviderState {
    pub last_good: Arc<keys::LastGoodJwks>,
    pub verified: Arc<VerifiedTokens>,
}

impl Default for ProviderState {
    fn default() -> Self {
        Self {
            last_good: Arc::default(),
            verified: Arc::new(verified_tokens()),
        }
    }
}

pub fn verified_tokens() -> VerifiedTokens {
    moka::sync::Cache::builder()
        .max_capacity(50_000)
        .time_to_live(VERIFIED_TTL)
        .build()
}

/// How long a verified token is trusted without verifying it again (never past its exp).
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

impl JwtProvider {
    /// Loads the configured keys (validated settings). A JWKS URL is fetched by
    /// `start` in the background.
    pub fn new(s: &JwtProviderSettings) -> Result<Self> {
        Self::keeping(s, |_| ProviderState::default())
    }

    /// Like `new`, with the state `kept` returns for the digest of the static key
    /// material (a reload passes what an earlier configuration left).
    pub fn keeping(
        s: &JwtProviderSettings,
        kept: impl FnOnce(&[u8; 32]) -> ProviderState,
    ) -> Result<Self> {
        let algorithms: Vec<Algorithm> =
            s.algorithms.iter().filter_map(|a| a.parse().ok()).collect();
        let (static_keys, material) = keys::load_static(s, &algorithms)?;
        let state = kept(&material);
        let remote = s
            .jwks_url
            .as_ref()
            .map(|url| keys::RemoteKeys::new(url, s, &algorithms, state.last_good.clone()))
            .transpose()?
            .map(Arc::new);
        if static_keys.is_empty() && remote.is_none() {
            anyhow::bail!(
                "jwt_provider {}: none of the keys fits the configured algorithms",
                s.name
            );
        }
        Ok(Self {
            settings: s.clone(),
            algorithms,
            static_keys,
            remote,
            verified: state.verified,
        })
    }

    /// Starts the background JWKS refresh (stops when the provider is dropped).
    pub fn start(&self) {
        if let Some(r) = &self.remote {
            keys::RemoteKeys::spawn_refresh(r);
        }
    }

    /// Verifies `token`: signature with a key pinned to the header's algorithm, then
    /// exp/nbf/iss/aud.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if let Some((id, exp)) = self.verified.get(token) {
            if crate::clock::unix_now() <= exp.saturating_add(self.settings.leeway.as_secs()) {
                return Ok(id);
            }
            self.verified.invalidate(token);
        }
        let header =
            decode_header(token).map_err(|e| AuthError::Invalid(format!("header: {e}")))?;
        // RFC 7515 4.1.11: extensions named in `crit` must be understood, and the node
        // understands none.
        if let Some(crit) = &header.crit {
            return Err(AuthError::Invalid(format!(
                "critical header extensions {crit:?} not understood"
            )));
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        let mut keys: Vec<PinnedKey> = self.candidates(header.kid.as_deref(), header.alg);
        if keys.is_empty()
            && let (Some(kid), Some(remote)) = (&header.kid, &self.remote)
        {
            // A key the provider may just have rotated in.
            remote.refetch_for_unknown_kid(kid).await;
            keys = self.candidates(Some(kid), header.alg);
        }
        if keys.is_empty() {
            return Err(AuthError::Invalid(format!(
                "no key for kid {:?} and {:?}",
                header.kid, header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        // A configured iss or aud is required, not only checked when present: a token
        // minted for another audience that simply leaves `aud` out must not pass.
        let mut required = vec!["exp"];
        if self.settings.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&self.settings.issuer);
            required.push("iss");
        }
        if self.settings.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.settings.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let mut last = String::new();
        for k in &keys {
            match decode::<serde_json::Map<String, Value>>(token, &k.key, &validation) {
                Ok(data) => {
                    let id = self.identity(&data.claims);
                    if let Some(exp) = data.claims.get("exp").and_then(Value::as_u64) {
                        self.verified.insert(Arc::from(token), (id.clone(), exp));
                    }
                    return Ok(id);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(AuthError::Invalid(last))
    }

    /// Keys that may verify a token with `kid` and `alg`.
    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<PinnedKey> {
        let remote = self.remote.as_ref().map(|r| r.current());
        self.static_keys
            .iter()
            .chain(remote.iter().flat_map(|v| v.iter()))
            .filter(|k| k.algorithms.contains(&alg) && k.key.family() == alg.family())
            .filter(|k| match (kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => true,
                (None, _) => true,
            })
            .cloned()
            .collect()
    }

    fn identity(&self, claims: &serde_json::Map<String, Value>) -> Identity {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let roles = match claims.get(&self.settings.roles_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Identity { sub, roles }
    }
}

/// Whether `have` holds any of `any_of` (an empty requirement is met by everyone).
pub fn has_any_role(have: &[String], any_of: &[String]) -> bool {
    if any_of.is_empty() {
        return true;
    }
    let have: HashSet<&str> = have.iter().map(String::as_str).collect();
    any_of.iter().any(|r| have.contains(r.as_str()))
}
