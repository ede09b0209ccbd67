//! sea-orm entities of audit-service: the audit log, the per-tenant chain heads, and the
//! checkpoints retention leaves behind.

pub mod audit_log;
pub mod chain_checkpoint;
pub mod chain_head;
