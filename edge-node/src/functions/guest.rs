//! What one instance's store holds: its WASI context (environment, log streams, no
//! files, no sockets), its wasi:http state with the node's outgoing hooks, its
//! wasi:keyvalue state (the granted namespaces), and its memory limit.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tracing::{info, warn};
use wasmtime::{ResourceLimiter, component::ResourceTable};
use wasmtime_wasi::{
    WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
    cli::{IsTerminal, StdoutStream},
    p2::{OutputStream, Pollable, StreamResult},
};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::{
    grants::Outbound,
    keyvalue::{KvCtx, KvView},
};

/// Live handles one instance may hold (requests, headers, streams, buckets, ...): far above what
/// a handler needs, far below what would let a guest grow the node's own memory (each
/// `fields` may hold up to `MAX_FIELD_BYTES`).
const MAX_HANDLES: usize = 1_000;

/// Bytes one guest-made set of header fields may hold: as much as the node accepts in
/// a client's request head.
const MAX_FIELD_BYTES: usize = 64 * 1024;

/// A guest log line longer than this is split.
const MAX_LINE: usize = 4096;

pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: Outbound,
    kv: KvCtx,
    pub limits: Limits,
}

impl GuestState {
    pub fn new(
        function: &Arc<str>,
        env: &[(String, String)],
        memory_limit: u64,
        outbound: Outbound,
        kv: KvCtx,
    ) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let wasi = WasiCtxBuilder::new()
            .envs(env)
            .stdout(GuestLog::new(function.clone(), Stream::Stdout))
            .stderr(GuestLog::new(function.clone(), Stream::Stderr))
            // Capabilities come by grant only: no sockets (outgoing HTTP goes through
            // wasi:http and the grants), no name lookups, no preopened directories.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        Self {
            wasi,
            http: {
                let mut http = WasiHttpCtx::new();
                http.set_field_size_limit(MAX_FIELD_BYTES);
                http
            },
            table,
            outbound,
            kv,
            limits: Limits {
                memory: usize::try_from(memory_limit).unwrap_or(usize::MAX),
                hit: false,
            },
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl GuestState {
    /// What `wasi:keyvalue` works on (`keyvalue::add_to_linker`).
    pub fn keyvalue(&mut self) -> KvView<'_> {
        KvView {
            ctx: &mut self.kv,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// The function's memory limit, and whether the guest ran into it (so a trap that
/// follows is reported as memory exhaustion).
pub struct Limits {
    memory: usize,
    pub hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Refused, not trapped: `memory.grow` returns -1 and the guest decides (most
        // abort, which traps).
        if desired > self.memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Bounded by the instance pool's table size.
        Ok(true)
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// The guest's stdout or stderr: complete lines go to the node's log with the
/// function's name (stderr as warnings); what is left of a line is logged when the
/// instance ends.
#[derive(Clone)]
struct GuestLog(Arc<Mutex<LineBuffer>>);

struct LineBuffer {
    function: Arc<str>,
    stream: Stream,
    pending: Vec<u8>,
}

impl GuestLog {
    fn new(function: Arc<str>, stream: Stream) -> Self {
        Self(Arc::new(Mutex::new(LineBuffer {
            function,
            stream,
            pending: Vec::new(),
        })))
    }

    fn write(&self, bytes: &[u8]) {
        crate::sync::lock(&self.0).push(bytes);
    }
}

impl LineBuffer {
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.pending.len();
            match bytes.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&bytes[..i]);
                    self.emit();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    let n = room.min(bytes.len());
                    self.pending.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.pending.len() == MAX_LINE {
                        self.emit();
                    }
                }
            }
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.trim_end_matches('\r');
        match self.stream {
            Stream::Stdout => info!(function = %self.function, stream = "stdout", "{line}"),
            Stream::Stderr => warn!(function = %self.function, stream = "stderr", "{line}"),
        }
        self.pending.clear();
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestLog::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: the node's log writer drops lines rather than wait.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_at_newlines_and_at_the_length_limit() {
        let mut b = LineBuffer {
            function: "f".into(),
            stream: Stream::Stdout,
            pending: Vec::new(),
        };
        b.push(b"one\ntw");
        assert_eq!(b.pending, b"tw");
        b.push(b"o\n");
        assert!(b.pending.is_empty());
        b.push(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(b.pending.len(), 10);
    }
}
