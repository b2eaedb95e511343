//! The engine and the compiled components: what outlives a reload.
//!
//! One [`Runtime`] per process (kept in `pipeline::retained::Retained`) holds one wasmtime
//! `Engine` (async, epoch interruption with a background ticker, a pooling instance
//! allocator), the linker of the `wasi:http/proxy` world, and every compiled component
//! a configuration uses, by the SHA-256 of its bytes: a reload reuses the compiled code
//! of an unchanged file and compiles a changed one. Compiled code is also kept on disk
//! (see `cache`), so a restart loads instead of compiling.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use tracing::{info, warn};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    component::{Component, Linker},
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::{
    cache::{self, Digest, DiskCache},
    guest::GuestState,
    settings::{FunctionSettings, FunctionsSettings},
};

/// How often the epoch advances: a running guest yields to the async runtime at least
/// this often, and deadlines are noticed within it.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-instance bounds of the pool. A Rust wasm32-wasip2 component has about five core
/// instances, one memory and a few tables; composed components more.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 16;

/// What the functions runtime keeps across reloads. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Made when the first configuration with functions is loaded.
    engine: Mutex<Option<Arc<EngineState>>>,
    /// Compiled components by digest, while a `Functions` (or an upload) holds them.
    compiled: Mutex<HashMap<Digest, Weak<Compiled>>>,
    /// The configuration in force, for uploads: which file a function's bytes go to.
    deployable: Mutex<Deployable>,
    stats: Counters,
}

#[derive(Default)]
struct Deployable {
    global: FunctionsSettings,
    functions: HashMap<String, FunctionSettings>,
}

#[derive(Default)]
struct Counters {
    compiled: AtomicU64,
    from_disk: AtomicU64,
    reused: AtomicU64,
}

/// How components were obtained since the runtime started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Compiled from their bytes.
    pub compiled: u64,
    /// Loaded from the disk cache.
    pub from_disk: u64,
    /// Already compiled in this process (an unchanged file at a reload).
    pub reused: u64,
}

/// The engine and what is tied to it.
pub struct EngineState {
    pub engine: Engine,
    pub linker: Linker<GuestState>,
    max_total_instances: u32,
    keep_resident_bytes: u64,
}

/// A component ready to instantiate: compiled, linked against the node's WASI and
/// wasi:http, its `wasi:http/incoming-handler` export found.
pub struct Compiled {
    pub digest: Digest,
    pub pre: ProxyPre<GuestState>,
}

