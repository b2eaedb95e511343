//! Zero-downtime binary upgrade: the running node hands its listening sockets (and its
//! pinned XDP link) to a new process started from the binary on disk, then drains.
//! Under keep-alive HTTP/1.1 and HTTP/2 load, no request is lost; a new process that
//! cannot start leaves the old one serving; with XDP, a blocked prefix stays dropped.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use edge_tests::{node::Node, origin::Origin, privileged, proxy::admin_section};

/// Processes the test started indirectly (the new nodes): killed when the test ends.
#[derive(Default)]
struct Pids(Mutex<Vec<u32>>);

impl Pids {
    fn add(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Pids {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().drain(..) {
            if alive(pid) {
                // SAFETY: kill(2) on a node this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// True while `pid` runs (a zombie nobody reaped has exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Waits (bounded) until `pid` has exited.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !alive(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The pid in the last log line with `what` (`new_pid=N`).
fn logged_pid(node: &Node, what: &str) -> Option<u32> {
    node.log()
        .lines()
        .rev()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split("new_pid=").nth(1))
        .filter_map(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|p| p.parse().ok())
        .next()
}

/// A node in front of `origin`, its admin API on a port of its own (`edge-node
/// upgrade` reads the address from the file, as on a real node).
fn config(origin: &Origin) -> String {
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\ndrain_timeout = \"20s\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n{}",
        origin.addr,
        admin_section().replace("127.0.0.1:0", &admin.to_string())
    )
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Requests answered completely and correctly.
    ok: AtomicU64,
    /// Requests sent again because the server closed a reused idle keep-alive
    /// connection before any byte of the answer (what curl and browsers retry).
    h1_idle_retries: AtomicU64,
    /// HTTP/2 requests the client never sent (the connection was going away) and sent
    /// on a new connection.
    h2_unsent_resent: AtomicU64,
    /// HTTP/1.1 answers that said `Connection: close` (the drain's).
    h1_told_close: AtomicU64,
    /// Everything else: refused connects, resets, truncated or wrong answers.
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 50 {
            f.push(what);
        }
    }
}

/// One HTTP/1.1 response read from `s`: (status, whether the server closes, body).
/// `Err(true)`: the connection ended before any byte of it.
fn read_response(s: &mut TcpStream) -> Result<(u16, bool, String), (bool, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err((buf.is_empty(), "EOF".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err((buf.is_empty(), e.to_string())),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n == name).then(|| v.trim().to_string())
        })
    };
    let close = header("connection").is_some_and(|v| v == "close");
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or((false, format!("no content-length: {head}")))?;
    let mut body = buf.split_off(head_end);
    while body.len() < len {
        match s.read(&mut chunk) {
            Ok(0) => return Err((false, "EOF mid-body".into())),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => return Err((false, format!("mid-body: {e}"))),
        }
    }
    Ok((
        status,
        close,
        String::from_utf8_lossy(&body[..len]).into_owned(),
    ))
}

