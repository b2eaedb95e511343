//! `backend = "redis"`: rooms shared by a fleet, one owner per room, so every room has
//! one order of messages.
//!
//! Each node registers its `relay_url` in Redis: a sorted set scored by the moment
//! the registration lapses, renewed every third of `node_ttl` by a script that reads
//! Redis' own clock (the nodes' clocks never decide). A room's owner is the live node
//! with the highest rendezvous score for the room id, so nodes that see the same live
//! nodes name the same owner, and a node coming or going moves only the rooms it
//! gains or held. A member connecting to another node is relayed to the owner
//! (`relay`). A room whose owner changed is stored and closed here; its members
//! reconnect (close 1012) and reach the new owner, which loads the stored state.
//!
//! A node that could not renew its registration within `node_ttl` of sending the
//! last renewal that succeeded owns nothing (it closes its rooms and refuses joins
//! with 503 until Redis answers again): by then the others no longer count it and
//! take its rooms over.

use std::{
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use redis::aio::ConnectionManager;

use super::RoomsSettings;

/// Renews `ARGV[1]` until Redis' now + `ARGV[2]` ms, drops lapsed nodes, and answers
/// the live ones.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#;

/// Where a room lives, as this node sees the fleet now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Here,
    /// Another node: its relay URL.
    Owner(String),
    /// This node is not known to be registered: it decides nothing.
    Unknown,
}

/// This node in the fleet of one `[[rooms]]`.
pub struct Registry {
    conn: ConnectionManager,
    key: String,
    /// This node's relay URL: its name in the fleet.
    me: String,
    ttl: Duration,
    timeout: Duration,
    script: redis::Script,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    /// The live nodes, this one included.
    nodes: Vec<String>,
    /// Until when this node is known to be registered.
    registered_until: Option<Instant>,
}

impl Registry {
    /// A client that connects on first use (validated settings).
    pub fn connect(s: &RoomsSettings) -> Result<Self> {
        let url = s.redis_url.as_deref().context("redis_url")?;
        let me = s.relay_url.clone().context("relay_url")?;
        let client =
            redis::Client::open(url).with_context(|| format!("rooms redis_url {url:?}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.redis_timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(s.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_lazy(config)
            .context("rooms redis")?;
        Ok(Self {
            conn,
            key: format!("{}:{}:nodes", s.redis_prefix, s.name),
            me,
            ttl: s.node_ttl,
            timeout: s.redis_timeout,
            script: redis::Script::new(RENEW),
            view: Mutex::default(),
        })
    }

    /// How often `renew` runs.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Where room `id` lives.
    pub fn placement(&self, id: &str) -> Placement {
        let view = crate::sync::lock(&self.view);
        if view.registered_until.is_none_or(|t| Instant::now() >= t) {
            return Placement::Unknown;
        }
        match owner(&view.nodes, id) {
            Some(o) if o == self.me => Placement::Here,
            Some(o) => Placement::Owner(o.to_string()),
            None => Placement::Unknown,
        }
    }

    /// Renews this node's registration and reads who else is live. A failure leaves
    /// the view as it was; it lapses `node_ttl` after the last renewal sent that
    /// succeeded.
    pub async fn renew(&self) -> Result<()> {
        let sent = Instant::now();
        let mut conn = self.conn.clone();
        let mut call = self.script.prepare_invoke();
        call.key(&self.key)
            .arg(&self.me)
            .arg(self.ttl.as_millis() as u64);
        let nodes: Vec<String> = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {:?}", self.timeout))??;
        let mut view = crate::sync::lock(&self.view);
        view.nodes = nodes;
        view.registered_until = Some(sent + self.ttl);
        Ok(())
    }

    /// Leaves the fleet now (a clean stop): the others take the rooms over at once.
    pub async fn leave(&self) {
        crate::sync::lock(&self.view).registered_until = None;
        let mut conn = self.conn.clone();
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(&self.key).arg(&self.me);
        let _ = tokio::time::timeout(self.timeout, zrem.query_async::<()>(&mut conn)).await;
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
