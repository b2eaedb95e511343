//! Real components (built from `tests/components` by `cargo xtask test`) through real
//! wasmtime: what a request to a function does, and what a broken function cannot do.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::{
    error::{ErrorKind, full},
    upstream::UpstreamSettings,
};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `target/components/<name>.wasm`, built by `cargo xtask test`.
pub(crate) fn component(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the test components first with `cargo xtask test` \
         (or just `cargo xtask build-components`)",
        p.display()
    );
    p
}

/// A fresh directory for one test.
pub(crate) fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-fn-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiled code shared by the tests (and by test runs): compiling in a debug build is
/// slow, and what is tested here is running, not compiling (`restart_loads_...` is).
fn shared_cache() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("edge-fn-test-cache-{uid}"))
}

fn global(cache_dir: PathBuf) -> FunctionsSettings {
    FunctionsSettings {
        cache_dir,
        max_total_instances: 32,
        ..Default::default()
    }
}

fn function(name: &str, file: &Path, extra: &str) -> FunctionSettings {
    toml::from_str(&format!(
        "name = \"{name}\"\nfile = \"{}\"\n{extra}",
        file.display()
    ))
    .unwrap()
}

/// Functions built as `Pipeline::new` builds them, with no upstreams.
fn build(runtime: &Runtime, functions: &[FunctionSettings]) -> Functions {
    let pool = Pool::new(Duration::from_secs(2), 1);
    Functions::new(
        runtime,
        &global(shared_cache()),
        functions,
        &HashMap::new(),
        &pool,
        &HashMap::new(),
    )
    .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(format!("http://fn.test{path}"))
        .body(full(Bytes::new()))
        .unwrap()
}

async fn text(resp: Response<Body>) -> String {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

async fn call(f: &Functions, name: &str, path: &str) -> Result<(StatusCode, String), EdgeError> {
    let resp = f.handle(name, get(path), CLIENT).await?;
    let status = resp.status();
    Ok((status, text(resp).await))
}

#[tokio::test]
async fn hello_answers_with_its_configured_environment() {
    let rt = Runtime::default();
    let f = build(
        &rt,
        &[
            function("hello", &component("hello"), ""),
            function(
                "greeter",
                &component("hello"),
                "env = { GREETING = \"edge\" }",
            ),
        ],
    );
    assert_eq!(
        call(&f, "hello", "/").await.unwrap(),
        (StatusCode::OK, "hello, world\n".into())
    );
    assert_eq!(call(&f, "greeter", "/").await.unwrap().1, "hello, edge\n");
    // One component, compiled (or loaded) once for both functions.
    assert_eq!(f.sha256("hello"), f.sha256("greeter"));
    assert_eq!(rt.stats().compiled + rt.stats().from_disk, 1);
    let e = f.handle("nope", get("/"), CLIENT).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FunctionFailed);
}

#[tokio::test]
async fn echo_sees_method_path_headers_and_body() {
    let rt = Runtime::default();
    let f = build(&rt, &[function("echo", &component("echo"), "")]);
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8 + b'a').collect();
    let req = Request::post("http://fn.test/echo/this?x=1&y=2")
        .header("x-test", "yes")
        .header("content-type", "text/plain")
        .body(full(payload.clone()))
        .unwrap();
    let resp = f.handle("echo", req, CLIENT).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let split = body.windows(2).position(|w| w == b"\n\n").unwrap();
    let head = String::from_utf8_lossy(&body[..split]);
    assert!(head.starts_with("POST /echo/this?x=1&y=2\n"), "{head}");
    assert!(head.contains("authority: fn.test\n"), "{head}");
    assert!(head.contains("h: x-test: yes"), "{head}");
    assert_eq!(&body[split + 2..], &payload[..]);
}

/// An origin on loopback: answers JSON, `{"path": <path>, "user": <X-Auth-User>}`,
/// and counts connections and requests (with the Host each came with).
struct Origin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

