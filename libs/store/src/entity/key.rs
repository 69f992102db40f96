//! A named, tenant-scoped key (the source document's "context").
use sea_orm::entity::prelude::*;

/// A key row. Enum columns hold `keymesh.v1` enum numbers.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
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
    /// Set while PENDING_DELETION: when the sweeper destroys the key.
    pub deletion_time: Option<i64>,
    /// Bumped by every change; what optimistic readers compare.
    pub revision: i64,
    /// When the key last changed: replicas poll this to invalidate their caches.
    pub updated_at: i64,
    /// When scheduled rotation or version retirement next needs to look at this key.
    pub next_maintenance_at: Option<i64>,
}

impl Model {
    /// A new key row: primary version 1, nothing scheduled, no description, labels or policy yet.
    pub fn new(id: &str, tenant_id: &str, name: &str, purpose: i32, algorithm: i32, state: i32, now: i64) -> Self {
        Self {
            id: id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            description: String::new(),
            purpose,
            algorithm,
            state,
            primary_version: 1,
            min_decryption_version: 1,
            labels: "{}".to_owned(),
            policy: Vec::new(),
            created_at: now,
            deletion_time: None,
            revision: 0,
            updated_at: now,
            next_maintenance_at: None,
        }
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
