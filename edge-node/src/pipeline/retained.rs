//! State that must outlive a configuration: a reload builds a new pipeline, but the
//! JWKS keys it fetched, the tokens it verified and the rate-limit buckets clients
//! drained still apply when the settings that made them did not change. Each is kept
//! under what decides it; an entry lives as long as a pipeline uses it (a removed
//! provider or limit goes with the last pipeline that had it).

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, Weak},
};

use crate::{
    auth::{JwtProviderSettings, ProviderState, VerifiedTokens, keys::LastGoodJwks},
    limits::KeyedLimiter,
    phases::rate_limit::RateLimitSettings,
};

/// A route's limit: the route (name, and which of the routes so named), the limit's
/// settings, and which of the route's limits with those settings.
type BucketKey = (String, usize, (String, u64, u64, u64), usize);

/// A provider's settings and the digest of its static key material.
type VerifierKey = (JwtProviderSettings, [u8; 32]);

/// The fleet's Redis and the timeout its connection bounds calls by.
type FleetRedisKey = (crate::redis_link::RedisTarget, std::time::Duration);

/// One per process, passed to every `Pipeline::new`.
#[derive(Default)]
pub struct Retained {
    /// Per provider name and JWKS URL.
    jwks: Mutex<HashMap<(String, String), Weak<LastGoodJwks>>>,
    /// Per provider settings and digest of its static key material: the same of both
    /// verify the same tokens.
    verified: Mutex<HashMap<VerifierKey, Weak<VerifiedTokens>>>,
    buckets: Mutex<HashMap<BucketKey, Weak<KeyedLimiter<u64>>>>,
    /// The functions' engine and compiled components (by content hash): a reload
    /// recompiles only changed files. `Functions::new(&retained.functions, ...)`.
    pub functions: crate::functions::Runtime,
    /// The durable store (KV), while a pipeline uses it.
    store: Mutex<Weak<crate::kv::Store>>,
    /// Live rooms by `[[rooms]]` name: a reload must not open a second copy of a room
    /// (two orders of messages). Settings changes apply once no member of the old
    /// configuration is left.
    rooms: Mutex<HashMap<String, Weak<crate::rooms::Rooms>>>,
    /// Fleet namespaces' Redis clients and listeners, by (namespace, URL, prefix).
    fleets: Mutex<HashMap<(String, String, String), Weak<crate::kv::fleet::Fleet>>>,
    /// Fleet-scoped rate limits, like `buckets`, and the fleet's Redis they share.
    fleet_limits: Mutex<HashMap<BucketKey, Weak<crate::fleet::limits::FleetLimit>>>,
    fleet_redis: Mutex<Option<(FleetRedisKey, crate::redis_link::RedisConn)>>,
    /// The trace exporter (its thread and queue), while its settings stay.
    traces: Mutex<HashMap<crate::otel::ExportKey, Weak<crate::otel::Exporter>>>,
    /// Certificates obtained over ACME and the challenges being answered.
    pub acme: Arc<crate::acme::AcmeState>,
}

impl Retained {
    /// What the provider `s` (whose static keys digest to `material`) keeps.
    pub fn provider(&self, s: &JwtProviderSettings, material: &[u8; 32]) -> ProviderState {
        let last_good = match &s.jwks_url {
            Some(url) => kept(&self.jwks, (s.name.clone(), url.clone()), Default::default),
            None => Arc::default(),
        };
        let verified = kept(
            &self.verified,
            (s.clone(), *material),
            crate::auth::verified_tokens,
        );
        ProviderState {
            last_good,
            verified,
        }
    }

