//! An API key of a service: its tenant, scopes, and the SHA-256 of the key itself.

use sea_orm::entity::prelude::*;

/// A stored API key (the key itself is shown once, at creation, and never stored).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    /// Who uses it (`api-gateway`).
    pub name: String,
    /// Space-separated scopes (`audit:write audit:read`).
    pub scopes: String,
    pub key_hash: Vec<u8>,
    /// The key's first characters, to recognize it in listings.
    pub prefix: String,
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
