//! TLS for the listeners (rustls, ring): certificates chosen by SNI (exact and
//! `*.wildcard` names, the first certificate when the client sends no or an unknown
//! name), ALPN h2 and http/1.1, and reload of the files on SIGHUP or when they change.
//! Certificates obtained over ACME (`crate::acme`) are read from the shared
//! `AcmeState` at each handshake: a renewal is in force for the next handshake, while
//! connections in flight keep the certificate they were made with. A handshake that
//! offers only ALPN `acme-tls/1` is a TLS-ALPN-01 validation: it gets the challenge
//! certificate for its name, or nothing.

use std::{
    path::{Path, PathBuf},
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

use crate::acme::{ACME_TLS_ALPN, AcmeState};

/// `[[certificate]]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSettings {
    /// Names served with this certificate: exact or `*.example.com`.
    pub hosts: Vec<String>,
    /// PEM certificate chain, leaf first (not with `acme`).
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) (not with `acme`).
    pub key: Option<PathBuf>,
    /// Obtain and renew the certificate over ACME instead (`acme = {}` takes every
    /// setting from `[acme]`).
    pub acme: Option<crate::acme::AcmeSettings>,
}

impl CertificateSettings {
    /// Static files or ACME, one of the two.
    pub fn validate(&self) -> Result<()> {
        if self.hosts.is_empty() {
            bail!("certificate.hosts is empty: name the hosts the certificate serves");
        }
        match (&self.cert, &self.key, &self.acme) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => Ok(()),
            (_, _, Some(_)) => bail!(
                "certificate.acme obtains the certificate: remove cert and key, or remove acme"
            ),
            (None, _, None) => bail!("certificate.cert is missing (or set acme = {{ … }})"),
            (Some(_), None, None) => bail!("certificate.key is missing"),
        }
    }
}

/// The TLS configuration in force; a reload swaps it, handshakes in progress keep theirs.
pub type SharedTls = Arc<RwLock<Arc<ServerConfig>>>;

#[derive(Debug)]
struct SniResolver {
    /// (name, key) in configuration order; names lower-case.
    names: Vec<(String, Arc<CertifiedKey>)>,
    /// The first static certificate.
    default: Option<Arc<CertifiedKey>>,
    acme: Arc<AcmeState>,
}

impl SniResolver {
    fn default_key(&self) -> Option<Arc<CertifiedKey>> {
        self.default.clone().or_else(|| self.acme.any_cert())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello
            .alpn()
            .is_some_and(|mut a| a.next() == Some(ACME_TLS_ALPN) && a.next().is_none())
        {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.acme.alpn_cert(&name);
        }
        let Some(sni) = hello.server_name() else {
            return self.default_key();
        };
        let sni = sni.to_ascii_lowercase();
        let exact = self.names.iter().find(|(n, _)| *n == sni);
        if exact.is_none()
            && let Some(k) = self.acme.cert(&sni)
        {
            return Some(k);
        }
        let wild = || {
            self.names.iter().find(|(n, _)| {
                n.strip_prefix("*.").is_some_and(|suffix| {
                    sni.len() > suffix.len() + 1
                        && sni.ends_with(suffix)
                        && sni.as_bytes()[sni.len() - suffix.len() - 1] == b'.'
                })
            })
        };
        match exact.or_else(wild) {
            Some((_, k)) => Some(k.clone()),
            // Kept over ACME, no certificate yet: refused rather than answered with a
            // certificate for other names.
            None if self.acme.manages(&sni) => None,
            None => self.default_key(),
        }
    }
}

fn load_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{}: no certificate in the file", cert.display());
    }
    let pk = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    let signer = any_supported_type(&pk)
        .with_context(|| format!("{}: unsupported private key", key.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .with_context(|| format!("{} does not belong to {}", key.display(), cert.display()))?;
    Ok(Arc::new(ck))
}

/// Builds the server configuration from the certificate files, and the certificates
/// `acme` holds (or will hold) for the names it keeps.
pub fn build(certs: &[CertificateSettings], acme: &Arc<AcmeState>) -> Result<Arc<ServerConfig>> {
    let mut names = Vec::new();
    let mut default = None;
    for c in certs {
        let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
            continue;
        };
        let key = load_key(cert, key)?;
        default.get_or_insert_with(|| key.clone());
        for h in &c.hosts {
            names.push((h.to_ascii_lowercase(), key.clone()));
        }
    }
    if default.is_none() && !acme.active() {
        bail!("TLS needs at least one [[certificate]]");
    }
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            names,
            default,
            acme: acme.clone(),
        }));
    // acme-tls/1 last: chosen only by a client that offers nothing else, which the
    // resolver has answered with a challenge certificate (or refused).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Modification times of the files, to notice a renewal on disk.
pub fn stamp(certs: &[CertificateSettings]) -> Vec<Option<SystemTime>> {
    certs
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}
