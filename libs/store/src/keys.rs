//! Keys and their versions. Every lookup takes the tenant, so a key of another tenant is simply not found.
//! Changes go through [`LockedKey`]: the key's row is locked (`SELECT … FOR UPDATE` on Postgres; SQLite
//! serializes writers anyway), edited in memory, and written back in the same transaction, so concurrent
//! replicas never lose an update nor create the same version twice.

use std::collections::BTreeSet;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait, sea_query::Expr,
};

use crate::{
    StoreError,
    entity::{key, key_version, rewrap_job},
};

/// A key with all its versions, oldest first: what the lifecycle rules work on and what caches hold.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    /// The key row.
    pub key: key::Model,
    /// Its versions, oldest first.
    pub versions: Vec<key_version::Model>,
}

impl KeyRecord {
    /// One version.
    pub fn version(&self, version: u32) -> Option<&key_version::Model> {
        self.versions.iter().find(|v| v.version as u32 == version)
    }

    /// One version, to change it.
    pub fn version_mut(&mut self, version: u32) -> Option<&mut key_version::Model> {
        self.versions.iter_mut().find(|v| v.version as u32 == version)
    }

    /// The number the next version gets.
    pub fn next_version(&self) -> u32 {
        self.versions.iter().map(|v| v.version as u32).max().unwrap_or(0) + 1
    }
}

/// How a key is found.
#[derive(Clone, Copy, Debug)]
pub enum KeyLookup<'a> {
    /// By name or id within a tenant: what every caller-facing path uses.
    InTenant {
        /// The caller's tenant.
        tenant_id: &'a str,
        /// Name or `k_`-prefixed id.
        name_or_id: &'a str,
    },
    /// By id alone: for background maintenance, which acts for no tenant.
    ById(&'a str),
}

/// A key's versions, oldest first, through `db` (a connection or the transaction of a snapshot or a lock).
async fn versions_of_key(db: &impl ConnectionTrait, key_id: &str) -> Result<Vec<key_version::Model>, sea_orm::DbErr> {
    key_version::Entity::find()
        .filter(key_version::Column::KeyId.eq(key_id))
        .order_by_asc(key_version::Column::Version)
        .all(db)
        .await
}

/// A key locked for change. Edit `record`, then [`LockedKey::commit`]; dropping it rolls back.
pub struct LockedKey {
    txn: DatabaseTransaction,
    original: KeyRecord,
    /// The record to edit.
    pub record: KeyRecord,
}

impl LockedKey {
    /// Writes what changed and commits. A changed key gets a new revision and `updated_at`; returns the
    /// stored record and whether anything changed.
    pub async fn commit(self, now: i64) -> Result<(KeyRecord, bool), StoreError> {
        // One statement per version at most (a re-wrap changes them all).
        let statements = self.record.versions.len();
        crate::bounded_with(statements, async {
            let Self { txn, original, mut record } = self;
            if record == original {
                txn.commit().await?;
                return Ok((record, false));
            }
            record.key.revision = original.key.revision + 1;
            record.key.updated_at = now.max(original.key.updated_at + 1);
            record.key.clone().into_active_model().reset_all().update(&txn).await?;
            for version in &record.versions {
                match original.versions.iter().find(|v| v.version == version.version) {
                    Some(before) if before == version => {}
                    Some(_) => {
                        version.clone().into_active_model().reset_all().update(&txn).await?;
                    }
                    None => insert_version(&txn, version).await?,
                }
            }
            txn.commit().await?;
            Ok((record, true))
        })
        .await
    }
}

/// Inserts one new key version; a version number taken already is `AlreadyExists`.
async fn insert_version(txn: &DatabaseTransaction, version: &key_version::Model) -> Result<(), StoreError> {
    version.clone().into_active_model().insert(txn).await.map_err(|e| StoreError::from_insert("key version", e))?;
    Ok(())
}

/// Which keys ListKeys returns.
#[derive(Clone, Debug, Default)]
pub struct KeyFilter {
    /// Only this purpose (proto number), if set.
    pub purpose: Option<i32>,
    /// Only this state (proto number), if set.
    pub state: Option<i32>,
    /// Only keys carrying all of these labels.
    pub labels: std::collections::HashMap<String, String>,
}

