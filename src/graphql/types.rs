//! The GraphQL object, enum and input types, converted from and to the service layer's.

use async_graphql::{ComplexObject, Context, Enum, ID, InputObject, Json, Object, SimpleObject};
use entity::audit_log;
use serde_json::Value;

use super::admission::page_cost;
use super::budget;
use super::scalars::DateTime;
use crate::auth::Principal;
use crate::error::Result;
use crate::service::chain::host_only;
use crate::service::cursor::Cursor;
use crate::service::event::{NewEvent, Target};
use crate::service::query::{self, Filter, Page, PageOrder};
use crate::service::trail::Subject;

use super::loaders::{AuditLoader, CountKey, TrailArgs, TrailKey};
use async_graphql::dataloader::DataLoader;

/// The kind of principal that performed an operation.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorType {
    /// A person, signed in through the platform.
    User,
    /// A platform service acting on its own behalf.
    Service,
    /// The platform itself (schedulers, retention, migrations).
    System,
}

/// How an operation ended.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    /// The operation did what was asked.
    Success,
    /// The operation was attempted and failed.
    Failure,
    /// The operation was refused by access control.
    Denied,
}

/// The order of `auditLogs` pages.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuditLogOrder {
    /// Newest `occurredAt` first.
    #[default]
    OccurredAtDesc,
    /// Oldest `occurredAt` first.
    OccurredAtAsc,
}

impl From<ActorType> for audit_log::ActorType {
    fn from(value: ActorType) -> Self {
        match value {
            ActorType::User => Self::User,
            ActorType::Service => Self::Service,
            ActorType::System => Self::System,
        }
    }
}

impl From<audit_log::ActorType> for ActorType {
    fn from(value: audit_log::ActorType) -> Self {
        match value {
            audit_log::ActorType::User => Self::User,
            audit_log::ActorType::Service => Self::Service,
            audit_log::ActorType::System => Self::System,
        }
    }
}

impl From<AuditOutcome> for audit_log::Outcome {
    fn from(value: AuditOutcome) -> Self {
        match value {
            AuditOutcome::Success => Self::Success,
            AuditOutcome::Failure => Self::Failure,
            AuditOutcome::Denied => Self::Denied,
        }
    }
}

impl From<audit_log::Outcome> for AuditOutcome {
    fn from(value: audit_log::Outcome) -> Self {
        match value {
            audit_log::Outcome::Success => Self::Success,
            audit_log::Outcome::Failure => Self::Failure,
            audit_log::Outcome::Denied => Self::Denied,
        }
    }
}

