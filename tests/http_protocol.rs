//! Protocol behaviour at the edge, with real clients and raw sockets: WebSocket upgrades
//! tunnelled only after the origin's 101, request bodies held to the size limit while
//! they stream (and Expect: 100-continue), HTTP/2 reset and CONTINUATION floods, a
//! second independent HTTP/2 client (nghttp), and reloads under load losing nothing.

use std::{
    io::{BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use edge_tests::{
    origin::Origin,
    proxy::{Proxy, curl, read_head, start_config},
};

fn config(origin: &str, extra_http: &str) -> String {
    format!(
        r#"[xdp]
mode = "off"

[http]
listen = ["127.0.0.1:0"]
upstream_connect_timeout = "1s"
{extra_http}

[[upstream]]
name = "app"
servers = ["{origin}"]

[[route]]
hosts = ["app.test"]
upstream = "app"
"#
    )
}

/// An origin that switches protocols for `/chat` (101, then echoes bytes) and answers
/// 200 to anything else; it records the request heads it got.
fn upgrade_origin() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    thread::spawn(move || {
        for conn in l.incoming().take(8) {
            let Ok(conn) = conn else { continue };
            let seen = seen.clone();
            thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let head = read_head(&mut r);
                    if head.is_empty() {
                        return;
                    }
                    seen.lock().unwrap().push(head.clone());
                    if head.starts_with("get /chat ") {
                        w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").unwrap();
                        // Now a tunnel: echo until the client goes.
                        let mut buf = [0u8; 1024];
                        loop {
                            match r.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if w.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno")
                        .unwrap();
                }
            });
        }
    });
    (addr, heads)
}

const UPGRADE_REQUEST: &str = "Host: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn websocket_upgrades_are_tunnelled_only_after_the_origins_101() {
    let (origin, heads) = upgrade_origin();
    let p = start_config(&config(&origin, ""));

    let mut s = TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET /chat HTTP/1.1\r\n{UPGRADE_REQUEST}").as_bytes())
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // The origin was asked to upgrade, with the client's handshake headers.
    let asked = heads.lock().unwrap()[0].clone();
    assert!(
        asked.contains("upgrade: websocket") && asked.contains("connection: upgrade"),
        "{asked}"
    );
    assert!(
        asked.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{asked}"
    );
    // Bytes now flow both ways, untouched.
    for msg in ["ping-1", "a longer message \u{1F600}", "ping-3"] {
        s.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        r.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("tunnel read: {e}\n{}", p.node.log()));
        assert_eq!(String::from_utf8(buf).unwrap(), msg);
    }
    drop((s, r));

    // An origin that does not switch: an ordinary response, and no tunnel.
    let mut s = TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET /plain HTTP/1.1\r\n{UPGRADE_REQUEST}").as_bytes())
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("upgrade:"), "{head}");
    let mut body = [0u8; 2];
    r.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"no");
    // The connection still speaks HTTP.
    s.write_all(b"GET /plain HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert!(read_head(&mut r).starts_with("http/1.1 200"));
}

#[test]
fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
    let (origin, _) = upgrade_origin();
    let p = start_config(&config(&origin, "tunnel_idle_timeout = \"1s\""));
    let mut s = TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET /chat HTTP/1.1\r\n{UPGRADE_REQUEST}").as_bytes())
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert!(read_head(&mut r).starts_with("http/1.1 101"));
    // Traffic every 300 ms for 3 s: the tunnel stays.
    for i in 0..10 {
        let msg = format!("m{i}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        r.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("a busy tunnel was closed: {e}"));
        thread::sleep(Duration::from_millis(300));
    }
    // Then nothing either way: closed (bounded by the 10 s read timeout).
    let mut rest = Vec::new();
    let ended = r.read_to_end(&mut rest);
    assert!(ended.is_ok() && rest.is_empty(), "{ended:?} {rest:?}");
}

