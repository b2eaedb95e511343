//! Functions at the edge, end to end: WebAssembly components (built from
//! tests/components by `cargo xtask test`) answering routes over HTTP/1.1, HTTP/2 and
//! HTTP/3, calling a granted upstream and refused anything else, failing alone (an
//! endless loop, a memory bomb, a trap) while everything else is served, filtering a
//! proxied route, and deployed under load through the admin API without losing a
//! request.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use edge_tests::{
    h3::{free_udp_port, h3},
    origin::Origin,
    proxy::{ADMIN_TOKEN, HeldConnection, Proxy, Reply, admin_section, curl, start_config},
    tls_origin::make_ca_and_leaf,
    unique,
};
use serde_json::json;

/// A component built by `cargo xtask test`, copied into `dir` (a deploy writes over the
/// configured file: the build's copy stays as it was).
fn component(dir: &Path, name: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components")
        .join(format!("{name}.wasm"));
    assert!(
        built.is_file(),
        "{} is missing: build the test components with `cargo xtask test`",
        built.display()
    );
    let copy = dir.join(format!("{name}.wasm"));
    std::fs::copy(&built, &copy).unwrap();
    copy
}

struct Edge {
    p: Proxy,
    dir: PathBuf,
    h3_port: u16,
    _origin: Origin,
}

