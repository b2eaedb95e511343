//! GraphQL (`[[graphql]]`, `handler = { graphql = "…" }`) against a real node: a schema
//! in SDL over a KV namespace and a JSON origin, queried with curl; the limits (depth,
//! complexity, aliases, body size), malformed requests and introspection answered in the
//! GraphQL error format; persisted queries and cacheable GETs.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    process::Command,
};

use edge_tests::{
    proxy::{Proxy, Reply, curl, start_config},
    unique,
};
use serde_json::{Value, json};

const HEAD: &str = "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n\
                    [threat]\nenabled = false\n";

const SCHEMA: &str = "type Query {\n  user(id: ID!): User\n  posts(limit: Int): [Post]\n  version: String\n  \
                      echo(text: String, n: Int): String\n}\n\
                      type User {\n  id: ID\n  name: String\n  friends: [User]\n  address: Address\n}\n\
                      type Address {\n  city: String\n}\n\
                      type Post {\n  title: String\n  path: String\n  served: Int\n}\n";

/// An origin answering every GET with a JSON list of posts naming the path asked for
/// and how many times it was asked for it (`served`); `?limit=7` is cacheable for 60 s.
/// Returns its address. Runs until the test process ends (bounded by the test's requests).
fn json_origin() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let served = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        u64,
    >::new()));
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let served = served.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let n = {
                        let mut m = served.lock().unwrap();
                        let n = m.entry(path.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let body = json!([
                        {"title": "first", "path": path, "served": n},
                        {"title": "second", "path": path, "served": n},
                    ])
                    .to_string();
                    let cache = if path.ends_with("limit=7") {
                        "cache-control: max-age=60\r\n"
                    } else {
                        ""
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{cache}content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The echo component built by `cargo xtask test` (it answers with the request it got:
/// method, path, headers, body), copied into `dir`.
fn echo_component(dir: &std::path::Path) -> std::path::PathBuf {
    let built =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/components/echo.wasm");
    assert!(
        built.is_file(),
        "{} is missing: build the test components with `cargo xtask test`",
        built.display()
    );
    let copy = dir.join("echo.wasm");
    std::fs::copy(&built, &copy).unwrap();
    copy
}

fn node(extra: &str) -> (Proxy, Dir) {
    node_with(extra, "")
}

/// `extra` goes into `[[graphql]]`, `kv_extra` into the `[[kv]]` namespace "users".
fn node_with(extra: &str, kv_extra: &str) -> (Proxy, Dir) {
    let dir = Dir(std::env::temp_dir().join(unique("edge-graphql-")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let schema = dir.0.join("schema.graphql");
    std::fs::write(&schema, SCHEMA).unwrap();
    let p = start_config(&format!(
        "{HEAD}\n[storage]\ndir = \"{data}\"\n[[kv]]\nname = \"users\"\n{kv_extra}\n\
         [[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{secret}\"\n\
         [[upstream]]\nname = \"blog\"\nservers = [\"{origin}\"]\n\
         [[graphql]]\nname = \"api\"\nschema = \"{schema}\"\nmax_depth = 5\nmax_complexity = 15\n\
         max_aliases = 3\nmax_body_bytes = 2048\nget_max_age = \"60s\"\nmax_resolver_calls = 2\n{extra}\n\
         [[graphql.resolver]]\nfield = \"Query.user\"\nkv = \"users\"\nkey = \"user:{{id}}\"\n\
         [[graphql.resolver]]\nfield = \"Query.posts\"\nupstream = \"blog\"\npath = \"/posts?limit={{limit}}\"\n\
         [[graphql.resolver]]\nfield = \"Query.echo\"\nfunction = \"echo\"\n\
         [[function]]\nname = \"echo\"\nfile = \"{echo}\"\n\
         [[route]]\nhosts = [\"api.test\"]\npath_prefix = \"/graphql\"\nhandler = {{ graphql = \"api\" }}\n\
         [[route]]\nhosts = [\"blog\"]\nupstream = \"blog\"\n[route.cache]\n\
         [[route]]\nhosts = [\"kv.test\"]\nhandler = {{ kv = \"users\" }}\n\
         [route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n",
        data = dir.0.join("data").display(),
        secret = edge_tests::jwt::SECRET,
        origin = json_origin(),
        schema = schema.display(),
        echo = echo_component(&dir.0).display(),
    ));
    let user = json!({
        "id": "1", "name": "Ada", "address": {"city": "London"},
        "friends": [{"id": "2", "name": "Bob", "friends": [{"id": "1", "name": "Ada"}]}],
    });
    let r = curl(
        &p,
        "kv.test",
        "/user:1",
        &["-X", "PUT", "--data-binary", &user.to_string()],
    );
    // 204: a fleet namespace another node of the test already wrote it to.
    assert!(matches!(r.status, 201 | 204), "{} {}", r.status, r.body);
    (p, dir)
}

fn post(p: &Proxy, body: &str) -> Reply {
    curl(
        p,
        "api.test",
        "/graphql",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ],
    )
}

fn query(p: &Proxy, q: &str, variables: Value) -> Value {
    let r = post(p, &json!({"query": q, "variables": variables}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

fn first_error(v: &Value) -> String {
    v["errors"][0]["message"].as_str().unwrap_or("").to_string()
}

#[test]
fn queries_resolve_from_kv_and_an_origin() {
    let (p, _dir) = node("");
    let v = query(
        &p,
        "query($id: ID!) { user(id: $id) { name address { city } friends { name } } }",
        json!({"id": "1"}),
    );
    assert_eq!(
        v["data"],
        json!({"user": {"name": "Ada", "address": {"city": "London"}, "friends": [{"name": "Bob"}]}}),
        "{v}"
    );
    // A key that is not there: null, no error.
    let v = query(&p, "{ user(id: \"9\") { name } }", json!({}));
    assert_eq!(v["data"], json!({"user": null}));
    assert!(v["errors"].is_null(), "{v}");
    // From the origin, the argument in its path.
    let v = query(&p, "{ posts(limit: 2) { title path } }", json!({}));
    assert_eq!(v["data"]["posts"][0]["title"], "first", "{v}");
    assert_eq!(v["data"]["posts"][1]["path"], "/posts?limit=2");
    // Through the node's cache, as the origin's Cache-Control allows: an answer it may
    // keep is fetched once; one without freshness each time.
    let served = |limit: u32| {
        let v = query(
            &p,
            &format!("{{ posts(limit: {limit}) {{ served }} }}"),
            json!({}),
        );
        v["data"]["posts"][0]["served"]
            .as_u64()
            .unwrap_or_else(|| panic!("{v}"))
    };
    assert_eq!((served(7), served(7), served(7)), (1, 1, 1));
    // A proxied, cached route asked the same URL with the upstream's name as its host
    // neither reads nor plants the resolver's copy.
    let proxied = curl(&p, "blog", "/posts?limit=7", &[]);
    assert!(
        proxied.headers.contains("x-cache: miss"),
        "{}",
        proxied.headers
    );
    assert!(proxied.body.contains("\"served\":2"), "{}", proxied.body);
    let proxied = curl(&p, "blog", "/posts?limit=7", &[]);
    assert!(
        proxied.headers.contains("x-cache: hit"),
        "{}",
        proxied.headers
    );
    assert_eq!(served(7), 1, "the resolver's own copy");
    assert_eq!(
        (served(2), served(2)),
        (2, 3),
        "limit=2 was asked once above"
    );
    // From a function: a POST naming the field, the arguments as a JSON object; the
    // body it answers (here not JSON: a string).
    let v = query(&p, "{ echo(text: \"hi\", n: 3) }", json!({}));
    let echoed = v["data"]["echo"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(echoed.starts_with("POST /echo\n"), "{echoed}");
    assert!(
        echoed.contains("h: content-type: application/json"),
        "{echoed}"
    );
    let args: Value = serde_json::from_str(echoed.split("\n\n").nth(1).unwrap()).unwrap();
    assert_eq!(args, json!({"text": "hi", "n": 3}));
    // A root field without a resolver is null.
    assert_eq!(
        query(&p, "{ version }", json!({}))["data"],
        json!({"version": null})
    );
    // GET works too, and a successful GET may be cached by the client.
    let r = curl(
        &p,
        "api.test",
        "/graphql?query=%7B%20user(id%3A%20%221%22)%20%7B%20name%20%7D%20%7D",
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["data"]["user"]["name"],
        "Ada"
    );
    assert!(
        r.headers.contains("cache-control: public, max-age=60"),
        "{}",
        r.headers
    );
}

#[test]
fn limits_and_malformed_requests_answer_in_the_graphql_format() {
    let (p, _dir) = node("");
    // Too deep (max_depth 5).
    let deep =
        "{ user(id: \"1\") { friends { friends { friends { friends { friends { name } } } } } } }";
    let v = query(&p, deep, json!({}));
    assert!(v["data"].is_null(), "{v}");
    assert!(first_error(&v).to_lowercase().contains("deep"), "{v}");
    // Too complex (max_complexity 15): 19 fields, none deeper than 5, no alias.
    let wide = "{ user(id: \"1\") { id name address { city } friends { id name address { city } \
                friends { id name address { city } } } } posts(limit: 1) { title path } version }";
    let v = query(&p, wide, json!({}));
    assert!(v["data"].is_null(), "{v}");
    assert!(first_error(&v).to_lowercase().contains("complex"), "{v}");
    // Too many aliases (max 3), even where complexity would pass.
    let aliased = "{ a: version b: version c: version d: version }";
    let v = query(&p, aliased, json!({}));
    assert!(first_error(&v).contains("aliases"), "{v}");
    // Resolver calls (max 2): the same field repeated without aliases counts each time.
    let v = query(
        &p,
        "{ user(id: \"1\") { name } user(id: \"1\") { id } posts(limit: 1) { title } }",
        json!({}),
    );
    assert!(v.to_string().contains("max_resolver_calls"), "{v}");
    // Syntax errors, unknown fields: errors, no data.
    let v = query(&p, "{ user(id: ", json!({}));
    assert!(!first_error(&v).is_empty(), "{v}");
    let v = query(&p, "{ password }", json!({}));
    assert!(first_error(&v).contains("password"), "{v}");
    // Introspection is off unless configured.
    let v = query(&p, "{ __schema { types { name } } }", json!({}));
    assert!(!first_error(&v).is_empty(), "{v}");
    // Not JSON, not a GraphQL request, too large, wrong method: HTTP errors, GraphQL bodies.
    for (body, status) in [
        ("{not json", 400),
        ("[1, 2]", 400),
        (&*format!("{{\"query\": \"{}\"}}", "x".repeat(3000)), 413),
    ] {
        let r = post(&p, body);
        assert_eq!(r.status, status, "{body:.40}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert!(!first_error(&v).is_empty(), "{}", r.body);
    }
    let r = curl(&p, "api.test", "/graphql", &["-X", "DELETE"]);
    assert_eq!(r.status, 405);
}

fn sha256(text: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$0\" | sha256sum", text])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn persisted_queries_make_short_cacheable_gets_and_introspection_can_be_on() {
    let (p, _dir) = node("introspection = true");
    let q = "{ user(id: \"1\") { name } }";
    let hash = sha256(q);
    let ext = json!({"persistedQuery": {"version": 1, "sha256Hash": hash}}).to_string();
    let get = |p: &Proxy| {
        let url = format!(
            "/graphql?extensions={}",
            form_urlencoded::byte_serialize(ext.as_bytes()).collect::<String>()
        );
        curl(p, "api.test", &url, &[])
    };
    // Unknown hash: the client is told to send the query.
    let v: Value = serde_json::from_str(&get(&p).body).unwrap();
    assert_eq!(first_error(&v), "PersistedQueryNotFound", "{v}");
    // Sent once with the query...
    let r = post(
        &p,
        &json!({"query": q, "extensions": serde_json::from_str::<Value>(&ext).unwrap()})
            .to_string(),
    );
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["data"]["user"]["name"],
        "Ada",
        "{}",
        r.body
    );
    // ...then the hash alone does.
    let r = get(&p);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["data"]["user"]["name"], "Ada", "{v}");
    assert!(
        r.headers.contains("cache-control: public, max-age=60"),
        "{}",
        r.headers
    );
    // Introspection, when on.
    let v = query(
        &p,
        "{ __type(name: \"User\") { fields { name } } }",
        json!({}),
    );
    let names: Vec<&str> = v["data"]["__type"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "name", "friends", "address"], "{v}");
}

#[test]
fn a_bad_schema_is_a_config_error_naming_it() {
    let dir = Dir(std::env::temp_dir().join(unique("edge-graphql-bad-")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let schema = dir.0.join("bad.graphql");
    std::fs::write(&schema, "type Query { user: Nope }").unwrap();
    let n = edge_tests::node::Node::start(
        &format!(
            "{HEAD}\n[[graphql]]\nname = \"api\"\nschema = \"{}\"\n\
             [[route]]\nhosts = [\"*\"]\nhandler = {{ graphql = \"api\" }}\n",
            schema.display()
        ),
        None,
    );
    let out = n.cli(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.graphql") && err.contains("Nope"), "{err}");
}

#[test]
fn a_fleet_namespace_is_read_from_redis_by_any_node() {
    let Some(redis) =
        edge_tests::redis::Redis::start("a_fleet_namespace_is_read_from_redis_by_any_node")
    else {
        return;
    };
    let fleet = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"{}\"",
        redis.url(),
        unique("gqlfleet")
    );
    let (a, _da) = node_with("", &fleet);
    let (b, _db) = node_with("", &fleet);
    // Written through A's KV route only: B has no copy of it, and reads Redis.
    let r = curl(
        &a,
        "kv.test",
        "/user:7",
        &[
            "-X",
            "PUT",
            "--data-binary",
            r#"{"id": "7", "name": "Grace"}"#,
        ],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = query(&b, "{ user(id: \"7\") { name } }", json!({}));
    assert_eq!(v["data"], json!({"user": {"name": "Grace"}}), "{v}");
}
