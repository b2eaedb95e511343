//! Where ACME state lives: `<storage.dir>/acme/<CA>/` holds the account
//! (`account.json`) and one folder per certificate, named by its first name
//! (`<name>/cert.pem`, `<name>/key.pem`). `<CA>` is the directory's host and a digest
//! of its URL: another CA is another account and other certificates. Files are written
//! whole (temporary file, fsync, rename); the account and keys are mode 0600.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use x509_cert::{
    der::Decode as _,
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use super::AcmeCert;

/// A certificate and its key, ready to serve, with what renewal needs to know.
#[derive(Clone, Debug)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf's serial number, hex.
    pub serial: String,
}

impl Issued {
    /// When to renew: `renew_before` ahead of expiry, or a third of the lifetime ahead
    /// of it; never less than a tenth of the lifetime after issue (a `renew_before`
    /// longer than the CA's lifetimes would otherwise order again at once, forever).
    pub fn renew_at(&self, renew_before: Option<Duration>) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let ahead = renew_before.unwrap_or(lifetime / 3);
        let at = self.not_after.checked_sub(ahead).unwrap_or(self.not_before);
        at.max(self.not_before + lifetime / 10)
    }
}

/// The ACME state in one data directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Under `<data_dir>/acme`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("acme"),
        }
    }

    fn ca_dir(&self, directory: &str) -> PathBuf {
        let host = directory
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_default();
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let digest = ring::digest::digest(&ring::digest::SHA256, directory.as_bytes());
        let hex: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.root.join(format!("{host}-{hex}"))
    }

    fn cert_dir(&self, plan: &AcmeCert) -> PathBuf {
        self.ca_dir(&plan.directory).join(&plan.names[0])
    }

    /// The stored account for `directory`, if any (as JSON, for instant-acme).
    pub fn account(&self, directory: &str) -> Result<Option<String>> {
        let path = self.ca_dir(directory).join("account.json");
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save_account(&self, directory: &str, json: &str) -> Result<()> {
        let dir = self.ca_dir(directory);
        create_dir(&dir)?;
        write_atomically(&dir.join("account.json"), json.as_bytes(), 0o600)
    }

    /// The stored certificate of `plan`: `Ok(None)` when there is none; an error when
    /// the files are unreadable, broken, not a pair, or do not cover the names.
    pub fn load(&self, plan: &AcmeCert) -> Result<Option<Issued>> {
        let dir = self.cert_dir(plan);
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let chain = match fs::read(&cert) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", cert.display())),
        };
        let key_pem = fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
        parse(&chain, &key_pem, &plan.names)
            .with_context(|| format!("stored certificate {}", cert.display()))
            .map(Some)
    }

    /// Stores a certificate obtained for `plan` (key first: a crash between the two
    /// leaves a pair that does not match, which the next start refuses and orders anew).
    pub fn save(&self, plan: &AcmeCert, chain_pem: &str, key_pem: &str) -> Result<()> {
        let dir = self.cert_dir(plan);
        create_dir(&dir)?;
        write_atomically(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        write_atomically(&dir.join("cert.pem"), chain_pem.as_bytes(), 0o644)
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `bytes` so that readers see the old file or the whole new one.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", fastrand::u64(..)));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

/// A PEM chain (leaf first) and its PEM key, checked: they belong together, the leaf
/// names every one of `names`.
pub fn parse(chain_pem: &[u8], key_pem: &[u8], names: &[String]) -> Result<Issued> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .context("not a PEM certificate chain")?;
    let Some(leaf) = chain.first() else {
        bail!("no certificate in the chain");
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("not a PEM private key")?;
    let signer = any_supported_type(&key).context("unsupported private key")?;
    let x509 =
        x509_cert::Certificate::from_der(leaf).context("the leaf is not an X.509 certificate")?;
    let tbs = &x509.tbs_certificate;
    let not_before = tbs.validity.not_before.to_system_time();
    let not_after = tbs.validity.not_after.to_system_time();
    let serial: String = tbs
        .serial_number
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut sans = Vec::new();
    if let Some((_, san)) = tbs
        .get::<SubjectAltName>()
        .context("the leaf's subjectAltName cannot be read")?
    {
        for n in san.0 {
            if let GeneralName::DnsName(d) = n {
                sans.push(d.to_string().to_ascii_lowercase());
            }
        }
    }
    if let Some(missing) = names.iter().find(|n| !sans.contains(n)) {
        bail!("the certificate does not name {missing} (it names {sans:?})");
    }
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .context("the key does not belong to the certificate")?;
    Ok(Issued {
        key: Arc::new(ck),
        not_before,
        not_after,
        serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(names: &[&str]) -> AcmeCert {
        AcmeCert {
            names: names.iter().map(|n| n.to_string()).collect(),
            directory: "https://ca.example:14000/dir".into(),
            contact: None,
            directory_ca: None,
            challenge: super::super::ChallengeKind::Http01,
            renew_before: None,
            redis: None,
        }
    }

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("edge-acme-store-{:016x}", fastrand::u64(..)));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_saved_certificate_loads_back_and_its_key_is_private() {
        let dir = tmp();
        let store = Store::new(&dir);
        let p = plan(&["a.example.com", "b.example.com"]);
        assert!(store.load(&p).unwrap().is_none());
        let (cert, key) = self_signed(&["a.example.com", "b.example.com"]);
        store.save(&p, &cert, &key).unwrap();
        let issued = store.load(&p).unwrap().expect("stored");
        assert!(issued.not_after > issued.not_before);
        let key_file = store.cert_dir(&p).join("key.pem");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn broken_or_foreign_files_are_errors_not_panics() {
        let dir = tmp();
        let store = Store::new(&dir);
        let p = plan(&["a.example.com", "b.example.com"]);
        // Names one of the two only.
        let (cert, key) = self_signed(&["a.example.com"]);
        store.save(&p, &cert, &key).unwrap();
        let e = format!("{:#}", store.load(&p).unwrap_err());
        assert!(e.contains("does not name b.example.com"), "{e}");
        // Key of another certificate.
        let (cert, _) = self_signed(&["a.example.com", "b.example.com"]);
        store.save(&p, &cert, &key).unwrap();
        let e = format!("{:#}", store.load(&p).unwrap_err());
        assert!(e.contains("key does not belong"), "{e}");
        // Garbage.
        store
            .save(
                &p,
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &key,
            )
            .unwrap();
        assert!(store.load(&p).is_err());
        store.save(&p, "hello", "world").unwrap();
        assert!(store.load(&p).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn renewal_time() {
        let (cert, key) = self_signed(&["a.example.com"]);
        let mut i = parse(cert.as_bytes(), key.as_bytes(), &["a.example.com".into()]).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        i.not_before = t0;
        i.not_after = t0 + Duration::from_secs(90 * 86400);
        assert_eq!(i.renew_at(None), t0 + Duration::from_secs(60 * 86400));
        assert_eq!(
            i.renew_at(Some(Duration::from_secs(30 * 86400))),
            t0 + Duration::from_secs(60 * 86400)
        );
        // Longer than the lifetime: a tenth of it after issue, not at once.
        assert_eq!(
            i.renew_at(Some(Duration::from_secs(365 * 86400))),
            t0 + Duration::from_secs(9 * 86400)
        );
    }
}
