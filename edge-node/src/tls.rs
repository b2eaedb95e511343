//! TLS for the listeners (rustls, ring): certificates chosen by SNI (exact and
//! `*.wildcard` names, the first certificate when the client sends no or an unknown
//! name), ALPN h2 and http/1.1, and reload of the files on SIGHUP or when they change.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use rustls::{
    ServerConfig,
    crypto::ring::{default_provider, sign::any_supported_type},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde::Deserialize;

/// `[[certificate]]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSettings {
    /// Names served with this certificate: exact or `*.example.com`.
    pub hosts: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The TLS configuration in force; a reload swaps it, handshakes in progress keep theirs.
pub type SharedTls = Arc<RwLock<Arc<ServerConfig>>>;

#[derive(Debug)]
struct SniResolver {
    /// (name, key) in configuration order; names lower-case.
    names: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let sni = sni.to_ascii_lowercase();
        let exact = self.names.iter().find(|(n, _)| *n == sni);
        let wild = || {
            self.names.iter().find(|(n, _)| {
                n.strip_prefix("*.").is_some_and(|suffix| {
                    sni.len() > suffix.len() + 1
                        && sni.ends_with(suffix)
                        && sni.as_bytes()[sni.len() - suffix.len() - 1] == b'.'
                })
            })
        };
        Some(
            exact
                .or_else(wild)
                .map_or_else(|| self.default.clone(), |(_, k)| k.clone()),
        )
    }
}

fn load_key(c: &CertificateSettings) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .with_context(|| format!("reading certificate {}", c.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", c.cert.display()))?;
    if chain.is_empty() {
        bail!("{}: no certificate in the file", c.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .with_context(|| format!("reading private key {}", c.key.display()))?;
    let signer = any_supported_type(&key)
        .with_context(|| format!("{}: unsupported private key", c.key.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().with_context(|| {
        format!(
            "{} does not belong to {}",
            c.key.display(),
            c.cert.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// Builds the server configuration from the certificate files.
pub fn build(certs: &[CertificateSettings]) -> Result<Arc<ServerConfig>> {
    let mut names = Vec::new();
    let mut default = None;
    for c in certs {
        let key = load_key(c)?;
        default.get_or_insert_with(|| key.clone());
        for h in &c.hosts {
            names.push((h.to_ascii_lowercase(), key.clone()));
        }
    }
    let default = default.context("TLS needs at least one [[certificate]]")?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { names, default }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Modification times of the files, to notice a renewal on disk.
pub fn stamp(certs: &[CertificateSettings]) -> Vec<Option<SystemTime>> {
    certs
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}