async fn origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (connections.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .map(|h| h.to_str().unwrap_or("").to_string())
                            .unwrap_or_default();
                        let path = req.uri().to_string();
                        let user = req
                            .headers()
                            .get("x-auth-user")
                            .map(|h| h.to_str().unwrap_or("").to_string());
                        s.lock().unwrap().push((path.clone(), host));
                        let json = serde_json::json!({"path": path, "user": user});
                        Ok::<_, std::convert::Infallible>(Response::new(full(json.to_string())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Origin {
        addr,
        connections,
        seen,
    }
}

fn upstreams(pool: &Pool, origin: SocketAddr) -> HashMap<String, Arc<crate::upstream::Upstream>> {
    let mut map = HashMap::new();
    for name in ["origin", "other", "users", "orders", "backend"] {
        let s: UpstreamSettings =
            toml::from_str(&format!("name = \"{name}\"\nservers = [\"{origin}\"]")).unwrap();
        map.insert(name.to_string(), Arc::new(pool.upstream(&s).unwrap()));
    }
    map
}

#[tokio::test]
async fn a_granted_upstream_is_called_by_name_through_the_pool() {
    let o = origin().await;
    let pool = Pool::new(Duration::from_secs(2), 1);
    let ups = upstreams(&pool, o.addr);
    let rt = Runtime::default();
    let f = Functions::new(
        &rt,
        &global(shared_cache()),
        &[function(
            "call",
            &component("upstream_call"),
            "upstreams = [\"origin\"]",
        )],
        &ups,
        &pool,
        &HashMap::new(),
    )
    .unwrap();
    let (status, body) = call(&f, "call", "/?path=/from-fn").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.starts_with("upstream origin said 200: {\"path\":\"/from-fn\""),
        "{body}"
    );
    let seen = o.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    // The origin sees its own address as Host, as for proxied requests, not the name.
    assert_eq!(seen[0].1, o.addr.to_string());
}

#[tokio::test]
async fn addresses_and_names_not_granted_are_denied_in_the_guest() {
    let o = origin().await;
    let pool = Pool::new(Duration::from_secs(2), 1);
    let ups = upstreams(&pool, o.addr);
    let rt = Runtime::default();
    let f = Functions::new(
        &rt,
        &global(shared_cache()),
        &[function(
            "denied",
            &component("denied_call"),
            "upstreams = [\"origin\"]",
        )],
        &ups,
        &pool,
        &HashMap::new(),
    )
    .unwrap();
    for target in [
        o.addr.to_string(),
        "127.0.0.1".to_string(),
        "other".to_string(),
        "example.com".to_string(),
        format!("origin:{}", o.addr.port()),
    ] {
        let (status, body) = call(&f, "denied", &format!("/?target={target}"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body, "error: ErrorCode::HttpRequestDenied",
            "target {target}"
        );
    }
    // Refused before any connection was attempted.
    assert_eq!(o.connections.load(Ordering::SeqCst), 0);
    // The one granted name does go through.
    let (_, body) = call(&f, "denied", "/?target=origin").await.unwrap();
    assert_eq!(body, "reached: 200");
    assert_eq!(o.connections.load(Ordering::SeqCst), 1);
}

/// One worker thread: a guest that loops must still leave it to other requests.
#[tokio::test(flavor = "current_thread")]
async fn an_endless_loop_hits_the_deadline_while_others_are_served() {
    let rt = Runtime::default();
    let f = Arc::new(build(
        &rt,
        &[
            function("loop", &component("endless_loop"), "timeout = \"2s\""),
            function("hello", &component("hello"), ""),
        ],
    ));
    let spinning = tokio::spawn({
        let f = f.clone();
        async move { f.handle("loop", get("/spin"), CLIENT).await }
    });
    // Let the loop start, then serve others on the same (only) thread meanwhile.
    tokio::task::yield_now().await;
    assert_eq!(call(&f, "hello", "/").await.unwrap().1, "hello, world\n");
    assert_eq!(call(&f, "loop", "/other").await.unwrap().1, "ok");
    assert!(
        !spinning.is_finished(),
        "the loop ended before its deadline"
    );
    let e = spinning.await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::FunctionTimeout);
    assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        e.detail.contains("function loop") && e.detail.contains("deadline"),
        "{e}"
    );
    // The function serves again.
    assert_eq!(call(&f, "loop", "/").await.unwrap().1, "ok");
}

