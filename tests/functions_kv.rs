//! Functions reading and writing KV namespaces through `wasi:keyvalue`, against a real
//! node: the component `tests/components/kv` (built by `cargo xtask test`) behind
//! function routes, the same namespace behind a KV route. What a function writes the
//! route reads and the other way round; a namespace not granted is `access-denied`;
//! the namespace's limits refuse a whole write; a fleet namespace is shared with
//! other nodes, and a Redis outage refuses a function's writes instead of losing them.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use edge_tests::{
    jwt::{SECRET, bearer, hs_provider, hs256},
    proxy::{Proxy, Reply, curl, start_config},
    unique,
};

const HEAD: &str = "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n\
                    [threat]\nenabled = false\n";

/// A data directory of its own (the store, the component, compiled code), removed
/// when the test ends.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(unique("edge-fnkv-"));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kv test component, copied into `dir`.
fn component(dir: &Path) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/components/kv.wasm");
    assert!(
        built.is_file(),
        "{} is missing: build the test components with `cargo xtask test`",
        built.display()
    );
    let copy = dir.join("kv.wasm");
    std::fs::copy(&built, &copy).unwrap();
    copy
}

/// A node with namespaces `users` (plus `users_extra`) and `secrets`; `users` is
/// served by a KV route at `kv.test/kv` (writes by role `writer`). Function `app` is
/// granted `users`, `other` nothing; both run the kv component, at `app.test` and
/// `other.test`.
fn node(data: &DataDir, users_extra: &str) -> Proxy {
    start_config(&format!(
        "{HEAD}\n[storage]\ndir = \"{dir}\"\n\n{jwt}\n\
         [functions]\ncache_dir = \"{dir}/fncache\"\n\n\
         [[kv]]\nname = \"users\"\n{users_extra}\n\n\
         [[kv]]\nname = \"secrets\"\n\n\
         [[function]]\nname = \"app\"\nfile = \"{wasm}\"\nkv = [\"users\"]\n\n\
         [[function]]\nname = \"other\"\nfile = \"{wasm}\"\n\n\
         [[route]]\nhosts = [\"app.test\"]\nhandler = {{ function = \"app\" }}\n\n\
         [[route]]\nhosts = [\"other.test\"]\nhandler = {{ function = \"other\" }}\n\n\
         [[route]]\nhosts = [\"kv.test\"]\npath_prefix = \"/kv\"\nhandler = {{ kv = \"users\" }}\n\
         [route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n\
         [[route.auth.roles]]\npath_prefix = \"/kv\"\nmethods = [\"PUT\", \"DELETE\"]\nany_of = [\"writer\"]\n",
        dir = data.0.display(),
        jwt = hs_provider(),
        wasm = component(&data.0).display(),
    ))
}

/// Through the function `app` (host `app.test`) or another host.
fn call(p: &Proxy, host: &str, method: &str, path: &str, body: Option<&str>) -> Reply {
    let mut args = vec!["-X", method];
    if let Some(b) = body {
        args.extend(["--data-binary", b]);
    }
    curl(p, host, path, &args)
}

fn route_put(p: &Proxy, key: &str, value: &str) -> Reply {
    let auth = bearer(&hs256("ada", &["writer"], SECRET));
    curl(
        p,
        "kv.test",
        &format!("/kv/{key}"),
        &["-X", "PUT", "--data-binary", value, "-H", &auth],
    )
}

fn route_get(p: &Proxy, key: &str) -> Reply {
    curl(p, "kv.test", &format!("/kv/{key}"), &[])
}

