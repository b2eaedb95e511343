//! Caching as HTTP defines it, against a real node and origin on 127.0.0.1: end-to-end
//! headers reach the origin, `Vary` decides the variants (also on headers the node sets),
//! Authorization keeps responses out of the shared cache unless they say otherwise,
//! unsafe requests invalidate, CDN-Cache-Control speaks to the edge alone, and numbers
//! an origin sends are read as RFC 9111 says.

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, Reply, curl, start_config},
};

fn node(origin: &Origin, route_cache: &str) -> Proxy {
    start_config(&format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n[threat]\nenabled = false\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n[route.cache]\n{route_cache}\n",
        origin.addr,
    ))
}

fn x_cache(r: &Reply) -> String {
    r.headers
        .lines()
        .find_map(|l| l.strip_prefix("x-cache: "))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn end_to_end_headers_reach_the_origin_and_vary_decides_the_variants() {
    let origin = Origin::start("app");
    let p = node(&origin, "");
    let path = "/v?cc=max-age%3D60&vary=accept-language";
    let lang = |l: &str| {
        curl(
            &p,
            "app.test",
            path,
            &["-H", &format!("Accept-Language: {l}"), "-A", "agent/1.0"],
        )
    };
    for l in ["en", "de", "fr"] {
        let r = lang(l);
        assert_eq!(x_cache(&r), "miss", "{l}: {}", r.headers);
        // The origin sees what the client sent: the header it varies on, and the rest.
        assert!(
            r.body.contains(&format!("accept-language: {l}\n")),
            "{}",
            r.body
        );
        assert!(r.body.contains("user-agent: agent/1.0\n"), "{}", r.body);
    }
    for l in ["en", "de", "fr"] {
        let r = lang(l);
        assert_eq!(x_cache(&r), "hit", "{l}: {}", r.headers);
        assert!(
            r.body.contains(&format!("accept-language: {l}\n")),
            "{}",
            r.body
        );
    }
    assert_eq!(origin.hits(), 3);

    // Vary on a header the node itself sets toward the origin matches too.
    let path = "/n?cc=max-age%3D60&vary=x-forwarded-proto";
    assert_eq!(x_cache(&curl(&p, "app.test", path, &[])), "miss");
    assert_eq!(x_cache(&curl(&p, "app.test", path, &[])), "hit");

    // The client's conditional and Range headers are the cache's to answer: the origin
    // is asked for the whole response.
    let r = curl(
        &p,
        "app.test",
        "/c?cc=max-age%3D60",
        &["-H", "If-None-Match: \"x\"", "-H", "Range: bytes=0-3"],
    );
    assert!(!r.body.contains("if-none-match"), "{}", r.body);
}

#[test]
fn authorized_requests_reach_the_origin_and_stay_out_of_the_shared_cache() {
    let origin = Origin::start("app");
    let p = node(&origin, "");
    let alice = ["-H", "Authorization: Basic YWxpY2U6cA=="];
    // Not marked shareable: forwarded with its credentials, never stored.
    let r = curl(&p, "app.test", "/me?cc=max-age%3D60", &alice);
    assert!(
        r.body.contains("authorization: Basic YWxpY2U6cA=="),
        "{}",
        r.body
    );
    let r = curl(&p, "app.test", "/me?cc=max-age%3D60", &[]);
    assert_eq!(x_cache(&r), "miss", "{}", r.headers);
    assert!(
        !r.body.contains("authorization"),
        "another client got alice's page: {}",
        r.body
    );
    // `public` (or s-maxage, must-revalidate) says it may be shared (RFC 9111 3.5).
    let shared = "/doc?cc=public%2C%20max-age%3D60";
    assert_eq!(x_cache(&curl(&p, "app.test", shared, &alice)), "miss");
    assert_eq!(x_cache(&curl(&p, "app.test", shared, &[])), "hit");
}

#[test]
fn strict_routes_forward_only_the_key() {
    let origin = Origin::start("app");
    let p = node(
        &origin,
        "strip_unkeyed = true\nkey_headers = [\"accept-language\"]",
    );
    let r = curl(
        &p,
        "app.test",
        "/s?cc=max-age%3D60",
        &["-H", "Accept-Language: de", "-A", "agent/1.0"],
    );
    assert!(r.body.contains("accept-language: de\n"), "{}", r.body);
    assert!(!r.body.contains("user-agent"), "{}", r.body);
}

#[test]
fn successful_unsafe_requests_invalidate_what_they_change() {
    let origin = Origin::start("app");
    let p = node(&origin, "default_ttl = \"60s\"");
    let get = |path: &str| x_cache(&curl(&p, "app.test", path, &[]));
    for path in ["/doc", "/other", "/list"] {
        assert_eq!(get(path), "miss");
        assert_eq!(get(path), "hit");
    }
    // The POST's own URL, and the same-origin URL its Location names.
    let r = curl(&p, "app.test", "/doc", &["-X", "POST", "-d", "x"]);
    assert_eq!(r.status, 200);
    assert_eq!(get("/doc"), "miss");
    let r = curl(
        &p,
        "app.test",
        "/new?location=/list",
        &["-X", "PUT", "-d", "x"],
    );
    assert_eq!(r.status, 200);
    assert_eq!(get("/list"), "miss");
    // Another origin's URL in Location is not this response's to invalidate.
    let r = curl(
        &p,
        "app.test",
        "/new?location=http://elsewhere.test/other",
        &["-X", "DELETE"],
    );
    assert_eq!(r.status, 200);
    assert_eq!(get("/other"), "hit");
}

#[test]
fn cdn_cache_control_and_numbers_as_rfc_9111_reads_them() {
    let origin = Origin::start("app");
    let p = node(&origin, "");
    let get = |path: &str| x_cache(&curl(&p, "app.test", path, &[]));
    // The edge keeps what browsers must not; and the other way round.
    let edge_only = "/e?cc=no-store&cdncc=max-age%3D60";
    assert_eq!(get(edge_only), "miss");
    assert_eq!(get(edge_only), "hit");
    let browser_only = "/b?cc=max-age%3D60&cdncc=no-store";
    assert_eq!(get(browser_only), "miss");
    assert_eq!(get(browser_only), "miss");
    // Lifetimes past what a cache represents are 2^31 s, not an overflow.
    let huge = "/h?cc=max-age%3D18446744073709551615%2C%20stale-if-error%3D18446744073709551615";
    assert_eq!(get(huge), "miss");
    assert_eq!(get(huge), "hit");
    assert_eq!(curl(&p, "app.test", "/", &[]).status, 200);
}

/// `n` clients asking for `path` at the same time; their X-Cache labels.
fn at_once(p: &Proxy, n: usize, path: &str) -> Vec<String> {
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..n)
            .map(|_| s.spawn(|| x_cache(&curl(p, "app.test", path, &[]))))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

#[test]
fn nobody_can_turn_off_coalescing_for_everyone() {
    let origin = Origin::start("app");
    origin.set_delay_ms(300);
    let p = node(&origin, "");
    // A HEAD miss and an authorized miss: neither answer is stored, but a plain GET's
    // would be, so the key stays coalesced.
    for (path, args) in [
        ("/h?cc=max-age%3D60", vec!["-I"]),
        ("/a?cc=max-age%3D60", vec!["-H", "Authorization: Bearer x"]),
    ] {
        let before = origin.hits();
        assert_eq!(curl(&p, "app.test", path, &args).status, 200);
        let labels = at_once(&p, 8, path);
        assert_eq!(
            origin.hits() - before,
            2,
            "{path}: 8 concurrent misses after one that was not stored: {labels:?}"
        );
    }
}

#[test]
fn a_route_can_ignore_clients_reloads() {
    let origin = Origin::start("app");
    let p = node(&origin, "ignore_client_no_cache = true");
    let path = "/r?cc=max-age%3D60";
    assert_eq!(x_cache(&curl(&p, "app.test", path, &[])), "miss");
    for h in [
        "Cache-Control: no-cache",
        "Cache-Control: max-age=0",
        "Pragma: no-cache",
    ] {
        assert_eq!(
            x_cache(&curl(&p, "app.test", path, &["-H", h])),
            "hit",
            "{h}"
        );
    }
    assert_eq!(origin.hits(), 1);
    // The default honours them.
    let q = node(&origin, "");
    assert_eq!(x_cache(&curl(&q, "app.test", path, &[])), "miss");
    assert_ne!(
        x_cache(&curl(
            &q,
            "app.test",
            path,
            &["-H", "Cache-Control: no-cache"]
        )),
        "hit"
    );
}

#[test]
fn a_range_of_an_object_too_large_to_store_stops_reading_when_the_client_is_done() {
    let origin = Origin::start("app");
    let p = node(&origin, "max_object_bytes = 1000");
    // 200 kB, its second half a second late: the client wants 10 bytes of the first.
    let r = curl(
        &p,
        "app.test",
        "/big?cc=max-age%3D60&size=200000&body_delay=1000",
        &["-H", "Range: bytes=0-9"],
    );
    assert_eq!((r.status, r.body.len()), (206, 10), "{}", r.headers);
    // Nobody will store it and nobody wants the rest: the node let the origin's
    // connection go instead of reading 100 kB more into the void. (Read to the end,
    // the connection would have gone back to the pool and served this request.)
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(curl(&p, "app.test", "/next", &[]).status, 200);
    assert_eq!(
        origin.connections(),
        2,
        "the origin connection was read to the end"
    );
}

#[test]
fn identity_headers_reach_the_origin_on_strict_routes() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";
    let origin = Origin::start("app");
    let p = start_config(&format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n[threat]\nenabled = false\n\
         [[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n\
         user_header = \"x-account\"\nroles_header = \"x-account-roles\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n\
         [route.auth]\nprovider = \"hs\"\n\
         [route.cache]\nstrip_unkeyed = true\n",
        origin.addr,
    ));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "sub": "alice", "roles": ["reader"], "exp": exp }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let r = curl(
        &p,
        "app.test",
        "/me?cc=max-age%3D60",
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-A",
            "agent/1.0",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The node's own identity headers, whatever their names; nothing unkeyed.
    assert!(r.body.contains("x-account: alice\n"), "{}", r.body);
    assert!(r.body.contains("x-account-roles: reader\n"), "{}", r.body);
    assert!(!r.body.contains("user-agent"), "{}", r.body);
}
