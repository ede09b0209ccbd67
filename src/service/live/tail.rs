//! A live subscription: optional replay from the database, then the instance's feed, with
//! neither a gap nor a duplicate at the seam.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::audit_log;
use futures_util::Stream;
use sea_orm::DatabaseConnection;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::AbortHandle;

use crate::error::{Error, Result};
use crate::service::capacity::memory::Memory;
use crate::service::capacity::size::event_size;
use crate::service::live::mailbox::{self, Allowance, Lagged};
use crate::service::query::cursor::Cursor;
use crate::service::query::filter::Filter;
use crate::service::query::sequence::BySequence;

/// What one subscription's queue may hold when it is given no allowance of its own.
pub const QUEUE_BYTES: usize = 8 << 20;

/// A subscription's events from the feed, filtered and queued by a task of its own that
/// keeps up with the feed whatever the subscriber does: what the subscriber leaves unread
/// is held here, within its allowance, not in the feed's buffer for everyone.
pub struct Queue {
    receiver: mailbox::Receiver<Arc<audit_log::Model>>,
    pump: AbortHandle,
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Queues what `feed` (a fresh subscription to the feed) brings that `filter` matches: at
/// most `items` events, their bytes taken from `allowance`. Past either, the subscriber
/// lags.
pub fn queue(
    mut feed: broadcast::Receiver<Arc<audit_log::Model>>,
    filter: Filter,
    items: usize,
    allowance: Arc<Allowance>,
) -> Queue {
    let (sender, receiver) = mailbox::mailbox(items, allowance);
    let pump = tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(event) if filter.matches(&event) => {
                    let bytes = event_size(&event);
                    if !sender.push(event, bytes) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => return sender.lag(missed),
                Err(RecvError::Closed) => return,
            }
        }
    });
    Queue {
        receiver,
        pump: pump.abort_handle(),
    }
}

/// Events replayed per query (up to 6.4 MiB of metadata, held while the client reads them).
const REPLAY_BATCH: u64 = 100;

/// Matching events committed after `after` (replayed from the database), then matching
/// events as they are committed, until `deadline` (when the credential expires).
///
/// `live` must be queued before this is called: then every event committed after the
/// replay's last query is in `live`, and the ones the replay already delivered are
/// recognized by their sequence number (per tenant, sequence order is commit order).
pub fn tail(
    (replica, db): (Option<DatabaseConnection>, DatabaseConnection),
    memory: Memory,
    filter: Filter,
    after: Option<Cursor>,
    mut live: Queue,
    deadline: Option<DateTime<Utc>>,
) -> impl Stream<Item = Result<Arc<audit_log::Model>>> {
    async_stream::stream! {
        let expired = async move {
            match deadline {
                Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let mut replayed: Option<(String, i64)> = None;
        if let Some(cursor) = after {
            let mut reader = BySequence::after(&memory, cursor.tenant_id.clone(), cursor.seq)
                .matching(filter.clone())
                .batch(REPLAY_BATCH);
            // Most of the replay from a replica (when one serves reads); what it has not
            // replayed yet from the primary, so that the live events follow with no gap.
            let mut replica = replica;
            let mut source = replica.clone().unwrap_or_else(|| db.clone());
            loop {
                // On a task of its own: a client that stops reading stops this stream from
                // being polled, and a query suspended mid-way would keep its connection.
                let batch = {
                    let db = source.clone();
                    tokio::spawn(async move {
                        let rows = reader.next(&db).await;
                        (reader, rows)
                    })
                };
                let rows = match batch.await {
                    Ok((moved, Ok(rows))) => {
                        reader = moved;
                        rows
                    }
                    Ok((_, Err(err))) => {
                        yield Err(err);
                        return;
                    }
                    Err(failed) => {
                        yield Err(Error::internal(failed));
                        return;
                    }
                };
                if rows.is_empty() {
                    if replica.take().is_none() {
                        break;
                    }
                    source = db.clone();
                    continue;
                }
                for row in rows {
                    yield Ok(Arc::new(row));
                }
            }
            replayed = Some((cursor.tenant_id, reader.position()));
        }
        loop {
            let received = tokio::select! {
                received = live.receiver.recv() => received,
                () = &mut expired => {
                    yield Err(Error::Unauthenticated("your credential expired".to_owned()));
                    return;
                }
            };
            match received {
                Some(Ok(event)) => {
                    let seen = replayed
                        .as_ref()
                        .is_some_and(|(tenant, seq)| *tenant == event.tenant_id && event.seq <= *seq);
                    if !seen {
                        yield Ok(event);
                    }
                }
                Some(Err(Lagged(missed))) => {
                    yield Err(Error::SubscriberLagged { missed });
                    return;
                }
                None => return,
            }
        }
    }
}
