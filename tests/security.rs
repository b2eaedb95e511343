//! Security at the edge, against a real node and origin on 127.0.0.1: the JWT token
//! matrix (tokens signed here with independent keys), JWKS rotation served by a real
//! HTTP server, rate limits for every key kind, spoofed identity headers, threat scores
//! that challenge and then refuse a client (userspace enforcement, XDP off), the admin
//! API on the source policy, and the proof-of-work challenge solved by headless Chromium.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, admin_section, curl, start_config},
    tls_origin::openssl,
    unique,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";
const ISS: &str = "https://idp.test";
const AUD: &str = "edge";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An RSA key pair: `stem.key` (private, PKCS#8) and `stem.pub` (public, SPKI).
fn rsa_pair(dir: &Path, stem: &str) {
    let key = format!("{stem}.key");
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &key,
        ],
        dir,
    );
    openssl(
        &[
            "pkey",
            "-in",
            &key,
            "-pubout",
            "-out",
            &format!("{stem}.pub"),
        ],
        dir,
    );
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({ "sub": sub, "roles": roles, "iss": ISS, "aud": AUD, "exp": now() + 600, "iat": now() })
}

fn hs(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn rs(claims: &Value, key_pem: &Path, kid: Option<&str>) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(String::from);
    let key = EncodingKey::from_rsa_pem(&std::fs::read(key_pem).unwrap()).unwrap();
    encode(&h, claims, &key).unwrap()
}

