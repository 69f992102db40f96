//! The one way key-service reads and changes keys: reads go through the record cache (Redis or memory)
//! before the database; changes lock the key's row, apply a rule from `lifecycle.rs`, commit, and then
//! invalidate every cache and tell watching crypto-services. Unwrapped DEKs are kept briefly in memory so a
//! burst of GetDataKey calls costs one KMS unwrap.

use std::{sync::Arc, time::Duration};

use keymesh_crypto::{KeyAlgorithm, SecretKey};
use keymesh_kms::{Keyrings, WrapContext, WrapSet, WrappedKey};
use keymesh_proto::algorithm::{FromProto, ToProto};
use keymesh_proto::v1 as pb;
use keymesh_store::{
    entity::key_version,
    keys::{KeyLookup, KeyRecord, KeyRepository, LockedKey},
    now_millis,
};
use moka::future::Cache;

use crate::{
    changes::ChangeFeed,
    error::KeyError,
    lifecycle,
    metrics::{self, RotationReason},
    record_cache::{RecordCache, Tier},
};

/// Where a record was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A cache tier.
    Cache(Tier),
    /// The database (and it is now cached).
    Database,
}

/// How long an unwrapped DEK stays in key-service's memory.
const DEK_TTL: Duration = Duration::from_secs(60);

/// Keys, their caches and their KEK backend.
#[derive(Clone)]
pub struct KeyStore {
    repo: KeyRepository,
    records: RecordCache,
    kms: Keyrings,
    /// (key id, version) → DEK. Material of a version never changes (a KEK re-wrap changes only its
    /// wrapping), so entries need no invalidation for correctness; they are dropped on any change of the key
    /// anyway, so a destroyed version's DEK leaves memory at once.
    deks: Cache<(String, u32), Arc<SecretKey>>,
    feed: ChangeFeed,
}

impl KeyStore {
    /// Wires the store.
    pub fn new(repo: KeyRepository, records: RecordCache, kms: Keyrings, feed: ChangeFeed) -> Self {
        let deks = Cache::builder().max_capacity(10_000).time_to_live(DEK_TTL).support_invalidation_closures().build();
        Self { repo, records, kms, deks, feed }
    }

    /// The repository, for queries that bypass the caches (listing, maintenance).
    pub fn repo(&self) -> &KeyRepository {
        &self.repo
    }

    /// The KEK keyrings (the default one and tenants' own).
    pub fn kms(&self) -> &Keyrings {
        &self.kms
    }

    /// The change feed.
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    /// The tenant's key, from a cache or the database.
    pub async fn record(&self, tenant_id: &str, name_or_id: &str) -> Result<(Arc<KeyRecord>, Source), KeyError> {
        let started = std::time::Instant::now();
        if let Some((record, tier)) = self.records.get(tenant_id, name_or_id).await {
            metrics::record_lookup(Source::Cache(tier), started.elapsed().as_secs_f64());
            return Ok((record, Source::Cache(tier)));
        }
        let Some(record) = self.repo.load(KeyLookup::InTenant { tenant_id, name_or_id }).await? else {
            return Err(self.not_in_tenant(name_or_id).await);
        };
        // The database's time includes the cache tiers that missed before it, as the caller waited for both.
        metrics::record_lookup(Source::Database, started.elapsed().as_secs_f64());
        let record = Arc::new(record);
        self.records.put(record.clone()).await;
        Ok((record, Source::Database))
    }

    /// The unwrapped material of a version that `lifecycle::usable_version` allowed, and whether the KMS
    /// had to unwrap it.
    pub async fn material(
        &self,
        record: &KeyRecord,
        version: &key_version::Model,
    ) -> Result<(Arc<SecretKey>, bool), KeyError> {
        let cache_key = (record.key.id.clone(), version.version as u32);
        if let Some(dek) = self.deks.get(&cache_key).await {
            return Ok((dek, false));
        }
        let dek = match self.unwrap(record, version).await {
            Ok(dek) => dek,
            // The record may come from a cache that missed a re-wrap (its wraps may name a KEK that is no
            // longer configured): the database has the truth, and the stale entry goes.
            Err(KeyError::Kms(e)) => match self.repo.version(&record.key.id, version.version as u32).await? {
                Some(fresh)
                    if fresh.wrapped_material != version.wrapped_material
                        || fresh.extra_wraps != version.extra_wraps =>
                {
                    self.forget(std::slice::from_ref(&record.key.id)).await;
                    self.unwrap(record, &fresh).await?
                }
                _ => return Err(KeyError::Kms(e)),
            },
            Err(e) => return Err(e),
        };
        let dek = Arc::new(dek);
        self.deks.insert(cache_key, dek.clone()).await;
        Ok((dek, true))
    }

