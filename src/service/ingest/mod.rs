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

pub mod event;
mod job;
mod rows;
mod tables;
mod write;

pub use job::Erasure;
use job::{Request, Work};
pub use tables::USED_KEYS_POSTGRES;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use entity::audit_log;
use opentelemetry::trace::SpanContext;
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::service::actions::{Change, Registry};
use crate::service::live::feed::Feed;
use crate::service::privacy::keyring::Keyring;
use crate::service::streams;
use crate::telemetry;
use event::{MAX_BATCH, NewEvent};

/// Events per group-commit transaction; a bigger backlog is taken in the next one.
const MAX_GROUP_EVENTS: usize = 5000;
/// Jobs that may wait for the committer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 4096;

/// Handle to the committer task. Cheap to clone; the task ends when the last handle is
/// gone, or when [`Ingestor::close`] has drained it.
#[derive(Clone)]
pub struct Ingestor {
    jobs: mpsc::Sender<Job>,
    /// Checks events against their actions' registrations.
    registry: Registry,
    stop: CancellationToken,
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// Where committed events go live. PostgreSQL instances hear of them through NOTIFY (see
/// `pubsub`), and this instance's listener from the committer as well; SQLite has one
/// instance, whose committer publishes them itself.
struct Committer {
    db: DatabaseConnection,
    feed: Feed,
    metrics: Arc<Metrics>,
    /// Seals personal values; without it (some commands), events holding any are refused.
    keyring: Option<Arc<Keyring>>,
}

struct Job {
    tenant_id: String,
    work: Work,
    reply: oneshot::Sender<Result<Vec<audit_log::Model>>>,
    /// The span of the request that submitted the job, which the commit's span links to.
    link: Option<SpanContext>,
}

impl Ingestor {
    /// Starts the committer on the current tokio runtime. On SQLite it publishes committed
    /// events to `feed`; on PostgreSQL it notifies every instance's listener, and hands
    /// them to this instance's through `feed`.
    pub fn start(
        db: DatabaseConnection,
        feed: Feed,
        metrics: Arc<Metrics>,
        keyring: Option<Arc<Keyring>>,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let stop = CancellationToken::new();
        let registry = Registry::new(db.clone());
        let committer = tokio::spawn(commit_loop(
            Committer {
                db,
                feed,
                metrics,
                keyring,
            },
            queue,
            stop.clone(),
        ));
        Ingestor {
            jobs,
            registry,
            stop,
            committer: Arc::new(Mutex::new(Some(committer))),
        }
    }

