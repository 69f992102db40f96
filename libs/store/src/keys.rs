//! Keys and their versions. Every lookup takes the tenant, so a key of another tenant is simply not found.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    TransactionTrait,
};

use crate::{
    StoreError,
    entity::{key, key_version},
};

/// Repository of keys.
#[derive(Clone)]
pub struct KeyRepository {
    db: DatabaseConnection,
}

impl KeyRepository {
    /// Wraps a connection.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Inserts a key and its first versions atomically. A name taken in the tenant is `AlreadyExists`.
    pub async fn create(&self, key: key::Model, versions: Vec<key_version::Model>) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        key.into_active_model().insert(&txn).await.map_err(|e| StoreError::from_insert("a key with this name", e))?;
        for version in versions {
            version.into_active_model().insert(&txn).await.map_err(|e| StoreError::from_insert("key version", e))?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// The tenant's key with this name or id.
    pub async fn find(&self, tenant_id: &str, name_or_id: &str) -> Result<Option<key::Model>, StoreError> {
        let by = if name_or_id.starts_with(KEY_ID_PREFIX) { key::Column::Id } else { key::Column::Name };
        Ok(key::Entity::find()
            .filter(key::Column::TenantId.eq(tenant_id))
            .filter(by.eq(name_or_id))
            .one(&self.db)
            .await?)
    }

    /// All versions of a key (already found through its tenant), oldest first.
    pub async fn versions(&self, key_id: &str) -> Result<Vec<key_version::Model>, StoreError> {
        Ok(key_version::Entity::find()
            .filter(key_version::Column::KeyId.eq(key_id))
            .order_by_asc(key_version::Column::Version)
            .all(&self.db)
            .await?)
    }

    /// One version of a key (already found through its tenant).
    pub async fn version(&self, key_id: &str, version: u32) -> Result<Option<key_version::Model>, StoreError> {
        let version =
            i32::try_from(version).map_err(|_| StoreError::Corrupt { what: "version", detail: "too large".into() })?;
        Ok(key_version::Entity::find_by_id((key_id.to_owned(), version)).one(&self.db).await?)
    }
}

/// Prefix of key ids, which tells ids from names (names may not start with it).
pub const KEY_ID_PREFIX: &str = "k_";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect_and_migrate;

    fn key(tenant: &str, id: &str, name: &str) -> key::Model {
        key::Model {
            id: id.into(),
            tenant_id: tenant.into(),
            name: name.into(),
            description: String::new(),
            purpose: 1,
            algorithm: 2,
            state: 1,
            primary_version: 1,
            min_decryption_version: 1,
            labels: "{}".into(),
            policy: vec![],
            created_at: 0,
            deletion_time: None,
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
        }
    }

    pub(crate) async fn exercise(db: DatabaseConnection) {
        let repo = KeyRepository::new(db);
        repo.create(key("t1", "k_1", "pii"), vec![version("k_1", 1)]).await.unwrap();
        // Same name in the same tenant: refused, and nothing half-written.
        let dup = repo.create(key("t1", "k_2", "pii"), vec![version("k_2", 1)]).await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists { .. })), "{dup:?}");
        assert!(repo.versions("k_2").await.unwrap().is_empty());
        // Same name in another tenant: fine, and invisible across tenants.
        repo.create(key("t2", "k_3", "pii"), vec![version("k_3", 1)]).await.unwrap();
        assert_eq!(repo.find("t1", "pii").await.unwrap().unwrap().id, "k_1");
        assert_eq!(repo.find("t2", "pii").await.unwrap().unwrap().id, "k_3");
        assert!(repo.find("t2", "k_1").await.unwrap().is_none());
        assert_eq!(repo.find("t1", "k_1").await.unwrap().unwrap().name, "pii");
        assert_eq!(repo.version("k_1", 1).await.unwrap().unwrap().wrapped_material, Some(vec![1, 2, 3]));
        assert!(repo.version("k_1", 2).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn keys_on_sqlite() {
        let dir = std::env::temp_dir().join(format!("keymesh-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("keys.db").display());
        let _ = std::fs::remove_file(dir.join("keys.db"));
        exercise(connect_and_migrate(&url).await.unwrap()).await;
        std::fs::remove_dir_all(dir).ok();
    }
}