fn b64(data: &[u8]) -> String {
    use std::fmt::Write as _;
    // base64url without padding, by hand: the test must not trust the node's encoder.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let _ = out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

const HEAD: &str = "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n";

fn origin_pool(origin: &Origin) -> String {
    format!(
        "\n[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n",
        origin.addr
    )
}

fn route(host: &str, extra: &str) -> String {
    format!("\n[[route]]\nhosts = [\"{host}\"]\nupstream = \"app\"\n{extra}\n")
}

#[test]
fn jwt_token_matrix_roles_and_identity_headers() {
    let dir = std::env::temp_dir().join(unique("edge-jwt-"));
    std::fs::create_dir_all(&dir).unwrap();
    rsa_pair(&dir, "idp");
    rsa_pair(&dir, "other");
    let origin = Origin::start("a");
    let cfg = format!(
        "{HEAD}\n[threat]\nenabled = false\n\
         \n[[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\nissuer = [\"{ISS}\"]\naudience = [\"{AUD}\"]\ncookie = \"sess\"\n\
         \n[[jwt_provider]]\nname = \"rs\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"{pubkey}\"\nissuer = [\"{ISS}\"]\naudience = [\"{AUD}\"]\n\
         \n[[jwt_provider]]\nname = \"mixed\"\nalgorithms = [\"RS256\", \"HS256\"]\npublic_key_file = \"{pubkey}\"\n\
         {pool}{r1}{r2}{r3}{r4}{r5}",
        pubkey = dir.join("idp.pub").display(),
        pool = origin_pool(&origin),
        r1 = route("hs.test", "[route.auth]\nprovider = \"hs\""),
        r2 = route(
            "rs.test",
            "[route.auth]\nprovider = \"rs\"\n[[route.auth.roles]]\npath_prefix = \"/admin\"\nany_of = [\"admin\"]"
        ),
        r3 = route(
            "opt.test",
            "[route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n\
             [[route.auth.roles]]\npath_prefix = \"/admin\"\nany_of = [\"admin\"]\n\
             [[route.auth.roles]]\npath_prefix = \"/\"\nmethods = [\"PUT\", \"DELETE\"]\nany_of = [\"writer\"]"
        ),
        r4 = route("api.test", "api = true\n[route.auth]\nprovider = \"hs\""),
        r5 = route("mixed.test", "[route.auth]\nprovider = \"mixed\""),
    );
    let p = start_config(&cfg);
    let get = |host: &str, path: &str, token: Option<&str>| {
        let h = token.map(bearer);
        let args: Vec<&str> = match &h {
            Some(h) => vec!["-H", h.as_str()],
            None => vec![],
        };
        curl(&p, host, path, &args)
    };

    // A valid token: the origin gets the identity, never the token.
    let good = hs(&claims("alice", &["reader", "writer"]), SECRET);
    let r = get("hs.test", "/", Some(&good));
    assert_eq!(r.status, 200, "{}", p.node.log());
    assert!(r.body.contains("x-user-id: alice"), "{}", r.body);
    assert!(r.body.contains("x-user-roles: reader,writer"), "{}", r.body);
    assert!(!r.body.contains("authorization"), "{}", r.body);
    // The same token from the configured cookie.
    let r = curl(
        &p,
        "hs.test",
        "/",
        &["-H", &format!("Cookie: theme=dark; sess={good}")],
    );
    assert_eq!(r.status, 200);

    // Everything that must fail, and fail the same way: 401 with invalid_token.
    let mut expired = claims("alice", &[]);
    expired["exp"] = json!(now() - 120);
    let mut early = claims("alice", &[]);
    early["nbf"] = json!(now() + 300);
    let mut wrong_iss = claims("alice", &[]);
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = claims("alice", &[]);
    wrong_aud["aud"] = json!("someone-else");
    let mut no_exp = claims("alice", &[]);
    no_exp.as_object_mut().unwrap().remove("exp");
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("alice", &["admin"]).to_string().as_bytes())
    );
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let forged = b64(claims("mallory", &["admin"]).to_string().as_bytes());
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let public_pem = std::fs::read_to_string(dir.join("idp.pub")).unwrap();
    let cases: Vec<(&str, &str, String)> = vec![
        ("expired", "hs.test", hs(&expired, SECRET)),
        ("not yet valid", "hs.test", hs(&early, SECRET)),
        ("wrong issuer", "hs.test", hs(&wrong_iss, SECRET)),
        ("wrong audience", "hs.test", hs(&wrong_aud, SECRET)),
        ("no exp", "hs.test", hs(&no_exp, SECRET)),
        (
            "wrong key",
            "hs.test",
            hs(
                &claims("alice", &[]),
                "another-secret-that-is-32-bytes-long!",
            ),
        ),
        ("alg none", "hs.test", alg_none),
        ("tampered payload", "hs.test", tampered),
        (
            "RS token signed by another key",
            "rs.test",
            rs(&claims("alice", &[]), &dir.join("other.key"), None),
        ),
        // HS/RS confusion: an HMAC over the RSA public key, where RS256 is expected...
        (
            "HS256 with the public key as secret",
            "rs.test",
            hs(&claims("alice", &[]), &public_pem),
        ),
        // ... and where HS256 is accepted too: the RSA key is never an HMAC secret.
        (
            "HS256 with the public key, mixed provider",
            "mixed.test",
            hs(&claims("alice", &[]), &public_pem),
        ),
        ("garbage", "hs.test", "not.a.token".to_string()),
    ];
    for (what, host, token) in &cases {
        let r = get(host, "/", Some(token));
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(
            r.headers
                .contains("www-authenticate: bearer realm=\"edge-node\", error=\"invalid_token\""),
            "{what}: {}",
            r.headers
        );
    }
    assert_eq!(origin.hits(), 2, "no refused token reached the origin");

    // No token where one is required: 401 with a plain Bearer challenge.
    let r = get("hs.test", "/", None);
    assert_eq!(r.status, 401);
    assert!(
        r.headers
            .contains("www-authenticate: bearer realm=\"edge-node\"\r"),
        "{}",
        r.headers
    );
    // API routes answer in JSON.
    let r = get("api.test", "/", None);
    assert_eq!(r.status, 401);
    assert!(
        r.headers.contains("content-type: application/json"),
        "{}",
        r.headers
    );
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"], "unauthorized");

    // Roles: RS256 token without the role → 403 under /admin, fine elsewhere.
    let reader = rs(&claims("bob", &["reader"]), &dir.join("idp.key"), None);
    assert_eq!(get("rs.test", "/admin/panel", Some(&reader)).status, 403);
    assert_eq!(get("rs.test", "/public", Some(&reader)).status, 200);
    let admin = rs(&claims("carol", &["admin"]), &dir.join("idp.key"), None);
    let r = get("rs.test", "/admin/panel", Some(&admin));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("x-user-id: carol"));

    // Optional auth: anonymous is fine, but a spoofed identity never reaches the origin.
    let r = curl(
        &p,
        "opt.test",
        "/",
        &["-H", "X-User-Id: admin", "-H", "X-User-Roles: admin"],
    );
    assert_eq!(r.status, 200);
    assert!(
        !r.body.contains("x-user-id") && !r.body.contains("x-user-roles"),
        "{}",
        r.body
    );
    // With a valid token the node's identity replaces the client's.
    let r = curl(
        &p,
        "opt.test",
        "/",
        &["-H", "X-User-Id: admin", "-H", &bearer(&good)],
    );
    assert!(
        r.body.contains("x-user-id: alice") && !r.body.contains("x-user-id: admin"),
        "{}",
        r.body
    );
    // Optional auth never lets leaving the token out get past a role rule: under one,
    // no token is a 401 (not an anonymous pass), for every method the rule covers.
    assert_eq!(get("opt.test", "/admin/panel", None).status, 401);
    assert_eq!(
        curl(&p, "opt.test", "/admin/panel", &["-I"]).status,
        401,
        "GET rules cover HEAD"
    );
    assert_eq!(curl(&p, "opt.test", "/doc", &["-X", "PUT"]).status, 401);
    assert_eq!(curl(&p, "opt.test", "/doc", &["-X", "DELETE"]).status, 401);
    // Method rules: reading stays anonymous, writing needs the role.
    assert_eq!(get("opt.test", "/doc", None).status, 200);
    let reader_hs = bearer(&hs(&claims("dan", &["reader"]), SECRET));
    assert_eq!(
        curl(&p, "opt.test", "/doc", &["-X", "PUT", "-H", &reader_hs]).status,
        403
    );
    let r = curl(&p, "opt.test", "/doc", &["-X", "PUT", "-H", &bearer(&good)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("x-user-id: alice"), "{}", r.body);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn configured_iss_and_aud_are_required_and_crit_headers_are_refused() {
    let origin = Origin::start("a");
    let cfg = format!(
        "{HEAD}\n[threat]\nenabled = false\n\
         \n[[jwt_provider]]\nname = \"strict\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\nissuer = [\"{ISS}\"]\naudience = [\"{AUD}\"]\n\
         \n[[jwt_provider]]\nname = \"lax\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n\
         {}{}{}",
        origin_pool(&origin),
        route("strict.test", "[route.auth]\nprovider = \"strict\""),
        route("lax.test", "[route.auth]\nprovider = \"lax\""),
    );
    let p = start_config(&cfg);
    let status = |host: &str, token: &str| curl(&p, host, "/", &["-H", &bearer(token)]).status;
    let without = |claim: &str| {
        let mut c = claims("alice", &[]);
        c.as_object_mut().unwrap().remove(claim);
        hs(&c, SECRET)
    };
    // Controls: a complete token passes; a provider that configures neither does not
    // ask for them.
    assert_eq!(
        status("strict.test", &hs(&claims("alice", &[]), SECRET)),
        200
    );
    assert_eq!(status("lax.test", &without("iss")), 200);
    assert_eq!(status("lax.test", &without("aud")), 200);
    // A configured claim left out is as bad as a wrong one.
    assert_eq!(status("strict.test", &without("iss")), 401, "no iss");
    assert_eq!(status("strict.test", &without("aud")), 401, "no aud");
    // iss of the wrong type is not "absent, so fine" either.
    let mut odd = claims("alice", &[]);
    odd["iss"] = json!(42);
    assert_eq!(status("strict.test", &hs(&odd, SECRET)), 401, "iss: 42");

    // RFC 7515 4.1.11: an extension marked critical that the node does not understand
    // (it understands none) makes the token invalid, on every provider.
    let mut h = Header::new(Algorithm::HS256);
    h.crit = Some(vec!["urn:example:must-understand".into()]);
    let crit = encode(
        &h,
        &claims("alice", &[]),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for host in ["strict.test", "lax.test"] {
        let r = curl(&p, host, "/", &["-H", &bearer(&crit)]);
        assert_eq!(r.status, 401, "{host}: crit");
        assert!(
            r.headers.contains("error=\"invalid_token\""),
            "{}",
            r.headers
        );
    }
    assert_eq!(origin.hits(), 3, "no refused token reached the origin");
}

/// A JWKS document served over HTTP, replaceable, counting its fetches; while `down`,
/// connections are closed unanswered.
struct JwksServer {
    url: String,
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl JwksServer {
    fn start(doc: String) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
        let doc = Arc::new(Mutex::new(doc));
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (d, f, off) = (doc.clone(), fetches.clone(), down.clone());
        thread::spawn(move || {
            for conn in l.incoming().take(200) {
                let Ok(mut conn) = conn else { continue };
                if off.load(Ordering::Relaxed) {
                    continue;
                }
                let mut r = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                f.fetch_add(1, Ordering::Relaxed);
                let body = d.lock().unwrap().clone();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            url,
            doc,
            fetches,
            down,
        }
    }
}

fn jwk(private_pem: &Path, kid: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(private_pem).unwrap()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

#[test]
fn jwks_rotation_unknown_kids_and_last_good_keys() {
    let dir = std::env::temp_dir().join(unique("edge-jwks-"));
    std::fs::create_dir_all(&dir).unwrap();
    rsa_pair(&dir, "k1");
    rsa_pair(&dir, "k2");
    let jwks = JwksServer::start(json!({ "keys": [jwk(&dir.join("k1.key"), "k1")] }).to_string());
    let origin = Origin::start("a");
    // The same keys from a JWKS file on disk, for a second provider.
    let jwks_file = dir.join("jwks.json");
    std::fs::write(
        &jwks_file,
        json!({ "keys": [jwk(&dir.join("k1.key"), "k1")] }).to_string(),
    )
    .unwrap();
    let cfg = format!(
        "{HEAD}\n[threat]\nenabled = false\n\n[[jwt_provider]]\nname = \"idp\"\nalgorithms = [\"RS256\"]\njwks_url = \"{}\"\njwks_min_refetch = \"1s\"\n\n[[jwt_provider]]\nname = \"file\"\nalgorithms = [\"RS256\"]\njwks_file = \"{}\"\n{}{}{}",
        jwks.url,
        jwks_file.display(),
        origin_pool(&origin),
        route("app.test", "[route.auth]\nprovider = \"idp\""),
        route("file.test", "[route.auth]\nprovider = \"file\""),
    );
    let p = start_config(&cfg);
    let t1 = rs(&claims("alice", &[]), &dir.join("k1.key"), Some("k1"));
    let t2 = rs(&claims("alice", &[]), &dir.join("k2.key"), Some("k2"));
    let get = |t: &str| curl(&p, "app.test", "/", &["-H", &bearer(t)]).status;
    assert!(
        edge_tests::proxy::eventually(Duration::from_secs(10), || get(&t1) == 200),
        "the JWKS key never verified: {}",
        p.node.log()
    );
    // The file provider verifies k1 and knows nothing of k2.
    let file = |t: &str| curl(&p, "file.test", "/", &["-H", &bearer(t)]).status;
    assert_eq!(file(&t1), 200);
    assert_eq!(file(&t2), 401);
    // A kid the provider does not (yet) have: refused; a flood of them fetches the
    // document at most once per jwks_min_refetch.
    thread::sleep(Duration::from_millis(1100));
    let before = jwks.fetches.load(Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(get(&t2), 401);
    }
    let flood_fetches = jwks.fetches.load(Ordering::Relaxed) - before;
    assert!(
        flood_fetches <= 1,
        "{flood_fetches} fetches for 10 unknown-kid tokens"
    );
    // The provider rotates k2 in: the next unknown-kid token triggers a refetch.
    *jwks.doc.lock().unwrap() =
        json!({ "keys": [jwk(&dir.join("k1.key"), "k1"), jwk(&dir.join("k2.key"), "k2")] })
            .to_string();
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&t2), 200, "{}", p.node.log());
    // The provider breaks (serves garbage): the last good keys stay in force.
    *jwks.doc.lock().unwrap() = "<html>oops</html>".into();
    thread::sleep(Duration::from_millis(1100));
    let t3 = rs(&claims("alice", &[]), &dir.join("k1.key"), Some("k3"));
    assert_eq!(get(&t3), 401); // unknown kid → a refetch, which fails
    assert_eq!(get(&t1), 200);
    assert_eq!(get(&t2), 200);
    assert!(
        p.node.log().contains("keeping the last good keys"),
        "{}",
        p.node.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reload_keeps_jwks_keys_and_spent_rate_limits() {
    let dir = std::env::temp_dir().join(unique("edge-keep-"));
    std::fs::create_dir_all(&dir).unwrap();
    rsa_pair(&dir, "k1");
    let jwks = JwksServer::start(json!({ "keys": [jwk(&dir.join("k1.key"), "k1")] }).to_string());
    let origin = Origin::start("a");
    let cfg = format!(
        "{HEAD}\n[threat]\nenabled = false\n\n[[jwt_provider]]\nname = \"idp\"\nalgorithms = [\"RS256\"]\njwks_url = \"{}\"\n{}{}{}",
        jwks.url,
        origin_pool(&origin),
        route("app.test", "[route.auth]\nprovider = \"idp\""),
        // One request per 100 s after a burst of two.
        route(
            "rl.test",
            "[[route.rate_limit]]\nkey = \"client_ip\"\nper_second = 0.01\nburst = 2"
        ),
    );
    let p = start_config(&cfg);
    let token = |sub: &str| rs(&claims(sub, &[]), &dir.join("k1.key"), Some("k1"));
    let get = |t: &str| curl(&p, "app.test", "/", &["-H", &bearer(t)]).status;
    assert!(
        edge_tests::proxy::eventually(Duration::from_secs(10), || get(&token("alice")) == 200),
        "the JWKS key never verified: {}",
        p.node.log()
    );
    let limited = || curl(&p, "rl.test", "/", &[]).status;
    assert_eq!((limited(), limited(), limited()), (200, 200, 429));

    // The identity provider goes down, then the node reloads its (unchanged) file.
    jwks.down.store(true, Ordering::Relaxed);
    p.node.signal(libc::SIGHUP);
    assert!(
        p.node
            .wait_for_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        p.node.log()
    );
    // A token never seen before (no verification to remember) still verifies with the
    // last good keys...
    assert_eq!(get(&token("bob")), 200, "{}", p.node.log());
    // ... and the burst spent before the reload is still spent.
    assert_eq!(limited(), 429, "a reload granted a fresh burst");
    let _ = std::fs::remove_dir_all(&dir);
}

/// (status, headers) of a request from `src` with `extra` headers.
fn from(p: &Proxy, host: &str, src: &str, extra: &[&str]) -> (u16, String) {
    let mut args = vec!["--interface", src];
    args.extend_from_slice(extra);
    let r = curl(p, host, "/", &args);
    (r.status, r.headers)
}

#[test]
fn rate_limits_for_every_key_kind() {
    let origin = Origin::start("a");
    let limit =
        |key: &str| format!("[[route.rate_limit]]\nkey = \"{key}\"\nper_second = 0.5\nburst = 3");
    let cfg = format!(
        "{HEAD}\n[threat]\nenabled = false\n\n[[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n{}{}{}{}{}",
        origin_pool(&origin),
        route("ip.test", &limit("client_ip")),
        route(
            "user.test",
            &format!(
                "[route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n{}",
                limit("user")
            )
        ),
        route("route.test", &limit("route")),
        route("key.test", &limit("header:x-api-key")),
    );
    let p = start_config(&cfg);
    // Three within the burst, then 429 (a fourth may fit if two seconds passed).
    let burst = |host: &str, src: &str, extra: &[&str]| -> (usize, String) {
        let mut ok = 0;
        let mut refused = String::new();
        for _ in 0..6 {
            let (s, h) = from(&p, host, src, extra);
            match s {
                200 => ok += 1,
                429 => refused = h,
                other => panic!("{host}: status {other}"),
            }
        }
        (ok, refused)
    };
    let (ok, refused) = burst("ip.test", "127.0.0.1", &[]);
    assert!((3..=4).contains(&ok), "{ok} admitted");
    assert!(refused.contains("retry-after: "), "{refused}");
    assert!(
        refused.contains("ratelimit-policy: \"client_ip\";q=3;w=6"),
        "{refused}"
    );
    assert!(
        refused.contains("ratelimit: \"client_ip\";r=0;t="),
        "{refused}"
    );
    // Another address has its own bucket.
    assert_eq!(
        burst("ip.test", "127.0.0.2", &[]).0.clamp(3, 4),
        burst_ok(&p, "ip.test", "127.0.0.3", &[])
    );

    // Per user: alice's bucket is not bob's, whatever address they use.
    let alice = bearer(&hs(&json!({"sub": "alice", "exp": now() + 600}), SECRET));
    let bob = bearer(&hs(&json!({"sub": "bob", "exp": now() + 600}), SECRET));
    let (ok, _) = burst("user.test", "127.0.0.1", &["-H", &alice]);
    assert!((3..=4).contains(&ok));
    assert_eq!(from(&p, "user.test", "127.0.0.2", &["-H", &alice]).0, 429);
    assert_eq!(from(&p, "user.test", "127.0.0.1", &["-H", &bob]).0, 200);

    // Per route: one bucket for everybody.
    let (ok, _) = burst("route.test", "127.0.0.1", &[]);
    assert!((3..=4).contains(&ok));
    assert_eq!(from(&p, "route.test", "127.0.0.4", &[]).0, 429);

    // Per API key (falling back to the address without one).
    let (ok, _) = burst("key.test", "127.0.0.1", &["-H", "X-Api-Key: k-1"]);
    assert!((3..=4).contains(&ok));
    assert_eq!(
        from(&p, "key.test", "127.0.0.2", &["-H", "X-Api-Key: k-1"]).0,
        429
    );
    assert_eq!(
        from(&p, "key.test", "127.0.0.1", &["-H", "X-Api-Key: k-2"]).0,
        200
    );
    assert_eq!(from(&p, "key.test", "127.0.0.5", &[]).0, 200);
    // Admitted responses carry the fields too.
    let (_, h) = from(&p, "key.test", "127.0.0.6", &[]);
    assert!(h.contains("ratelimit: \"header\";r=2;"), "{h}");
}

fn burst_ok(p: &Proxy, host: &str, src: &str, extra: &[&str]) -> usize {
    let ok = (0..6)
        .filter(|_| from(p, host, src, extra).0 == 200)
        .count();
    ok.clamp(3, 4)
}

#[test]
fn abusive_clients_are_challenged_then_refused_and_operators_can_clear_them() {
    let origin = Origin::start("a");
    let cfg = format!(
        "[xdp]\nmode = \"off\"\ndrop_threshold = 60\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n[threat]\nchallenge_threshold = 20\nhalf_life = \"1h\"\n{}{}{}{}",
        origin_pool(&origin),
        route("app.test", ""),
        route("api.test", "api = true"),
        admin_section(),
    );
    let p = start_config(&cfg);
    let bad = "127.0.0.2";
    assert_eq!(from(&p, "app.test", bad, &[]).0, 200);
    // A probe of a blocked path: 404, and a score over the challenge threshold.
    let r = curl(&p, "app.test", "/.env", &["--interface", bad]);
    assert_eq!(r.status, 404);
    let r = curl(&p, "app.test", "/page", &["--interface", bad]);
    assert_eq!(r.status, 403);
    assert!(
        r.headers.contains("content-type: text/html"),
        "{}",
        r.headers
    );
    assert!(
        r.body.contains("id=\"edge-challenge\"") && r.body.contains("name=\"r\" value=\"/page\""),
        "{}",
        r.body
    );
    assert!(r.headers.contains("cache-control: no-store"));
    // An API gets a machine-readable answer instead of the page.
    let r = curl(&p, "api.test", "/v1", &["--interface", bad]);
    assert_eq!(r.status, 429);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["error"],
        "challenge_required"
    );
    // A wrong answer is a failed challenge (more score): with the probe, over the drop
    // threshold: the connection is refused before a byte of HTTP is read.
    let r = curl(
        &p,
        "app.test",
        "/.edge-node/challenge",
        &["--interface", bad, "--data", "t=v1.1.2.3&n=1&r=/"],
    );
    assert_eq!(r.status, 403);
    let r = curl(&p, "app.test", "/.env", &["--interface", bad]);
    assert!(r.status == 404 || r.status == 0);
    let r = curl(&p, "app.test", "/", &["--interface", bad]);
    assert_eq!(r.status, 0, "a refused source got an answer: {}", r.headers);
    // Everyone else is untouched, and nothing of this reached the origin.
    assert_eq!(from(&p, "app.test", "127.0.0.1", &[]).0, 200);
    assert_eq!(origin.hits(), 2);
    // The operator sees the source in the policy and clears it through the admin API.
    let (code, listed) = p.admin("GET", "/policy");
    assert_eq!(code, 200);
    assert!(listed.contains("127.0.0.2"), "{listed}");
    assert_eq!(p.admin("POST", "/policy/score?ip=127.0.0.2&score=0").0, 200);
    assert_eq!(from(&p, "app.test", bad, &[]).0, 200);
    // And blocks a prefix by hand, with a TTL.
    assert_eq!(
        p.admin("POST", "/policy/block?cidr=127.0.0.7/32&ttl=1h").0,
        200
    );
    assert_eq!(from(&p, "app.test", "127.0.0.7", &[]).0, 0);
    assert_eq!(p.admin("POST", "/policy/unblock?cidr=127.0.0.7/32").0, 200);
    assert_eq!(from(&p, "app.test", "127.0.0.7", &[]).0, 200);
    assert_eq!(p.admin("POST", "/policy/score?ip=nonsense&score=5").0, 400);
    // Without the token: nothing.
    let addr = p.node.logged_addr("admin listening").unwrap();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg(format!("http://{addr}/policy/score?ip=127.0.0.1&score=500"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}

/// Debian's Chromium, or `None` (a loud skip; with CI=true a failure).
fn chromium() -> Option<&'static str> {
    let path = "/usr/bin/chromium";
    if Path::new(path).exists() {
        return Some(path);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "chromium is missing (cargo xtask test installs it) and CI=true forbids skipping"
    );
    eprintln!(
        "\n!!!!!!!! SKIPPED: /usr/bin/chromium missing (apt install chromium, or run `cargo xtask test`) !!!!!!!!\n"
    );
    None
}

#[test]
fn a_real_browser_solves_the_challenge_and_a_script_less_client_does_not() {
    let Some(browser) = chromium() else { return };
    let origin = Origin::start("a");
    let cfg = format!(
        "{HEAD}\n[threat]\nchallenge_threshold = 20\nhalf_life = \"1h\"\n\n[challenge]\ndifficulty = 12\nsecrets = [\"{SECRET}\"]\n{}\n[[route]]\nhosts = [\"127.0.0.1\"]\nupstream = \"app\"\n",
        origin_pool(&origin),
    );
    let p = start_config(&cfg);
    let url = |path: &str| format!("{}{path}", p.base);
    // The client probes a blocked path and is challenged from then on.
    let probe = Command::new("curl")
        .args(["-s", "-o", "/dev/null", &url("/.env")])
        .status()
        .unwrap();
    assert!(probe.success());
    let page = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", &url("/hello?x=1")])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout).into_owned();
    assert!(
        page.ends_with("\n403") && page.contains("edge-challenge"),
        "{page}"
    );
    assert_eq!(origin.hits(), 0);

    // Headless Chromium runs the page's work, posts the answer, gets the clearance and
    // lands on the page it asked for.
    let profile = std::env::temp_dir().join(unique("edge-chromium-"));
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=30000",
            "--timeout=60000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url("/hello?x=1"))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        dom.contains("origin=a") && dom.contains("path=/hello"),
        "the browser did not get through:\n{dom}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.node.log()
    );
    assert!(
        !dom.contains("edge_clearance"),
        "the clearance cookie reached the origin: {dom}"
    );
    // (The browser may also have fetched /favicon.ico with its clearance.)
    let hits = origin.hits();
    assert!(hits >= 1);
    // curl, which runs no script, is still refused.
    let again = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url("/hello"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout), "403");
    assert_eq!(origin.hits(), hits);
}
