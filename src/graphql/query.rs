//! Read resolvers: one event by id, and filtered pages of events.

use async_graphql::{Context, ID, Object};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::budget;
use super::capacity::{page_cost, stats_cost};
use super::guards::RequireScope;
use super::reads;
use super::types::{
    AuditChainHead, AuditChainVerification, AuditCheckpoint, AuditConsistencyProof,
    AuditInclusionProof, AuditLog, AuditLogConnection, AuditLogFilter, AuditLogOrder,
    AuditStatsBucket, AuditStatsDimension, AuditStatsInterval, AuditViewer, Count,
};
use crate::context::AppContext;
use crate::credentials::{Principal, Scope};
use crate::error::Error;
use crate::service::query::stats::{self, Dimension, MAX_BUCKETS};
use crate::service::query::{self, PageArgs};
use crate::service::tlog::tree::Tree;
use crate::service::tlog::{chain, checkpoint};
use audit_contract::rules::{MAX_ID_LEN, check_id};
use entity::tree_checkpoint;

#[derive(Default)]
pub struct AuditQuery;

/// The verifiable log's reads: checkpoints and proofs.
#[derive(Default)]
pub struct AuditProofQuery;

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
        let db = reads::db(ctx).await?;
        let meter = budget::meter(ctx)?;
        let _turn = budget::turn(ctx).await;
        let found = query::find(db, &principal.readable_tenants(), id, &meter).await?;
        Ok(found.map(AuditLog::from))
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
        let look_ahead = ctx.look_ahead();
        let want_far_side = look_ahead.field("pageInfo").field(far_flag).exists();
        budget::charge(ctx, query::page_size(args.first, args.last)? as usize)?;
        let db = reads::db(ctx).await?;
        let columns = AuditLog::columns(&look_ahead);
        let meter = budget::meter(ctx)?;
        let _turn = budget::turn(ctx).await;
        let page = query::page(db, &filter, &args, want_far_side, columns, &meter).await?;
        Ok(AuditLogConnection::new(
            page,
            Count::Query(Box::new(filter)),
        ))
    }

    /// How many events match `filter`, grouped by `groupBy` and, with `interval`, by the
    /// UTC time bucket of `occurredAt`: ordered by bucket start, then by count, largest
    /// first; at most `first` buckets (1,000 at most). Answered from daily and hourly
    /// rollups, except when grouping by `ACTOR_ID` or filtering on `actorIds`, `targetIds`,
    /// `requestId`, `metadata` or times within an hour: those count events one by one and
    /// need `filter.occurredAfter` at most 31 days before `filter.occurredBefore` (or now).
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
        let db = reads::db(ctx).await?;
        let _turn = budget::turn(ctx).await;
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

    /// Who is asking: subject, tenant and scopes of the request's credential (any valid
    /// credential may ask).
    async fn audit_viewer(&self, ctx: &Context<'_>) -> async_graphql::Result<AuditViewer> {
        Ok(ctx.data::<Principal>()?.into())
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
        let db = reads::db(ctx).await?;
        let _turn = budget::turn(ctx).await;
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
        let context = ctx.data::<AppContext>()?;
        let db = reads::db(ctx).await?;
        let _turn = budget::turn(ctx).await;
        let verified = chain::verify(db, &context.memory, &tenant_id, from, to).await?;
        Ok(verified.into())
    }
}

#[Object]
impl AuditProofQuery {
    /// The latest signed checkpoint of a tenant's Merkle tree (your own tenant by default),
    /// or null when none was issued yet.
    #[graphql(guard = "RequireScope(Scope::Read)")]
    async fn audit_checkpoint(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<String>,
    ) -> async_graphql::Result<Option<AuditCheckpoint>> {
        let tenant_id = readable_tenant(ctx, tenant_id)?;
        let context = ctx.data::<AppContext>()?;
        let db = reads::db(ctx).await?;
        let _turn = budget::turn(ctx).await;
        let latest = checkpoint::latest(db, &tenant_id).await?;
        Ok(latest.map(|c| AuditCheckpoint::new(c, verifier_key(context))))
    }

