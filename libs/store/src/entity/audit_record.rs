//! A stored audit event with its place in the hash chain.
use sea_orm::entity::prelude::*;

/// An audit row. `event` is the encoded `keymesh.v1.AuditEvent`; the other columns exist to filter on.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_records")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub sequence: i64,
    #[sea_orm(unique)]
    pub event_id: String,
    pub tenant_id: String,
    pub time: i64,
    pub service: String,
    pub identity: String,
    pub operation: String,
    pub resource: String,
    pub outcome: i32,
    pub event: Vec<u8>,
    pub received_at: i64,
    pub previous_hash: String,
    pub hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
