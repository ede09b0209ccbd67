//! Read resolvers: one event by id, and filtered pages of events.

use async_graphql::{Context, ID, Object};
use uuid::Uuid;

use super::admission::{page_cost, stats_cost};
use super::budget;
use super::guards::RequireScope;
use super::types::{
    AuditChainHead, AuditChainVerification, AuditLog, AuditLogConnection, AuditLogFilter,
    AuditLogOrder, AuditStatsBucket, AuditStatsDimension, AuditStatsInterval, Count,
};
use crate::auth::{Principal, Scope};
use crate::context::AppContext;
use crate::error::Error;
use crate::service::chain;
use crate::service::event::{MAX_ID_LEN, check_id};
use crate::service::query::{self, PageArgs};
use crate::service::stats::{self, Dimension, MAX_BUCKETS};

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// One event by id, or null when there is no such event in your tenant.
    #[graphql(guard = "RequireScope(Scope::Read)")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<AuditLog>> {
        let principal = ctx.data::<Principal>()?;
        let id = Uuid::parse_str(&id)
            .map_err(|_| Error::bad_input("id", "id is not a valid event id (a UUID)"))?;
        let db = &ctx.data::<AppContext>()?.db;
        let found = query::find(db, &principal.readable_tenants(), id).await?;
        budget::hold(ctx, found.as_slice()).await?;
        Ok(found.map(AuditLog))
    }

    /// Events matching `filter`, a page at a time (Relay cursor connection). Give `first`
    /// (and `after`) to page forward or `last` (and `before`) to page backward; pages hold
    /// 50 events by default and at most 500.
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "page_cost(first, last, child_complexity)"
    )]
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
        let filter = filter.unwrap_or_default().into_filter(principal)?;
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
        budget::charge(ctx, query::page_size(args.first, args.last)? as usize)?;
        let db = &ctx.data::<AppContext>()?.db;
        let page = query::page(db, &filter, &args, want_far_side).await?;
        budget::hold(ctx, &page.rows).await?;
        Ok(AuditLogConnection::new(
            page,
            Count::Query(Box::new(filter)),
        ))
    }

    /// How many events match `filter`, grouped by `groupBy` and, with `interval`, by the
    /// UTC time bucket of `occurredAt`: ordered by bucket start, then by count, largest
    /// first; at most `first` buckets (1,000 at most). Answered from an hourly rollup, except
    /// when grouping by `ACTOR_ID` or filtering on `actorIds`, `targetIds`, `requestId`,
    /// `metadata` or times within an hour: those count events one by one and need
    /// `filter.occurredAfter` at most 31 days before `filter.occurredBefore` (or now).
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "stats_cost(first, child_complexity)"
    )]
    async fn audit_log_stats(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        group_by: Vec<AuditStatsDimension>,
        interval: Option<AuditStatsInterval>,
        #[graphql(default = 100)] first: Option<i32>,
    ) -> async_graphql::Result<Vec<AuditStatsBucket>> {
        let principal = ctx.data::<Principal>()?;
        let filter = filter.unwrap_or_default().into_filter(principal)?;
        let first = u64::try_from(first.unwrap_or(100)).map_err(|_| {
            Error::bad_input(
                "first",
                format!("first must be between 0 and {MAX_BUCKETS}"),
            )
        })?;
        let group_by: Vec<Dimension> = group_by.into_iter().map(Into::into).collect();
        let db = &ctx.data::<AppContext>()?.db;
        let buckets = stats::count(
            db,
            &filter,
            &group_by,
            interval.map(Into::into),
            first,
            chrono::Utc::now(),
        )
        .await?;
        Ok(buckets.into_iter().map(Into::into).collect())
    }

    /// The head of a tenant's hash chain (your own tenant by default), or null when the
    /// tenant has no events.
    #[graphql(guard = "RequireScope(Scope::Read)")]
    async fn audit_chain_head(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<String>,
    ) -> async_graphql::Result<Option<AuditChainHead>> {
        let tenant_id = readable_tenant(ctx, tenant_id)?;
        let db = &ctx.data::<AppContext>()?.db;
        Ok(chain::head(db, &tenant_id).await?.map(Into::into))
    }

    /// Checks a tenant's hash chain (your own tenant by default) from `fromSequence` to
    /// `toSequence`, both inclusive; by default from the start (or the last retention
    /// checkpoint) to the head. Reads the events in bounded batches.
    #[graphql(guard = "RequireScope(Scope::Read)")]
    async fn verify_audit_chain(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<String>,
        from_sequence: Option<String>,
        to_sequence: Option<String>,
    ) -> async_graphql::Result<AuditChainVerification> {
        let tenant_id = readable_tenant(ctx, tenant_id)?;
        let from = sequence_arg("fromSequence", from_sequence)?;
        let to = sequence_arg("toSequence", to_sequence)?;
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return Err(Error::bad_input(
                "toSequence",
                "toSequence must not be below fromSequence",
            )
            .into());
        }
        let db = &ctx.data::<AppContext>()?.db;
        Ok(chain::verify(db, &tenant_id, from, to).await?.into())
    }
}

/// The tenant a chain query is about: the caller's own unless it names one it may read.
fn readable_tenant(ctx: &Context<'_>, tenant_id: Option<String>) -> async_graphql::Result<String> {
    let principal = ctx.data::<Principal>()?;
    let tenant_id = tenant_id.unwrap_or_else(|| principal.tenant_id.clone());
    check_id("tenantId", &tenant_id, MAX_ID_LEN)?;
    principal.tenants(Some(vec![tenant_id.clone()]))?;
    Ok(tenant_id)
}

fn sequence_arg(field: &str, value: Option<String>) -> Result<Option<i64>, Error> {
    value
        .map(|v| {
            // Digits only, as `sequence` prints them: no sign, no leading zero.
            let canonical = v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
            let n = v.parse::<i64>().ok().filter(|_| canonical);
            n.ok_or_else(|| {
                Error::bad_input(field, format!("{field} is a sequence number, 1 or more"))
            })
        })
        .transpose()
}