impl EngineState {
    fn new(settings: &FunctionsSettings) -> Result<Self> {
        let n = settings.max_total_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_stacks(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(4))
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            // The pool's memories go up to what wasm32 addresses; each function's own
            // `memory_limit` is enforced per instance (`guest::Limits`).
            .max_memory_size(
                usize::try_from(super::settings::MAX_MEMORY_LIMIT).unwrap_or(usize::MAX),
            );
        // A fresh instance per request: what the last one in a slot wrote is reset in
        // place (up to `keep_resident_bytes`) rather than given back with madvise and
        // faulted in again. For linear memories only with Linux's PAGEMAP_SCAN (6.7+),
        // which finds the pages an instance wrote: without it the reset is a memset of
        // the memory's first bytes, mostly the guest's untouched shadow stack, which
        // measured slower than giving everything back (bench/RESULTS.md). Tables are
        // reset up to their current size, a few KiB, cheaper than a decommit either way.
        let keep = usize::try_from(settings.keep_resident_bytes).unwrap_or(0);
        let pagemap_scan = PoolingAllocationConfig::is_pagemap_scan_available();
        pool.pagemap_scan(if pagemap_scan {
            Enabled::Yes
        } else {
            Enabled::No
        })
        .linear_memory_keep_resident(if pagemap_scan { keep } else { 0 })
        .table_keep_resident(keep);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the WebAssembly engine")?;
        let mut linker = Linker::new(&engine);
        // All of WASI 0.2 is linked (components built for `wasmtime serve` or Spin
        // import more than the proxy world, e.g. through their standard library), but
        // a store grants none of filesystem or sockets (`guest::GuestState::new`).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        // wasi:keyvalue over the node's namespaces: a bucket opens only for a namespace
        // granted to the function (`keyvalue`).
        super::keyvalue::add_to_linker(&mut linker, GuestState::keyvalue)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("edge-fn-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("cannot start the functions' epoch thread")?;
        info!(
            max_total_instances = n,
            pagemap_scan, "functions engine started"
        );
        Ok(Self {
            engine,
            linker,
            max_total_instances: n,
            keep_resident_bytes: settings.keep_resident_bytes,
        })
    }
}

impl Runtime {
    /// The engine, made on first use with `settings` (sized once: the pool does not
    /// change at a reload).
    pub fn engine(&self, settings: &FunctionsSettings) -> Result<Arc<EngineState>> {
        let mut slot = crate::sync::lock(&self.inner.engine);
        if let Some(e) = &*slot {
            if e.max_total_instances != settings.max_total_instances {
                warn!(
                    key = "functions.max_total_instances",
                    "changed by the reload but takes effect only at the next restart"
                );
            }
            if e.keep_resident_bytes != settings.keep_resident_bytes {
                warn!(
                    key = "functions.keep_resident_bytes",
                    "changed by the reload but takes effect only at the next restart"
                );
            }
            return Ok(e.clone());
        }
        let e = Arc::new(EngineState::new(settings)?);
        *slot = Some(e.clone());
        Ok(e)
    }

    pub fn stats(&self) -> LoadStats {
        let c = &self.inner.stats;
        LoadStats {
            compiled: c.compiled.load(Ordering::Relaxed),
            from_disk: c.from_disk.load(Ordering::Relaxed),
            reused: c.reused.load(Ordering::Relaxed),
        }
    }

    /// The component `bytes`, ready to instantiate: compiled before in this process, or
    /// loaded from `disk`, or compiled now (and stored in `disk`). Errors say what is
    /// wrong with the component (the caller names the file).
    pub fn load(
        &self,
        engine: &EngineState,
        disk: Option<&DiskCache>,
        bytes: &[u8],
    ) -> Result<Arc<Compiled>> {
        let digest = cache::sha256(bytes);
        if let Some(c) = crate::sync::lock(&self.inner.compiled)
            .get(&digest)
            .and_then(Weak::upgrade)
        {
            self.inner.stats.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(c);
        }
        check_header(bytes)?;
        let key = cache::key(&digest, &engine.engine);
        let (component, fresh) = match disk.and_then(|d| d.load(&engine.engine, &key)) {
            Some(c) => {
                self.inner.stats.from_disk.fetch_add(1, Ordering::Relaxed);
                (c, false)
            }
            None => {
                let c = Component::new(&engine.engine, bytes)
                    .map_err(|e| anyhow!("not a valid component: {e:#}"))?;
                self.inner.stats.compiled.fetch_add(1, Ordering::Relaxed);
                (c, true)
            }
        };
        let pre = engine
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("imports something the node does not provide: {e:#}"))?;
        let pre = ProxyPre::new(pre).map_err(|e| {
            anyhow!("does not export wasi:http/incoming-handler (the wasi:http/proxy world): {e:#}")
        })?;
        if fresh && let Some(d) = disk {
            d.store(&key, &component);
        }
        let compiled = Arc::new(Compiled { digest, pre });
        let mut map = crate::sync::lock(&self.inner.compiled);
        map.retain(|_, c| c.strong_count() > 0);
        map.insert(digest, Arc::downgrade(&compiled));
        Ok(compiled)
    }

