//! The event and its actor, target and context as GraphQL objects; the Relay connection
//! of events; the audit trails of actors and targets. One module, because these types
//! refer to one another (an event's actor has a trail of events).

use std::sync::Arc;

use async_graphql::{ComplexObject, Context, ID, Json, Lookahead, Object, SimpleObject};
use entity::audit_log;
use serde_json::Value;

use crate::credentials::{Principal, Scope};
use crate::graphql::capacity::page_cost;
use crate::graphql::guards::RequireScope;
use crate::graphql::scalars::DateTime;
use crate::graphql::{budget, reads};
use crate::service::capacity::size::json_size;
use crate::service::privacy::seal::Values;
use crate::service::privacy::store::Opened;
use crate::service::privacy::{self, Shown};
use crate::service::query::cursor::Cursor;
use crate::service::query::filter::Filter;
use crate::service::query::trail::Subject;
use crate::service::query::{self, Page};
use crate::service::tlog::canonical::host_only;
use tokio::sync::OnceCell;

use crate::graphql::loaders::{
    AuditLoader, CountKey, PersonalKey, PersonalLoader, TrailArgs, TrailKey,
};
use async_graphql::dataloader::DataLoader;

use super::enums::{ActorType, AuditOutcome};
use super::filter::AuditLogFilter;

/// A recorded governance operation: who did what to which resource, when, and how it ended.
/// Shared, not copied, between a page's `edges` and `nodes` and among live subscribers;
/// the event as this caller may see it (its personal values) is worked out once.
pub struct AuditLog(pub Arc<audit_log::Model>, OnceCell<audit_log::Model>);

impl AuditLog {
    /// The fields a summary row answers (see `query::Columns::Summary`).
    const SUMMARY: &[&str] = &[
        "__typename",
        "id",
        "tenantId",
        "cursor",
        "sequence",
        "occurredAt",
        "actor",
        "action",
        "target",
        "outcome",
        "metadata",
    ];

    /// The columns a page of events must read for the selection of `connection`.
    pub fn columns(connection: &Lookahead<'_>) -> query::Columns {
        let events = [
            connection.field("edges").field("node"),
            connection.field("nodes"),
        ];
        let events: Vec<_> = events
            .iter()
            .flat_map(Lookahead::selection_fields)
            .collect();
        let mut fields = events.iter().flat_map(|event| event.selection_set());
        match fields.all(|field| Self::SUMMARY.contains(&field.name())) {
            true => query::Columns::Summary,
            false => query::Columns::All,
        }
    }
}

impl AuditLog {
    pub fn new(model: Arc<audit_log::Model>) -> Self {
        AuditLog(model, OnceCell::new())
    }

    /// The event as the caller may see it: its personal values in clear with `audit:pii`,
    /// else `[redacted]`; `[erased]` once erased (docs/privacy.md).
    async fn shown(&self, ctx: &Context<'_>) -> async_graphql::Result<&audit_log::Model> {
        if self.0.personal.is_none() {
            return Ok(&self.0);
        }
        let shown = self.1.get_or_try_init(|| async {
            let pii = ctx.data::<Principal>().is_ok_and(|p| p.has(Scope::Pii));
            if !pii {
                return Ok::<_, async_graphql::Error>(privacy::show(&self.0, &Shown::Redacted));
            }
            let values = match self.opened(ctx).await? {
                Some(opened) => Some(opened_values(ctx, &opened)?),
                None => None,
            };
            Ok(privacy::show(&self.0, &Shown::Clear(values.as_ref())))
        });
        shown.await
    }

