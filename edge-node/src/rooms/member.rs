//! One member's WebSocket: what it sends goes to its room (checked: JSON of a known
//! type, within the rate), what the room sends it goes out in order; a ping keeps a
//! quiet connection known alive, and one silent for two ping periods is closed.

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tracing::debug;

use super::{Event, Joined, Rooms};
use crate::limits::Bucket;

const PING_EVERY: Duration = Duration::from_secs(30);
/// Longest a write to a member may wait for its socket (a member that does not read
/// keeps the TCP window shut).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow, default)]
    state: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Bytes a member's connection reads at once. tungstenite's default (128 KiB, zeroed
/// on the first read) was most of the ~150 KiB a member cost; messages are small and
/// a larger one still arrives, over more reads.
pub const READ_BUFFER: usize = 8 << 10;

/// The framing limits of a member's connection.
pub fn config(rooms: &Rooms) -> WebSocketConfig {
    let max = rooms.settings.max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// The close for a member the room let go: the room closed here (it moved to another
/// node or the node stops: reconnect), or the member was too slow.
fn kicked_by(
    kick: Result<(), tokio::sync::oneshot::error::RecvError>,
) -> (CloseCode, &'static str) {
    match kick {
        Ok(()) => (CloseCode::Restart, "room closed; reconnect"),
        Err(_) => (CloseCode::Policy, "too slow: messages piled up"),
    }
}

/// Serves `joined` over `ws` until either side ends it; the room is told the member left.
pub async fn serve<S>(rooms: Arc<Rooms>, joined: Joined, mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Joined {
        member,
        room,
        mut inbox,
        mut kicked,
    } = joined;
    let s = &rooms.settings;
    let mut bucket = Bucket::new(s.messages_per_second, s.message_burst);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut heard = tokio::time::Instant::now();
    let close = loop {
        tokio::select! {
            out = inbox.recv() => match out {
                // A write waits for the socket: while it does, a kick or a shut window
                // still ends the member.
                Some(text) => tokio::select! {
                    sent = tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::Text(text))) => {
                        if !matches!(sent, Ok(Ok(()))) {
                            break None;
                        }
                    }
                    kick = &mut kicked => break Some(kicked_by(kick)),
                },
                // The room stopped here (moved to another node of the fleet, or
                // the node stops): the member reconnects.
                None => break Some((CloseCode::Restart, "room closed; reconnect")),
            },
            kick = &mut kicked => break Some(kicked_by(kick)),
            _ = ping.tick() => {
                if heard.elapsed() > 2 * PING_EVERY {
                    break Some((CloseCode::Away, "no answer to pings"));
                }
                let sent = tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::Ping(Default::default())));
                if !matches!(sent.await, Ok(Ok(()))) {
                    break None;
                }
            }
            msg = ws.next() => {
                heard = tokio::time::Instant::now();
                let text = match msg {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                        break Some((CloseCode::Size, "message too large"));
                    }
                    Some(Err(e)) => {
                        debug!(%member, error = %e, "member connection failed");
                        break None;
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        break Some((CloseCode::Unsupported, "text (JSON) messages only"));
                    }
                    Some(Ok(_)) => continue,
                };
                if !bucket.admit(crate::clock::now_ns()) {
                    break Some((CloseCode::Policy, "over the message rate"));
                }
                let event = match serde_json::from_str::<Incoming<'_>>(&text) {
                    Ok(Incoming { kind: "update", state: Some(state), .. }) => Event::Update {
                        member: member.clone(),
                        state: state.to_owned(),
                    },
                    Ok(Incoming { kind: "message", data: Some(data), .. }) => Event::Message {
                        member: member.clone(),
                        data: data.to_owned(),
                    },
                    _ => {
                        let err = r#"{"type":"error","error":"expected {\"type\":\"update\",\"state\":…} or {\"type\":\"message\",\"data\":…}"}"#;
                        if ws.send(Message::text(err)).await.is_err() {
                            break None;
                        }
                        continue;
                    }
                };
                if room.send(event).await.is_err() {
                    break Some((CloseCode::Away, "room closed"));
                }
            }
        }
    };
    // The inbox goes now (a kicked member's backlog is freed before the close).
    drop(inbox);
    let told = room
        .try_send(Event::Leave {
            member: member.clone(),
        })
        .is_ok();
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // A member that does not read may never take the close: bounded.
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
    }
    // A leave that found the room's inbox full is sent once there is room.
    if !told {
        let _ = room.send(Event::Leave { member }).await;
    }
}