/// The stored numbers of the PENDING_DELETION states of keys and of versions (the API's enums, which this
/// crate does not depend on).
#[derive(Clone, Copy, Debug)]
pub struct PendingDeletion {
    /// `KeyState::PendingDeletion`.
    pub key_state: i32,
    /// `KeyVersionState::PendingDeletion`.
    pub version_state: i32,
}

/// A key that changed, as replicas poll for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// Key id.
    pub key_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Revision after the change.
    pub revision: i64,
    /// When it changed.
    pub updated_at: i64,
}

/// Repository of keys.
#[derive(Clone)]
pub struct KeyRepository {
    db: DatabaseConnection,
}

impl KeyRepository {
    /// The connection it works on (for the readiness check).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Wraps a connection.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Inserts a key and its first versions atomically. A name taken in the tenant is `AlreadyExists`.
    pub async fn create(&self, record: &KeyRecord) -> Result<(), StoreError> {
        crate::bounded(async {
            let txn = self.db.begin().await?;
            record
                .key
                .clone()
                .into_active_model()
                .insert(&txn)
                .await
                .map_err(|e| StoreError::from_insert("a key with this name", e))?;
            for version in &record.versions {
                insert_version(&txn, version).await?;
            }
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// The tenant's key with this name or id.
    pub async fn find(&self, tenant_id: &str, name_or_id: &str) -> Result<Option<key::Model>, StoreError> {
        crate::bounded(async {
            Ok(key::Entity::find()
                .filter(lookup_condition(KeyLookup::InTenant { tenant_id, name_or_id }))
                .one(&self.db)
                .await?)
        })
        .await
    }

    /// A key with its versions, read from one snapshot: the key row and its versions are two queries, and a
    /// rotation committing between them would otherwise yield a record whose primary version is already
    /// DECRYPT_ONLY. Postgres gives the snapshot by a read-only REPEATABLE READ transaction; SQLite's
    /// transaction reads one snapshot anyway.
    pub async fn load(&self, lookup: KeyLookup<'_>) -> Result<Option<KeyRecord>, StoreError> {
        crate::bounded(async {
            let txn = if self.db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
                self.db
                    .begin_with_config(
                        Some(sea_orm::IsolationLevel::RepeatableRead),
                        Some(sea_orm::AccessMode::ReadOnly),
                    )
                    .await?
            } else {
                self.db.begin().await?
            };
            let Some(key) = key::Entity::find().filter(lookup_condition(lookup)).one(&txn).await? else {
                return Ok(None);
            };
            let versions = versions_of_key(&txn, &key.id).await?;
            txn.commit().await?;
            Ok(Some(KeyRecord { key, versions }))
        })
        .await
    }

    /// Locks a key (and so its versions) for change until the returned guard commits or drops.
    pub async fn lock(&self, lookup: KeyLookup<'_>) -> Result<Option<LockedKey>, StoreError> {
        crate::bounded(async {
            let txn = self.db.begin().await?;
            let Some(key) = key::Entity::find().filter(lookup_condition(lookup)).lock_exclusive().one(&txn).await?
            else {
                return Ok(None);
            };
            let versions = versions_of_key(&txn, &key.id).await?;
            let record = KeyRecord { key, versions };
            Ok(Some(LockedKey { txn, original: record.clone(), record }))
        })
        .await
    }

    /// One version of a key (already found through its tenant).
    pub async fn version(&self, key_id: &str, version: u32) -> Result<Option<key_version::Model>, StoreError> {
        crate::bounded(async {
            let version = i32::try_from(version)
                .map_err(|_| StoreError::Corrupt { what: "version", detail: "too large".into() })?;
            Ok(key_version::Entity::find_by_id((key_id.to_owned(), version)).one(&self.db).await?)
        })
        .await
    }

    /// A page of the tenant's keys in id order, starting after `after` (a key id), with the id to continue
    /// from when more may follow. Labels are matched here rather than in SQL, scanning in chunks, so a page
    /// is full whenever enough keys match.
    pub async fn list(
        &self,
        tenant_id: &str,
        filter: &KeyFilter,
        page_size: u64,
        after: Option<&str>,
    ) -> Result<(Vec<KeyRecord>, Option<String>), StoreError> {
        // A selective label filter may read many chunks: each read has the deadline, not the whole listing.
        {
            let chunk = page_size.clamp(100, 1000);
            let mut cursor = after.map(str::to_owned);
            let mut page = Vec::new();
            loop {
                let mut query = key::Entity::find().filter(key::Column::TenantId.eq(tenant_id));
                if let Some(purpose) = filter.purpose {
                    query = query.filter(key::Column::Purpose.eq(purpose));
                }
                if let Some(state) = filter.state {
                    query = query.filter(key::Column::State.eq(state));
                }
                if let Some(cursor) = &cursor {
                    query = query.filter(key::Column::Id.gt(cursor.as_str()));
                }
                let rows =
                    crate::bounded(async { Ok(query.order_by_asc(key::Column::Id).limit(chunk).all(&self.db).await?) })
                        .await?;
                let exhausted = (rows.len() as u64) < chunk;
                for row in rows {
                    cursor = Some(row.id.clone());
                    let labels: std::collections::HashMap<String, String> =
                        serde_json::from_str(&row.labels).unwrap_or_default();
                    if filter.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                        page.push(row);
                        if page.len() as u64 == page_size {
                            let versions = crate::bounded(self.versions_of(&page)).await?;
                            return Ok((join(page, versions), cursor));
                        }
                    }
                }
                if exhausted {
                    let versions = crate::bounded(self.versions_of(&page)).await?;
                    return Ok((join(page, versions), None));
                }
            }
        }
    }

    async fn versions_of(&self, keys: &[key::Model]) -> Result<Vec<key_version::Model>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        Ok(key_version::Entity::find()
            .filter(key_version::Column::KeyId.is_in(keys.iter().map(|k| k.id.as_str())))
            .order_by_asc(key_version::Column::KeyId)
            .order_by_asc(key_version::Column::Version)
            .all(&self.db)
            .await?)
    }

