//! The Redis an operator names for the fleet: one server, the primary a set of Redis
//! Sentinels points to, or a Redis Cluster, with auth and TLS (`rediss://`) in the URLs.
//! One connection type for all three ([`RedisConn`]): it connects lazily (Redis may be
//! down while the node starts), reconnects on its own (a Sentinel-watched one asks the
//! Sentinels again after a failover), and bounds every connect and answer by the
//! timeouts it was made with.

use std::{fmt, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use arc_swap::ArcSwapOption;
use futures_util::FutureExt as _;
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
};
use serde::Deserialize;

/// Where the Redis is. In TOML: `"redis://…"`, `{ cluster = [URLs] }` or
/// `{ sentinel = [URLs], master = "name", … }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTarget {
    /// Some of its nodes (`redis://[user:password@]host:port`, or `rediss://`): the rest
    /// and the slots are learned from them.
    pub cluster: Vec<String>,
}

/// The primary that Redis Sentinels name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
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
            Self::Cluster(c) => Link::Cluster(Arc::new(Lazy {
                client: ClusterClientBuilder::new(c.cluster.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(response)
                    .retries(1)
                    .build()
                    .with_context(|| self.to_string())?,
                timeout,
                conn: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
            })),
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
                Link::Sentinel(Arc::new(Lazy {
                    client: tokio::sync::Mutex::new(client),
                    timeout,
                    conn: ArcSwapOption::empty(),
                    connecting: tokio::sync::Mutex::new(()),
                }))
            }
        };
        Ok(RedisConn {
            link,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(response)),
        })
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

/// `url` with its password (between `:` and `@` of the authority) starred out.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// The longest wait between reconnection attempts of a single server's connection.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// A connection to a [`RedisTarget`]; clones share it.
#[derive(Clone)]
pub struct RedisConn {
    link: Link,
    config: AsyncConnectionConfig,
}

#[derive(Clone)]
enum Link {
    Server(ConnectionManager),
    Cluster(Arc<Lazy<ClusterClient, ClusterConnection>>),
    Sentinel(Arc<Lazy<tokio::sync::Mutex<SentinelClient>, MultiplexedConnection>>),
}

/// A connection made on first use and made again after it failed.
struct Lazy<C, T> {
    client: C,
    timeout: Duration,
    conn: ArcSwapOption<T>,
    /// One attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl<C, T: Clone> Lazy<C, T> {
    /// The connection, made by `connect` (not polled while one is there).
    async fn get(&self, connect: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let made = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no connection within the timeout",
                ))
            })??;
        self.conn.store(Some(Arc::new(made.clone())));
        Ok(made)
    }

    /// After `e`, whether the next call connects again (a failover leaves the old
    /// primary read-only or gone).
    fn forget_after(&self, e: &RedisError) {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        {
            self.conn.store(None);
        }
    }
}

impl RedisConn {
    async fn cluster(
        lazy: &Lazy<ClusterClient, ClusterConnection>,
    ) -> RedisResult<ClusterConnection> {
        lazy.get(lazy.client.get_async_connection()).await
    }

    async fn sentinel(
        lazy: &Lazy<tokio::sync::Mutex<SentinelClient>, MultiplexedConnection>,
        config: &AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        lazy.get(async {
            let mut client = lazy.client.lock().await;
            client.get_async_connection_with_config(config).await
        })
        .await
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.link {
            Link::Server(c) => c.req_packed_command(cmd),
            Link::Cluster(lazy) => async move {
                let mut c = Self::cluster(lazy).await?;
                c.req_packed_command(cmd)
                    .await
                    .inspect_err(|e| lazy.forget_after(e))
            }
            .boxed(),
            Link::Sentinel(lazy) => {
                let config = &self.config;
                async move {
                    let mut c = Self::sentinel(lazy, config).await?;
                    c.req_packed_command(cmd)
                        .await
                        .inspect_err(|e| lazy.forget_after(e))
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
            Link::Cluster(lazy) => async move {
                let mut c = Self::cluster(lazy).await?;
                c.req_packed_commands(pipeline, offset, count)
                    .await
                    .inspect_err(|e| lazy.forget_after(e))
            }
            .boxed(),
            Link::Sentinel(lazy) => {
                let config = &self.config;
                async move {
                    let mut c = Self::sentinel(lazy, config).await?;
                    c.req_packed_commands(pipeline, offset, count)
                        .await
                        .inspect_err(|e| lazy.forget_after(e))
                }
                .boxed()
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Server(c) => c.get_db(),
            Link::Cluster(_) => 0,
            Link::Sentinel(_) => 0,
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
        let target = RedisTarget::Sentinel(SentinelTarget {
            sentinel: vec!["redis://u:pw@s:26379".into()],
            master: "m".into(),
            username: None,
            password: Some("primary-secret".into()),
            db: 0,
            tls: false,
        });
        let shown = format!("{target}");
        assert!(
            !shown.contains("pw@") && !shown.contains("primary-secret"),
            "{shown}"
        );
    }
}
