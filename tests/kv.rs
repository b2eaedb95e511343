//! KV namespaces (`[[kv]]`, `handler = { kv = "…" }`) against a real node, through curl:
//! values with their type, metadata, ETags and conditions; TTLs that expire; listing
//! by prefix with a cursor; limits that refuse a whole write; roles by method; and
//! acknowledged writes still there after a crash and a restart.

use std::{path::PathBuf, time::Duration};

use edge_tests::{
    jwt::{SECRET, bearer, hs_provider, hs256},
    proxy::{Proxy, Reply, curl, start_config},
    unique,
};
use serde_json::Value;

const HEAD: &str = "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n\
                    [threat]\nenabled = false\n";

/// A data directory of its own, removed when the test ends.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(unique("edge-kv-"));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node with namespace `users` (plus `kv_extra`) written through `kv.test` (anonymous
/// reads, writes by role `writer`) and read through `ro.test` (no auth: read-only).
fn node(data: &DataDir, storage_extra: &str, kv_extra: &str) -> Proxy {
    start_config(&format!(
        "{HEAD}\n[storage]\ndir = \"{dir}\"\n{storage_extra}\n{jwt}\n\
         [[kv]]\nname = \"users\"\n{kv_extra}\n\
         [[route]]\nhosts = [\"kv.test\"]\npath_prefix = \"/kv\"\nhandler = {{ kv = \"users\" }}\n\
         [route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n\
         [[route.auth.roles]]\npath_prefix = \"/kv\"\nmethods = [\"PUT\", \"DELETE\"]\nany_of = [\"writer\"]\n\
         [[route]]\nhosts = [\"ro.test\"]\nhandler = {{ kv = \"users\" }}\n\
         [[route]]\nhosts = [\"guarded.test\"]\npath_prefix = \"/g\"\nhandler = {{ kv = \"users\" }}\n\
         [route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n\
         [[route.auth.roles]]\npath_prefix = \"/g/admin\"\nany_of = [\"admin\"]\n",
        dir = data.0.display(),
        jwt = hs_provider(),
    ))
}

fn writer() -> String {
    bearer(&hs256("ada", &["writer"], SECRET))
}

fn put(p: &Proxy, path: &str, value: &str, extra: &[&str]) -> Reply {
    let auth = writer();
    let mut args = vec![
        "-X",
        "PUT",
        "--data-binary",
        value,
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
    ];
    args.extend_from_slice(extra);
    curl(p, "kv.test", path, &args)
}

fn header(r: &Reply, name: &str) -> Option<String> {
    r.headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_string())
}

