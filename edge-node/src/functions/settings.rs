//! `[functions]` (what every function shares) and `[[function]]` (one component each):
//! the keys, their defaults, and the checks a configuration must pass.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;

use crate::{kv::KvSettings, upstream::UpstreamSettings};

/// The largest linear memory a wasm32 guest can address.
pub const MAX_MEMORY_LIMIT: u64 = 4 << 30;

/// The most of a slot kept resident: past a few MiB, resetting in place costs more than
/// the page faults it saves.
pub const MAX_KEEP_RESIDENT: u64 = 64 << 20;

/// `[functions]`: process-wide settings of the functions runtime.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionsSettings {
    /// Compiled components are kept here (`<sha256>.cwasm`), so a restart or reload
    /// loads machine code instead of compiling. Created (mode 0700) if missing; used
    /// only when owned by the node's user and writable by nobody else, otherwise the
    /// node compiles every time and says so. Safe to empty at any time.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Instances of all functions alive at once: the size of the engine's instance pool
    /// (address space is reserved for each up front). Takes effect at start.
    #[serde(default = "default_max_total_instances")]
    pub max_total_instances: u32,
    /// The largest component `PUT /functions/<name>` on the admin API accepts.
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// Bytes of a finished instance's linear memory (and tables) reset in place and kept
    /// resident for the next instance in its slot, instead of given back to the kernel
    /// and faulted in again: CPU per request against memory. Only the pages the
    /// instance wrote count, found with Linux's PAGEMAP_SCAN (6.7+); without it only
    /// tables are kept. Resident memory then follows the peak of instances alive at
    /// once (up to `max_total_instances` × 2 × this). 0 gives everything back. Takes
    /// effect at start.
    #[serde(default = "default_keep_resident_bytes")]
    pub keep_resident_bytes: u64,
}

impl Default for FunctionsSettings {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            max_total_instances: default_max_total_instances(),
            max_upload_bytes: default_max_upload_bytes(),
            keep_resident_bytes: default_keep_resident_bytes(),
        }
    }
}

fn default_keep_resident_bytes() -> u64 {
    // Measured with tests/components/hello (it writes under 64 KiB): with PAGEMAP_SCAN,
    // ~16 µs per instance with 1 MiB kept against ~35 µs with none (bench/RESULTS.md).
    // 1 MiB covers what a small handler writes without holding much per idle slot.
    1 << 20
}

fn default_cache_dir() -> PathBuf {
    // systemd's StateDirectory=edge-node; where no such directory can be made, the node
    // runs without the disk cache.
    PathBuf::from("/var/lib/edge-node/functions")
}

fn default_max_total_instances() -> u32 {
    1000
}

fn default_max_upload_bytes() -> u64 {
    64 << 20
}

/// `[[function]]`: a WebAssembly component of the `wasi:http/proxy` world.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSettings {
    /// What routes and the admin API (`PUT /functions/<name>`) call it by.
    pub name: String,
    /// The component (`.wasm`), e.g. built with `cargo build --target wasm32-wasip2`.
    pub file: PathBuf,
    /// Bytes of linear memory one instance may grow to; past it allocation fails in
    /// the guest (usually a trap: the request gets a 500).
    #[serde(default = "default_memory_limit")]
    pub memory_limit: u64,
    /// Time for the whole exchange: instantiation, the guest's work, its outgoing
    /// calls and the streaming of its response body. Past it the instance is stopped
    /// (504 if no response had started; a cut body otherwise).
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Instances of this function at once; a request over it waits up to a second for
    /// one to finish, then gets a 503.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// `[[upstream]]`s the function may call, by name: the guest requests
    /// `http://<name>/path` and the node sends it through that pool. Nothing else is
    /// reachable.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// `[[kv]]` namespaces the function may open through `wasi:keyvalue`, by name
    /// (`open("users")`): read, write, list, with the namespace's limits and default
    /// TTL. Any other name: `access-denied`.
    #[serde(default)]
    pub kv: Vec<String>,
    /// Configuration handed to the guest as environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_memory_limit() -> u64 {
    64 << 20
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_instances() -> u32 {
    64
}

impl FunctionsSettings {
    pub fn validate(&self) -> Result<()> {
        if self.max_total_instances == 0 || self.max_total_instances > 100_000 {
            bail!(
                "functions.max_total_instances must be 1 to 100000 (is {})",
                self.max_total_instances
            );
        }
        if self.max_upload_bytes == 0 {
            bail!("functions.max_upload_bytes must be above 0");
        }
        if self.keep_resident_bytes > MAX_KEEP_RESIDENT {
            bail!(
                "functions.keep_resident_bytes must be at most {MAX_KEEP_RESIDENT} (is {})",
                self.keep_resident_bytes
            );
        }
        if self.cache_dir.as_os_str().is_empty() {
            bail!("functions.cache_dir must name a directory");
        }
        Ok(())
    }
}

