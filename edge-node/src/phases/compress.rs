//! Compression (`[compression]`, on by default; a route opts out with `compress = false`):
//! a response is compressed on the fly with what the client accepts (`Accept-Encoding`
//! with q-values; zstd, then br, then gzip when the client rates them alike) when its
//! type is text-like, its body is not known to be under `min_bytes`, and nothing else
//! encoded it. BREACH (a secret and what an attacker reflects, compressed together,
//! leak through the length): answers that set cookies, and answers to credentialed
//! requests (`Authorization`, or an identity the route's auth established) unless they
//! are public or shared from the cache, are sent as they are; so are `no-transform`
//! answers, ranges and 204s. A 304 for a client that accepts a coding carries the weak
//! validator and `Vary` of the 200 it revalidates.
//!
//! The cache keeps the identity copy; a hit is compressed once per encoding and the
//! result kept (`memo_bytes`), so a hot object costs the CPU once, not per request.
//! Responses that may be compressed say `Vary: Accept-Encoding`; a strong `ETag` of a
//! compressed body becomes weak (the bytes are not the origin's), and `Accept-Ranges`
//! goes (ranges of the compressed body are not offered).
//!
//! The client's header is read before any phase rewrites it (`early_request`): a
//! personalized page is fetched uncompressed for its rewrite and compressed after it.

use std::{sync::Arc, time::Duration};

use anyhow::{Result, bail};
use async_compression::Level;
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;

use crate::{
    error::{Body, BoxError},
    metrics::Metrics,
    request::{Flow, Phase, PhaseFuture, RequestCtx},
};

/// `[compression]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSettings {
    /// Compress responses at all (the phase is left out when off; routes may opt out
    /// with `compress = false`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Bodies known to be shorter are sent as they are (compression would not pay).
    #[serde(default = "default_min_bytes")]
    pub min_bytes: u64,
    /// Media types compressed (`text/*` covers every text type); others pass as they are.
    #[serde(default = "default_types")]
    pub types: Vec<String>,
    /// Levels: fast ones by default, since every miss is compressed as it streams.
    #[serde(default = "default_gzip_level")]
    pub gzip_level: u32,
    #[serde(default = "default_brotli_level")]
    pub brotli_level: u32,
    #[serde(default = "default_zstd_level")]
    pub zstd_level: u32,
    /// Compressed copies of cached answers kept (bytes), so a hit costs no compression.
    #[serde(default = "default_memo_bytes")]
    pub memo_bytes: u64,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_bytes: default_min_bytes(),
            types: default_types(),
            gzip_level: default_gzip_level(),
            brotli_level: default_brotli_level(),
            zstd_level: default_zstd_level(),
            memo_bytes: default_memo_bytes(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_min_bytes() -> u64 {
    512
}
fn default_types() -> Vec<String> {
    [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/wasm",
        "application/manifest+json",
        "image/svg+xml",
        "*+json",
        "*+xml",
    ]
    .map(String::from)
    .to_vec()
}
fn default_gzip_level() -> u32 {
    5
}
fn default_brotli_level() -> u32 {
    4
}
fn default_zstd_level() -> u32 {
    3
}
fn default_memo_bytes() -> u64 {
    64 << 20
}

impl CompressionSettings {
    pub fn validate(&self) -> Result<()> {
        // Every miss is compressed as it streams: the slowest levels (brotli 10-11, zstd
        // past 15) would make each one a CPU sink an attacker can call on.
        if self.gzip_level > 9 || self.brotli_level > 9 || !(1..=15).contains(&self.zstd_level) {
            bail!("compression: gzip_level is 0 to 9, brotli_level 0 to 9, zstd_level 1 to 15");
        }
        for t in &self.types {
            let ok = t
                .split_once('/')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
                || t.starts_with("*+");
            if !ok || t.bytes().any(|b| b.is_ascii_whitespace() || b == b';') {
                bail!("compression.types: {t:?} is no media type (type/subtype, type/*, *+suffix)");
            }
        }
        Ok(())
    }

    fn compressible(&self, content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let Some((top, _)) = essence.split_once('/') else {
            return false;
        };
        // gRPC frames its messages and compresses them itself (grpc-encoding), whatever
        // its suffix says.
        if essence.starts_with("application/grpc") {
            return false;
        }
        self.types.iter().any(|t| {
            t.eq_ignore_ascii_case(&essence)
                || t.strip_suffix("/*")
                    .is_some_and(|p| p.eq_ignore_ascii_case(top))
                || t.strip_prefix('*')
                    .is_some_and(|suffix| essence.ends_with(suffix))
        })
    }
}

/// A content coding the node produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

impl Encoding {
    /// In the node's order of preference among codings the client rates alike.
    const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// The coding to answer with for an `Accept-Encoding` (RFC 9110 12.5.3): the highest
/// q-value above 0 among the codings the node produces (an explicit token beats `*`);
/// none without the header or when nothing acceptable is produced here.
pub fn negotiate(headers: &HeaderMap) -> Option<Encoding> {
    let mut best: Option<(u16, usize, Encoding)> = None;
    let mut wildcard: Option<u16> = None;
    let mut named = [None; 3];
    for item in crate::headers::list(headers, header::ACCEPT_ENCODING) {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1000u16;
        for p in parts {
            let p = p.trim();
            if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                q = parse_q(v.trim()).unwrap_or(0);
            }
        }
        if token == "*" {
            wildcard = Some(q);
            continue;
        }
        let token = if token == "x-gzip" {
            "gzip".to_string()
        } else {
            token
        };
        if let Some(i) = Encoding::ALL.iter().position(|e| e.token() == token) {
            named[i] = Some(q);
        }
    }
    for (i, e) in Encoding::ALL.iter().enumerate() {
        let q = named[i].or(wildcard).unwrap_or(0);
        if q == 0 {
            continue;
        }
        // Higher q wins; on a tie the node's order (lower index).
        if best.is_none_or(|(bq, bi, _)| q > bq || (q == bq && i < bi)) {
            best = Some((q, i, *e));
        }
    }
    best.map(|(_, _, e)| e)
}

/// A q-value in thousandths (`0`, `0.5`, `1.000`); `None` when malformed.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac),
        "1" if frac == 0 => Some(1000),
        _ => None,
    }
}

