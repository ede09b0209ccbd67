//! The NOTIFY listener (PostgreSQL): the ingest path sends one NOTIFY per transaction
//! carrying only the tenants and sequence ranges it committed; every instance's listener
//! loads those rows and publishes them to its feed, so subscribers on any instance see
//! events written through any other. Sequence numbers are gap-free per tenant, so the
//! listener loads everything after the last sequence it delivered: a lost notification, or
//! events committed while its connection was down, are filled in from the database.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sea_orm::{DatabaseConnection, EntityTrait};

use super::feed::Feed;
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
