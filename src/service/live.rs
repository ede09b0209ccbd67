//! A live subscription: optional replay from the database, then the instance's feed, with
//! neither a gap nor a duplicate at the seam.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::audit_log;
use futures_util::Stream;
use sea_orm::DatabaseConnection;
use tokio::sync::broadcast::{Receiver, error::RecvError};

use super::cursor::Cursor;
use super::filter::Filter;
use super::memory::Memory;
use super::sequence::BySequence;
use crate::error::{Error, Result};

/// Events replayed per query (up to 6.4 MiB of metadata, held while the client reads them).
const REPLAY_BATCH: u64 = 100;

/// Matching events committed after `after` (replayed from the database), then matching
/// events as they are committed, until `deadline` (when the credential expires).
///
/// `live` must be subscribed before this is called: then every event committed after the
/// replay's last query is in `live`, and the ones the replay already delivered are
/// recognized by their sequence number (per tenant, sequence order is commit order).
pub fn tail(
    db: DatabaseConnection,
    memory: Memory,
    filter: Filter,
    after: Option<Cursor>,
    mut live: Receiver<Arc<audit_log::Model>>,
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
            loop {
                // On a task of its own: a client that stops reading stops this stream from
                // being polled, and a query suspended mid-way would keep its connection.
                let batch = {
                    let db = db.clone();
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
                    break;
                }
                for row in rows {
                    yield Ok(Arc::new(row));
                }
            }
            replayed = Some((cursor.tenant_id, reader.position()));
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                () = &mut expired => {
                    yield Err(Error::Unauthenticated("your credential expired".to_owned()));
                    return;
                }
            };
            match received {
                Ok(event) => {
                    let seen = replayed
                        .as_ref()
                        .is_some_and(|(tenant, seq)| *tenant == event.tenant_id && event.seq <= *seq);
                    if !seen && filter.matches(&event) {
                        yield Ok(event);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    yield Err(Error::SubscriberLagged { missed });
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
