//! Cost per request of the security phases, measured with criterion on the node's own
//! code: the auth phase as a route runs it (a client repeating its token: the verified
//! token cache), the signature check of a token seen for the first time (HS256, RS256,
//! ES256), the rate-limit phase (a hot key and a stream of new keys), a threat signal,
//! and a clearance check; and the shield's guards: the HTTP/2 frame-flood guard per
//! frame (read and write paths, and the same reads without it), the request target made
//! canonical, and the cache key. `cargo xtask bench security` runs it and records the
//! medians.

use std::{
    collections::HashMap,
    hint::black_box,
    io,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use edge_node::{
    auth::{JwtProvider, JwtProviderSettings},
    phases::{
        auth::{RouteAuth, RouteAuthSettings},
        cache::{RouteCache, RouteCacheSettings},
        challenge::{ChallengeSettings, Challenger},
        rate_limit::{self, RateLimit, RateLimitSettings},
    },
    policy::{Signal, Source, ThreatEngine, ThreatSettings},
    server::h2guard::H2FloodGuard,
    target::{PathSettings, canonical_path},
};
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
const SECRET: &str = "benchmark-secret-of-at-least-32-bytes";

fn provider(name: &str, alg: &str, key: &str) -> JwtProviderSettings {
    let text = format!(
        "name = \"{name}\"\nalgorithms = [\"{alg}\"]\nissuer = [\"https://idp.bench\"]\naudience = [\"edge\"]\n{key}\n"
    );
    toml::from_str(&text).expect("provider settings")
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": "user-42", "roles": ["reader"], "iss": "https://idp.bench", "aud": "edge", "exp": exp});
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn auth_phase(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let read = |f: &str| std::fs::read(format!("{FIXTURES}/{f}")).unwrap();
    let cases = [
        (
            "auth_phase_hs256_repeat_token",
            provider("hs", "HS256", &format!("secret = \"{SECRET}\"")),
            token(
                Algorithm::HS256,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
        ),
        (
            "auth_phase_rs256_repeat_token",
            provider(
                "rs",
                "RS256",
                &format!("public_key_file = \"{FIXTURES}/rsa.pub\""),
            ),
            token(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(&read("rsa.key")).unwrap(),
            ),
        ),
        (
            "auth_phase_es256_repeat_token",
            provider(
                "es",
                "ES256",
                &format!("public_key_file = \"{FIXTURES}/ec.pub\""),
            ),
            token(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&read("ec.key")).unwrap(),
            ),
        ),
    ];
    for (name, settings, tok) in cases {
        // First sight: the signature and claims check the cache saves on repeats.
        let alg = jsonwebtoken::decode_header(&tok).unwrap().alg;
        let key = match alg {
            Algorithm::HS256 => jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::RS256 => jsonwebtoken::DecodingKey::from_rsa_pem(&read("rsa.pub")).unwrap(),
            _ => jsonwebtoken::DecodingKey::from_ec_pem(&read("ec.pub")).unwrap(),
        };
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_issuer(&["https://idp.bench"]);
        v.set_audience(&["edge"]);
        c.bench_function(
            &name
                .replace("auth_phase", "jwt_first_sight")
                .replace("_repeat_token", ""),
            |b| {
                b.iter(|| {
                    black_box(jsonwebtoken::decode::<serde_json::Value>(&tok, &key, &v).unwrap())
                })
            },
        );
        let mut providers = HashMap::new();
        providers.insert(
            settings.name.clone(),
            Arc::new(JwtProvider::new(&settings).unwrap()),
        );
        let route: RouteAuthSettings =
            toml::from_str(&format!("provider = \"{}\"", settings.name)).unwrap();
        let auth = RouteAuth::new(&route, &providers).unwrap().unwrap();
        let bearer = HeaderValue::from_str(&format!("Bearer {tok}")).unwrap();
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut h = HeaderMap::new();
                h.insert(header::AUTHORIZATION, bearer.clone());
                let id = rt
                    .block_on(auth.check(&mut h, "/x", &http::Method::GET))
                    .map_err(|_| ())
                    .unwrap();
                black_box(id)
            })
        });
    }
}

/// A local limit's check never waits: polled once, it is done.
fn local_check(limits: &[RateLimit], ip: IpAddr, headers: &HeaderMap) -> usize {
    use futures_util::FutureExt;
    rate_limit::check(limits, ip, None, headers)
        .now_or_never()
        .expect("local limits never wait")
        .unwrap()
        .len()
}

fn rate_limit_phase(c: &mut Criterion) {
    let s: RateLimitSettings =
        toml::from_str("key = \"client_ip\"\nper_second = 1e9\nburst = 1000000").unwrap();
    let limits = vec![RateLimit::new(&s).unwrap()];
    let headers = HeaderMap::new();
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    c.bench_function("rate_limit_phase_hot_key", |b| {
        b.iter(|| black_box(local_check(&limits, ip, &headers)))
    });
    let mut n: u32 = 0;
    c.bench_function("rate_limit_phase_new_key", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let ip = IpAddr::from(n.to_be_bytes());
            black_box(local_check(&limits, ip, &headers))
        })
    });
}

fn threat_and_challenge(c: &mut Criterion) {
    let t = ThreatEngine::new(&ThreatSettings::default(), u32::MAX, None);
    let ip: IpAddr = "198.51.100.9".parse().unwrap();
    c.bench_function("threat_signal", |b| {
        b.iter(|| black_box(t.signal(Source::peer(ip, &[]), Signal::RateLimited)))
    });
    c.bench_function("threat_standing", |b| b.iter(|| black_box(t.standing(ip))));
    let s = ChallengeSettings {
        secrets: vec![SECRET.into()],
        ..Default::default()
    };
    let ch = Challenger::new(&s).unwrap();
    let cookie =
        HeaderValue::from_str(&format!("{}={}", ch.cookie_name(), ch.clearance(ip))).unwrap();
    c.bench_function("challenge_clearance_check", |b| {
        b.iter(|| {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, cookie.clone());
            black_box(ch.take_clearance(&mut h, ip))
        })
    });
}

