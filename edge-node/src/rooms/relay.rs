//! A member that connected to a node which does not own its room: the node opens the
//! same WebSocket to the owner (the member's host, path and credentials, the
//! forwarding headers, and a mark that it is relayed so the owner never relays it on)
//! and copies messages both ways. The owner checks the member's access and the
//! room's limits as for any member; this side keeps the member's connection alive
//! (pings) and bounds every write to it.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};
use tracing::debug;

/// Marks a join relayed by another node of the fleet: served by the owner, refused
/// (503) by any other node, never relayed again (so a `relay_url` that leads back to a
/// non-owner costs one hop, not a loop). It grants nothing: a client sending it only
/// gets itself refused by non-owners. (Not `x-edge-…`: the early phase removes those.)
pub const RELAYED: HeaderName = HeaderName::from_static("edge-room-relay");

/// What a member's request carries on to the owner (credentials and what identifies
/// the client to the route's phases); the forwarding headers are set by
/// `phases::forwarding`.
const CARRIED: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::USER_AGENT,
    header::ORIGIN,
];

/// Longest wait for the owner to accept the relayed WebSocket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// As for a member served here (`member`).
const PING_EVERY: Duration = Duration::from_secs(30);
/// The owner is pinged more often: one that died without closing (power, partition)
/// must not leave the member waiting on a silent socket.
const OWNER_PING_EVERY: Duration = Duration::from_secs(5);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the owner did not take the relayed member.
#[derive(Debug)]
pub enum Failed {
    /// Not reachable or not answering in time (it may have just died): try again.
    Unreachable(String),
    /// It answered the upgrade with this status (a refusal of its own: full, 401…).
    Refused(StatusCode),
}

/// The opening request to the owner at `owner_addr`: `host`, `path_and_query` and
/// the carried headers of the member's request `from`, and the `Authorization` it
/// was verified with here (the auth phase removed it from `from`).
pub fn request<B>(
    from: &Request<B>,
    host: &str,
    owner_addr: &str,
    authorization: Option<HeaderValue>,
) -> Result<Request<()>, http::Error> {
    let path = from
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut req = Request::builder()
        .uri(format!("ws://{owner_addr}{path}"))
        .header(header::HOST, host)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(
            header::SEC_WEBSOCKET_KEY,
            tungstenite::handshake::client::generate_key(),
        )
        .header(RELAYED, HeaderValue::from_static("1"))
        .body(())?;
    for name in CARRIED {
        for v in from.headers().get_all(&name) {
            req.headers_mut().append(name.clone(), v.clone());
        }
    }
    if let Some(v) = authorization {
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    Ok(req)
}

/// Opens the relayed WebSocket to the owner.
pub async fn connect(
    owner_url: &str,
    req: Request<()>,
) -> Result<WebSocketStream<TcpStream>, Failed> {
    let opened = async {
        let addr = super::fleet::resolve(owner_url)
            .await
            .map_err(|e| Failed::Unreachable(e.to_string()))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Failed::Unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let config = tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(super::member::READ_BUFFER);
        match tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => Err(Failed::Refused(resp.status())),
            Err(e) => Err(Failed::Unreachable(e.to_string())),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, opened)
        .await
        .unwrap_or_else(|_| Err(Failed::Unreachable("no answer in time".into())))
}

/// Copies messages between the member and the owner until either ends; the other
/// side gets the same close (an owner gone: 1012, reconnect).
pub async fn pipe<C, O>(mut member: WebSocketStream<C>, mut owner: WebSocketStream<O>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    O: AsyncRead + AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut ping_owner = tokio::time::interval(OWNER_PING_EVERY);
    ping_owner.reset();
    let mut heard = tokio::time::Instant::now();
    let mut owner_heard = heard;
    let gone = || close(CloseCode::Restart, "room owner gone; reconnect");
    let (to_member, to_owner): (Option<CloseFrame>, Option<CloseFrame>) = loop {
        tokio::select! {
            msg = owner.next() => {
                owner_heard = tokio::time::Instant::now();
                match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    let sent = tokio::time::timeout(SEND_TIMEOUT, member.send(m)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break (None, Some(close(CloseCode::Away, "member gone")));
                    }
                }
                Some(Ok(Message::Close(frame))) => break (frame, None),
                // Pings are answered by the library; the member's liveness is kept here.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    debug!(error = %e, "relayed room's owner connection ended");
                    break (Some(gone()), None);
                }
                None => break (Some(gone()), None),
                }
            },
            _ = ping_owner.tick() => {
                if owner_heard.elapsed() > 3 * OWNER_PING_EVERY {
                    break (Some(gone()), Some(close(CloseCode::Away, "no answer to pings")));
                }
                let sent = tokio::time::timeout(SEND_TIMEOUT, owner.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break (Some(gone()), None);
                }
            }
            msg = member.next() => {
                heard = tokio::time::Instant::now();
                match msg {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        let sent = tokio::time::timeout(SEND_TIMEOUT, owner.send(m)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break (Some(gone()), None);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => break (None, frame.or(Some(close(CloseCode::Normal, "")))),
                    Some(Ok(_)) => {}
                    Some(Err(tungstenite::Error::Capacity(_))) => {
                        break (Some(close(CloseCode::Size, "message too large")), Some(close(CloseCode::Away, "member gone")));
                    }
                    Some(Err(_)) | None => break (None, Some(close(CloseCode::Away, "member gone"))),
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > 2 * PING_EVERY {
                    break (Some(close(CloseCode::Away, "no answer to pings")), Some(close(CloseCode::Away, "member gone")));
                }
                let sent = tokio::time::timeout(SEND_TIMEOUT, member.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break (None, Some(close(CloseCode::Away, "member gone")));
                }
            }
        }
    };
    // Both closes bounded: a side that does not read may never take its close.
    let bounded = Duration::from_secs(1);
    let _ = tokio::time::timeout(bounded, member.close(to_member)).await;
    let _ = tokio::time::timeout(bounded, owner.close(to_owner)).await;
}

fn close(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
