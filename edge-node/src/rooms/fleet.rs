//! `backend = "redis"`: rooms shared by a fleet, one owner per room, so every room has
//! one order of messages.
//!
//! Each node registers its `relay_url` in Redis: a sorted set scored by the moment the
//! registration lapses, renewed every third of `node_ttl` by a script that reads
//! Redis' own clock (the nodes' clocks never decide). A room's owner is the live node
//! with the highest rendezvous score for the room id, so nodes that see the same live
//! nodes name the same owner, and a node coming or going moves only the rooms it
//! gains or held. A member connecting to another node is relayed to the owner
//! (`relay`); a room whose owner changed is stored and closed here, its members told
//! to reconnect (close 1012), and the new owner loads the stored state.
//!
//! Two nodes must never own a room at once. Three rules see to it, and the states
//! are fenced besides (`Rooms`: a store names the version it loaded, so a node that
//! lost a room cannot overwrite what the new owner stored):
//! - **A lease.** A node owns rooms only until `node_ttl - redis_timeout` after it sent
//!   the last renewal that succeeded; Redis drops it at `node_ttl` after processing
//!   that renewal, so its rooms are taken over only after it stopped owning them.
//! - **A newcomer waits.** Every node counts a new node at once (and gives up the
//!   rooms it gains), but the new node owns nothing until `node_ttl` after its first
//!   registration: by then every other node has either renewed (and seen it) or lost
//!   its lease.
//! - **One process per `relay_url`.** A registration carries a random id; another
//!   process registering the same URL while it is live is refused.

use std::{
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use redis::aio::ConnectionManager;
use tokio::sync::watch;

use super::RoomsSettings;

/// Drops lapsed nodes; renews `ARGV[1]` (registered by process `ARGV[2]`) until Redis'
/// now + `ARGV[3]` ms; answers Redis' now, then each live node and when it first
/// registered.
const RENEW: &str = r#"
local nodes, ids, since = KEYS[1], KEYS[2], KEYS[3]
local me, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, n in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now)) do
  redis.call('ZREM', nodes, n); redis.call('HDEL', ids, n); redis.call('HDEL', since, n)
end
local holder = redis.call('HGET', ids, me)
if holder and holder ~= id then
  return redis.error_reply('relay_url ' .. me .. ' is registered by another live process')
end
redis.call('HSET', ids, me, id)
redis.call('HSETNX', since, me, now)
redis.call('ZADD', nodes, now + ttl, me)
local out = {tostring(now)}
for _, n in ipairs(redis.call('ZRANGE', nodes, 0, -1)) do
  table.insert(out, n)
  table.insert(out, redis.call('HGET', since, n) or tostring(now))
end
return out
"#;

/// Removes `ARGV[1]` if process `ARGV[2]` registered it.
const LEAVE: &str = r#"
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 0
"#;

/// Where a room lives, as this node sees the fleet now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Here,
    /// Another node: its relay URL.
    Owner(String),
    /// This node is not known to be registered (or is new, or stopping): it owns
    /// nothing and relays nowhere.
    Unknown,
}

/// This node in the fleet of one `[[rooms]]`.
pub struct Registry {
    conn: ConnectionManager,
    /// The sorted set of live nodes, and the hashes of their process ids and first
    /// registrations.
    keys: [String; 3],
    /// This node's relay URL: its name in the fleet.
    me: String,
    /// This process' registration.
    id: String,
    ttl: Duration,
    timeout: Duration,
    renew: redis::Script,
    leave: redis::Script,
    view: Mutex<View>,
    stopping: AtomicBool,
    /// Bumped whenever owners may have changed (a renewal, a lease running out, the
    /// stop): live rooms check where they belong.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct View {
    /// The nodes that may own rooms: the live ones, this one once it has waited.
    nodes: Vec<String>,
    /// Until when this node owns what `nodes` gives it (its lease).
    owns_until: Option<Instant>,
}