    /// Keys changed at or after `since` (milliseconds), oldest change first, at most `limit`.
    pub async fn changed_since(&self, since: i64, limit: u64) -> Result<Vec<KeyChange>, StoreError> {
        crate::bounded(async {
            let rows = key::Entity::find()
                .filter(key::Column::UpdatedAt.gte(since))
                .order_by_asc(key::Column::UpdatedAt)
                .limit(limit)
                .all(&self.db)
                .await?;
            Ok(rows
                .into_iter()
                .map(|k| KeyChange {
                    key_id: k.id,
                    tenant_id: k.tenant_id,
                    revision: k.revision,
                    updated_at: k.updated_at,
                })
                .collect())
        })
        .await
    }

    /// Ids of keys with something due at `now`: scheduled maintenance, or a key or version whose deletion
    /// time has come. At most `limit`.
    pub async fn due(
        &self,
        now: i64,
        limit: u64,
        pending_deletion: PendingDeletion,
    ) -> Result<Vec<String>, StoreError> {
        crate::bounded(async {
            let mut ids = BTreeSet::new();
            let keys = key::Entity::find()
                .filter(
                    Condition::any().add(key::Column::NextMaintenanceAt.lte(now)).add(
                        Condition::all()
                            .add(key::Column::State.eq(pending_deletion.key_state))
                            .add(key::Column::DeletionTime.lte(now)),
                    ),
                )
                .limit(limit)
                .all(&self.db)
                .await?;
            ids.extend(keys.into_iter().map(|k| k.id));
            let versions = key_version::Entity::find()
                .filter(key_version::Column::State.eq(pending_deletion.version_state))
                .filter(key_version::Column::DeletionTime.lte(now))
                .limit(limit)
                .all(&self.db)
                .await?;
            ids.extend(versions.into_iter().map(|v| v.key_id));
            Ok(ids.into_iter().collect())
        })
        .await
    }

