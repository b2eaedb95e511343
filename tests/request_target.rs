//! One request target and one authority, against a real node and origin on 127.0.0.1:
//! paths in every spelling take the route (and its auth and role rules, blocked paths
//! and cache key) of the path the origin is sent; the absolute-form authority wins over
//! `Host`; and cache keys of different requests never collide.

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, admin_section, curl, raw, start_config, status_of},
};

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

fn token(roles: &[&str]) -> String {
    edge_tests::jwt::hs256("alice", roles, SECRET)
}

/// curl sending the path exactly as written (no dot-segment squashing of its own).
fn get(p: &Proxy, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let mut args = vec!["--path-as-is"];
    args.extend_from_slice(extra);
    let r = curl(p, host, path, &args);
    (r.status, r.body)
}

#[test]
fn paths_in_every_spelling_take_the_route_the_origin_serves() {
    let origin = Origin::start("app");
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
         [threat]\nenabled = false\nblocked_paths = [\"/.env\", \"/wp-admin/\"]\n\
         [[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"a.test\"]\npath_prefix = \"/admin\"\nupstream = \"app\"\n\
         [route.auth]\nprovider = \"hs\"\n\
         [[route]]\nhosts = [\"a.test\"]\nupstream = \"app\"\n\
         [[route]]\nhosts = [\"roles.test\"]\nupstream = \"app\"\n\
         [route.auth]\nprovider = \"hs\"\n\
         [[route.auth.roles]]\npath_prefix = \"/admin\"\nany_of = [\"admin\"]\n",
        origin.addr
    );
    let p = start_config(&cfg);

    // Every spelling of /admin/users is the auth route's: no token, 401, and the
    // origin never sees it.
    for path in [
        "/admin/users",
        "/x/../admin/users",
        "/public/%2e%2e/admin/users",
        "/%2E%2E/admin/users",
        "/x/.%2e/admin/users",
        "//admin/users",
        "/./admin//users",
        "/%61dmin/users",
        "/admin/users/x/..",
        "/admin;jsessionid=1/users",
        "/;x/admin/users",
    ] {
        let (status, body) = get(&p, "a.test", path, &[]);
        assert_eq!(status, 401, "{path}: {body}");
    }
    assert_eq!(origin.hits(), 0, "{:?}", origin.seen.lock().unwrap());

    // With a token it is served, and the origin is sent the canonical path.
    let bearer = format!("Authorization: Bearer {}", token(&["reader"]));
    let (status, body) = get(&p, "a.test", "/x/../admin/%75sers", &["-H", &bearer]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("path=/admin/users\n"), "{body}");
    let (status, body) = get(&p, "a.test", "/public/./a//b/%7e%3f", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("path=/public/a/b/~%3F\n"), "{body}");

    // Role rules see the same path: a reader's token does not reach /admin by
    // another spelling.
    for path in ["/admin", "/x/../admin", "//admin/", "/%61dmin", "/admin;x"] {
        let (status, body) = get(&p, "roles.test", path, &["-H", &bearer]);
        assert_eq!(status, 403, "{path}: {body}");
    }
    let admin = format!("Authorization: Bearer {}", token(&["admin"]));
    assert_eq!(get(&p, "roles.test", "/x/../admin", &["-H", &admin]).0, 200);

    // What cannot be made canonical is refused with 400, before any route or origin.
    let before = origin.hits();
    for path in [
        "/admin%2Fusers",
        "/public/..%2fadmin",
        "/admin%5cusers",
        "/x/..;/admin/users",
        "/a%zz",
        "/a%00b",
    ] {
        let (status, body) = get(&p, "a.test", path, &[]);
        assert_eq!(status, 400, "{path}: {body}");
    }
    let r = raw(
        &p.addr(),
        b"GET /public\\..\\admin HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert_eq!(origin.hits(), before, "{:?}", origin.seen.lock().unwrap());

    // Blocked paths match the canonical path, in any case.
    for path in [
        "/x/../.env",
        "/.ENV",
        "/%2eenv",
        "//wp-admin/setup.php",
        "/wp-admin;x/setup.php",
    ] {
        let (status, body) = get(&p, "a.test", path, &[]);
        assert_eq!(status, 404, "{path}: {body}");
    }
    assert_eq!(origin.hits(), before, "{:?}", origin.seen.lock().unwrap());
}

#[test]
fn one_authority_decides_the_route_the_cache_key_and_what_the_origin_sees() {
    let good = Origin::start("good");
    let evil = Origin::start("evil");
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
         [threat]\nenabled = false\n\
         [[upstream]]\nname = \"good\"\nservers = [\"{}\"]\n\
         [[upstream]]\nname = \"evil\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"good.test\"]\nupstream = \"good\"\n\
         [route.cache]\ndefault_ttl = \"60s\"\n\
         [[route]]\nhosts = [\"evil.test\"]\nupstream = \"evil\"\n",
        good.addr, evil.addr
    );
    let p = start_config(&cfg);
    let addr = p.addr();

    // Absolute form: the target's authority routes, keys and replaces Host.
    let r = raw(
        &addr,
        b"GET http://good.test/page HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.contains("origin=good"), "{r}");
    assert!(r.contains("host: good.test\n"), "{r}");
    assert!(!r.contains("evil.test"), "{r}");
    // What was stored for good.test/page is what good.test's origin said to good.test.
    let r = curl(&p, "good.test", "/page", &[]);
    assert!(r.headers.contains("x-cache: hit"), "{}", r.headers);
    assert!(
        r.body.contains("host: good.test\n") && !r.body.contains("evil"),
        "{}",
        r.body
    );

    // Two Host fields, userinfo, and a Host that is no host: 400, never forwarded.
    let before = (good.hits(), evil.hits());
    for request in [
        &b"GET /two HTTP/1.1\r\nHost: good.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n"[..],
        b"GET /two HTTP/1.1\r\nHost: evil.test\r\nHost: good.test\r\nConnection: close\r\n\r\n",
        b"GET http://user@good.test/x HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: user@good.test\r\nConnection: close\r\n\r\n",
    ] {
        let r = raw(&addr, request);
        assert_eq!(
            status_of(&r),
            400,
            "{}: {r}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!((good.hits(), evil.hits()), before);
}

#[test]
fn cache_keys_of_different_requests_never_collide() {
    let origin = Origin::start("app");
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
         [threat]\nenabled = false\n{admin}\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n\
         [route.cache]\ndefault_ttl = \"60s\"\n",
        origin.addr,
        admin = admin_section(),
    );
    let p = start_config(&cfg);
    let fetch = |path: &str| {
        let r = curl(&p, "app.test", path, &["--path-as-is"]);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let label = r
            .headers
            .lines()
            .find_map(|l| l.strip_prefix("x-cache: "))
            .unwrap_or("")
            .trim()
            .to_string();
        (label, r.body)
    };

    // An escaped `&` and `=` are one parameter's value, not two parameters.
    let (label, body) = fetch("/q?a=1%26b%3D2");
    assert_eq!(label, "miss");
    assert!(body.contains("path=/q?a=1%26b%3D2\n"), "{body}");
    let (label, body) = fetch("/q?a=1&b=2");
    assert_eq!(label, "miss", "{body}");
    assert!(body.contains("path=/q?a=1&b=2\n"), "{body}");
    // Parameters in another order are the same request; repeated names keep their order.
    assert_eq!(fetch("/q?b=2&a=1").0, "hit");
    assert_eq!(fetch("/r?a=1&a=2").0, "miss");
    let (label, body) = fetch("/r?a=2&a=1");
    assert_eq!(label, "miss");
    assert!(body.contains("path=/r?a=2&a=1\n"), "{body}");
    // Spellings of one path are one key.
    assert_eq!(fetch("/s/t").0, "miss");
    assert_eq!(fetch("/s/x/../t").0, "hit");
    assert_eq!(fetch("/s/%74").0, "hit");

    // The victim's URL purges exactly the victim's copy.
    let purge = "/cache/purge?url=http%3A%2F%2Fapp.test%2Fq%3Fa%3D1%26b%3D2";
    assert_eq!(p.admin("POST", purge), (200, "purged 1\n".into()));
    assert_eq!(fetch("/q?a=1&b=2").0, "miss");
    assert_eq!(fetch("/q?a=1%26b%3D2").0, "hit");
}

#[test]
fn origins_that_ignore_case_get_routes_matched_without_it() {
    let origin = Origin::start("app");
    let p = start_config(&format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
         [http.path]\nfold_case = true\n[threat]\nenabled = false\n\
         [[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"a.test\"]\npath_prefix = \"/admin\"\nupstream = \"app\"\n\
         [route.auth]\nprovider = \"hs\"\n\
         [[route]]\nhosts = [\"a.test\"]\nupstream = \"app\"\n",
        origin.addr
    ));
    for path in ["/ADMIN/users", "/Admin;x/users", "/aDmIn"] {
        assert_eq!(get(&p, "a.test", path, &[]).0, 401, "{path}");
    }
    // The origin still gets the path as the client wrote it (canonical).
    let (status, body) = get(&p, "a.test", "/Public/X", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("path=/Public/X\n"), "{body}");
    assert_eq!(origin.hits(), 1);
}