fn list(p: &Proxy, query: &str) -> Value {
    let r = curl(p, "kv.test", &format!("/kv{query}"), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn values_round_trip_with_their_type_metadata_etag_and_conditions() {
    let data = DataDir::new();
    let p = node(&data, "", "");

    // Created, then read back as written, with what the node keeps about it.
    let r = put(
        &p,
        "/kv/user%3A1",
        r#"{"name":"ada"}"#,
        &["-H", "X-KV-Metadata: {\"plan\":\"pro\"}"],
    );
    assert_eq!(r.status, 201, "{}{}", r.headers, r.body);
    let etag1 = header(&r, "etag").expect("an etag");
    let r = curl(&p, "kv.test", "/kv/user%3A1", &[]);
    assert_eq!(r.status, 200, "{}", p.node.log());
    assert_eq!(r.body, r#"{"name":"ada"}"#);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(header(&r, "etag"), Some(etag1.clone()));
    assert_eq!(
        header(&r, "x-kv-metadata").as_deref(),
        Some("{\"plan\":\"pro\"}")
    );
    assert!(header(&r, "last-modified").is_some(), "{}", r.headers);
    assert!(header(&r, "x-kv-expires").is_none(), "no TTL was asked for");
    // HEAD: the same headers, no body.
    let r = curl(&p, "kv.test", "/kv/user%3A1", &["-I"]);
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "content-length").as_deref(), Some("14"));
    assert!(!r.body.contains("\"name\""), "{}", r.body);
    // The same namespace through another route; a key holding '/' is one key.
    assert_eq!(
        curl(&p, "ro.test", "/user:1", &[]).body,
        r#"{"name":"ada"}"#
    );
    assert_eq!(put(&p, "/kv/dir/a%20b", "x", &[]).status, 201);
    assert_eq!(curl(&p, "ro.test", "/dir/a%20b", &[]).body, "x");

    // Replaced: a new ETag; the old one no longer matches.
    let r = put(&p, "/kv/user%3A1", r#"{"name":"ada l."}"#, &[]);
    assert_eq!(r.status, 204);
    let etag2 = header(&r, "etag").unwrap();
    assert_ne!(etag1, etag2);
    let if_none = format!("If-None-Match: {etag2}");
    assert_eq!(
        curl(&p, "kv.test", "/kv/user:1", &["-H", &if_none]).status,
        304
    );
    let if_old = format!("If-Match: {etag1}");
    assert_eq!(put(&p, "/kv/user:1", "lost", &["-H", &if_old]).status, 412);
    let if_cur = format!("If-Match: {etag2}");
    assert_eq!(
        put(&p, "/kv/user:1", r#"{"v":3}"#, &["-H", &if_cur]).status,
        204
    );
    assert_eq!(curl(&p, "kv.test", "/kv/user:1", &[]).body, r#"{"v":3}"#);
    // A browser's GET comes compressed, its ETag weak (`[compression]`): the weak tag
    // still names the version for a conditional write.
    let big = format!(r#"{{"v":4,"pad":"{}"}}"#, "x".repeat(2000));
    assert_eq!(put(&p, "/kv/user:1", &big, &[]).status, 204);
    let got = curl(
        &p,
        "kv.test",
        "/kv/user:1",
        &["--compressed", "-H", "Accept-Encoding: gzip"],
    );
    assert_eq!(got.body, big);
    assert_eq!(header(&got, "content-encoding").as_deref(), Some("gzip"));
    let weak = header(&got, "etag").unwrap().replacen("w/", "W/", 1);
    assert!(weak.starts_with("W/\""), "{weak}");
    let if_weak = format!("If-Match: {weak}");
    assert_eq!(
        put(&p, "/kv/user:1", r#"{"v":3}"#, &["-H", &if_weak]).status,
        204
    );
    // Create-only, and conditions on keys that are absent.
    assert_eq!(
        put(&p, "/kv/user:1", "x", &["-H", "If-None-Match: *"]).status,
        412
    );
    assert_eq!(
        put(&p, "/kv/user:2", "y", &["-H", "If-None-Match: *"]).status,
        201
    );
    assert_eq!(
        put(&p, "/kv/nobody", "z", &["-H", "If-Match: *"]).status,
        412
    );
    assert_eq!(curl(&p, "kv.test", "/kv/nobody", &[]).status, 404);
    assert_eq!(
        put(&p, "/kv/user:2", "y", &["-H", "If-Match: \"zz\""]).status,
        400
    );

    // Writes by role: anonymous 401, a reader 403; the route without auth is read-only.
    let anon = curl(&p, "kv.test", "/kv/k", &["-X", "PUT", "--data-binary", "v"]);
    assert_eq!(anon.status, 401);
    let reader = bearer(&hs256("bob", &["reader"], SECRET));
    let r = curl(
        &p,
        "kv.test",
        "/kv/k",
        &["-X", "PUT", "-d", "v", "-H", &reader],
    );
    assert_eq!(r.status, 403);
    let r = curl(&p, "ro.test", "/k", &["-X", "PUT", "--data-binary", "v"]);
    assert_eq!(r.status, 405);
    assert_eq!(
        header(&r, "allow").as_deref(),
        Some("get, head"),
        "headers are lower-cased"
    );
    let r = curl(&p, "ro.test", "/user:2", &["-X", "DELETE"]);
    assert_eq!(r.status, 405);
    assert_eq!(
        curl(&p, "kv.test", "/kv/k", &[]).status,
        404,
        "nothing written"
    );

    // Delete: 204, then absent; deleting again is a 404.
    let auth = writer();
    let del = |path: &str| curl(&p, "kv.test", path, &["-X", "DELETE", "-H", &auth]);
    assert_eq!(del("/kv/user:2").status, 204);
    assert_eq!(curl(&p, "kv.test", "/kv/user:2", &[]).status, 404);
    assert_eq!(del("/kv/user:2").status, 404);
    // Errors answer in JSON.
    let r = curl(&p, "kv.test", "/kv/user:2", &[]);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["error"],
        "not_found"
    );
    // A role rule under the route's prefix: an encoded slash cannot step around it, and
    // the listing (which would name the guarded keys) is off there.
    assert_eq!(curl(&p, "guarded.test", "/g/admin", &[]).status, 401);
    assert_eq!(
        curl(&p, "guarded.test", "/g/admin%2Fsecret", &[]).status,
        400
    );
    assert_eq!(
        curl(&p, "guarded.test", "/g/admin%2fsecret", &[]).status,
        400
    );
    assert_eq!(
        curl(&p, "guarded.test", "/g?prefix=admin/", &[]).status,
        403
    );
    // The namespace itself is listed, never written.
    let r = curl(&p, "kv.test", "/kv", &["-X", "PUT", "-d", "v", "-H", &auth]);
    assert_eq!(r.status, 405);
}

#[test]
fn ttls_expire_and_listing_pages_through_live_keys() {
    let data = DataDir::new();
    let p = node(&data, "", "max_ttl = \"1h\"");

    // A TTL from the query or the header; out-of-range ones are refused.
    let r = put(&p, "/kv/session:1", "s", &[]);
    assert!(header(&r, "etag").is_some());
    let r = put(&p, "/kv/short?ttl=1", "gone soon", &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = curl(&p, "kv.test", "/kv/short", &[]);
    assert_eq!(r.body, "gone soon");
    let expires: u64 = header(&r, "x-kv-expires").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expires >= now && expires <= now + 2, "{expires} vs {now}");
    assert_eq!(
        put(&p, "/kv/later", "v", &["-H", "X-KV-TTL: 600"]).status,
        201
    );
    let r = curl(&p, "kv.test", "/kv/later", &[]);
    let later: u64 = header(&r, "x-kv-expires").unwrap().parse().unwrap();
    assert!(later >= now + 599 && later <= now + 601);
    for bad in ["0", "-1", "abc", "7200"] {
        let r = put(&p, &format!("/kv/bad?ttl={bad}"), "v", &[]);
        assert_eq!(r.status, 400, "ttl={bad}");
    }

    // Listing: in key order, by prefix, in pages that a cursor continues.
    for k in ["a3", "a1", "b1", "a2", "a5", "a4"] {
        assert_eq!(
            put(&p, &format!("/kv/{k}"), k, &["-H", "X-KV-Metadata: m"]).status,
            201
        );
    }
    let page = list(&p, "?prefix=a&limit=2");
    let names = |v: &Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page), ["a1", "a2"]);
    assert_eq!(page["list_complete"], false);
    assert_eq!(page["keys"][0]["metadata"], "m");
    assert_eq!(page["keys"][0]["size"], 2);
    let mut seen = names(&page);
    let mut cursor = page["cursor"].as_str().unwrap().to_string();
    for _ in 0..5 {
        let page = list(&p, &format!("?prefix=a&limit=2&cursor={cursor}"));
        seen.extend(names(&page));
        if page["list_complete"] == true {
            assert!(page["cursor"].is_null());
            break;
        }
        cursor = page["cursor"].as_str().unwrap().to_string();
    }
    assert_eq!(seen, ["a1", "a2", "a3", "a4", "a5"]);
    assert_eq!(list(&p, "?prefix=b")["keys"].as_array().unwrap().len(), 1);
    assert_eq!(curl(&p, "kv.test", "/kv?limit=0", &[]).status, 400);
    assert_eq!(curl(&p, "kv.test", "/kv?cursor=%25%25", &[]).status, 400);

    // The short-lived key: gone from reads and listings once its second is up.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while curl(&p, "kv.test", "/kv/short", &[]).status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "still served after its TTL"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = names(&list(&p, ""));
    assert!(!all.contains(&"short".to_string()), "{all:?}");
    assert!(all.contains(&"later".to_string()), "{all:?}");
}

#[test]
fn limits_refuse_the_whole_write() {
    let data = DataDir::new();
    let p = node(
        &data,
        "",
        "max_value_bytes = 1000\nmax_key_bytes = 16\nmax_metadata_bytes = 8\nmax_keys = 3\n\
         max_bytes = 100000",
    );
    let big = "x".repeat(1001);
    // Declared too large: refused before the body is read.
    assert_eq!(put(&p, "/kv/big", &big, &[]).status, 413);
    // Chunked, so only counting tells: refused all the same.
    let r = put(&p, "/kv/big", &big, &["-H", "Transfer-Encoding: chunked"]);
    assert_eq!(r.status, 413, "{}", r.headers);
    assert_eq!(
        curl(&p, "kv.test", "/kv/big", &[]).status,
        404,
        "nothing half-written"
    );
    assert_eq!(put(&p, "/kv/fits", &"x".repeat(1000), &[]).status, 201);
    assert_eq!(
        put(&p, &format!("/kv/{}", "k".repeat(17)), "v", &[]).status,
        414
    );
    assert_eq!(
        put(&p, "/kv/m", "v", &["-H", "X-KV-Metadata: 123456789"]).status,
        413
    );
    assert_eq!(
        put(&p, "/kv/bad%FF", "v", &[]).status,
        400,
        "keys are UTF-8"
    );
    assert_eq!(
        put(&p, "/kv/bad%0A", "v", &[]).status,
        400,
        "no control characters"
    );

    // Keys: the fourth new key is refused; replacing one is not a new key.
    assert_eq!(put(&p, "/kv/two", "v", &[]).status, 201);
    assert_eq!(put(&p, "/kv/three", "v", &[]).status, 201);
    let r = put(&p, "/kv/four", "v", &[]);
    assert_eq!(r.status, 507, "{}", r.body);
    assert_eq!(curl(&p, "kv.test", "/kv/four", &[]).status, 404);
    assert_eq!(put(&p, "/kv/two", "v2", &[]).status, 204);
    // Deleting frees the room.
    let auth = writer();
    assert_eq!(
        curl(&p, "kv.test", "/kv/three", &["-X", "DELETE", "-H", &auth]).status,
        204
    );
    assert_eq!(put(&p, "/kv/four", "v", &[]).status, 201);
}

#[test]
fn bytes_per_namespace_are_bounded() {
    let data = DataDir::new();
    let p = node(&data, "", "max_bytes = 1500");
    let v = "y".repeat(600);
    assert_eq!(put(&p, "/kv/one", &v, &[]).status, 201);
    assert_eq!(put(&p, "/kv/two", &v, &[]).status, 201);
    let r = put(&p, "/kv/three", &v, &[]);
    assert_eq!(r.status, 507, "{}", r.body);
    assert_eq!(curl(&p, "kv.test", "/kv/three", &[]).status, 404);
    // Shrinking a value makes room.
    assert_eq!(put(&p, "/kv/two", "small", &[]).status, 204);
    assert_eq!(put(&p, "/kv/three", &v, &[]).status, 201);
}

/// `n` PUTs from 8 threads at once; every one must be acknowledged.
fn concurrent_puts(p: &Proxy, n: usize, tag: &str) {
    std::thread::scope(|s| {
        for t in 0..8 {
            s.spawn(move || {
                for i in (t..n).step_by(8) {
                    let r = put(p, &format!("/kv/{tag}{i:03}"), &format!("value {i}"), &[]);
                    assert_eq!(r.status, 201, "{tag}{i}: {}", r.body);
                }
            });
        }
    });
}

fn assert_all_there(p: &Proxy, n: usize, tag: &str) {
    for i in 0..n {
        let r = curl(p, "kv.test", &format!("/kv/{tag}{i:03}"), &[]);
        assert_eq!(r.body, format!("value {i}"), "{tag}{i} lost: {}", r.status);
    }
}

fn reopen(p: &mut Proxy) {
    p.node.restart();
    assert!(
        p.node.wait_running(Duration::from_secs(20)),
        "{}",
        p.node.log()
    );
    p.base = format!("http://{}", p.node.http_addr().unwrap());
}

#[test]
fn acknowledged_writes_survive_a_crash_and_a_restart() {
    // sync_window = 0: a write is answered once on disk, so even SIGKILL loses none.
    let data = DataDir::new();
    let mut p = node(&data, "", "");
    concurrent_puts(&p, 64, "k");
    assert_eq!(put(&p, "/kv/ttl?ttl=600", "t", &[]).status, 201);
    p.node.sigkill();
    reopen(&mut p);
    assert_all_there(&p, 64, "k");
    let r = curl(&p, "kv.test", "/kv/ttl", &[]);
    assert!(header(&r, "x-kv-expires").is_some(), "the TTL survives too");
    assert_eq!(
        list(&p, "?prefix=k&limit=1000")["keys"]
            .as_array()
            .unwrap()
            .len(),
        64
    );
    // The counts the limits use survived as well: the same keys are no new keys.
    drop(p);

    // With a window, writes are answered before the fsync; a clean stop still puts
    // every acknowledged one on disk.
    let data = DataDir::new();
    let mut p = node(&data, "sync_window = \"10s\"", "");
    concurrent_puts(&p, 32, "w");
    reopen(&mut p);
    assert_all_there(&p, 32, "w");
}

#[test]
fn the_store_is_one_nodes_and_configs_name_what_exists() {
    let data = DataDir::new();
    let p = node(&data, "", "");
    // A second node on the same directory is refused with a clear reason.
    let second = edge_tests::node::Node::start(
        &format!(
            "{HEAD}\n[storage]\ndir = \"{}\"\n[[kv]]\nname = \"users\"\n\
             [[route]]\nhosts = [\"*\"]\nhandler = {{ kv = \"users\" }}\n",
            data.0.display()
        ),
        None,
    );
    let mut second = second;
    assert!(
        second
            .wait_exit(Duration::from_secs(20))
            .is_some_and(|c| c != 0)
    );
    assert!(
        second
            .log()
            .contains("another edge-node using the same storage.dir"),
        "{}",
        second.log()
    );
    drop(p);
    // A route naming a namespace that does not exist is a config error.
    let cfg = format!(
        "{HEAD}\n[storage]\ndir = \"{}\"\n[[route]]\nhosts = [\"*\"]\nhandler = {{ kv = \"nope\" }}\n",
        data.0.display()
    );
    let n = edge_tests::node::Node::start(&cfg, None);
    let out = n.cli(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kv \"nope\", which is not defined"), "{err}");
}

#[test]
fn misses_fill_from_the_origin_once_and_keep_for_the_fill_ttl() {
    let data = DataDir::new();
    let origin = edge_tests::origin::Origin::start("a");
    let p = start_config(&format!(
        "{HEAD}\n[storage]\ndir = \"{dir}\"\n[[kv]]\nname = \"users\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{addr}\"]\n\
         [[route]]\nhosts = [\"fill.test\"]\npath_prefix = \"/kv\"\nhandler = {{ kv = \"users\" }}\n\
         upstream = \"app\"\nfill_ttl = \"2s\"\n",
        dir = data.0.display(),
        addr = origin.addr,
    ));
    let get = |path: &str| curl(&p, "fill.test", path, &[]);

    // Eight concurrent misses of one key: one origin request, eight identical answers.
    origin.set_delay_ms(300);
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| get("/kv/user:1"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    origin.set_delay_ms(0);
    for r in &replies {
        assert_eq!(r.status, 200, "{}", p.node.log());
        assert_eq!(r.body, replies[0].body);
        assert_eq!(header(r, "x-kv-source").as_deref(), Some("origin"));
    }
    assert!(
        replies[0].body.contains("path=/kv/user:1"),
        "{}",
        replies[0].body
    );
    assert_eq!(origin.hits(), 1, "concurrent misses share one fetch");
    // Then it is the store's: no origin request, an ETag, the origin's type.
    let r = get("/kv/user:1");
    assert_eq!(r.body, replies[0].body);
    assert!(header(&r, "x-kv-source").is_none());
    assert!(header(&r, "etag").is_some());
    assert_eq!(header(&r, "content-type").as_deref(), Some("text/plain"));
    assert_eq!(origin.hits(), 1);

    // The origin is asked for the key's path alone: no query, nothing of the client's
    // own (its cookies, tokens, conditions), since what it answers is kept for everyone.
    let r = curl(
        &p,
        "fill.test",
        "/kv/user:7?lang=%3Cscript%3E",
        &[
            "-H",
            "Cookie: session=alice",
            "-H",
            "Authorization: Bearer t",
            "-H",
            "If-None-Match: \"x\"",
        ],
    );
    assert_eq!(r.status, 200);
    assert!(r.body.contains("path=/kv/user:7\n"), "{}", r.body);
    for private in ["cookie", "authorization", "if-none-match", "script"] {
        assert!(
            !r.body.contains(private),
            "{private} reached the origin: {}",
            r.body
        );
    }

    // What is not kept: a 404 (answered 404), a no-store answer (answered, asked again),
    // an origin failure (502).
    assert_eq!(get("/kv/status-404").status, 404);
    assert_eq!(get("/kv/status-404").status, 404);
    let before = origin.hits();
    assert_eq!(get("/kv/no-store").status, 200);
    assert_eq!(get("/kv/no-store").status, 200);
    assert_eq!(origin.hits(), before + 2, "a no-store answer is not kept");
    assert_eq!(get("/kv/status-500").status, 502);

    // Past fill_ttl the key is fetched again.
    let before = origin.hits();
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while origin.hits() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "not refetched after fill_ttl"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(get("/kv/user:1").status, 200);
    }
}

#[test]
fn a_redis_namespace_is_shared_by_nodes_and_an_outage_loses_no_write() {
    let Some(mut redis) = edge_tests::redis::Redis::start(
        "a_redis_namespace_is_shared_by_nodes_and_an_outage_loses_no_write",
    ) else {
        return;
    };
    let prefix = unique("kvfleet");
    let start = |data: &DataDir| {
        node(
            data,
            "",
            &format!(
                "backend = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"{prefix}\"\n\
                 redis_timeout = \"300ms\"",
                redis.url()
            ),
        )
    };
    let (da, db) = (DataDir::new(), DataDir::new());
    let (a, b) = (start(&da), start(&db));

    // Written on one node, read on the other, with the same ETag.
    let r = put(&a, "/kv/user:1", r#"{"v":1}"#, &[]);
    assert_eq!(r.status, 201, "{}", a.node.log());
    let etag = header(&r, "etag").unwrap();
    let r = curl(&b, "kv.test", "/kv/user:1", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"v":1}"#),
        "{}",
        b.node.log()
    );
    assert_eq!(header(&r, "etag"), Some(etag.clone()));
    // B keeps a copy; A's next write reaches B all the same (the copy is dropped).
    let if_match = format!("If-Match: {etag}");
    assert_eq!(
        put(&b, "/kv/user:1", r#"{"v":2}"#, &["-H", &if_match]).status,
        204
    );
    assert_eq!(
        put(&a, "/kv/user:1", "stale", &["-H", &if_match]).status,
        412,
        "one version, fleet-wide"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while curl(&a, "kv.test", "/kv/user:1", &[]).body != r#"{"v":2}"# {
        assert!(
            std::time::Instant::now() < deadline,
            "A still serves its old copy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Listing sees the fleet's keys; a delete on one node is a 404 on the other.
    assert_eq!(put(&a, "/kv/user:2", "x", &[]).status, 201);
    let names: Vec<String> = list(&b, "?prefix=user:")["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["user:1", "user:2"]);
    assert_eq!(curl(&b, "kv.test", "/kv/user:2", &[]).status, 200);
    let auth = writer();
    assert_eq!(
        curl(&a, "kv.test", "/kv/user:2", &["-X", "DELETE", "-H", &auth]).status,
        204
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while curl(&b, "kv.test", "/kv/user:2", &[]).status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "B still serves a deleted key"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Redis gone: what a node holds a copy of is still served; writes are refused
    // (503), and so is a read nobody has a copy of.
    redis.kill();
    let r = curl(&b, "kv.test", "/kv/user:1", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"v":2}"#));
    assert_eq!(put(&a, "/kv/user:3", "lost?", &[]).status, 503);
    assert_eq!(curl(&b, "kv.test", "/kv/user:3", &[]).status, 503);
    assert_eq!(
        curl(&a, "kv.test", "/kv/user:3", &[]).status,
        503,
        "nothing was kept locally either"
    );
}
