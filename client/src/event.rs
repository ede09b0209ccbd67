//! An audit event as a service records it, in the server's input shape, checked here
//! before anything is sent.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::schema::schema;

/// The kind of principal that performed an operation.
#[derive(cynic::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[cynic(graphql_type = "ActorType")]
pub enum ActorType {
    User,
    Service,
    System,
}

/// How an operation ended.
#[derive(cynic::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[cynic(graphql_type = "AuditOutcome")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

/// Who performed an operation. Services put one in their requests' extensions (for
/// [`AuditLayer`](crate::AuditLayer)) or context data (for the GraphQL extension).
#[derive(cynic::InputObject, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cynic(graphql_type = "ActorInput")]
pub struct Actor {
    #[cynic(rename = "type")]
    #[serde(rename = "type")]
    pub kind: ActorType,
    pub id: String,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub name: Option<String>,
}

impl Actor {
    /// A person signed in to the platform.
    pub fn user(id: impl Into<String>) -> Self {
        Self::new(ActorType::User, id)
    }

    /// A platform service acting on its own behalf.
    pub fn service(id: impl Into<String>) -> Self {
        Self::new(ActorType::Service, id)
    }

    /// The platform itself (schedulers, retention, migrations).
    pub fn system(id: impl Into<String>) -> Self {
        Self::new(ActorType::System, id)
    }

    fn new(kind: ActorType, id: impl Into<String>) -> Self {
        Actor {
            kind,
            id: id.into(),
            name: None,
        }
    }

    /// With a display name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// The resource an operation acted on.
#[derive(cynic::InputObject, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cynic(graphql_type = "TargetInput")]
pub struct Target {
    #[cynic(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub name: Option<String>,
}

impl Target {
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Target {
            kind: kind.into(),
            id: id.into(),
            name: None,
        }
    }

    /// With a display name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Where the request came from.
#[derive(cynic::InputObject, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cynic(graphql_type = "RequestContextInput")]
#[serde(rename_all = "camelCase")]
pub struct Context {
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub ip_address: Option<String>,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub user_agent: Option<String>,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub request_id: Option<String>,
    /// The W3C trace id (32 lower-case hex digits) of the operation; the Layer takes it
    /// from the request's `traceparent`.
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub trace_id: Option<String>,
}

impl Context {
    /// The trace id of a W3C `traceparent` header value (`00-<trace id>-<span id>-<flags>`),
    /// for `trace_id`.
    pub fn trace_id_of(traceparent: &str) -> Option<String> {
        let id = traceparent.trim().split('-').nth(1)?;
        audit_contract::rules::is_trace_id(id).then(|| id.to_owned())
    }
}

/// One event to record: `AuditEventInput`, checked against `schema.graphql` at compile
/// time. Serialized in the server's wire form (also the spool's and dead-letter file's).
#[derive(cynic::InputObject, Deserialize, Clone, Debug, PartialEq)]
#[cynic(graphql_type = "AuditEventInput")]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub actor: Actor,
    pub action: String,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub target: Option<Target>,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub reason: Option<String>,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub metadata: Option<Value>,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub context: Option<Context>,
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The people the event holds personal data of, besides its actor (at most 16):
    /// erasing any of them erases the event's personal values (`eraseAuditSubject`).
    #[cynic(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub subject_ids: Option<Vec<String>>,
}

impl Event {
    /// An event with only its required fields.
    pub fn new(actor: Actor, action: impl Into<String>) -> Self {
        Event {
            actor,
            action: action.into(),
            target: None,
            outcome: None,
            reason: None,
            occurred_at: None,
            metadata: None,
            context: None,
            idempotency_key: None,
            subject_ids: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_reads_back() {
        let mut event = Event::new(Actor::user("u-1").named("Ann"), "project.created");
        event.target = Some(Target::new("project", "p-1"));
        event.outcome = Some(Outcome::Denied);
        event.metadata = Some(serde_json::json!({"a": [1, {"b": null}]}));
        event.context = Some(Context {
            ip_address: Some("::1".into()),
            ..Context::default()
        });
        event.idempotency_key = Some("k-1".into());
        let wire = serde_json::to_value(&event).expect("serializes");
        assert_eq!(wire["actor"]["type"], "USER");
        assert_eq!(wire["outcome"], "DENIED");
        assert_eq!(wire["context"]["ipAddress"], "::1");
        assert_eq!(wire["idempotencyKey"], "k-1");
        assert!(wire.get("reason").is_none());
        let back: Event = serde_json::from_value(wire).expect("reads back");
        assert_eq!(back, event);
    }
}
