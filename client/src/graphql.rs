//! The operations the client sends, as cynic types checked against `schema.graphql` when
//! the crate compiles (build.rs registers the schema): a server change that breaks them
//! breaks the build.

use chrono::{DateTime, Utc};

use crate::event::Event;
use crate::schema::schema;

/// An event as audit-service committed it.
#[derive(cynic::QueryFragment, Clone, Debug, PartialEq)]
#[cynic(graphql_type = "AuditLog")]
#[cynic(rename_all = "camelCase")]
pub struct Recorded {
    /// Server-assigned id (a UUID v7).
    pub id: cynic::Id,
    /// Position in the tenant's log: 1, 2, 3, ... in commit order.
    pub sequence: String,
    /// The event's hash in the tenant's chain, in lower-case hex.
    pub hash: String,
    /// When the operation happened.
    pub occurred_at: DateTime<Utc>,
    /// When audit-service stored the event.
    pub recorded_at: DateTime<Utc>,
}

#[derive(cynic::QueryVariables)]
pub(crate) struct LogOneVariables {
    pub input: Event,
}

#[derive(cynic::QueryFragment, Debug)]
#[cynic(graphql_type = "Mutation", variables = "LogOneVariables")]
pub(crate) struct LogOne {
    #[arguments(input: $input)]
    pub log_audit_event: Recorded,
}

#[derive(cynic::QueryVariables)]
pub(crate) struct LogManyVariables {
    pub inputs: Vec<Event>,
}

/// What background delivery needs back from a batch: only that each event is stored.
#[derive(cynic::QueryFragment, Debug)]
#[cynic(graphql_type = "AuditLog")]
pub(crate) struct Stored {
    #[expect(dead_code, reason = "selected so the answer names each stored event")]
    pub id: cynic::Id,
}

#[derive(cynic::QueryFragment, Debug)]
#[cynic(graphql_type = "Mutation", variables = "LogManyVariables")]
pub(crate) struct LogMany {
    #[arguments(inputs: $inputs)]
    pub log_audit_events: Vec<Stored>,
}