    /// Reads and loads `f`'s component: errors name the function and the file.
    pub fn load_file(
        &self,
        engine: &EngineState,
        disk: Option<&DiskCache>,
        f: &FunctionSettings,
    ) -> Result<Arc<Compiled>> {
        let at = || format!("function {}: {}", f.name, f.file.display());
        let bytes = std::fs::read(&f.file).with_context(at)?;
        self.load(engine, disk, &bytes).with_context(at)
    }

    /// Loads every component (compiling what is not cached): `edge-node check`.
    pub fn check(&self, global: &FunctionsSettings, functions: &[FunctionSettings]) -> Result<()> {
        if functions.is_empty() {
            return Ok(());
        }
        let engine = self.engine(global)?;
        let disk = DiskCache::open(&global.cache_dir);
        for f in functions {
            self.load_file(&engine, disk.as_ref(), f)?;
        }
        Ok(())
    }

    /// Records the configuration in force (after a start or a successful reload): the
    /// functions uploads may replace, and the upload size limit.
    pub fn set_deployable(&self, global: &FunctionsSettings, functions: &[FunctionSettings]) {
        let mut d = crate::sync::lock(&self.inner.deployable);
        d.global = global.clone();
        d.functions = functions
            .iter()
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
    }

    /// The largest upload accepted.
    pub fn max_upload_bytes(&self) -> u64 {
        crate::sync::lock(&self.inner.deployable)
            .global
            .max_upload_bytes
    }

    /// `PUT /functions/<name>`: checks `bytes` as the component of function `name`
    /// (compiles, links, exports the world) and writes them atomically over its file.
    /// The caller then reloads, which picks the new file up (already compiled: the
    /// returned value holds it until then). Blocking (compiles): call off the async
    /// workers.
    pub fn deploy(&self, name: &str, bytes: &[u8]) -> Result<Deployed, DeployError> {
        let (global, f) = {
            let d = crate::sync::lock(&self.inner.deployable);
            match d.functions.get(name) {
                Some(f) => (d.global.clone(), f.clone()),
                None => return Err(DeployError::Unknown),
            }
        };
        let engine = self
            .engine(&global)
            .map_err(|e| DeployError::Failed(format!("{e:#}")))?;
        let disk = DiskCache::open(&global.cache_dir);
        let compiled = self
            .load(&engine, disk.as_ref(), bytes)
            .map_err(|e| DeployError::Invalid(format!("{e:#}")))?;
        cache::write_atomically(&f.file, bytes, 0o644)
            .map_err(|e| DeployError::Failed(format!("cannot write {}: {e}", f.file.display())))?;
        info!(function = name, file = %f.file.display(), sha256 = %cache::hex(&compiled.digest), "function component replaced");
        Ok(Deployed {
            file: f.file,
            compiled,
        })
    }
}

/// A component written by [`Runtime::deploy`], kept compiled until dropped.
pub struct Deployed {
    pub file: PathBuf,
    compiled: Arc<Compiled>,
}

impl Deployed {
    pub fn sha256(&self) -> String {
        cache::hex(&self.compiled.digest)
    }
}

#[derive(Debug)]
pub enum DeployError {
    /// No function of that name in the configuration in force.
    Unknown,
    /// The bytes are not a usable component (why).
    Invalid(String),
    /// The node could not take it (engine, file system).
    Failed(String),
}

/// A clear word for the commonest mistakes, before the compiler's.
fn check_header(bytes: &[u8]) -> Result<()> {
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        bail!("not WebAssembly (no \\0asm header)");
    }
    // Version 1, layer 0: a core module. Components are layer 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        bail!(
            "a core WebAssembly module, not a component: build for wasm32-wasip2 (or wrap \
             it with `wasm-tools component new`)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_the_mistake() {
        let e = check_header(b"hello world").unwrap_err().to_string();
        assert!(e.contains("not WebAssembly"), "{e}");
        let e = check_header(b"\0asm\x01\0\0\0").unwrap_err().to_string();
        assert!(e.contains("core WebAssembly module"), "{e}");
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