    /// Unwraps a version's material through the KMS, bypassing the memory cache.
    pub async fn unwrap(&self, record: &KeyRecord, version: &key_version::Model) -> Result<SecretKey, KeyError> {
        let algorithm = algorithm(record, version)?;
        let wraps = stored_wraps(version)?.ok_or_else(|| {
            KeyError::FailedPrecondition(format!(
                "version {} of key {:?} is destroyed",
                version.version, record.key.name
            ))
        })?;
        Ok(self
            .kms
            .for_tenant(&record.key.tenant_id)
            .unwrap(&wraps, &wrap_context(record, version.version as u32, algorithm))
            .await?)
    }

    /// Why a key reference found nothing in the tenant: a key id that exists in another tenant is told apart
    /// (for the owner's audit trail), though the caller hears the same NOT_FOUND as for an unknown id.
    pub async fn not_in_tenant(&self, name_or_id: &str) -> KeyError {
        if name_or_id.starts_with(keymesh_store::keys::KEY_ID_PREFIX)
            && let Ok(Some(record)) = self.repo.load(KeyLookup::ById(name_or_id)).await
        {
            return KeyError::OtherTenant { key: name_or_id.to_owned(), owner: record.key.tenant_id };
        }
        KeyError::KeyNotFound(name_or_id.to_owned())
    }

    /// Locks a key for change.
    pub async fn lock(&self, lookup: KeyLookup<'_>) -> Result<LockedKey, KeyError> {
        let name = match lookup {
            KeyLookup::InTenant { name_or_id, .. } => name_or_id,
            KeyLookup::ById(id) => id,
        };
        match self.repo.lock(lookup).await? {
            Some(locked) => Ok(locked),
            None => Err(self.not_in_tenant(name).await),
        }
    }

    /// Commits a change and makes every cache and watcher forget the old record.
    pub async fn commit(&self, locked: LockedKey) -> Result<KeyRecord, KeyError> {
        let (record, changed) = locked.commit(now_millis()).await?;
        if changed {
            self.forget(std::slice::from_ref(&record.key.id)).await;
            self.feed.publish(&record.key.id, &record.key.tenant_id, record.key.revision);
        }
        Ok(record)
    }

    /// Drops cached records and DEKs of these keys. False when Redis could not be told.
    pub async fn forget(&self, key_ids: &[String]) -> bool {
        let ids: Vec<String> = key_ids.to_vec();
        let ids_for_deks = ids.clone();
        // Only fails when the cache was built without closure support, which `new` always enables.
        let _ = self.deks.invalidate_entries_if(move |(id, _), _| ids_for_deks.contains(id));
        self.records.invalidate(&ids).await
    }

    /// A new version of `record` numbered `version`, with fresh material from the CSPRNG (a random key, or a
    /// generated private key as PKCS#8) wrapped by the KEK.
    pub async fn generate_version(&self, record: &KeyRecord, version: u32) -> Result<key_version::Model, KeyError> {
        let algorithm = KeyAlgorithm::from_i32(record.key.algorithm).ok_or_else(|| {
            KeyError::FailedPrecondition(format!("key {:?} has an algorithm this build lacks", record.key.name))
        })?;
        // RSA key generation takes a good part of a second: keep it off the async workers.
        let material = tokio::task::spawn_blocking(move || algorithm.generate())
            .await
            .map_err(|_| KeyError::Crypto(keymesh_crypto::CryptoError::Library))??;
        self.wrap_version(record, version, algorithm, &material, pb::KeyOrigin::Generated).await
    }