/// The coding the client accepts, read before any phase rewrites `Accept-Encoding`, the
/// request's method, and whether it carried `Authorization` (its answer may hold a
/// secret).
struct Accepted(Encoding, Method, bool);

/// A cached answer's identity (`phases::cache` puts it on a hit's response): the key
/// it was stored under and when, so its compressed copies can be kept.
#[derive(Clone)]
pub struct StoredCopy {
    pub key: Arc<[u8]>,
    pub stored_at: std::time::Instant,
}

type MemoKey = (Arc<[u8]>, std::time::Instant, Encoding);

pub struct CompressPhase {
    pub settings: CompressionSettings,
    /// Per route: whether it compresses (`compress = false` opts out).
    pub routes: Vec<bool>,
    pub metrics: Arc<Metrics>,
    memo: moka::sync::Cache<MemoKey, Bytes>,
}

impl CompressPhase {
    pub fn new(settings: CompressionSettings, routes: Vec<bool>, metrics: Arc<Metrics>) -> Self {
        let memo = moka::sync::Cache::builder()
            .max_capacity(settings.memo_bytes)
            .weigher(|k: &MemoKey, v: &Bytes| {
                (k.0.len() + v.len() + 64).min(u32::MAX as usize) as u32
            })
            .time_to_idle(Duration::from_secs(3600))
            .build();
        Self {
            settings,
            routes,
            metrics,
            memo,
        }
    }

    fn level(&self, e: Encoding) -> Level {
        let l = match e {
            Encoding::Zstd => self.settings.zstd_level,
            Encoding::Brotli => self.settings.brotli_level,
            Encoding::Gzip => self.settings.gzip_level,
        };
        Level::Precise(l as i32)
    }