/// A keep-alive HTTP/1.1 client: requests one after another on one connection,
/// reconnecting when the server says `Connection: close`.
fn h1_client(id: usize, addr: SocketAddr, stop: &AtomicBool, tally: &Tally, served: &AtomicU64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conn: Option<(TcpStream, u64)> = None;
    let mut i = 0u64;
    while !stop.load(Relaxed) && Instant::now() < deadline && i < 200_000 {
        i += 1;
        // Every fourth request is slow: half its body, 30 ms, the rest (in flight when
        // the drain begins).
        let path = if i.is_multiple_of(4) {
            format!("/h1/{id}/{i}?body_delay=30")
        } else {
            format!("/h1/{id}/{i}")
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > 5 {
                tally.fail(format!("{path}: gave up after retries"));
                break;
            }
            let (s, used) = match conn.as_mut() {
                Some(c) => (&mut c.0, &mut c.1),
                None => match TcpStream::connect(addr) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        conn = Some((s, 0));
                        let c = conn.as_mut().unwrap();
                        (&mut c.0, &mut c.1)
                    }
                    Err(e) => {
                        tally.fail(format!("{path}: connect: {e}"));
                        thread::sleep(Duration::from_millis(20));
                        break;
                    }
                },
            };
            let reused = *used > 0;
            let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
            let sent = s.write_all(req.as_bytes());
            let got = match sent {
                Ok(()) => read_response(s),
                Err(e) => Err((true, format!("write: {e}"))),
            };
            match got {
                Ok((status, close, body)) => {
                    *used += 1;
                    if status == 200 && body.contains(&format!("path={path}\n")) {
                        tally.ok.fetch_add(1, Relaxed);
                        served.fetch_add(1, Relaxed);
                    } else {
                        tally.fail(format!("{path}: {status} {body:?}"));
                    }
                    if close {
                        tally.h1_told_close.fetch_add(1, Relaxed);
                        conn = None;
                    }
                    break;
                }
                Err((nothing, why)) => {
                    conn = None;
                    if nothing && reused {
                        // The idle keep-alive race every HTTP client handles.
                        tally.h1_idle_retries.fetch_add(1, Relaxed);
                        continue;
                    }
                    tally.fail(format!(
                        "{path}: {why} (reused {reused}, nothing read {nothing})"
                    ));
                    break;
                }
            }
        }
    }
}

/// An HTTP/2 (prior knowledge) client: `streams` requests at a time on one connection;
/// a request the connection no longer took (GOAWAY) goes on a new one.
fn h2_client(id: usize, addr: SocketAddr, stop: &AtomicBool, tally: &Tally, served: &AtomicU64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use http_body_util::BodyExt;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut i = 0u64;
        let mut sender: Option<
            hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        > = None;
        while !stop.load(Relaxed) && Instant::now() < deadline && i < 200_000 {
            let mut send = match sender.take() {
                Some(s) if !s.is_closed() => s,
                _ => {
                    let stream = match tokio::net::TcpStream::connect(addr).await {
                        Ok(s) => s,
                        Err(e) => {
                            tally.fail(format!("h2 {id}: connect: {e}"));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    match hyper::client::conn::http2::handshake(
                        hyper_util::rt::TokioExecutor::new(),
                        hyper_util::rt::TokioIo::new(stream),
                    )
                    .await
                    {
                        Ok((s, conn)) => {
                            tokio::spawn(conn);
                            s
                        }
                        Err(e) => {
                            tally.fail(format!("h2 {id}: handshake: {e}"));
                            continue;
                        }
                    }
                }
            };
            // Four streams at once, one of them slow.
            let mut batch = Vec::new();
            for k in 0..4 {
                i += 1;
                let path = if k == 0 {
                    format!("/h2/{id}/{i}?body_delay=30")
                } else {
                    format!("/h2/{id}/{i}")
                };
                batch.push(path);
            }
            let mut retry = Vec::new();
            let futures: Vec<_> = batch
                .iter()
                .map(|path| {
                    let req = hyper::Request::get(format!("http://app.test{path}"))
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    send.try_send_request(req)
                })
                .collect();
            for (path, f) in batch.iter().zip(futures) {
                match tokio::time::timeout(Duration::from_secs(30), f).await {
                    Ok(Ok(resp)) => {
                        let status = resp.status().as_u16();
                        match resp.into_body().collect().await {
                            Ok(b) => {
                                let body = String::from_utf8_lossy(&b.to_bytes()).into_owned();
                                if status == 200 && body.contains(&format!("path={path}\n")) {
                                    tally.ok.fetch_add(1, Relaxed);
                                    served.fetch_add(1, Relaxed);
                                } else {
                                    tally.fail(format!("{path}: {status} {body:?}"));
                                }
                            }
                            Err(e) => tally.fail(format!("{path}: body: {e}")),
                        }
                    }
                    Ok(Err(mut e)) => match e.take_message() {
                        // Never sent: the connection was going away.
                        Some(_) => retry.push(path.clone()),
                        None => tally.fail(format!("{path}: {}", e.error())),
                    },
                    Err(_) => tally.fail(format!("{path}: no answer within 30 s")),
                }
            }
            for path in retry {
                tally.h2_unsent_resent.fetch_add(1, Relaxed);
                let stream = tokio::net::TcpStream::connect(addr).await;
                let answered = async {
                    let (mut s, conn) = hyper::client::conn::http2::handshake(
                        hyper_util::rt::TokioExecutor::new(),
                        hyper_util::rt::TokioIo::new(stream.map_err(|e| e.to_string())?),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    tokio::spawn(conn);
                    let req = hyper::Request::get(format!("http://app.test{path}"))
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
                    let status = resp.status().as_u16();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned(), s))
                }
                .await;
                match answered {
                    Ok((200, body, s)) if body.contains(&format!("path={path}\n")) => {
                        tally.ok.fetch_add(1, Relaxed);
                        served.fetch_add(1, Relaxed);
                        sender = Some(s);
                    }
                    Ok((status, body, _)) => {
                        tally.fail(format!("{path} (resent): {status} {body:?}"))
                    }
                    Err(e) => tally.fail(format!("{path} (resent): {e}")),
                }
            }
            if sender.is_none() {
                sender = Some(send);
            }
        }
    });
}

