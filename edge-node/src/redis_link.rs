//! The Redis an operator names for the fleet: one server, the primary a set of Redis
//! Sentinels points to, or a Redis Cluster, with auth and TLS (`rediss://`) in the URLs.
//! One connection type for all three ([`RedisConn`]): it connects lazily (Redis may be
//! down while the node starts), reconnects on its own (a Sentinel-watched one asks the
//! Sentinels again after a failover), and bounds every connect and answer by the
//! timeouts it was made with.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use arc_swap::ArcSwapOption;
use futures_util::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
};
use serde::Deserialize;

/// Where the Redis is. In TOML: `"redis://…"`, `{ cluster = [URLs] }` or
/// `{ sentinel = [URLs], master = "name", … }`.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(
    untagged,
    expecting = "a Redis URL (\"redis://…\" or \"rediss://…\"), { cluster = [\"redis://…\", …] } \
                 or { sentinel = [\"redis://…\", …], master = \"name\" }"
)]
pub enum RedisTarget {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    Server(String),
    Cluster(ClusterTarget),
    Sentinel(SentinelTarget),
}

/// A Redis Cluster.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTarget {
    /// Some of its nodes (`redis://[user:password@]host:port`, or `rediss://`): the rest
    /// and the slots are learned from them.
    pub cluster: Vec<String>,
}

/// The primary that Redis Sentinels name.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelTarget {
    /// The Sentinels (`redis://[user:password@]host:26379`, or `rediss://`).
    pub sentinel: Vec<String>,
    /// The name they monitor the primary by.
    pub master: String,
    /// Auth, database and TLS toward the primary (the Sentinels' URLs carry their own).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub db: i64,
    #[serde(default)]
    pub tls: bool,
}

impl RedisTarget {
    /// Every URL it names, parsed: a bad one is a configuration error naming it.
    pub fn validate(&self) -> Result<()> {
        let urls: &[String] = match self {
            Self::Server(url) => std::slice::from_ref(url),
            Self::Cluster(c) => &c.cluster,
            Self::Sentinel(s) => {
                if s.master.is_empty() {
                    bail!("a sentinel target needs the primary's name (master = \"…\")");
                }
                &s.sentinel
            }
        };
        if urls.is_empty() {
            bail!("{self}: name at least one Redis");
        }
        for url in urls {
            url.as_str()
                .into_connection_info()
                .map_err(|e| anyhow::anyhow!("{:?} is no Redis URL: {e}", redacted(url)))?;
        }
        Ok(())
    }

    /// A connection for calls that answer within `timeout` (connecting too).
    pub fn connect(&self, timeout: Duration) -> Result<RedisConn> {
        self.connect_with(timeout, timeout)
    }

    /// A connection whose calls may take `response` (a blocking read's own).
    pub fn connect_with(&self, timeout: Duration, response: Duration) -> Result<RedisConn> {
        // A Cluster or Sentinel connection is made by a task of its own, given longer
        // than one call: a caller's timeout ends only its wait, never the attempt every
        // waiting call shares, and a Sentinel that does not answer leaves time to ask
        // the next.
        let budget = connect_budget(timeout);
        let link = match self {
            Self::Server(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(response))
                    .set_number_of_retries(1)
                    .set_max_delay(MAX_RETRY_DELAY);
                Link::Server(
                    redis::Client::open(url.as_str())
                        .and_then(|c| c.get_connection_manager_lazy(config))
                        .with_context(|| self.to_string())?,
                )
            }
            Self::Cluster(c) => {
                let client = ClusterClientBuilder::new(c.cluster.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(response)
                    .retries(1)
                    .build()
                    .with_context(|| self.to_string())?;
                Link::Cluster(Lazy::new(
                    budget,
                    Box::new(move || {
                        let client = client.clone();
                        async move { client.get_async_connection().await }.boxed()
                    }),
                ))
            }
            Self::Sentinel(s) => {
                let mut info = redis::RedisConnectionInfo::default().set_db(s.db);
                if let Some(u) = &s.username {
                    info = info.set_username(u);
                }
                if let Some(p) = &s.password {
                    info = info.set_password(p);
                }
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                if s.tls {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    s.sentinel.iter().map(String::as_str).collect(),
                    s.master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .with_context(|| self.to_string())?;
                let client = Arc::new(tokio::sync::Mutex::new(client));
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(response));
                Link::Sentinel(
                    Lazy::new(
                        budget,
                        Box::new(move || {
                            let (client, config) = (client.clone(), config.clone());
                            async move {
                                let mut client = client.lock().await;
                                client.get_async_connection_with_config(&config).await
                            }
                            .boxed()
                        }),
                    ),
                    s.db,
                )
            }
        };
        Ok(RedisConn { link })
    }
}

