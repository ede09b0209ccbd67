//! The one write path: every audit event enters the database here.
//!
//! Callers hand a job (one tenant's events, all or nothing) to a single committer task per
//! process. The committer takes every job that is waiting and writes them in one transaction
//! (group commit): lock each tenant's chain head in a fixed order, resolve idempotency keys,
//! number and chain the new events, insert them with multi-row INSERTs, move the heads,
//! commit, and only then answer the callers. A job that fails on its own (an idempotency
//! conflict) fails alone; if the whole transaction fails, each job is retried by itself so
//! that one bad job cannot sink the others, unless the database is unreachable: then the
//! whole group fails at once with `UNAVAILABLE`.
//!
//! Retention purges are jobs too: they cut a tenant's chain under the same head lock and
//! record their own `audit.retention.purged` event in the same transaction.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use entity::audit_log::{self, ActorType, Column, Outcome};
use entity::idempotency_key;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, QueryFilter, RuntimeErr, Statement, TransactionTrait,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::chain::GENESIS;
use super::event::{MAX_BATCH, NewEvent, Target, micros};
use super::pubsub::{self, Feed};
use super::retention;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Rows per INSERT statement: SQLite allows 32,766 bound values, PostgreSQL 65,535.
const ROWS_PER_INSERT: usize = 1000;
/// Events per group-commit transaction; a bigger backlog is taken in the next one.
const MAX_GROUP_EVENTS: usize = 5000;
/// Jobs that may wait for the committer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 4096;

/// Handle to the committer task. Cheap to clone; the task ends when the last handle is gone.
#[derive(Clone)]
pub struct Ingestor {
    jobs: mpsc::Sender<Job>,
}

/// Where committed events go live. PostgreSQL instances hear of them through NOTIFY (see
/// `pubsub`); SQLite has one instance, whose committer publishes them itself.
struct Committer {
    db: DatabaseConnection,
    feed: Option<Feed>,
    metrics: Arc<Metrics>,
}

struct Job {
    tenant_id: String,
    work: Work,
    reply: oneshot::Sender<Result<Vec<audit_log::Model>>>,
}

enum Work {
    Log(Vec<NewEvent>),
    /// Delete the tenant's oldest events recorded before the cutoff.
    Purge(DateTime<Utc>),
}

impl Work {
    fn size(&self) -> usize {
        match self {
            Work::Log(events) => events.len(),
            Work::Purge(_) => 1,
        }
    }
}

impl Ingestor {
    /// Starts the committer on the current tokio runtime. On SQLite it publishes committed
    /// events to `feed`; on PostgreSQL it notifies every instance's listener instead.
    pub fn start(db: DatabaseConnection, feed: Feed, metrics: Arc<Metrics>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let feed = (db.get_database_backend() != DbBackend::Postgres).then_some(feed);
        tokio::spawn(commit_loop(Committer { db, feed, metrics }, queue));
        Ingestor { jobs }
    }

