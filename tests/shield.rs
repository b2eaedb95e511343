//! The shield never turned against the people it protects, against a real node and
//! origin on 127.0.0.1 (userspace enforcement, XDP off): what a trusted proxy's
//! connection does wrong is nobody's score, and `xdp.allow` is never refused.

use edge_tests::{
    origin::Origin,
    proxy::{curl, raw, start_config, status_of},
};

/// A node with defaults (threat scoring on, userspace enforcement) and one route to
/// `origin` for app.test.
fn one_route(origin: &Origin) -> edge_tests::proxy::Proxy {
    start_config(&format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        origin.addr
    ))
}

#[test]
fn a_trusted_proxys_bad_requests_never_score_it() {
    let origin = Origin::start("app");
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\nmax_headers = 20\n\
         trusted_proxies = [\"127.0.0.1/32\"]\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        origin.addr
    );
    let p = start_config(&cfg);
    // A CDN in front forwards what its clients send: hosts that are no host (the
    // pipeline's 400) and heads with too many fields (hyper's 431, a
    // connection-level parse error). 10 points each, challenge at 50, drop at 100.
    let many_headers: String = (0..40).map(|i| format!("X-F{i}: v\r\n")).collect();
    for _ in 0..15 {
        let r = raw(
            &p.addr(),
            b"GET / HTTP/1.1\r\nHost: app$test\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status_of(&r), 400, "{r}");
        let r = raw(
            &p.addr(),
            format!("GET / HTTP/1.1\r\nHost: app.test\r\n{many_headers}Connection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(status_of(&r), 431, "{r}");
    }
    // Its other clients (and the proxy itself) are still served, never challenged,
    // refused or dropped.
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!(r.status, 200, "{}", p.node.log());
    let r = curl(
        &p,
        "app.test",
        "/",
        &["-H", "X-Forwarded-For: 198.51.100.7"],
    );
    assert_eq!(r.status, 200, "{}", p.node.log());
    assert!(!p.node.log().contains("escalated"), "{}", p.node.log());
}

#[test]
fn an_allowed_source_is_never_refused_for_its_score() {
    let origin = Origin::start("app");
    let cfg = format!(
        "[xdp]\nmode = \"off\"\nallow = [\"127.0.0.0/8\"]\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        origin.addr
    );
    let p = start_config(&cfg);
    // Probes of blocked paths, 25 points each: far past the drop threshold.
    for _ in 0..8 {
        assert_eq!(curl(&p, "app.test", "/.env", &[]).status, 404);
    }
    let r = curl(&p, "app.test", "/", &[]);
    assert_eq!(r.status, 200, "{}", p.node.log());
}

#[test]
fn what_another_site_makes_a_browser_request_never_gets_its_user_dropped() {
    let origin = Origin::start("app");
    let p = one_route(&origin);
    // A page on another site embeds `<img src=https://app.test/.env>` eight times:
    // the browser asks with its Fetch Metadata. 25 points each; drop at 100.
    let image = [
        "-H",
        "Sec-Fetch-Site: cross-site",
        "-H",
        "Sec-Fetch-Mode: no-cors",
        "-H",
        "Sec-Fetch-Dest: image",
    ];
    for _ in 0..8 {
        assert_eq!(curl(&p, "app.test", "/.env", &image).status, 404);
    }
    // The probes are refused, and their user is at most challenged (which a browser
    // passes), never refused or dropped.
    let r = curl(&p, "app.test", "/", &["-H", "Sec-Fetch-Site: none"]);
    assert!(
        r.status == 200 || r.body.contains("Checking your browser"),
        "{} {}\n{}",
        r.status,
        r.body,
        p.node.log()
    );
    assert!(!p.node.log().contains("escalated"), "{}", p.node.log());
    // A probe the client makes itself counts in full.
    assert_eq!(curl(&p, "app.test", "/.env", &[]).status, 404);
    assert!(
        edge_tests::proxy::eventually(std::time::Duration::from_secs(5), || p
            .node
            .log()
            .contains("escalated")),
        "{}",
        p.node.log()
    );
}

#[test]
fn the_clearance_cookie_never_reaches_the_origin() {
    let origin = Origin::start("app");
    let p = one_route(&origin);
    // A client in good standing (a clearance earned earlier, its score since decayed)
    // still sends the cookie: it is the node's, the origin never sees it.
    let r = curl(
        &p,
        "app.test",
        "/",
        &[
            "-H",
            "Cookie: theme=dark; edge_clearance=v1.99999999999.c2ln; lang=de",
        ],
    );
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("edge_clearance"), "{}", r.body);
    assert!(
        r.body.contains("cookie: theme=dark; lang=de\n"),
        "{}",
        r.body
    );
}

#[test]
fn a_client_that_never_reads_cannot_hold_origin_connections() {
    use std::time::Duration;
    let origin = Origin::start("app");
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\nsend_timeout = \"1s\"\n\
         [threat]\nenabled = false\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        origin.addr
    );
    let p = start_config(&cfg);
    // HTTP/2 with a stream window of zero: the node may send nothing, four 4 MB
    // answers pile up behind it (nghttp's own timeout bounds the test).
    let mut client = std::process::Command::new("nghttp")
        .args([
            "-n",
            "-w",
            "0",
            "-m",
            "4",
            "-t",
            "20",
            "-H",
            ":authority: app.test",
        ])
        .arg(format!("{}/big?size=4000000", p.base))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nghttp (nghttp2-client)");
    assert!(
        edge_tests::proxy::eventually(Duration::from_secs(10), || origin.hits() >= 4),
        "{}",
        p.node.log()
    );
    // Past the send timeout the node lets the origin go, although the client is
    // still there.
    let released = edge_tests::proxy::eventually(Duration::from_secs(10), || origin.open() == 0);
    let still_there = client.try_wait().unwrap().is_none();
    let _ = client.kill();
    let _ = client.wait();
    assert!(still_there, "the client left by itself");
    assert!(released, "{} origin connections still held", origin.open());
    assert_eq!(curl(&p, "app.test", "/", &[]).status, 200);
    // A client that reads while the origin is quiet for longer than the send timeout
    // (a long poll, an event stream) gets the whole answer.
    let r = curl(&p, "app.test", "/quiet?size=400000&body_delay=2500", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.len() >= 400_000, "cut at {} bytes", r.body.len());
}

#[test]
fn a_stuck_log_reader_costs_log_lines_not_requests() {
    use std::{io::Read, process::Stdio, time::Duration};
    let origin = Origin::start("app");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(edge_tests::unique("edge-log-"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("edge-node.toml");
    std::fs::write(
        &config,
        format!(
            "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:{port}\"]\n\
             [log]\nlevel = \"info\"\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
             [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
            origin.addr
        ),
    )
    .unwrap();
    // stderr is a pipe nobody reads: once its 64 KiB are full, every write blocks.
    let mut node = std::process::Command::new(edge_tests::edge_node_bin())
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    assert!(
        edge_tests::proxy::eventually(Duration::from_secs(20), || std::net::TcpStream::connect(
            &addr
        )
        .is_ok()),
        "the node did not start"
    );
    // Each request logs an access line with its 4 KiB path: 200 of them are far more
    // than the pipe holds.
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        "p".repeat(4096)
    );
    let mut served = 0;
    for _ in 0..200 {
        let r = raw(&addr, request.as_bytes());
        if status_of(&r) != 200 {
            break;
        }
        served += 1;
    }
    let _ = node.kill();
    let mut stderr = node.stderr.take().unwrap();
    let mut some = vec![0u8; 1024];
    let _ = stderr.read(&mut some);
    let _ = node.wait();
    assert_eq!(served, 200, "requests stopped behind a stuck log reader");
}

#[test]
fn http2_ping_and_settings_floods_end_the_connection() {
    use std::{
        io::{Read, Write},
        time::Duration,
    };
    let origin = Origin::start("app");
    let p = one_route(&origin);
    let frame = |kind: u8, flags: u8, payload: &[u8]| {
        let len = payload.len();
        let mut f = vec![0, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    };
    for (what, flood_frame) in [
        ("PING", frame(0x6, 0, &[1; 8])),
        ("SETTINGS", frame(0x4, 0, &[0, 3, 0, 0, 0, 100])),
    ] {
        let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, &[]));
        for _ in 0..2000 {
            out.extend(&flood_frame);
        }
        // The node may close while this is still being written.
        let _ = s.write_all(&out);
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        // Acknowledgements the node sent: frames of that type with the ACK flag.
        let (mut acks, mut at) = (0, 0);
        while at + 9 <= got.len() {
            let len = (got[at] as usize) << 16 | (got[at + 1] as usize) << 8 | got[at + 2] as usize;
            if got[at + 3] == flood_frame[3] && got[at + 4] & 1 == 1 {
                acks += 1;
            }
            at += 9 + len;
        }
        assert!(
            closed,
            "{what} flood: the connection stayed open ({acks} acks)"
        );
        assert!(acks <= 150, "{what} flood: {acks} acknowledged");
    }
    assert!(
        p.node.log().contains("HTTP/2 frame flood"),
        "{}",
        p.node.log()
    );
    // Ordinary HTTP/2 is unaffected.
    let r = curl(&p, "app.test", "/", &["--http2-prior-knowledge"]);
    assert_eq!(
        (r.status, r.version.as_str()),
        (200, "2"),
        "{}",
        p.node.log()
    );
}

/// A raw HTTP/2 frame on `stream`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A node whose clients are challenged from their first flood on (one malformed-request
/// signal, 10 points, over 5), scores kept for an hour.
fn shielded_node(origin: &Origin) -> edge_tests::proxy::Proxy {
    start_config(&format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
         [threat]\nchallenge_threshold = 5\nhalf_life = \"1h\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        origin.addr
    ))
}

#[test]
fn http2_window_update_priority_and_empty_frame_floods_end_the_connection_and_score_the_source() {
    use std::{
        io::{Read, Write},
        time::Duration,
    };
    let origin = Origin::start("app");
    let p = shielded_node(&origin);
    let addr: std::net::SocketAddr = p.addr().parse().unwrap();
    // POST / to app.test (HPACK: indexed :method POST, :scheme http, :path /, and
    // :authority app.test), its body still to come.
    let upload = h2_frame(0x1, 0x4, 1, b"\x83\x86\x84\x41\x08app.test");
    let floods = [
        // Credit nobody asked for: no DATA was sent.
        (
            "127.0.0.2",
            "WINDOW_UPDATE",
            vec![],
            h2_frame(0x8, 0, 0, &[0, 0, 0, 1]),
        ),
        // Priorities for streams never opened.
        (
            "127.0.0.3",
            "PRIORITY",
            vec![],
            h2_frame(0x2, 0, 3, &[0, 0, 0, 0, 16]),
        ),
        // An upload that never carries a byte (h2 itself ends a connection past 100
        // empty DATA frames, but scores nobody: the guard cuts it first).
        (
            "127.0.0.4",
            "empty frames",
            upload,
            h2_frame(0x0, 0, 1, &[]),
        ),
    ];
    for (source, what, opening, flood_frame) in &floods {
        let mut s = edge_tests::connect_from(source, addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(0x4, 0, 0, &[]));
        out.extend(opening);
        for _ in 0..2000 {
            out.extend(flood_frame);
        }
        // The node may close while this is still being written.
        let _ = s.write_all(&out);
        let mut buf = [0u8; 65536];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "{what} flood: the connection stayed open");
        assert!(
            p.node.log().contains(&format!("flood={what}")),
            "{what}: {}",
            p.node.log()
        );
    }
    // Each source scored: challenged now. Nobody else is.
    for (source, what, ..) in &floods {
        let r = curl(&p, "app.test", "/", &["--interface", source]);
        assert_eq!(r.status, 403, "{what} flood from {source}: not scored");
    }
    let r = curl(&p, "app.test", "/", &["--http2-prior-knowledge"]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
}

#[test]
fn http2_large_downloads_and_browser_priorities_are_not_cut() {
    use std::process::Command;
    let origin = Origin::start("app");
    let p = shielded_node(&origin);
    // curl: 32 MiB over h2c.
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "60",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code} %{http_version} %{size_download}", "-H"])
        .arg("Host: app.test")
        .arg(format!("{}/big?size=33554432", p.base))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 2 33554432",
        "{}",
        p.node.log()
    );
    // nghttp with 64 KiB windows (stream and connection): it returns credit for every
    // other DATA frame on both levels, a few thousand WINDOW_UPDATEs for two 16 MiB
    // answers on one connection, and it opens with the PRIORITY frames of Firefox's
    // placeholder tree.
    let out = Command::new("nghttp")
        .args(["-n", "-v", "-w", "16", "-W", "16", "-m", "2", "-t", "60"])
        .args(["-H", ":authority: app.test"])
        // nghttp asks for gzip by default: the bytes on the wire are what is measured.
        .args(["-H", "accept-encoding: identity"])
        .arg(format!("{}/big?size=16777216", p.base))
        .output()
        .expect("nghttp (nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", p.node.log(), text);
    let sent = |kind: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("send {kind} frame")))
            .count()
    };
    let received: usize = text
        .lines()
        .filter_map(|l| l.split("recv DATA frame <length=").nth(1))
        .filter_map(|l| l.split(',').next()?.parse::<usize>().ok())
        .sum();
    assert!(received >= 2 * 16777216, "{received} bytes received");
    assert!(
        sent("WINDOW_UPDATE") > 1000,
        "{} WINDOW_UPDATEs",
        sent("WINDOW_UPDATE")
    );
    assert!(
        sent("PRIORITY") >= 5,
        "{} PRIORITY frames",
        sent("PRIORITY")
    );
    assert!(!p.node.log().contains("frame flood"), "{}", p.node.log());
    // Not scored either.
    assert_eq!(curl(&p, "app.test", "/", &[]).status, 200);
}