#[tokio::test]
async fn the_deadline_also_cuts_a_body_that_never_ends() {
    let rt = Runtime::default();
    let f = build(
        &rt,
        &[function(
            "drip",
            &component("endless_loop"),
            "timeout = \"1s\"",
        )],
    );
    let resp = f.handle("drip", get("/drip"), CLIENT).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Some bytes came, then an error: never a clean end.
    let mut body = resp.into_body();
    let mut got = 0;
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => got += f.into_data().map(|d| d.len()).unwrap_or(0),
            Some(Err(e)) => break e,
            None => panic!("the endless body ended cleanly"),
        }
    };
    assert!(got > 0);
    assert!(err.to_string().contains("deadline"), "{err}");
}

#[tokio::test]
async fn exhausting_memory_is_a_500_and_the_next_request_works() {
    let rt = Runtime::default();
    let f = build(
        &rt,
        &[function(
            "bomb",
            &component("memory_bomb"),
            "memory_limit = 16777216",
        )],
    );
    let e = f.handle("bomb", get("/bomb"), CLIENT).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FunctionFailed);
    assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(e.detail.contains("memory exhausted"), "{e}");
    // The client learns nothing of it.
    let resp = e.into_response();
    assert_eq!(text(resp).await, "500 Internal Server Error\n");
    assert_eq!(call(&f, "bomb", "/").await.unwrap().1, "ok");
}

#[tokio::test]
async fn a_trap_is_a_500_and_the_next_request_works() {
    let rt = Runtime::default();
    let f = build(
        &rt,
        &[
            function("trap", &component("trap"), ""),
            function("silent", &component("no_response"), ""),
        ],
    );
    let e = f.handle("trap", get("/panic"), CLIENT).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FunctionFailed);
    assert!(e.detail.contains("function trap: trapped"), "{e}");
    assert_eq!(
        call(&f, "trap", "/").await.unwrap(),
        (StatusCode::OK, "ok".into())
    );
    let e = f.handle("silent", get("/"), CLIENT).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FunctionFailed);
    assert!(e.detail.contains("without setting a response"), "{e}");
}

#[tokio::test]
async fn a_large_body_streams_through_whole() {
    let rt = Runtime::default();
    let f = build(&rt, &[function("large", &component("large_stream"), "")]);
    let total = 8 << 20;
    let resp = f
        .handle("large", get(&format!("/?bytes={total}")), CLIENT)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let (mut got, mut frames) = (0usize, 0usize);
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        for (i, b) in data.iter().enumerate() {
            assert_eq!(*b as usize, (got + i) % 251, "byte {}", got + i);
        }
        got += data.len();
        frames += 1;
    }
    assert_eq!(got, total);
    // Streamed as written, not gathered into one buffer.
    assert!(frames > 16, "{frames} frames");
}

#[tokio::test]
async fn over_the_instance_limit_a_request_is_turned_away() {
    let rt = Runtime::default();
    let f = Arc::new(build(
        &rt,
        &[function(
            "one",
            &component("endless_loop"),
            "timeout = \"4s\"\nmax_instances = 1",
        )],
    ));
    let spinning = tokio::spawn({
        let f = f.clone();
        async move { f.handle("one", get("/spin"), CLIENT).await }
    });
    // The spinning request holds the only instance beyond QUEUE_WAIT (1 s < 4 s).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = f.handle("one", get("/"), CLIENT).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FunctionBusy);
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        e.headers
            .iter()
            .any(|(k, _)| k == http::header::RETRY_AFTER)
    );
    assert_eq!(
        spinning.await.unwrap().unwrap_err().kind,
        ErrorKind::FunctionTimeout
    );
    assert_eq!(call(&f, "one", "/").await.unwrap().1, "ok");
}

