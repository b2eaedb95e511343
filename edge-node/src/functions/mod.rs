//! Serverless functions: WebAssembly components of the standard `wasi:http/proxy` world
//! (WASI 0.2), run by wasmtime. A component built for `wasmtime serve` or Spin runs here
//! unchanged; it gets only what it is granted.
//!
//! # Configuration
//! ```toml
//! [functions]                      # optional; process-wide
//! cache_dir = "/var/lib/edge-node/functions"
//! max_total_instances = 1000       # the engine's instance pool (restart to change)
//! max_upload_bytes = 67108864      # PUT /functions/<name> on the admin API
//!
//! [[function]]
//! name = "hello"
//! file = "/etc/edge-node/functions/hello.wasm"
//! memory_limit = 67108864          # bytes of linear memory per instance
//! timeout = "10s"                  # the whole exchange, body streaming included
//! max_instances = 64               # at once; over it: wait up to 1 s, then 503
//! upstreams = ["api"]              # reachable as http://api/... through the pool
//! kv = ["users"]                   # [[kv]] namespaces it may open (wasi:keyvalue)
//! env = { GREETING = "hi" }        # WASI environment variables
//! ```
//!
//! # Using it (the pipeline)
//! - [`Runtime`] lives across reloads (a field of `pipeline::retained::Retained`): the
//!   engine, and compiled components by content hash.
//! - [`Functions::new`]`(&retained.functions, &config.functions, &config.function,
//!   &upstreams, &pool, &namespaces)` in `Pipeline::new` (the upstream map, pool and
//!   open KV namespaces the pipeline built): loads every component (in-memory, then disk cache, then compile), links
//!   it and checks it exports `wasi:http/incoming-handler`. Errors name the function
//!   and its file. Without functions it costs nothing (no engine is made).
//! - Keep it as `Arc<Functions>` (`Send + Sync`) and call
//!   [`Functions::handle`]`(name, request, client_ip)` for a route whose handler is a
//!   function. The request's URI may be origin-form (with a `Host` header) or absolute;
//!   its scheme is `https` only if the URI says so. The guest sees the request as the
//!   pipeline passes it (forwarding headers are the pipeline's to set). The response
//!   body streams from the running guest.
//! - Errors are `EdgeError`s: `FunctionFailed` (500: trap, memory exhausted, no
//!   response), `FunctionTimeout` (504), `FunctionBusy` (503, `Retry-After: 1`); each
//!   failure is also logged with the function's name and cause. A failure after the
//!   response started ends its body with an error.
//! - After a start or a successful reload, `Runtime::set_deployable` records which
//!   functions `PUT /functions/<name>` may replace (`app.rs` does it).
//!
//! # Capabilities (by grant only)
//! Outgoing HTTP only to the function's `upstreams`, by name, through the node's pools
//! (`grants`); the `[[kv]]` namespaces of its `kv` through `wasi:keyvalue`
//! (`keyvalue`: same data, semantics and limits as the KV route); environment
//! variables from `env`; stdout/stderr into the node's log
//! (line by line, with the function's name). No files, no sockets, no name lookups.
//!
//! # Limits
//! One instance per request (instantiated from a pre-linked component, so a request
//! pays for an instance, not a compile). A guest yields to the async runtime every
//! epoch tick (10 ms): a loop never holds a worker. Per function: `memory_limit`,
//! `timeout`, `max_instances`; for the process: `max_total_instances`.

mod cache;
mod grants;
mod guest;
mod invoke;
pub mod keyvalue;
mod runtime;
pub mod settings;

#[cfg(test)]
pub(crate) mod tests;

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use anyhow::Result;
use http::{Request, Response};

pub use grants::Denied;
pub use invoke::{Failure, QUEUE_WAIT};
pub use runtime::{DeployError, Deployed, LoadStats, Runtime};
pub use settings::{FunctionSettings, FunctionsSettings, validate};

use crate::{
    error::{Body, EdgeError, ErrorKind},
    kv::Namespace,
    upstream::{Pool, Upstream},
};

/// The functions of one configuration, ready to serve.
pub struct Functions {
    by_name: HashMap<String, Arc<invoke::Function>>,
}

impl Functions {
    /// Loads the components of `functions` (validated settings) with the grants they
    /// name out of the node's `upstreams`, reached through `pool`, and its open KV
    /// `namespaces` (every one a function is granted).
    pub fn new(
        runtime: &Runtime,
        global: &FunctionsSettings,
        functions: &[FunctionSettings],
        upstreams: &HashMap<String, Arc<Upstream>>,
        pool: &Pool,
        namespaces: &HashMap<String, Arc<Namespace>>,
    ) -> Result<Self> {
        let mut by_name = HashMap::new();
        if functions.is_empty() {
            return Ok(Self { by_name });
        }
        let engine = runtime.engine(global)?;
        let disk = cache::DiskCache::open(&global.cache_dir);
        for f in functions {
            let compiled = runtime.load_file(&engine, disk.as_ref(), f)?;
            let grants = grants::Grants::new(&f.upstreams, upstreams, pool)
                .map_err(|e| e.context(format!("function {}", f.name)))?;
            let mut kv = HashMap::new();
            for n in &f.kv {
                let Some(ns) = namespaces.get(n) else {
                    anyhow::bail!(
                        "function {}: kv namespace {n:?} is granted but not open",
                        f.name
                    );
                };
                kv.insert(n.clone(), ns.clone());
            }
            let function = invoke::Function::new(f, compiled, engine.clone(), grants, Arc::new(kv));
            if by_name.insert(f.name.clone(), Arc::new(function)).is_some() {
                anyhow::bail!("function {} is defined twice", f.name);
            }
        }
        Ok(Self { by_name })
    }

    /// Whether a function of that name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The SHA-256 (hex) of the component function `name` runs.
    pub fn sha256(&self, name: &str) -> Option<String> {
        self.by_name
            .get(name)
            .map(|f| cache::hex(&f.compiled.digest))
    }

    /// Runs function `name` on `req` from `client_ip`.
    pub async fn handle(
        &self,
        name: &str,
        req: Request<Body>,
        client_ip: IpAddr,
    ) -> Result<Response<Body>, EdgeError> {
        match self.by_name.get(name) {
            // A guest's 1xx (a 101 above all) would switch or confuse the client's
            // connection: the node alone speaks those.
            Some(f) => match f.handle(req, client_ip).await? {
                resp if resp.status().is_informational() => Err(EdgeError::new(
                    ErrorKind::FunctionFailed,
                    format!("function {name} answered {}", resp.status()),
                )),
                resp => Ok(resp),
            },
            None => Err(EdgeError::new(
                ErrorKind::FunctionFailed,
                format!("no function named {name:?} is configured"),
            )),
        }
    }
}
