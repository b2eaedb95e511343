//! Automatic certificates over ACME (RFC 8555): a `[[certificate]]` with `acme = { … }`,
//! or every exact route host that no `[[certificate]]` serves when a global `[acme]`
//! names a directory, gets its certificate from the CA through HTTP-01 (answered on the
//! plain listeners by `phases::acme`) or TLS-ALPN-01 (answered by the TLS resolver), is
//! stored in the data directory (`store`), and is renewed ahead of expiry in the
//! background (`manager`). An obtained certificate is swapped in like a reload: new
//! handshakes take it, connections in flight keep theirs.
//!
//! A fleet shares one certificate per name through Redis (`fleet`).
//!
//! Until a name's first certificate exists, a handshake for it is refused (no
//! placeholder certificate: a client would only learn to click through warnings),
//! unless a static wildcard `[[certificate]]` covers the name.

pub mod fleet;
pub mod manager;
pub mod store;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use serde::Deserialize;

pub use manager::Manager;

/// ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Which challenge proves control of a name.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
pub enum ChallengeKind {
    /// `GET /.well-known/acme-challenge/<token>` on a plain HTTP listener.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A handshake with ALPN `acme-tls/1` on a TLS listener.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// `[acme]` (defaults for every certificate obtained over ACME; with `directory` set,
/// also the switch that obtains certificates for the route hosts no `[[certificate]]`
/// serves), and `acme = { … }` on a `[[certificate]]` (its own values over those).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AcmeSettings {
    /// The CA's directory URL (https).
    pub directory: Option<String>,
    /// The account's contact, `mailto:…`.
    pub contact: Option<String>,
    /// PEM root to trust for the directory (a private CA such as Pebble); default: the
    /// system's roots.
    pub directory_ca: Option<PathBuf>,
    /// `http-01` (default) or `tls-alpn-01`.
    pub challenge: Option<ChallengeKind>,
    /// Renew when less than this is left; default a third of the certificate's lifetime.
    #[serde(default, with = "crate::duration::option")]
    pub renew_before: Option<Duration>,
    /// Redis URL through which a fleet shares one certificate per name (one node
    /// orders, the others take it); default: this node orders its own.
    pub redis: Option<String>,
}

/// One certificate to keep over ACME, settings resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcmeCert {
    /// The names it covers, lower-case; the first names its files.
    pub names: Vec<String>,
    pub directory: String,
    pub contact: Option<String>,
    pub directory_ca: Option<PathBuf>,
    pub challenge: ChallengeKind,
    pub renew_before: Option<Duration>,
    pub redis: Option<String>,
}

impl AcmeCert {
    /// `own` over `global`; errors say what is missing or wrong.
    pub fn resolve(
        names: &[String],
        own: &AcmeSettings,
        global: Option<&AcmeSettings>,
    ) -> Result<Self> {
        fn pick_from<T>(
            own: &AcmeSettings,
            global: Option<&AcmeSettings>,
            f: impl Fn(&AcmeSettings) -> Option<T>,
        ) -> Option<T> {
            f(own).or_else(|| global.and_then(&f))
        }
        macro_rules! pick {
            ($f:expr) => {
                pick_from(own, global, $f)
            };
        }
        let directory: String = pick!(|s: &AcmeSettings| s.directory.clone())
            .context("acme: no directory (set acme.directory here or directory in [acme])")?;
        check_directory(&directory)?;
        let contact = pick!(|s: &AcmeSettings| s.contact.clone());
        if let Some(c) = &contact
            && (!c.starts_with("mailto:")
                || c.len() <= "mailto:".len()
                || c.contains(char::is_whitespace))
        {
            bail!("acme.contact {c:?} is not a mailto: address (write \"mailto:ops@example.com\")");
        }
        let directory_ca = pick!(|s: &AcmeSettings| s.directory_ca.clone());
        if let Some(p) = &directory_ca {
            load_root(p)?;
        }
        let redis = pick!(|s: &AcmeSettings| s.redis.clone());
        if let Some(u) = &redis {
            fleet::check_url(u)?;
        }
        let renew_before = pick!(|s: &AcmeSettings| s.renew_before);
        if renew_before == Some(Duration::ZERO) {
            bail!("acme.renew_before must be longer than 0s");
        }
        if names.is_empty() {
            bail!("acme: the certificate names no hosts");
        }
        let mut out = Vec::new();
        for n in names {
            let n = n.to_ascii_lowercase();
            check_name(&n)?;
            if !out.contains(&n) {
                out.push(n);
            }
        }
        Ok(Self {
            names: out,
            directory,
            contact,
            directory_ca,
            challenge: pick!(|s: &AcmeSettings| s.challenge).unwrap_or_default(),
            renew_before,
            redis,
        })
    }
}