#[test]
fn bodies_are_held_to_the_limit_while_streaming_and_expect_continue_is_honoured() {
    let origin = Origin::start("a");
    let p = start_config(&config(&origin.addr.to_string(), "max_body_bytes = 1000"));
    let dir = std::env::temp_dir().join(edge_tests::unique("edge-body-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (small, big) = (dir.join("small"), dir.join("big"));
    std::fs::write(&small, vec![b's'; 900]).unwrap();
    std::fs::write(&big, vec![b'b'; 50_000]).unwrap();
    let up = |file: &std::path::Path, chunked: bool| {
        let mut args = vec!["--data-binary".to_string(), format!("@{}", file.display())];
        if chunked {
            args.extend(["-H".into(), "Transfer-Encoding: chunked".into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&p, "app.test", "/up", &args)
    };
    // Chunked (no declared length) within the limit streams through...
    let r = up(&small, true);
    assert_eq!(r.status, 200, "{}", p.node.log());
    assert!(r.body.contains("body=900"), "{}", r.body);
    let hits = origin.hits();
    // ... over it, the exchange is cut and the client gets 413; the origin never gets a
    // complete request.
    let r = up(&big, true);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(origin.hits(), hits);
    // A declared length over the limit is refused before anything is sent.
    let r = up(&big, false);
    assert_eq!(r.status, 413);
    assert_eq!(origin.hits(), hits);

    // Expect: 100-continue: over the limit, 413 at once (no 100, the body is never
    // asked for); within it, 100 Continue and then the real answer.
    let mut s = TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r);
    assert!(head.starts_with("http/1.1 413"), "{head}");

    let mut s = TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 500\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r);
    assert!(head.starts_with("http/1.1 100"), "{head}");
    s.write_all(&[b'x'; 500]).unwrap();
    let head = read_head(&mut r);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let _ = std::fs::remove_dir_all(&dir);
}

// --- HTTP/2 frames, written by hand so the floods are exactly what the test says ---

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for GET http://app.test/ : indexed :method GET, :scheme http, :path /, and
/// :authority as a literal without indexing.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 8];
    b.extend_from_slice(b"app.test");
    b
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// Reads frames until the server closes (or 10 s): the GOAWAY error code, if one came.
fn goaway_code(s: &mut TcpStream) -> Option<u32> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let mut at = 0;
    let mut code = None;
    while at + 9 <= data.len() {
        let len = (usize::from(data[at]) << 16)
            | (usize::from(data[at + 1]) << 8)
            | usize::from(data[at + 2]);
        let kind = data[at + 3];
        if kind == GOAWAY && at + 9 + 8 <= data.len() {
            let p = &data[at + 9..];
            code = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        at += 9 + len;
    }
    code
}

#[test]
fn http2_rapid_reset_and_continuation_floods_end_the_connection() {
    let origin = Origin::start("a");
    let p = start_config(&config(&origin.addr.to_string(), ""));

    // Rapid reset: 2000 streams opened and cancelled at once.
    let mut s = TcpStream::connect(p.addr()).unwrap();
    let mut burst = PREFACE.to_vec();
    burst.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &get_block()));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&burst);
    let code = goaway_code(&mut s);
    assert_eq!(code, Some(0xb), "expected GOAWAY ENHANCE_YOUR_CALM");
    assert!(
        origin.hits() < 200,
        "{} of 2000 reset streams reached the origin",
        origin.hits()
    );

    // CONTINUATION flood: a header block that never ends, far past the head limit.
    let mut s = TcpStream::connect(p.addr()).unwrap();
    let hits = origin.hits();
    let mut start = PREFACE.to_vec();
    start.extend(frame(SETTINGS, 0, 0, &[]));
    start.extend(frame(HEADERS, END_STREAM, 1, &get_block()));
    let _ = s.write_all(&start);
    let mut pad = Vec::new();
    for _ in 0..10 {
        // Literal without indexing, new name "x-pad", 100-byte value.
        pad.extend_from_slice(&[0x00, 5]);
        pad.extend_from_slice(b"x-pad");
        pad.push(100);
        pad.extend_from_slice(&[b'p'; 100]);
    }
    let writer = {
        let mut w = s.try_clone().unwrap();
        thread::spawn(move || {
            // 4 MB at most; the node must stop it long before.
            for _ in 0..4000 {
                if w.write_all(&frame(CONTINUATION, 0, 1, &pad)).is_err() {
                    return;
                }
            }
        })
    };
    let code = goaway_code(&mut s);
    let _ = writer.join();
    assert!(code.is_some(), "the connection ended without a GOAWAY");
    assert_eq!(
        origin.hits(),
        hits,
        "the endless header block reached the origin"
    );

    // The node serves the next client as ever.
    assert_eq!(
        curl(&p, "app.test", "/", &["--http2-prior-knowledge"]).status,
        200
    );
}

