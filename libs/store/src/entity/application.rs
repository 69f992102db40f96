//! An application: a client of the mesh with client credentials, roles and key permissions.
use sea_orm::entity::prelude::*;

/// An application row. `secret_hash` is an Argon2id PHC string, never the secret.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "applications")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub client_id: String,
    pub tenant_id: String,
    pub name: String,
    /// JSON array of role numbers.
    pub roles: String,
    /// JSON array of `{key_pattern, operations}`.
    pub permissions: String,
    pub secret_hash: String,
    pub previous_secret_hash: Option<String>,
    pub previous_secret_expires_at: Option<i64>,
    pub disabled: bool,
    pub created_at: i64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes are not secrets, but they are offline-attack material: keep them out of logs.
        f.debug_struct("Application")
            .field("client_id", &self.client_id)
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
