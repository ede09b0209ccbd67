//! Live tail: events as they are committed, optionally resumed from a cursor.

use std::sync::Arc;

use async_graphql::{Context, Subscription};
use futures_util::{Stream, StreamExt};

use super::guards::RequireScope;
use super::types::{AuditLog, AuditLogFilter};
use crate::context::AppContext;
use crate::credentials::{JWT_LEEWAY, Principal, Scope};
use crate::error::Error;
use crate::service::live;
use crate::service::live::mailbox::Allowance;
use crate::service::query::cursor::Cursor;

#[derive(Default)]
pub struct AuditSubscription;

#[Subscription]
impl AuditSubscription {
    /// Events matching `filter` as they are committed, each once, in commit order. With
    /// `after` (any event's `cursor`, or a cursor from `auditLogs`), first every matching
    /// event committed after that one, then live ones, with no gap and no duplicate in
    /// between. A subscriber that falls too far behind gets `SUBSCRIBER_LAGGED` and can
    /// resume with `after`.
    #[graphql(guard = "RequireScope(Scope::Read)")]
    async fn audit_log_created(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<AuditLog>>> {
        let principal = ctx.data::<Principal>()?;
        let filter = filter.unwrap_or_default().into_filter(principal)?;
        let after = after
            .map(|text| {
                Cursor::decode(&text)
                    .filter(|c| filter.tenant_ids.contains(&c.tenant_id))
                    .ok_or_else(|| Error::bad_input("after", "after is not a valid cursor"))
            })
            .transpose()?;
        let context = ctx.data::<AppContext>()?;
        // What it leaves unread counts against its connection's allowance.
        let allowance = ctx
            .data_opt::<Arc<Allowance>>()
            .cloned()
            .unwrap_or_else(|| Allowance::root(live::QUEUE_BYTES));
        // Subscribe before replaying, so that nothing committed meanwhile is missed.
        let feed = context.feed.subscribe(&filter.tenant_ids);
        let live = live::queue(feed, filter.clone(), context.feed.capacity(), allowance);
        // The same leeway as when the token was accepted over HTTP.
        let deadline = principal.expires_at.map(|exp| exp + JWT_LEEWAY);
        let metrics = context.metrics.clone();
        let replica = context.reads.replica();
        let (db, memory) = (context.db.clone(), context.memory.clone());
        let tail = live::tail((replica, db), memory, filter, after, live, deadline);
        Ok(tail.map(move |event| match event {
            Ok(event) => Ok(AuditLog::new(event)),
            Err(err) => {
                if matches!(err, Error::SubscriberLagged { .. }) {
                    metrics.live.lagged.increment(1);
                }
                Err(err.into())
            }
        }))
    }
}
