//! A refresh token, known only by its SHA-256: the token itself is shown once and never stored.
use sea_orm::entity::prelude::*;

/// A refresh token row. Each use spends the row and adds the next of its family; a second use of a spent
/// row is a replay, and revokes the whole family.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "refresh_tokens")]
pub struct Model {
    /// Hex SHA-256 of the token.
    #[sea_orm(primary_key, auto_increment = false)]
    pub token_hash: String,
    /// The chain of rotations started by one grant; access tokens carry it as `sid`.
    pub family_id: String,
    pub client_id: String,
    pub tenant_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub spent_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
