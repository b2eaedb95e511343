//! `backend = "redis"`: a namespace shared by a fleet. Redis holds it; each node keeps
//! what it read in its own store as a read cache, dropped when any node writes the key
//! (pub/sub) and wholesale when the subscription was lost (a message may have been
//! missed). Redis down: reads answer from the local copy, writes are refused (503),
//! never half-done: each write is one Lua script, conditions and quota included.
//!
//! Layout under `<prefix>:<namespace>:`: `v:<key>` a hash (value, type, metadata,
//! version, written, expiry; expiring with the key), `keys` (a sorted set by name, for
//! listing), `exp` (by expiry, for cleanup), `sizes` (bytes per key) and `usage`
//! (keys, bytes); `ver` the version counter. Channel `<prefix>:inv`:
//! `<node>\t<namespace>\t<key>`.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use redis::aio::ConnectionManager;

use super::{Condition, Entry, Listed, Quota, Store, Write, WriteError, Written};

/// The write, atomically: expired keys' bookkeeping (a few per call), the condition,
/// the quota, then the value, its indexes, the usage and the invalidation.
const PUT: &str = r#"
local vk, keys, exp, sizes, usage, ver = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local member, now, vprefix = ARGV[1], tonumber(ARGV[11]), ARGV[13]
for _, k in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 16)) do
  if redis.call('EXISTS', vprefix .. k) == 0 then
    local sz = tonumber(redis.call('HGET', sizes, k) or '0')
    redis.call('ZREM', keys, k); redis.call('ZREM', exp, k); redis.call('HDEL', sizes, k)
    redis.call('HINCRBY', usage, 'keys', -1); redis.call('HINCRBY', usage, 'bytes', -sz)
  end
end
local cur = redis.call('HGET', vk, 'ver')
local cond, want = ARGV[7], ARGV[8]
if (cond == 'v' and cur ~= want) or (cond == 'n' and cur) or (cond == 'p' and not cur) then
  return {-3, 0}
end
if ARGV[14] == 'del' then
  if not cur then return {0, 0} end
  local sz = tonumber(redis.call('HGET', sizes, member) or '0')
  redis.call('DEL', vk); redis.call('ZREM', keys, member); redis.call('ZREM', exp, member)
  redis.call('HDEL', sizes, member)
  redis.call('HINCRBY', usage, 'keys', -1); redis.call('HINCRBY', usage, 'bytes', -sz)
  redis.call('PUBLISH', ARGV[15], ARGV[16])
  return {3, 0}
end
local old = redis.call('HGET', sizes, member)
local nkeys = tonumber(redis.call('HGET', usage, 'keys') or '0') + (old and 0 or 1)
local size = tonumber(ARGV[12])
local nbytes = tonumber(redis.call('HGET', usage, 'bytes') or '0') - tonumber(old or '0') + size
if nkeys > tonumber(ARGV[9]) then return {-1, 0} end
if nbytes > tonumber(ARGV[10]) then return {-2, 0} end
local v = redis.call('INCR', ver)
redis.call('DEL', vk)
redis.call('HSET', vk, 'v', ARGV[2], 'ct', ARGV[3], 'md', ARGV[4], 'ver', v, 'wt', ARGV[5], 'exp', ARGV[6])
local e = tonumber(ARGV[6])
if e > 0 then
  redis.call('PEXPIREAT', vk, e); redis.call('ZADD', exp, e, member)
else
  redis.call('ZREM', exp, member)
end
redis.call('ZADD', keys, 0, member)
redis.call('HSET', sizes, member, size)
redis.call('HSET', usage, 'keys', nkeys, 'bytes', nbytes)
redis.call('PUBLISH', ARGV[15], ARGV[16])
if cur then return {2, v} else return {1, v} end
"#;

/// A fleet's Redis for the namespaces that name it.
pub struct Fleet {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    script: redis::Script,
    /// This node, in invalidations (its own are not applied twice).
    me: String,
}