#[test]
fn broken_components_are_refused_naming_the_file() {
    let dir = scratch("broken");
    let rt = Runtime::default();
    let pool = Pool::new(Duration::from_secs(2), 1);
    let g = global(dir.join("cache"));
    let refuse = |file: &Path| {
        let e = Functions::new(
            &rt,
            &g,
            &[function("bad", file, "")],
            &HashMap::new(),
            &pool,
            &HashMap::new(),
        )
        .err()
        .expect("refused");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("function bad") && msg.contains(&file.display().to_string()),
            "{msg}"
        );
        msg
    };
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"this is not wasm").unwrap();
    assert!(refuse(&junk).contains("not WebAssembly"));
    // A valid core module (empty), not a component.
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    assert!(refuse(&core).contains("core WebAssembly module"));
    // A valid component of another world (a command).
    assert!(refuse(&component("not-http")).contains("does not export wasi:http/incoming-handler"));
    let truncated = dir.join("truncated.wasm");
    let hello = std::fs::read(component("hello")).unwrap();
    std::fs::write(&truncated, &hello[..hello.len() / 2]).unwrap();
    assert!(refuse(&truncated).contains("not a valid component"));
    // `edge-node check` says the same.
    let e = rt.check(&g, &[function("bad", &core, "")]).unwrap_err();
    assert!(format!("{e:#}").contains(&core.display().to_string()));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn restart_loads_from_the_disk_cache_and_reload_reuses_or_recompiles() {
    let dir = scratch("restart");
    let file = dir.join("app.wasm");
    std::fs::copy(component("hello"), &file).unwrap();
    let g = global(dir.join("cache"));
    let pool = Pool::new(Duration::from_secs(2), 1);
    let settings = [function("app", &file, "")];
    let new = |rt: &Runtime| {
        Functions::new(rt, &g, &settings, &HashMap::new(), &pool, &HashMap::new()).unwrap()
    };

    let first = Runtime::default();
    let cold = std::time::Instant::now();
    let a = new(&first);
    let cold = cold.elapsed();
    assert_eq!(
        first.stats(),
        LoadStats {
            compiled: 1,
            ..Default::default()
        }
    );
    let cached: Vec<_> = std::fs::read_dir(dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].ends_with(".cwasm"));

    // A restart: a new process (runtime, engine) with the same cache directory.
    let second = Runtime::default();
    let warm = std::time::Instant::now();
    let b = new(&second);
    let warm = warm.elapsed();
    assert_eq!(
        second.stats(),
        LoadStats {
            from_disk: 1,
            ..Default::default()
        }
    );
    assert_eq!(call(&b, "app", "/").await.unwrap().1, "hello, world\n");
    println!("hello component: compiled in {cold:?}, loaded from the disk cache in {warm:?}");

    // A reload of an unchanged file: the compiled component is reused.
    let c = new(&second);
    assert_eq!(second.stats().reused, 1);
    assert_eq!(c.sha256("app"), b.sha256("app"));
    // A changed file is picked up; the old functions still run the old component
    // (requests in flight finish on what they started with).
    std::fs::copy(component("echo"), &file).unwrap();
    let d = new(&second);
    assert_eq!(second.stats().compiled, 1);
    assert_ne!(d.sha256("app"), c.sha256("app"));
    assert!(
        call(&d, "app", "/x")
            .await
            .unwrap()
            .1
            .starts_with("GET /x\n")
    );
    assert_eq!(call(&c, "app", "/").await.unwrap().1, "hello, world\n");
    drop((a, b, c, d));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_upload_replaces_the_file_only_when_valid() {
    let dir = scratch("deploy");
    let file = dir.join("app.wasm");
    std::fs::copy(component("hello"), &file).unwrap();
    let rt = Runtime::default();
    let g = global(dir.join("cache"));
    let settings = [function("app", &file, "")];
    rt.set_deployable(&g, &settings);
    assert!(matches!(
        rt.deploy("nope", b"whatever"),
        Err(DeployError::Unknown)
    ));
    let before = std::fs::read(&file).unwrap();
    match rt.deploy("app", b"\0asm\x01\0\0\0") {
        Err(DeployError::Invalid(why)) => assert!(why.contains("core WebAssembly module"), "{why}"),
        other => panic!("{:?}", other.map(|d| d.file)),
    }
    let not_http = std::fs::read(component("not-http")).unwrap();
    assert!(matches!(
        rt.deploy("app", &not_http),
        Err(DeployError::Invalid(_))
    ));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "a refused upload changed the file"
    );

    let echo = std::fs::read(component("echo")).unwrap();
    let deployed = rt.deploy("app", &echo).unwrap();
    assert_eq!(deployed.file, file);
    assert_eq!(std::fs::read(&file).unwrap(), echo);
    let compiled = rt.stats().compiled;
    // The reload that follows finds it compiled.
    let pool = Pool::new(Duration::from_secs(2), 1);
    let f = Functions::new(&rt, &g, &settings, &HashMap::new(), &pool, &HashMap::new()).unwrap();
    assert_eq!(rt.stats().compiled, compiled);
    assert_eq!(f.sha256("app").unwrap(), deployed.sha256());
    assert!(
        call(&f, "app", "/y")
            .await
            .unwrap()
            .1
            .starts_with("GET /y\n")
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Guest stdout and stderr reach the node's log, line by line, with the function's
/// name; so do denied calls.
#[test]
fn guest_output_is_logged_with_the_function_name() {
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // One thread: the guest's task logs under this thread's subscriber.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = Runtime::default();
    let f = build(
        &rt,
        &[
            function("greeter", &component("hello"), ""),
            function("sneaky", &component("denied_call"), ""),
        ],
    );
    let calls = || {
        tokio.block_on(async {
            call(&f, "greeter", "/some/path").await.unwrap();
            call(&f, "sneaky", "/?target=10.1.2.3").await.unwrap();
        })
    };
    // Once without a subscriber: tracing registers the log statements' callsites now,
    // not while other tests (threads) race with the interest rebuild `set_default`
    // does below.
    calls();
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    calls();
    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("hello: serving /some/path"))
        .unwrap_or_else(|| panic!("no guest line in:\n{log}"));
    assert!(
        line.contains("function=greeter") && line.contains("stdout"),
        "{line}"
    );
    let denied = log
        .lines()
        .find(|l| l.contains("outgoing request denied"))
        .unwrap_or_else(|| panic!("no denial in:\n{log}"));
    assert!(
        denied.contains("function=sneaky") && denied.contains("10.1.2.3"),
        "{denied}"
    );
}

