//! Running as a systemd service: the unit in deploy/ passes `systemd-analyze verify`, and
//! the node speaks the notify protocol (READY, RELOADING/READY around a reload, STOPPING)
//! on the socket systemd would give it.

use std::{os::unix::net::UnixDatagram, process::Command, time::Duration};

use edge_tests::{edge_node_bin, netns::Netns, node::Node, privileged, unique};

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/edge-node.service"
    ))
    .expect("deploy/edge-node.service");
    assert!(
        unit.contains("Type=notify") && unit.contains("ExecReload="),
        "{unit}"
    );
    // verify checks that the binaries exist: point it at the one cargo built.
    let dir = std::env::temp_dir().join(unique("edge-unit-"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edge-node.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/edge-node",
            edge_node_bin().to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn notifies_ready_reloading_and_stopping() {
    let dir = std::env::temp_dir().join(unique("edge-notify-"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A port of its own, to connect to the moment READY arrives (the log, written by a
    // thread of its own, may say so a moment later).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!("[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:{port}\"]\n");
    let mut node = Node::start_with_env(
        &config,
        None,
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let next = |node: &Node| {
        let mut buf = [0u8; 512];
        match sock.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!(
                "no notification within 20 s ({e}); node log:\n{}",
                node.log()
            ),
        }
    };
    let ready = next(&node);
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "READY only after listening: {}",
        node.log()
    );
    node.signal(libc::SIGHUP);
    let reloading = next(&node);
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next(&node).contains("READY=1"));
    node.stop();
    assert!(next(&node).contains("STOPPING=1"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's quick start: `edge-node` with no configuration at all serves
/// http://localhost:8080/ from the built-in demo origin, and refuses other hosts. Run in
/// a namespace of its own, so the fixed port and the bpffs are the test's.
#[test]
fn the_embedded_default_serves_the_demo_page_with_zero_setup() {
    if !privileged("the_embedded_default_serves_the_demo_page_with_zero_setup") {
        return;
    }
    let ns = Netns::new("edge-emb");
    let mut node = Node::start_embedded(&ns);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let curl = |args: &[&str]| {
        let out = ns
            .command("curl")
            .args(["-s", "-i", "--max-time", "5"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let page = curl(&["http://localhost:8080/"]);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}\n{}", node.log());
    assert!(
        page.to_ascii_lowercase().contains("x-node-id: edge-1"),
        "{page}"
    );
    assert!(
        page.contains("<html") || page.contains("<!doctype"),
        "{page}"
    );
    let h2 = curl(&["--http2-prior-knowledge", "http://127.0.0.1:8080/"]);
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    let other = curl(&["-H", "Host: elsewhere.test", "http://127.0.0.1:8080/"]);
    assert!(other.starts_with("HTTP/1.1 421"), "{other}");
    // No admin token in the default: no admin API.
    assert!(node.log().contains("admin API off"), "{}", node.log());
    // No interfaces in the default: XDP unused by design, said calmly, not as an error
    // a newcomer reads as a failed start.
    let log = node.log();
    assert!(log.contains("INFO edge_node::xdp: XDP not in use"), "{log}");
    assert!(
        !log.contains("ERROR") && !log.contains("XDP NOT ACTIVE"),
        "{log}"
    );
    node.stop();
}
