//! sea-orm entities of audit-service: the audit log and the per-tenant chain heads.

pub mod audit_log;
pub mod chain_head;
