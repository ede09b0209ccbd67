//! `auditLogStats`: the dimensions and intervals it groups by, and its buckets.

use async_graphql::{Enum, SimpleObject};

use super::enums::{ActorType, AuditOutcome};
use crate::graphql::scalars::DateTime;
use crate::service::query::stats::{Bucket, Dimension, Interval};

/// What `auditLogStats` can group events by.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditStatsDimension {
    Action,
    /// Counted from the events themselves, so the filter needs a window of at most 31 days.
    ActorId,
    ActorType,
    TargetType,
    Outcome,
    TenantId,
}

/// The length of `auditLogStats` time buckets, in UTC; weeks start on Monday.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditStatsInterval {
    Hour,
    Day,
    Week,
    Month,
}

/// How many events one group holds; fields not grouped by are null.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditStatsBucket {
    /// The start of the time bucket, when grouped by an interval.
    pub start: Option<DateTime>,
    pub action: Option<String>,
    pub actor_id: Option<String>,
    pub actor_type: Option<ActorType>,
    /// The target type; null also for events without a target.
    pub target_type: Option<String>,
    pub outcome: Option<AuditOutcome>,
    pub tenant_id: Option<String>,
    pub count: u64,
}

impl From<AuditStatsDimension> for Dimension {
    fn from(d: AuditStatsDimension) -> Self {
        match d {
            AuditStatsDimension::Action => Dimension::Action,
            AuditStatsDimension::ActorId => Dimension::ActorId,
            AuditStatsDimension::ActorType => Dimension::ActorType,
            AuditStatsDimension::TargetType => Dimension::TargetType,
            AuditStatsDimension::Outcome => Dimension::Outcome,
            AuditStatsDimension::TenantId => Dimension::TenantId,
        }
    }
}

impl From<AuditStatsInterval> for Interval {
    fn from(i: AuditStatsInterval) -> Self {
        match i {
            AuditStatsInterval::Hour => Interval::Hour,
            AuditStatsInterval::Day => Interval::Day,
            AuditStatsInterval::Week => Interval::Week,
            AuditStatsInterval::Month => Interval::Month,
        }
    }
}

impl From<Bucket> for AuditStatsBucket {
    fn from(b: Bucket) -> Self {
        AuditStatsBucket {
            start: b.start.map(DateTime),
            action: b.action,
            actor_id: b.actor_id,
            actor_type: b.actor_type.map(Into::into),
            target_type: b.target_type,
            outcome: b.outcome.map(Into::into),
            tenant_id: b.tenant_id,
            count: b.count.max(0) as u64,
        }
    }
}