    /// The fleet-scoped counting of the `nth` limit with settings `s` of route `route`.
    pub fn fleet_limit(
        &self,
        route: &str,
        route_nth: usize,
        s: &RateLimitSettings,
        nth: usize,
        fleet: &crate::fleet::FleetSettings,
    ) -> anyhow::Result<Arc<crate::fleet::limits::FleetLimit>> {
        let target = fleet.target()?;
        let conn = {
            let mut kept = crate::sync::lock(&self.fleet_redis);
            match &*kept {
                Some(((t, timeout), c)) if t == target && *timeout == fleet.timeout => c.clone(),
                _ => {
                    let c = target.connect(fleet.timeout)?;
                    *kept = Some(((target.clone(), fleet.timeout), c.clone()));
                    c
                }
            }
        };
        // Named in Redis by what identifies it, so every node counts in the same state.
        let identity = s.identity();
        let name = fleet.key(&format!(
            "rl:{:016x}",
            crate::hash::stable_hash(
                format!("{route}\0{route_nth}\0{identity:?}\0{nth}").as_bytes()
            )
        ));
        Ok(kept(
            &self.fleet_limits,
            (route.to_string(), route_nth, identity, nth),
            || {
                crate::fleet::limits::FleetLimit::new(
                    conn,
                    &name,
                    s.per_second,
                    s.burst,
                    s.max_keys,
                    fleet.timeout,
                )
            },
        ))
    }

    /// The trace exporter for `key`, started on first use.
    pub fn trace_exporter(
        &self,
        key: crate::otel::ExportKey,
    ) -> anyhow::Result<Arc<crate::otel::Exporter>> {
        let mut map = crate::sync::lock(&self.traces);
        map.retain(|_, v| v.strong_count() > 0);
        if let Some(e) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(e);
        }
        let e = Arc::new(crate::otel::Exporter::start(&key)?);
        map.insert(key, Arc::downgrade(&e));
        Ok(e)
    }

    /// The store in `s.dir`, opened on first use. It keeps the directory and window it
    /// was opened with until no pipeline uses it (both take effect at start).
    pub fn store(&self, s: &crate::kv::StorageSettings) -> anyhow::Result<Arc<crate::kv::Store>> {
        let mut kept = crate::sync::lock(&self.store);
        if let Some(store) = kept.upgrade() {
            if store.path().parent() != Some(s.dir.as_path()) {
                tracing::warn!(
                    key = "storage.dir",
                    "changed; takes effect at the next start (the open store stays in use)"
                );
            }
            return Ok(store);
        }
        let store = crate::kv::Store::open(&s.dir, s.sync_window)?;
        *kept = Arc::downgrade(&store);
        Ok(store)
    }

    /// The rooms of `s.name`: the live ones if any pipeline still holds them.
    pub fn rooms(
        &self,
        s: &crate::rooms::RoomsSettings,
        store: &Arc<crate::kv::Store>,
        metrics: &crate::metrics::Metrics,
    ) -> anyhow::Result<Arc<crate::rooms::Rooms>> {
        let mut map = crate::sync::lock(&self.rooms);
        map.retain(|_, v| v.strong_count() > 0);
        let rooms = match map.get(&s.name).and_then(Weak::upgrade) {
            Some(r) => r,
            None => {
                let r = Arc::new(crate::rooms::Rooms::new(
                    s.clone(),
                    store.clone(),
                    metrics.rooms_gauges(&s.name),
                )?);
                map.insert(s.name.clone(), Arc::downgrade(&r));
                r
            }
        };
        if rooms.settings != *s {
            tracing::warn!(
                rooms = %s.name,
                "changed; the new settings apply once the rooms' members have left"
            );
        }
        rooms.start();
        Ok(rooms)
    }

    /// The Redis of a fleet namespace, listening for other nodes' writes into `store`.
    pub fn fleet(
        &self,
        s: &crate::kv::KvSettings,
        store: &Arc<crate::kv::Store>,
    ) -> anyhow::Result<Arc<crate::kv::fleet::Fleet>> {
        let url = s.redis_url.clone().unwrap_or_default();
        let key = (s.name.clone(), url.clone(), s.redis_prefix.clone());
        let mut fleets = crate::sync::lock(&self.fleets);
        fleets.retain(|_, v| v.strong_count() > 0);
        if let Some(f) = fleets.get(&key).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let f = Arc::new(crate::kv::fleet::Fleet::connect(
            &url,
            &s.redis_prefix,
            s.redis_timeout,
        )?);
        f.listen(Arc::downgrade(store), vec![s.name.clone()]);
        fleets.insert(key, Arc::downgrade(&f));
        Ok(f)
    }

    /// Stores the rooms' write-behind states (at shutdown, before `flush_store`).
    pub async fn flush_rooms(&self) {
        let live: Vec<Arc<crate::rooms::Rooms>> = crate::sync::lock(&self.rooms)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for rooms in live {
            rooms.flush(std::time::Duration::from_secs(5)).await;
        }
    }

    /// Puts every acknowledged write on disk (at shutdown).
    /// The file of the store while a pipeline uses it.
    pub fn open_store(&self) -> Option<std::path::PathBuf> {
        crate::sync::lock(&self.store)
            .upgrade()
            .map(|s| s.path().to_path_buf())
    }

    pub fn flush_store(&self) {
        if let Some(store) = crate::sync::lock(&self.store).upgrade() {
            store.flush();
        }
    }

    /// The buckets of the `nth` limit with settings `s` of route `route` (the
    /// `route_nth` route of that name).
    pub fn buckets(
        &self,
        route: &str,
        route_nth: usize,
        s: &RateLimitSettings,
        nth: usize,
    ) -> Arc<KeyedLimiter<u64>> {
        kept(
            &self.buckets,
            (route.to_string(), route_nth, s.identity(), nth),
            || s.limiter(),
        )
    }
}