/// The examples users start from (`examples/functions`, built by the same xtask step)
/// load and do what their READMEs say.
#[tokio::test]
async fn the_examples_work() {
    let o = origin().await;
    let pool = Pool::new(Duration::from_secs(2), 1);
    let ups = upstreams(&pool, o.addr);
    let rt = Runtime::default();
    let example = |n: &str| component(&format!("examples/{n}"));
    let f = Functions::new(
        &rt,
        &global(shared_cache()),
        &[
            function(
                "geo",
                &example("geo-redirect"),
                "env = { REDIRECTS = \"DE=https://de.example.com,FR=https://fr.example.com/\" }",
            ),
            function(
                "auth",
                &example("auth-check"),
                "upstreams = [\"backend\"]\nenv = { TOKENS = \"alice:t-one,bob:t-two\" }",
            ),
            function(
                "api",
                &example("json-api"),
                "upstreams = [\"users\", \"orders\"]",
            ),
        ],
        &ups,
        &pool,
        &HashMap::new(),
    )
    .unwrap();

    let req = |path: &str, headers: &[(&str, &str)]| {
        let mut r = Request::get(format!("http://fn.test{path}"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(full(Bytes::new())).unwrap()
    };
    let resp = f
        .handle("geo", req("/shop?x=1", &[("cf-ipcountry", "fr")]), CLIENT)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()["location"],
        "https://fr.example.com/shop?x=1"
    );
    let resp = f
        .handle("geo", req("/", &[("x-geo-country", "JP")]), CLIENT)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = f
        .handle("auth", req("/private", &[]), CLIENT)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    let resp = f
        .handle(
            "auth",
            req("/private", &[("authorization", "Bearer wrong")]),
            CLIENT,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(o.connections.load(Ordering::SeqCst), 0);
    let resp = f
        .handle(
            "auth",
            req("/private", &[("authorization", "Bearer t-two")]),
            CLIENT,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(got, serde_json::json!({"path": "/private", "user": "bob"}));

    let resp = f
        .handle("api", req("/profile/42", &[]), CLIENT)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(got["user"]["path"], "/users/42");
    assert_eq!(got["orders"]["path"], "/orders?user=42");
}

/// Not a benchmark: what one request costs (a fresh instance each), printed.
#[tokio::test]
async fn per_request_instance_cost_is_printed() {
    let rt = Runtime::default();
    let f = build(&rt, &[function("hello", &component("hello"), "")]);
    call(&f, "hello", "/").await.unwrap();
    let n = 200u32;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let resp = f.handle("hello", get("/"), CLIENT).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let per = start.elapsed() / n;
    println!(
        "hello: {per:?} per request (instantiate + run + collect), {} build",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}

/// The kv component over a real store: what it writes is in the namespace, a namespace
/// it is not granted is access-denied, and an instance runs out of operations.
#[tokio::test]
async fn kv_reaches_granted_namespaces_only() {
    let dir = scratch("kv");
    let store = crate::kv::Store::open(&dir, Duration::ZERO).unwrap();
    let mut namespaces = HashMap::new();
    for name in ["users", "secrets"] {
        let settings: crate::kv::KvSettings =
            toml::from_str(&format!("name = \"{name}\"\nmax_value_bytes = 64")).unwrap();
        namespaces.insert(
            name.to_string(),
            Arc::new(crate::kv::Namespace {
                settings,
                store: store.clone(),
                fleet: None,
            }),
        );
    }
    let rt = Runtime::default();
    let pool = Pool::new(Duration::from_secs(2), 1);
    let f = Functions::new(
        &rt,
        &global(shared_cache()),
        &[
            function("app", &component("kv"), "kv = [\"users\"]"),
            function("none", &component("kv"), ""),
        ],
        &HashMap::new(),
        &pool,
        &namespaces,
    )
    .unwrap();
    let send = |name: &'static str, method: &str, path: &str, body: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://fn.test{path}"))
            .body(full(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let f = &f;
        async move {
            let resp = f.handle(name, req, CLIENT).await.unwrap();
            let status = resp.status().as_u16();
            (status, text(resp).await)
        }
    };
    assert_eq!(send("app", "PUT", "/set/user:1", "ada").await.0, 204);
    let e = store.get("users", "user:1").unwrap().expect("written");
    assert_eq!(&e.value[..], b"ada");
    assert_eq!(e.content_type, "application/octet-stream");
    assert_eq!(
        send("app", "GET", "/get/user:1", "").await,
        (200, "ada".into())
    );
    // Over the namespace's max_value_bytes: an error naming the limit, nothing written.
    let (status, body) = send("app", "PUT", "/fill/big?size=65", "").await;
    assert_eq!(status, 500);
    assert!(body.contains("value of 65 bytes"), "{body}");
    assert!(store.get("users", "big").unwrap().is_none());
    // Not granted: access-denied, whatever the name.
    for (name, path) in [
        ("none", "/get/user:1"),
        ("app", "/get/x?bucket=secrets"),
        ("app", "/get/x?bucket=nope"),
    ] {
        assert_eq!(
            send(name, "GET", path, "").await,
            (403, "kv error: access-denied\n".into()),
            "{name} {path}"
        );
    }
    // One request may not make the node do more than MAX_OPS operations; the next
    // request has its own.
    let max = super::keyvalue::MAX_OPS;
    let (status, body) = send("app", "GET", &format!("/spin?n={}", max + 5), "").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!("{max} ")) && body.contains("operations"),
        "{body}"
    );
    assert_eq!(send("app", "GET", "/spin?n=3", "").await.1, "3 done");
    let _ = std::fs::remove_dir_all(&dir);
}
