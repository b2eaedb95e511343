//! Cost per request of the security phases, measured with criterion on the node's own
//! code: the auth phase as a route runs it (a client repeating its token: the verified
//! token cache), the signature check of a token seen for the first time (HS256, RS256,
//! ES256), the rate-limit phase (a hot key and a stream of new keys), a threat signal,
//! and a clearance check. `cargo xtask bench security` runs it and records the medians.

use std::{collections::HashMap, hint::black_box, net::IpAddr, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use edge_node::{
    auth::{JwtProvider, JwtProviderSettings},
    phases::{
        auth::{RouteAuth, RouteAuthSettings},
        challenge::{ChallengeSettings, Challenger},
        rate_limit::{self, RateLimit, RateLimitSettings},
    },
    policy::{Signal, Source, ThreatEngine, ThreatSettings},
};
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

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
                    .block_on(auth.check(&mut h, "/x"))
                    .map_err(|_| ())
                    .unwrap();
                black_box(id)
            })
        });
    }
}

fn rate_limit_phase(c: &mut Criterion) {
    let s: RateLimitSettings =
        toml::from_str("key = \"client_ip\"\nper_second = 1e9\nburst = 1000000").unwrap();
    let limits = vec![RateLimit::new(&s).unwrap()];
    let headers = HeaderMap::new();
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    c.bench_function("rate_limit_phase_hot_key", |b| {
        b.iter(|| black_box(rate_limit::check(&limits, ip, None, &headers).unwrap()))
    });
    let mut n: u32 = 0;
    c.bench_function("rate_limit_phase_new_key", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let ip = IpAddr::from(n.to_be_bytes());
            black_box(rate_limit::check(&limits, ip, None, &headers).unwrap())
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

criterion_group!(benches, auth_phase, rate_limit_phase, threat_and_challenge);
criterion_main!(benches);
