//! Compiled components on disk, so a restart loads machine code instead of compiling.
//!
//! A file is named by the SHA-256 of the component's bytes and of the engine's
//! compatibility hash (wasmtime version, compiler settings, CPU features): another
//! component, or another engine, never reads it. Files are written whole under a
//! temporary name and renamed, never changed in place. Loading maps machine code into
//! the process, so the directory must be the node's own: owned by its user and writable
//! by nobody else; otherwise the cache is not used.

use std::{
    fs,
    hash::{Hash, Hasher},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use ring::digest;
use tracing::{debug, warn};
use wasmtime::{Engine, component::Component};

/// The SHA-256 of a component's bytes.
pub type Digest = [u8; 32];

pub fn sha256(bytes: &[u8]) -> Digest {
    let d = digest::digest(&digest::SHA256, bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds whatever a `Hash` impl writes into a SHA-256 (std's hashers are neither
/// collision-resistant nor stable across builds).
struct Sha256Hasher(digest::Context);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // Never read: the digest is taken from the context.
        0
    }
}

/// The name of the compiled form of the component `wasm` (its digest) for `engine`.
pub fn key(wasm: &Digest, engine: &Engine) -> String {
    let mut h = Sha256Hasher(digest::Context::new(&digest::SHA256));
    h.write(wasm);
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{}.cwasm", hex(h.0.finish().as_ref()))
}

pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// The cache in `dir` (created, mode 0700, if missing); `None`, with a warning, when
    /// it cannot be made or is not the node's own.
    pub fn open(dir: &Path) -> Option<Self> {
        let made = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
        let checked = made
            .and_then(|()| fs::metadata(dir))
            .map_err(|e| e.to_string());
        match checked.and_then(|m| trusted(&m, effective_uid())) {
            Ok(()) => Some(Self {
                dir: dir.to_path_buf(),
            }),
            Err(why) => {
                warn!(
                    dir = %dir.display(),
                    reason = %why,
                    "functions.cache_dir not usable: components are compiled at every start"
                );
                None
            }
        }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The compiled component stored under `key`, if there is a usable one.
    pub fn load(&self, engine: &Engine, key: &str) -> Option<Component> {
        let path = self.path(key);
        if !path.is_file() {
            return None;
        }
        // SAFETY: the file is machine code this node compiled: the directory is owned
        // by the node's user and writable by nobody else (checked in `open`), files are
        // written by `store` only, whole, and renamed into place (never modified while
        // mapped). wasmtime checks the header (version, engine settings) itself.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                // Another wasmtime or a damaged file: compile again and replace it.
                warn!(file = %path.display(), error = %format!("{e:#}"), "cached component unusable; compiling");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `component` under `key` (best effort: a failure costs a compile later).
    pub fn store(&self, key: &str, component: &Component) {
        let path = self.path(key);
        let result = component
            .serialize()
            .map_err(anyhow::Error::from)
            .and_then(|bytes| write_atomically(&path, &bytes, 0o600).map_err(Into::into));
        match result {
            Ok(()) => debug!(file = %path.display(), "compiled component cached"),
            Err(e) => {
                warn!(file = %path.display(), error = %format!("{e:#}"), "could not cache the compiled component")
            }
        }
    }
}

/// Writes `bytes` to `path` so readers see the old file or the whole new one: a
/// temporary file in the same directory, synced, then renamed over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
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
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a directory with metadata `m` can hold code this process will map: its own,
/// and nobody else may add or replace files in it.
fn trusted(m: &fs::Metadata, uid: u32) -> Result<(), String> {
    if !m.is_dir() {
        return Err("not a directory".into());
    }
    if m.uid() != uid {
        return Err(format!("owned by uid {}, the node runs as {uid}", m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o})",
            m.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_key_changes_with_the_component_and_the_engine() {
        let a = Engine::default();
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        let b = Engine::new(&cfg).unwrap();
        let wasm = sha256(b"component one");
        let other = sha256(b"component two");
        assert_eq!(key(&wasm, &a), key(&wasm, &a));
        assert_eq!(key(&wasm, &a), key(&wasm, &Engine::default()));
        assert_ne!(key(&wasm, &a), key(&other, &a));
        assert_ne!(key(&wasm, &a), key(&wasm, &b));
        assert!(key(&wasm, &a).ends_with(".cwasm"));
        assert_eq!(key(&wasm, &a).len(), 64 + ".cwasm".len());
    }

    #[test]
    fn only_a_private_directory_is_trusted() {
        let dir = std::env::temp_dir().join(format!("edge-fn-cache-trust-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(DiskCache::open(&dir).is_some());
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(DiskCache::open(&dir).is_none());
        let m = fs::metadata(&dir).unwrap();
        assert!(
            trusted(&m, effective_uid())
                .unwrap_err()
                .contains("writable")
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let m = fs::metadata(&dir).unwrap();
        assert!(trusted(&m, effective_uid()).is_ok());
        assert!(
            trusted(&m, effective_uid().wrapping_add(1))
                .unwrap_err()
                .contains("owned by")
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = std::env::temp_dir().join(format!("edge-fn-cache-write-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.cwasm");
        write_atomically(&f, b"one", 0o600).unwrap();
        write_atomically(&f, b"two!", 0o600).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two!");
        // Nothing left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