#[test]
fn nghttp_an_independent_http2_client_gets_the_same_answers() {
    let origin = Origin::start("a");
    let p = start_config(&config(&origin.addr.to_string(), ""));
    let out = Command::new("nghttp")
        .args(["-v", "-H", ":authority: app.test", "-H", "x-user-id: spoof"])
        .arg(format!("{}/from-nghttp", p.base))
        .output()
        .expect("nghttp (Debian package nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(":status: 200"), "{text}");
    assert!(text.contains("x-node-id: edge-1"), "{text}");
    // The origin's echo is the body: its lines start at column 0, nghttp's own
    // verbose lines are indented.
    let body: Vec<&str> = text.lines().collect();
    assert!(
        body.contains(&"origin=a") && body.contains(&"path=/from-nghttp"),
        "{text}"
    );
    assert!(body.contains(&"via: 2 edge-node"), "{text}");
    assert!(
        !body.contains(&"x-user-id: spoof"),
        "identity header reached the origin: {text}"
    );
    // Unknown authority: refused, never proxied.
    let out = Command::new("nghttp")
        .args(["-v", "-H", ":authority: elsewhere.test"])
        .arg(format!("{}/", p.base))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(":status: 421"));
}

#[test]
fn reloads_under_continuous_load_lose_no_request() {
    let origin = Origin::start("a");
    let cfg = config(&origin.addr.to_string(), "");
    let p: Proxy = start_config(&cfg);
    // Every URL with its own `-o /dev/null`: curl pairs each -o with one URL.
    let urls: Vec<String> = (0..150)
        .flat_map(|i| {
            [
                "-o".to_string(),
                "/dev/null".to_string(),
                format!("{}/r{i}", p.base),
            ]
        })
        .collect();
    let results = thread::scope(|sc| {
        let loads: Vec<_> = (0..3)
            .map(|_| {
                sc.spawn(|| {
                    // One curl, many URLs: keep-alive connections that live across reloads.
                    let out = Command::new("curl")
                        .args(["-s", "--max-time", "60", "-H", "Host: app.test"])
                        .args(["-w", "%{http_code}\n"])
                        .args(&urls)
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&out.stdout).into_owned()
                })
            })
            .collect();
        for i in 0..6 {
            thread::sleep(Duration::from_millis(150));
            // Alternate between two valid configurations (an extra route comes and goes).
            let text = if i % 2 == 0 {
                format!("{cfg}\n[[route]]\nhosts = [\"extra{i}.test\"]\nupstream = \"app\"\n")
            } else {
                cfg.clone()
            };
            std::fs::write(p.node.config_path(), text).unwrap();
            p.node.signal(libc::SIGHUP);
        }
        loads
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let codes: Vec<&str> = results.iter().flat_map(|r| r.lines()).collect();
    assert_eq!(codes.len(), 450, "{}", codes.join(" "));
    assert!(codes.iter().all(|c| *c == "200"), "{codes:?}");
    assert!(
        p.node.log().matches("configuration reloaded").count() >= 3,
        "{}",
        p.node.log()
    );
}
