//! sea-orm entities of audit-service: the audit log and its hourly rollup, the per-tenant
//! chain heads, the checkpoints retention leaves behind, idempotency keys, API keys, and the
//! Merkle trees' tiles and signed checkpoints.

pub mod api_key;
pub mod audit_log;
pub mod audit_stat;
pub mod chain_checkpoint;
pub mod chain_head;
pub mod idempotency_key;
pub mod tree_checkpoint;
pub mod tree_tile;
