//! Background delivery: the bounded queue `enqueue()` feeds, and the task that sends it in
//! batches to `logAuditEvents`, retrying with backoff until each event is stored, refused,
//! or too old (then dead-lettered).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::spool::Spool;
use crate::transport::Transport;

/// What `enqueue()` does when the buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFull {
    /// Wait for room (backpressure on the caller).
    Wait,
    /// Drop the event, count it, and return [`Error::BufferFull`].
    Drop,
}

/// Called with every event that will not be delivered, and why.
pub type ErrorCallback = Arc<dyn Fn(&Event, &Error) + Send + Sync>;

/// How background delivery behaves; [`AuditClientBuilder`](crate::AuditClientBuilder) sets it.
#[derive(Clone)]
pub(crate) struct DeliveryConfig {
    /// Most events per `logAuditEvents` call (the server takes at most 1,000).
    pub max_batch: usize,
    /// How long the first event of a batch waits for company.
    pub linger: Duration,
    /// Events held in memory (without a spool).
    pub buffer: usize,
    /// What `enqueue()` does when the buffer (or the spool) is full.
    pub on_full: OnFull,
    /// An event not stored this long after `enqueue()` goes to the dead-letter file.
    pub max_age: Duration,
    /// First retry delay; it doubles per attempt, with jitter, up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A directory for the durable spool, when set.
    pub spool: Option<PathBuf>,
    /// Whether the spool syncs every record to disk (survives power loss, costs a disk
    /// flush per event) or only writes it to the operating system (survives a crash of
    /// the process).
    pub spool_sync: bool,
    /// Largest unsettled spool, in bytes.
    pub spool_max_bytes: u64,
    /// Where undeliverable events go, one JSON line each.
    pub dead_letter: PathBuf,
    pub on_error: Option<ErrorCallback>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_batch: 500,
            linger: Duration::from_millis(20),
            buffer: 50_000,
            on_full: OnFull::Wait,
            max_age: Duration::from_secs(24 * 3600),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            spool: None,
            spool_sync: false,
            spool_max_bytes: 1 << 30,
            dead_letter: PathBuf::from("audit-dead-letter.jsonl"),
            on_error: None,
        }
    }
}

/// Counters of background delivery, since the client was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Events `enqueue()` accepted (and, with a spool, those an earlier run left there).
    pub enqueued: u64,
    /// Events stored by audit-service.
    pub delivered: u64,
    /// `logAuditEvents` calls that failed and were tried again.
    pub retries: u64,
    /// Events `enqueue()` dropped because the buffer was full.
    pub dropped: u64,
    /// Events audit-service refused (`BAD_USER_INPUT`, `IDEMPOTENCY_CONFLICT`).
    pub rejected: u64,
    /// Events written to the dead-letter file (refused, too old, or left at shutdown).
    pub dead_lettered: u64,
    /// Events accepted and not settled yet.
    pub pending: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    dead_lettered: AtomicU64,
}

/// An accepted event on its way.
pub(crate) struct Pending {
    event: Event,
    accepted_at: DateTime<Utc>,
    /// Where its spool record ends (0 without a spool).
    end: u64,
}

/// The caller's side: accepts events in order, hands them to the delivery task.
pub(crate) struct Queue {
    /// Memory mode: dropped at shutdown, so the task sees the end after the last event.
    sender: RwLock<Option<mpsc::Sender<Pending>>>,
    spool: Option<Arc<Spool>>,
    /// Serializes acceptance: the order events are counted in is the order they are
    /// delivered in, which `flush()` relies on. Holds the count of accepted events.
    order: Mutex<u64>,
    shared: Arc<Shared>,
    on_full: OnFull,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the caller's side and the delivery task both see.
struct Shared {
    counters: Counters,
    /// Events settled (delivered, refused or dead-lettered), in acceptance order.
    settled: watch::Sender<u64>,
    /// New spool records to read.
    wake: Notify,
    /// Set by `shutdown`: no more events; stop retrying at this instant.
    stop: watch::Sender<Option<Instant>>,
    /// Set when the delivery task has ended.
    finished: watch::Sender<bool>,
}

/// What `shutdown` leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Events stored by audit-service over the client's life.
    pub delivered: u64,
    /// Events not delivered by the deadline: kept in the spool for the next start, or,
    /// without a spool, written to the dead-letter file.
    pub undelivered: u64,
}

