//! Rooms (`[[rooms]]`, `handler = { rooms = "…" }`) against a real node, with real
//! WebSocket clients (tungstenite, blocking, every read bounded): init, presence and
//! one order of messages for every member, the limits (full room, size, rate), a
//! member that stops reading cut off while the room goes on, and state kept across a
//! crash.

use std::{net::TcpStream, time::Duration};

use edge_tests::{
    free_port,
    jwt::{SECRET, bearer, hs_provider, hs256},
    proxy::{Proxy, admin_section, curl, start_config},
    unique,
};
use serde_json::{Value, json};
use tungstenite::{
    Message, WebSocket, client::IntoClientRequest, http::HeaderValue,
    protocol::frame::coding::CloseCode,
};

const HEAD: &str = "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n\
                    [threat]\nenabled = false\n";

struct DataDir(std::path::PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node(rooms: &str) -> (Proxy, DataDir) {
    let data = DataDir(std::env::temp_dir().join(unique("edge-rooms-")));
    let p = start_config(&format!(
        "{HEAD}\n[storage]\ndir = \"{dir}\"\n{jwt}\n{rooms}\n\
         [[route]]\nhosts = [\"rooms.test\"]\npath_prefix = \"/rooms\"\nhandler = {{ rooms = \"docs\" }}\n\
         [route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n",
        dir = data.0.display(),
        jwt = hs_provider(),
    ));
    (p, data)
}

struct Member {
    ws: WebSocket<TcpStream>,
}

/// Joins `room` as `user` (anonymous without); `Err(status)` when refused over HTTP.
fn join(p: &Proxy, room: &str, user: Option<&str>) -> Result<Member, u16> {
    let addr = p.base.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("ws://{addr}/rooms/{room}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", HeaderValue::from_static("rooms.test"));
    if let Some(u) = user {
        let token = bearer(&hs256(u, &[], SECRET));
        let (_, v) = token.split_once(": ").unwrap();
        req.headers_mut()
            .insert("authorization", HeaderValue::from_str(v).unwrap());
    }
    match tungstenite::client::client(req, stream) {
        Ok((ws, _)) => Ok(Member { ws }),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

impl Member {
    /// The next JSON message (pings answered on the way).
    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a message within 10 s") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }

    fn send(&mut self, v: &Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    /// Reads until the server closes; its close code (`None`: the connection just ended).
    fn closed(&mut self) -> Option<CloseCode> {
        for _ in 0..100_000 {
            match self.ws.read() {
                Ok(Message::Close(c)) => return c.map(|c| c.code),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        panic!("still open");
    }
}

#[test]
fn members_share_one_state_one_order_and_presence() {
    let (p, _data) =
        node("[[rooms]]\nname = \"docs\"\nmessages_per_second = 1000.0\nmessage_burst = 1000\n");

    let mut alice = join(&p, "doc-1", Some("alice")).unwrap();
    let init = alice.recv();
    assert_eq!(init["type"], "init", "{init}");
    assert_eq!(init["room"], "doc-1");
    assert_eq!(init["state"], Value::Null);
    assert_eq!(init["members"], json!([]));
    let me = init["you"].as_str().unwrap().to_string();
    assert!(me.starts_with("alice#"), "{me}");

    let mut bob = join(&p, "doc-1", Some("bob")).unwrap();
    let init = bob.recv();
    assert_eq!(init["members"], json!([me]));
    let bob_id = init["you"].as_str().unwrap().to_string();
    let joined = alice.recv();
    assert_eq!(
        (joined["type"].as_str(), joined["member"].as_str()),
        (Some("join"), Some(bob_id.as_str()))
    );

    // A new state: stored, acknowledged to its author, sent to the others.
    alice.send(&json!({"type": "update", "state": {"text": "hello"}}));
    let ack = alice.recv();
    assert_eq!(ack["type"], "ack", "{ack}");
    let update = bob.recv();
    assert_eq!(update["type"], "update");
    assert_eq!(update["from"], me.as_str());
    assert_eq!(update["state"], json!({"text": "hello"}));
    assert_eq!(update["seq"], ack["seq"]);
    // Someone joining later starts from it.
    let mut carol = join(&p, "doc-1", None).unwrap();
    let init = carol.recv();
    assert_eq!(init["state"], json!({"text": "hello"}));
    assert!(init["you"].as_str().unwrap().starts_with("anonymous#"));
    assert_eq!(alice.recv()["type"], "join");
    assert_eq!(bob.recv()["type"], "join");

    // Malformed messages get an error; the connection stays.
    carol.ws.send(Message::text("not json")).unwrap();
    assert_eq!(carol.recv()["type"], "error");
    carol.send(&json!({"type": "update"}));
    assert_eq!(carol.recv()["type"], "error");

    // Three members send at once: every member sees the others' messages in one order
    // (the room's sequence numbers, strictly increasing, the same for all).
    let mut members = vec![alice, bob, carol];
    let per = 30;
    let logs: Vec<Vec<(u64, String, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter_mut()
            .enumerate()
            .map(|(i, m)| {
                s.spawn(move || {
                    for n in 0..per {
                        m.send(&json!({"type": "message", "data": {"from": i, "n": n}}));
                    }
                    let mut log = Vec::new();
                    while log.len() < 2 * per as usize {
                        let v = m.recv();
                        if v["type"] == "message" {
                            log.push((
                                v["seq"].as_u64().unwrap(),
                                v["data"]["from"].to_string(),
                                v["data"]["n"].as_u64().unwrap(),
                            ));
                        }
                    }
                    log
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<(u64, String, u64)> = logs.iter().flatten().cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        3 * per as usize,
        "every message has one sequence number"
    );
    for (i, log) in logs.iter().enumerate() {
        assert!(
            log.windows(2).all(|w| w[0].0 < w[1].0),
            "member {i}: out of order"
        );
        // What member i saw of sender j is j's messages in the order j sent them.
        for j in 0..3 {
            let from: Vec<u64> = log
                .iter()
                .filter(|e| e.1 == j.to_string())
                .map(|e| e.2)
                .collect();
            if i == j {
                assert!(from.is_empty(), "nobody gets its own messages back");
            } else {
                assert_eq!(from, (0..per).collect::<Vec<_>>());
            }
        }
    }
    // For any two members, the messages both saw came in the same order.
    let seqs = |log: &Vec<(u64, String, u64)>| -> Vec<(String, u64)> {
        log.iter().map(|e| (e.1.clone(), e.2)).collect()
    };
    let (a, b) = (seqs(&logs[0]), seqs(&logs[1]));
    let common_a: Vec<_> = a.iter().filter(|e| b.contains(e)).collect();
    let common_b: Vec<_> = b.iter().filter(|e| a.contains(e)).collect();
    assert_eq!(common_a, common_b);

    // Leaving is announced.
    let mut carol = members.pop().unwrap();
    let carol_id = {
        carol.ws.close(None).unwrap();
        let _ = carol.closed();
        "anonymous#"
    };
    let left = members[0].recv();
    assert_eq!(left["type"], "leave");
    assert!(left["member"].as_str().unwrap().starts_with(carol_id));

    // Not a WebSocket: 426, naming what to send.
    let r = curl(&p, "rooms.test", "/rooms/doc-1", &[]);
    assert_eq!(r.status, 426);
    assert!(r.headers.contains("upgrade: websocket"), "{}", r.headers);
}

#[test]
fn limits_refuse_a_full_room_a_large_message_and_a_flood() {
    let (p, _data) = node(
        "[[rooms]]\nname = \"docs\"\nmax_members = 2\nmax_message_bytes = 1024\n\
         messages_per_second = 1.0\nmessage_burst = 5\n",
    );
    let mut a = join(&p, "r", None).unwrap();
    a.recv();
    let mut b = join(&p, "r", None).unwrap();
    b.recv();
    a.recv();
    assert_eq!(
        join(&p, "r", None).err(),
        Some(503),
        "a full room refuses before the upgrade"
    );
    // Another room is another room.
    let mut other = join(&p, "other", None).unwrap();
    other.recv();

    // Larger than max_message_bytes: closed with 1009.
    a.send(&json!({"type": "message", "data": "x".repeat(2000)}));
    assert_eq!(a.closed(), Some(CloseCode::Size));
    assert_eq!(b.recv()["type"], "leave");
    // Over the message rate (burst 5): closed with 1008; the others heard every
    // message it was allowed.
    let mut c = join(&p, "r", None).unwrap();
    c.recv();
    assert_eq!(b.recv()["type"], "join");
    for n in 0..20 {
        if c.ws
            .send(Message::text(
                json!({"type": "message", "data": n}).to_string(),
            ))
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.closed(), Some(CloseCode::Policy));
    let mut got = Vec::new();
    loop {
        let v = b.recv();
        if v["type"] == "leave" {
            break;
        }
        got.push(v["data"].as_u64().unwrap());
    }
    assert_eq!(got, (0..5).collect::<Vec<_>>());
}

#[test]
fn a_member_that_stops_reading_is_cut_off_and_the_room_goes_on() {
    let (p, _data) = node(
        "[[rooms]]\nname = \"docs\"\nmember_queue = 8\nmax_message_bytes = 262144\n\
         messages_per_second = 10000.0\nmessage_burst = 10000\npersist_window = \"1s\"\n",
    );
    let mut writer = join(&p, "busy", Some("w")).unwrap();
    writer.recv();
    let mut reader = join(&p, "busy", Some("r")).unwrap();
    reader.recv();
    writer.recv();
    let mut sleeper = join(&p, "busy", Some("s")).unwrap();
    sleeper.recv();
    writer.recv();
    reader.recv();
    // The sleeper never reads again. 200 states of 100 KB: far more than its queue and
    // the socket buffers hold.
    let big = "y".repeat(100_000);
    let total = 200;
    // The writer keeps at most 4 updates ahead of the reader: a reader that keeps up is
    // never the slow one, however loaded the machine.
    let read = std::sync::atomic::AtomicUsize::new(0);
    let received = std::thread::scope(|s| {
        let r = s.spawn(|| {
            let mut updates = Vec::new();
            let mut sleeper_left = false;
            while updates.len() < total {
                let v = reader.recv();
                match v["type"].as_str() {
                    Some("update") => {
                        updates.push(v["state"]["n"].as_u64().unwrap());
                        read.store(updates.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    Some("leave") => sleeper_left = true,
                    _ => {}
                }
            }
            (updates, sleeper_left)
        });
        for n in 0..total {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while read.load(std::sync::atomic::Ordering::Relaxed) + 4 < n {
                assert!(std::time::Instant::now() < deadline, "the reader stalled");
                std::thread::sleep(Duration::from_millis(1));
            }
            writer.send(&json!({"type": "update", "state": {"n": n, "pad": big}}));
        }
        r.join().unwrap()
    });
    assert_eq!(
        received.0,
        (0..total as u64).collect::<Vec<_>>(),
        "every update, in order"
    );
    assert!(received.1, "the sleeper's removal was announced");
    // The sleeper's connection ends (after whatever was already in its buffers).
    sleeper
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(matches!(sleeper.closed(), None | Some(CloseCode::Policy)));
}

#[test]
fn state_survives_a_crash_and_idle_rooms_leave_memory() {
    let (mut p, _data) = node(&format!(
        "{}[[rooms]]\nname = \"docs\"\nidle_after = \"1s\"\n",
        admin_section()
    ));
    let mut a = join(&p, "keep", None).unwrap();
    a.recv();
    a.send(&json!({"type": "update", "state": {"v": 1}}));
    a.recv();
    a.send(&json!({"type": "update", "state": {"v": 2, "list": [1, 2, 3]}}));
    let ack = a.recv();
    assert_eq!(ack["type"], "ack");
    // Stored before it was acknowledged (persist_window = 0): SIGKILL loses nothing.
    p.node.sigkill();
    p.node.restart();
    assert!(
        p.node.wait_running(Duration::from_secs(20)),
        "{}",
        p.node.log()
    );
    p.base = format!("http://{}", p.node.http_addr().unwrap());
    let mut b = join(&p, "keep", None).unwrap();
    let init = b.recv();
    assert_eq!(init["state"], json!({"v": 2, "list": [1, 2, 3]}));
    assert_eq!(
        init["seq"], ack["seq"],
        "the sequence goes on from where it was"
    );
    let gauges = |p: &Proxy| -> (String, String) {
        let (_, m) = p.admin("GET", "/metrics");
        let find = |name: &str| {
            m.lines()
                .find(|l| l.starts_with(&format!("{name}{{rooms=\"docs\"}}")))
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
                .unwrap_or_default()
        };
        (find("edge_rooms_live"), find("edge_room_members"))
    };
    assert_eq!(gauges(&p), ("1".into(), "1".into()));
    // With nobody left the room leaves memory, and comes back from the store.
    b.ws.close(None).unwrap();
    let _ = b.closed();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gauges(&p) != ("0".into(), "0".into()) {
        assert!(std::time::Instant::now() < deadline, "{:?}", gauges(&p));
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut c = join(&p, "keep", None).unwrap();
    assert_eq!(c.recv()["state"], json!({"v": 2, "list": [1, 2, 3]}));
    assert_eq!(gauges(&p), ("1".into(), "1".into()));
}

/// A member over HTTP/2 (RFC 8441 extended CONNECT on a prior-knowledge h2 connection):
/// the status, and the joined socket when it was 200.
async fn join_h2(p: &Proxy, host: &'static str, path: &str) -> (u16, Option<H2Socket>) {
    let stream = tokio::net::TcpStream::connect(p.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::connect(format!("http://{host}{path}"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let io = hyper::upgrade::on(resp).await.unwrap();
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(io),
        tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    (status, Some(ws))
}

type H2Socket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// The next JSON message on an HTTP/2 member's socket (within 10 s).
async fn recv(ws: &mut H2Socket) -> Value {
    use futures_util::StreamExt as _;
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .unwrap();
    serde_json::from_str(msg.to_text().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_over_http2_extended_connect() {
    use futures_util::SinkExt as _;
    let (p, _data) = node(&format!(
        "[[rooms]]\nname = \"docs\"\n{}",
        "[[upstream]]\nname = \"demo\"\nbuiltin = \"demo\"\n\
         [[route]]\nhosts = [\"proxied.test\"]\nupstream = \"demo\"\n\
         [[route]]\nhosts = [\"private.test\"]\npath_prefix = \"/rooms\"\n\
         handler = { rooms = \"docs\" }\n\
         [route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n\
         [[route.auth.roles]]\npath_prefix = \"/rooms\"\nmethods = [\"GET\"]\nany_of = [\"member\"]\n"
    ));
    let (status, ws) = join_h2(&p, "rooms.test", "/rooms/h2").await;
    assert_eq!(status, 200, "{}", p.node.log());
    let mut h2 = ws.unwrap();
    assert_eq!(recv(&mut h2).await["type"], "init");
    // An HTTP/1.1 member of the same room hears it, and the other way round.
    let mut h1 = tokio::task::block_in_place(|| join(&p, "h2", None).unwrap());
    assert_eq!(tokio::task::block_in_place(|| h1.recv())["type"], "init");
    assert_eq!(recv(&mut h2).await["type"], "join");
    h2.send(tungstenite::Message::text(
        json!({"type": "update", "state": {"over": "h2"}}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(recv(&mut h2).await["type"], "ack");
    let got = tokio::task::block_in_place(|| h1.recv());
    assert_eq!(got["state"], json!({"over": "h2"}));
    tokio::task::block_in_place(|| h1.send(&json!({"type": "message", "data": 7})));
    assert_eq!(recv(&mut h2).await["data"], 7);
    // A role rule on GET covers the HTTP/2 join too: no token, no member.
    assert_eq!(join_h2(&p, "private.test", "/rooms/h2").await.0, 401);
    // A proxied route refuses an extended CONNECT rather than forward a tunnel.
    let (status, _) = join_h2(&p, "proxied.test", "/").await;
    assert_eq!(status, 405);
}

#[test]
fn written_behind_state_is_stored_at_a_clean_stop() {
    let (mut p, _data) = node("[[rooms]]\nname = \"docs\"\npersist_window = \"30s\"\n");
    let mut a = join(&p, "behind", None).unwrap();
    a.recv();
    a.send(&json!({"type": "update", "state": {"draft": 3}}));
    assert_eq!(a.recv()["type"], "ack");
    // Within the window nothing is stored yet; a clean stop stores it.
    p.node.restart();
    assert!(
        p.node.wait_running(Duration::from_secs(20)),
        "{}",
        p.node.log()
    );
    p.base = format!("http://{}", p.node.http_addr().unwrap());
    let mut b = join(&p, "behind", None).unwrap();
    assert_eq!(b.recv()["state"], json!({"draft": 3}));
}

/// A node of a rooms fleet on `port` (its relay URL), sharing `redis` and `prefix`.
fn fleet_node(redis: &edge_tests::redis::Redis, prefix: &str, port: u16) -> (Proxy, DataDir) {
    let data = DataDir(std::env::temp_dir().join(unique("edge-rooms-")));
    let p = start_config(&format!(
        "[xdp]\nmode = \"off\"\n\n[http]\nlisten = [\"127.0.0.1:{port}\"]\n\n\
         [threat]\nenabled = false\n{admin}\n[storage]\ndir = \"{dir}\"\n{jwt}\n\
         [[rooms]]\nname = \"docs\"\nbackend = \"redis\"\nredis_url = \"{url}\"\n\
         redis_prefix = \"{prefix}\"\nrelay_url = \"http://127.0.0.1:{port}\"\n\
         node_ttl = \"1500ms\"\nredis_timeout = \"300ms\"\n\n\
         [[route]]\nhosts = [\"rooms.test\"]\npath_prefix = \"/rooms\"\nhandler = {{ rooms = \"docs\" }}\n\
         [route.auth]\nprovider = \"hs\"\nmode = \"optional\"\n",
        admin = admin_section(),
        dir = data.0.display(),
        jwt = hs_provider(),
        url = redis.url(),
    ));
    (p, data)
}

/// Rooms live on a node (`edge_rooms_live`).
fn live_rooms(p: &Proxy) -> u64 {
    let (_, m) = p.admin("GET", "/metrics");
    m.lines()
        .find(|l| l.starts_with("edge_rooms_live{rooms=\"docs\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Joins `room` through `p`, retrying refusals (503 while the fleet settles) for up to
/// 15 s; the member and its init.
fn join_settled(p: &Proxy, room: &str, user: &str) -> (Member, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match join(p, room, Some(user)) {
            Ok(mut m) => {
                let init = m.recv();
                assert_eq!(init["type"], "init");
                return (m, init);
            }
            Err(503) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(s) => panic!("join {room}: {s}\n{}", p.node.log()),
        }
    }
}

#[test]
fn a_fleet_gives_each_room_one_owner_moves_rooms_to_a_new_node_and_relays_members() {
    let Some(redis) = edge_tests::redis::Redis::start(
        "a_fleet_gives_each_room_one_owner_moves_rooms_to_a_new_node_and_relays_members",
    ) else {
        return;
    };
    let prefix = unique("roomsfleet");
    let (pa, pb) = (free_port(), free_port());
    let (a, _da) = fleet_node(&redis, &prefix, pa);

    // A alone owns every room.
    const ROOMS: usize = 16;
    let mut first: Vec<Member> = Vec::new();
    for i in 0..ROOMS {
        let (mut m, _) = join_settled(&a, &format!("r{i}"), "alice");
        m.send(&json!({"type": "update", "state": {"room": i}}));
        assert_eq!(m.recv()["type"], "ack");
        first.push(m);
    }
    assert_eq!(live_rooms(&a), ROOMS as u64);

    // B joins the fleet: the rooms it now owns leave A, their members told to
    // reconnect (1012), and the states come along.
    let (b, _db) = fleet_node(&redis, &prefix, pb);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while live_rooms(&a) == ROOMS as u64 {
        assert!(std::time::Instant::now() < deadline, "no room moved to B");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut moved = Vec::new();
    for (i, m) in first.iter_mut().enumerate() {
        m.ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        match m.ws.read() {
            Ok(Message::Close(Some(c))) => {
                assert_eq!(c.code, CloseCode::Restart, "room r{i}");
                moved.push(i);
            }
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("room r{i}: {other:?}"),
        }
    }
    assert!(!moved.is_empty() && moved.len() < ROOMS, "{moved:?}");

    // Every room, joined through either node: one owner (each room live on exactly
    // one node), members on both nodes in one room, one order of messages, and the
    // state that was stored before the move.
    let mut members = Vec::new();
    for i in 0..ROOMS {
        let room = format!("r{i}");
        let (mut on_a, init_a) = join_settled(&a, &room, "carol");
        assert_eq!(init_a["state"], json!({"room": i}), "room {room}");
        let (mut on_b, init_b) = join_settled(&b, &room, "dave");
        assert_eq!(init_b["state"], json!({"room": i}), "room {room}");
        // Known by their tokens wherever the room is (a relayed member's token is
        // checked again by the owner).
        for (init, user) in [(&init_a, "carol#"), (&init_b, "dave#")] {
            assert!(
                init["you"].as_str().unwrap().starts_with(user),
                "room {room}: {init}"
            );
        }
        let you_a = init_a["you"].as_str().unwrap().to_string();
        assert!(
            init_b["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == &json!(you_a)),
            "room {room}: B's member does not see A's: {init_b}"
        );
        let joined = on_a.recv();
        assert_eq!(
            (joined["type"].as_str(), &joined["member"]),
            (Some("join"), &init_b["you"])
        );
        on_b.send(&json!({"type": "update", "state": {"room": i, "by": "dave"}}));
        let ack = on_b.recv();
        assert_eq!(ack["type"], "ack");
        let update = on_a.recv();
        assert_eq!(update["type"], "update");
        assert_eq!(update["seq"], ack["seq"], "room {room}: one order");
        assert_eq!(update["state"], json!({"room": i, "by": "dave"}));
        on_a.send(&json!({"type": "message", "data": "hi"}));
        let msg = on_b.recv();
        assert_eq!(
            (msg["type"].as_str(), msg["data"].as_str()),
            (Some("message"), Some("hi"))
        );
        members.push((on_a, on_b));
    }
    assert_eq!(
        live_rooms(&a) + live_rooms(&b),
        ROOMS as u64,
        "a room is live on one node only"
    );
    assert_eq!(live_rooms(&b), moved.len() as u64);

    // A join marked as relayed is served by the owner only: a node that does not own
    // the room refuses it rather than relay it on (no loops, whatever relay_url says).
    let on_b = moved[0];
    let addr = a.addr();
    let stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("ws://{addr}/rooms/r{on_b}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", HeaderValue::from_static("rooms.test"));
    req.headers_mut()
        .insert("edge-room-relay", HeaderValue::from_static("1"));
    match tungstenite::client::client(req, stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("a relayed join at a non-owner: {:?}", other.map(|_| ())),
    }

    // B stops cleanly: its rooms are stored and closed (members told to reconnect,
    // the relayed ones included), and A takes them over from the stored states.
    let (mut b, _db) = (b, _db);
    b.node.stop();
    for (i, (on_a, _)) in members.iter_mut().enumerate() {
        if moved.contains(&i) {
            assert_eq!(on_a.closed(), Some(CloseCode::Restart), "room r{i}");
            let (_, init) = join_settled(&a, &format!("r{i}"), "erin");
            assert_eq!(init["state"], json!({"room": i, "by": "dave"}));
        }
    }
}

#[test]
fn a_room_whose_owner_dies_is_taken_over_from_its_stored_state() {
    let Some(redis) = edge_tests::redis::Redis::start(
        "a_room_whose_owner_dies_is_taken_over_from_its_stored_state",
    ) else {
        return;
    };
    let prefix = unique("roomsfleet");
    let (mut a, _da) = fleet_node(&redis, &prefix, free_port());
    let (b, _db) = fleet_node(&redis, &prefix, free_port());
    // Both registered (A's view may still lack B: joins through B wait it out).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while redis.cli(&["ZCARD", &format!("{prefix}:docs:nodes")]) != "2" {
        assert!(std::time::Instant::now() < deadline, "nodes not registered");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A room that A owns, joined through B (relayed) and through A.
    let mut found = None;
    for i in 0..64 {
        let room = format!("t{i}");
        let before = live_rooms(&a);
        let (m, _) = join_settled(&b, &room, "bob");
        if live_rooms(&a) == before + 1 {
            found = Some((room, m));
            break;
        }
    }
    let (room, mut via_b) = found.expect("A owns one of 64 rooms");
    let (mut on_a, _) = join_settled(&a, &room, "alice");
    assert_eq!(via_b.recv()["type"], "join");
    via_b.send(&json!({"type": "update", "state": {"doc": "kept"}}));
    let ack = via_b.recv();
    assert_eq!(ack["type"], "ack");
    assert_eq!(on_a.recv()["state"], json!({"doc": "kept"}));

    // A dies: the relayed member is told to reconnect, and B takes the room over
    // from the state A stored (persist_window = 0: stored before the ack).
    a.node.sigkill();
    assert_eq!(via_b.closed(), Some(CloseCode::Restart));
    let (mut again, init) = join_settled(&b, &room, "bob");
    assert_eq!(init["state"], json!({"doc": "kept"}));
    assert_eq!(
        init["seq"], ack["seq"],
        "the sequence goes on from the stored one"
    );
    assert!(live_rooms(&b) >= 1);
    again.send(&json!({"type": "update", "state": {"doc": "after"}}));
    assert_eq!(again.recv()["type"], "ack");
    // A's registration lapsed and is gone from the registry.
    assert_eq!(
        redis.cli(&["ZRANGE", &format!("{prefix}:docs:nodes"), "0", "-1"]),
        format!("http://{}", b.addr())
    );
}
