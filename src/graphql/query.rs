//! Read resolvers: one event by id, and filtered pages of events.

use async_graphql::{Context, ID, Object};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::types::{AuditLog, AuditLogConnection, AuditLogFilter, AuditLogOrder};
use crate::auth::Principal;
use crate::error::Error;
use crate::service::query::{self, PageArgs};

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// One event by id, or null when there is no such event in your tenant.
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<AuditLog>> {
        let principal = ctx.data::<Principal>()?;
        let id = Uuid::parse_str(&id)
            .map_err(|_| Error::bad_input("id", "id is not a valid event id (a UUID)"))?;
        let db = ctx.data::<DatabaseConnection>()?;
        let found = query::find(db, &principal.readable_tenants(), id).await?;
        Ok(found.map(AuditLog))
    }

    /// Events matching `filter`, a page at a time (Relay cursor connection). Give `first`
    /// (and `after`) to page forward or `last` (and `before`) to page backward; pages hold
    /// 50 events by default and at most 500.
    async fn audit_logs(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        #[graphql(default_with = "Some(AuditLogOrder::OccurredAtDesc)")] order_by: Option<
            AuditLogOrder,
        >,
    ) -> async_graphql::Result<AuditLogConnection> {
        let principal = ctx.data::<Principal>()?;
        let filter = filter
            .unwrap_or_default()
            .into_filter(principal.readable_tenants())?;
        let forward = last.is_none();
        let args = PageArgs {
            first,
            after,
            last,
            before,
            order: order_by.unwrap_or_default().into(),
        };
        let far_flag = if forward {
            "hasPreviousPage"
        } else {
            "hasNextPage"
        };
        let want_far_side = ctx.look_ahead().field("pageInfo").field(far_flag).exists();
        let db = ctx.data::<DatabaseConnection>()?;
        let page = query::page(db, &filter, &args, want_far_side).await?;
        Ok(AuditLogConnection::new(page, filter))
    }
}
