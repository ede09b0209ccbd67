//! One governance operation: who did what to which resource, when, and with what outcome.
//!
//! The table is append-only; rows are written only by the service's ingest path.

use sea_orm::entity::prelude::*;

/// A stored audit event.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_logs")]
pub struct Model {
    /// UUID v7, assigned by the server.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    /// Gap-free per-tenant sequence, in commit order.
    pub seq: i64,
    pub occurred_at: DateTimeUtc,
    pub recorded_at: DateTimeUtc,
    pub actor_type: ActorType,
    pub actor_id: String,
    pub actor_name: Option<String>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub target_name: Option<String>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub metadata: Json,
    /// `inet` on PostgreSQL, read back as text (`host/prefix`).
    #[sea_orm(select_as = "text")]
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// `hash` of the tenant's previous event (32 zero bytes before the first).
    pub prev_hash: Vec<u8>,
    /// SHA-256 of `prev_hash` and the event's canonical bytes.
    pub hash: Vec<u8>,
}

/// Who acted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum ActorType {
    #[sea_orm(string_value = "user")]
    User,
    #[sea_orm(string_value = "service")]
    Service,
    #[sea_orm(string_value = "system")]
    System,
}

/// How the operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum Outcome {
    #[sea_orm(string_value = "success")]
    Success,
    #[sea_orm(string_value = "failure")]
    Failure,
    #[sea_orm(string_value = "denied")]
    Denied,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
