//! A revocation every verifying service enforces until `expires_at`, when every token it could match has
//! expired anyway.
use sea_orm::entity::prelude::*;

/// A revocation row; `id` is `<scope>:<value>`, so revoking twice is one row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "revocations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// `keymesh.v1.RevocationScope` number.
    pub scope: i32,
    /// The token id, client id or session id revoked.
    pub value: String,
    pub revoked_at: i64,
    pub expires_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
