//! The GraphQL enums, and their conversions to and from the service layer's.

use async_graphql::Enum;
use entity::audit_log;

use crate::service::query::PageOrder;

/// The kind of principal that performed an operation.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorType {
    /// A person, signed in through the platform.
    User,
    /// A platform service acting on its own behalf.
    Service,
    /// The platform itself (schedulers, retention, migrations).
    System,
}

/// How an operation ended.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    /// The operation did what was asked.
    Success,
    /// The operation was attempted and failed.
    Failure,
    /// The operation was refused by access control.
    Denied,
}

/// The order of `auditLogs` pages.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuditLogOrder {
    /// Newest `occurredAt` first.
    #[default]
    OccurredAtDesc,
    /// Oldest `occurredAt` first.
    OccurredAtAsc,
}

impl From<ActorType> for audit_log::ActorType {
    fn from(value: ActorType) -> Self {
        match value {
            ActorType::User => Self::User,
            ActorType::Service => Self::Service,
            ActorType::System => Self::System,
        }
    }
}

impl From<audit_log::ActorType> for ActorType {
    fn from(value: audit_log::ActorType) -> Self {
        match value {
            audit_log::ActorType::User => Self::User,
            audit_log::ActorType::Service => Self::Service,
            audit_log::ActorType::System => Self::System,
        }
    }
}

impl From<AuditOutcome> for audit_log::Outcome {
    fn from(value: AuditOutcome) -> Self {
        match value {
            AuditOutcome::Success => Self::Success,
            AuditOutcome::Failure => Self::Failure,
            AuditOutcome::Denied => Self::Denied,
        }
    }
}

impl From<audit_log::Outcome> for AuditOutcome {
    fn from(value: audit_log::Outcome) -> Self {
        match value {
            audit_log::Outcome::Success => Self::Success,
            audit_log::Outcome::Failure => Self::Failure,
            audit_log::Outcome::Denied => Self::Denied,
        }
    }
}

impl From<AuditLogOrder> for PageOrder {
    fn from(value: AuditLogOrder) -> Self {
        match value {
            AuditLogOrder::OccurredAtDesc => PageOrder::NewestFirst,
            AuditLogOrder::OccurredAtAsc => PageOrder::OldestFirst,
        }
    }
}