/// One end of an HTTP/2 connection in memory: what the client sent, to be read; what
/// the node writes goes nowhere.
struct Wire<'a>(&'a [u8]);

impl AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A page load's connection: what the client sends (preface, SETTINGS, the connection
/// window widened, then 100 requests, a quarter of them POSTs with a 1 KiB body, each
/// answer of four 16 KiB DATA frames acknowledged on the stream and the connection
/// every other frame), how many frames that is, and the DATA frames the node sends.
fn h2_connection() -> (Vec<u8>, u64, Vec<u8>) {
    let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    client.extend(h2_frame(
        0x4,
        0,
        0,
        &[0, 3, 0, 0, 0, 100, 0, 4, 0, 0x60, 0, 0],
    ));
    client.extend(h2_frame(0x8, 0, 0, &0x00ef_0001u32.to_be_bytes()));
    let mut frames = 2;
    // A browser's header block after the first request: mostly indexed fields.
    let block = [
        0x82u8, 0x87, 0x41, 0x88, 0x2f, 0x91, 0xd3, 0x5d, 0x05, 0x5c, 0x87, 0xa7,
    ]
    .repeat(4);
    for n in 0..100u32 {
        let stream = 2 * n + 1;
        let post = n % 4 == 0;
        client.extend(h2_frame(0x1, if post { 0x4 } else { 0x5 }, stream, &block));
        frames += 1;
        if post {
            client.extend(h2_frame(0x0, 0x1, stream, &[b'x'; 1024]));
            frames += 1;
        }
        for _ in 0..2 {
            client.extend(h2_frame(0x8, 0, stream, &32768u32.to_be_bytes()));
            client.extend(h2_frame(0x8, 0, 0, &32768u32.to_be_bytes()));
            frames += 2;
        }
    }
    let node: Vec<u8> = (0..400)
        .flat_map(|n| h2_frame(0x0, 0, 2 * (n / 4) + 1, &[b'y'; 16384]))
        .collect();
    (client, frames, node)
}

/// Reads all of `from` in 16 KiB reads (hyper's are 8 to 16 KiB); how many bytes.
fn read_all(from: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    loop {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *from).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return total,
            Poll::Ready(Ok(())) => total += rb.filled().len(),
            _ => panic!("the guard cut an ordinary connection"),
        }
    }
}

fn h2_guard(c: &mut Criterion) {
    let (client, frames, node) = h2_connection();
    let data_frames: Vec<&[u8]> = node.chunks(9 + 16384).collect();
    let mut buf = vec![0u8; 16384];
    let mut cx = Context::from_waker(Waker::noop());
    // Per frame read: whole connections, each guard having written its answers first
    // (untimed), scaled to the frames asked for.
    let mut per_frame = |guarded: bool, iters: u64| {
        let (mut spent, mut done) = (Duration::ZERO, 0u64);
        while done < iters {
            if guarded {
                let mut g = H2FloodGuard::new(Wire(&client), |_| {});
                for f in &data_frames {
                    let _ = Pin::new(&mut g).poll_write(&mut cx, f);
                }
                let start = Instant::now();
                black_box(read_all(&mut g, &mut buf));
                spent += start.elapsed();
            } else {
                let mut w = Wire(&client);
                let start = Instant::now();
                black_box(read_all(&mut w, &mut buf));
                spent += start.elapsed();
            }
            done += frames;
        }
        Duration::from_nanos((spent.as_nanos() * u128::from(iters) / u128::from(done)) as u64)
    };
    c.bench_function("h2_guard_read_per_frame", |b| {
        b.iter_custom(|iters| per_frame(true, iters))
    });
    c.bench_function("h2_unguarded_read_per_frame", |b| {
        b.iter_custom(|iters| per_frame(false, iters))
    });
    // Per DATA frame the node writes (header and payload in one write).
    let mut g = H2FloodGuard::new(Wire(&[]), |_| {});
    let mut next = data_frames.iter().cycle();
    c.bench_function("h2_guard_write_per_frame", |b| {
        b.iter(|| {
            let f = next.next().unwrap();
            black_box(Pin::new(&mut g).poll_write(&mut cx, f))
        })
    });
}

fn target_and_cache_key(c: &mut Criterion) {
    let policy = PathSettings::default();
    c.bench_function("canonical_path_clean", |b| {
        b.iter(|| black_box(canonical_path(black_box("/products/shoes/red-42"), policy)))
    });
    c.bench_function("canonical_path_messy", |b| {
        b.iter(|| black_box(canonical_path(black_box("/a/./b/../c//%7Euser/x"), policy)))
    });
    let settings: RouteCacheSettings = toml::from_str("default_ttl = \"60s\"").unwrap();
    let cache = RouteCache::new(&settings).unwrap();
    let req = http::Request::builder()
        .uri("/products/shoes?size=42&color=red")
        .header(header::HOST, "app.test")
        .header(header::ACCEPT_ENCODING, "gzip, br")
        .body(())
        .unwrap();
    c.bench_function("cache_key", |b| {
        b.iter(|| black_box(cache.key("https", &req, None, None)))
    });
}

criterion_group!(
    benches,
    auth_phase,
    rate_limit_phase,
    threat_and_challenge,
    h2_guard,
    target_and_cache_key
);
criterion_main!(benches);