fn check_directory(d: &str) -> Result<()> {
    let uri: http::Uri = d
        .parse()
        .with_context(|| format!("acme.directory {d:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        bail!("acme.directory {d:?} must be an https:// URL");
    }
    Ok(())
}

/// Names HTTP-01 and TLS-ALPN-01 can prove: DNS names, no wildcard, no IP address.
fn check_name(n: &str) -> Result<()> {
    if n.starts_with("*.") {
        bail!(
            "acme: {n:?} is a wildcard; HTTP-01 and TLS-ALPN-01 cannot prove one (DNS-01 \
             is not supported): list the names, or give a static cert and key"
        );
    }
    if n.parse::<std::net::IpAddr>().is_ok() {
        bail!("acme: {n:?} is an IP address; only DNS names are supported");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if n.len() > 253 || !n.contains('.') || !n.split('.').all(label_ok) {
        bail!("acme: {n:?} is not a fully qualified DNS name");
    }
    Ok(())
}

/// The PEM root in `path` (the first certificate).
pub fn load_root(path: &std::path::Path) -> Result<()> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_file(path).with_context(|| {
        format!(
            "acme.directory_ca: no PEM certificate in {}",
            path.display()
        )
    })?;
    Ok(())
}

/// What the listeners read and the manager writes: obtained certificates by name, and
/// the challenges being answered. One per process: it outlives reloads.
#[derive(Default)]
pub struct AcmeState {
    /// Obtained certificates by name; replaced whole on every change (handshakes read
    /// it without a lock).
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// The names kept over ACME by the configuration in force.
    names: ArcSwap<Vec<String>>,
    /// HTTP-01: token → key authorization.
    http: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: name → challenge certificate.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// The Redis servers certificates are shared through (HTTP-01 tokens another node
    /// put up are looked up there).
    fleets: ArcSwap<Vec<Arc<fleet::Fleet>>>,
}

impl std::fmt::Debug for AcmeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeState")
            .field("names", &self.names.load())
            .finish_non_exhaustive()
    }
}

impl AcmeState {
    /// Whether `name` is kept over ACME (whether or not a certificate exists yet).
    pub fn manages(&self, name: &str) -> bool {
        self.names.load().iter().any(|n| n == name)
    }

    /// Whether any name is kept over ACME: the plain listeners then answer
    /// `/.well-known/acme-challenge/`.
    pub fn active(&self) -> bool {
        !self.names.load().is_empty()
    }

    /// The names kept now (to restore them when a reload fails).
    pub fn names(&self) -> Arc<Vec<String>> {
        self.names.load_full()
    }

    pub fn restore_names(&self, names: Arc<Vec<String>>) {
        self.names.store(names);
    }

    pub fn set_names(&self, plans: &[AcmeCert]) {
        self.names.store(Arc::new(
            plans.iter().flat_map(|p| p.names.clone()).collect(),
        ));
    }

