//! Live delivery of committed events: in-process broadcasts per server instance, one per
//! tenant with subscribers and one for subscribers of several tenants.
//!
//! On PostgreSQL the ingest path sends one NOTIFY per transaction carrying only the tenants
//! and sequence ranges it committed; every instance's listener loads those rows and
//! broadcasts them, so subscribers on any instance see events written through any other.
//! Sequence numbers are gap-free per tenant, so the listener loads everything after the last
//! sequence it delivered: a lost notification, or events committed while its connection was
//! down, are filled in from the database. On SQLite (one instance) the committer publishes
//! directly after each commit.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use entity::audit_log;
use futures_util::StreamExt;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::sync::broadcast;

use super::sequence::BySequence;
use crate::error::{Error, Result};

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "audit_events";
/// The listener's `application_name`, to find its connection in `pg_stat_activity`.
pub const LISTENER_NAME: &str = "audit-service-listener";
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
}

impl Feed {
    /// A feed whose subscribers may fall at most `capacity` events behind.
    pub fn new(capacity: usize) -> Self {
        Feed {
            all: broadcast::channel(capacity.max(1)).0,
            tenants: Arc::default(),
            capacity: capacity.max(1),
            listener_down: Arc::default(),
        }
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
    pub fn publish(&self, events: impl IntoIterator<Item = audit_log::Model>) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            let event = Arc::new(event);
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
    let mut delivered: Option<HashMap<String, i64>> = None;
    let mut backoff = Duration::from_millis(100);
    feed.listener_connected(false);
    loop {
        match session(&db, &url, &feed, &mut delivered).await {
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
            deliver(db, feed, delivered, heads.collect()).await;
        }
    }
    let Some(delivered) = delivered.as_mut() else {
        return Ok(());
    };
    tracing::info!("notification listener connected");
    feed.listener_connected(true);
    // Notifications are read as they come, and what they announce is delivered as fast as
    // the database allows: the notifications that arrive during one delivery are merged
    // into the next (one read per tenant), so a burst of commits never queues up here.
    let announced: std::sync::Mutex<HashMap<String, i64>> = Default::default();
    let wake = tokio::sync::Notify::new();
    let receiving = async {
        while let Some(notification) = listener.try_recv().await.map_err(Error::internal)? {
            let ranges: Vec<(String, i64, i64)> = match serde_json::from_str(notification.payload())
            {
                Ok(ranges) => ranges,
                Err(err) => {
                    tracing::warn!(error = %err, "ignoring a malformed notification");
                    continue;
                }
            };
            let mut announced = announced.lock().unwrap_or_else(|e| e.into_inner());
            for (tenant_id, _first, last) in ranges {
                let through = announced.entry(tenant_id).or_insert(last);
                *through = last.max(*through);
            }
            wake.notify_one();
        }
        Ok(())
    };
    let delivering = async {
        loop {
            wake.notified().await;
            let through = std::mem::take(&mut *announced.lock().unwrap_or_else(|e| e.into_inner()));
            deliver(db, feed, delivered, through).await;
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
    feed: &Feed,
    delivered: &mut HashMap<String, i64>,
    through: HashMap<String, i64>,
) {
    const AT_ONCE: usize = 4;
    let tenants: Vec<_> = through
        .into_iter()
        .map(|(tenant_id, last)| {
            let after = delivered.get(&tenant_id).copied().unwrap_or(0);
            async move {
                let (position, result) = deliver_through(db, feed, &tenant_id, after, last).await;
                (tenant_id, position, result)
            }
        })
        .collect();
    let mut tenants = futures_util::stream::iter(tenants).buffer_unordered(AT_ONCE);
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
    feed: &Feed,
    tenant_id: &str,
    after: i64,
    last: i64,
) -> (i64, Result<()>) {
    // Events committed before anyone subscribed are owed to nobody: a subscriber that
    // resumes reads them from the database after subscribing.
    if !feed.listened_to(tenant_id) {
        return (last.max(after), Ok(()));
    }
    let mut events = BySequence::after(tenant_id, after).through(last);
    loop {
        let rows = match events.next(db).await {
            Ok(rows) => rows,
            Err(err) => return (events.position(), Err(err)),
        };
        if rows.is_empty() {
            break;
        }
        feed.publish(rows);
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
