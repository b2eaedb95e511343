//! Automatic certificates over ACME, against a real Pebble (the ACME test CA) and its
//! DNS (pebble-challtestsrv, every name answered with 127.0.0.1, nothing else). Pebble
//! validates on the node's own listeners: its `httpPort` / `tlsPort` are the node's
//! plain and TLS ports. A rustls client trusting only Pebble's root (from its
//! management API) checks what the node serves.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::Arc,
    time::{Duration, Instant},
};

use edge_tests::{
    free_port,
    node::Node,
    origin::Origin,
    proxy::{ADMIN_TOKEN, admin_section},
    tls_origin::make_ca_and_leaf,
    unique,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

fn udp_free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Pebble and its DNS, killed on drop.
struct Pebble {
    dir: PathBuf,
    procs: Vec<Child>,
    pub port: u16,
    mgmt: u16,
}

impl Pebble {
    /// A CA that validates HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, issuing certificates valid for `validity` seconds.
    fn start(http_port: u16, tls_port: u16, validity: u64) -> Self {
        if Command::new("pebble").arg("-h").output().is_err() {
            panic!(
                "pebble is not installed (Debian package `pebble`; cargo xtask test installs it)"
            );
        }
        let dir = std::env::temp_dir().join(unique("edge-pebble-"));
        std::fs::create_dir_all(&dir).unwrap();
        make_ca_and_leaf(&dir, &["localhost"]);
        let (port, mgmt, dns_mgmt, dns) = (free_port(), free_port(), free_port(), udp_free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.join("leaf.crt"),
                "privateKey": dir.join("leaf.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity,
            }
        });
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let mut procs = Vec::new();
        let dns_log = log("dns.log");
        procs.push(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .stdout(dns_log.try_clone().unwrap())
                .stderr(dns_log)
                .spawn()
                .expect("pebble-challtestsrv"),
        );
        let pebble_log = log("pebble.log");
        procs.push(
            Command::new("pebble")
                .arg("-config")
                .arg(dir.join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(pebble_log.try_clone().unwrap())
                .stderr(pebble_log)
                .spawn()
                .expect("pebble"),
        );
        let p = Self {
            dir,
            procs,
            port,
            mgmt,
        };
        assert!(
            wait_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(20))
                && wait_tcp(([127, 0, 0, 1], mgmt).into(), Duration::from_secs(20))
                && wait_tcp(([127, 0, 0, 1], dns_mgmt).into(), Duration::from_secs(20)),
            "pebble did not start:\n{}",
            p.log()
        );
        p
    }

    fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.port)
    }

    /// The root that Pebble's HTTPS (directory and management) is served under.
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// The root Pebble issues under (management API `/roots/0`).
    fn issuing_root(&self) -> CertificateDer<'static> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "--cacert"])
            .arg(self.ca())
            .arg(format!("https://localhost:{}/roots/0", self.mgmt))
            .output()
            .expect("curl");
        CertificateDer::from_pem_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no root from pebble ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn stop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        self.procs.clear();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS connection to the node at 127.0.0.1:`port` for `name`, trusting only `root`.
type Conn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(port: u16, name: &str, root: &CertificateDer<'static>) -> Result<Conn, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(s)
}

/// The leaf certificate the connection was made with.
fn leaf(c: &Conn) -> Vec<u8> {
    c.conn.peer_certificates().unwrap()[0].to_vec()
}