impl Queue {
    /// Starts the delivery task (on the current Tokio runtime).
    pub fn start(transport: Arc<Transport>, config: DeliveryConfig) -> Result<Self> {
        let (spool, backlog) = match &config.spool {
            Some(dir) => {
                let (spool, backlog) = Spool::open(dir, config.spool_sync, config.spool_max_bytes)?;
                (Some(Arc::new(spool)), backlog)
            }
            None => (None, 0),
        };
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            settled: watch::channel(0).0,
            wake: Notify::new(),
            stop: watch::channel(None).0,
            finished: watch::channel(false).0,
        });
        let (sender, source) = match &spool {
            Some(spool) => (
                None,
                Source::Spool {
                    spool: spool.clone(),
                    offset: spool.acked(),
                },
            ),
            None => {
                let (tx, rx) = mpsc::channel(config.buffer.max(1));
                (Some(tx), Source::Memory(rx))
            }
        };
        let worker = Worker {
            transport,
            shared: shared.clone(),
            dead_letter: DeadLetter::new(config.dead_letter.clone()),
            config: config.clone(),
            settled: 0,
        };
        let task = tokio::spawn(worker.run(source));
        Ok(Queue {
            sender: RwLock::new(sender),
            spool,
            // What an earlier run left in the spool counts as accepted, so `flush()`
            // waits for it too.
            order: Mutex::new(backlog),
            shared,
            on_full: config.on_full,
            task: Mutex::new(Some(task)),
        })
    }

    /// Accepts an event for delivery; see [`AuditClient::enqueue`](crate::AuditClient::enqueue).
    pub async fn push(&self, event: Event) -> Result<()> {
        let accepted_at = Utc::now();
        if let Some(spool) = &self.spool {
            return self.push_spooled(spool, event, accepted_at).await;
        }
        let sender = {
            let guard = self.sender.read().unwrap_or_else(|p| p.into_inner());
            guard.clone().ok_or(Error::Closed)?
        };
        let permit = match self.on_full {
            OnFull::Wait => sender.reserve().await.map_err(|_| Error::Closed)?,
            OnFull::Drop => match sender.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => return Err(self.dropped()),
                Err(mpsc::error::TrySendError::Closed(())) => return Err(Error::Closed),
            },
        };
        let mut accepted = self.order.lock().unwrap_or_else(|p| p.into_inner());
        permit.send(Pending {
            event,
            accepted_at,
            end: 0,
        });
        *accepted += 1;
        Ok(())
    }

    async fn push_spooled(&self, spool: &Spool, event: Event, at: DateTime<Utc>) -> Result<()> {
        let mut line = Vec::with_capacity(512);
        Spool::encode(&event, at, &mut line)?;
        loop {
            if self.shared.stop.borrow().is_some() {
                return Err(Error::Closed);
            }
            let appended = {
                let mut accepted = self.order.lock().unwrap_or_else(|p| p.into_inner());
                let appended = spool.append(&line);
                if appended.is_ok() {
                    *accepted += 1;
                }
                appended
            };
            match appended {
                Ok(()) => {
                    self.shared.wake.notify_one();
                    return Ok(());
                }
                Err(Error::BufferFull) if self.on_full == OnFull::Wait => {
                    // Room comes as events settle; look again now and then regardless.
                    let mut settled = self.shared.settled.subscribe();
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), settled.changed()).await;
                }
                Err(Error::BufferFull) => return Err(self.dropped()),
                Err(e) => return Err(e),
            }
        }
    }

    fn dropped(&self) -> Error {
        self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        Error::BufferFull
    }

    /// Waits until every event accepted before the call is settled, or delivery has ended
    /// (after `shutdown`).
    pub async fn flush(&self) {
        let target = *self.order.lock().unwrap_or_else(|p| p.into_inner());
        let mut settled = self.shared.settled.subscribe();
        let mut finished = self.shared.finished.subscribe();
        tokio::select! {
            _ = settled.wait_for(|&n| n >= target) => {}
            _ = finished.wait_for(|&done| done) => {}
        }
    }

    /// Stops accepting events and delivers what is left until `deadline`.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let deadline = Instant::now() + deadline;
        self.shared.stop.send_replace(Some(deadline));
        self.sender
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.shared.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            // The task stops itself at the deadline; the grace covers a request in flight.
            let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), task).await;
        }
        let metrics = self.metrics();
        ShutdownReport {
            delivered: metrics.delivered,
            undelivered: metrics.pending,
        }
    }

    pub fn metrics(&self) -> Metrics {
        let c = &self.shared.counters;
        let enqueued = *self.order.lock().unwrap_or_else(|p| p.into_inner());
        let settled = *self.shared.settled.borrow();
        Metrics {
            enqueued,
            delivered: c.delivered.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            pending: enqueued.saturating_sub(settled),
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The last handle is gone: let the task deliver what it has, then end.
        self.shared.stop.send_if_modified(|stop| {
            let first = stop.is_none();
            if first {
                *stop = Some(Instant::now() + Duration::from_secs(24 * 3600));
            }
            first
        });
        self.shared.wake.notify_one();
    }
}

/// Where the delivery task takes events from.
enum Source {
    Memory(mpsc::Receiver<Pending>),
    Spool { spool: Arc<Spool>, offset: u64 },
}

