//! The hourly rollup behind `auditLogStats`: how many events a tenant recorded per hour,
//! action, actor type, target type and outcome. Kept equal to the log by the ingest
//! transaction (which adds) and retention (which subtracts).

use sea_orm::entity::prelude::*;

use crate::audit_log::{ActorType, Outcome};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_stats")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: String,
    /// The start of the hour of `occurred_at`, in seconds since 1970 (UTC).
    #[sea_orm(primary_key, auto_increment = false)]
    pub hour_start: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub action: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub actor_type: ActorType,
    /// Empty for events without a target.
    #[sea_orm(primary_key, auto_increment = false)]
    pub target_type: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub outcome: Outcome,
    pub events: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
