//! How an application came from the SDK's auto-registration (RegisterApplication): who registered it, under which
//! name and environment, for which team. One row per registered application; (tenant, name, environment) is
//! unique, which makes registering again find the same application.
use sea_orm::entity::prelude::*;

/// A registration row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "application_registrations")]
pub struct Model {
    /// The registered application.
    #[sea_orm(primary_key, auto_increment = false)]
    pub client_id: String,
    pub tenant_id: String,
    /// The identity that registered it: its client id, and the external subject of an exchanged token.
    pub registrant: String,
    pub name: String,
    pub environment: String,
    pub team: String,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