    /// Whether this response may be compressed at all (for `Vary`), and whether it is
    /// worth it here (the known length).
    fn candidate(&self, resp: &Response<Body>) -> Candidate {
        let h = resp.headers();
        let status = resp.status();
        if !status.is_success()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::PARTIAL_CONTENT
        {
            return Candidate::No;
        }
        let typed = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| self.settings.compressible(t));
        // (A tunnel's 200 has no type: never a candidate.)
        if !typed
            || crate::headers::list(h, header::CACHE_CONTROL)
                .any(|d| d.eq_ignore_ascii_case("no-transform"))
        {
            return Candidate::No;
        }
        let encoded = h
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let short = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n < self.settings.min_bytes);
        if encoded || short || h.contains_key(header::SET_COOKIE) {
            Candidate::VaryOnly
        } else {
            Candidate::Yes
        }
    }
}

enum Candidate {
    No,
    /// The answer could differ by `Accept-Encoding`, but this one is sent as it is.
    VaryOnly,
    Yes,
}

impl Phase for CompressPhase {
    fn name(&self) -> &'static str {
        "compress"
    }

    fn early_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> PhaseFuture<'a> {
        // Most requests (tools, benchmarks, origins' health checks) accept nothing: no
        // state kept for them.
        if let Some(e) = negotiate(req.headers()) {
            let credentialed = req.headers().contains_key(header::AUTHORIZATION);
            ctx.state
                .put(Accepted(e, req.method().clone(), credentialed));
        }
        Box::pin(std::future::ready(Ok(Flow::Continue)))
    }

    fn response(&self, ctx: &mut RequestCtx, resp: &mut Response<Body>) {
        if !ctx.route_index().is_some_and(|i| self.routes[i]) {
            return;
        }
        // A revalidation: when the 200 it stands for went out compressed to this client
        // (its type says so; the cache's 304s carry the stored headers), the 304 carries
        // that answer's validator and Vary.
        if resp.status() == StatusCode::NOT_MODIFIED {
            let compressible = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| self.settings.compressible(t));
            if compressible && ctx.state.get::<Accepted>().is_some() {
                add_vary(resp.headers_mut());
                weaken_etag(resp.headers_mut());
            }
            return;
        }
        match self.candidate(resp) {
            Candidate::No => return,
            Candidate::VaryOnly => {
                add_vary(resp.headers_mut());
                return;
            }
            Candidate::Yes => add_vary(resp.headers_mut()),
        }
        let Some(Accepted(encoding, method, credentialed)) = ctx.state.take::<Accepted>() else {
            return;
        };
        // BREACH: an answer for this client alone (its token, or the identity the
        // route's auth found) is sent as it is, unless it is meant for everyone.
        let shared = resp.extensions().get::<StoredCopy>().is_some()
            || crate::headers::list(resp.headers(), header::CACHE_CONTROL)
                .any(|d| d.eq_ignore_ascii_case("public"));
        if (credentialed || ctx.user.is_some()) && !shared {
            return;
        }
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::ACCEPT_RANGES);
        weaken_etag(h);
        if method == Method::HEAD {
            return;
        }
        let body = std::mem::replace(resp.body_mut(), crate::error::empty());
        let level = self.level(encoding);
        let stored = resp.extensions().get::<StoredCopy>().cloned();
        *resp.body_mut() = match stored {
            // A cached answer: compressed once, then the kept copy.
            Some(copy) => {
                let key = (copy.key, copy.stored_at, encoding);
                match self.memo.get(&key) {
                    Some(done) => {
                        self.metrics.compressed(encoding.token(), "reused");
                        crate::error::full(done)
                    }
                    None => {
                        self.metrics.compressed(encoding.token(), "stored");
                        once_compressed(body, encoding, level, self.memo.clone(), key)
                    }
                }
            }
            None => {
                self.metrics.compressed(encoding.token(), "streamed");
                streamed(body, encoding, level)
            }
        };
    }
}

/// A strong validator names the origin's bytes; the compressed ones get its weak form.
fn weaken_etag(h: &mut HeaderMap) {
    if let Some(etag) = h.get(header::ETAG).cloned()
        && !etag.as_bytes().starts_with(b"W/")
        && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
    {
        h.insert(header::ETAG, weak);
    }
}