/// A recorded governance operation: who did what to which resource, when, and how it ended.
pub struct AuditLog(pub audit_log::Model);

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
    async fn actor(&self) -> AuditActor {
        AuditActor {
            kind: self.0.actor_type.into(),
            id: self.0.actor_id.clone(),
            name: self.0.actor_name.clone(),
        }
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
    /// Free-form details, a JSON object.
    // Up to 64 KiB each, where other fields hold a few bytes: it counts for 20 points.
    #[graphql(complexity = 20)]
    async fn metadata(&self) -> Json<&Value> {
        Json(&*self.0.metadata)
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
    /// Where the request came from.
    async fn context(&self) -> RequestContext {
        RequestContext {
            ip_address: self
                .0
                .ip_address
                .as_deref()
                .map(|ip| host_only(ip).into_owned()),
            user_agent: self.0.user_agent.clone(),
            request_id: self.0.request_id.clone(),
        }
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
}

/// An operation to record.
#[derive(InputObject, Clone, Debug)]
pub struct AuditEventInput {
    /// Who performed it.
    pub actor: ActorInput,
    /// What was done: 2 to 4 dot-separated lower-case segments (`project.member.added`).
    pub action: String,
    /// The resource acted on, if any.
    pub target: Option<TargetInput>,
    /// How it ended.
    #[graphql(default_with = "Some(AuditOutcome::Success)")]
    pub outcome: Option<AuditOutcome>,
    /// Why it ended that way.
    pub reason: Option<String>,
    /// When it happened; defaults to now, may not be more than 5 minutes ahead.
    pub occurred_at: Option<DateTime>,
    /// Free-form details: a JSON object of at most 64 KiB.
    pub metadata: Option<Json<Value>>,
    /// Where the request came from.
    pub context: Option<RequestContextInput>,
    /// Makes retries safe: the same key with the same content returns the original event.
    pub idempotency_key: Option<String>,
}

/// Who performed an operation.
#[derive(InputObject, Clone, Debug)]
pub struct ActorInput {
    /// User, service or system.
    #[graphql(name = "type")]
    pub kind: ActorType,
    /// The actor's id (1 to 256 characters).
    pub id: String,
    /// A display name (at most 256 characters).
    pub name: Option<String>,
}

/// The resource an operation acted on.
#[derive(InputObject, Clone, Debug)]
pub struct TargetInput {
    /// The resource's type (1 to 64 characters).
    #[graphql(name = "type")]
    pub kind: String,
    /// The resource's id (1 to 256 characters).
    pub id: String,
    /// A display name (at most 256 characters).
    pub name: Option<String>,
}

/// Where a request came from.
#[derive(InputObject, Clone, Debug)]
pub struct RequestContextInput {
    /// An IPv4 or IPv6 address.
    pub ip_address: Option<String>,
    /// The client's User-Agent (at most 1,024 characters).
    pub user_agent: Option<String>,
    /// The request id (at most 256 characters).
    pub request_id: Option<String>,
}

impl From<AuditEventInput> for NewEvent {
    fn from(input: AuditEventInput) -> Self {
        let context = input.context;
        NewEvent {
            actor_type: input.actor.kind.into(),
            actor_id: input.actor.id,
            actor_name: input.actor.name,
            action: input.action,
            target: input.target.map(|t| Target {
                kind: t.kind,
                id: t.id,
                name: t.name,
            }),
            outcome: input.outcome.unwrap_or(AuditOutcome::Success).into(),
            reason: input.reason,
            occurred_at: input.occurred_at.map(|t| t.0),
            metadata: input.metadata.map(|m| m.0),
            ip_address: context.as_ref().and_then(|c| c.ip_address.clone()),
            user_agent: context.as_ref().and_then(|c| c.user_agent.clone()),
            request_id: context.and_then(|c| c.request_id),
            idempotency_key: input.idempotency_key,
        }
    }
}

/// Which events to return. Every field narrows the result; list fields match any of their
/// values (at most 100 each, never empty).
#[derive(InputObject, Clone, Debug, Default)]
pub struct AuditLogFilter {
    /// Events of these tenants; your own tenant by default, others need `audit:admin`.
    pub tenant_ids: Option<Vec<String>>,
    /// Events by any of these actors.
    pub actor_ids: Option<Vec<String>>,
    /// Events by any of these kinds of actor.
    pub actor_types: Option<Vec<ActorType>>,
    /// Events with any of these actions; an entry ending in `.*` matches a prefix
    /// (`project.*` matches `project.created` and `project.member.added`).
    pub actions: Option<Vec<String>>,
    /// Events on targets of this type.
    pub target_type: Option<String>,
    /// Events on any of these targets (needs `targetType`).
    pub target_ids: Option<Vec<String>>,
    /// Events with any of these outcomes.
    pub outcomes: Option<Vec<AuditOutcome>>,
    /// Events that occurred at or after this time.
    pub occurred_after: Option<DateTime>,
    /// Events that occurred before this time.
    pub occurred_before: Option<DateTime>,
    /// Events of this request.
    pub request_id: Option<String>,
    /// Events whose metadata contains this JSON object (`{"env": "prod"}`).
    pub metadata: Option<Json<Value>>,
}

impl AuditLogFilter {
    /// The service filter for what `principal` may read, validated; error paths start at
    /// `filter`.
    pub fn into_filter(self, principal: &Principal) -> Result<Filter> {
        if let Some(tenant_ids) = &self.tenant_ids {
            Filter::validate_tenants(tenant_ids).map_err(|e| e.rooted_at("filter.", true))?;
        }
        let filter = Filter {
            tenant_ids: principal.tenants(self.tenant_ids)?,
            actor_ids: self.actor_ids,
            actor_types: self
                .actor_types
                .map(|v| v.into_iter().map(Into::into).collect()),
            actions: self.actions,
            target_type: self.target_type,
            target_ids: self.target_ids,
            outcomes: self
                .outcomes
                .map(|v| v.into_iter().map(Into::into).collect()),
            occurred_after: self.occurred_after.map(|t| t.0),
            occurred_before: self.occurred_before.map(|t| t.0),
            request_id: self.request_id,
            metadata: self.metadata.map(|m| m.0),
        };
        filter
            .validate()
            .map_err(|e| e.rooted_at("filter.", true))?;
        Ok(filter)
    }
}

impl From<AuditLogOrder> for PageOrder {
    fn from(value: AuditLogOrder) -> Self {
        match value {
            AuditLogOrder::OccurredAtDesc => PageOrder::NewestFirst,
            AuditLogOrder::OccurredAtAsc => PageOrder::OldestFirst,
        }
    }
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
                let db = ctx.data::<sea_orm::DatabaseConnection>()?;
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
        let edges = page
            .rows
            .iter()
            .zip(cursors)
            .map(|(m, cursor)| AuditLogEdge {
                cursor,
                node: AuditLog(m.clone()),
            })
            .collect();
        let nodes = page.rows.into_iter().map(AuditLog).collect();
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

/// The newest event of a tenant's hash chain.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditChainHead {
    /// The tenant.
    pub tenant_id: String,
    /// Its last sequence number.
    pub sequence: String,
    /// That event's hash, in lower-case hex.
    pub hash: String,
    /// When that event was recorded.
    pub recorded_at: Option<DateTime>,
}

impl From<entity::chain_head::Model> for AuditChainHead {
    fn from(head: entity::chain_head::Model) -> Self {
        AuditChainHead {
            tenant_id: head.tenant_id,
            sequence: head.seq.to_string(),
            hash: hex::encode(head.hash),
            recorded_at: head.recorded_at.map(DateTime),
        }
    }
}

/// The result of checking a tenant's hash chain.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditChainVerification {
    /// Every checked event is present once, unchanged, and chained to the one before.
    pub valid: bool,
    /// How many events were checked before the first problem (or in all).
    pub checked_count: u64,
    /// The first sequence number at fault, when invalid.
    pub first_invalid_sequence: Option<String>,
    /// What is wrong there, when invalid.
    pub reason: Option<String>,
}

impl From<crate::service::chain::Verification> for AuditChainVerification {
    fn from(v: crate::service::chain::Verification) -> Self {
        AuditChainVerification {
            valid: v.valid,
            checked_count: v.checked_count,
            first_invalid_sequence: v.first_invalid_sequence.map(|s| s.to_string()),
            reason: v.reason,
        }
    }
}
