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
    /// The tenant both live in.
    pub tenant_id: String,
    /// The identity that registered it, as JSON `[client_id, external issuer, external subject]` (the external
    /// parts empty unless its token came from a token exchange): unambiguous whatever the parts contain.
    pub registrant: String,
    /// The name registered (the application is called `<name>.<environment>`).
    pub name: String,
    /// The environment registered for.
    pub environment: String,
    /// The team given at registration.
    pub team: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
