//! Where retention cut a tenant's chain: the last purged event, from which verification of
//! the remaining events starts.

use sea_orm::entity::prelude::*;

/// The sequence and hash of the last event a purge removed.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "chain_checkpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    pub hash: Vec<u8>,
    pub purged_count: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
