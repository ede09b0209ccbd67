//! What callers hand the committer: a tenant's work, events to log, a purge, an erasure or
//! a change to its registry.

use chrono::{DateTime, Utc};

use super::event::NewEvent;
use crate::service::actions::Change;
use crate::service::streams;

/// What one job asks of the committer.
pub(super) enum Work {
    Log(Vec<NewEvent>),
    /// Delete the tenant's oldest events recorded before the cutoff.
    Purge(DateTime<Utc>),
    /// Destroy a data subject's key and personal values, and record that.
    Erase(Erasure),
    /// Change the action registry or the tenant's settings, and record that.
    Configure(Change, String),
    /// Erase the personal values of an action's events that occurred before the cutoff,
    /// and record that (when there were any).
    Expire(String, DateTime<Utc>),
    /// Change a log stream, and record that.
    Stream(Box<streams::Change>, String),
}

/// Who is erased, why, and at whose request.
pub struct Erasure {
    pub subject_id: String,
    pub reason: String,
    pub requested_by: String,
}

impl Work {
    pub(super) fn size(&self) -> usize {
        match self {
            Work::Log(events) => events.len(),
            Work::Purge(_)
            | Work::Erase(_)
            | Work::Configure(..)
            | Work::Expire(..)
            | Work::Stream(..) => 1,
        }
    }
}

/// One job's tenant and work.
pub(super) type Request = (String, Work);
