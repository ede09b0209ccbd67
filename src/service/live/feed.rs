//! The committed events of this instance, handed to its live subscriptions: a broadcast
//! per tenant with subscribers, and one for subscribers of several tenants. What this
//! instance's own committer commits reaches its listener (`listener`) in memory too
//! ([`Feed::committed`]), to be published without being read back. On SQLite (one
//! instance) the committer publishes directly after each commit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use entity::audit_log;
use tokio::sync::broadcast;

/// The committed events of this instance, in commit order per tenant: a channel per tenant
/// with subscribers, so that an event wakes only its own tenant's subscribers, and one for
/// subscribers of several tenants.
#[derive(Clone)]
pub struct Feed {
    all: broadcast::Sender<Arc<audit_log::Model>>,
    tenants: Arc<std::sync::Mutex<HashMap<String, broadcast::Sender<Arc<audit_log::Model>>>>>,
    capacity: usize,
    /// Since when the NOTIFY listener has been without a connection (PostgreSQL); `None`
    /// while it is connected, or where there is no listener.
    listener_down: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// For the listener (PostgreSQL): per tenant, the last sequence number announced and
    /// not delivered yet, and the rows this instance committed that it may publish without
    /// reading them back; `wake` tells it there is something new.
    announced: Arc<std::sync::Mutex<Announced>>,
    pub(super) wake: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Announced {
    through: HashMap<String, i64>,
    /// In commit order, at most `capacity` per tenant.
    committed: HashMap<String, VecDeque<Arc<audit_log::Model>>>,
}

impl Feed {
    /// A feed whose subscribers may fall at most `capacity` events behind.
    pub fn new(capacity: usize) -> Self {
        Feed {
            all: broadcast::channel(capacity.max(1)).0,
            tenants: Arc::default(),
            capacity: capacity.max(1),
            listener_down: Arc::default(),
            announced: Arc::default(),
            wake: Arc::default(),
        }
    }

    /// How many events a subscriber may fall behind.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long the NOTIFY listener has been without a connection, if it is.
    pub fn listener_down_for(&self) -> Option<Duration> {
        let down = self.listener_down.lock().unwrap_or_else(|e| e.into_inner());
        down.map(|since| since.elapsed())
    }

    /// Records that the listener connected (`true`) or lost its connection (`false`).
    pub(super) fn listener_connected(&self, connected: bool) {
        let mut down = self.listener_down.lock().unwrap_or_else(|e| e.into_inner());
        match connected {
            true => *down = None,
            false => *down = down.or_else(|| Some(std::time::Instant::now())),
        }
    }

    /// Events published from now on: of `tenant_ids` when that is one tenant, else of every
    /// tenant. A receiver more than `capacity` behind gets `Lagged`.
    pub fn subscribe(&self, tenant_ids: &[String]) -> broadcast::Receiver<Arc<audit_log::Model>> {
        match tenant_ids {
            [tenant_id] => {
                let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
                // Channels nobody listens to any more go (a tenant may never log again).
                tenants.retain(|_, sender| sender.receiver_count() > 0);
                tenants
                    .entry(tenant_id.clone())
                    .or_insert_with(|| broadcast::channel(self.capacity).0)
                    .subscribe()
            }
            _ => self.all.subscribe(),
        }
    }

    /// Receivers of this instance's feed: the executions of live subscriptions.
    pub fn subscribers(&self) -> usize {
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let by_tenant: usize = tenants.values().map(|s| s.receiver_count()).sum();
        by_tenant + self.all.receiver_count()
    }

    /// Whether anyone here would receive the tenant's events.
    pub(super) fn listened_to(&self, tenant_id: &str) -> bool {
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let by_tenant = tenants
            .get(tenant_id)
            .is_some_and(|s| s.receiver_count() > 0);
        by_tenant || self.all.receiver_count() > 0
    }

