//! Read-through cache of key records — a key's metadata and its versions' *wrapped* material — so
//! GetDataKey usually needs no database read. With a Redis URL the records live in Redis, shared by every
//! replica; without one, in process memory. Either way only wrapped material is cached here: the KEK never
//! leaves the KMS backend, so a Redis dump is as useless to an attacker as a database dump.
//!
//! Redis is an optimisation, never a dependency (`keymesh-redis`): every command runs under a short deadline, and when Redis
//! is down or slow the database answers, the outage is logged once, and Redis is tried again a second
//! later. Invalidation after a change is done twice: at once by the replica that made it, and again by every
//! replica's change poll (see `changes.rs`) for a few seconds after, which also covers a reader that filled
//! the cache with a record read just before the change, and changes made while Redis was unreachable.

use std::{sync::Arc, time::Duration};

use keymesh_redis::GuardedRedis;
use keymesh_store::keys::{KEY_ID_PREFIX, KeyRecord};
use moka::future::Cache;

/// Where a record came from, for metrics and the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Process memory.
    Memory,
    /// Redis.
    Redis,
}

/// Prefix of every Redis key keymesh writes; the format version lets a new layout coexist with the old.
const REDIS_PREFIX: &str = "keymesh:v1";

/// The cache.
#[derive(Clone)]
pub struct RecordCache {
    memory: Cache<String, Arc<KeyRecord>>,
    /// (tenant, name) → key id. Names never change and are never reused within a tenant, so an alias
    /// only needs to expire to bound memory.
    aliases: Cache<(String, String), String>,
    redis: Option<Arc<GuardedRedis>>,
    ttl: Duration,
}

impl RecordCache {
    /// A cache in process memory only.
    pub fn in_memory(ttl: Duration) -> Self {
        Self {
            memory: Cache::builder().max_capacity(100_000).time_to_live(ttl).build(),
            aliases: Cache::builder().max_capacity(100_000).time_to_live(ttl).build(),
            redis: None,
            ttl,
        }
    }

    /// A cache in Redis. Connects lazily: a Redis that is down at start only means database reads.
    pub fn redis(url: &str, timeout: Duration, ttl: Duration) -> Result<Self, redis::RedisError> {
        let redis = GuardedRedis::open(url, timeout, "record_cache", "serving key records from the database")?;
        let mut cache = Self::in_memory(ttl);
        // Records are not held in process memory when Redis is there: every replica must see an
        // invalidation at once. Aliases (immutable) still are.
        cache.memory = Cache::builder().max_capacity(0).build();
        cache.redis = Some(Arc::new(redis));
        Ok(cache)
    }

    fn record_key(key_id: &str) -> String {
        format!("{REDIS_PREFIX}:key:{key_id}")
    }

    fn alias_key(tenant_id: &str, name: &str) -> String {
        format!("{REDIS_PREFIX}:alias:{tenant_id}:{name}")
    }

    /// The tenant's key record named `name_or_id`, if cached.
    pub async fn get(&self, tenant_id: &str, name_or_id: &str) -> Option<(Arc<KeyRecord>, Tier)> {
        let key_id = if name_or_id.starts_with(KEY_ID_PREFIX) {
            name_or_id.to_owned()
        } else {
            let alias = (tenant_id.to_owned(), name_or_id.to_owned());
            match self.aliases.get(&alias).await {
                Some(id) => id,
                None => {
                    let redis = self.redis.as_ref()?;
                    let mut cmd = redis::cmd("GET");
                    cmd.arg(Self::alias_key(tenant_id, name_or_id));
                    let id: String = redis.run::<Option<String>>(cmd).await.flatten()?;
                    self.aliases.insert(alias, id.clone()).await;
                    id
                }
            }
        };
        let (record, tier) = match &self.redis {
            None => (self.memory.get(&key_id).await?, Tier::Memory),
            Some(redis) => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(Self::record_key(&key_id));
                let bytes: Vec<u8> = redis.run::<Option<Vec<u8>>>(cmd).await.flatten()?;
                let record: KeyRecord = serde_json::from_slice(&bytes).ok()?;
                (Arc::new(record), Tier::Redis)
            }
        };
        // A record is only ever returned to its own tenant, whatever the cache key said.
        (record.key.tenant_id == tenant_id).then_some((record, tier))
    }

    /// Caches a record read from the database.
    pub async fn put(&self, record: Arc<KeyRecord>) {
        let alias = (record.key.tenant_id.clone(), record.key.name.clone());
        self.aliases.insert(alias, record.key.id.clone()).await;
        match &self.redis {
            None => self.memory.insert(record.key.id.clone(), record).await,
            Some(redis) => {
                let Ok(bytes) = serde_json::to_vec(record.as_ref()) else { return };
                let ttl = self.ttl.as_secs().max(1);
                let mut pipe = redis::pipe();
                pipe.cmd("SET").arg(Self::record_key(&record.key.id)).arg(bytes).arg("EX").arg(ttl).ignore();
                pipe.cmd("SET")
                    .arg(Self::alias_key(&record.key.tenant_id, &record.key.name))
                    .arg(&record.key.id)
                    .arg("EX")
                    .arg(ttl)
                    .ignore();
                let _: Option<()> = redis.run_pipe(pipe).await;
            }
        }
    }

    /// Forgets keys that changed. Returns false when Redis could not be told, so the caller retries later.
    pub async fn invalidate(&self, key_ids: &[String]) -> bool {
        for id in key_ids {
            self.memory.invalidate(id).await;
        }
        match &self.redis {
            None => true,
            Some(_) if key_ids.is_empty() => true,
            Some(redis) => {
                let mut cmd = redis::cmd("DEL");
                for id in key_ids {
                    cmd.arg(Self::record_key(id));
                }
                redis.run::<i64>(cmd).await.is_some()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keymesh_store::entity::key;
    use std::time::Instant;

    fn record(tenant: &str, id: &str, name: &str) -> Arc<KeyRecord> {
        Arc::new(KeyRecord { key: key::Model::new(id, tenant, name, 1, 2, 1, 0), versions: vec![] })
    }

    #[tokio::test]
    async fn memory_tier_is_tenant_scoped_and_invalidates() {
        let cache = RecordCache::in_memory(Duration::from_secs(60));
        cache.put(record("t1", "k_1", "pii")).await;
        assert!(cache.get("t1", "pii").await.is_some_and(|(r, tier)| r.key.id == "k_1" && tier == Tier::Memory));
        assert!(cache.get("t1", "k_1").await.is_some());
        assert!(cache.get("t2", "pii").await.is_none());
        assert!(cache.get("t2", "k_1").await.is_none());
        assert!(cache.invalidate(&["k_1".into()]).await);
        assert!(cache.get("t1", "pii").await.is_none());
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_miss_not_an_error() {
        // Nothing listens on port 1: every lookup misses quickly, and nothing panics.
        let cache =
            RecordCache::redis("redis://127.0.0.1:1", Duration::from_millis(50), Duration::from_secs(60)).unwrap();
        cache.put(record("t1", "k_1", "pii")).await;
        let started = Instant::now();
        assert!(cache.get("t1", "k_1").await.is_none());
        assert!(!cache.invalidate(&["k_1".into()]).await, "a failed DEL must be retried by the change poll");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