impl FunctionSettings {
    /// Checks what can be checked without the component's bytes (and without other
    /// tables: grants are checked by [`validate`]).
    pub fn validate(&self) -> Result<()> {
        let name = &self.name;
        // The name is a path segment of the admin API and a log field: keep it plain.
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
        if name.is_empty() || name.len() > 64 || !name.bytes().all(plain) || name.starts_with('.') {
            bail!(
                "function name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.' \
                 (not starting with '.')"
            );
        }
        if self.file.as_os_str().is_empty() {
            bail!("function {name}: file must name a .wasm component");
        }
        if self.memory_limit < 1 << 20 || self.memory_limit > MAX_MEMORY_LIMIT {
            bail!(
                "function {name}: memory_limit must be 1 MiB to 4 GiB (is {} bytes)",
                self.memory_limit
            );
        }
        if self.timeout.is_zero() {
            bail!("function {name}: timeout must be above 0");
        }
        if self.max_instances == 0 {
            bail!("function {name}: max_instances must be at least 1");
        }
        for (k, v) in &self.env {
            // What an environment variable can hold (the guest's libc splits on '=').
            if k.is_empty() || k.contains(['=', '\0']) {
                bail!("function {name}: env key {k:?} must be non-empty, without '=' or NUL");
            }
            if v.contains('\0') {
                bail!("function {name}: env value of {k} must not contain NUL");
            }
        }
        Ok(())
    }
}

/// Which table a validation error is about: `[functions]` (None) or the n-th
/// `[[function]]`.
pub type At = Option<usize>;

