//! What `logAuditEvent` takes, converted to the service layer's `NewEvent`.

use async_graphql::{InputObject, Json};
use serde_json::Value;

use crate::graphql::scalars::DateTime;
use crate::service::ingest::event::{NewEvent, Target};

use super::enums::{ActorType, AuditOutcome};

/// An operation to record.
#[derive(InputObject, Clone, Debug)]
pub struct AuditEventInput {
    /// Who performed it.
    pub actor: ActorInput,
    /// What was done: 2 to 4 dot-separated lower-case segments (`project.member.added`).
    pub action: String,
    /// The resource acted on, if any.
    pub target: Option<TargetInput>,
    /// How it ended.
    #[graphql(default_with = "Some(AuditOutcome::Success)")]
    pub outcome: Option<AuditOutcome>,
    /// Why it ended that way.
    pub reason: Option<String>,
    /// When it happened; defaults to now, may not be more than 5 minutes ahead.
    pub occurred_at: Option<DateTime>,
    /// Free-form details: a JSON object of at most 64 KiB.
    pub metadata: Option<Json<Value>>,
    /// Where the request came from.
    pub context: Option<RequestContextInput>,
    /// Makes retries safe: the same key with the same content returns the original event.
    pub idempotency_key: Option<String>,
    /// Data subjects the event holds personal data of, besides its actor (at most 16): each
    /// one's erasure (`eraseAuditSubject`) erases the event's personal values.
    pub subject_ids: Option<Vec<String>>,
}

/// Who performed an operation.
#[derive(InputObject, Clone, Debug)]
pub struct ActorInput {
    /// User, service or system.
    #[graphql(name = "type")]
    pub kind: ActorType,
    /// The actor's id (1 to 256 characters).
    pub id: String,
    /// A display name (at most 256 characters).
    pub name: Option<String>,
}

/// The resource an operation acted on.
#[derive(InputObject, Clone, Debug)]
pub struct TargetInput {
    /// The resource's type (1 to 64 characters).
    #[graphql(name = "type")]
    pub kind: String,
    /// The resource's id (1 to 256 characters).
    pub id: String,
    /// A display name (at most 256 characters).
    pub name: Option<String>,
}

/// Where a request came from.
#[derive(InputObject, Clone, Debug)]
pub struct RequestContextInput {
    /// An IPv4 or IPv6 address.
    pub ip_address: Option<String>,
    /// The client's User-Agent (at most 1,024 characters).
    pub user_agent: Option<String>,
    /// The request id (at most 256 characters).
    pub request_id: Option<String>,
    /// The W3C trace id of the operation (32 lower-case hex digits), linking the event to
    /// its trace; by default the trace id of the request's `traceparent` header.
    pub trace_id: Option<String>,
}

impl From<AuditEventInput> for NewEvent {
    fn from(input: AuditEventInput) -> Self {
        let context = input.context;
        NewEvent {
            actor_type: input.actor.kind.into(),
            actor_id: input.actor.id,
            actor_name: input.actor.name,
            action: input.action,
            target: input.target.map(|t| Target {
                kind: t.kind,
                id: t.id,
                name: t.name,
            }),
            outcome: input.outcome.unwrap_or(AuditOutcome::Success).into(),
            reason: input.reason,
            occurred_at: input.occurred_at.map(|t| t.0),
            metadata: input.metadata.map(|m| m.0),
            ip_address: context.as_ref().and_then(|c| c.ip_address.clone()),
            user_agent: context.as_ref().and_then(|c| c.user_agent.clone()),
            request_id: context.as_ref().and_then(|c| c.request_id.clone()),
            trace_id: context.and_then(|c| c.trace_id),
            idempotency_key: input.idempotency_key,
            subject_ids: input.subject_ids.unwrap_or_default(),
            personal_paths: Vec::new(),
        }
    }
}