    /// Hands committed events to their tenant's subscribers and to those of every tenant;
    /// never waits for them. A tenant's channel goes once its last subscriber has.
    pub fn publish(&self, events: impl IntoIterator<Item = Arc<audit_log::Model>>) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            if let Some(sender) = tenants.get(&event.tenant_id)
                && sender.send(event.clone()).is_err()
            {
                tenants.remove(&event.tenant_id);
            }
            if self.all.receiver_count() > 0 {
                let _ = self.all.send(event);
            }
        }
    }

    /// Announces events this instance has just committed (in commit order) to its
    /// listener, with the rows themselves for the tenants someone here listens to.
    pub fn committed(&self, events: Vec<audit_log::Model>) {
        let mut listened: HashMap<String, bool> = HashMap::new();
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            announced.announce(&event.tenant_id, event.seq);
            let listened = match listened.get(&event.tenant_id) {
                Some(listened) => *listened,
                None => *listened
                    .entry(event.tenant_id.clone())
                    .or_insert(self.listened_to(&event.tenant_id)),
            };
            if listened {
                let rows = announced
                    .committed
                    .entry(event.tenant_id.clone())
                    .or_default();
                if rows.len() == self.capacity {
                    rows.pop_front();
                }
                rows.push_back(Arc::new(event));
            }
        }
        drop(announced);
        self.wake.notify_one();
    }

    /// Announces what a notification names: `(tenant, first, last)` sequence ranges.
    pub(super) fn notified(&self, ranges: Vec<(String, i64, i64)>) {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        for (tenant_id, _first, last) in ranges {
            announced.announce(&tenant_id, last);
        }
        drop(announced);
        self.wake.notify_one();
    }

    /// What was announced since the last call: the last sequence number per tenant.
    pub(super) fn take_announced(&self) -> HashMap<String, i64> {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut announced.through)
    }

    /// The tenant's committed rows that follow sequence number `after` without a gap, up
    /// to `last`; rows up to `last` that cannot be used so are forgotten (the listener reads
    /// them back).
    pub(super) fn take_committed(
        &self,
        tenant_id: &str,
        after: i64,
        last: i64,
    ) -> Vec<Arc<audit_log::Model>> {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rows) = announced.committed.get_mut(tenant_id) else {
            return Vec::new();
        };
        let mut run = Vec::new();
        while let Some(row) = rows.front().filter(|row| row.seq <= last).cloned() {
            rows.pop_front();
            if row.seq == after + 1 + run.len() as i64 {
                run.push(row);
            }
        }
        if rows.is_empty() {
            announced.committed.remove(tenant_id);
        }
        run
    }
}

impl Announced {
    fn announce(&mut self, tenant_id: &str, last: i64) {
        if let Some(through) = self.through.get_mut(tenant_id) {
            *through = last.max(*through);
        } else {
            self.through.insert(tenant_id.to_owned(), last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ingest::event::NewEvent;
    use entity::audit_log::{ActorType, Outcome};

    fn row(tenant_id: &str, seq: i64) -> audit_log::Model {
        let event = NewEvent {
            actor_type: ActorType::System,
            actor_id: "tests".to_owned(),
            actor_name: None,
            action: "test.committed".to_owned(),
            target: None,
            outcome: Outcome::Success,
            reason: None,
            occurred_at: None,
            metadata: None,
            ip_address: None,
            user_agent: None,
            request_id: None,
            trace_id: None,
            idempotency_key: None,
            subject_ids: Vec::new(),
            personal_paths: Vec::new(),
        };
        let keys = Default::default();
        let (model, _) = (event.into_model(tenant_id, seq, chrono::Utc::now(), vec![0; 32], &keys))
            .expect("a row");
        model
    }

    fn seqs(rows: &[Arc<audit_log::Model>]) -> Vec<i64> {
        rows.iter().map(|row| row.seq).collect()
    }

    #[test]
    fn committed_rows_are_used_only_without_a_gap() {
        let feed = Feed::new(3);
        let _listening = feed.subscribe(&["a".to_owned()]);
        feed.committed(
            (1..=5)
                .map(|seq| row("a", seq))
                .chain([row("b", 1)])
                .collect(),
        );
        // Announced through the last of each; only the listened-to tenant's rows are kept,
        // and only the last `capacity` of them.
        let announced = feed.take_announced();
        assert_eq!(
            announced,
            HashMap::from([("a".to_owned(), 5), ("b".to_owned(), 1)])
        );
        assert!(feed.take_committed("b", 0, 1).is_empty());
        // 1 and 2 were dropped: from 0, the rows that follow have a gap, and are forgotten
        // up to `last`, while 5 stays for later.
        assert!(feed.take_committed("a", 0, 4).is_empty());
        assert_eq!(seqs(&feed.take_committed("a", 4, 5)), vec![5]);
        feed.committed((6..=8).map(|seq| row("a", seq)).collect());
        // Rows already delivered are skipped; the run stops at `last`.
        assert_eq!(seqs(&feed.take_committed("a", 6, 7)), vec![7]);
        assert_eq!(seqs(&feed.take_committed("a", 7, 9)), vec![8]);
        assert!(feed.announced.lock().unwrap().committed.is_empty());
    }
}
