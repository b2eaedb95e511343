//! Rooms: durable real-time state shared by the WebSocket members of a room (the
//! Durable Objects model). Each live room is one task that owns its state and gives
//! every event the next sequence number, so all members see one order; its state is
//! kept in the node's store (`@rooms-<name>` in the KV store) and survives a restart.
//!
//! The protocol, JSON text messages:
//! - to a member on join: `{"type":"init","room","you","members","seq","state"}`;
//! - from a member: `{"type":"update","state":…}` (stored, then sent to the others;
//!   the sender gets `{"type":"ack","seq"}`), or `{"type":"message","data":…}` (sent
//!   to the others, not stored: cursors, typing);
//! - to the others: `{"type":"update","seq","from","state"}`,
//!   `{"type":"message","seq","from","data"}`, `{"type":"join"|"leave","seq","member"}`;
//! - `{"type":"error","error"}` for a message refused (malformed, not stored).
//!
//! Limits: members per room and live rooms per node (503 before the upgrade), message
//! size (close 1009), messages per member per second (GCRA; close 1008), and a bounded
//! queue per member: a member that does not read is disconnected (1008), never the
//! room held up.
//!
//! With `backend = "redis"` the nodes of a fleet share the rooms: each room has one
//! owner (`fleet`), members connecting elsewhere are relayed to it (`relay`), and a
//! room whose owner changes is stored and closed, its members told to reconnect
//! (1012).

pub mod fleet;
pub mod member;
pub mod relay;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Result, bail};
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, warn};

use crate::kv::{Condition, Entry, Quota, Store, Write, WriteError, Written};
pub use fleet::Placement;

/// `[[rooms]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsSettings {
    /// What routes name it by (`handler = { rooms = "name" }`).
    pub name: String,
    /// Members of one room at once; one more gets 503 before the upgrade.
    #[serde(default = "default_max_members")]
    pub max_members: usize,
    /// Rooms live on this node at once (each with members, or idle within
    /// `idle_after`); a join that would open one more gets 503.
    #[serde(default = "default_max_rooms")]
    pub max_rooms: usize,
    /// Largest message from a member, and so largest state (close 1009 beyond).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Messages a member may send per second, sustained…
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: f64,
    /// …and in a burst; beyond: close 1008.
    #[serde(default = "default_message_burst")]
    pub message_burst: u64,
    /// Messages waiting for one member; a member that lets more pile up is disconnected.
    #[serde(default = "default_member_queue")]
    pub member_queue: usize,
    /// `0s`: a state is stored before it is sent on (and acknowledged); more: stored
    /// at most this long after it changed (write-behind; a crash may lose that much).
    #[serde(default, with = "crate::duration")]
    pub persist_window: Duration,
    /// A room without members leaves memory after this (its state stays stored).
    #[serde(default = "default_idle_after", with = "crate::duration")]
    pub idle_after: Duration,
    /// Rooms whose state is stored at most (a new room's first state beyond: refused).
    #[serde(default = "default_max_stored_rooms")]
    pub max_stored_rooms: u64,
    /// `local` (this node's rooms, states in its store) or `redis`: a fleet of nodes
    /// naming the same Redis and prefix, one owner per room (`rooms::fleet`), states
    /// kept in Redis.
    #[serde(default)]
    pub backend: crate::kv::Backend,
    /// `redis://[user:password@]host:port[/db]` (backend = "redis").
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Prefix of the fleet's keys in Redis (nodes sharing it share the rooms).
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// Longest wait for Redis (a state load or store, a registration).
    #[serde(default = "default_redis_timeout", with = "crate::duration")]
    pub redis_timeout: Duration,
    /// Where the other nodes reach this node's plain-HTTP listener to relay members
    /// to the rooms it owns, `http://host:port` (backend = "redis"; it also names the
    /// node in the fleet, so it is unique to the node).
    #[serde(default)]
    pub relay_url: Option<String>,
    /// A node that has not renewed its registration for this long is gone: its rooms
    /// are taken over (renewed every third of it).
    #[serde(default = "default_node_ttl", with = "crate::duration")]
    pub node_ttl: Duration,
}

fn default_redis_prefix() -> String {
    "edge-rooms".into()
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(250)
}
fn default_node_ttl() -> Duration {
    Duration::from_secs(3)
}

