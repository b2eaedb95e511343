//! `handler = { rooms = "name" }`: `GET <prefix>/<room>` with a WebSocket upgrade (or,
//! over HTTP/2, an extended CONNECT) joins the room (`crate::rooms`). The member is known by the route's JWT identity (its
//! `sub`, or `anonymous`) and a number for the connection; who may join is the
//! route's `[route.auth]`. In a fleet (`backend = "redis"`), a member whose room another
//! node owns is relayed there (`rooms::relay`).

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};
use tracing::debug;

use super::kv::{name_after_prefix, refuse};
use crate::{
    error::{Body, EdgeError, ErrorKind, empty},
    phases::forwarding,
    phases::upgrade,
    request::{Handler, HandlerFuture, RequestCtx},
    rooms::{Placement, Refused, Rooms, member, relay},
};

/// Longest room id (bytes).
const MAX_ROOM_ID: usize = 256;

pub struct RoomsHandler {
    pub rooms: Arc<Rooms>,
    pub path_prefix: String,
}

impl Handler for RoomsHandler {
    fn name(&self) -> &'static str {
        "rooms"
    }

    fn handle<'a>(&'a self, ctx: &'a mut RequestCtx, mut req: Request<Body>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let Some(id) = name_after_prefix(req.uri().path(), &self.path_prefix)? else {
                return Err(refuse(ErrorKind::NotFound, "name a room: <prefix>/<room>"));
            };
            if id.len() > MAX_ROOM_ID {
                return Err(refuse(
                    ErrorKind::UriTooLong,
                    "room ids are at most 256 bytes",
                ));
            }
            let (client, accept) = websocket_handshake(ctx, &mut req)?;
            // A relayed join is served by the owner or refused, never relayed again.
            if let Placement::Owner(owner) = self.rooms.placement(&id)
                && !req.headers().contains_key(relay::RELAYED)
            {
                return self.relay(ctx, &req, client, accept, &owner).await;
            }
            let who = ctx.user.as_deref().unwrap_or("anonymous");
            let joined = self.rooms.join(&id, who).await.map_err(|e| {
                let retry = match e {
                    Refused::RoomFull | Refused::TooManyRooms => "5",
                    // The fleet settles within a renewal period.
                    Refused::Closing | Refused::NotOwner | Refused::NoFleet => "1",
                };
                refuse(ErrorKind::Unavailable, e.to_string())
                    .with_header(header::RETRY_AFTER, retry)
            })?;
            let rooms = self.rooms.clone();
            tokio::spawn(async move {
                match client.await {
                    Ok(io) => {
                        let ws = WebSocketStream::from_raw_socket(
                            TokioIo::new(io),
                            Role::Server,
                            Some(member::config(&rooms)),
                        )
                        .await;
                        member::serve(rooms, joined, ws).await;
                    }
                    Err(e) => {
                        debug!(error = %e, "websocket upgrade did not complete");
                        let _ = joined
                            .room
                            .send(crate::rooms::Event::Leave {
                                member: joined.member,
                            })
                            .await;
                    }
                }
            });
            Ok(switched(accept))
        })
    }
}

