//! A fleet shares one certificate per name through Redis (`acme.redis`): the node that
//! takes a name's lock orders it, publishing its challenge answers so that whichever
//! node the CA reaches can answer, and stores the result for the others, which take it
//! from Redis instead of ordering their own. Keys (prefix `edge-acme:`): `cert:<CA>:
//! <names>` (the chain and key, JSON), `lock:<CA>:<names>` (the ordering node, expires
//! after `LOCK_TTL`), `http:<token>` and `alpn:<name>` (challenge answers, expire after
//! `CHALLENGE_TTL`). With Redis unreachable a node orders alone (and says so).

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::AcmeCert;

const PREFIX: &str = "edge-acme:";
/// One Redis call at most.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Longer than an order may take (`manager::ORDER_TIMEOUT`): a node that died while
/// holding the lock holds it no longer than this.
const LOCK_TTL: Duration = Duration::from_secs(360);
const CHALLENGE_TTL: Duration = Duration::from_secs(600);

/// Takes the lock when free or already ours.
const LOCK: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// While the lock is still ours: deletes it (`ARGV[2]` 0), or keeps it `ARGV[2]`
/// more milliseconds (a failed order: nobody in the fleet orders again before the
/// failing node's backoff is over).
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '0' then
    return redis.call('DEL', KEYS[1])
  end
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

#[derive(Serialize, Deserialize)]
struct Shared {
    chain: String,
    key: String,
}

/// One Redis server the certificates are shared through.
pub struct Fleet {
    pub url: String,
    conn: ConnectionManager,
    /// Identifies this process' locks.
    owner: String,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("url", &self.url).finish()
    }
}

/// Whether `url` is a Redis URL (checked at configuration time; nothing is contacted).
pub fn check_url(url: &str) -> Result<()> {
    redis::Client::open(url).with_context(|| {
        format!(
            "acme.redis {:?} is not a Redis URL",
            crate::redis_link::redacted(url)
        )
    })?;
    Ok(())
}

impl Fleet {
    /// A client that connects on first use and reconnects after failures.
    pub fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .with_context(|| format!("acme.redis {:?}", crate::redis_link::redacted(url)))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_lazy(config)
            .context("acme.redis")?;
        Ok(Self {
            // Said in errors: the address only, never the credentials in the URL.
            url: redis::IntoConnectionInfo::into_connection_info(url)
                .map(|i| i.addr().to_string())
                .unwrap_or_else(|_| "(acme.redis)".into()),
            conn,
            owner: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
        })
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(TIMEOUT * 2, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => Ok(r.with_context(|| format!("Redis {}", self.url))?),
            Err(_) => bail!("Redis {}: no answer within {:?}", self.url, TIMEOUT * 2),
        }
    }

    fn key(kind: &str, plan: &AcmeCert) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, plan.directory.as_bytes());
        let ca: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{PREFIX}{kind}:{ca}:{}", plan.names.join(","))
    }

    /// The shared certificate of `plan` (chain PEM, key PEM), if any.
    pub async fn cert(&self, plan: &AcmeCert) -> Result<Option<(String, String)>> {
        let v: Option<String> = self
            .call(redis::cmd("GET").arg(Self::key("cert", plan)))
            .await?;
        v.map(|s| {
            serde_json::from_str::<Shared>(&s)
                .map(|s| (s.chain, s.key))
                .context("the certificate shared in Redis is not readable")
        })
        .transpose()
    }

    pub async fn put_cert(&self, plan: &AcmeCert, chain: &str, key: &str) -> Result<()> {
        let json = serde_json::to_string(&Shared {
            chain: chain.into(),
            key: key.into(),
        })?;
        self.call::<()>(redis::cmd("SET").arg(Self::key("cert", plan)).arg(json))
            .await
    }

    /// Takes (or, when already ours, renews) the ordering lock of `plan`: false when
    /// another node holds it.
    pub async fn lock(&self, plan: &AcmeCert) -> Result<bool> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(LOCK);
        let mut inv = script.key(Self::key("lock", plan));
        inv.arg(&self.owner).arg(LOCK_TTL.as_millis() as u64);
        match tokio::time::timeout(TIMEOUT * 2, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(r) => Ok(r.with_context(|| format!("Redis {}", self.url))? == 1),
            Err(_) => bail!("Redis {}: no answer", self.url),
        }
    }

    /// Releases the lock of `plan`, at once or (`hold`) after that long.
    pub async fn unlock(&self, plan: &AcmeCert, hold: Duration) -> Result<()> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(UNLOCK);
        let mut inv = script.key(Self::key("lock", plan));
        inv.arg(&self.owner).arg(hold.as_millis() as u64);
        match tokio::time::timeout(TIMEOUT * 2, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(r) => r.map(|_| ()).with_context(|| format!("Redis {}", self.url)),
            Err(_) => bail!("Redis {}: no answer", self.url),
        }
    }

    pub async fn put_http(&self, token: &str, answer: &str) -> Result<()> {
        self.call::<()>(
            redis::cmd("SET")
                .arg(format!("{PREFIX}http:{token}"))
                .arg(answer)
                .arg("EX")
                .arg(CHALLENGE_TTL.as_secs()),
        )
        .await
    }

    pub async fn http(&self, token: &str) -> Result<Option<String>> {
        self.call(redis::cmd("GET").arg(format!("{PREFIX}http:{token}")))
            .await
    }

    pub async fn put_alpn(&self, name: &str, digest: &[u8]) -> Result<()> {
        self.call::<()>(
            redis::cmd("SET")
                .arg(format!("{PREFIX}alpn:{name}"))
                .arg(digest)
                .arg("EX")
                .arg(CHALLENGE_TTL.as_secs()),
        )
        .await
    }

    pub async fn alpn(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.call(redis::cmd("GET").arg(format!("{PREFIX}alpn:{name}")))
            .await
    }

    pub async fn clear_challenges(&self, tokens: &[String], names: &[String]) {
        for k in tokens
            .iter()
            .map(|t| format!("{PREFIX}http:{t}"))
            .chain(names.iter().map(|n| format!("{PREFIX}alpn:{n}")))
        {
            let _ = self.call::<()>(redis::cmd("DEL").arg(k)).await;
        }
    }
}