impl Registry {
    /// A client that connects on first use (validated settings).
    pub fn connect(s: &RoomsSettings) -> Result<Self> {
        let url = s.redis_url.as_deref().context("redis_url")?;
        let me = s.relay_url.clone().context("relay_url")?;
        let client = redis::Client::open(url)
            .with_context(|| format!("rooms redis_url {:?}", crate::redis_link::redacted(url)))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.redis_timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(s.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_lazy(config)
            .context("rooms redis")?;
        let base = format!("{}:{}", s.redis_prefix, s.name);
        Ok(Self {
            conn,
            keys: [
                format!("{base}:nodes"),
                format!("{base}:node-ids"),
                format!("{base}:node-since"),
            ],
            me,
            id: format!("{:016x}", fastrand::u64(..)),
            ttl: s.node_ttl,
            timeout: s.redis_timeout,
            renew: redis::Script::new(RENEW),
            leave: redis::Script::new(LEAVE),
            view: Mutex::default(),
            stopping: AtomicBool::new(false),
            changed: watch::Sender::new(0),
        })
    }

    /// How long until the next renewal: a third of `node_ttl`, sooner after a failure.
    pub fn renew_every(&self, failed: bool) -> Duration {
        if failed {
            (self.ttl / 10).min(Duration::from_millis(250))
        } else {
            self.ttl / 3
        }
    }

    /// Told when owners may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Tells the live rooms to check where they belong.
    pub fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Where room `id` lives.
    pub fn placement(&self, id: &str) -> Placement {
        if self.stopping() {
            return Placement::Unknown;
        }
        let view = crate::sync::lock(&self.view);
        if view.owns_until.is_none_or(|t| Instant::now() >= t) {
            return Placement::Unknown;
        }
        match owner(&view.nodes, id) {
            Some(o) if o == self.me => Placement::Here,
            Some(o) => Placement::Owner(o.to_string()),
            None => Placement::Unknown,
        }
    }

    /// Renews this node's registration and reads who else is live. A failure leaves
    /// the view as it was (the lease runs out on its own).
    pub async fn renew(&self) -> Result<()> {
        if self.stopping() {
            return Ok(());
        }
        let sent = Instant::now();
        let mut conn = self.conn.clone();
        let mut call = self.renew.prepare_invoke();
        for k in &self.keys {
            call.key(k);
        }
        call.arg(&self.me)
            .arg(&self.id)
            .arg(self.ttl.as_millis() as u64);
        let answer: Vec<String> = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {:?}", self.timeout))??;
        let now: u64 = answer.first().and_then(|n| n.parse().ok()).unwrap_or(0);
        let wait = self.ttl.as_millis() as u64;
        let nodes: Vec<String> = answer[1.min(answer.len())..]
            .chunks(2)
            .filter_map(|pair| {
                let (node, since) = (pair.first()?, pair.get(1)?.parse::<u64>().ok()?);
                // Everyone counts a newcomer at once; it counts itself after waiting.
                (node != &self.me || now.saturating_sub(since) >= wait).then(|| node.clone())
            })
            .collect();
        let mut view = crate::sync::lock(&self.view);
        view.nodes = nodes;
        view.owns_until = Some(sent + self.ttl.saturating_sub(self.timeout));
        Ok(())
    }

    /// Stops owning rooms (a clean stop): `placement` is `Unknown` from now on and
    /// renewals end; `leave` then takes the registration out of Redis.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.notify();
    }

    /// Leaves the fleet now: the others take the rooms over without waiting for the
    /// registration to lapse.
    pub async fn leave(&self) {
        let mut conn = self.conn.clone();
        let mut call = self.leave.prepare_invoke();
        for k in &self.keys {
            call.key(k);
        }
        call.arg(&self.me).arg(&self.id);
        let _ = tokio::time::timeout(self.timeout, call.invoke_async::<i64>(&mut conn)).await;
    }
}