#[test]
fn a_function_and_the_kv_route_share_a_granted_namespace() {
    let data = DataDir::new();
    let p = node(&data, "");

    // Written by the function, read by the route (and by the function).
    let r = call(
        &p,
        "app.test",
        "PUT",
        "/set/user:1",
        Some("{\"name\":\"ada\"}"),
    );
    assert_eq!(r.status, 204, "{}\n{}", r.body, p.node.log());
    let r = route_get(&p, "user:1");
    assert_eq!((r.status, r.body.as_str()), (200, "{\"name\":\"ada\"}"));
    assert!(
        r.headers.contains("content-type: application/octet-stream"),
        "{}",
        r.headers
    );
    let r = call(&p, "app.test", "GET", "/get/user:1", None);
    assert_eq!((r.status, r.body.as_str()), (200, "{\"name\":\"ada\"}"));

    // Written by the route, read by the function; replaced and deleted by the function.
    assert_eq!(route_put(&p, "user:2", "bob").status, 201);
    let r = call(&p, "app.test", "GET", "/get/user:2", None);
    assert_eq!((r.status, r.body.as_str()), (200, "bob"));
    assert_eq!(
        call(&p, "app.test", "GET", "/exists/user:2", None).body,
        "true"
    );
    assert_eq!(
        call(&p, "app.test", "PUT", "/set/user:2", Some("bobby")).status,
        204
    );
    assert_eq!(route_get(&p, "user:2").body, "bobby");
    assert_eq!(
        call(&p, "app.test", "DELETE", "/del/user:2", None).status,
        204
    );
    assert_eq!(route_get(&p, "user:2").status, 404);
    let r = call(&p, "app.test", "GET", "/get/user:2", None);
    assert_eq!((r.status, r.body.as_str()), (404, "absent\n"));
    assert_eq!(
        call(&p, "app.test", "GET", "/exists/user:2", None).body,
        "false"
    );
    // Deleting what is not there is no error.
    assert_eq!(
        call(&p, "app.test", "DELETE", "/del/user:2", None).status,
        204
    );

    // A counter: atomic increments, stored as the decimal number the route shows.
    assert_eq!(
        call(&p, "app.test", "POST", "/incr/hits?by=5", None).body,
        "5"
    );
    assert_eq!(
        call(&p, "app.test", "POST", "/incr/hits?by=2", None).body,
        "7"
    );
    assert_eq!(route_get(&p, "hits").body, "7");
    // Not a number: an error, and the value stays.
    let r = call(&p, "app.test", "POST", "/incr/user:1", None);
    assert_eq!(r.status, 500);
    assert!(r.body.contains("no decimal number"), "{}", r.body);
    assert_eq!(route_get(&p, "user:1").body, "{\"name\":\"ada\"}");

    // Batches.
    let r = call(
        &p,
        "app.test",
        "POST",
        "/set-many",
        Some("b:1=one\nb:2=two\n"),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(route_get(&p, "b:2").body, "two");
    let r = call(&p, "app.test", "GET", "/get-many?keys=b:1,b:9,b:2", None);
    assert_eq!(r.body, "b:1=one\nb:9 absent\nb:2=two\n");
    assert_eq!(
        call(&p, "app.test", "POST", "/delete-many?keys=b:1,b:2", None).status,
        204
    );
    assert_eq!(route_get(&p, "b:1").status, 404);

    // Listing pages through every key in order (100 a page), the route's writes too.
    for i in 0..150 {
        let r = call(&p, "app.test", "PUT", &format!("/set/n:{i:03}"), Some("v"));
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let r = call(&p, "app.test", "GET", "/list", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let keys: Vec<&str> = r.body.lines().collect();
    assert_eq!(keys.len(), 152, "{keys:?}");
    assert_eq!(keys[0], "hits");
    assert_eq!(keys[151], "user:1");
    assert!(r.headers.contains("x-pages: 2"), "{}", r.headers);
    // A cursor is the host's to give: a made-up one is an error.
    let r = call(&p, "app.test", "GET", "/cursor?c=12345", None);
    assert_eq!(r.status, 500);
    assert!(r.body.contains("not a cursor"), "{}", r.body);
}

#[test]
fn a_namespace_not_granted_is_access_denied() {
    let data = DataDir::new();
    let p = node(&data, "");
    assert_eq!(route_put(&p, "user:1", "ada").status, 201);

    // `other` has no grant: not even a read; `app` is not granted `secrets`, nor
    // a namespace that does not exist.
    for (host, path) in [
        ("other.test", "/get/user:1"),
        ("other.test", "/set/user:1"),
        ("app.test", "/get/k?bucket=secrets"),
        ("app.test", "/get/k?bucket=nope"),
    ] {
        let method = if path.starts_with("/set") {
            "PUT"
        } else {
            "GET"
        };
        let r = call(&p, host, method, path, Some("evil"));
        assert_eq!(
            (r.status, r.body.as_str()),
            (403, "kv error: access-denied\n"),
            "{host}{path}"
        );
    }
    assert_eq!(route_get(&p, "user:1").body, "ada", "nothing written");
    let log = p.node.log();
    assert!(
        log.contains("not granted") && log.contains("function=other"),
        "{log}"
    );
}

#[test]
fn a_functions_writes_keep_to_the_namespace_limits() {
    let data = DataDir::new();
    let p = node(
        &data,
        "max_key_bytes = 16\nmax_value_bytes = 1024\nmax_keys = 3\ndefault_ttl = \"1h\"",
    );

    // Within the limits; the namespace's default TTL applies.
    assert_eq!(
        call(&p, "app.test", "PUT", "/fill/a?size=1024", None).status,
        204
    );
    let r = route_get(&p, "a");
    assert_eq!(r.body.len(), 1024);
    assert!(r.headers.contains("x-kv-expires: "), "{}", r.headers);

    // A value over max_value_bytes, a key over max_key_bytes: refused, nothing written.
    let r = call(&p, "app.test", "PUT", "/fill/b?size=1025", None);
    assert_eq!(r.status, 500);
    assert!(
        r.body
            .contains("kv users: value of 1025 bytes; the namespace takes at most 1024"),
        "{}",
        r.body
    );
    assert_eq!(route_get(&p, "b").status, 404);
    let long = "k".repeat(17);
    let r = call(&p, "app.test", "PUT", &format!("/fill/{long}?size=1"), None);
    assert_eq!(r.status, 500);
    assert!(r.body.contains("key of 17 bytes"), "{}", r.body);
    // A batch with one value too large writes none of them.
    let big = "x".repeat(1100);
    let r = call(
        &p,
        "app.test",
        "POST",
        "/set-many",
        Some(&format!("c=small\nd={big}\n")),
    );
    assert_eq!(r.status, 500);
    assert_eq!(route_get(&p, "c").status, 404);

    // The namespace's key quota: the third key fits, the fourth is refused whole.
    assert_eq!(call(&p, "app.test", "PUT", "/set/c", Some("3")).status, 204);
    assert_eq!(call(&p, "app.test", "PUT", "/set/d", Some("4")).status, 204);
    let r = call(&p, "app.test", "PUT", "/set/e", Some("5"));
    assert_eq!(r.status, 500);
    assert!(r.body.contains("holds its most keys (3)"), "{}", r.body);
    assert_eq!(route_get(&p, "e").status, 404);
    // Replacing a key the namespace holds is still allowed.
    assert_eq!(
        call(&p, "app.test", "PUT", "/set/d", Some("44")).status,
        204
    );
    assert_eq!(route_get(&p, "d").body, "44");

    // A batch larger than the host takes in one call.
    let keys: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let r = call(
        &p,
        "app.test",
        "GET",
        &format!("/get-many?keys={}", keys.join(",")),
        None,
    );
    assert_eq!(r.status, 500);
    assert!(r.body.contains("101 keys in one batch"), "{}", r.body);
}

#[test]
fn a_function_on_a_redis_namespace_shares_it_and_an_outage_refuses_its_writes() {
    let Some(mut redis) = edge_tests::redis::Redis::start(
        "a_function_on_a_redis_namespace_shares_it_and_an_outage_refuses_its_writes",
    ) else {
        return;
    };
    let prefix = unique("fnkv");
    let fleet = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"{prefix}\"\n\
         redis_timeout = \"300ms\"",
        redis.url()
    );
    let (da, db) = (DataDir::new(), DataDir::new());
    let (a, b) = (node(&da, &fleet), node(&db, &fleet));

    // A function on node A writes; node B's route and function read it.
    let r = call(&a, "app.test", "PUT", "/set/user:1", Some("v1"));
    assert_eq!(r.status, 204, "{}\n{}", r.body, a.node.log());
    assert_eq!(route_get(&b, "user:1").body, "v1");
    assert_eq!(call(&b, "app.test", "GET", "/get/user:1", None).body, "v1");
    // B's function replaces it; A's local copy is dropped (pub/sub): A reads v2.
    assert_eq!(
        call(&b, "app.test", "PUT", "/set/user:1", Some("v2")).status,
        204
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while call(&a, "app.test", "GET", "/get/user:1", None).body != "v2" {
        assert!(
            std::time::Instant::now() < deadline,
            "A serves a stale value"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Counters are one fleet-wide.
    assert_eq!(call(&a, "app.test", "POST", "/incr/n?by=1", None).body, "1");
    assert_eq!(call(&b, "app.test", "POST", "/incr/n?by=1", None).body, "2");

    // Redis gone: what B holds a copy of is still read; writes are refused with an
    // error the function sees, and nothing is kept locally either.
    redis.kill();
    assert_eq!(call(&b, "app.test", "GET", "/get/user:1", None).body, "v2");
    let r = call(&a, "app.test", "PUT", "/set/user:3", Some("lost?"));
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("kv users: storage failed"), "{}", r.body);
    let r = call(&a, "app.test", "GET", "/get/user:3", None);
    assert_eq!(r.status, 500, "not a made-up absence: {}", r.body);
    assert_eq!(route_get(&a, "user:3").status, 503);
}