fn default_max_members() -> usize {
    1000
}
fn default_max_rooms() -> usize {
    10_000
}
fn default_max_message_bytes() -> usize {
    64 << 10
}
fn default_messages_per_second() -> f64 {
    20.0
}
fn default_message_burst() -> u64 {
    40
}
fn default_member_queue() -> usize {
    256
}
fn default_idle_after() -> Duration {
    Duration::from_secs(30)
}
fn default_max_stored_rooms() -> u64 {
    100_000
}

impl RoomsSettings {
    pub fn validate(&self) -> Result<()> {
        let n = &self.name;
        crate::kv::check_name("rooms", n)?;
        if self.max_members == 0 || self.max_rooms == 0 || self.member_queue == 0 {
            bail!("rooms {n}: max_members, max_rooms and member_queue must be above 0");
        }
        if !(64..=16 << 20).contains(&self.max_message_bytes) {
            bail!("rooms {n}: max_message_bytes must be 64 B to 16 MiB");
        }
        if !self.messages_per_second.is_finite()
            || self.messages_per_second <= 0.0
            || self.message_burst == 0
        {
            bail!("rooms {n}: messages_per_second and message_burst must be above 0");
        }
        if self.persist_window > Duration::from_secs(60) {
            bail!("rooms {n}: persist_window is at most 60s");
        }
        if self.max_stored_rooms == 0 {
            bail!("rooms {n}: max_stored_rooms must be above 0");
        }
        match (self.backend, &self.redis_url, &self.relay_url) {
            (crate::kv::Backend::Local, None, None) => {}
            (crate::kv::Backend::Local, _, _) => {
                bail!("rooms {n}: redis_url and relay_url are for backend = \"redis\"")
            }
            (crate::kv::Backend::Redis, Some(url), Some(relay)) => {
                redis::Client::open(url.as_str())
                    .map_err(|e| anyhow::anyhow!("rooms {n}: redis_url: {e}"))?;
                fleet::relay_address(relay).map_err(|e| anyhow::anyhow!("rooms {n}: {e}"))?;
                if self.node_ttl < Duration::from_millis(300)
                    || self.node_ttl > Duration::from_secs(60)
                {
                    bail!("rooms {n}: node_ttl must be 300ms to 60s");
                }
                // The lease is node_ttl - redis_timeout, renewed every third of node_ttl:
                // a renewal may fail once and the node still owns its rooms.
                if self.redis_timeout.is_zero() || self.redis_timeout * 4 > self.node_ttl {
                    bail!(
                        "rooms {n}: redis_timeout must be above 0 and at most a quarter of node_ttl"
                    );
                }
            }
            (crate::kv::Backend::Redis, _, _) => {
                bail!("rooms {n}: backend = \"redis\" needs redis_url and relay_url")
            }
        }
        Ok(())
    }

    /// The store namespace of the rooms' states: no `[[kv]]` name can be it.
    fn namespace(&self) -> String {
        format!("@rooms-{}", self.name)
    }
}

/// Why a join was refused (503 before the upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the room has its most members")]
    RoomFull,
    #[error("the node has its most live rooms")]
    TooManyRooms,
    #[error("the room is closing")]
    Closing,
    #[error("another node owns the room")]
    NotOwner,
    #[error("the node cannot reach the fleet's registry")]
    NoFleet,
}

/// What a room sends a member: a text message, or the end.
pub type Outbox = mpsc::Sender<Utf8Bytes>;

/// A member's way into the room, from the join.
pub struct Joined {
    pub member: String,
    pub room: mpsc::Sender<Event>,
    pub inbox: mpsc::Receiver<Utf8Bytes>,
    /// Resolves when the room disconnects the member: `Ok` when the room closed here
    /// (the member reconnects), an error when the member was too slow.
    pub kicked: oneshot::Receiver<()>,
}

pub enum Event {
    Join {
        member: String,
        outbox: Outbox,
        kick: oneshot::Sender<()>,
        reply: oneshot::Sender<Result<(), Refused>>,
    },
    Leave {
        member: String,
    },
    Update {
        member: String,
        state: Box<RawValue>,
    },
    Message {
        member: String,
        data: Box<RawValue>,
    },
    /// Store what is not stored yet, then answer (at shutdown).
    Flush(oneshot::Sender<()>),
}