    /// Ids of the keys of one tenant (or of every tenant) after `after`, in id order: the walk of a re-wrap.
    pub async fn key_ids_after(
        &self,
        tenant_id: Option<&str>,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<String>, StoreError> {
        crate::bounded(async {
            let mut query = key::Entity::find().select_only().column(key::Column::Id);
            if let Some(tenant_id) = tenant_id {
                query = query.filter(key::Column::TenantId.eq(tenant_id));
            }
            if let Some(after) = after {
                query = query.filter(key::Column::Id.gt(after));
            }
            Ok(query.order_by_asc(key::Column::Id).limit(limit).into_tuple::<String>().all(&self.db).await?)
        })
        .await
    }

    /// How many keys one tenant (or every tenant) has.
    pub async fn count_keys(&self, tenant_id: Option<&str>) -> Result<u64, StoreError> {
        crate::bounded(async {
            let mut query = key::Entity::find();
            if let Some(tenant_id) = tenant_id {
                query = query.filter(key::Column::TenantId.eq(tenant_id));
            }
            Ok(query.count(&self.db).await?)
        })
        .await
    }

    /// How many keys are in each state (the `key.state` column, a `KeyState` number), over every tenant.
    pub async fn count_by_state(&self) -> Result<Vec<(i32, i64)>, StoreError> {
        crate::bounded(async {
            Ok(key::Entity::find()
                .select_only()
                .column(key::Column::State)
                .column_as(key::Column::Id.count(), "keys")
                .group_by(key::Column::State)
                .into_tuple::<(i32, i64)>()
                .all(&self.db)
                .await?)
        })
        .await
    }

    /// The re-wrap job of a scope.
    pub async fn rewrap_job(&self, scope: &str) -> Result<Option<rewrap_job::Model>, StoreError> {
        crate::bounded(async { Ok(rewrap_job::Entity::find_by_id(scope.to_owned()).one(&self.db).await?) }).await
    }

    /// Starts (or takes over) the re-wrap job of its scope, replacing whatever row was there.
    pub async fn start_rewrap_job(&self, job: &rewrap_job::Model) -> Result<(), StoreError> {
        crate::bounded(async {
            let txn = self.db.begin().await?;
            rewrap_job::Entity::delete_by_id(job.scope.clone()).exec(&txn).await?;
            job.clone().into_active_model().insert(&txn).await?;
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// Saves a job's progress if its runner still owns it; false when another runner has taken it over.
    pub async fn save_rewrap_job(&self, job: &rewrap_job::Model) -> Result<bool, StoreError> {
        crate::bounded(async {
            let result = rewrap_job::Entity::update_many()
                .set(job.clone().into_active_model().reset_all())
                .filter(rewrap_job::Column::Scope.eq(job.scope.as_str()))
                .filter(rewrap_job::Column::Runner.eq(job.runner.as_str()))
                .exec(&self.db)
                .await?;
            Ok(result.rows_affected == 1)
        })
        .await
    }

    /// Adds `count` to the encryptions granted with a version, returning the new total. Called once per
    /// block of encryptions, never per encryption.
    pub async fn add_encryptions_granted(&self, key_id: &str, version: u32, count: i64) -> Result<i64, StoreError> {
        crate::bounded(async {
            let version_number = version as i32;
            key_version::Entity::update_many()
                .col_expr(
                    key_version::Column::EncryptionsGranted,
                    sea_orm::sea_query::ExprTrait::add(Expr::col(key_version::Column::EncryptionsGranted), count),
                )
                .filter(key_version::Column::KeyId.eq(key_id))
                .filter(key_version::Column::Version.eq(version_number))
                .exec(&self.db)
                .await?;
            Ok(self.version(key_id, version).await?.map(|v| v.encryptions_granted).unwrap_or(0))
        })
        .await
    }
}

fn lookup_condition(lookup: KeyLookup<'_>) -> Condition {
    match lookup {
        KeyLookup::InTenant { tenant_id, name_or_id } => {
            let by = if name_or_id.starts_with(KEY_ID_PREFIX) { key::Column::Id } else { key::Column::Name };
            Condition::all().add(key::Column::TenantId.eq(tenant_id)).add(by.eq(name_or_id))
        }
        KeyLookup::ById(id) => Condition::all().add(key::Column::Id.eq(id)),
    }
}

/// Keys with their versions (both ordered by key id for versions, any order for keys).
fn join(keys: Vec<key::Model>, versions: Vec<key_version::Model>) -> Vec<KeyRecord> {
    let mut records: Vec<KeyRecord> = keys.into_iter().map(|key| KeyRecord { key, versions: Vec::new() }).collect();
    for version in versions {
        if let Some(record) = records.iter_mut().find(|r| r.key.id == version.key_id) {
            record.versions.push(version);
        }
    }
    records
}

/// Prefix of key ids, which tells ids from names (names may not start with it).
pub const KEY_ID_PREFIX: &str = "k_";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect_and_migrate;

    fn record(tenant: &str, id: &str, name: &str) -> KeyRecord {
        KeyRecord {
            key: key::Model { labels: r#"{"team":"a"}"#.into(), ..key::Model::new(id, tenant, name, 1, 2, 1, 0) },
            versions: vec![version(id, 1)],
        }
    }

    fn version(key_id: &str, v: i32) -> key_version::Model {
        key_version::Model {
            key_id: key_id.into(),
            version: v,
            state: 1,
            algorithm: 2,
            origin: 1,
            wrapped_material: Some(vec![1, 2, 3]),
            kek_backend: "local".into(),
            kek_id: "local/0".into(),
            created_at: 0,
            destroyed_at: None,
            deletion_time: None,
            encryptions_granted: 0,
            extra_wraps: None,
        }
    }

    async fn exercise(db: DatabaseConnection) {
        let repo = KeyRepository::new(db);
        repo.create(&record("t1", "k_1", "pii")).await.unwrap();
        // Same name in the same tenant: refused, and nothing half-written.
        let dup = repo.create(&record("t1", "k_2", "pii")).await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists { .. })), "{dup:?}");
        assert!(versions_of_key(&repo.db, "k_2").await.unwrap().is_empty());
        // Same name in another tenant: fine, and invisible across tenants.
        repo.create(&record("t2", "k_3", "pii")).await.unwrap();
        assert_eq!(repo.find("t1", "pii").await.unwrap().unwrap().id, "k_1");
        assert_eq!(repo.find("t2", "pii").await.unwrap().unwrap().id, "k_3");
        assert!(repo.find("t2", "k_1").await.unwrap().is_none());
        assert_eq!(repo.find("t1", "k_1").await.unwrap().unwrap().name, "pii");
        assert_eq!(repo.version("k_1", 1).await.unwrap().unwrap().wrapped_material, Some(vec![1, 2, 3]));
        assert!(repo.version("k_1", 2).await.unwrap().is_none());

        // An edit adds a version and changes another; the revision moves, and an empty edit changes nothing.
        let mut locked = repo.lock(KeyLookup::InTenant { tenant_id: "t1", name_or_id: "pii" }).await.unwrap().unwrap();
        assert_eq!(locked.record.next_version(), 2);
        locked.record.versions.push(version("k_1", 2));
        locked.record.version_mut(1).unwrap().state = 2;
        locked.record.key.primary_version = 2;
        let (stored, changed) = locked.commit(1000).await.unwrap();
        assert!(changed);
        assert_eq!((stored.key.revision, stored.key.updated_at), (1, 1000));
        let loaded = repo.load(KeyLookup::ById("k_1")).await.unwrap().unwrap();
        assert_eq!(loaded, stored);
        let locked = repo.lock(KeyLookup::ById("k_1")).await.unwrap().unwrap();
        assert!(!locked.commit(2000).await.unwrap().1);
        assert!(repo.lock(KeyLookup::InTenant { tenant_id: "t2", name_or_id: "k_1" }).await.unwrap().is_none());
        assert_eq!(repo.changed_since(1000, 10).await.unwrap().len(), 1);

        // Listing: tenant-scoped, filtered by label, paginated.
        for i in 0..5 {
            let mut r = record("t1", &format!("k_1{i}"), &format!("n{i}"));
            if i % 2 == 1 {
                r.key.labels = r#"{"team":"b"}"#.into();
            }
            repo.create(&r).await.unwrap();
        }
        let all = KeyFilter::default();
        let (first, next) = repo.list("t1", &all, 4, None).await.unwrap();
        assert_eq!(first.len(), 4);
        let (rest, next) = repo.list("t1", &all, 4, next.as_deref()).await.unwrap();
        assert_eq!((rest.len(), next), (2, None));
        assert_eq!(first[0].versions.len(), 2);
        let team_b = KeyFilter { labels: [("team".into(), "b".into())].into(), ..Default::default() };
        assert_eq!(repo.list("t1", &team_b, 100, None).await.unwrap().0.len(), 2);
        assert_eq!(repo.list("t2", &all, 100, None).await.unwrap().0.len(), 1);

        assert_eq!(repo.add_encryptions_granted("k_1", 2, 1 << 20).await.unwrap(), 1 << 20);
        assert_eq!(repo.add_encryptions_granted("k_1", 2, 1 << 20).await.unwrap(), 2 << 20);
    }

    #[tokio::test]
    async fn keys_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display());
        exercise(connect_and_migrate(&url).await.unwrap()).await;
    }
}
