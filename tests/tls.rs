//! TLS listeners: certificates chosen by SNI (exact and wildcard), ALPN h2 and http/1.1,
//! and renewed certificate files picked up without a restart. Certificates are made by
//! `openssl` for the test; curl checks them against exactly those certificates.

use std::{path::Path, process::Command, time::Duration};

use edge_tests::{node::Node, origin::Origin, tls_origin::make_ca_and_leaf, unique};

/// A self-signed certificate for `names` (the first is the CN), as cert.pem + key.pem.
fn make_cert(dir: &Path, stem: &str, names: &[&str]) {
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{stem}.key")))
        .arg("-out")
        .arg(dir.join(format!("{stem}.crt")))
        .args([
            "-subj",
            &format!("/CN={}", names[0]),
            "-addext",
            &format!("subjectAltName={san}"),
        ])
        .output()
        .expect("openssl");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// curl over TLS to `host` (resolved to the node), trusting only `ca`; (status, version, body).
fn get(port: u16, host: &str, ca: &Path, extra: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
            "--cacert",
        ])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut t = tail.split_whitespace();
    (
        t.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        t.next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// A node with `config` (TLS listener on an ephemeral port), running; and that port.
fn start_tls_node(config: &str) -> (Node, u16) {
    let node = Node::start(config, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let port = node
        .logged_addr("https listening")
        .expect("https address")
        .port();
    (node, port)
}

#[test]
fn sni_alpn_and_certificate_renewal() {
    let dir = std::env::temp_dir().join(unique("edge-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_cert(&dir, "app", &["app.test"]);
    make_cert(&dir, "wild", &["*.wild.test"]);
    let origin = Origin::start("a");
    let config = format!(
        r#"[xdp]
mode = "off"
[http]
listen = []
tls_listen = ["127.0.0.1:0"]
[[certificate]]
hosts = ["app.test"]
cert = "{d}/app.crt"
key = "{d}/app.key"
[[certificate]]
hosts = ["*.wild.test"]
cert = "{d}/wild.crt"
key = "{d}/wild.key"
[[upstream]]
name = "app"
servers = ["{o}"]
[[route]]
hosts = ["app.test", "*.wild.test"]
upstream = "app"
"#,
        d = dir.display(),
        o = origin.addr
    );
    let (node, port) = start_tls_node(&config);
    let (app_ca, wild_ca) = (dir.join("app.crt"), dir.join("wild.crt"));

    // ALPN: h2 by default, HTTP/1.1 when asked; the origin learns the scheme.
    let (status, version, body) = get(port, "app.test", &app_ca, &[]);
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    let (status, version, _) = get(port, "app.test", &app_ca, &["--http1.1"]);
    assert_eq!((status, version.as_str()), (200, "1.1"));
    // SNI picks the wildcard certificate for its names, and only for them.
    assert_eq!(get(port, "x.wild.test", &wild_ca, &[]).0, 200);
    assert_eq!(
        get(port, "x.wild.test", &app_ca, &[]).0,
        0,
        "app.test's certificate must not be served"
    );
    assert_eq!(get(port, "app.test", &wild_ca, &[]).0, 0);

    // Renewal: new files on disk are served without a restart or reload.
    let old_ca = dir.join("app-old.crt");
    std::fs::copy(&app_ca, &old_ca).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a distinct modification time
    make_cert(&dir, "app", &["app.test"]);
    assert!(
        node.wait_for_log("certificates reloaded", Duration::from_secs(15)),
        "{}",
        node.log()
    );
    assert_eq!(
        get(port, "app.test", &app_ca, &[]).0,
        200,
        "the renewed certificate"
    );
    assert_eq!(
        get(port, "app.test", &old_ca, &[]).0,
        0,
        "the old certificate is gone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_a_config_error() {
    let dir = std::env::temp_dir().join(unique("edge-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_cert(&dir, "a", &["a.test"]);
    make_cert(&dir, "b", &["b.test"]);
    let cfg = dir.join("edge-node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\ntls_listen = [\"127.0.0.1:0\"]\n[[certificate]]\nhosts = [\"a.test\"]\ncert = \"{d}/a.crt\"\nkey = \"{d}/b.key\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(edge_tests::edge_node_bin())
        .arg("-c")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("b.key") && err.contains("a.crt"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One request on an open TLS connection; the status and the body (Content-Length framed).
async fn exchange<S>(tls: &mut S, path: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
        .await
        .expect("send on the open connection");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{head}"));
            if buf.len() >= end + 4 + len {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return (
                    status,
                    String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into(),
                );
            }
        }
        let n = tls
            .read(&mut chunk)
            .await
            .expect("read on the open connection");
        assert!(n > 0, "the node closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_reload_with_new_certificates_keeps_open_connections() {
    // A CA and a leaf it signed (a client verifying with webpki wants a real chain);
    // the renewal comes from another CA.
    let dir = std::env::temp_dir().join(unique("edge-tls-reload-"));
    let (first, second) = (dir.join("first"), dir.join("second"));
    for d in [&first, &second] {
        std::fs::create_dir_all(d).unwrap();
        make_ca_and_leaf(d, &["app.test"]);
    }
    std::fs::copy(first.join("leaf.crt"), dir.join("app.crt")).unwrap();
    std::fs::copy(first.join("leaf.key"), dir.join("app.key")).unwrap();
    let origin = Origin::start("a");
    let config = format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = []\ntls_listen = [\"127.0.0.1:0\"]\n\
         [[certificate]]\nhosts = [\"app.test\"]\ncert = \"{d}/app.crt\"\nkey = \"{d}/app.key\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{o}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        d = dir.display(),
        o = origin.addr
    );
    let (node, port) = start_tls_node(&config);
    let (old_ca, new_ca) = (first.join("ca.crt"), second.join("ca.crt"));

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&old_ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
            .connect("app.test".try_into().unwrap(), tcp)
            .await
            .expect("handshake with the first certificate");
        let (status, body) = exchange(&mut tls, "/before").await;
        assert_eq!(status, 200, "{body}");

        // New certificate files and SIGHUP (what `systemctl reload` sends).
        std::thread::sleep(Duration::from_millis(1100)); // a distinct modification time
        std::fs::copy(second.join("leaf.crt"), dir.join("app.crt")).unwrap();
        std::fs::copy(second.join("leaf.key"), dir.join("app.key")).unwrap();
        node.signal(libc::SIGHUP);
        assert!(
            node.wait_for_log("reloaded", Duration::from_secs(15)),
            "{}",
            node.log()
        );
        // The connection opened under the old certificate carries on.
        let (status, body) = exchange(&mut tls, "/after").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("path=/after"), "{body}");
    });
    // New connections get the new certificate.
    assert_eq!(get(port, "app.test", &new_ca, &[]).0, 200);
    assert_eq!(get(port, "app.test", &old_ca, &[]).0, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
