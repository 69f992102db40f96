//! A signed statement that the audit chain's record `sequence` had hash `hash` at `signed_at`: the anchor a
//! pruned chain is verified from, and proof against rewriting the chain wholesale.
use sea_orm::entity::prelude::*;

/// A checkpoint row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_checkpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub sequence: i64,
    pub hash: String,
    pub signed_at: i64,
    /// The key that signed (`audit_checkpoint_keys.kid`).
    pub kid: String,
    /// Ed25519 signature over the checkpoint statement.
    pub signature: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
