//! A named, tenant-scoped key (the source document's "context").
use sea_orm::entity::prelude::*;

/// A key row. Enum columns hold `keymesh.v1` enum numbers.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub purpose: i32,
    pub algorithm: i32,
    pub state: i32,
    pub primary_version: i32,
    pub min_decryption_version: i32,
    /// JSON object of labels.
    pub labels: String,
    /// Encoded `keymesh.v1.KeyPolicy`.
    pub policy: Vec<u8>,
    pub created_at: i64,
    pub deletion_time: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
