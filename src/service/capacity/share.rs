//! Capacity that tenants share fairly: at most so many units in use at once, and at most a
//! share of them for any one tenant, so that one tenant's slow or stalled work waits in its
//! own queue while other tenants' work goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

type Tenants = Arc<Mutex<HashMap<String, Arc<Semaphore>>>>;

/// `total` units, of which one tenant may hold `share` at once. Cheap to clone.
#[derive(Clone)]
pub struct Shares {
    total: Arc<Semaphore>,
    share: u32,
    tenants: Tenants,
}

/// Units held by one tenant, given back when dropped.
pub struct Held {
    tenant: Option<OwnedSemaphorePermit>,
    total: Option<OwnedSemaphorePermit>,
    key: String,
    tenants: Tenants,
}

impl Shares {
    /// `total` units; a tenant may hold `share` of them (at least one).
    pub fn new(total: u32, share: u32) -> Self {
        Shares {
            total: Arc::new(Semaphore::new(total.max(1) as usize)),
            share: share.clamp(1, total.max(1)),
            tenants: Arc::default(),
        }
    }

    /// The most one tenant may hold.
    pub fn share(&self) -> u32 {
        self.share
    }

    /// Units free now, over all tenants.
    pub fn available(&self) -> usize {
        self.total.available_permits()
    }

    /// `units` for `tenant` (at most its share), waiting first in the tenant's own queue,
    /// then in everyone's, `wait` in all; `Busy` when none came in time.
    pub async fn acquire(&self, tenant: &str, units: u32, wait: Duration) -> Result<Held> {
        let units = units.clamp(1, self.share);
        let queue = self.queue(tenant);
        let mut held = Held {
            tenant: None,
            total: None,
            key: tenant.to_owned(),
            tenants: self.tenants.clone(),
        };
        let acquire = async {
            held.tenant = Some(queue.acquire_many_owned(units).await.ok()?);
            held.total = Some(self.total.clone().acquire_many_owned(units).await.ok()?);
            Some(())
        };
        match tokio::time::timeout(wait, acquire).await {
            Ok(Some(())) => Ok(held),
            _ => Err(Error::Busy),
        }
    }

    /// `units` for `tenant` if they are free right now, without waiting in any queue.
    pub fn try_acquire(&self, tenant: &str, units: u32) -> Option<Held> {
        let units = units.clamp(1, self.share);
        let queue = self.queue(tenant);
        let mut held = Held {
            tenant: None,
            total: None,
            key: tenant.to_owned(),
            tenants: self.tenants.clone(),
        };
        held.tenant = Some(queue.try_acquire_many_owned(units).ok()?);
        held.total = Some(self.total.clone().try_acquire_many_owned(units).ok()?);
        Some(held)
    }

    /// The tenant's queue, made on first use.
    fn queue(&self, tenant: &str) -> Arc<Semaphore> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.share as usize)))
            .clone()
    }
}

impl Held {
    /// Holds `other`'s units too (both the same tenant's, of the same `Shares`).
    pub fn merge(&mut self, mut other: Held) {
        match (&mut self.tenant, other.tenant.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine, theirs) => *mine = mine.take().or(theirs),
        }
        match (&mut self.total, other.total.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine, theirs) => *mine = mine.take().or(theirs),
        }
    }

    /// Keeps `units` and returns the rest, held apart.
    pub fn split_off(&mut self, units: u32) -> Held {
        let mut rest = Held {
            tenant: None,
            total: None,
            key: self.key.clone(),
            tenants: self.tenants.clone(),
        };
        let extra = self.units().saturating_sub(units) as usize;
        if extra > 0 {
            rest.tenant = self.tenant.as_mut().and_then(|p| p.split(extra));
            rest.total = self.total.as_mut().and_then(|p| p.split(extra));
        }
        rest
    }

    /// Units held.
    pub fn units(&self) -> u32 {
        self.total.as_ref().map_or(0, |p| p.num_permits() as u32)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.take();
        let Some(permit) = self.tenant.take() else {
            return;
        };
        drop(permit);
        // A tenant's queue goes once nothing of it is held or waited for.
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if tenants
            .get(&self.key)
            .is_some_and(|queue| Arc::strong_count(queue) == 1)
        {
            tenants.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_tenant_holds_at_most_its_share_and_others_go_on() {
        let shares = Shares::new(4, 2);
        let a1 = shares.acquire("a", 1, WAIT).await.unwrap();
        let _a2 = shares.acquire("a", 1, WAIT).await.unwrap();
        assert!(
            shares.acquire("a", 1, WAIT).await.is_err(),
            "a's share is used"
        );
        let _b = shares.acquire("b", 2, WAIT).await.unwrap();
        assert!(
            shares.acquire("c", 1, WAIT).await.is_err(),
            "everything is used"
        );
        drop(a1);
        assert!(shares.acquire("c", 1, WAIT).await.is_ok());
    }

    #[tokio::test]
    async fn merged_units_are_given_back_together_and_queues_go() {
        let shares = Shares::new(8, 8);
        let mut held = shares.acquire("a", 3, WAIT).await.unwrap();
        held.merge(shares.acquire("a", 2, WAIT).await.unwrap());
        assert_eq!((held.units(), shares.available()), (5, 3));
        drop(held);
        assert_eq!(shares.available(), 8);
        assert!(shares.tenants.lock().unwrap().is_empty());
    }
}
