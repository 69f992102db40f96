//! Progress of a KEK re-wrap, one row per scope, so a re-wrap resumes where a crash stopped it and any
//! replica can report how far it got.
use sea_orm::entity::prelude::*;

/// A re-wrap job row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rewrap_jobs")]
pub struct Model {
    /// `*` for every tenant, else the tenant id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub scope: String,
    /// The keyring the job re-wraps to (member names and KEK ids); a different keyring starts over.
    pub target: String,
    /// The runner that owns the job; a new start takes it over and the old runner stops.
    pub runner: String,
    /// Last key id fully processed.
    pub cursor: Option<String>,
    pub keys_total: i64,
    pub keys_done: i64,
    pub versions_rewrapped: i64,
    pub versions_current: i64,
    pub versions_failed: i64,
    pub started_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// The last failure, without secrets.
    pub last_error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
