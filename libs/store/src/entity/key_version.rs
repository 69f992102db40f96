//! One version of a key, holding its material wrapped by a KEK (or nothing, once destroyed).
use sea_orm::entity::prelude::*;

/// A key version row.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "key_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub version: i32,
    pub state: i32,
    pub algorithm: i32,
    pub origin: i32,
    /// Wrapped by the KEK named below; `None` once destroyed.
    pub wrapped_material: Option<Vec<u8>>,
    pub kek_backend: String,
    pub kek_id: String,
    pub created_at: i64,
    pub destroyed_at: Option<i64>,
    /// Set while PENDING_DELETION: when the sweeper destroys the version.
    pub deletion_time: Option<i64>,
    /// Encryptions crypto-service has been allowed with this version (granted in blocks, so an upper bound).
    pub encryptions_granted: i64,
    /// Further wraps of the same material under secondary KMS backends (JSON list of backend, kek id and
    /// base64 ciphertext); `None` when the material has one wrap or is destroyed.
    pub extra_wraps: Option<String>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersion")
            .field("key_id", &self.key_id)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("kek_backend", &self.kek_backend)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