/// `GET /` for `name` on an open connection (closed after): the status line.
fn get(mut c: Conn, name: &str) -> String {
    write!(
        c,
        "GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Waits (bounded) until a handshake for `name` succeeds under `root`.
fn wait_cert(node: &Node, port: u16, name: &str, root: &CertificateDer<'static>) -> Conn {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(60) {
        match connect(port, name, root) {
            Ok(c) => return c,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no certificate for {name}: {last}\n{}", node.log());
}

/// The node's configuration: plain and TLS listeners on the given ports, the data
/// directory, `[acme]` for `pebble` (plus `acme`), then `extra` (certificates), and a
/// route for `hosts`.
fn config(
    http: u16,
    https: u16,
    data: &Path,
    pebble: &Pebble,
    origin: &Origin,
    (acme, extra, hosts): (&str, &str, &[&str]),
) -> String {
    format!(
        r#"[xdp]
mode = "off"
[http]
listen = ["127.0.0.1:{http}"]
tls_listen = ["127.0.0.1:{https}"]
header_read_timeout = "120s"
[storage]
dir = "{data}"
[acme]
directory = "{dir}"
directory_ca = "{ca}"
contact = "mailto:ops@example.com"
{acme}
{extra}
[[upstream]]
name = "app"
servers = ["{o}"]
[[route]]
hosts = {hosts:?}
upstream = "app"
"#,
        data = data.display(),
        dir = pebble.directory(),
        ca = pebble.ca().display(),
        o = origin.addr,
    )
}

fn data_dir() -> PathBuf {
    let d = std::env::temp_dir().join(unique("edge-acme-data-"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn http01_issuance_and_restart_reuses_the_stored_certificate() {
    let (http, https) = (free_port(), free_port());
    let mut pebble = Pebble::start(http, https, 3600);
    let origin = Origin::start("a");
    let data = data_dir();
    let cfg = config(
        http,
        https,
        &data,
        &pebble,
        &origin,
        (
            "",
            "[[certificate]]\nhosts = [\"web.test\"]\nacme = { challenge = \"http-01\" }\n",
            &["web.test"],
        ),
    );
    let mut node = Node::start(&cfg, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let root = pebble.issuing_root();
    let c = wait_cert(&node, https, "web.test", &root);
    let first = leaf(&c);
    assert!(get(c, "web.test").contains("200"), "{}", node.log());
    assert!(
        node.log().contains("ACME certificate obtained"),
        "{}",
        node.log()
    );
    // The account and key are private to the node.
    let key = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.ends_with("acme"))
        .expect("acme state in the data directory");
    let mut keys = Vec::new();
    let mut stack = vec![key];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.ends_with("key.pem") || p.ends_with("account.json") {
                keys.push(p);
            }
        }
    }
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in &keys {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(k).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            k.display()
        );
    }

    // Restart with the CA gone: the stored certificate is served at once.
    pebble.stop();
    node.restart();
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let c = connect(https, "web.test", &root).unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert_eq!(leaf(&c), first, "the stored certificate");
    assert!(get(c, "web.test").contains("200"));
    let second_run = node
        .log()
        .rsplit("edge-node running")
        .next()
        .unwrap()
        .to_string();
    assert!(!second_run.contains("ACME order failed"), "{second_run}");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn tls_alpn01_issuance() {
    // Pebble's HTTP-01 port is one nobody listens on: only TLS-ALPN-01 can succeed.
    let (http, https, closed) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(closed, https, 3600);
    let origin = Origin::start("a");
    let data = data_dir();
    let cfg = config(
        http,
        https,
        &data,
        &pebble,
        &origin,
        // No [[certificate]]: [acme] obtains one for each route host.
        (
            "challenge = \"tls-alpn-01\"",
            "",
            &["alpn.test", "www.alpn.test"],
        ),
    );
    let node = Node::start(&cfg, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let root = pebble.issuing_root();
    let c = wait_cert(&node, https, "alpn.test", &root);
    assert!(get(c, "alpn.test").contains("200"), "{}", node.log());
    // The other route host has its own.
    let c = wait_cert(&node, https, "www.alpn.test", &root);
    assert!(get(c, "www.alpn.test").contains("200"));
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn failed_validation_is_retried_and_other_names_are_served() {
    // Pebble's TLS-ALPN-01 port is one nobody listens on.
    let (http, https, closed) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(http, closed, 3600);
    let origin = Origin::start("a");
    let data = data_dir();
    let cfg = config(
        http,
        https,
        &data,
        &pebble,
        &origin,
        (
            "",
            "[[certificate]]\nhosts = [\"good.test\"]\nacme = {}\n\
             [[certificate]]\nhosts = [\"bad.test\"]\nacme = { challenge = \"tls-alpn-01\" }\n",
            &["good.test", "bad.test"],
        ),
    );
    let cfg = cfg + &admin_section();
    let node = Node::start(&cfg, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let root = pebble.issuing_root();
    let c = wait_cert(&node, https, "good.test", &root);
    assert!(get(c, "good.test").contains("200"));
    // Two failures: the order was retried, with the CA's reason in the log.
    assert!(
        node.wait_for_log("failures=2", Duration::from_secs(60)),
        "{}",
        node.log()
    );
    let log = node.log();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ACME order failed"))
        .collect();
    assert!(
        failed
            .iter()
            .all(|l| l.contains("WARN") && l.contains("bad.test")),
        "{log}"
    );
    assert!(
        failed[0].contains("bad.test: API error")
            && failed[0].contains("Failed to connect")
            && failed[0].contains("tls-alpn-01"),
        "{log}"
    );
    // No certificate for it: the handshake is refused, not answered with another
    // name's certificate.
    let Err(e) = connect(https, "bad.test", &root) else {
        panic!("a certificate for bad.test:\n{}", node.log());
    };
    assert!(e.contains("handshake"), "{e}");
    // The node keeps serving.
    let c = connect(https, "good.test", &root).unwrap();
    assert!(get(c, "good.test").contains("200"));
    // Orders and expiry are in the metrics.
    let admin = node.logged_addr("admin listening").expect("admin address");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
        .arg(format!("http://{admin}/metrics"))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&out.stdout);
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
    };
    assert_eq!(value("edge_acme_orders_total{result=\"ok\"}"), 1.0);
    assert!(value("edge_acme_orders_total{result=\"failed\"}") >= 2.0);
    let expiry = value("edge_acme_certificate_expiry_timestamp_seconds{name=\"good.test\"}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now && expiry <= now + 3600.0 + 60.0,
        "{expiry} vs {now}"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn renewal_swaps_in_a_new_certificate_and_open_connections_keep_theirs() {
    let (http, https) = (free_port(), free_port());
    // Certificates valid for 30 s, renewed when less than 20 s are left.
    let pebble = Pebble::start(http, https, 30);
    let origin = Origin::start("a");
    let data = data_dir();
    let cfg = config(
        http,
        https,
        &data,
        &pebble,
        &origin,
        (
            "",
            "[[certificate]]\nhosts = [\"renew.test\"]\nacme = { renew_before = \"20s\" }\n",
            &["renew.test"],
        ),
    );
    let node = Node::start(&cfg, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let root = pebble.issuing_root();
    let old = wait_cert(&node, https, "renew.test", &root);
    let first = leaf(&old);
    // New handshakes get a new certificate.
    let start = Instant::now();
    let renewed = loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not renewed:\n{}",
            node.log()
        );
        if let Ok(c) = connect(https, "renew.test", &root)
            && leaf(&c) != first
        {
            break c;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(node.log().contains("due for renewal"), "{}", node.log());
    assert!(get(renewed, "renew.test").contains("200"));
    // The connection made before the renewal still works, on its certificate.
    assert_eq!(leaf(&old), first);
    assert!(get(old, "renew.test").contains("200"), "{}", node.log());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn http01_answers_only_known_tokens_and_nonsense_config_is_refused() {
    let (http, https) = (free_port(), free_port());
    // A CA that never answers: the node still starts and answers the challenge path.
    let origin = Origin::start("a");
    let data = data_dir();
    let dead = free_port();
    let cfg = format!(
        r#"[xdp]
mode = "off"
[http]
listen = ["127.0.0.1:{http}"]
tls_listen = ["127.0.0.1:{https}"]
[storage]
dir = "{data}"
[[certificate]]
hosts = ["web.test"]
acme = {{ directory = "https://127.0.0.1:{dead}/dir" }}
[[upstream]]
name = "app"
servers = ["{o}"]
[[route]]
hosts = ["web.test", "other.test"]
upstream = "app"
"#,
        data = data.display(),
        o = origin.addr
    );
    let node = Node::start(&cfg, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let challenge = |host: &str| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--max-time", "10"])
            .args(["-H", &format!("Host: {host}")])
            .arg(format!(
                "http://127.0.0.1:{http}/.well-known/acme-challenge/unknown-token"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let kept = challenge("web.test");
    assert!(
        kept.ends_with("\n404") && kept.contains("no such ACME challenge"),
        "{kept}"
    );
    // A host not kept over ACME (its origin may run its own ACME client): the path
    // goes to the origin like any other.
    let other = challenge("other.test");
    assert!(
        other.ends_with("\n200") && other.contains("origin=a"),
        "{other}"
    );
    // Other paths still go to the origin.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(["-H", "Host: web.test"])
        .arg(format!("http://127.0.0.1:{http}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert!(
        node.wait_for_log("ACME order failed", Duration::from_secs(30)),
        "{}",
        node.log()
    );

    // `edge-node check` refuses nonsense, naming the key.
    for (acme, expect) in [
        ("{ directory = \"http://ca.example/dir\" }", "https://"),
        (
            "{ directory = \"https://ca.example/dir\", contact = \"ops\" }",
            "mailto:",
        ),
        (
            "{ directory = \"https://ca.example/dir\", challenge = \"dns-01\" }",
            "dns-01",
        ),
        ("{}", "no directory"),
    ] {
        let bad = cfg.replace(
            &format!("acme = {{ directory = \"https://127.0.0.1:{dead}/dir\" }}"),
            &format!("acme = {acme}"),
        );
        std::fs::write(node.config_path(), &bad).unwrap();
        let out = node.cli(&["check"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{acme}: accepted");
        assert!(err.contains(expect), "{acme}: {err}");
    }
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn reload_adds_a_certificate_and_keeps_the_ones_in_force() {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, 3600);
    let origin = Origin::start("a");
    let data = data_dir();
    let one = config(
        http,
        https,
        &data,
        &pebble,
        &origin,
        (
            "",
            "[[certificate]]\nhosts = [\"one.test\"]\nacme = {}\n",
            &["one.test", "two.test"],
        ),
    );
    let node = Node::start(&one, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let root = pebble.issuing_root();
    let first = leaf(&wait_cert(&node, https, "one.test", &root));
    // two.test is a route host no [[certificate]] serves: [acme] gets it one of its own.
    // The reload gives it a [[certificate]] shared with a new name instead.
    let second = leaf(&wait_cert(&node, https, "two.test", &root));
    let two = one
        .replace(
            "[[certificate]]\nhosts = [\"one.test\"]\nacme = {}\n",
            "[[certificate]]\nhosts = [\"one.test\"]\nacme = {}\n\
         [[certificate]]\nhosts = [\"two.test\", \"three.test\"]\nacme = {}\n",
        )
        .replace(
            "hosts = [\"one.test\", \"two.test\"]",
            "hosts = [\"one.test\", \"two.test\", \"three.test\"]",
        );
    std::fs::write(node.config_path(), two).unwrap();
    node.signal(libc::SIGHUP);
    assert!(
        node.wait_for_log("configuration reloaded", Duration::from_secs(20)),
        "{}",
        node.log()
    );
    // The new certificate (two names) is ordered and served for both.
    let c = wait_cert(&node, https, "three.test", &root);
    let three = leaf(&c);
    assert!(get(c, "three.test").contains("200"));
    let c = connect(https, "two.test", &root).unwrap();
    assert_eq!(leaf(&c), three, "two.test moved to the new certificate");
    assert_ne!(three, second);
    // one.test's certificate did not change: not ordered again.
    let c = connect(https, "one.test", &root).unwrap();
    assert_eq!(leaf(&c), first);
    // A name the configuration no longer has is not served its old certificate.
    let less = std::fs::read_to_string(node.config_path())
        .unwrap()
        .replace("[[certificate]]\nhosts = [\"one.test\"]\nacme = {}\n", "")
        .replace("\"one.test\", ", "");
    std::fs::write(node.config_path(), less).unwrap();
    node.signal(libc::SIGHUP);
    let start = Instant::now();
    while connect(https, "one.test", &root).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "one.test still served:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let obtained = node.log().matches("ACME certificate obtained").count();
    assert_eq!(obtained, 3, "{}", node.log());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_fleet_shares_one_certificate_per_name_through_redis() {
    let Some(redis) = edge_tests::redis::Redis::start("acme fleet") else {
        return;
    };
    // Pebble validates on node A's ports only.
    let (a_http, a_https, b_http, b_https) = (free_port(), free_port(), free_port(), free_port());
    let pebble = Pebble::start(a_http, a_https, 3600);
    let origin = Origin::start("a");
    let (a_data, b_data) = (data_dir(), data_dir());
    let fleet = format!("redis = \"{}\"", redis.url());
    let cert = (
        fleet.as_str(),
        "[[certificate]]\nhosts = [\"fleet.test\"]\nacme = {}\n",
        &["fleet.test"][..],
    );
    // B orders first, while A is not up: the validation fails (the CA reaches A's
    // port), B keeps the fleet's lock over its backoff and retries.
    let b = Node::start(
        &config(b_http, b_https, &b_data, &pebble, &origin, cert),
        None,
    );
    assert!(
        b.wait_for_log("ACME order failed", Duration::from_secs(30)),
        "{}",
        b.log()
    );
    // A comes up meanwhile: it finds B's lock and waits; B's retry is validated on A,
    // which answers with the token B put in Redis.
    let a = Node::start(
        &config(a_http, a_https, &a_data, &pebble, &origin, cert),
        None,
    );
    assert!(a.wait_running(Duration::from_secs(20)), "{}", a.log());
    let root = pebble.issuing_root();
    let on_b = leaf(&wait_cert(&b, b_https, "fleet.test", &root));
    let c = wait_cert(&a, a_https, "fleet.test", &root);
    assert_eq!(leaf(&c), on_b, "one certificate for the fleet");
    assert!(get(c, "fleet.test").contains("200"));
    assert_eq!(
        b.log().matches("ACME certificate obtained").count(),
        1,
        "{}",
        b.log()
    );
    assert!(
        !a.log().contains("ACME certificate obtained"),
        "{}",
        a.log()
    );
    assert!(a.log().contains("taken from the fleet"), "{}", a.log());
    let _ = std::fs::remove_dir_all(&a_data);
    let _ = std::fs::remove_dir_all(&b_data);
}