/// Rendezvous (highest random weight) hashing: the node whose score for the room is
/// highest; a tie goes to the greater name, so every node picks the same.
pub fn owner<'a>(nodes: &'a [String], room: &str) -> Option<&'a str> {
    let score = |node: &str| {
        let mut material = Vec::with_capacity(node.len() + room.len() + 9);
        // Length-prefixed: ("ab", "c") and ("a", "bc") are different inputs.
        material.extend_from_slice(&(node.len() as u64).to_le_bytes());
        material.extend_from_slice(node.as_bytes());
        material.push(0);
        material.extend_from_slice(room.as_bytes());
        crate::hash::stable_hash(&material)
    };
    nodes
        .iter()
        .map(|n| (score(n), n.as_str()))
        .max()
        .map(|(_, n)| n)
}

/// The socket address of a relay URL: `http://<ip or name>:<port>`, nothing after
/// the authority (the member's own path is relayed).
pub fn relay_address(url: &str) -> Result<(String, u16)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("relay_url {url:?}: http://host:port (the fleet's own network)");
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let parsed: http::uri::Authority = authority
        .parse()
        .with_context(|| format!("relay_url {url:?}"))?;
    if authority.contains('@') || authority.contains('/') {
        bail!("relay_url {url:?}: http://host:port, nothing more");
    }
    let Some(port) = parsed.port_u16() else {
        bail!("relay_url {url:?}: name the port");
    };
    let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>()
        && ip.is_unspecified()
    {
        bail!("relay_url {url:?}: an address the other nodes can reach, not {ip}");
    }
    Ok((host.to_string(), port))
}

/// Resolves a relay URL's address (a name through the system resolver).
pub async fn resolve(url: &str) -> Result<SocketAddr> {
    let (host, port) = relay_address(url)?;
    tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .with_context(|| format!("{host} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn one_owner_whatever_the_order_and_few_rooms_move() {
        let three = nodes(3);
        let mut shuffled = three.clone();
        shuffled.reverse();
        let rooms: Vec<String> = (0..3000).map(|i| format!("room-{i}")).collect();
        let mut per_node = [0usize; 3];
        for r in &rooms {
            let o = owner(&three, r).unwrap();
            assert_eq!(Some(o), owner(&shuffled, r));
            per_node[three.iter().position(|n| n == o).unwrap()] += 1;
        }
        // Spread: each of 3 nodes owns about a third.
        assert!(
            per_node.iter().all(|&c| (800..1200).contains(&c)),
            "{per_node:?}"
        );
        // A fourth node takes about a quarter, and only from the others: no room
        // moves between the three.
        let four = nodes(4);
        let mut moved = 0;
        for r in &rooms {
            let (before, after) = (owner(&three, r).unwrap(), owner(&four, r).unwrap());
            if before != after {
                assert_eq!(after, four[3]);
                moved += 1;
            }
        }
        assert!((550..950).contains(&moved), "{moved} of 3000 moved");
        assert_eq!(owner(&[], "r"), None);
    }

    #[test]
    fn relay_urls_name_a_reachable_host_and_port() {
        assert_eq!(
            relay_address("http://10.0.0.5:8080").unwrap(),
            ("10.0.0.5".into(), 8080)
        );
        assert_eq!(
            relay_address("http://[fd00::5]:80/").unwrap(),
            ("fd00::5".into(), 80)
        );
        assert_eq!(
            relay_address("http://edge-2.internal:8080").unwrap().1,
            8080
        );
        for bad in [
            "https://10.0.0.5:8443",
            "10.0.0.5:8080",
            "http://10.0.0.5",
            "http://0.0.0.0:8080",
            "http://[::]:8080",
            "http://u:p@10.0.0.5:8080",
            "http://10.0.0.5:8080/rooms",
        ] {
            assert!(relay_address(bad).is_err(), "{bad}");
        }
    }
}