/// One `[[rooms]]` on this node: its live rooms by id.
pub struct Rooms {
    pub settings: RoomsSettings,
    store: Arc<Store>,
    /// `backend = "redis"`: the fleet's registry, and the rooms' states in Redis.
    fleet: Option<(Arc<fleet::Registry>, crate::kv::fleet::Fleet)>,
    fleet_started: std::sync::Once,
    live: Mutex<HashMap<String, mpsc::Sender<Event>>>,
    /// Rooms in memory, and members connected (`/metrics`).
    live_gauge: Gauge,
    members_gauge: Gauge,
    /// Numbers the members (one user's two tabs are two members); shared by every
    /// route and pipeline that serves these rooms, so a number is never given twice.
    next_member: std::sync::atomic::AtomicU64,
}

/// Events waiting for a room at most (members sending more wait).
const ROOM_INBOX: usize = 1024;

impl Rooms {
    /// `gauges`: rooms in memory, members connected. A fleet's Redis is connected on
    /// first use (`start`).
    pub fn new(settings: RoomsSettings, store: Arc<Store>, gauges: (Gauge, Gauge)) -> Result<Self> {
        let fleet = match settings.backend {
            crate::kv::Backend::Local => None,
            crate::kv::Backend::Redis => Some((
                Arc::new(fleet::Registry::connect(&settings)?),
                crate::kv::fleet::Fleet::connect(
                    settings.redis_url.as_deref().unwrap_or_default(),
                    &settings.redis_prefix,
                    settings.redis_timeout,
                )?,
            )),
        };
        Ok(Self {
            settings,
            store,
            fleet,
            fleet_started: std::sync::Once::new(),
            live: Mutex::default(),
            live_gauge: gauges.0,
            members_gauge: gauges.1,
            next_member: Default::default(),
        })
    }

    /// Joins the fleet (`backend = "redis"`; once): registers this node, renews the
    /// registration and tells the rooms when owners may have changed, for as long as
    /// the rooms are in use and the node is not stopping; then leaves it.
    pub fn start(self: &Arc<Self>) {
        let Some((registry, _)) = &self.fleet else {
            return;
        };
        let (rooms, registry) = (Arc::downgrade(self), registry.clone());
        let name = self.settings.name.clone();
        self.fleet_started.call_once(|| {
            tokio::spawn(async move {
                while rooms.strong_count() > 0 && !registry.stopping() {
                    let renewed = registry.renew().await;
                    if let Err(e) = &renewed {
                        warn!(rooms = %name, error = %e, "fleet registration not renewed");
                    }
                    // Also after a failure: a lease that ran out closes the rooms.
                    registry.notify();
                    tokio::time::sleep(registry.renew_every(renewed.is_err())).await;
                }
                // Removed by a reload: the others take the rooms over now. (A stop
                // leaves in `flush`, once the rooms are stored.)
                if !registry.stopping() {
                    registry.leave().await;
                }
            });
        });
    }

    /// Where room `id` lives: here, at another node of the fleet, or (this node cut
    /// off from the fleet) nowhere it can tell. The one place ownership is decided.
    pub fn placement(&self, id: &str) -> Placement {
        match &self.fleet {
            None => Placement::Here,
            Some((registry, _)) => registry.placement(id),
        }
    }

    /// The stored state of room `id` (`None`: never stored).
    async fn load_state(&self, id: &str) -> Result<Option<Entry>, WriteError> {
        let ns = self.settings.namespace();
        match &self.fleet {
            Some((_, states)) => states.get(&ns, id).await,
            None => self.store.get(&ns, id),
        }
    }

    /// Stores a state (fenced by the write's condition).
    async fn store_state(&self, write: Write) -> Result<Written, WriteError> {
        match &self.fleet {
            Some((_, states)) => states.write(&write).await,
            None => self.store.write(write).await,
        }
    }

    pub fn live_rooms(&self) -> usize {
        crate::sync::lock(&self.live).len()
    }