    /// Validates and stores `events` for `tenant_id`, all or nothing, and returns the stored
    /// rows in input order once they are committed. An event whose idempotency key was seen
    /// before with the same content comes back as the original row.
    ///
    /// Validation errors point into the list: `[3].action`.
    pub async fn ingest(
        &self,
        tenant_id: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<audit_log::Model>> {
        if events.is_empty() || events.len() > MAX_BATCH {
            return Err(Error::bad_input(
                "",
                format!(
                    "a batch holds 1 to {MAX_BATCH} events, got {}",
                    events.len()
                ),
            ));
        }
        let now = Utc::now();
        for (i, event) in events.iter().enumerate() {
            event.validate(now).map_err(|e| match e {
                Error::BadInput { field, message } => {
                    Error::bad_input(format!("[{i}].{field}"), message)
                }
                other => other,
            })?;
        }
        self.submit(tenant_id, Work::Log(events)).await
    }

    /// Deletes the tenant's events recorded before `cutoff` (the oldest part of its chain),
    /// leaves a checkpoint for verification, and records an `audit.retention.purged` event,
    /// all in one transaction. Returns that event, or `None` when nothing was old enough.
    pub async fn purge(
        &self,
        tenant_id: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<audit_log::Model>> {
        Ok(self.submit(tenant_id, Work::Purge(cutoff)).await?.pop())
    }

    async fn submit(&self, tenant_id: &str, work: Work) -> Result<Vec<audit_log::Model>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tenant_id: tenant_id.to_owned(),
            work,
            reply,
        };
        let stopped = || Error::internal("the ingest committer has stopped");
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn commit_loop(committer: Committer, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut size = first.work.size();
        let mut group = vec![first];
        while size < MAX_GROUP_EVENTS {
            match queue.try_recv() {
                Ok(job) => {
                    size += job.work.size();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        committer.commit_group(group).await;
    }
}

impl Committer {
    async fn commit_group(&self, group: Vec<Job>) {
        let (requests, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|job| ((job.tenant_id, job.work), job.reply))
            .unzip();
        match self.write(&requests).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that went away (client disconnected) no longer needs the answer.
                    let _ = reply.send(result);
                }
            }
            Err(err) if requests.len() == 1 => {
                let _ = replies.into_iter().next().map(|reply| reply.send(Err(err)));
            }
            // The database is down: every job would fail the same way, and fast is better.
            Err(Error::Unavailable(cause)) => {
                tracing::warn!(error = %cause, jobs = requests.len(), "group commit failed: database unavailable");
                let message = cause.to_string();
                for reply in replies {
                    let cause = DbErr::Conn(RuntimeErr::Internal(message.clone()));
                    let _ = reply.send(Err(Error::Unavailable(cause)));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, jobs = requests.len(), "group commit failed, retrying jobs one by one");
                for (request, reply) in requests.iter().zip(replies) {
                    let result = self.write(std::slice::from_ref(request)).await;
                    let _ = reply.send(result.and_then(|mut r| {
                        r.pop()
                            .unwrap_or_else(|| Err(Error::internal("no result for a retried job")))
                    }));
                }
            }
        }
    }

    /// Writes jobs in one transaction and makes the new events live once committed.
    async fn write(&self, requests: &[Request]) -> Result<Vec<Result<Vec<audit_log::Model>>>> {
        let started = Instant::now();
        let (results, committed, chain) = write(&self.db, requests).await?;
        self.metrics
            .committed(committed.len(), started.elapsed(), chain);
        if let Some(feed) = &self.feed {
            feed.publish(committed);
        }
        Ok(results)
    }
}

type Request = (String, Work);

/// A tenant's chain head while the transaction holds its lock.
struct Head {
    seq: i64,
    hash: Vec<u8>,
    recorded_at: Option<DateTime<Utc>>,
}

/// Per job, its events or its own failure.
type JobResults = Vec<Result<Vec<audit_log::Model>>>;

/// Writes a group of jobs in one transaction. The outer error fails the whole group; the
/// inner results are per job. Also returns the new rows, in commit order.
async fn write(
    db: &DatabaseConnection,
    requests: &[Request],
) -> Result<(JobResults, Vec<audit_log::Model>, Duration)> {
    let txn = db.begin().await?;
    let recorded_at = micros(Utc::now());

    // Sorted, so that every writer locks tenants in the same order and none deadlock.
    // Per tenant: the sequence when locked, and the head as it moves.
    let mut heads = BTreeMap::new();
    for (tenant_id, _) in requests {
        heads.entry(tenant_id.as_str()).or_insert((0, None));
    }
    for (tenant_id, (first, head)) in heads.iter_mut() {
        let locked = lock_head(&txn, tenant_id).await?;
        *first = locked.seq;
        *head = Some(locked);
    }
    let mut known = load_keyed(&txn, requests).await?;

    let mut results = Vec::with_capacity(requests.len());
    let mut rows = Vec::new();
    let mut chain = Duration::ZERO;
    for (tenant_id, work) in requests {
        let head = heads
            .get_mut(tenant_id.as_str())
            .and_then(|(_, head)| head.as_mut())
            .ok_or_else(|| Error::internal("chain head not locked"))?;
        let events = match work {
            Work::Log(events) => Cow::Borrowed(events),
            Work::Purge(cutoff) => {
                match retention::cut(&txn, tenant_id, head.seq, *cutoff, recorded_at).await? {
                    Some(cut) => Cow::Owned(vec![purge_event(tenant_id, &cut)]),
                    None => {
                        results.push(Ok(Vec::new()));
                        continue;
                    }
                }
            }
        };
        let planning = Instant::now();
        let planned = plan(tenant_id, &events, head, recorded_at, &known);
        chain += planning.elapsed();
        match planned {
            Ok(planned) => {
                let mut models = Vec::with_capacity(planned.len());
                for Planned { model, is_new } in planned {
                    if is_new {
                        head.seq = model.seq;
                        head.hash = model.hash.clone();
                        head.recorded_at = Some(model.recorded_at);
                        if let Some(key) = &model.idempotency_key {
                            known.insert((tenant_id.clone(), key.clone()), model.clone());
                        }
                        rows.push(model.clone());
                    }
                    models.push(model);
                }
                results.push(Ok(models));
            }
            Err(err) => results.push(Err(err)),
        }
    }

    for chunk in rows.chunks(ROWS_PER_INSERT) {
        insert(&txn, chunk).await?;
    }
    remember_keys(&txn, &rows, recorded_at).await?;
    let mut ranges = Vec::new();
    for (tenant_id, (first, head)) in &heads {
        if let Some(head) = head
            && head.seq > *first
        {
            move_head(&txn, tenant_id, head).await?;
            ranges.push((tenant_id.to_string(), first + 1, head.seq));
        }
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        // One NOTIFY per transaction, not per event: NOTIFY serializes commits.
        for payload in pubsub::notifications(&ranges) {
            let notify = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [pubsub::CHANNEL.into(), payload.into()],
            );
            txn.execute_raw(notify).await?;
        }
    }
    txn.commit().await?;
    Ok((results, rows, chain))
}

