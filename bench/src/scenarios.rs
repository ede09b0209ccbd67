//! The measurements, each against a fresh database, each beside its raw baseline: what
//! they share (the bench, the documents it sends); each kind in a module of its own
//! (`ingest`, `query`, `live`, `console`, `proofs`, `kit`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::load::Graphql;

pub const BATCH: &str =
    "mutation($inputs: [AuditEventInput!]!) { logAuditEvents(inputs: $inputs) { id } }";
pub const SINGLE: &str =
    "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }";
pub const PAGE: &str = "query($actors: [String!], $since: DateTime) { auditLogs(first: 50, filter: { actorIds: $actors, occurredAfter: $since }) { edges { cursor node { id action occurredAt actor { type id } target { type id } outcome metadata } } pageInfo { hasNextPage endCursor } } }";

pub struct Bench {
    pub admin_url: String,
    pub bin: String,
    pub duration: Duration,
}

/// Request bodies made once, so the load generator spends its CPU on sending.
pub fn bodies(query: &str, variables: impl IntoIterator<Item = Value>) -> Arc<Vec<bytes::Bytes>> {
    Arc::new(
        variables
            .into_iter()
            .map(|v| Graphql::body(query, v))
            .collect(),
    )
}
