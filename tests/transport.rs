//! Transport hardening at the edge, with raw sockets against the real node: every phase
//! of a connection has a deadline (accept to first request head, TLS handshake, HTTP/2
//! preface, idle keep-alive, idle HTTP/2), a stalled request body times out, TLS
//! connections speak the protocol ALPN chose, and connections are capped.

use std::{
    io::{BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use edge_tests::{
    node::Node,
    origin::Origin,
    proxy::{curl, read_head, start_config},
    tls_origin::make_ca_and_leaf,
    unique,
};

/// `header_read_timeout` in these configs, and the margin a close may take beyond it.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const MARGIN: Duration = Duration::from_secs(5);

fn config(origin: &str, listen: &str, extra_http: &str) -> String {
    config_with_head_timeout(origin, listen, "1s", extra_http)
}

fn config_with_head_timeout(origin: &str, listen: &str, head: &str, extra_http: &str) -> String {
    format!(
        r#"[xdp]
mode = "off"

[http]
{listen}
upstream_connect_timeout = "1s"
header_read_timeout = "{head}"
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

/// Reads (discarding) until the node closes the connection or `limit` passes; how long
/// the close took, or None if the connection was still open at `limit`.
fn closed_within(s: &mut impl Read, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // A reset is a close too.
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

#[test]
fn connections_that_never_complete_a_request_head_are_closed() {
    let origin = Origin::start("a");
    let p = start_config(&config(
        &origin.addr.to_string(),
        r#"listen = ["127.0.0.1:0"]"#,
        "",
    ));
    let limit = HEAD_TIMEOUT + MARGIN;
    // Nothing at all; one byte of a request line; half the HTTP/2 preface; the whole
    // preface and no SETTINGS. Opened together: each one's deadline runs from its accept.
    let openers: [&[u8]; 4] = [
        b"",
        b"G",
        b"PRI * HTTP/2.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    let mut conns: Vec<TcpStream> = openers
        .iter()
        .map(|bytes| {
            let mut s = connect(&p.addr());
            s.write_all(bytes).unwrap();
            s
        })
        .collect();
    for (s, bytes) in conns.iter_mut().zip(openers) {
        assert!(
            closed_within(s, limit).is_some(),
            "a connection that sent {:?} was still open after {limit:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // The node serves the next client as ever.
    assert_eq!(curl(&p, "app.test", "/", &[]).status, 200);
}

#[test]
fn idle_keep_alive_and_idle_http2_connections_are_closed() {
    let origin = Origin::start("a");
    let p = start_config(&config(
        &origin.addr.to_string(),
        r#"listen = ["127.0.0.1:0"]"#,
        &format!("idle_timeout = \"{}s\"", IDLE_TIMEOUT.as_secs()),
    ));
    let limit = IDLE_TIMEOUT + MARGIN;

    // HTTP/1.1: one request answered, then nothing.
    let mut s = connect(&p.addr());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        closed_within(&mut r, limit).is_some(),
        "an idle HTTP/1.1 keep-alive connection was still open after {limit:?}"
    );

    // HTTP/2 (prior knowledge): one stream answered, then nothing.
    let mut s = connect(&p.addr());
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(4, 0, 0, &[])); // SETTINGS
    hello.extend(h2_frame(1, 0x4 | 0x1, 1, &get_block())); // HEADERS, END_HEADERS|END_STREAM
    s.write_all(&hello).unwrap();
    // The answer's HEADERS on stream 1, then the connection closes once it is idle.
    let start = Instant::now();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    while start.elapsed() < limit + Duration::from_secs(2) {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let kinds = h2_frame_kinds(&data);
    assert!(
        kinds.iter().any(|&(kind, stream)| kind == 1 && stream == 1),
        "no response HEADERS: {kinds:?}"
    );
    assert!(
        closed,
        "an idle HTTP/2 connection was still open after {limit:?}"
    );
    assert!(
        kinds.iter().any(|&(kind, _)| kind == 7),
        "closed without a GOAWAY: {kinds:?}"
    );
}

#[test]
fn tls_connections_that_never_complete_a_request_head_are_closed() {
    let (node, port, dir, _origin) = start_tls_node();
    let limit = HEAD_TIMEOUT + MARGIN;
    let addr = format!("127.0.0.1:{port}");

    // A ClientHello record that announces 512 bytes and sends 6.
    let mut s = connect(&addr);
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    assert!(
        closed_within(&mut s, limit).is_some(),
        "a partial ClientHello kept the connection open past {limit:?}"
    );

    // A complete handshake (h2 and http/1.1 alike), then nothing.
    let rt = runtime();
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let ca = dir.join("ca.crt");
        let closed = rt.block_on(async {
            let mut tls = tls_connect(port, &ca, alpn).await;
            let start = Instant::now();
            let mut buf = [0u8; 1024];
            loop {
                let read =
                    tokio::time::timeout(limit, tokio::io::AsyncReadExt::read(&mut tls, &mut buf));
                match read.await {
                    Err(_) => return None,
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                    // An HTTP/2 server's SETTINGS, say.
                    Ok(Ok(_)) => {}
                }
            }
        });
        assert!(
            closed.is_some(),
            "a TLS connection ({}) that sent no request was still open after {limit:?}",
            String::from_utf8_lossy(alpn)
        );
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_connections_speak_the_protocol_alpn_negotiated() {
    let (node, port, dir, _origin) = start_tls_node();
    let ca = dir.join("ca.crt");
    let rt = runtime();
    /// Everything the node sends after `bytes` until it closes (or 10 s).
    async fn answer(
        mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        bytes: &[u8],
    ) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(bytes).await.unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        data
    }
    // h2 negotiated, an HTTP/1.1 request sent: a connection error in HTTP/2 terms.
    let data = rt.block_on(async {
        let tls = tls_connect(port, &ca, b"h2").await;
        answer(tls, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await
    });
    assert!(
        !data.starts_with(b"HTTP/"),
        "h2 was negotiated, and the node answered in HTTP/1: {}",
        String::from_utf8_lossy(&data)
    );
    let kinds = h2_frame_kinds(&data);
    assert!(
        kinds.iter().any(|&(kind, _)| kind == 7),
        "no GOAWAY in the answer: {kinds:?} ({} bytes)",
        data.len()
    );

    // http/1.1 negotiated, the HTTP/2 preface sent: never served as HTTP/2.
    let data = rt.block_on(async {
        let tls = tls_connect(port, &ca, b"http/1.1").await;
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(h2_frame(4, 0, 0, &[]));
        hello.extend(h2_frame(1, 0x4 | 0x1, 1, &get_block()));
        answer(tls, &hello).await
    });
    assert!(
        data.is_empty() || data.starts_with(b"HTTP/1.1 "),
        "http/1.1 was negotiated, and the node answered otherwise: {:?}",
        h2_frame_kinds(&data)
    );

    // Each still works for what it negotiated.
    let data = rt.block_on(async {
        let tls = tls_connect(port, &ca, b"http/1.1").await;
        answer(
            tls,
            b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    assert!(
        data.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&data)
    );
    let data = rt.block_on(async {
        let tls = tls_connect(port, &ca, b"h2").await;
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(h2_frame(4, 0, 0, &[]));
        hello.extend(h2_frame(1, 0x4 | 0x1, 1, &get_block()));
        // GOAWAY from the client ends the connection once the stream is answered.
        hello.extend(h2_frame(7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
        answer(tls, &hello).await
    });
    let kinds = h2_frame_kinds(&data);
    assert!(
        kinds.iter().any(|&(kind, stream)| kind == 1 && stream == 1),
        "no HTTP/2 response on stream 1: {kinds:?}"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stalled_request_body_times_out() {
    let origin = Origin::start("a");
    let p = start_config(&config(
        &origin.addr.to_string(),
        r#"listen = ["127.0.0.1:0"]"#,
        "body_read_timeout = \"1s\"",
    ));
    let limit = Duration::from_secs(1) + MARGIN;
    let hits = origin.hits();
    // Nothing of the body: 408, and no origin ever sees the request.
    let mut s = connect(&p.addr());
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    let head = read_head(&mut BufReader::new(s.try_clone().unwrap()));
    assert!(head.starts_with("http/1.1 408"), "{head:?}");
    assert_eq!(origin.hits(), hits);

    // 10 of 1000 bytes, then nothing: the exchange ends within the timeout (408 while the
    // origin has not answered), instead of holding the connection and the origin's.
    let mut s = connect(&p.addr());
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n0123456789")
        .unwrap();
    let head = read_head(&mut BufReader::new(s.try_clone().unwrap()));
    assert!(head.starts_with("http/1.1 408"), "{head:?}");

    // Bodies that keep coming are not cut.
    let r = curl(&p, "app.test", "/up", &["--data-binary", "hello"]);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn connections_past_max_connections_are_shed_until_one_closes() {
    let origin = Origin::start("a");
    // Held keep-alive connections must outlive the test's waits.
    let cfg = config_with_head_timeout(
        &origin.addr.to_string(),
        r#"listen = ["127.0.0.1:0"]"#,
        "30s",
        "max_connections = 2",
    ) + &edge_tests::proxy::admin_section();
    let p = start_config(&cfg);
    let open = |p: &edge_tests::proxy::Proxy| {
        let mut s = connect(&p.addr());
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let head = read_head(&mut r);
        (s, r, head)
    };
    let (a, _ra, head) = open(&p);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let (_b, _rb, head) = open(&p);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // Two are open: the third is closed at once, unanswered.
    let mut c = connect(&p.addr());
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let mut got = Vec::new();
    let closed = {
        let start = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            if start.elapsed() > MARGIN {
                break false;
            }
            match c.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break true,
            }
        }
    };
    assert!(
        closed && got.is_empty(),
        "a third connection was served past max_connections = 2: {}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(p.metric("edge_connections_shed_total"), Some(1.0));
    // One closes: new connections are served again.
    a.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(
        edge_tests::proxy::eventually(Duration::from_secs(5), || {
            curl(&p, "app.test", "/", &[]).status == 200
        }),
        "no connection served after one of the two closed"
    );
}

// --- helpers: HTTP/2 frames by hand, a TLS node and a rustls client ---

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// (type, stream) of every complete frame in `data`.
fn h2_frame_kinds(data: &[u8]) -> Vec<(u8, u32)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at + 9 <= data.len() {
        let len = (usize::from(data[at]) << 16)
            | (usize::from(data[at + 1]) << 8)
            | usize::from(data[at + 2]);
        let stream = u32::from_be_bytes([data[at + 5], data[at + 6], data[at + 7], data[at + 8]])
            & 0x7fff_ffff;
        out.push((data[at + 3], stream));
        at += 9 + len;
    }
    out
}

/// HPACK for GET http://app.test/ : indexed :method GET, :scheme http, :path /, and
/// :authority as a literal without indexing.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 8];
    b.extend_from_slice(b"app.test");
    b
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A node with one TLS listener for app.test (a CA-signed leaf in the returned dir);
/// the node, its port, the dir (ca.crt inside) and the origin.
fn start_tls_node() -> (Node, u16, std::path::PathBuf, Origin) {
    let dir = std::env::temp_dir().join(unique("edge-transport-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["app.test"]);
    let origin = Origin::start("a");
    let cfg = format!(
        "{}\n[[certificate]]\nhosts = [\"app.test\"]\ncert = \"{d}/leaf.crt\"\nkey = \"{d}/leaf.key\"\n",
        config(
            &origin.addr.to_string(),
            "listen = []\ntls_listen = [\"127.0.0.1:0\"]",
            ""
        ),
        d = dir.display()
    );
    let node = Node::start(&cfg, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let port = node
        .logged_addr("https listening")
        .expect("https address")
        .port();
    (node, port, dir, origin)
}

/// A TLS connection to app.test on `port`, offering only `alpn`, trusting `ca`.
async fn tls_connect(
    port: u16,
    ca: &Path,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect("app.test".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn),
        "the node did not take the offered protocol"
    );
    tls
}