/// The event that records a purge, in the purged tenant's own chain.
fn purge_event(tenant_id: &str, cut: &retention::Cut) -> NewEvent {
    NewEvent {
        actor_type: ActorType::System,
        actor_id: "audit-service".to_owned(),
        actor_name: Some("retention".to_owned()),
        action: "audit.retention.purged".to_owned(),
        target: Some(Target {
            kind: "tenant".to_owned(),
            id: tenant_id.to_owned(),
            name: None,
        }),
        outcome: Outcome::Success,
        reason: None,
        occurred_at: None,
        metadata: Some(json!({
            "purgedCount": cut.purged_count,
            "throughSequence": cut.seq.to_string(),
            "throughHash": hex::encode(&cut.hash),
            "recordedBefore": super::chain::timestamp(cut.cutoff),
        })),
        ip_address: None,
        user_agent: None,
        request_id: None,
        idempotency_key: None,
    }
}

struct Planned {
    model: audit_log::Model,
    is_new: bool,
}

/// Decides, for each event of one job, whether it is new (and its place in the chain) or a
/// retry of a stored event. Fails the whole job on a conflicting idempotency key; the head
/// moves only when the caller accepts the plan.
fn plan(
    tenant_id: &str,
    events: &[NewEvent],
    head: &Head,
    recorded_at: DateTime<Utc>,
    known: &HashMap<(String, String), audit_log::Model>,
) -> Result<Vec<Planned>> {
    let mut seq = head.seq;
    let mut prev_hash = head.hash.clone();
    let mut own: HashMap<&str, audit_log::Model> = HashMap::new();
    let mut planned = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        if let Some(key) = &event.idempotency_key {
            let stored = own
                .get(key.as_str())
                .or_else(|| known.get(&(tenant_id.to_owned(), key.clone())));
            if let Some(stored) = stored {
                if !event.same_content(stored) {
                    return Err(Error::IdempotencyConflict {
                        field: format!("[{i}].idempotencyKey"),
                        key: key.clone(),
                    });
                }
                planned.push(Planned {
                    model: stored.clone(),
                    is_new: false,
                });
                continue;
            }
        }
        seq += 1;
        let model = event
            .clone()
            .into_model(tenant_id, seq, recorded_at, prev_hash);
        prev_hash = model.hash.clone();
        if let Some(key) = &event.idempotency_key {
            own.insert(key, model.clone());
        }
        planned.push(Planned {
            model,
            is_new: true,
        });
    }
    Ok(planned)
}

