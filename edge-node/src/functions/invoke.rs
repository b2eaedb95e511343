//! One request through one function: a fresh instance (from the pre-instantiated
//! component) in a store of its own, run as a task under the function's deadline, its
//! response handed back as soon as the guest sets it and its body streamed from the
//! running guest.

use std::{
    net::IpAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};
use sync_wrapper::SyncWrapper;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, warn};
use wasmtime::{PoolConcurrencyLimitError, Store, Trap};
use wasmtime_wasi_http::{
    WasiHttpView,
    p2::{
        bindings::{ProxyPre, http::types::Scheme},
        body::HyperOutgoingBody,
    },
};

use super::{
    grants::{Grants, Outbound},
    guest::GuestState,
    keyvalue::{Granted, KvCtx},
    runtime::{Compiled, EngineState},
    settings::FunctionSettings,
};
use crate::error::{Body, BoxError, EdgeError, ErrorKind};

/// How long a request waits for one of the function's instances to be free before it
/// is turned away (503): long enough to absorb a burst, short enough not to queue
/// behind a function that is stuck.
pub const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// A function of the configuration in force.
pub struct Function {
    pub name: Arc<str>,
    pub compiled: Arc<Compiled>,
    engine: Arc<EngineState>,
    env: Vec<(String, String)>,
    memory_limit: u64,
    timeout: Duration,
    max_instances: u32,
    permits: Arc<Semaphore>,
    grants: Arc<Grants>,
    /// The `[[kv]]` namespaces it may open through wasi:keyvalue.
    kv: Granted,
}

/// Why a function gave no (complete) response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Its instances (or the node's pool) are all busy.
    Busy(String),
    /// The deadline passed.
    Timeout(Duration),
    /// It ran out of its memory limit (and trapped).
    Memory(u64),
    /// It trapped (a panic, an unreachable, a stack overflow, ...).
    Trap(String),
    /// It returned without setting a response.
    NoResponse,
    /// It set an error code as its response.
    ErrorCode(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Busy(why) => write!(f, "busy: {why}"),
            Self::Timeout(t) => write!(f, "deadline of {t:?} passed; instance stopped"),
            Self::Memory(limit) => write!(f, "memory exhausted (memory_limit {limit} bytes)"),
            Self::Trap(t) => write!(f, "trapped: {t}"),
            Self::NoResponse => f.write_str("returned without setting a response"),
            Self::ErrorCode(c) => write!(f, "answered with error code {c}"),
        }
    }
}

impl Failure {
    /// The error the client's response is made from (a generic body: the cause stays
    /// in the detail, for the log).
    pub fn to_error(&self, function: &str) -> EdgeError {
        let kind = match self {
            Self::Busy(_) => ErrorKind::FunctionBusy,
            Self::Timeout(_) => ErrorKind::FunctionTimeout,
            _ => ErrorKind::FunctionFailed,
        };
        let e = EdgeError::new(kind, format!("function {function}: {self}"));
        match self {
            Self::Busy(_) => e.with_header(http::header::RETRY_AFTER, "1"),
            _ => e,
        }
    }

    /// What a failed run says, from the error wasmtime returned.
    fn of(e: &wasmtime::Error, memory_limit_hit: bool, memory_limit: u64) -> Self {
        if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
            return Self::Busy(format!("{e}"));
        }
        if memory_limit_hit {
            return Self::Memory(memory_limit);
        }
        match e.downcast_ref::<Trap>() {
            // `{e:?}` carries the wasm backtrace; the trap's own words come first.
            Some(t) => Self::Trap(format!("{t}: {e:?}").replace('\n', " | ")),
            None => Self::Trap(format!("{e:#}")),
        }
    }
}

impl Function {
    pub fn new(
        s: &FunctionSettings,
        compiled: Arc<Compiled>,
        engine: Arc<EngineState>,
        grants: Grants,
        kv: Granted,
    ) -> Self {
        Self {
            name: s.name.as_str().into(),
            compiled,
            engine,
            env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            memory_limit: s.memory_limit,
            timeout: s.timeout,
            max_instances: s.max_instances,
            permits: Arc::new(Semaphore::new(s.max_instances as usize)),
            grants: Arc::new(grants),
            kv,
        }
    }