impl RoomsHandler {
    /// Joins the member to its room at `owner` through this node: the owner's
    /// WebSocket first (its refusal is the member's answer), then the member's.
    async fn relay(
        &self,
        ctx: &mut RequestCtx,
        req: &Request<Body>,
        client: OnUpgrade,
        accept: Option<HeaderValue>,
        owner: &str,
    ) -> Result<Response<Body>, EdgeError> {
        let (host, port) = crate::rooms::fleet::relay_address(owner)
            .map_err(|e| refuse(ErrorKind::Unavailable, e.to_string()))?;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let presented = ctx
            .state
            .take::<crate::phases::auth::Presented>()
            .map(|p| p.0);
        let mut out = relay::request(req, &ctx.host, &authority, presented)
            .map_err(|e| refuse(ErrorKind::BadRequest, e.to_string()))?;
        forwarding::set(ctx, &mut out);
        let upstream = relay::connect(owner, out).await.map_err(|f| match f {
            relay::Failed::Unreachable(why) => {
                debug!(%owner, %why, "room owner unreachable");
                refuse(ErrorKind::Unavailable, "the room's node is not reachable")
                    .with_header(header::RETRY_AFTER, "1")
            }
            relay::Failed::Refused(status) => {
                let kind = match status.as_u16() {
                    401 => ErrorKind::Unauthorized,
                    403 => ErrorKind::Forbidden,
                    404 => ErrorKind::NotFound,
                    429 => ErrorKind::TooManyRequests,
                    503 => ErrorKind::Unavailable,
                    _ => ErrorKind::UpstreamFailed,
                };
                refuse(kind, format!("the room's node answered {status}"))
                    .with_header(header::RETRY_AFTER, "1")
            }
        })?;
        let config = member::config(&self.rooms);
        tokio::spawn(async move {
            match client.await {
                Ok(io) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(io),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    relay::pipe(ws, upstream).await;
                }
                Err(e) => debug!(error = %e, "websocket upgrade did not complete"),
            }
        });
        Ok(switched(accept))
    }
}

/// The answer that opens the member's WebSocket.
fn switched(accept: Option<HeaderValue>) -> Response<Body> {
    let mut resp = Response::new(empty());
    match accept {
        // HTTP/1.1: 101 with the key's answer.
        Some(accept) => {
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        // HTTP/2 extended CONNECT: a 200 opens the stream as the tunnel.
        None => *resp.status_mut() = StatusCode::OK,
    }
    resp
}

/// A WebSocket opening handshake: over HTTP/1.1 (RFC 6455 4.2.1: GET, `Upgrade:
/// websocket`, version 13, a 16-byte key; answered with its accept value), or over
/// HTTP/2 (RFC 8441: CONNECT with `:protocol` websocket and version 13; answered 200).
/// Anything else: 426 naming what to send.
fn websocket_handshake(
    ctx: &mut RequestCtx,
    req: &mut Request<Body>,
) -> Result<(OnUpgrade, Option<HeaderValue>), EdgeError> {
    let upgrade_required = |why: &str| {
        refuse(ErrorKind::UpgradeRequired, why.to_string())
            .with_header(header::UPGRADE, "websocket")
            .with_header(header::SEC_WEBSOCKET_VERSION, "13")
    };
    let version_13 = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        == Some(b"13");
    if req.method() == Method::CONNECT {
        let websocket = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if !websocket {
            return Err(upgrade_required(
                "extended CONNECT with :protocol websocket",
            ));
        }
        if !version_13 {
            return Err(upgrade_required("Sec-WebSocket-Version: 13"));
        }
        return Ok((hyper::upgrade::on(req), None));
    }
    if req.method() != Method::GET {
        return Err(
            refuse(ErrorKind::MethodNotAllowed, "rooms are joined with GET")
                .with_header(header::ALLOW, "GET"),
        );
    }
    let Some(upgrade) = ctx.state.take::<upgrade::Requested>() else {
        return Err(upgrade_required("a room is joined over a WebSocket"));
    };
    if !upgrade
        .protocol()
        .as_bytes()
        .eq_ignore_ascii_case(b"websocket")
    {
        return Err(upgrade_required("only websocket"));
    }
    if !version_13 {
        return Err(upgrade_required("Sec-WebSocket-Version: 13"));
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .filter(|k| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k)
                .is_ok_and(|d| d.len() == 16)
        })
        .ok_or_else(|| {
            refuse(
                ErrorKind::BadRequest,
                "Sec-WebSocket-Key is 16 bytes in base64",
            )
        })?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    let accept = HeaderValue::from_str(&accept).expect("base64 is a header value");
    Ok((upgrade.into_client(), Some(accept)))
}
