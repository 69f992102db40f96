//! Tenants, applications and token-signing keys.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, TransactionTrait,
};

use crate::{
    StoreError,
    entity::{application, signing_key, tenant},
};

/// Repository of identities.
#[derive(Clone)]
pub struct TokenRepository {
    db: DatabaseConnection,
}

impl TokenRepository {
    /// Wraps a connection.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Number of tenants (zero means a fresh database).
    pub async fn tenant_count(&self) -> Result<u64, StoreError> {
        Ok(tenant::Entity::find().count(&self.db).await?)
    }

    /// Creates a tenant together with its first application, atomically: a crash can never leave a root
    /// tenant without its bootstrap admin.
    pub async fn create_tenant_with_application(
        &self,
        tenant: tenant::Model,
        application: application::Model,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        tenant.into_active_model().insert(&txn).await.map_err(|e| StoreError::from_insert("tenant", e))?;
        application.into_active_model().insert(&txn).await.map_err(|e| StoreError::from_insert("application", e))?;
        txn.commit().await?;
        Ok(())
    }

    /// An application by client id.
    pub async fn application(&self, client_id: &str) -> Result<Option<application::Model>, StoreError> {
        Ok(application::Entity::find_by_id(client_id.to_owned()).one(&self.db).await?)
    }

    /// Stores a new signing key.
    pub async fn insert_signing_key(&self, key: signing_key::Model) -> Result<(), StoreError> {
        key.into_active_model().insert(&self.db).await.map_err(|e| StoreError::from_insert("signing key", e))?;
        Ok(())
    }

    /// Replaces a signing key's wraps (after a keyring change), from `key`'s wrap columns.
    pub async fn rewrap_signing_key(&self, key: &signing_key::Model) -> Result<(), StoreError> {
        use sea_orm::sea_query::Expr;
        signing_key::Entity::update_many()
            .col_expr(signing_key::Column::WrappedPrivateKey, Expr::value(key.wrapped_private_key.clone()))
            .col_expr(signing_key::Column::KekBackend, Expr::value(key.kek_backend.clone()))
            .col_expr(signing_key::Column::KekId, Expr::value(key.kek_id.clone()))
            .col_expr(signing_key::Column::ExtraWraps, Expr::value(key.extra_wraps.clone()))
            .filter(signing_key::Column::Kid.eq(&key.kid))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Signing keys not retired, newest first.
    pub async fn current_signing_keys(&self) -> Result<Vec<signing_key::Model>, StoreError> {
        Ok(signing_key::Entity::find()
            .filter(signing_key::Column::RetiredAt.is_null())
            .order_by_desc(signing_key::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }
}