/// As `Display`: a configuration printed for debugging shows no password.
impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

/// Says what it is without the passwords.
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |urls: &[String]| {
            urls.iter()
                .map(|u| redacted(u))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Self::Server(url) => write!(f, "Redis {}", redacted(url)),
            Self::Cluster(c) => write!(f, "Redis Cluster [{}]", list(&c.cluster)),
            Self::Sentinel(s) => write!(
                f,
                "Redis primary {:?} of Sentinels [{}]",
                s.master,
                list(&s.sentinel)
            ),
        }
    }
}

/// `url` with its password (between the userinfo's `:` and the last `@`, which may
/// hold `/` and `:` of its own) and any `pass=` / `password=` query value starred out.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let mut out = match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_string(),
    };
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], query.join("&"));
    }
    out
}

/// How long an attempt to connect with calls bounded by `timeout` is given: four calls
/// worth, at least `MIN_CONNECT_BUDGET` (room to get past Sentinels that do not answer).
pub fn connect_budget(timeout: Duration) -> Duration {
    (timeout * 4).max(MIN_CONNECT_BUDGET)
}

/// The longest wait between reconnection attempts of a single server's connection.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);
/// The least time an attempt to connect to a Cluster or through Sentinels is given.
const MIN_CONNECT_BUDGET: Duration = Duration::from_secs(3);
/// After a failed attempt, calls fail at once for this long before another is made.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A connection to a [`RedisTarget`]; clones share it.
#[derive(Clone)]
pub struct RedisConn {
    link: Link,
}

#[derive(Clone)]
enum Link {
    Server(ConnectionManager),
    Cluster(Arc<Lazy<ClusterConnection>>),
    /// And the primary's database.
    Sentinel(Arc<Lazy<MultiplexedConnection>>, i64),
}

type Connect<T> = Box<dyn Fn() -> BoxFuture<'static, RedisResult<T>> + Send + Sync>;
type Attempt = Shared<BoxFuture<'static, Result<(), String>>>;

/// A connection made on first use and made again once it is lost.
struct Lazy<T> {
    connect: Connect<T>,
    budget: Duration,
    conn: ArcSwapOption<T>,
    /// The last attempt to connect and when it began.
    attempt: Mutex<Option<(Attempt, Instant)>>,
}

impl<T: Clone + Send + Sync + 'static> Lazy<T> {
    fn new(budget: Duration, connect: Connect<T>) -> Arc<Self> {
        Arc::new(Self {
            connect,
            budget,
            conn: ArcSwapOption::empty(),
            attempt: Mutex::new(None),
        })
    }

    /// The connection; without one, waits for the attempt under way (starting one
    /// unless the last failed a moment ago).
    async fn get(self: &Arc<Self>) -> RedisResult<Arc<T>> {
        if let Some(c) = self.conn.load_full() {
            return Ok(c);
        }
        let attempt = {
            let mut last = crate::sync::lock(&self.attempt);
            match &*last {
                Some((a, _)) if a.peek().is_none() => a.clone(),
                Some((a, began)) if began.elapsed() < RETRY_AFTER => a.clone(),
                _ => {
                    let me = self.clone();
                    let task = tokio::spawn(async move {
                        match tokio::time::timeout(me.budget, (me.connect)()).await {
                            Ok(Ok(c)) => {
                                me.conn.store(Some(Arc::new(c)));
                                Ok(())
                            }
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!("no connection within {:?}", me.budget)),
                        }
                    });
                    let a = async move { task.await.unwrap_or_else(|e| Err(e.to_string())) }
                        .boxed()
                        .shared();
                    *last = Some((a.clone(), Instant::now()));
                    a
                }
            }
        };
        let not_connected = |why: String| {
            RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, why))
        };
        attempt.await.map_err(not_connected)?;
        self.conn
            .load_full()
            .ok_or_else(|| not_connected("the connection was lost again".into()))
    }

    /// Forgets `used` when `lost`, unless another call has replaced it already.
    fn forget_if(&self, used: &Arc<T>, lost: bool) {
        if lost {
            let current = Some(used.clone());
            self.conn.compare_and_swap(&current, None);
        }
    }

    /// Sends `cmd` (or `pipeline`'s commands) on the connection; `lost` says which
    /// errors mean it must be made again.
    async fn send<R>(
        self: &Arc<Self>,
        lost: fn(&RedisError) -> bool,
        call: impl AsyncFnOnce(&mut T) -> RedisResult<R>,
    ) -> RedisResult<R> {
        let used = self.get().await?;
        let mut conn = (*used).clone();
        call(&mut conn)
            .await
            .inspect_err(|e| self.forget_if(&used, lost(e)))
    }
}