fn add_vary(h: &mut HeaderMap) {
    let present = crate::headers::list(h, header::VARY)
        .any(|v| v == "*" || v.eq_ignore_ascii_case("accept-encoding"));
    if !present {
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// `body` through a streaming encoder: each chunk compressed as it arrives (flushed as
/// the encoder fills, so a slow origin's first bytes still move).
fn streamed(body: Body, encoding: Encoding, level: Level) -> Body {
    use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
    let chunks = body
        .into_data_stream()
        .map_err(|e: BoxError| std::io::Error::other(e));
    let reader = tokio_util::io::StreamReader::new(chunks);
    let out: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send + Sync>> = match encoding {
        Encoding::Zstd => Box::pin(ZstdEncoder::with_quality(reader, level)),
        Encoding::Brotli => Box::pin(BrotliEncoder::with_quality(reader, level)),
        Encoding::Gzip => Box::pin(GzipEncoder::with_quality(reader, level)),
    };
    let frames = tokio_util::io::ReaderStream::new(out)
        .map_ok(hyper::body::Frame::data)
        .map_err(|e| -> BoxError { Box::new(e) });
    BodyExt::boxed(http_body_util::StreamBody::new(frames))
}

/// `body` (a cached answer, in memory) compressed whole and kept in `memo`: on a
/// blocking thread (a large object must not hold a runtime worker for the whole
/// compression), and once for concurrent hits of the same copy (the memo's `get_with`
/// lets one compress while the others wait for its result).
fn once_compressed(
    body: Body,
    encoding: Encoding,
    level: Level,
    memo: moka::sync::Cache<MemoKey, Bytes>,
    key: MemoKey,
) -> Body {
    let done = async move {
        let whole = body.collect().await?.to_bytes();
        let runtime = tokio::runtime::Handle::current();
        let out = tokio::task::spawn_blocking(move || {
            memo.get_with(key, || {
                runtime.block_on(async {
                    let mut compressed = streamed(crate::error::full(whole), encoding, level);
                    let mut out = bytes::BytesMut::new();
                    while let Some(Ok(frame)) = compressed.frame().await {
                        if let Ok(data) = frame.into_data() {
                            out.extend_from_slice(&data);
                        }
                    }
                    out.freeze()
                })
            })
        })
        .await
        .map_err(|e| -> BoxError { Box::new(e) })?;
        Ok::<_, BoxError>(hyper::body::Frame::data(out))
    };
    BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::once(
        done,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Option<Encoding> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        negotiate(&h)
    }

    #[test]
    fn negotiation_follows_q_values_then_the_nodes_order() {
        assert_eq!(negotiate(&HeaderMap::new()), None);
        assert_eq!(accept("gzip, deflate, br, zstd"), Some(Encoding::Zstd));
        assert_eq!(accept("gzip, br"), Some(Encoding::Brotli));
        assert_eq!(accept("gzip;q=1.0, br;q=0.5"), Some(Encoding::Gzip));
        assert_eq!(accept("br;q=0, gzip"), Some(Encoding::Gzip));
        assert_eq!(accept("*"), Some(Encoding::Zstd));
        assert_eq!(accept("*;q=0.5, gzip;q=0.8"), Some(Encoding::Gzip));
        assert_eq!(accept("*;q=0"), None);
        assert_eq!(accept("identity"), None);
        assert_eq!(accept("deflate"), None);
        assert_eq!(accept("x-gzip"), Some(Encoding::Gzip));
        // Malformed q-values count as 0, never as acceptance.
        assert_eq!(accept("br;q=2, gzip;q=abc"), None);
        assert_eq!(accept("GZIP;Q=0.3"), Some(Encoding::Gzip));
    }

    #[test]
    fn types_match_by_essence_family_and_suffix() {
        let s = CompressionSettings::default();
        for t in [
            "text/html; charset=utf-8",
            "TEXT/CSS",
            "application/json",
            "application/ld+json",
            "application/atom+xml",
            "image/svg+xml",
        ] {
            assert!(s.compressible(t), "{t}");
        }
        for t in [
            "image/png",
            "application/grpc+json",
            "application/octet-stream",
            "video/mp4",
            "",
            "json",
        ] {
            assert!(!s.compressible(t), "{t}");
        }
    }
}