    /// The event's personal values, decrypted (`None` once erased).
    async fn opened(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Arc<Opened>>> {
        let m = &self.0;
        let key = PersonalKey(m.tenant_id.clone(), m.actor_id.clone(), m.id);
        let loader = ctx.data::<Arc<DataLoader<PersonalLoader>>>()?;
        loader.load_one(key).await
    }
}

/// Personal values parsed, charged to the request's memory first by what they take parsed.
fn opened_values(ctx: &Context<'_>, opened: &Opened) -> async_graphql::Result<Values> {
    let text = std::str::from_utf8(&opened.text).map_err(crate::error::Error::internal)?;
    budget::meter(ctx)?
        .charge(json_size(text))
        .map_err(crate::error::Error::from)?;
    Ok(opened.values()?)
}

/// A personal value with what its commitment was made of: SHA-256 over the JCS array
/// `[salt, path, value]` is the commitment in the event's canonical form (docs/privacy.md).
#[derive(SimpleObject)]
pub struct AuditDisclosure {
    /// Where the value is: `actor.name`, `context.ipAddress`, `metadata/email`.
    pub path: String,
    /// The salt, base64url without padding.
    pub salt: String,
    pub value: Json<Value>,
    /// The commitment the event's hash covers, lower-case hex.
    pub commitment: String,
}

impl From<audit_log::Model> for AuditLog {
    fn from(model: audit_log::Model) -> Self {
        AuditLog::new(Arc::new(model))
    }
}

#[Object]
impl AuditLog {
    /// Server-assigned id (a UUID v7).
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The tenant the event belongs to.
    async fn tenant_id(&self) -> &str {
        &self.0.tenant_id
    }
    /// Opaque position of this event: `after` for `auditLogs` pages and for resuming
    /// `auditLogCreated`.
    async fn cursor(&self) -> String {
        Cursor::of(&self.0).encode()
    }
    /// Position in the tenant's log: 1, 2, 3, ... in commit order, without gaps. A string,
    /// because it outgrows 32-bit integers.
    async fn sequence(&self) -> String {
        self.0.seq.to_string()
    }
    /// When the operation happened, as the caller said (or when it was recorded).
    async fn occurred_at(&self) -> DateTime {
        DateTime(self.0.occurred_at)
    }
    /// When audit-service stored the event.
    async fn recorded_at(&self) -> DateTime {
        DateTime(self.0.recorded_at)
    }
    /// Who performed the operation.
    async fn actor(&self, ctx: &Context<'_>) -> async_graphql::Result<AuditActor> {
        let shown = self.shown(ctx).await?;
        Ok(AuditActor {
            kind: shown.actor_type.into(),
            id: shown.actor_id.clone(),
            name: shown.actor_name.clone(),
        })
    }
    /// What was done, as dot-separated segments (`project.created`).
    async fn action(&self) -> &str {
        &self.0.action
    }
    /// The resource acted on, if any.
    async fn target(&self) -> Option<AuditTarget> {
        let m = &self.0;
        Some(AuditTarget {
            kind: m.target_type.clone()?,
            id: m.target_id.clone()?,
            name: m.target_name.clone(),
        })
    }
    /// How the operation ended.
    async fn outcome(&self) -> AuditOutcome {
        self.0.outcome.into()
    }
    /// Why it ended that way (an error message, the rule that denied it).
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// Free-form details, a JSON object; its personal values (the action's
    /// `personalPaths`) read as the actor's name does.
    // Up to 64 KiB each, where other fields hold a few bytes: it counts for 20 points.
    #[graphql(complexity = 20)]
    async fn metadata(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<&Value>> {
        Ok(Json(&*self.shown(ctx).await?.metadata))
    }
    /// SHA-256 over `previousHash` and the event's canonical bytes, in lower-case hex
    /// (`docs/chain.md` says how to recompute it).
    async fn hash(&self) -> String {
        hex::encode(&self.0.hash)
    }
    /// `hash` of the tenant's previous event, in lower-case hex (zeros for the first).
    async fn previous_hash(&self) -> String {
        hex::encode(&self.0.prev_hash)
    }
    /// The version of the canonical encoding `hash` covers: 2 for new events (it covers
    /// `context.traceId`), 1 for events stored before traces were recorded.
    async fn chain_version(&self) -> i32 {
        i32::from(self.0.chain_version)
    }
    /// The idempotency key the event was recorded with, if any: what a sender reconciles
    /// what it sent against.
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    /// The event's personal values with their salts, for an auditor to check each against
    /// the commitment its hash covers (`tools/verify_disclosures.py`); empty once erased.
    /// Needs `audit:pii`.
    #[graphql(guard = "RequireScope(Scope::Pii)")]
    async fn disclosures(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<AuditDisclosure>> {
        if self.0.personal.is_none() {
            return Ok(Vec::new());
        }
        let commitments = privacy::commitments(&self.0);
        let Some(opened) = self.opened(ctx).await? else {
            return Ok(Vec::new());
        };
        let values = opened_values(ctx, &opened)?;
        Ok(commitments
            .into_iter()
            .filter_map(|(path, commitment)| {
                Some(AuditDisclosure {
                    salt: opened.key.salt(&path),
                    value: Json(values.get(&path)?.clone()),
                    path,
                    commitment,
                })
            })
            .collect())
    }
    /// Where the request came from.
    async fn context(&self, ctx: &Context<'_>) -> async_graphql::Result<RequestContext> {
        let shown = self.shown(ctx).await?;
        Ok(RequestContext {
            ip_address: (shown.ip_address.as_deref()).map(|ip| host_only(ip).into_owned()),
            user_agent: shown.user_agent.clone(),
            request_id: shown.request_id.clone(),
            trace_id: shown.trace_id.clone(),
        })
    }
}

/// Who performed an operation. A federation entity: other subgraphs can reference an actor
/// by `type` and `id` and get its audit trail from here.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct AuditActor {
    /// User, service or system.
    #[graphql(name = "type")]
    pub kind: ActorType,
    /// The actor's id in the platform (a user id, a service name).
    pub id: String,
    /// A display name, as recorded with the event (null for a federation reference).
    pub name: Option<String>,
}

#[ComplexObject]
impl AuditActor {
    /// This actor's own audit trail, newest first (50 events by default, at most 500).
    #[graphql(complexity = "page_cost(first, None, child_complexity)")]
    async fn audit_logs(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<AuditLogConnection> {
        let subject = Subject::Actor(self.kind.into(), self.id.clone());
        trail(ctx, subject, filter, first, after).await
    }
}

/// The resource an operation acted on. A federation entity: another subgraph that owns,
/// say, `Project` can return `{ __typename: "AuditTarget", type: "project", id: "p1" }` and
/// the gateway fills in its audit trail from here.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct AuditTarget {
    /// The resource's type (`project`, `role`, `api_key`).
    #[graphql(name = "type")]
    pub kind: String,
    /// The resource's id.
    pub id: String,
    /// A display name, as recorded with the event (null for a federation reference).
    pub name: Option<String>,
}

#[ComplexObject]
impl AuditTarget {
    /// This target's own audit trail, newest first (50 events by default, at most 500).
    #[graphql(complexity = "page_cost(first, None, child_complexity)")]
    async fn audit_logs(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<AuditLogConnection> {
        let subject = Subject::Target(self.kind.clone(), self.id.clone());
        trail(ctx, subject, filter, first, after).await
    }
}

/// One page of an actor's or target's trail, through the batching loader.
async fn trail(
    ctx: &Context<'_>,
    subject: Subject,
    filter: Option<AuditLogFilter>,
    first: Option<i32>,
    after: Option<String>,
) -> async_graphql::Result<AuditLogConnection> {
    let principal = ctx.data::<Principal>()?;
    let filter = filter.unwrap_or_default().into_filter(principal)?;
    let size = query::page_size(first, None)?;
    budget::charge(ctx, size as usize)?;
    let after = query::decode_cursor(after.as_deref(), "after")?;
    let has_previous_page = after.is_some();
    let key = TrailKey {
        subject,
        args: TrailArgs::new(filter, after, size + 1),
    };
    // The count is asked for together with the page, so that every entity's count lands in
    // the same batch: asked for later, the counts would trickle in over several batches.
    let count = ctx.look_ahead().field("totalCount").exists().then(|| {
        CountKey(TrailKey {
            subject: key.subject.clone(),
            args: TrailArgs::new(key.args.filter.clone(), None, 0),
        })
    });
    let loader = ctx.data::<DataLoader<AuditLoader>>()?;
    let (rows, total) = futures_util::future::join(loader.load_one(key), async {
        match count {
            Some(count) => loader.load_one(count).await.map(Option::unwrap_or_default),
            None => Ok(0),
        }
    })
    .await;
    let mut rows = rows?.unwrap_or_default();
    let has_next_page = rows.len() as u64 > size;
    rows.truncate(size as usize);
    let page = Page {
        rows,
        has_next_page,
        has_previous_page,
    };
    Ok(AuditLogConnection::new(page, Count::Known(total?)))
}

/// Where a request came from.
#[derive(SimpleObject, Clone, Debug)]
pub struct RequestContext {
    /// The client's IP address.
    pub ip_address: Option<String>,
    /// The client's User-Agent.
    pub user_agent: Option<String>,
    /// The request id, to correlate with other services' logs.
    pub request_id: Option<String>,
    /// The W3C trace id of the operation: the trace its spans are in, in your tracing
    /// backend.
    pub trace_id: Option<String>,
}

/// A page of audit events (Relay cursor connection).
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct AuditLogConnection {
    /// The events of this page with their cursors.
    pub edges: Vec<AuditLogEdge>,
    /// The events of this page.
    pub nodes: Vec<AuditLog>,
    /// Where this page sits.
    pub page_info: PageInfo,
    #[graphql(skip)]
    pub count: Count,
}

/// How to count all the events of a connection, should `totalCount` be asked for.
pub enum Count {
    Query(Box<Filter>),
    /// Counted already (through the loader, with the page).
    Known(u64),
}

#[ComplexObject]
impl AuditLogConnection {
    /// How many events match the filter, across all pages. Costs a count query; computed
    /// only when asked for.
    async fn total_count(&self, ctx: &Context<'_>) -> async_graphql::Result<u64> {
        match &self.count {
            Count::Query(filter) => {
                let db = reads::db(ctx).await?;
                let _turn = budget::turn(ctx).await;
                Ok(query::count(db, filter).await?)
            }
            Count::Known(n) => Ok(*n),
        }
    }
}

impl AuditLogConnection {
    pub fn new(page: Page, count: Count) -> Self {
        let cursors: Vec<String> = page.rows.iter().map(|m| Cursor::of(m).encode()).collect();
        let page_info = PageInfo {
            has_next_page: page.has_next_page,
            has_previous_page: page.has_previous_page,
            start_cursor: cursors.first().cloned(),
            end_cursor: cursors.last().cloned(),
        };
        let rows: Vec<Arc<audit_log::Model>> = page.rows.into_iter().map(Arc::new).collect();
        let edges = rows
            .iter()
            .zip(cursors)
            .map(|(m, cursor)| AuditLogEdge {
                cursor,
                node: AuditLog::new(Arc::clone(m)),
            })
            .collect();
        let nodes = rows.into_iter().map(AuditLog::new).collect();
        AuditLogConnection {
            edges,
            nodes,
            page_info,
            count,
        }
    }
}

/// An event and its cursor.
#[derive(SimpleObject)]
pub struct AuditLogEdge {
    /// Opaque position of this event, for `after` and `before`.
    pub cursor: String,
    /// The event.
    pub node: AuditLog,
}

/// Where a page sits in the whole result (Relay). Shareable: other subgraphs may define it
/// too.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(shareable)]
pub struct PageInfo {
    /// More events follow this page.
    pub has_next_page: bool,
    /// Events precede this page.
    pub has_previous_page: bool,
    /// Cursor of the first event of this page.
    pub start_cursor: Option<String>,
    /// Cursor of the last event of this page.
    pub end_cursor: Option<String>,
}