    /// Stores every live room's state that is not stored yet (write-behind), each
    /// within `wait`.
    pub async fn flush(&self, wait: Duration) {
        // A fleet's rooms close here (each stored first, members told to reconnect),
        // then the node leaves the registry: the others take the rooms over from the
        // stored states at once.
        if let Some((registry, _)) = &self.fleet {
            registry.stop();
            let deadline = tokio::time::Instant::now() + wait;
            while self.live_rooms() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            registry.leave().await;
            return;
        }
        let rooms: Vec<mpsc::Sender<Event>> =
            crate::sync::lock(&self.live).values().cloned().collect();
        for room in rooms {
            let (done, flushed) = oneshot::channel();
            if room.send(Event::Flush(done)).await.is_ok() {
                let _ = tokio::time::timeout(wait, flushed).await;
            }
        }
    }

    /// Joins `who` (a user, or `anonymous`) to room `id` as member `<who>#<n>`, starting
    /// the room if it is not live. On success the member's first message (init) is
    /// already in its inbox.
    pub async fn join(self: &Arc<Self>, id: &str, who: &str) -> Result<Joined, Refused> {
        let n = self
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.placement(id) {
            Placement::Here => {}
            Placement::Owner(_) => return Err(Refused::NotOwner),
            Placement::Unknown => return Err(Refused::NoFleet),
        }
        let member = format!("{who}#{n}");
        let (outbox, inbox) = mpsc::channel(self.settings.member_queue);
        let (kick, kicked) = oneshot::channel();
        let (reply, replied) = oneshot::channel();
        let room = {
            let mut live = crate::sync::lock(&self.live);
            match live.get(id) {
                Some(r) => r.clone(),
                None => {
                    if live.len() >= self.settings.max_rooms {
                        return Err(Refused::TooManyRooms);
                    }
                    let (tx, rx) = mpsc::channel(ROOM_INBOX);
                    live.insert(id.to_string(), tx.clone());
                    tokio::spawn(self.clone().run(id.to_string(), rx));
                    tx
                }
            }
        };
        room.send(Event::Join {
            member: member.clone(),
            outbox,
            kick,
            reply,
        })
        .await
        .map_err(|_| Refused::Closing)?;
        replied.await.map_err(|_| Refused::Closing)??;
        Ok(Joined {
            member,
            room,
            inbox,
            kicked,
        })
    }

    /// The life of room `id`: load, serve events in order, leave memory when idle
    /// (or when the fleet moved it).
    async fn run(self: Arc<Self>, id: String, mut events: mpsc::Receiver<Event>) {
        let mut changes = self.fleet.as_ref().map(|(r, _)| r.changes());
        let mut room = match Room::load(&self, &id).await {
            Ok(r) => r,
            Err(e) => {
                // Starting empty would overwrite the stored state: the joins waiting
                // are refused (503) instead.
                warn!(room = %id, error = %e, "room state unreadable; room not opened");
                crate::sync::lock(&self.live).remove(&id);
                return;
            }
        };
        self.live_gauge.inc();
        loop {
            let idle = room.members.is_empty();
            let flush_at = room.flush_at;
            tokio::select! {
                biased;
                // The fleet first: a room no longer here serves nothing more.
                Ok(()) = changed(&mut changes) => {
                    if self.placement(&id) != Placement::Here {
                        // Out of the registry first: a join now is relayed to (or
                        // waits for) the new owner, which loads what is stored here.
                        crate::sync::lock(&self.live).remove(&id);
                        debug!(room = %id, "the room is no longer this node's");
                        break;
                    }
                }
                event = events.recv() => match event {
                    Some(e) => {
                        if room.handle(&self, e).await == Go::Close {
                            crate::sync::lock(&self.live).remove(&id);
                            break;
                        }
                    }
                    None => break,
                },
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    if room.persist(&self).await == Go::Close {
                        crate::sync::lock(&self.live).remove(&id);
                        break;
                    }
                }
                () = tokio::time::sleep(self.settings.idle_after), if idle => {
                    // Stored before the room leaves the registry: a join after that
                    // loads this state, not an older one.
                    if room.flush_at.is_some() {
                        room.persist(&self).await;
                    }
                    // Leave the registry only if nothing is waiting (a join queued
                    // meanwhile is served first; one that has the sender but has not
                    // sent yet finds the room closed and gets a 503).
                    let mut live = crate::sync::lock(&self.live);
                    if events.is_empty() && room.flush_at.is_none() {
                        live.remove(&id);
                        break;
                    }
                }
            }
        }
        if room.flush_at.is_some() {
            room.persist(&self).await;
        }
        // Stored first: a member reconnecting elsewhere finds the state.
        room.members_gauge.dec_by(room.members.len() as i64);
        for m in std::mem::take(&mut room.members) {
            let _ = m.kick.send(());
        }
        self.live_gauge.dec();
        debug!(room = %id, "room left memory");
    }
}