fn failed(e: impl std::fmt::Display) -> WriteError {
    WriteError::Storage(format!("redis: {e}"))
}

impl Fleet {
    /// A client that connects on first use and reconnects after failures.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url)
            .with_context(|| format!("kv redis_url {:?}", crate::redis_link::redacted(url)))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_lazy(config)
            .context("kv redis")?;
        Ok(Self {
            client,
            conn,
            prefix: prefix.to_string(),
            timeout,
            script: redis::Script::new(PUT),
            me: format!("{:016x}", fastrand::u64(..)),
        })
    }

    fn key(&self, namespace: &str, part: &str) -> String {
        format!("{}:{namespace}:{part}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:inv", self.prefix)
    }

    async fn run<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, WriteError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(failed),
            Err(_) => Err(failed(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// The live value of `key` in Redis.
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>, WriteError> {
        let mut conn = self.conn.clone();
        let vk = self.key(namespace, &format!("v:{key}"));
        type Fields = (
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
        );
        let (v, ct, md, ver, wt, exp): Fields = self
            .run(
                redis::cmd("HMGET")
                    .arg(&vk)
                    .arg(&["v", "ct", "md", "ver", "wt", "exp"])
                    .query_async(&mut conn),
            )
            .await?;
        let (Some(v), Some(version)) = (v, ver) else {
            return Ok(None);
        };
        let entry = Entry {
            value: Bytes::from(v),
            content_type: ct.unwrap_or_else(|| "application/octet-stream".into()),
            metadata: md.filter(|m| !m.is_empty()),
            expires_at: exp.filter(|&e| e != 0),
            version,
            written_at: wt.unwrap_or(0),
        };
        Ok((!entry.expired(crate::clock::unix_ms())).then_some(entry))
    }

    /// A put or delete, decided and applied by Redis in one script.
    pub async fn write(&self, write: &Write) -> Result<Written, WriteError> {
        let (namespace, key, condition, entry, quota, op) = match write {
            Write::Put {
                namespace,
                key,
                entry,
                condition,
                quota,
            } => (namespace, key, *condition, Some(entry), *quota, "put"),
            Write::Delete {
                namespace,
                key,
                condition,
            } => (
                namespace,
                key,
                *condition,
                None,
                Quota {
                    max_keys: u64::MAX,
                    max_bytes: u64::MAX,
                },
                "del",
            ),
            Write::Forget { .. } => {
                return Err(WriteError::Storage(
                    "a fleet namespace is not forgotten".into(),
                ));
            }
        };
        let (cond, want) = match condition {
            Condition::Always => ("a", 0),
            Condition::Version(v) => ("v", v),
            Condition::Absent => ("n", 0),
            Condition::Present => ("p", 0),
        };
        let empty = Entry {
            value: Bytes::new(),
            content_type: String::new(),
            metadata: None,
            expires_at: None,
            version: 0,
            written_at: 0,
        };
        let e = entry.unwrap_or(&empty);
        let size = key.len()
            + e.value.len()
            + e.content_type.len()
            + e.metadata.as_deref().map_or(0, str::len)
            + 32;
        let mut conn = self.conn.clone();
        let mut call = self.script.prepare_invoke();
        call.key(self.key(namespace, &format!("v:{key}")))
            .key(self.key(namespace, "keys"))
            .key(self.key(namespace, "exp"))
            .key(self.key(namespace, "sizes"))
            .key(self.key(namespace, "usage"))
            .key(self.key(namespace, "ver"))
            .arg(key.as_str())
            .arg(e.value.as_ref())
            .arg(e.content_type.as_str())
            .arg(e.metadata.as_deref().unwrap_or(""))
            .arg(e.written_at)
            .arg(e.expires_at.unwrap_or(0))
            .arg(cond)
            .arg(want.to_string())
            .arg(quota.max_keys)
            .arg(quota.max_bytes)
            .arg(crate::clock::unix_ms())
            .arg(size)
            .arg(self.key(namespace, "v:"))
            .arg(op)
            .arg(self.channel())
            .arg(format!("{}\t{namespace}\t{key}", self.me));
        let (code, version): (i64, u64) = self.run(call.invoke_async(&mut conn)).await?;
        match code {
            1 => Ok(Written::Created { version }),
            2 => Ok(Written::Replaced { version }),
            3 => Ok(Written::Deleted),
            0 => Ok(Written::Absent),
            -1 => Err(WriteError::KeysFull(quota.max_keys)),
            -2 => Err(WriteError::BytesFull(quota.max_bytes)),
            _ => Err(WriteError::PreconditionFailed),
        }
    }

    /// Up to `limit` live keys starting with `prefix`, after `after`, in key order.
    pub async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Listed>, bool), WriteError> {
        let mut conn = self.conn.clone();
        let start = match after {
            Some(a) if a >= prefix => format!("({a}"),
            _ => format!("[{prefix}"),
        };
        // One more than asked tells whether there are more.
        let names: Vec<String> = self
            .run(
                redis::cmd("ZRANGEBYLEX")
                    .arg(self.key(namespace, "keys"))
                    .arg(&start)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit + 1)
                    .query_async(&mut conn),
            )
            .await?;
        let names: Vec<String> = names
            .into_iter()
            .take_while(|n| n.starts_with(prefix))
            .collect();
        let more = names.len() > limit;
        let mut pipe = redis::pipe();
        for n in names.iter().take(limit) {
            let vk = self.key(namespace, &format!("v:{n}"));
            pipe.cmd("HMGET").arg(&vk).arg(&["md", "exp", "ver"]);
            pipe.cmd("HSTRLEN").arg(&vk).arg("v");
        }
        let rows: Vec<redis::Value> = self.run(pipe.query_async(&mut conn)).await?;
        let mut out = Vec::new();
        for (n, pair) in names.iter().zip(rows.chunks(2)) {
            let (Ok((md, exp, ver)), Ok(size)) = (
                redis::from_redis_value::<(Option<String>, Option<u64>, Option<u64>)>(
                    pair[0].clone(),
                ),
                redis::from_redis_value::<usize>(pair[1].clone()),
            ) else {
                continue;
            };
            if ver.is_none() {
                continue; // expired meanwhile
            }
            out.push(Listed {
                key: n.clone(),
                expires_at: exp.filter(|&e| e != 0),
                metadata: md.filter(|m| !m.is_empty()),
                size,
            });
        }
        Ok((out, !more))
    }

    /// Keeps `store`'s copies of the fleet's namespaces true: a key another node wrote
    /// is dropped; after a lost subscription every copy is (a message may be gone).
    pub fn listen(self: &Arc<Self>, store: std::sync::Weak<Store>, namespaces: Vec<String>) {
        let fleet = Arc::downgrade(self);
        let client = self.client.clone();
        let channel = self.channel();
        let me = self.me.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                if fleet.strong_count() == 0 {
                    return;
                }
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                let pubsub = match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                // Whatever was written while nobody listened: forget every copy.
                let Some(s) = store.upgrade() else { return };
                for ns in &namespaces {
                    let _ = s
                        .write(Write::Forget {
                            namespace: ns.clone(),
                        })
                        .await;
                }
                drop(s);
                let mut messages = pubsub.into_on_message();
                while let Some(m) = messages.next().await {
                    let Some(s) = store.upgrade() else { return };
                    let Ok(text) = std::str::from_utf8(m.get_payload_bytes()) else {
                        continue;
                    };
                    let mut parts = text.splitn(3, '\t');
                    let (Some(from), Some(ns), Some(key)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    if from == me || !namespaces.iter().any(|n| n == ns) {
                        continue;
                    }
                    let _ = s
                        .write(Write::Delete {
                            namespace: ns.to_string(),
                            key: key.to_string(),
                            condition: Condition::Always,
                        })
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