    pub async fn handle(
        &self,
        req: Request<Body>,
        client_ip: IpAddr,
    ) -> Result<Response<Body>, EdgeError> {
        let name = &self.name;
        let permit =
            match tokio::time::timeout(QUEUE_WAIT, self.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    let f = Failure::Busy(format!(
                        "all {} instances stayed busy for {QUEUE_WAIT:?}",
                        self.max_instances
                    ));
                    warn!(function = %name, cause = %f, "function failed");
                    return Err(f.to_error(name));
                }
            };
        // The deadline covers the whole exchange, from instantiation to the body's end.
        let deadline = Instant::now() + self.timeout;
        let state = GuestState::new(
            name,
            &self.env,
            self.memory_limit,
            Outbound {
                function: name.clone(),
                grants: self.grants.clone(),
                client_ip,
                in_flight: Arc::new(tokio::sync::Semaphore::new(super::grants::MAX_OUTGOING)),
            },
            KvCtx::new(name.clone(), self.kv.clone()),
        );
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        // Every epoch tick the guest yields to the async runtime: a loop never holds a
        // worker thread, and the deadline's timer gets to run.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let scheme = match req.uri().scheme_str() {
            Some("https") => Scheme::Https,
            _ => Scheme::Http,
        };
        let req = req
            .map(|b| b.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))));
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(scheme, req)
            // Not the client's fault (a request the node accepted): no threat signal.
            .map_err(|e| {
                EdgeError::new(ErrorKind::FunctionFailed, format!("function {name}: {e:#}"))
            })?;
        let (tx, rx) = oneshot::channel();
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(|e| Failure::Trap(format!("{e:#}")).to_error(name))?;
        let failure = Arc::new(OnceLock::new());
        let task = tokio::spawn(run(
            store,
            self.compiled.pre.clone(),
            incoming,
            out,
            Run {
                deadline,
                timeout: self.timeout,
                memory_limit: self.memory_limit,
                failure: failure.clone(),
                function: name.clone(),
                _permit: permit,
            },
        ));
        // The caller may give up on the request (client gone): the instance goes too.
        let mut task = AbortOnDrop(Some(task));
        match rx.await {
            Ok(Ok(resp)) => Ok(resp.map(|b| {
                GuestBody {
                    inner: SyncWrapper::new(b),
                    failure,
                    task: task.0.take(),
                    function: name.clone(),
                    finished: false,
                }
                .boxed()
            })),
            Ok(Err(code)) => {
                let f = Failure::ErrorCode(format!("{code:?}"));
                warn!(function = %name, cause = %f, "function failed");
                Err(f.to_error(name))
            }
            // The response slot went with the instance: a failure (recorded before
            // the store was dropped), or a guest that never set a response.
            Err(_) => Err(match failure.get() {
                Some(f) => f.to_error(name),
                None => {
                    let f = Failure::NoResponse;
                    warn!(function = %name, cause = %f, "function failed");
                    f.to_error(name)
                }
            }),
        }
    }
}

/// What the instance's task needs besides the store.
struct Run {
    deadline: Instant,
    timeout: Duration,
    memory_limit: u64,
    failure: Arc<OnceLock<Failure>>,
    function: Arc<str>,
    /// The function's instance slot, held as long as the instance lives.
    _permit: OwnedSemaphorePermit,
}

async fn run(
    mut store: Store<GuestState>,
    pre: ProxyPre<GuestState>,
    req: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
    out: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
    r: Run,
) {
    let ran = tokio::time::timeout_at(r.deadline, async {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
    })
    .await;
    let failed = match ran {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Failure::of(&e, store.data().limits.hit, r.memory_limit)),
        Err(_) => Some(Failure::Timeout(r.timeout)),
    };
    match failed {
        Some(f) => {
            warn!(function = %r.function, cause = %f, "function failed");
            let _ = r.failure.set(f);
        }
        None => debug!(function = %r.function, "function done"),
    }
    // Only now: the response body, ending when the store goes, finds the failure.
    drop(store);
}

struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// The guest's response body as the node's body: streamed as the guest writes it. An
/// instance that failed before finishing it ends it with an error (never a clean end a
/// client would take for the whole body); a client that goes away stops the instance.
struct GuestBody {
    inner: SyncWrapper<HyperOutgoingBody>,
    failure: Arc<OnceLock<Failure>>,
    task: Option<JoinHandle<()>>,
    function: Arc<str>,
    finished: bool,
}

impl HttpBody for GuestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        match Pin::new(this.inner.get_mut()).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finished = true;
                match this.failure.get() {
                    Some(f) => {
                        Poll::Ready(Some(Err(format!("function {}: {f}", this.function).into())))
                    }
                    None => Poll::Ready(None),
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.finished = true;
                Poll::Ready(Some(Err(format!(
                    "function {}: response body: {e}",
                    this.function
                )
                .into())))
            }
            other => other.map(|f| f.map(|r| r.map_err(BoxError::from))),
        }
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        // After a finished body the instance may still be working (it has until its
        // deadline); before, nobody is reading any more.
        if !self.finished
            && let Some(t) = self.task.take()
        {
            t.abort();
        }
    }
}