    /// Whether the committer task is running (it only ends at shutdown, or by a bug).
    pub fn is_running(&self) -> bool {
        let committer = self.committer.lock().unwrap_or_else(|e| e.into_inner());
        committer.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Write requests waiting for the committer.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Stops taking jobs, commits every job already queued and answers its caller, then
    /// returns (at shutdown).
    pub async fn close(&self) {
        self.stop.cancel();
        let committer = self
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(committer) = committer
            && let Err(err) = committer.await
        {
            tracing::error!(error = %err, "the ingest committer failed");
        }
    }

    /// Validates and stores `events` for `tenant_id`, all or nothing, and returns the stored
    /// rows in input order once they are committed. An event whose idempotency key was seen
    /// before with the same content comes back as the original row.
    ///
    /// Validation errors point into the list: `[3].action`.
    pub async fn ingest(
        &self,
        tenant_id: &str,
        mut events: Vec<NewEvent>,
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
        self.registry.prepare(tenant_id, &mut events).await?;
        self.submit(tenant_id, Work::Log(events)).await
    }

    /// Erases the personal values of the tenant's events of `action` that occurred before
    /// `cutoff`, and records that; returns the record, or `None` when there were none.
    pub async fn expire(
        &self,
        tenant_id: &str,
        action: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<audit_log::Model>> {
        let work = Work::Expire(action.to_owned(), cutoff);
        Ok(self.submit(tenant_id, work).await?.pop())
    }

    /// Changes the tenant's action registry or settings and records the change as an event,
    /// in one transaction; returns that event.
    pub async fn configure(
        &self,
        tenant_id: &str,
        change: Change,
        requested_by: &str,
    ) -> Result<audit_log::Model> {
        let work = Work::Configure(change, requested_by.to_owned());
        let event = self.submit(tenant_id, work).await?.pop();
        self.registry.forget(tenant_id);
        event.ok_or_else(|| Error::internal("a change recorded no event"))
    }

    /// Changes one of the tenant's log streams and records the change as an
    /// `audit.stream.*` event, in one transaction; returns that event.
    pub async fn stream(
        &self,
        tenant_id: &str,
        change: streams::Change,
        requested_by: &str,
    ) -> Result<audit_log::Model> {
        let work = Work::Stream(Box::new(change), requested_by.to_owned());
        (self.submit(tenant_id, work).await?.pop())
            .ok_or_else(|| Error::internal("a stream change recorded no event"))
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

    /// Destroys a data subject's key and personal values in `tenant_id`, and records that
    /// as an `audit.subject.erased` event, in one transaction. Returns that event.
    pub async fn erase(&self, tenant_id: &str, erasure: Erasure) -> Result<audit_log::Model> {
        (self.submit(tenant_id, Work::Erase(erasure)).await?.pop())
            .ok_or_else(|| Error::internal("an erasure recorded no event"))
    }

    async fn submit(&self, tenant_id: &str, work: Work) -> Result<Vec<audit_log::Model>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tenant_id: tenant_id.to_owned(),
            work,
            reply,
            link: telemetry::current_span_context(),
        };
        let stopped = || Error::internal("the ingest committer has stopped");
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn commit_loop(
    committer: Committer,
    mut queue: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            job = queue.recv() => job,
            // Closed, the queue still hands out what it holds, then ends.
            () = stop.cancelled() => {
                queue.close();
                queue.recv().await
            }
        };
        let Some(first) = first else {
            break;
        };
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
    async fn commit_group(&self, mut group: Vec<Job>) {
        let links = group.iter_mut().filter_map(|job| job.link.take()).collect();
        let span = telemetry::commit_span(links);
        self.commit_jobs(group).instrument(span).await;
    }

    async fn commit_jobs(&self, group: Vec<Job>) {
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
        let keyring = self.keyring.as_deref();
        let (results, committed, spent) = write::write(&self.db, keyring, requests).await?;
        tracing::Span::current().record("events", committed.len());
        self.metrics.committed(
            committed.len(),
            started.elapsed(),
            spent.chain,
            spent.rollup,
        );
        match self.db.get_database_backend() {
            DbBackend::Postgres => self.feed.committed(committed),
            _ => self.feed.publish(committed.into_iter().map(Arc::new)),
        }
        if requests
            .iter()
            .any(|(_, work)| matches!(work, Work::Erase(_)))
        {
            self.scrub().await;
        }
        Ok(results)
    }

    /// After an erasure on SQLite: the deleted rows' pages are zeroed (`secure_delete`), and
    /// a checkpoint takes their old versions out of the WAL.
    async fn scrub(&self) {
        use sea_orm::ConnectionTrait;
        if self.db.get_database_backend() == DbBackend::Sqlite
            && let Err(err) = (self.db)
                .execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
                .await
        {
            tracing::warn!(error = %err, "cannot checkpoint the WAL after an erasure");
        }
    }
}

/// Whether a write could begin within `wait`. On SQLite another process may hold the
/// database's write lock, which reads (and pings) do not notice; PostgreSQL has no such
/// lock to wait for.
pub async fn writable(db: &DatabaseConnection, wait: std::time::Duration) -> Result<()> {
    use sea_orm::sqlx::{Connection, Executor};
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    let unavailable = |err: sea_orm::sqlx::Error| {
        Error::Unavailable(DbErr::Conn(RuntimeErr::SqlxError(err.into())))
    };
    let mut connection = db
        .get_sqlite_connection_pool()
        .acquire()
        .await
        .map_err(unavailable)?;
    let timeout = |d: std::time::Duration| {
        sea_orm::sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {}", d.as_millis()))
    };
    let probe = async {
        connection.execute(timeout(wait)).await?;
        let begun = connection.execute("BEGIN IMMEDIATE").await;
        if begun.is_ok() {
            connection.execute("ROLLBACK").await?;
        }
        connection.execute(timeout(migration::BUSY_TIMEOUT)).await?;
        begun.map(drop)
    };
    let probed = probe.await;
    if probed.is_err() {
        // Whatever state it was left in, it does not go back to the pool.
        let _ = connection.detach().close().await;
    }
    probed.map_err(unavailable)
}
