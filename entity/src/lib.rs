//! sea-orm entities of audit-service: the audit log and its hourly rollup, the per-tenant
//! chain heads, the checkpoints retention leaves behind, idempotency keys, and API keys.

pub mod api_key;
pub mod audit_log;
pub mod audit_stat;
pub mod chain_checkpoint;
pub mod chain_head;
pub mod idempotency_key;