/// Checks `[functions]` and every `[[function]]`: values, unique names, grants naming
/// defined upstreams and `[[kv]]` namespaces (once each), readable files. The
/// components themselves (do they compile, export the world?) are checked when they
/// are loaded: `edge-node check`, start, reload, upload.
pub fn validate(
    global: &FunctionsSettings,
    functions: &[FunctionSettings],
    upstreams: &[UpstreamSettings],
    kv: &[KvSettings],
) -> Result<(), (At, anyhow::Error)> {
    global.validate().map_err(|e| (None, e))?;
    let mut names = std::collections::HashSet::new();
    for (i, f) in functions.iter().enumerate() {
        let at = |e| (Some(i), e);
        f.validate().map_err(at)?;
        if !names.insert(f.name.as_str()) {
            return Err(at(anyhow!("function {} is defined twice", f.name)));
        }
        let mut granted = std::collections::HashSet::new();
        for u in &f.upstreams {
            if !upstreams.iter().any(|d| &d.name == u) {
                return Err(at(anyhow!(
                    "function {} is granted upstream {u:?}, which is not defined",
                    f.name
                )));
            }
            if !granted.insert(u.as_str()) {
                return Err(at(anyhow!(
                    "function {} is granted upstream {u:?} twice",
                    f.name
                )));
            }
        }
        let mut granted = std::collections::HashSet::new();
        for n in &f.kv {
            if !kv.iter().any(|d| &d.name == n) {
                return Err(at(anyhow!(
                    "function {} is granted kv namespace {n:?}, which is not defined (no \
                     [[kv]] of that name)",
                    f.name
                )));
            }
            if !granted.insert(n.as_str()) {
                return Err(at(anyhow!(
                    "function {} is granted kv namespace {n:?} twice",
                    f.name
                )));
            }
        }
        if !f.file.is_file() {
            return Err(at(anyhow!(
                "function {}: file {} is not a readable file",
                f.name,
                f.file.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(extra: &str) -> Result<FunctionSettings, toml::de::Error> {
        toml::from_str(&format!("name = \"f\"\nfile = \"/dev/null\"\n{extra}"))
    }

    #[test]
    fn defaults() {
        let f = function("").unwrap();
        assert_eq!(f.memory_limit, 64 << 20);
        assert_eq!(f.timeout, Duration::from_secs(10));
        assert_eq!(f.max_instances, 64);
        assert!(f.upstreams.is_empty() && f.env.is_empty() && f.kv.is_empty());
        let g: FunctionsSettings = toml::from_str("").unwrap();
        assert_eq!(g, FunctionsSettings::default());
        assert_eq!(g.cache_dir, PathBuf::from("/var/lib/edge-node/functions"));
        assert_eq!(g.max_total_instances, 1000);
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        let e = function("memory = 5").unwrap_err().to_string();
        assert!(e.contains("memory"), "{e}");
        let e = function("timeout = \"soon\"").unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
        let f = function("timeout = \"250ms\"\nenv = { GREETING = \"hi\" }").unwrap();
        assert_eq!(f.timeout, Duration::from_millis(250));
        assert_eq!(f.env["GREETING"], "hi");
    }

    #[test]
    fn values_are_checked_with_the_function_named() {
        for (extra, needle) in [
            ("memory_limit = 1000", "memory_limit"),
            ("memory_limit = 8589934592", "memory_limit"),
            ("timeout = \"0s\"", "timeout"),
            ("max_instances = 0", "max_instances"),
            ("env = { \"A=B\" = \"x\" }", "env key"),
        ] {
            let e = function(extra).unwrap().validate().unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("function f"),
                "{extra}: {e}"
            );
        }
        for bad in ["", "a/b", ".hidden", "with space", &"x".repeat(65)] {
            let f = FunctionSettings {
                name: bad.into(),
                ..function("").unwrap()
            };
            assert!(f.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_errors_point_at_the_function_table() {
        use crate::config::{Config, Source};
        let text = "[[upstream]]\nname = \"api\"\nservers = [\"127.0.0.1:1\"]\n\n\
                    [[function]]\nname = \"f\"\nfile = \"/nonexistent/f.wasm\"\n\
                    upstreams = [\"api\"]\n";
        let msg = format!("{:#}", Config::parse(text, &Source::Embedded).unwrap_err());
        assert!(
            msg.contains("line 5:") && msg.contains("/nonexistent/f.wasm"),
            "{msg}"
        );
        let text = "[functions]\nmax_total_instances = 0\n";
        let msg = format!("{:#}", Config::parse(text, &Source::Embedded).unwrap_err());
        assert!(
            msg.contains("line 2:") && msg.contains("max_total_instances"),
            "{msg}"
        );
        let c = Config::parse("", &Source::Embedded).unwrap();
        assert!(c.function.is_empty());
        assert_eq!(c.functions, FunctionsSettings::default());
    }

    #[test]
    fn kv_grants_must_name_defined_namespaces_once() {
        let kv: Vec<KvSettings> = vec![toml::from_str("name = \"users\"").unwrap()];
        let g = FunctionsSettings::default();
        let file = std::env::temp_dir().join(format!("edge-fn-kv-{}.wasm", std::process::id()));
        std::fs::write(&file, b"\0asm").unwrap();
        let ok = FunctionSettings {
            file: file.clone(),
            ..function("kv = [\"users\"]").unwrap()
        };
        assert_eq!(ok.kv, ["users"]);
        assert!(validate(&g, std::slice::from_ref(&ok), &[], &kv).is_ok());
        let nope = FunctionSettings {
            kv: vec!["sessions".into()],
            ..ok.clone()
        };
        let (at, e) = validate(&g, &[nope], &[], &kv).unwrap_err();
        assert_eq!(at, Some(0));
        let e = e.to_string();
        assert!(
            e.contains("\"sessions\"") && e.contains("no [[kv]] of that name"),
            "{e}"
        );
        let twice = FunctionSettings {
            kv: vec!["users".into(), "users".into()],
            ..ok
        };
        let (_, e) = validate(&g, &[twice], &[], &kv).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let _ = std::fs::remove_file(file);
        // In a configuration: the error names the [[function]] table's line.
        use crate::config::{Config, Source};
        let text = "[[kv]]\nname = \"users\"\n\n\
                    [[function]]\nname = \"f\"\nfile = \"/nonexistent/f.wasm\"\n\
                    kv = [\"users\", \"sessions\"]\n";
        let msg = format!("{:#}", Config::parse(text, &Source::Embedded).unwrap_err());
        assert!(
            msg.contains("line 4:") && msg.contains("kv namespace \"sessions\""),
            "{msg}"
        );
    }

    #[test]
    fn grants_must_name_defined_upstreams_once() {
        let ups: Vec<UpstreamSettings> =
            vec![toml::from_str("name = \"api\"\nservers = [\"127.0.0.1:1\"]").unwrap()];
        let g = FunctionsSettings::default();
        let file =
            std::env::temp_dir().join(format!("edge-fn-settings-{}.wasm", std::process::id()));
        std::fs::write(&file, b"\0asm").unwrap();
        let ok = FunctionSettings {
            file: file.clone(),
            ..function("upstreams = [\"api\"]").unwrap()
        };
        assert!(validate(&g, std::slice::from_ref(&ok), &ups, &[]).is_ok());
        let nope = FunctionSettings {
            upstreams: vec!["nope".into()],
            ..ok.clone()
        };
        let (at, e) = validate(&g, &[nope], &ups, &[]).unwrap_err();
        assert_eq!(at, Some(0));
        assert!(e.to_string().contains("\"nope\""), "{e}");
        let twice = FunctionSettings {
            upstreams: vec!["api".into(), "api".into()],
            ..ok.clone()
        };
        let (_, e) = validate(&g, &[twice], &ups, &[]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let (at, e) = validate(&g, &[ok.clone(), ok.clone()], &ups, &[]).unwrap_err();
        assert_eq!(at, Some(1));
        assert!(e.to_string().contains("defined twice"), "{e}");
        let missing = FunctionSettings {
            file: "/nonexistent/f.wasm".into(),
            ..ok
        };
        let (_, e) = validate(&g, &[missing], &ups, &[]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/f.wasm"), "{e}");
        let bad_global = FunctionsSettings {
            max_total_instances: 0,
            ..g
        };
        let (at, _) = validate(&bad_global, &[], &ups, &[]).unwrap_err();
        assert_eq!(at, None);
        let _ = std::fs::remove_file(file);
    }
}