impl Source {
    /// The next batch: waits for a first event, then up to `linger` for more. `None` once
    /// the client is shut down and nothing is left.
    async fn next(
        &mut self,
        shared: &Shared,
        max: usize,
        linger: Duration,
    ) -> Option<Vec<Pending>> {
        let mut batch = Vec::with_capacity(max.min(1024));
        let mut linger_until = None;
        loop {
            self.take(&mut batch, max);
            let stopping = shared.stop.borrow().is_some();
            if batch.len() >= max || (!batch.is_empty() && (stopping || linger.is_zero())) {
                return Some(batch);
            }
            if batch.is_empty() {
                match self {
                    Source::Memory(rx) => batch.push(rx.recv().await?),
                    Source::Spool { .. } if stopping => return None,
                    Source::Spool { .. } => shared.wake.notified().await,
                }
                continue;
            }
            let until = *linger_until.get_or_insert_with(|| Instant::now() + linger);
            let more = match self {
                Source::Memory(rx) => match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(pending)) => {
                        batch.push(pending);
                        true
                    }
                    Ok(None) | Err(_) => false,
                },
                Source::Spool { .. } => tokio::time::timeout_at(until, shared.wake.notified())
                    .await
                    .is_ok(),
            };
            if !more {
                self.take(&mut batch, max);
                return Some(batch);
            }
        }
    }

    /// Adds what is ready now, without waiting.
    fn take(&mut self, batch: &mut Vec<Pending>, max: usize) {
        match self {
            Source::Memory(rx) => {
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(pending) => batch.push(pending),
                        Err(_) => break,
                    }
                }
            }
            Source::Spool { spool, offset } => {
                let records = match spool.read(*offset, max - batch.len()) {
                    Ok(records) => records,
                    Err(e) => {
                        tracing::error!("reading the audit spool: {e}");
                        return;
                    }
                };
                if let Some(last) = records.last() {
                    *offset = last.end;
                }
                batch.extend(records.into_iter().map(|r| Pending {
                    event: r.event,
                    accepted_at: r.accepted_at,
                    end: r.end,
                }));
            }
        }
    }

    /// Offsets move back when the spool compacts.
    fn rebase(&mut self, moved: u64) {
        if let Source::Spool { offset, .. } = self {
            *offset -= moved;
        }
    }
}

/// The delivery task.
struct Worker {
    transport: Arc<Transport>,
    shared: Arc<Shared>,
    config: DeliveryConfig,
    dead_letter: DeadLetter,
    /// Events settled so far.
    settled: u64,
}

impl Worker {
    async fn run(mut self, mut source: Source) {
        self.deliver_all(&mut source).await;
        self.shared.finished.send_replace(true);
    }

    async fn deliver_all(&mut self, source: &mut Source) {
        while let Some(batch) = source
            .next(&self.shared, self.config.max_batch, self.config.linger)
            .await
        {
            let end = batch.last().map_or(0, |p| p.end);
            let count = batch.len() as u64;
            let left = self.deliver(batch).await;
            if !left.is_empty() {
                // Stopped at the shutdown deadline.
                self.leave(left, source).await;
                return;
            }
            if let Source::Spool { spool, .. } = source {
                match spool.ack(end) {
                    Ok(moved) => source.rebase(moved),
                    Err(e) => tracing::error!("acknowledging the audit spool: {e}"),
                }
            }
            self.settle(count);
        }
    }

    fn settle(&mut self, count: u64) {
        self.settled += count;
        self.shared.settled.send_replace(self.settled);
    }

    /// At the shutdown deadline: without a spool, what is left goes to the dead-letter
    /// file; with one, it stays there for the next start.
    async fn leave(&mut self, mut left: Vec<Pending>, source: &mut Source) {
        if let Source::Memory(rx) = source {
            rx.close();
            while let Some(pending) = rx.recv().await {
                left.push(pending);
            }
            let error = Error::unavailable("SHUTDOWN", "not delivered before the client shut down");
            for pending in &left {
                self.give_up(pending, &error);
            }
            self.settle(left.len() as u64);
        }
    }

