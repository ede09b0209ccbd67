//! What callers hand the committer: a tenant's work, events to log or a purge.

use chrono::{DateTime, Utc};

use super::event::NewEvent;

/// What one job asks of the committer.
pub(super) enum Work {
    Log(Vec<NewEvent>),
    /// Delete the tenant's oldest events recorded before the cutoff.
    Purge(DateTime<Utc>),
}

impl Work {
    pub(super) fn size(&self) -> usize {
        match self {
            Work::Log(events) => events.len(),
            Work::Purge(_) => 1,
        }
    }
}

/// One job's tenant and work.
pub(super) type Request = (String, Work);