/// The next change of the fleet's owners (never, without a fleet).
async fn changed(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Result<(), ()> {
    match changes {
        Some(c) => c.changed().await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

/// Whether a room goes on after an event, or closes here (another node owns it now,
/// or its state could not be stored with certainty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Go {
    On,
    Close,
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

struct Member {
    id: String,
    outbox: Outbox,
    /// Dropped to disconnect the member (too slow); sent to when the room closes.
    kick: oneshot::Sender<()>,
}

/// A live room's state (owned by its task).
struct Room {
    id: String,
    members: Vec<Member>,
    state: Option<Box<RawValue>>,
    seq: u64,
    /// The stored state's version (`None`: nothing stored): a store names it, so a
    /// node that lost the room cannot overwrite what the new owner stored.
    version: Option<u64>,
    /// When the unstored state is due to be stored (write-behind).
    flush_at: Option<tokio::time::Instant>,
    members_gauge: Gauge,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Room {
    async fn load(rooms: &Rooms, id: &str) -> Result<Self, WriteError> {
        let stored = rooms.load_state(id).await?;
        let version = stored.as_ref().map(|e| e.version);
        let (state, seq) = stored
            .and_then(|e| {
                let seq = e.metadata.as_deref()?.parse().ok()?;
                let text = String::from_utf8(e.value.to_vec()).ok()?;
                Some((RawValue::from_string(text).ok(), seq))
            })
            .unwrap_or((None, 0));
        Ok(Self {
            id: id.to_string(),
            members: Vec::new(),
            state,
            seq,
            version,
            flush_at: None,
            members_gauge: rooms.members_gauge.clone(),
        })
    }

    async fn handle(&mut self, rooms: &Rooms, event: Event) -> Go {
        match event {
            Event::Join {
                member,
                outbox,
                kick,
                reply,
            } => {
                if self.members.len() >= rooms.settings.max_members {
                    let _ = reply.send(Err(Refused::RoomFull));
                    return Go::On;
                }
                let names: Vec<&str> = self.members.iter().map(|m| m.id.as_str()).collect();
                let init = format!(
                    "{{\"type\":\"init\",\"room\":{},\"you\":{},\"members\":{},\"seq\":{},\"state\":{}}}",
                    json_string(&self.id),
                    json_string(&member),
                    serde_json::to_string(&names).unwrap_or_else(|_| "[]".into()),
                    self.seq,
                    self.state.as_ref().map_or("null", |s| s.get()),
                );
                // A fresh queue has room for the first message.
                let _ = outbox.try_send(init.into());
                let _ = reply.send(Ok(()));
                self.seq += 1;
                let joined = format!(
                    "{{\"type\":\"join\",\"seq\":{},\"member\":{}}}",
                    self.seq,
                    json_string(&member)
                );
                self.send_others(&member, joined.into());
                self.members.push(Member {
                    id: member,
                    outbox,
                    kick,
                });
                self.members_gauge.inc();
            }
            Event::Leave { member } => self.remove(&member),
            Event::Flush(done) => {
                let go = if self.flush_at.is_some() {
                    self.persist(rooms).await
                } else {
                    Go::On
                };
                let _ = done.send(());
                return go;
            }
            Event::Update { member, state } => {
                if !self.members.iter().any(|m| m.id == member) {
                    return Go::On;
                }
                // Acknowledged only while the room is surely this node's.
                if rooms.placement(&self.id) != Placement::Here {
                    return Go::Close;
                }
                let before = self.state.replace(state);
                self.seq += 1;
                if rooms.settings.persist_window.is_zero() {
                    if let Err(e) = self.store(rooms).await {
                        warn!(room = %self.id, error = %e, "room state not stored");
                        // Another node stored since (the room moved), or a fleet's
                        // Redis did not answer (the write may still land): this room
                        // is not the truth any more; its members reconnect to it.
                        if rooms.fleet.is_some() || e == WriteError::PreconditionFailed {
                            return Go::Close;
                        }
                        // Not stored: not applied, and nobody else sees it.
                        self.state = before;
                        self.seq -= 1;
                        self.send_to(
                            &member,
                            "{\"type\":\"error\",\"error\":\"not_stored\"}".into(),
                        );
                        return Go::On;
                    }
                } else if self.flush_at.is_none() {
                    self.flush_at =
                        Some(tokio::time::Instant::now() + rooms.settings.persist_window);
                }
                let seq = self.seq;
                let update = format!(
                    "{{\"type\":\"update\",\"seq\":{},\"from\":{},\"state\":{}}}",
                    seq,
                    json_string(&member),
                    self.state.as_ref().map_or("null", |s| s.get()),
                );
                self.send_others(&member, update.into());
                self.send_to(
                    &member,
                    // The update's own number (a member cut off meanwhile took the next).
                    format!("{{\"type\":\"ack\",\"seq\":{seq}}}").into(),
                );
            }
            Event::Message { member, data } => {
                if !self.members.iter().any(|m| m.id == member) {
                    return Go::On;
                }
                self.seq += 1;
                let msg = format!(
                    "{{\"type\":\"message\",\"seq\":{},\"from\":{},\"data\":{}}}",
                    self.seq,
                    json_string(&member),
                    data.get()
                );
                self.send_others(&member, msg.into());
            }
        }
        Go::On
    }

    /// Stores the written-behind state now; a failure is retried, but a state another
    /// node stored since closes the room.
    async fn persist(&mut self, rooms: &Rooms) -> Go {
        self.flush_at = None;
        match self.store(rooms).await {
            Ok(()) => Go::On,
            Err(WriteError::PreconditionFailed) => {
                warn!(room = %self.id, "another node stored the room's state: closing it here");
                Go::Close
            }
            Err(e) => {
                warn!(room = %self.id, error = %e, "room state not stored; retrying");
                self.flush_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                Go::On
            }
        }
    }

    /// Stores the state if the stored one is still the version this room loaded or
    /// last wrote.
    async fn store(&mut self, rooms: &Rooms) -> Result<(), WriteError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let s = &rooms.settings;
        let now = crate::clock::unix_ms();
        rooms
            .store_state(Write::Put {
                namespace: s.namespace(),
                key: self.id.clone(),
                entry: Entry {
                    value: bytes::Bytes::copy_from_slice(state.get().as_bytes()),
                    content_type: "application/json".into(),
                    metadata: Some(self.seq.to_string()),
                    expires_at: None,
                    version: 0,
                    written_at: now,
                },
                condition: match self.version {
                    Some(v) => Condition::Version(v),
                    None => Condition::Absent,
                },
                quota: Quota {
                    max_keys: s.max_stored_rooms,
                    max_bytes: s
                        .max_stored_rooms
                        .saturating_mul(s.max_message_bytes as u64 + 1024),
                },
            })
            .await
            .map(|written| {
                if let Written::Created { version } | Written::Replaced { version } = written {
                    self.version = Some(version);
                }
            })
    }

    fn send_to(&mut self, member: &str, text: Utf8Bytes) {
        let slow: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.id == member && m.outbox.try_send(text.clone()).is_err())
            .map(|m| m.id.clone())
            .collect();
        for m in slow {
            self.remove(&m);
        }
    }

    /// To every member but `from`, in order; a member whose queue is full (or gone)
    /// is removed, and the others told.
    fn send_others(&mut self, from: &str, text: Utf8Bytes) {
        let slow: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.id != from && m.outbox.try_send(text.clone()).is_err())
            .map(|m| m.id.clone())
            .collect();
        for m in slow {
            debug!(room = %self.id, member = %m, "member too slow: disconnected");
            self.remove(&m);
        }
    }

    fn remove(&mut self, member: &str) {
        let before = self.members.len();
        // Dropping the member's kick sender disconnects it.
        self.members.retain(|m| m.id != member);
        if self.members.len() == before {
            return;
        }
        self.members_gauge.dec();
        self.seq += 1;
        let left = format!(
            "{{\"type\":\"leave\",\"seq\":{},\"member\":{}}}",
            self.seq,
            json_string(member)
        );
        self.send_others(member, left.into());
    }
}