/// Errors after which a Sentinel-named primary is asked for again: it is gone, or it
/// is a replica now.
fn primary_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// A Cluster connection reconnects to its shards and follows the slots on its own;
/// only an error it cannot recover from makes it anew.
fn cluster_lost(e: &RedisError) -> bool {
    e.is_unrecoverable_error()
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.link {
            Link::Server(c) => c.req_packed_command(cmd),
            Link::Cluster(lazy) => {
                let lazy = lazy.clone();
                async move {
                    lazy.send(cluster_lost, async |c| c.req_packed_command(cmd).await)
                        .await
                }
                .boxed()
            }
            Link::Sentinel(lazy, _) => {
                let lazy = lazy.clone();
                async move {
                    lazy.send(primary_lost, async |c| c.req_packed_command(cmd).await)
                        .await
                }
                .boxed()
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.link {
            Link::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(lazy) => {
                let lazy = lazy.clone();
                async move {
                    lazy.send(cluster_lost, async |c| {
                        c.req_packed_commands(pipeline, offset, count).await
                    })
                    .await
                }
                .boxed()
            }
            Link::Sentinel(lazy, _) => {
                let lazy = lazy.clone();
                async move {
                    lazy.send(primary_lost, async |c| {
                        c.req_packed_commands(pipeline, offset, count).await
                    })
                    .await
                }
                .boxed()
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Server(c) => c.get_db(),
            Link::Cluster(_) => 0,
            Link::Sentinel(_, db) => *db,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_toml_and_bad_ones_say_why() {
        #[derive(Deserialize)]
        struct T {
            redis: RedisTarget,
        }
        let t = |s: &str| toml::from_str::<T>(s).map(|t| t.redis);
        assert_eq!(
            t("redis = \"redis://127.0.0.1:6379\"").unwrap(),
            RedisTarget::Server("redis://127.0.0.1:6379".into())
        );
        let cluster = t("redis = { cluster = [\"redis://a:7000\", \"redis://b:7001\"] }").unwrap();
        assert!(matches!(&cluster, RedisTarget::Cluster(c) if c.cluster.len() == 2));
        cluster.validate().unwrap();
        let sentinel = t(
            "redis = { sentinel = [\"redis://s:26379\"], master = \"edge\", password = \"pw\", tls = true }",
        )
        .unwrap();
        assert!(matches!(&sentinel, RedisTarget::Sentinel(s) if s.tls && s.master == "edge"));
        sentinel.validate().unwrap();
        let err = t("redis = { cluster = [\"redis://a:7000\"], master = \"x\" }")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("a Redis URL"), "{err}");
        for bad in [
            "redis = \"http://x\"",
            "redis = { cluster = [] }",
            "redis = { sentinel = [\"redis://s:26379\"], master = \"\" }",
            "redis = { cluster = [\"nonsense\"] }",
        ] {
            assert!(t(bad).unwrap().validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redacted("rediss://edge:s3cret@redis.example:6380/2"),
            "rediss://edge:***@redis.example:6380/2"
        );
        assert_eq!(redacted("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redacted("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            redacted("redis://u:ab/c:d@h:1/0"),
            "redis://u:***@h:1/0",
            "a password holding / and :"
        );
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        let target = RedisTarget::Sentinel(SentinelTarget {
            sentinel: vec!["redis://u:pw@s:26379".into()],
            master: "m".into(),
            username: None,
            password: Some("primary-secret".into()),
            db: 0,
            tls: false,
        });
        let shown = format!("{target} {target:?}");
        assert!(
            !shown.contains("pw@") && !shown.contains("primary-secret"),
            "{shown}"
        );
    }
}