/// Locks the tenant's head row until commit (creating it empty) and returns it. A write
/// statement, so SQLite takes its write lock here rather than failing to upgrade a read
/// lock later.
async fn lock_head(txn: &DatabaseTransaction, tenant_id: &str) -> Result<Head> {
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "INSERT INTO chain_heads (tenant_id, seq, hash) VALUES ($1, 0, $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET seq = chain_heads.seq \
             RETURNING seq, hash, recorded_at"
        }
        _ => {
            "INSERT INTO chain_heads (tenant_id, seq, hash) VALUES (?, 0, ?) \
             ON CONFLICT (tenant_id) DO UPDATE SET seq = chain_heads.seq \
             RETURNING seq, hash, recorded_at"
        }
    };
    let values = [tenant_id.into(), GENESIS.to_vec().into()];
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?
        .ok_or_else(|| Error::internal("chain head upsert returned no row"))?;
    Ok(Head {
        seq: row.try_get("", "seq")?,
        hash: row.try_get("", "hash")?,
        recorded_at: row.try_get("", "recorded_at")?,
    })
}

async fn move_head(txn: &DatabaseTransaction, tenant_id: &str, head: &Head) -> Result<()> {
    use entity::chain_head::{Column as Head, Entity};
    let update = Query::update()
        .table(Entity)
        .value(Head::Seq, head.seq)
        .value(Head::Hash, head.hash.clone())
        .value(Head::RecordedAt, head.recorded_at)
        .and_where(Expr::col(Head::TenantId).eq(tenant_id))
        .to_owned();
    txn.execute(&update).await?;
    Ok(())
}

/// A tenant's stored keys among a JSON array of keys (PostgreSQL). With one array
/// parameter, the plan PostgreSQL caches for the statement still looks each key up in the
/// primary key; with a list of 1,000 parameters its generic plan filtered all of a tenant's
/// keys against the list, which took seconds per batch once a tenant held 60,000 keys.
pub const USED_KEYS_POSTGRES: &str = "SELECT tenant_id, key, event_id, seq, created_at \
     FROM idempotency_keys WHERE tenant_id = $1 \
     AND key = ANY (ARRAY(SELECT jsonb_array_elements_text($2::jsonb)))";

/// Stored events carrying any of the jobs' idempotency keys, by (tenant, key).
async fn load_keyed(
    txn: &DatabaseTransaction,
    requests: &[Request],
) -> Result<HashMap<(String, String), audit_log::Model>> {
    let mut keys: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tenant_id, work) in requests {
        if let Work::Log(events) = work {
            let wanted = events.iter().filter_map(|e| e.idempotency_key.as_deref());
            keys.entry(tenant_id.as_str()).or_default().extend(wanted);
        }
    }
    let mut known = HashMap::new();
    for (tenant_id, keys) in keys.into_iter().filter(|(_, k)| !k.is_empty()) {
        let used = match txn.get_database_backend() {
            DbBackend::Postgres => {
                let keys = serde_json::to_string(&keys).map_err(Error::internal)?;
                let values = [tenant_id.into(), keys.into()];
                idempotency_key::Entity::find()
                    .from_raw_sql(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        USED_KEYS_POSTGRES,
                        values,
                    ))
                    .all(txn)
                    .await?
            }
            _ => {
                idempotency_key::Entity::find()
                    .filter(idempotency_key::Column::TenantId.eq(tenant_id))
                    .filter(idempotency_key::Column::Key.is_in(keys))
                    .all(txn)
                    .await?
            }
        };
        if used.is_empty() {
            continue;
        }
        let stored = audit_log::Entity::find()
            .filter(Column::TenantId.eq(tenant_id))
            .filter(Column::Id.is_in(used.iter().map(|k| k.event_id)))
            .all(txn)
            .await?;
        for model in stored {
            if let Some(key) = model.idempotency_key.clone() {
                known.insert((tenant_id.to_owned(), key), model);
            }
        }
    }
    Ok(known)
}