#[test]
fn ipv6_clients_rotating_within_their_prefix_share_one_rate_limit() {
    let origin = Origin::start("app");
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
         trusted_proxies = [\"127.0.0.1/32\"]\n[threat]\nenabled = false\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n\
         [[route.rate_limit]]\nkey = \"client_ip\"\nper_second = 0.01\nburst = 2\n",
        origin.addr
    );
    let p = start_config(&cfg);
    // Clients named by a load balancer: one host rotating through its /64 (the
    // default xdp.ipv6_source_prefix) gets one budget; another /64 its own.
    let via = |client: &str| {
        curl(
            &p,
            "app.test",
            "/",
            &["-H", &format!("X-Forwarded-For: {client}")],
        )
        .status
    };
    let statuses: Vec<u16> = (1..=5)
        .map(|i| via(&format!("2001:db8:1:2::{i:x}")))
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    assert_eq!(via("2001:db8:1:3::1"), 200);
}

/// `http://` requests over fresh connections from `src` to `to` (inside `ns`): how many
/// were answered 200 (a refused connection is closed unread).
fn answered_from(ns: &edge_tests::netns::Netns, src: &str, to: &str, n: usize) -> usize {
    use std::io::{Read, Write};
    let to: std::net::SocketAddr = to.parse().unwrap();
    ns.enter(|| {
        (0..n)
            .filter(|_| {
                let Ok(mut s) =
                    edge_tests::connect_from(src, to, std::time::Duration::from_secs(5))
                else {
                    return false;
                };
                s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let _ =
                    s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
                let mut head = [0u8; 12];
                s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
            })
            .count()
    })
}