    /// The obtained certificate for `name`.
    pub fn cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.load().get(name).cloned()
    }

    /// Any obtained certificate (for a client that sends no name), the first name's
    /// first.
    pub fn any_cert(&self) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        self.names.load().iter().find_map(|n| certs.get(n).cloned())
    }

    /// Serves `key` for `names` from the next handshake on.
    pub fn install(&self, names: &[String], key: Arc<CertifiedKey>) {
        self.certs.rcu(|old| {
            let mut m = HashMap::clone(old);
            for n in names {
                m.insert(n.clone(), key.clone());
            }
            m
        });
    }

    /// Drops the certificates of names no longer kept (a reload removed them).
    pub fn prune(&self) {
        let names = self.names.load();
        self.certs.rcu(|old| {
            let mut m = HashMap::clone(old);
            m.retain(|n, _| names.contains(n));
            m
        });
    }

    pub fn set_fleets(&self, fleets: Vec<Arc<fleet::Fleet>>) {
        self.fleets.store(Arc::new(fleets));
    }

    /// The key authorization for an HTTP-01 `token` put up by another node of the fleet.
    pub async fn fleet_http_answer(&self, token: &str) -> Option<String> {
        let fleets = self.fleets.load_full();
        for f in fleets.iter() {
            match f.http(token).await {
                Ok(Some(a)) => return Some(a),
                Ok(None) => {}
                // Debug: anyone can ask for tokens; the keeper warns about Redis.
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "ACME challenge lookup in Redis failed")
                }
            }
        }
        None
    }

    /// The key authorization for an HTTP-01 `token`.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        crate::sync::lock(&self.http).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`.
    pub fn alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        crate::sync::lock(&self.alpn).get(name).cloned()
    }

    pub(crate) fn add_http(&self, token: &str, answer: &str) {
        crate::sync::lock(&self.http).insert(token.to_string(), answer.to_string());
    }

    pub(crate) fn remove_http(&self, token: &str) {
        crate::sync::lock(&self.http).remove(token);
    }

    pub(crate) fn add_alpn(&self, name: &str, key: Arc<CertifiedKey>) {
        crate::sync::lock(&self.alpn).insert(name.to_string(), key);
    }

    pub(crate) fn remove_alpn(&self, name: &str) {
        crate::sync::lock(&self.alpn).remove(name);
    }
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737): self-signed, the name as its one
/// SAN, the key authorization's SHA-256 in the critical acmeIdentifier extension.
pub fn challenge_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>> {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .context("TLS-ALPN-01 certificate parameters")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().context("TLS-ALPN-01 key")?;
    let cert = params
        .self_signed(&key)
        .context("TLS-ALPN-01 certificate")?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).context("TLS-ALPN-01 signing key")?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(directory: &str) -> AcmeSettings {
        AcmeSettings {
            directory: Some(directory.into()),
            ..Default::default()
        }
    }

    #[test]
    fn settings_resolve_own_over_global() {
        let global = AcmeSettings {
            contact: Some("mailto:ops@example.com".into()),
            challenge: Some(ChallengeKind::TlsAlpn01),
            ..s("https://ca.example/dir")
        };
        let c = AcmeCert::resolve(
            &["A.Example.com".into()],
            &AcmeSettings::default(),
            Some(&global),
        )
        .unwrap();
        assert_eq!(c.names, ["a.example.com"]);
        assert_eq!(c.challenge, ChallengeKind::TlsAlpn01);
        assert_eq!(c.contact.as_deref(), Some("mailto:ops@example.com"));
        let own = AcmeSettings {
            challenge: Some(ChallengeKind::Http01),
            ..s("https://other.example/dir")
        };
        let c = AcmeCert::resolve(&["a.example.com".into()], &own, Some(&global)).unwrap();
        assert_eq!(c.directory, "https://other.example/dir");
        assert_eq!(c.challenge, ChallengeKind::Http01);
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        let names = ["a.example.com".to_string()];
        let err = |names: &[String], st: AcmeSettings| {
            format!("{:#}", AcmeCert::resolve(names, &st, None).unwrap_err())
        };
        assert!(err(&names, AcmeSettings::default()).contains("no directory"));
        assert!(err(&names, s("http://ca.example/dir")).contains("https://"));
        assert!(err(&names, s("not a url")).contains("not a URL"));
        let bad_contact = AcmeSettings {
            contact: Some("ops@example.com".into()),
            ..s("https://ca.example/dir")
        };
        assert!(err(&names, bad_contact).contains("mailto:"));
        assert!(err(&["*.example.com".into()], s("https://ca.example/dir")).contains("wildcard"));
        assert!(err(&["10.0.0.1".into()], s("https://ca.example/dir")).contains("IP address"));
        assert!(
            err(&["localhost".into()], s("https://ca.example/dir")).contains("fully qualified")
        );
        let zero = AcmeSettings {
            renew_before: Some(Duration::ZERO),
            ..s("https://ca.example/dir")
        };
        assert!(err(&names, zero).contains("renew_before"));
    }

    #[test]
    fn challenge_cert_names_the_host_and_carries_the_digest_critically() {
        use x509_cert::der::{Decode as _, Encode as _};
        let k = challenge_cert("a.example.com", &[7; 32]).unwrap();
        assert_eq!(k.cert.len(), 1);
        let c = x509_cert::Certificate::from_der(&k.cert[0]).unwrap();
        let ext = c
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id.to_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte digest.
        let mut want = vec![0x04, 32];
        want.extend([7; 32]);
        assert_eq!(ext.extn_value.as_bytes(), want.as_slice());
        assert!(c.to_der().is_ok());
    }
}