/// Load on `addr` until stopped: 4 keep-alive HTTP/1.1 clients, 2 HTTP/2 clients.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    served: Vec<Arc<AtomicU64>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut served = Vec::new();
        let mut threads = Vec::new();
        for id in 0..6 {
            let (stop, tally) = (stop.clone(), tally.clone());
            let count = Arc::new(AtomicU64::new(0));
            served.push(count.clone());
            threads.push(thread::spawn(move || {
                if id < 4 {
                    h1_client(id, addr, &stop, &tally, &count)
                } else {
                    h2_client(id, addr, &stop, &tally, &count)
                }
            }));
        }
        Self {
            stop,
            tally,
            served,
            threads,
        }
    }

    /// Waits (bounded) until every client has had `more` more requests answered.
    fn progress(&self, more: u64, timeout: Duration) -> bool {
        let base: Vec<u64> = self.served.iter().map(|c| c.load(Relaxed)).collect();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self
                .served
                .iter()
                .zip(&base)
                .all(|(c, b)| c.load(Relaxed) >= b + more)
            {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn finish(mut self) -> Arc<Tally> {
        self.stop.store(true, Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().expect("client thread");
        }
        self.tally.clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

#[test]
fn an_upgrade_under_keep_alive_and_http2_load_loses_no_request() {
    let origin = Origin::start("o");
    let pids = Pids::default();
    let mut node = Node::start(&config(&origin), None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let addr = node.http_addr().expect("http address in the log");
    let first = node.pid().unwrap();
    let load = Load::start(addr);
    assert!(
        load.progress(30, Duration::from_secs(30)),
        "load did not start: {:?}\n{}",
        load.tally.failures.lock().unwrap(),
        node.log()
    );

    // 1. SIGUSR2, as `systemctl kill -s USR2 edge-node` sends it.
    node.signal(libc::SIGUSR2);
    assert!(
        node.wait_for_log("upgrade: new process ready", Duration::from_secs(60)),
        "{}",
        node.log()
    );
    let second = logged_pid(&node, "upgrade: new process ready").expect("new pid logged");
    pids.add(second);
    assert_ne!(second, first);
    // The old process drains and exits cleanly while the load goes on.
    assert_eq!(
        node.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        node.log()
    );
    assert!(alive(second), "{}", node.log());
    assert!(
        load.progress(30, Duration::from_secs(30)),
        "no progress after the upgrade: {:?}\n{}",
        load.tally.failures.lock().unwrap(),
        node.log()
    );

    // 2. `edge-node upgrade`, through the admin API, on the node the first upgrade
    // started: the CLI waits for the outcome and names the new pid.
    let out = node.cli(&["upgrade"]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let third: u32 = said
        .trim()
        .strip_prefix("upgraded: new pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    pids.add(third);
    assert!(wait_gone(second, Duration::from_secs(60)), "{}", node.log());
    assert!(alive(third));
    assert!(
        load.progress(30, Duration::from_secs(30)),
        "no progress after the second upgrade: {:?}\n{}",
        load.tally.failures.lock().unwrap(),
        node.log()
    );
    let tally = load.finish();
    let log = node.log();
    let failures = tally.failures.lock().unwrap();
    let ok = tally.ok.load(Relaxed);
    eprintln!(
        "answered {ok}, told to close {}, idle keep-alive retries {}, unsent HTTP/2 requests resent {}",
        tally.h1_told_close.load(Relaxed),
        tally.h1_idle_retries.load(Relaxed),
        tally.h2_unsent_resent.load(Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}\n{log}",
        failures.len()
    );
    assert!(ok > 6 * 90, "{ok}");
    // Every keep-alive HTTP/1.1 client was told on an answer that its connection to the
    // draining process ends there.
    assert!(tally.h1_told_close.load(Relaxed) >= 4, "{log}");
    // Each old process said what it did.
    assert_eq!(
        log.matches("upgrade: handing the listeners over").count(),
        2,
        "{log}"
    );
    assert_eq!(
        log.matches("upgrade: accepting on the handed-over sockets")
            .count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches("upgrade: drain finished").count(), 2, "{log}");
    assert!(!log.contains("upgrade failed"), "{log}");
    // The new process adopted the listeners (it bound none anew) and serves.
    assert!(log.contains("adopted a handed-over socket"), "{log}");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /after HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut s).expect("answer");
    assert_eq!(status, 200, "{body}");
    // SAFETY: kill(2) on the node this test started.
    unsafe { libc::kill(third as i32, libc::SIGTERM) };
    assert!(wait_gone(third, Duration::from_secs(30)));
}

#[test]
fn a_new_binary_that_cannot_start_leaves_the_old_one_serving() {
    let origin = Origin::start("o");
    let pids = Pids::default();
    let mut node = Node::start(&config(&origin), None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let addr = node.http_addr().expect("http address in the log");
    let get = |path: &str| -> u16 {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        read_response(&mut s).map(|r| r.0).unwrap_or(0)
    };
    // A keep-alive connection open across the failed attempts stays served.
    let mut held = TcpStream::connect(addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let valid = std::fs::read_to_string(node.config_path()).unwrap();
    // The CLI reads a valid copy; the node's file, what the new process loads, is
    // broken.
    let good = node.dir().join("cli.toml");
    std::fs::write(&good, &valid).unwrap();
    let upgrade = || {
        std::process::Command::new(edge_tests::edge_node_bin())
            .arg("-c")
            .arg(&good)
            .arg("upgrade")
            .output()
            .unwrap()
    };
    std::fs::write(node.config_path(), format!("{valid}\n[nonsense\n")).unwrap();
    let out = upgrade();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}\n{}", node.log());
    assert!(
        stderr.contains("upgrade failed")
            && stderr.contains("exited")
            && stderr.contains("before it was ready"),
        "{stderr}"
    );
    assert!(
        node.log()
            .contains("upgrade failed; this process keeps serving"),
        "{}",
        node.log()
    );
    // The signal path fails the same way, and says so in the log.
    node.signal(libc::SIGUSR2);
    let start = Instant::now();
    while node
        .log()
        .matches("upgrade failed; this process keeps serving")
        .count()
        < 2
    {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", node.log());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!node.exited(), "{}", node.log());
    assert_eq!(get("/still"), 200);
    held.write_all(b"GET /held HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut held).map(|r| r.0).ok(), Some(200));
    // Fixed, the next upgrade goes through.
    std::fs::write(node.config_path(), &valid).unwrap();
    let out = upgrade();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    if let Some(pid) = logged_pid(&node, "upgrade: new process ready") {
        pids.add(pid);
    }
    assert_eq!(
        node.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        node.log()
    );
    assert_eq!(get("/after"), 200);
}

#[test]
fn xdp_keeps_dropping_a_blocked_prefix_across_an_upgrade() {
    if !privileged("xdp_keeps_dropping_a_blocked_prefix_across_an_upgrade") {
        return;
    }
    // keep_attached = false: the old process owns its link unpinned and must pin it for
    // the new one, which unpins it again once it runs.
    xdp_upgrade(false);
}

#[test]
fn xdp_keep_attached_link_is_taken_over_by_the_upgrade() {
    if !privileged("xdp_keep_attached_link_is_taken_over_by_the_upgrade") {
        return;
    }
    xdp_upgrade(true);
}

fn xdp_upgrade(keep_attached: bool) {
    use crate::xdp_veth::{BLOCKED, PLAIN, Rig, ip};
    use edge_common::Reason;
    let pids = Pids::default();
    let rig = Rig::new();
    let settings = |block: &str| format!("keep_attached = {keep_attached}\nblock = [{block}]");
    let mut node = rig.start("native", &settings(&format!("\"{BLOCKED}/32\"")));
    let xdp_id = |rig: &Rig| -> Option<String> {
        let out = rig
            .server
            .exec(&["ip", "-d", "link", "show", "dev", &rig.server_if]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("prog/xdp id ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    };
    let before_id = xdp_id(&rig).expect("XDP attached");
    let maps = rig.maps();
    let before = maps.counters().unwrap();
    // Traffic from both sources all through the upgrade: the blocked one never passes.
    let stop = AtomicBool::new(false);
    let seen_ids = Mutex::new(Vec::new());
    let (rounds, blocked_through, plain_through) = thread::scope(|s| {
        let t = s.spawn(|| {
            let (mut rounds, mut blocked, mut plain) = (0, 0, 0);
            let deadline = Instant::now() + Duration::from_secs(120);
            while (!stop.load(Relaxed) || rounds < 3) && Instant::now() < deadline {
                let got = rig.udp_exchange(&[PLAIN, BLOCKED], 50);
                blocked += got.get(&ip(BLOCKED)).copied().unwrap_or(0);
                plain += got.get(&ip(PLAIN)).copied().unwrap_or(0);
                seen_ids.lock().unwrap().push(xdp_id(&rig));
                rounds += 1;
            }
            (rounds, blocked, plain)
        });
        thread::sleep(Duration::from_millis(500));
        node.signal(libc::SIGUSR2);
        let ready = node.wait_for_log("upgrade: new process ready", Duration::from_secs(60));
        let exited = node.wait_exit(Duration::from_secs(60));
        stop.store(true, Relaxed);
        let r = t.join().unwrap();
        assert!(ready, "{}", node.log());
        assert_eq!(exited, Some(0), "{}", node.log());
        r
    });
    let new = logged_pid(&node, "upgrade: new process ready").expect("new pid");
    pids.add(new);
    assert!(alive(new), "{}", node.log());
    assert!(rounds >= 3);
    assert_eq!(
        blocked_through, 0,
        "a blocked packet passed during the upgrade"
    );
    assert_eq!(
        plain_through,
        50 * rounds,
        "plain traffic passes throughout"
    );
    // Never a moment without a program on the interface.
    let ids = seen_ids.lock().unwrap();
    assert!(ids.iter().all(Option::is_some), "{ids:?}");
    // The kernel's counters kept moving across the upgrade: every blocked packet was
    // dropped there, by the old program or the new one.
    let dropped = maps.counters().unwrap()[Reason::DropBlocked as usize].packets
        - before[Reason::DropBlocked as usize].packets;
    assert_eq!(dropped, 50 * rounds as u64);
    // The link now runs the new process's program, the one `xdp status` reports.
    let after_id = xdp_id(&rig).expect("still attached");
    let status = node.cli_ok(&["xdp", "status"]);
    assert!(status.contains(&after_id), "{status}\n{}", node.log());
    assert_eq!(
        rig.fs.pin_dir().join("links").join(&rig.server_if).exists(),
        keep_attached,
        "the link is pinned only with keep_attached once the new process runs"
    );
    let _ = before_id;
    let log = node.log();
    assert!(log.contains("taken_over=true"), "{log}");
    // The new process edits the maps: a reload that blocks the plain source too.
    std::fs::write(
        node.config_path(),
        rig.config(
            "native",
            &settings(&format!("\"{BLOCKED}/32\", \"{PLAIN}/32\"")),
        ),
    )
    .unwrap();
    // SAFETY: kill(2) on the node the upgrade started.
    unsafe { libc::kill(new as i32, libc::SIGHUP) };
    let start = Instant::now();
    while !node.log().contains("configuration reloaded") {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", node.log());
        thread::sleep(Duration::from_millis(50));
    }
    let got = rig.udp_exchange(&[PLAIN], 30);
    assert_eq!(
        got.get(&ip(PLAIN)).copied().unwrap_or(0),
        0,
        "blocked by the new process"
    );
    // When the new process stops it does what its configuration says, like any node:
    // without keep_attached it detaches; with it, the program stays and filters.
    // SAFETY: as above.
    unsafe { libc::kill(new as i32, libc::SIGTERM) };
    assert!(wait_gone(new, Duration::from_secs(30)), "{}", node.log());
    if keep_attached {
        assert_eq!(xdp_id(&rig), Some(after_id), "{}", node.log());
        let got = rig.udp_exchange(&[PLAIN], 30);
        assert_eq!(got.get(&ip(PLAIN)).copied().unwrap_or(0), 0);
    } else {
        assert_eq!(xdp_id(&rig), None, "{}", node.log());
    }
}

/// The TLS listener and the HTTP/3 UDP sockets are handed over too, and under systemd
/// (a notify socket) the old process names the new one the service's main process.
#[test]
fn tls_and_http3_sockets_are_handed_over_and_systemd_learns_the_new_main_pid() {
    use edge_tests::{h3::free_udp_port, h3::h3, tls_origin::make_ca_and_leaf, unique};
    use serde_json::json;
    let dir = std::env::temp_dir().join(unique("edge-upgrade-h3-"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, &["app.test"]);
    let origin = Origin::start("o");
    let pids = Pids::default();
    let port = free_udp_port();
    let cfg = format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
         h3_listen = [\"127.0.0.1:{port}\"]\n\n[threat]\nenabled = false\n\n\
         [[certificate]]\nhosts = [\"app.test\"]\ncert = \"{leaf}\"\nkey = \"{key}\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{origin}\"]\n\n\
         [[route]]\nhosts = [\"app.test\"]\nupstream = \"app\"\n",
        leaf = dir.join("leaf.crt").display(),
        key = dir.join("leaf.key").display(),
        origin = origin.addr,
    );
    let sock_path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let next = |node: &Node| {
        let mut buf = [0u8; 512];
        match sock.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("no notification ({e}); node log:\n{}", node.log()),
        }
    };
    let mut node = Node::start_with_env(
        &cfg,
        None,
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    assert!(next(&node).contains("READY=1"));
    let ca = dir.join("ca.crt");
    let tls_addr = node.logged_addr("https listening").expect("https address");
    let https = |path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .arg("--cacert")
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("app.test:{}:127.0.0.1", tls_addr.port()))
            .arg(format!("https://app.test:{}{path}", tls_addr.port()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let get3 = |path: &str| {
        h3(
            port,
            &ca,
            json!([{"method": "GET", "authority": "app.test", "path": path}]),
        )[0]["status"]
            .clone()
    };
    assert_eq!(get3("/before"), 200, "{}", node.log());
    assert_eq!(https("/before"), "200");
    node.signal(libc::SIGUSR2);
    // The next notification is the old process's: the new main pid (the new process
    // sends nothing before it is the main process: systemd would refuse it).
    let handed = next(&node);
    let new: u32 = handed
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{handed}\n{}", node.log()));
    pids.add(new);
    assert!(
        !handed.contains("READY=1") && !handed.contains("STOPPING=1"),
        "{handed}"
    );
    assert_eq!(
        node.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        node.log()
    );
    // The old one is gone: the new one answers on all three.
    assert_eq!(get3("/after"), 200, "{}", node.log());
    assert_eq!(https("/after"), "200", "{}", node.log());
    let log = node.log();
    for kind in ["http", "https", "h3"] {
        assert!(
            log.contains(&format!("adopted a handed-over socket kind=\"{kind}\"")),
            "{kind}: {log}"
        );
    }
    // The old process sent no STOPPING=1 (the service is not stopping); the new one
    // does when it stops.
    // SAFETY: kill(2) on the node the upgrade started.
    unsafe { libc::kill(new as i32, libc::SIGTERM) };
    assert!(next(&node).contains("STOPPING=1"));
    assert!(wait_gone(new, Duration::from_secs(30)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The new configuration decides what is listened on: an address it adds is bound, one
/// it no longer names is closed once the old process is gone, the others are adopted.
#[test]
fn an_upgrade_binds_added_listeners_and_closes_removed_ones() {
    let origin = Origin::start("o");
    let pids = Pids::default();
    let cfg = config(&origin);
    let mut node = Node::start(&cfg, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let first = node.http_addr().expect("http address");
    let second = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let status = |addr: SocketAddr| -> Result<u16, String> {
        let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        read_response(&mut s).map(|r| r.0).map_err(|e| e.1)
    };
    let upgrade = |node: &Node| -> u32 {
        let out = node.cli(&["upgrade"]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{said}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.log()
        );
        said.trim()
            .strip_prefix("upgraded: new pid ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{said}"))
    };
    // Added: the first address is adopted (same configured address), the second bound.
    std::fs::write(
        node.config_path(),
        cfg.replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:0\", \"{second}\"]"),
        ),
    )
    .unwrap();
    let p2 = upgrade(&node);
    pids.add(p2);
    assert_eq!(node.wait_exit(Duration::from_secs(60)), Some(0));
    assert_eq!(status(first), Ok(200), "{}", node.log());
    assert_eq!(status(second), Ok(200), "{}", node.log());
    // Removed: the first address is no longer configured.
    std::fs::write(
        node.config_path(),
        cfg.replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"{second}\"]"),
        ),
    )
    .unwrap();
    let p3 = upgrade(&node);
    pids.add(p3);
    assert!(wait_gone(p2, Duration::from_secs(60)), "{}", node.log());
    assert_eq!(status(second), Ok(200), "{}", node.log());
    let refused = status(first);
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("refused")),
        "{refused:?}\n{}",
        node.log()
    );
    let log = node.log();
    assert!(
        log.contains("handed-over socket no longer configured; closed"),
        "{log}"
    );
}

/// A node whose store is open (KV here) is not upgraded in place: the new process could
/// not open the locked store. The command says so; the node serves on.
#[test]
fn a_node_with_its_store_open_refuses_the_upgrade_and_serves_on() {
    let origin = Origin::start("o");
    let data = std::env::temp_dir().join(edge_tests::unique("edge-upgrade-kv-"));
    let cfg = config(&origin).replace(
        "[[route]]",
        &format!(
            "[storage]\ndir = \"{}\"\n\n[[kv]]\nname = \"users\"\n\n\
             [[route]]\nhosts = [\"kv.test\"]\nhandler = {{ kv = \"users\" }}\n\n[[route]]",
            data.display()
        ),
    );
    let mut node = Node::start(&cfg, None);
    assert!(node.wait_running(Duration::from_secs(20)), "{}", node.log());
    let addr = node.http_addr().expect("http address");
    let out = node.cli(&["upgrade"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}\n{}", node.log());
    assert!(
        stderr.contains("upgrade failed") && stderr.contains("edge-node.redb is in use"),
        "{stderr}"
    );
    assert!(!node.log().contains("upgrade: handing the listeners over"));
    assert!(!node.exited());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).map(|r| r.0).ok(), Some(200));
    node.stop();
    let _ = std::fs::remove_dir_all(&data);
}
