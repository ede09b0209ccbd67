//! Live delivery of committed events: in-process broadcasts per server instance, one per
//! tenant with subscribers and one for subscribers of several tenants.
//!
//! On PostgreSQL the ingest path sends one NOTIFY per transaction carrying only the tenants
//! and sequence ranges it committed; every instance's listener loads those rows and
//! broadcasts them, so subscribers on any instance see events written through any other.
//! Sequence numbers are gap-free per tenant, so the listener loads everything after the last
//! sequence it delivered: a lost notification, or events committed while its connection was
//! down, are filled in from the database. Events committed by this instance's own committer
//! reach its listener in memory as well ([`Feed::committed`]): the listener publishes them
//! at once, in the same order and under the same rules, without reading them back. On
//! SQLite (one instance) the committer publishes directly after each commit.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use entity::audit_log;
use futures_util::StreamExt;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::service::capacity::memory::Memory;
use crate::service::query::sequence::{BATCH_BYTES, BySequence};

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "audit_events";
/// The listener's `application_name`, to find its connection in `pg_stat_activity`.
pub const LISTENER_NAME: &str = "audit-service-listener";
/// Tenants whose events the listener reads at once.
const DELIVER_AT_ONCE: usize = 4;
/// NOTIFY payloads must stay under 8,000 bytes.
const MAX_PAYLOAD: usize = 7000;

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
    wake: Arc<tokio::sync::Notify>,
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
    fn listener_connected(&self, connected: bool) {
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
    fn listened_to(&self, tenant_id: &str) -> bool {
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
    fn notified(&self, ranges: Vec<(String, i64, i64)>) {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        for (tenant_id, _first, last) in ranges {
            announced.announce(&tenant_id, last);
        }
        drop(announced);
        self.wake.notify_one();
    }

    /// What was announced since the last call: the last sequence number per tenant.
    fn take_announced(&self) -> HashMap<String, i64> {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut announced.through)
    }

    /// The tenant's committed rows that follow sequence number `after` without a gap, up
    /// to `last`; rows up to `last` that cannot be used so are forgotten (the listener reads
    /// them back).
    fn take_committed(&self, tenant_id: &str, after: i64, last: i64) -> Vec<Arc<audit_log::Model>> {
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

/// The NOTIFY payloads for what one transaction committed: `[tenant, first seq, last seq]`
/// triples as JSON, split to respect PostgreSQL's payload limit.
pub fn notifications(ranges: &[(String, i64, i64)]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current: Vec<&(String, i64, i64)> = Vec::new();
    let mut size = 2;
    for range in ranges {
        let len = range.0.len() + 48;
        if !current.is_empty() && size + len > MAX_PAYLOAD {
            payloads.push(serde_json::json!(current).to_string());
            current.clear();
            size = 2;
        }
        current.push(range);
        size += len;
    }
    if !current.is_empty() {
        payloads.push(serde_json::json!(current).to_string());
    }
    payloads
}

/// Runs the instance's listener for as long as the process lives, reconnecting with
/// backoff. Deliveries start from the chain heads at the first connection.
pub async fn listen(db: DatabaseConnection, url: String, feed: Feed) {
    // Its own memory, so that no reader can starve the live tail of it: a batch for each
    // tenant it delivers at once.
    let memory = Memory::new(DELIVER_AT_ONCE * BATCH_BYTES);
    let mut delivered: Option<HashMap<String, i64>> = None;
    let mut backoff = Duration::from_millis(100);
    feed.listener_connected(false);
    loop {
        match session(&db, &memory, &url, &feed, &mut delivered).await {
            Ok(()) => tracing::warn!("notification listener lost its connection; reconnecting"),
            Err(err) => tracing::warn!(error = %err, "notification listener failed; reconnecting"),
        }
        feed.listener_connected(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One listener connection: listen, catch up on what was committed meanwhile, then deliver
/// notifications until the connection drops.
async fn session(
    db: &DatabaseConnection,
    memory: &Memory,
    url: &str,
    feed: &Feed,
    delivered: &mut Option<HashMap<String, i64>>,
) -> Result<()> {
    let options = PgConnectOptions::from_str(url)
        .map_err(Error::internal)?
        .application_name(LISTENER_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(Error::internal)?;
    let mut listener = PgListener::connect_with(&pool)
        .await
        .map_err(Error::internal)?;
    listener.listen(CHANNEL).await.map_err(Error::internal)?;

    // Listening already, so nothing committed from here on can be missed.
    let heads = entity::chain_head::Entity::find().all(db).await?;
    match delivered {
        None => {
            *delivered = Some(heads.into_iter().map(|h| (h.tenant_id, h.seq)).collect());
        }
        Some(delivered) => {
            let heads = heads.into_iter().map(|h| (h.tenant_id, h.seq));
            deliver(db, memory, feed, delivered, heads.collect()).await;
        }
    }
    let Some(delivered) = delivered.as_mut() else {
        return Ok(());
    };
    tracing::info!("notification listener connected");
    feed.listener_connected(true);
    // Notifications are read as they come, and what they and this instance's committer
    // announce is delivered as fast as the database allows: what is announced during one
    // delivery is merged into the next (one read per tenant), so a burst of commits never
    // queues up here.
    let receiving = async {
        while let Some(notification) = listener.try_recv().await.map_err(Error::internal)? {
            match serde_json::from_str(notification.payload()) {
                Ok(ranges) => feed.notified(ranges),
                Err(err) => tracing::warn!(error = %err, "ignoring a malformed notification"),
            }
        }
        Ok(())
    };
    let delivering = async {
        loop {
            feed.wake.notified().await;
            deliver(db, memory, feed, delivered, feed.take_announced()).await;
        }
    };
    // Delivery never ends; reading ends when the connection does.
    tokio::select! {
        received = receiving => received,
        () = delivering => Ok(()),
    }
}

/// Publishes each tenant's events after the last one delivered, up to the sequence number
/// `through` gives it; a few tenants at once.
async fn deliver(
    db: &DatabaseConnection,
    memory: &Memory,
    feed: &Feed,
    delivered: &mut HashMap<String, i64>,
    through: HashMap<String, i64>,
) {
    let tenants: Vec<_> = through
        .into_iter()
        .map(|(tenant_id, last)| {
            let after = delivered.get(&tenant_id).copied().unwrap_or(0);
            async move {
                let (position, result) =
                    deliver_through(db, memory, feed, &tenant_id, after, last).await;
                (tenant_id, position, result)
            }
        })
        .collect();
    let mut tenants = futures_util::stream::iter(tenants).buffer_unordered(DELIVER_AT_ONCE);
    while let Some((tenant_id, position, result)) = tenants.next().await {
        // One tenant's failure must not stop the others' deliveries; its events are tried
        // again with its next notification or reconnection.
        if let Err(err) = result {
            tracing::warn!(tenant = %tenant_id, error = %err, "could not deliver a tenant's events");
        }
        delivered.insert(tenant_id, position);
    }
}

/// Publishes a tenant's events after sequence number `after`, up to `last`: the position
/// reached, and what stopped it short.
async fn deliver_through(
    db: &DatabaseConnection,
    memory: &Memory,
    feed: &Feed,
    tenant_id: &str,
    after: i64,
    last: i64,
) -> (i64, Result<()>) {
    let committed = feed.take_committed(tenant_id, after, last);
    // Events committed before anyone subscribed are owed to nobody: a subscriber that
    // resumes reads them from the database after subscribing.
    if last <= after || !feed.listened_to(tenant_id) {
        return (last.max(after), Ok(()));
    }
    let after = after + committed.len() as i64;
    feed.publish(committed);
    if after == last {
        return (last, Ok(()));
    }
    let mut events = BySequence::after(memory, tenant_id, after).through(last);
    loop {
        let rows = match events.next(db).await {
            Ok(rows) => rows,
            Err(err) => return (events.position(), Err(err)),
        };
        if rows.is_empty() {
            break;
        }
        feed.publish(rows.into_iter().map(Arc::new));
        // Through `last` already: no need to ask again for nothing.
        if events.position() >= last {
            break;
        }
    }
    (last.max(after), Ok(()))
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
        };
        event.into_model(tenant_id, seq, chrono::Utc::now(), vec![0; 32])
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

    #[test]
    fn payloads_stay_small() {
        let ranges: Vec<_> = (0..500).map(|i| (format!("tenant-{i:04}"), 1, i)).collect();
        let payloads = notifications(&ranges);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() < 8000);
            back.extend(serde_json::from_str::<Vec<(String, i64, i64)>>(p).unwrap());
        }
        assert_eq!(back, ranges);
    }
}