/// The per-source SYN budget where XDP does not enforce it (here: off): connections
/// over it are refused at accept, counted by reason and logged (once a second, naming
/// the source and the setting), and loopback, which XDP never sees, is not budgeted.
#[test]
fn connections_over_the_syn_budget_are_counted_and_logged_and_loopback_is_not_budgeted() {
    if !edge_tests::privileged("connections_over_the_syn_budget_are_counted_and_logged") {
        return;
    }
    let ns = edge_tests::netns::Netns::new("edge-syn");
    ns.exec(&["ip", "addr", "add", "10.77.0.1/32", "dev", "lo"]);
    let token = "syn-budget-token-0123456789";
    let mut node = edge_tests::node::Node::start(
        &format!(
            "[xdp]\nmode = \"off\"\n[xdp.rate]\nsyn_per_sec = 1\nsyn_burst = 3\n\
             [http]\nlisten = [\"0.0.0.0:8080\"]\n\
             [admin]\nlisten = \"127.0.0.1:9901\"\ntoken = \"{token}\"\n\
             [[route]]\nhosts = [\"app.test\"]\nhandler = \"demo\"\n"
        ),
        Some(&ns),
    );
    assert!(
        node.wait_running(std::time::Duration::from_secs(20)),
        "{}",
        node.log()
    );
    // Loopback: every connection served, however many.
    assert_eq!(
        answered_from(&ns, "127.0.0.1", "127.0.0.1:8080", 12),
        12,
        "{}",
        node.log()
    );
    // Another source: its burst, then refusals.
    let served = answered_from(&ns, "10.77.0.1", "10.77.0.1:8080", 12);
    assert!(
        (3..12).contains(&served),
        "served {served} of 12\n{}",
        node.log()
    );
    let refused = 12 - served;
    let metrics = ns.exec(&[
        "curl",
        "-s",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "http://127.0.0.1:9901/metrics",
    ]);
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    assert!(
        metrics.contains(&format!(
            "edge_connections_refused_total{{reason=\"syn_rate\"}} {refused}"
        )),
        "{metrics}"
    );
    let log = node.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection refused at accept"))
        .collect();
    assert!(!lines.is_empty() && lines.len() < refused.max(2), "{log}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains("source=10.77.0.1")
            && lines[0].contains("xdp.rate.syn_per_sec"),
        "{}",
        lines[0]
    );
    node.stop();
}