fn edge() -> Edge {
    let dir = std::env::temp_dir().join(unique("edge-fn-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["app.test", "hello.test"]);
    let origin = Origin::start("app");
    let h3_port = free_udp_port();
    let f = |name: &str, file: &str, extra: &str| {
        format!(
            "[[function]]\nname = \"{name}\"\nfile = \"{}\"\n{extra}\n\n",
            component(&dir, file).display()
        )
    };
    let functions = [
        f("hello", "hello", "env = { GREETING = \"edge\" }"),
        f("echo", "echo", ""),
        f("loop", "endless_loop", "timeout = \"1s\""),
        f("bomb", "memory_bomb", "memory_limit = 16777216"),
        f("trap", "trap", ""),
        f("large", "large_stream", ""),
        f(
            "call",
            "upstream_call",
            "upstreams = [\"app\"]\nenv = { UPSTREAM = \"app\" }",
        ),
        f("denied", "denied_call", ""),
        f("filter", "filter", ""),
    ]
    .concat();
    let route = |host: &str, function: &str| {
        format!("[[route]]\nhosts = [\"{host}\"]\nhandler = {{ function = \"{function}\" }}\n\n")
    };
    let routes = [
        route("hello.test", "hello"),
        route("echo.test", "echo"),
        route("loop.test", "loop"),
        route("bomb.test", "bomb"),
        route("trap.test", "trap"),
        route("large.test", "large"),
        route("call.test", "call"),
        route("denied.test", "denied"),
    ]
    .concat();
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\nh3_listen = [\"127.0.0.1:{h3_port}\"]\n\n\
         [threat]\nenabled = false\n\n\
         [functions]\ncache_dir = \"{cache}\"\n\n{functions}\
         [[certificate]]\nhosts = [\"app.test\", \"hello.test\"]\ncert = \"{leaf}\"\nkey = \"{key}\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n\n{routes}\
         [[route]]\nhosts = [\"proxied.test\"]\nupstream = \"app\"\n\n\
         [[route]]\nhosts = [\"filtered.test\"]\nupstream = \"app\"\n\
         request_filter = \"filter\"\nresponse_filter = \"filter\"\n[route.cache]\n{admin}",
        cache = dir.join("cache").display(),
        leaf = dir.join("leaf.crt").display(),
        key = dir.join("leaf.key").display(),
        origin = origin.addr,
        admin = admin_section(),
    );
    Edge {
        p: start_config(&cfg),
        dir,
        h3_port,
        _origin: origin,
    }
}

fn header(r: &Reply, name: &str) -> String {
    r.headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn a_function_answers_over_http1_http2_and_http3() {
    let e = edge();
    let h1 = curl(&e.p, "hello.test", "/", &[]);
    assert_eq!(
        (h1.status, h1.body.as_str()),
        (200, "hello, edge\n"),
        "{}",
        h1.headers
    );
    assert_eq!(h1.version, "1.1");
    let h2 = curl(&e.p, "hello.test", "/", &["--http2-prior-knowledge"]);
    assert_eq!((h2.status, h2.body.as_str()), (200, "hello, edge\n"));
    assert_eq!(h2.version, "2");
    // The function's time is in Server-Timing, next to the edge's own.
    let timing = header(&h1, "server-timing");
    assert!(
        timing.starts_with("edge;dur=") && timing.contains("fn;"),
        "{timing}"
    );
    let answers = h3(
        e.h3_port,
        &e.dir.join("ca.crt"),
        json!([
            {"method": "GET", "authority": "hello.test", "path": "/"},
        ]),
    );
    assert_eq!(answers[0]["status"], 200, "{answers:?}");
    assert_eq!(answers[0]["body"], "hello, edge\n");
    // The guest's stdout is in the node's log, with the function's name.
    assert!(
        e.p.node
            .wait_for_log("hello: serving /", Duration::from_secs(5)),
        "{}",
        e.p.node.log()
    );
}

#[test]
fn echo_gets_the_request_and_streams_bodies_both_ways() {
    let e = edge();
    let body = "x".repeat(200_000);
    let file = e.dir.join("body");
    std::fs::write(&file, &body).unwrap();
    let r = curl(
        &e.p,
        "echo.test",
        "/some/path?q=1",
        &[
            "-X",
            "POST",
            "-H",
            "X-Test: yes",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.headers);
    assert!(
        r.body.starts_with("POST /some/path?q=1\n"),
        "{}",
        &r.body[..200.min(r.body.len())]
    );
    assert!(
        r.body.contains("h: x-test: yes"),
        "{}",
        &r.body[..400.min(r.body.len())]
    );
    assert!(r.body.ends_with(&body), "the request body came back whole");
    // 8 MiB streamed out of the guest arrive whole and in order.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "30", "-H", "Host: large.test"])
        .arg(format!("{}/", e.p.base))
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), 8 << 20);
    assert!(
        out.stdout
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );
}

#[test]
fn functions_reach_granted_upstreams_only() {
    let e = edge();
    let r = curl(&e.p, "call.test", "/?path=/from-wasm", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("upstream app said 200: "), "{}", r.body);
    assert!(
        r.body.contains("path=/from-wasm"),
        "the origin served it: {}",
        r.body
    );
    // An address (the origin's own), a name that is not granted: refused in the guest.
    for target in [e._origin.addr.to_string(), "app".into(), "localhost".into()] {
        let before = e._origin.hits();
        let r = curl(&e.p, "denied.test", &format!("/?target={target}"), &[]);
        assert_eq!(r.status, 200);
        assert!(r.body.starts_with("error: "), "{target}: {}", r.body);
        assert_eq!(e._origin.hits(), before, "{target} reached the origin");
    }
}

#[test]
fn a_runaway_function_fails_alone() {
    let e = edge();
    let stop = AtomicBool::new(false);
    let served = AtomicUsize::new(0);
    std::thread::scope(|s| {
        // Others keep being served while the loop runs to its deadline.
        s.spawn(|| {
            let mut c = HeldConnection::open(&e.p);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                assert_eq!(c.get("hello.test", "/"), (200, "hello, edge\n".into()));
                let (status, _) = c.get("proxied.test", "/p");
                assert_eq!(status, 200);
                served.fetch_add(1, Ordering::Relaxed);
            }
        });
        let looped = curl(&e.p, "loop.test", "/spin", &[]);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(looped.status, 504, "{}", looped.body);
        assert!(
            !looped.body.contains("loop"),
            "a generic body: {}",
            looped.body
        );
    });
    assert!(
        served.load(Ordering::Relaxed) > 0,
        "nothing else was served while the loop ran"
    );
    let bomb = curl(&e.p, "bomb.test", "/bomb", &[]);
    assert_eq!(bomb.status, 500, "{}", bomb.body);
    assert_eq!(curl(&e.p, "bomb.test", "/", &[]).body, "ok");
    let trap = curl(&e.p, "trap.test", "/panic", &[]);
    assert_eq!(trap.status, 500);
    assert_eq!(curl(&e.p, "trap.test", "/", &[]).body, "ok");
    // A body that never ends is cut at the deadline too.
    let drip = curl(&e.p, "loop.test", "/drip", &[]);
    assert_eq!(drip.status, 200, "the head went out before the deadline");
    assert_eq!(curl(&e.p, "hello.test", "/", &[]).status, 200);
    // The log names the function and the cause.
    let log = e.p.node.log();
    for name in ["function=loop", "function=bomb", "function=trap"] {
        assert!(log.contains(name), "{name} not in the log:\n{log}");
    }
    // So do the metrics, by outcome.
    let (status, metrics) = e.p.admin("GET", "/metrics");
    assert_eq!(status, 200);
    for line in [
        "edge_function_calls_total{function=\"loop\",role=\"handler\",outcome=\"timeout\"} 1",
        "edge_function_calls_total{function=\"loop\",role=\"handler\",outcome=\"ok\"} 1",
        "edge_function_calls_total{function=\"bomb\",role=\"handler\",outcome=\"failed\"} 1",
        "edge_function_calls_total{function=\"trap\",role=\"handler\",outcome=\"failed\"} 1",
        "edge_function_duration_seconds_count{function=\"trap\",role=\"handler\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[test]
fn filters_rewrite_answer_and_edit_a_proxied_route() {
    let e = edge();
    // No key: the request filter answers, the origin never sees it.
    let before = e._origin.hits();
    let refused = curl(&e.p, "filtered.test", "/old/x", &[]);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(header(&refused, "www-authenticate"), "apikey");
    assert_eq!(e._origin.hits(), before);
    // With it: rewritten (header set, key removed, path moved) and proxied; the response
    // filter's header is on the answer.
    let ok = curl(
        &e.p,
        "filtered.test",
        "/old/x?cc=max-age%3D60",
        &["-H", "X-Api-Key: let-me-in"],
    );
    assert_eq!(ok.status, 200, "{}\n{}", ok.body, e.p.node.log());
    assert!(ok.body.contains("path=/new/x"), "{}", ok.body);
    assert!(ok.body.contains("x-filtered-by: wasm"), "{}", ok.body);
    assert!(
        !ok.body.to_ascii_lowercase().contains("x-api-key"),
        "{}",
        ok.body
    );
    assert_eq!(header(&ok, "x-response-filter"), "wasm", "{}", ok.headers);
    // The cache keeps the filtered answer; a hit still passes the request filter.
    let hit = curl(
        &e.p,
        "filtered.test",
        "/old/x?cc=max-age%3D60",
        &["-H", "X-Api-Key: let-me-in"],
    );
    assert_eq!(header(&hit, "x-cache"), "hit", "{}", hit.headers);
    assert_eq!(header(&hit, "x-response-filter"), "wasm");
    let no_key = curl(&e.p, "filtered.test", "/old/x?cc=max-age%3D60", &[]);
    assert_eq!(
        no_key.status, 401,
        "a cached page is no way around the filter"
    );
    // Past its freshness within stale-while-revalidate: revalidated in the request (a
    // refresh off the request path would go straight to the pools and store what the
    // filter never saw), so the copy the next hit serves is filtered too.
    let swr = "/swr?cc=max-age%3D1%2C%20stale-while-revalidate%3D30";
    let key = ["-H", "X-Api-Key: let-me-in"];
    assert_eq!(curl(&e.p, "filtered.test", swr, &key).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    let stale = curl(&e.p, "filtered.test", swr, &key);
    assert_eq!(
        header(&stale, "x-response-filter"),
        "wasm",
        "{}",
        stale.headers
    );
    for _ in 0..2 {
        let again = curl(&e.p, "filtered.test", swr, &key);
        assert_eq!(
            header(&again, "x-response-filter"),
            "wasm",
            "{}",
            again.headers
        );
    }
    // The response filter edits the status.
    let gone = curl(
        &e.p,
        "filtered.test",
        "/missing?status=404",
        &["-H", "X-Api-Key: let-me-in"],
    );
    assert_eq!(gone.status, 410, "{}", gone.headers);
}

#[test]
fn a_deploy_under_load_loses_no_request() {
    let e = edge();
    let new = component(&e.dir, "echo");
    let done = AtomicBool::new(false);
    let (answered, echoed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let mut c = HeldConnection::open(&e.p);
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut after = 0;
                // Bounded: until 20 answers after the deploy, or the deadline.
                while after < 20 && Instant::now() < deadline {
                    let (status, body) = c.get("hello.test", "/");
                    assert_eq!(status, 200, "{body}");
                    answered.fetch_add(1, Ordering::Relaxed);
                    if body.starts_with("GET /") {
                        echoed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(body, "hello, edge\n");
                    }
                    if done.load(Ordering::Relaxed) {
                        after += 1;
                    }
                }
            });
        }
        while answered.load(Ordering::Relaxed) < 30 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "60",
                "-X",
                "PUT",
                "-w",
                "\n%{http_code}",
            ])
            .arg("-H")
            .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
            .arg("--data-binary")
            .arg(format!("@{}", new.display()))
            .arg(format!(
                "http://{}/functions/hello",
                e.p.node.logged_addr("admin listening").unwrap()
            ))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.ends_with("\n200"), "deploy: {text}");
        done.store(true, Ordering::Relaxed);
    });
    assert!(
        echoed.load(Ordering::Relaxed) >= 60,
        "the new component answers after the deploy"
    );
    // An invalid upload is refused and the deployed one keeps serving.
    let junk = e.dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let out = Command::new("curl")
        .args(["-s", "-X", "PUT", "-w", "\n%{http_code}"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
        .arg("--data-binary")
        .arg(format!("@{}", junk.display()))
        .arg(format!(
            "http://{}/functions/hello",
            e.p.node.logged_addr("admin listening").unwrap()
        ))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\n400"));
    assert!(curl(&e.p, "hello.test", "/", &[]).body.starts_with("GET /"));
}