    /// The proof that an event is in its tenant's tree of `treeSize` events (by default the
    /// latest checkpoint's size), or null when there is no such event in your tenant.
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "PROOF_COST + child_complexity"
    )]
    async fn audit_inclusion_proof(
        &self,
        ctx: &Context<'_>,
        id: ID,
        tree_size: Option<String>,
    ) -> async_graphql::Result<Option<AuditInclusionProof>> {
        let principal = ctx.data::<Principal>()?;
        let context = ctx.data::<AppContext>()?;
        let db = reads::db(ctx).await?;
        let id = Uuid::parse_str(&id)
            .map_err(|_| Error::bad_input("id", "id is not a valid event id (a UUID)"))?;
        let tree_size = sequence_arg("treeSize", tree_size)?;
        let _turn = budget::turn(ctx).await;
        let tenants = principal.readable_tenants();
        let meter = budget::meter(ctx)?;
        let Some(event) = query::find(db, &tenants, id, &meter).await? else {
            return Ok(None);
        };
        let tenant_id = event.tenant_id;
        let (size, latest) = signed_size(db, &tenant_id, tree_size, "treeSize").await?;
        let index = event.seq as u64 - 1;
        if index >= size {
            return Err(Error::bad_input(
                "treeSize",
                format!("the event is leaf {index}, not in a tree of {size}"),
            )
            .into());
        }
        let hashes = Tree::cached(db, &tenant_id, &context.tiles)
            .inclusion(index, size)
            .await?;
        let checkpoint = match latest.tree_size as u64 == size {
            true => Some(latest),
            false => checkpoint::at(db, &tenant_id, size).await?,
        };
        Ok(Some(AuditInclusionProof {
            leaf_index: index.to_string(),
            tree_size: size.to_string(),
            hashes: hashes.iter().map(hex::encode).collect(),
            checkpoint: checkpoint.map(|c| AuditCheckpoint::new(c, verifier_key(context))),
        }))
    }

    /// The proof that a tenant's tree of `toSize` events (by default the latest checkpoint's
    /// size) extends its tree of `fromSize` events.
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "PROOF_COST + child_complexity"
    )]
    async fn audit_consistency_proof(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<String>,
        from_size: String,
        to_size: Option<String>,
    ) -> async_graphql::Result<AuditConsistencyProof> {
        let tenant_id = readable_tenant(ctx, tenant_id)?;
        let context = ctx.data::<AppContext>()?;
        let db = reads::db(ctx).await?;
        let from = sequence_arg("fromSize", Some(from_size))?.unwrap_or_default() as u64;
        let to = sequence_arg("toSize", to_size)?;
        let _turn = budget::turn(ctx).await;
        let (to, _) = signed_size(db, &tenant_id, to, "toSize").await?;
        if from > to {
            return Err(Error::bad_input("fromSize", "fromSize must not be above toSize").into());
        }
        let hashes = Tree::cached(db, &tenant_id, &context.tiles)
            .consistency(from, to)
            .await?;
        Ok(AuditConsistencyProof {
            from_size: from.to_string(),
            to_size: to.to_string(),
            hashes: hashes.iter().map(hex::encode).collect(),
        })
    }
}

/// The complexity of a proof: a few reads of up to 256 hashes per tile level, about what a
/// page of events costs.
const PROOF_COST: usize = 50;

/// The tree size a proof is asked for, by default the latest checkpoint's, never beyond it;
/// and that latest checkpoint.
async fn signed_size(
    db: &DatabaseConnection,
    tenant_id: &str,
    asked: Option<i64>,
    field: &str,
) -> Result<(u64, tree_checkpoint::Model), Error> {
    let latest = checkpoint::latest(db, tenant_id).await?;
    let signed = latest.as_ref().map_or(0, |c| c.tree_size);
    let size = asked.unwrap_or(signed);
    match latest {
        Some(latest) if size > 0 && size <= signed => Ok((size as u64, latest)),
        _ => Err(Error::bad_input(
            field,
            match signed {
                0 => "no checkpoint was signed for this tenant yet".to_owned(),
                _ => format!("{field} is beyond the latest checkpoint, {signed}"),
            },
        )),
    }
}

fn verifier_key(context: &AppContext) -> String {
    context
        .signer
        .as_ref()
        .map(|signer| signer.verifier_key())
        .unwrap_or_default()
}

/// The tenant a chain query is about: the caller's own unless it names one it may read.
fn readable_tenant(ctx: &Context<'_>, tenant_id: Option<String>) -> async_graphql::Result<String> {
    let principal = ctx.data::<Principal>()?;
    let tenant_id = tenant_id.unwrap_or_else(|| principal.tenant_id.clone());
    check_id("tenantId", &tenant_id, MAX_ID_LEN).map_err(Error::from)?;
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
                Error::bad_input(
                    field,
                    format!("{field} is a whole number, 1 or more, in digits"),
                )
            })
        })
        .transpose()
}
