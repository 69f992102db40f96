//! audit-service's checkpoint signing keys. The private half is stored only wrapped by the KMS keyring; the
//! public half is published by ListCheckpoints.
use sea_orm::entity::prelude::*;

/// A checkpoint key row.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_checkpoint_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub kid: String,
    pub algorithm: String,
    /// Raw Ed25519 public key (32 bytes).
    pub public_key: Vec<u8>,
    /// PKCS#8 private key, wrapped by the keyring's primary.
    pub wrapped_private_key: Vec<u8>,
    pub kek_backend: String,
    pub kek_id: String,
    /// Wraps under the keyring's other members (see `keymesh_kms::WrapSet::from_columns`).
    pub extra_wraps: Option<String>,
    pub created_at: i64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditCheckpointKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
