//! The one write path: every audit event enters the database here.
//!
//! Callers hand a job (one tenant's events, all or nothing) to a single committer task per
//! process. The committer takes every job that is waiting and writes them in one transaction
//! (group commit): lock each tenant's head row in a fixed order, resolve idempotency keys,
//! assign gap-free sequence numbers, insert all rows with multi-row INSERTs, move the heads,
//! commit, and only then answer the callers. A job that fails on its own (an idempotency
//! conflict) fails alone; if the whole transaction fails, each job is retried by itself so
//! that one bad job cannot sink the others.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use entity::audit_log::{self, Column};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, QueryFilter, Statement, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::event::{MAX_BATCH, NewEvent, micros};
use crate::error::{Error, Result};

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

struct Job {
    tenant_id: String,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<audit_log::Model>>>,
}

impl Ingestor {
    /// Starts the committer on the current tokio runtime.
    pub fn start(db: DatabaseConnection) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(commit_loop(db, queue));
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
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tenant_id: tenant_id.to_owned(),
            events,
            reply,
        };
        let stopped = || Error::internal("the ingest committer has stopped");
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn commit_loop(db: DatabaseConnection, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut size = first.events.len();
        let mut group = vec![first];
        while size < MAX_GROUP_EVENTS {
            match queue.try_recv() {
                Ok(job) => {
                    size += job.events.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        commit_group(&db, group).await;
    }
}

async fn commit_group(db: &DatabaseConnection, group: Vec<Job>) {
    let (requests, replies): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|job| ((job.tenant_id, job.events), job.reply))
        .unzip();
    match write(db, &requests).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away (client disconnected) no longer needs the answer.
                let _ = reply.send(result);
            }
        }
        Err(err) if requests.len() == 1 => {
            let _ = replies.into_iter().next().map(|reply| reply.send(Err(err)));
        }
        Err(err) => {
            tracing::warn!(error = %err, jobs = requests.len(), "group commit failed, retrying jobs one by one");
            for (request, reply) in requests.iter().zip(replies) {
                let result = write(db, std::slice::from_ref(request)).await;
                let _ = reply.send(result.and_then(|mut r| {
                    r.pop()
                        .unwrap_or_else(|| Err(Error::internal("no result for a retried job")))
                }));
            }
        }
    }
}

type Request = (String, Vec<NewEvent>);

/// Writes a group of jobs in one transaction. The outer error fails the whole group; the
/// inner results are per job.
async fn write(
    db: &DatabaseConnection,
    requests: &[Request],
) -> Result<Vec<Result<Vec<audit_log::Model>>>> {
    let txn = db.begin().await?;
    let recorded_at = micros(Utc::now());

    // Sorted, so that every writer locks tenants in the same order and none deadlock.
    let mut heads = BTreeMap::new();
    for (tenant_id, _) in requests {
        heads.insert(tenant_id.as_str(), 0);
    }
    for (tenant_id, seq) in heads.iter_mut() {
        *seq = lock_head(&txn, tenant_id).await?;
    }
    let mut known = load_keyed(&txn, requests).await?;

    let mut results = Vec::with_capacity(requests.len());
    let mut rows = Vec::new();
    for (i, (tenant_id, events)) in requests.iter().enumerate() {
        let head = heads
            .get_mut(tenant_id.as_str())
            .ok_or_else(|| Error::internal("head not locked"))?;
        match plan(tenant_id, events, *head, recorded_at, &known) {
            Ok(planned) => {
                *head += planned.iter().filter(|p| p.is_new).count() as i64;
                let mut models = Vec::with_capacity(planned.len());
                for p in planned {
                    if p.is_new {
                        if let Some(key) = &p.model.idempotency_key {
                            known.insert((tenant_id.clone(), key.clone()), p.model.clone());
                        }
                        rows.push(p.model.clone());
                    }
                    models.push(p.model);
                }
                results.push(Ok(models));
            }
            Err(err) => {
                tracing::debug!(job = i, error = %err, "job rejected");
                results.push(Err(err));
            }
        }
    }

    for chunk in rows.chunks(ROWS_PER_INSERT) {
        insert(&txn, chunk).await?;
    }
    for (tenant_id, seq) in &heads {
        move_head(&txn, tenant_id, *seq).await?;
    }
    txn.commit().await?;
    Ok(results)
}

struct Planned {
    model: audit_log::Model,
    is_new: bool,
}

/// Decides, for each event of one job, whether it is new (and its sequence number) or a
/// retry of a stored event. Fails the whole job on a conflicting idempotency key.
fn plan(
    tenant_id: &str,
    events: &[NewEvent],
    head: i64,
    recorded_at: DateTime<Utc>,
    known: &HashMap<(String, String), audit_log::Model>,
) -> Result<Vec<Planned>> {
    let mut seq = head;
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
        let model = event.clone().into_model(tenant_id, seq, recorded_at);
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

/// Locks the tenant's head row until commit (creating it at 0) and returns its sequence.
/// A write statement, so SQLite takes its write lock here rather than failing to upgrade a
/// read lock later.
async fn lock_head(txn: &DatabaseTransaction, tenant_id: &str) -> Result<i64> {
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "INSERT INTO chain_heads (tenant_id, seq) VALUES ($1, 0) \
             ON CONFLICT (tenant_id) DO UPDATE SET seq = chain_heads.seq RETURNING seq"
        }
        _ => {
            "INSERT INTO chain_heads (tenant_id, seq) VALUES (?, 0) \
             ON CONFLICT (tenant_id) DO UPDATE SET seq = chain_heads.seq RETURNING seq"
        }
    };
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [tenant_id.into()],
        ))
        .await?
        .ok_or_else(|| Error::internal("chain head upsert returned no row"))?;
    Ok(row.try_get("", "seq")?)
}

async fn move_head(txn: &DatabaseTransaction, tenant_id: &str, seq: i64) -> Result<()> {
    let update = Query::update()
        .table(entity::chain_head::Entity)
        .value(entity::chain_head::Column::Seq, seq)
        .and_where(Expr::col(entity::chain_head::Column::TenantId).eq(tenant_id))
        .to_owned();
    txn.execute(&update).await?;
    Ok(())
}

/// Stored events carrying any of the jobs' idempotency keys, by (tenant, key).
async fn load_keyed(
    txn: &DatabaseTransaction,
    requests: &[Request],
) -> Result<HashMap<(String, String), audit_log::Model>> {
    let mut keys: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tenant_id, events) in requests {
        let wanted = events.iter().filter_map(|e| e.idempotency_key.as_deref());
        keys.entry(tenant_id.as_str()).or_default().extend(wanted);
    }
    let mut known = HashMap::new();
    for (tenant_id, keys) in keys.into_iter().filter(|(_, k)| !k.is_empty()) {
        let stored = audit_log::Entity::find()
            .filter(Column::TenantId.eq(tenant_id))
            .filter(Column::IdempotencyKey.is_in(keys))
            .all(txn)
            .await?;
        for mut model in stored {
            model.ip_address = model.ip_address.map(super::event::host_only);
            if let Some(key) = model.idempotency_key.clone() {
                known.insert((tenant_id.to_owned(), key), model);
            }
        }
    }
    Ok(known)
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
        ];
        insert.values(values).map_err(Error::internal)?;
    }
    txn.execute(&insert).await?;
    Ok(())
}