    /// Wraps `material` as version `version` of `record`.
    pub async fn wrap_version(
        &self,
        record: &KeyRecord,
        version: u32,
        algorithm: KeyAlgorithm,
        material: &SecretKey,
        origin: pb::KeyOrigin,
    ) -> Result<key_version::Model, KeyError> {
        let wraps = self
            .kms
            .for_tenant(&record.key.tenant_id)
            .wrap(material, &wrap_context(record, version, algorithm))
            .await?;
        let mut row = key_version::Model {
            key_id: record.key.id.clone(),
            version: version as i32,
            state: pb::KeyVersionState::Active as i32,
            algorithm: algorithm.to_proto() as i32,
            origin: origin as i32,
            wrapped_material: None,
            kek_backend: String::new(),
            kek_id: String::new(),
            created_at: now_millis(),
            destroyed_at: None,
            deletion_time: None,
            encryptions_granted: 0,
            extra_wraps: None,
        };
        store_wraps(&mut row, &wraps);
        Ok(row)
    }

    /// Rotates the key if `still_wanted` holds once it is locked (so replicas racing to rotate for the same
    /// reason rotate once). Returns the new record, or `None` when nothing was done.
    pub async fn rotate_if(
        &self,
        lookup: KeyLookup<'_>,
        reason: RotationReason,
        still_wanted: impl FnOnce(&KeyRecord) -> bool,
    ) -> Result<Option<KeyRecord>, KeyError> {
        let mut locked = self.lock(lookup).await?;
        if !still_wanted(&locked.record) {
            return Ok(None);
        }
        lifecycle::check_rotatable(&locked.record)?;
        let next = locked.record.next_version();
        let version = self.generate_version(&locked.record, next).await?;
        lifecycle::rotate(&mut locked.record, version, now_millis())?;
        let record = self.commit(locked).await?;
        metrics::rotated(reason);
        tracing::info!(key_id = %record.key.id, version = next, "rotated key");
        Ok(Some(record))
    }
}

/// The wraps of a version's material; `None` once destroyed. The first wrap lives in the row's own columns
/// (so single-backend rows read as they always did), the others in `extra_wraps`.
pub fn stored_wraps(version: &key_version::Model) -> Result<Option<WrapSet>, KeyError> {
    let Some(ciphertext) = version.wrapped_material.clone() else { return Ok(None) };
    let first = WrappedKey { backend: version.kek_backend.clone(), kek_id: version.kek_id.clone(), ciphertext };
    WrapSet::from_columns(first, version.extra_wraps.as_deref())
        .map(Some)
        .map_err(|detail| corrupt_wraps(format!("key {} version {}: {detail}", version.key_id, version.version)))
}

fn corrupt_wraps(detail: String) -> KeyError {
    KeyError::Store(keymesh_store::StoreError::Corrupt { what: "extra_wraps", detail })
}

/// Stores `wraps` in the version's row.
pub fn store_wraps(version: &mut key_version::Model, wraps: &WrapSet) {
    let (first, extra) = wraps.to_columns();
    version.wrapped_material = Some(first.ciphertext);
    version.kek_backend = first.backend;
    version.kek_id = first.kek_id;
    version.extra_wraps = extra;
}

/// The version's algorithm.
pub fn algorithm(record: &KeyRecord, version: &key_version::Model) -> Result<KeyAlgorithm, KeyError> {
    KeyAlgorithm::from_i32(version.algorithm).ok_or_else(|| {
        KeyError::FailedPrecondition(format!(
            "version {} of key {:?} has an algorithm this build lacks",
            version.version, record.key.name
        ))
    })
}

/// What wrapped material is bound to: it cannot be moved to another tenant, key, version or algorithm.
pub fn wrap_context(record: &KeyRecord, version: u32, algorithm: KeyAlgorithm) -> WrapContext {
    WrapContext {
        tenant_id: record.key.tenant_id.clone(),
        key_id: record.key.id.clone(),
        version,
        algorithm: algorithm.name().to_owned(),
    }
}
