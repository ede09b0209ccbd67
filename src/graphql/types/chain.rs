//! The hash chain's head and verification, as GraphQL objects.

use async_graphql::SimpleObject;

use crate::graphql::scalars::DateTime;

/// The newest event of a tenant's hash chain.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditChainHead {
    /// The tenant.
    pub tenant_id: String,
    /// Its last sequence number.
    pub sequence: String,
    /// That event's hash, in lower-case hex.
    pub hash: String,
    /// When that event was recorded.
    pub recorded_at: Option<DateTime>,
}

impl From<entity::chain_head::Model> for AuditChainHead {
    fn from(head: entity::chain_head::Model) -> Self {
        AuditChainHead {
            tenant_id: head.tenant_id,
            sequence: head.seq.to_string(),
            hash: hex::encode(head.hash),
            recorded_at: head.recorded_at.map(DateTime),
        }
    }
}

/// The result of checking a tenant's hash chain.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditChainVerification {
    /// Every checked event is present once, unchanged, and chained to the one before.
    pub valid: bool,
    /// How many events were checked before the first problem (or in all).
    pub checked_count: u64,
    /// The first sequence number at fault, when invalid.
    pub first_invalid_sequence: Option<String>,
    /// What is wrong there, when invalid.
    pub reason: Option<String>,
}

impl From<crate::service::tlog::chain::Verification> for AuditChainVerification {
    fn from(v: crate::service::tlog::chain::Verification) -> Self {
        AuditChainVerification {
            valid: v.valid,
            checked_count: v.checked_count,
            first_invalid_sequence: v.first_invalid_sequence.map(|s| s.to_string()),
            reason: v.reason,
        }
    }
}
