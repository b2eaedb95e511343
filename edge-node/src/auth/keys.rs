//! Verification keys: loaded from the configuration, or from a JWKS document on disk or
//! at a URL. Every key carries the algorithms it may verify, derived from its own kind
//! (and its JWK `alg`, when given) and the provider's list.

use std::{
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::{Algorithm, DecodingKey, jwk::JwkSet};
use tracing::{info, warn};

use super::JwtProviderSettings;

#[derive(Clone)]
pub struct PinnedKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// Keys from `secret`, `secret_file`, `public_key_file` and `jwks_file`, and a digest of
/// what they were loaded from (the same digest: the same keys).
pub fn load_static(
    s: &JwtProviderSettings,
    algs: &[Algorithm],
) -> Result<(Vec<PinnedKey>, [u8; 32])> {
    let mut out = Vec::new();
    let mut material = ring::digest::Context::new(&ring::digest::SHA256);
    // Length-prefixed, so no two sets of sources spell the same material.
    let mut digest = |kind: u8, bytes: &[u8]| {
        material.update(&[kind]);
        material.update(&(bytes.len() as u64).to_be_bytes());
        material.update(bytes);
    };
    let of_family = |f: jsonwebtoken::AlgorithmFamily| -> Vec<Algorithm> {
        algs.iter().copied().filter(|a| a.family() == f).collect()
    };
    let secret = match (&s.secret, &s.secret_file) {
        (Some(v), _) => Some(v.clone()),
        (None, Some(p)) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("jwt_provider {}: cannot read {}", s.name, p.display()))?
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    if let Some(secret) = secret {
        digest(1, secret.as_bytes());
        if secret.len() < 32 {
            anyhow::bail!(
                "jwt_provider {}: an HMAC secret needs at least 32 bytes",
                s.name
            );
        }
        out.push(PinnedKey {
            kid: None,
            algorithms: of_family(jsonwebtoken::AlgorithmFamily::Hmac),
            key: DecodingKey::from_secret(secret.as_bytes()),
        });
    }
    if let Some(p) = &s.public_key_file {
        let pem = std::fs::read(p)
            .with_context(|| format!("jwt_provider {}: cannot read {}", s.name, p.display()))?;
        digest(2, &pem);
        let (key, family) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            (k, jsonwebtoken::AlgorithmFamily::Rsa)
        } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            (k, jsonwebtoken::AlgorithmFamily::Ec)
        } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
            (k, jsonwebtoken::AlgorithmFamily::Ed)
        } else {
            anyhow::bail!(
                "jwt_provider {}: {} is not an RSA, EC or Ed25519 public key in PEM",
                s.name,
                p.display()
            );
        };
        out.push(PinnedKey {
            kid: None,
            algorithms: of_family(family),
            key,
        });
    }
    if let Some(p) = &s.jwks_file {
        let text = std::fs::read(p)
            .with_context(|| format!("jwt_provider {}: cannot read {}", s.name, p.display()))?;
        digest(3, &text);
        let set: JwkSet = serde_json::from_slice(&text)
            .with_context(|| format!("jwt_provider {}: {} is not a JWKS", s.name, p.display()))?;
        out.extend(from_jwks(&set, algs, &s.name));
    }
    // Keys that fit none of the configured algorithms would never verify anything.
    out.retain(|k| !k.algorithms.is_empty());
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(material.finish().as_ref());
    Ok((out, fingerprint))
}

/// The last JWKS document a provider fetched. It outlives the configuration (kept per
/// provider name and URL), so a reload while the provider is down keeps its keys.
#[derive(Default)]
pub struct LastGoodJwks(RwLock<Option<Arc<JwkSet>>>);

/// The usable keys of a JWKS.
pub fn from_jwks(set: &JwkSet, algs: &[Algorithm], provider: &str) -> Vec<PinnedKey> {
    let mut out = Vec::new();
    for jwk in &set.keys {
        let key = match DecodingKey::from_jwk(jwk) {
            Ok(k) => k,
            Err(e) => {
                warn!(provider, kid = ?jwk.common.key_id, error = %e, "JWKS key skipped");
                continue;
            }
        };
        let family = key.family();
        let allowed: Vec<Algorithm> = match jwk.common.key_algorithm {
            Some(ka) => match Algorithm::try_from(ka) {
                Ok(a) if algs.contains(&a) && a.family() == family => vec![a],
                _ => Vec::new(),
            },
            None => algs
                .iter()
                .copied()
                .filter(|a| a.family() == family)
                .collect(),
        };
        if allowed.is_empty() {
            continue;
        }
        out.push(PinnedKey {
            kid: jwk.common.key_id.clone(),
            algorithms: allowed,
            key,
        });
    }
    out
}

type FetchClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<bytes::Bytes>>;

/// Keys from a JWKS URL.
pub struct RemoteKeys {
    url: Uri,
    provider: String,
    algorithms: Vec<Algorithm>,
    refresh: Duration,
    min_refetch: Duration,
    client: FetchClient,
    keys: RwLock<Arc<Vec<PinnedKey>>>,
    last_good: Arc<LastGoodJwks>,
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl RemoteKeys {
    /// Starts from the keys of `last_good` (what an earlier configuration fetched).
    pub fn new(
        url: &str,
        s: &JwtProviderSettings,
        algorithms: &[Algorithm],
        last_good: Arc<LastGoodJwks>,
    ) -> Result<Self> {
        let url: Uri = url.parse().context("jwks_url")?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnector::from((http, tls));
        let kept = last_good
            .0
            .read()
            .expect("jwks lock")
            .as_ref()
            .map(|set| from_jwks(set, algorithms, &s.name))
            .unwrap_or_default();
        Ok(Self {
            url,
            provider: s.name.clone(),
            algorithms: algorithms.to_vec(),
            refresh: s.jwks_refresh,
            min_refetch: s.jwks_min_refetch,
            client: Client::builder(TokioExecutor::new()).build(connector),
            keys: RwLock::new(Arc::new(kept)),
            last_good,
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub fn current(&self) -> Arc<Vec<PinnedKey>> {
        self.keys.read().expect("jwks lock").clone()
    }

    /// Fetches the document; on success the keys are replaced and the time until the
    /// next refresh returned (its max-age, else `jwks_refresh`); on failure the last
    /// good keys stay.
    async fn fetch(&self) -> Result<Duration> {
        *self.last_fetch.lock().expect("jwks lock") = Some(Instant::now());
        let req = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "edge-node")
            .body(Empty::new())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .context("timed out")??;
        if !resp.status().is_success() {
            anyhow::bail!("status {}", resp.status());
        }
        let max_age = crate::cache::policy::directives(resp.headers())
            .max_age
            .map(Duration::from_secs);
        let body = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("body: {e}"))?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).context("not a JWKS")?;
        let keys = from_jwks(&set, &self.algorithms, &self.provider);
        info!(provider = %self.provider, keys = keys.len(), "JWKS fetched");
        *self.keys.write().expect("jwks lock") = Arc::new(keys);
        *self.last_good.0.write().expect("jwks lock") = Some(Arc::new(set));
        // Refresh before the document expires.
        // (The document's max-age is the provider's number: saturate, never overflow.)
        Ok(max_age.map_or(self.refresh, |m| {
            (m.saturating_mul(4) / 5).clamp(Duration::from_secs(5), crate::duration::MAX)
        }))
    }

    /// A token named a `kid` we do not have: fetch again, at most once per
    /// `jwks_min_refetch` (a flood of made-up kids must not flood the provider).
    pub async fn refetch_for_unknown_kid(&self, kid: &str) {
        let _one = self.fetching.lock().await;
        if self.current().iter().any(|k| k.kid.as_deref() == Some(kid)) {
            return; // someone else's fetch brought it
        }
        let recent = self
            .last_fetch
            .lock()
            .expect("jwks lock")
            .is_some_and(|t| t.elapsed() < self.min_refetch);
        if recent {
            return;
        }
        if let Err(e) = self.fetch().await {
            warn!(provider = %self.provider, error = %format!("{e:#}"), "JWKS refetch failed; keeping the last good keys");
        }
    }

    /// Fetches now and then keeps the keys fresh until the provider is dropped.
    pub fn spawn_refresh(this: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(this);
        tokio::spawn(async move {
            let mut wait;
            loop {
                let Some(me) = weak.upgrade() else { break };
                let result = {
                    let _one = me.fetching.lock().await;
                    me.fetch().await
                };
                wait = match result {
                    Ok(next) => next,
                    Err(e) => {
                        warn!(provider = %me.provider, error = %format!("{e:#}"), "JWKS fetch failed; keeping the last good keys");
                        // Retry sooner while the provider is down.
                        me.min_refetch.max(Duration::from_secs(1))
                    }
                };
                drop(me);
                tokio::time::sleep(wait).await;
            }
        });
    }
}