/// The live value under `key`, or a new one from `make`; entries no pipeline uses any
/// more are dropped on the way.
fn kept<K: Eq + Hash, V>(
    map: &Mutex<HashMap<K, Weak<V>>>,
    key: K,
    make: impl FnOnce() -> V,
) -> Arc<V> {
    let mut map = crate::sync::lock(map);
    map.retain(|_, v| v.strong_count() > 0);
    if let Some(v) = map.get(&key).and_then(Weak::upgrade) {
        return v;
    }
    let v = Arc::new(make());
    map.insert(key, Arc::downgrade(&v));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64) -> RateLimitSettings {
        toml::from_str(&format!("per_second = {per_second:?}\nburst = 3")).unwrap()
    }

    fn provider(secret: &str) -> JwtProviderSettings {
        toml::from_str(&format!(
            "name = \"p\"\nalgorithms = [\"HS256\"]\nsecret = \"{secret}\"\njwks_url = \"http://idp.test/jwks\""
        ))
        .unwrap()
    }

    #[test]
    fn same_settings_same_state_changed_settings_fresh_state() {
        let r = Retained::default();
        let a = r.buckets("r", 0, &limit(1.0), 0);
        assert!(Arc::ptr_eq(&a, &r.buckets("r", 0, &limit(1.0), 0)));
        assert!(!Arc::ptr_eq(&a, &r.buckets("r", 0, &limit(2.0), 0)));
        assert!(!Arc::ptr_eq(&a, &r.buckets("r", 1, &limit(1.0), 0)));
        assert!(!Arc::ptr_eq(&a, &r.buckets("other", 0, &limit(1.0), 0)));

        let s = provider("a-secret-of-at-least-32-bytes-long!");
        let one = r.provider(&s, &[1; 32]);
        let again = r.provider(&s, &[1; 32]);
        assert!(Arc::ptr_eq(&one.verified, &again.verified));
        assert!(Arc::ptr_eq(&one.last_good, &again.last_good));
        // Other key material: tokens verified before must be verified again; the JWKS
        // (per name and URL) is still the provider's.
        let rekeyed = r.provider(&s, &[2; 32]);
        assert!(!Arc::ptr_eq(&one.verified, &rekeyed.verified));
        assert!(Arc::ptr_eq(&one.last_good, &rekeyed.last_good));
        let other = provider("another-secret-of-at-least-32-bytes!");
        assert!(!Arc::ptr_eq(
            &one.verified,
            &r.provider(&other, &[1; 32]).verified
        ));

        // Nothing uses them any more: gone.
        drop((a, one, again, rekeyed));
        let fresh = r.buckets("r", 0, &limit(1.0), 0);
        assert_eq!(Arc::strong_count(&fresh), 1);
        assert_eq!(crate::sync::lock(&r.buckets).len(), 1);
    }
}
