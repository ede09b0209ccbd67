//! sea-orm entities of audit-service: the audit log, the per-tenant chain heads, the
//! checkpoints retention leaves behind, idempotency keys, API keys, and the Merkle trees'
//! tiles and signed checkpoints. The rollups behind `auditLogStats` are read and written by
//! SQL of their own (`src/service/query/stats.rs`, `src/service/ingest/rows.rs`).

pub mod api_key;
pub mod audit_log;
pub mod chain_checkpoint;
pub mod chain_head;
pub mod idempotency_key;
pub mod tree_checkpoint;
pub mod tree_tile;