/// Remembers the idempotency keys of new events (replacing a key whose event is gone).
async fn remember_keys(
    txn: &DatabaseTransaction,
    rows: &[audit_log::Model],
    now: DateTime<Utc>,
) -> Result<()> {
    use idempotency_key::Column as Key;
    let keyed: Vec<_> = rows
        .iter()
        .filter(|r| r.idempotency_key.is_some())
        .collect();
    for chunk in keyed.chunks(ROWS_PER_INSERT) {
        let mut insert = Query::insert();
        insert
            .into_table(idempotency_key::Entity)
            .columns([
                Key::TenantId,
                Key::Key,
                Key::EventId,
                Key::Seq,
                Key::CreatedAt,
            ])
            .on_conflict(
                OnConflict::columns([Key::TenantId, Key::Key])
                    .update_columns([Key::EventId, Key::Seq, Key::CreatedAt])
                    .to_owned(),
            );
        for row in chunk {
            insert
                .values([
                    row.tenant_id.clone().into(),
                    row.idempotency_key.clone().into(),
                    row.id.into(),
                    row.seq.into(),
                    now.into(),
                ])
                .map_err(Error::internal)?;
        }
        txn.execute(&insert).await?;
    }
    Ok(())
}

async fn insert(txn: &DatabaseTransaction, rows: &[audit_log::Model]) -> Result<()> {
    let postgres = txn.get_database_backend() == DbBackend::Postgres;
    let mut insert = Query::insert();
    insert.into_table(audit_log::Entity).columns([
        Column::Id,
        Column::TenantId,
        Column::Seq,
        Column::OccurredAt,
        Column::RecordedAt,
        Column::ActorType,
        Column::ActorId,
        Column::ActorName,
        Column::Action,
        Column::TargetType,
        Column::TargetId,
        Column::TargetName,
        Column::Outcome,
        Column::Reason,
        Column::Metadata,
        Column::IpAddress,
        Column::UserAgent,
        Column::RequestId,
        Column::IdempotencyKey,
        Column::PrevHash,
        Column::Hash,
    ]);
    for row in rows {
        let ip = Expr::val(row.ip_address.clone());
        let values: Vec<Expr> = vec![
            Expr::val(row.id),
            Expr::val(row.tenant_id.clone()),
            Expr::val(row.seq),
            Expr::val(row.occurred_at),
            Expr::val(row.recorded_at),
            Expr::val(row.actor_type.to_value()),
            Expr::val(row.actor_id.clone()),
            Expr::val(row.actor_name.clone()),
            Expr::val(row.action.clone()),
            Expr::val(row.target_type.clone()),
            Expr::val(row.target_id.clone()),
            Expr::val(row.target_name.clone()),
            Expr::val(row.outcome.to_value()),
            Expr::val(row.reason.clone()),
            Expr::val(row.metadata.clone()),
            if postgres { ip.cast_as("inet") } else { ip },
            Expr::val(row.user_agent.clone()),
            Expr::val(row.request_id.clone()),
            Expr::val(row.idempotency_key.clone()),
            Expr::val(row.prev_hash.clone()),
            Expr::val(row.hash.clone()),
        ];
        insert.values(values).map_err(Error::internal)?;
    }
    txn.execute(&insert).await?;
    Ok(())
}