    /// Sends a batch until it is settled; returns what is left at the shutdown deadline.
    async fn deliver(&mut self, mut batch: Vec<Pending>) -> Vec<Pending> {
        let mut attempt = 0u32;
        let mut one_by_one = false;
        while !batch.is_empty() {
            self.expire(&mut batch);
            if batch.is_empty() {
                break;
            }
            let size = if one_by_one { 1 } else { batch.len() };
            let events = batch[..size].iter().map(|p| p.event.clone()).collect();
            let result = match Transport::batch_body(events) {
                Ok(body) => self.send(body).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(recorded) => {
                    self.shared
                        .counters
                        .delivered
                        .fetch_add(recorded.len() as u64, Ordering::Relaxed);
                    batch.drain(..size);
                    attempt = 0;
                }
                Err(error @ Error::Rejected { .. }) => {
                    match rejected_index(&error).filter(|&i| i < size) {
                        Some(i) => {
                            let pending = batch.remove(i);
                            self.reject(&pending, &error);
                        }
                        None if size == 1 => {
                            let pending = batch.remove(0);
                            self.reject(&pending, &error);
                        }
                        // Which event is at fault is unknown: find out one by one.
                        None => one_by_one = true,
                    }
                }
                Err(Error::Closed) => return batch,
                Err(error) => {
                    self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(attempt, "audit delivery failed, will retry: {error}");
                    let wait = backoff(&self.config, attempt, &error);
                    attempt = attempt.saturating_add(1);
                    if !self.sleep(wait).await {
                        return batch;
                    }
                }
            }
        }
        Vec::new()
    }

    /// One request, cut short at the shutdown deadline (`Error::Closed`).
    async fn send(&self, body: Vec<u8>) -> Result<Vec<crate::graphql::Stored>> {
        let stop = *self.shared.stop.borrow();
        match stop {
            Some(deadline) => tokio::time::timeout_at(deadline, self.transport.log_many(body))
                .await
                .unwrap_or(Err(Error::Closed)),
            None => self.transport.log_many(body).await,
        }
    }

    /// Waits before a retry; false when the shutdown deadline comes first.
    async fn sleep(&self, wait: Duration) -> bool {
        let mut stop = self.shared.stop.subscribe();
        let until = Instant::now() + wait;
        loop {
            let deadline = *stop.borrow_and_update();
            if deadline.is_some_and(|d| d <= until) {
                tokio::time::sleep_until(deadline.unwrap_or(until)).await;
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                changed = stop.changed() => if changed.is_err() { return true },
            }
        }
    }

    /// Dead-letters the events older than the maximum age.
    fn expire(&mut self, batch: &mut Vec<Pending>) {
        let max_age =
            chrono::Duration::from_std(self.config.max_age).unwrap_or(chrono::Duration::MAX);
        let oldest_allowed = Utc::now() - max_age;
        let error = Error::unavailable("EXPIRED", "not delivered within the maximum age");
        batch.retain(|pending| {
            let keep = pending.accepted_at >= oldest_allowed;
            if !keep {
                self.give_up(pending, &error);
            }
            keep
        });
    }

    fn reject(&self, pending: &Pending, error: &Error) {
        self.shared
            .counters
            .rejected
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(action = %pending.event.action, "audit-service rejected an event: {error}");
        self.give_up(pending, error);
    }

    fn give_up(&self, pending: &Pending, error: &Error) {
        if let Some(callback) = &self.config.on_error {
            // A panicking callback must not end delivery for everyone else.
            let call = std::panic::AssertUnwindSafe(|| callback(&pending.event, error));
            if std::panic::catch_unwind(call).is_err() {
                tracing::error!("the audit client's on_error callback panicked");
            }
        }
        self.shared
            .counters
            .dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.dead_letter.write(pending, error) {
            tracing::error!(event = ?pending.event, "could not write the dead-letter file: {e}");
        }
    }
}

/// The event a batch error points at: `inputs[3].action` is the fourth.
fn rejected_index(error: &Error) -> Option<usize> {
    let field = error.field()?;
    let rest = field.strip_prefix("inputs[")?;
    rest[..rest.find(']')?].parse().ok()
}

/// Exponential backoff with jitter, or the server's `Retry-After`.
fn backoff(config: &DeliveryConfig, attempt: u32, error: &Error) -> Duration {
    if let Error::Unavailable {
        retry_after: Some(after),
        ..
    } = error
    {
        return *after + config.min_backoff.mul_f64(fastrand::f64());
    }
    let ceiling = config
        .min_backoff
        .saturating_mul(1 << attempt.min(20))
        .min(config.max_backoff);
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The dead-letter file: one JSON line per event given up on, opened on first use.
struct DeadLetter {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadLine<'a> {
    dead_at: DateTime<Utc>,
    accepted_at: DateTime<Utc>,
    code: &'a str,
    field: Option<&'a str>,
    reason: String,
    event: &'a Event,
}

impl DeadLetter {
    fn new(path: PathBuf) -> Self {
        DeadLetter {
            path,
            file: Mutex::new(None),
        }
    }

    fn write(&self, pending: &Pending, error: &Error) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&DeadLine {
            dead_at: Utc::now(),
            accepted_at: pending.accepted_at,
            code: error.code(),
            field: error.field(),
            reason: error.to_string(),
            event: &pending.event,
        })?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            *file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        match file.as_mut() {
            Some(file) => file.write_all(&line),
            None => Ok(()),
        }
    }
}
