//! Request workers: one single-threaded tokio runtime per core. The listeners accept on
//! the control runtime and hand each connection to the worker with the fewest; the
//! connection and its HTTP/2 streams then stay on that thread, and its requests use
//! origin connections living on that thread whenever the worker has one idle
//! (`upstream::h1pool`). No work stealing, no cross-thread wakeups, no contended pool
//! locks on the hot path: they cost more than the requests themselves under load.

use std::{
    cell::Cell,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use anyhow::{Context as _, Result};
use tokio::{runtime::Handle, sync::oneshot};

thread_local! {
    /// The worker this thread runs, if it is one.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker running on this thread (`None` on the control runtime).
pub fn current() -> Option<usize> {
    INDEX.get()
}

/// How many workers to run: one per core this process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct Worker {
    handle: Handle,
    connections: Arc<AtomicUsize>,
    /// Dropped with the last `Workers`: the worker's runtime then stops.
    _stop: oneshot::Sender<()>,
}

/// The running workers; they stop (their remaining tasks dropped) when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Workers(Arc<[Worker]>);

impl Workers {
    pub fn start(count: usize) -> Result<Self> {
        let mut workers = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build a worker runtime")?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("edge-worker-{i}"))
                .spawn(move || {
                    INDEX.set(Some(i));
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                    // Connections past the drain timeout (tunnels, say) end here.
                    rt.shutdown_background();
                })
                .context("cannot start a worker thread")?;
            workers.push(Worker {
                handle,
                connections: Arc::default(),
                _stop: stop,
            });
        }
        Ok(Self(workers.into()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Connections being served, on all workers.
    pub fn connections(&self) -> usize {
        self.0.iter().map(|w| w.connections.load(Relaxed)).sum()
    }

    /// Runs `task` on worker `i` (a listener of its own, say).
    pub fn spawn_on<F>(&self, i: usize, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0[i % self.0.len()].handle.spawn(task)
    }

    /// Runs a connection's future on the worker with the fewest connections.
    pub fn spawn_connection<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let w = self
            .0
            .iter()
            .min_by_key(|w| w.connections.load(Relaxed))
            .expect("at least one worker");
        w.connections.fetch_add(1, Relaxed);
        let count = Counted(w.connections.clone());
        w.handle.spawn(async move {
            let _count = count;
            connection.await;
        });
    }
}

/// Takes a connection off its worker's count when the connection ends.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
