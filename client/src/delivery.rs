//! Background delivery: the bounded queue `enqueue()` feeds, and the task that sends it in
//! batches to `logAuditEvents`, retrying with backoff until each event is stored, refused,
//! or too old (then dead-lettered).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Bytes held in memory, roughly (without a spool).
    pub buffer_bytes: usize,
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
            buffer_bytes: 64 << 20,
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
    /// What it holds of the memory buffer's byte bound (0 from a spool).
    size: usize,
}

/// An event on its way in: in memory, or encoded for the spool.
#[expect(
    clippy::large_enum_variant,
    reason = "moved once per event; a box would cost an allocation per event"
)]
enum Item {
    Memory(Pending),
    Spooled(Vec<u8>),
}

/// Why an event was not accepted; a full buffer hands it back for another try.
#[expect(
    clippy::large_enum_variant,
    reason = "moved once per event; a box would cost an allocation per event"
)]
enum Refused {
    Full(Item),
    Error(Error),
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
    max_bytes: usize,
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
    /// Bytes of the events in the memory buffer.
    buffered: AtomicUsize,
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
            buffered: AtomicUsize::new(0),
        });
        let (sender, source) = match &spool {
            Some(spool) => (
                None,
                Source::Spool {
                    spool: spool.clone(),
                    offset: spool.acked(),
                    skipped: 0,
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
            max_bytes: config.buffer_bytes,
            task: Mutex::new(Some(task)),
        })
    }

    /// Accepts an event for delivery, waiting for room when the buffer is full and the
    /// policy says so; see [`AuditClient::enqueue`](crate::AuditClient::enqueue).
    pub async fn push(&self, event: Event) -> Result<()> {
        let mut item = self.item(event)?;
        loop {
            match self.accept(item) {
                Ok(()) => return Ok(()),
                Err(Refused::Full(back)) if self.on_full == OnFull::Wait => {
                    item = back;
                    if self.shared.stop.borrow().is_some() {
                        return Err(Error::Closed);
                    }
                    // Room comes as events settle; look again now and then regardless.
                    let mut settled = self.shared.settled.subscribe();
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), settled.changed()).await;
                }
                Err(Refused::Full(_)) => return Err(self.dropped()),
                Err(Refused::Error(error)) => return Err(error),
            }
        }
    }

    /// Accepts an event now or never: never waits, whatever the policy.
    pub fn try_push(&self, event: Event) -> Result<()> {
        match self.accept(self.item(event)?) {
            Ok(()) => Ok(()),
            Err(Refused::Full(_)) => Err(self.dropped()),
            Err(Refused::Error(error)) => Err(error),
        }
    }

    /// The event as it is queued: in memory, or as a spool record.
    fn item(&self, event: Event) -> Result<Item> {
        let accepted_at = Utc::now();
        if self.spool.is_some() {
            let mut line = Vec::with_capacity(512);
            Spool::encode(&event, accepted_at, &mut line)?;
            return Ok(Item::Spooled(line));
        }
        Ok(Item::Memory(Pending {
            size: event.approx_size(),
            event,
            accepted_at,
            end: 0,
        }))
    }

    #[expect(
        clippy::result_large_err,
        reason = "the refused event comes back by value, without an allocation"
    )]
    fn accept(&self, item: Item) -> Result<(), Refused> {
        match item {
            Item::Spooled(line) => {
                let Some(spool) = &self.spool else {
                    return Err(Refused::Error(Error::Closed));
                };
                if self.shared.stop.borrow().is_some() {
                    return Err(Refused::Error(Error::Closed));
                }
                let mut accepted = self.order.lock().unwrap_or_else(|p| p.into_inner());
                match spool.append(&line) {
                    Ok(()) => *accepted += 1,
                    Err(Error::BufferFull) => return Err(Refused::Full(Item::Spooled(line))),
                    Err(error) => return Err(Refused::Error(error)),
                }
                drop(accepted);
                self.shared.wake.notify_one();
                Ok(())
            }
            Item::Memory(pending) => {
                let sender = {
                    let guard = self.sender.read().unwrap_or_else(|p| p.into_inner());
                    guard.clone().ok_or(Refused::Error(Error::Closed))?
                };
                let buffered = self.shared.buffered.load(Ordering::Relaxed);
                if buffered > 0 && buffered + pending.size > self.max_bytes {
                    return Err(Refused::Full(Item::Memory(pending)));
                }
                let permit = match sender.try_reserve() {
                    Ok(permit) => permit,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        return Err(Refused::Full(Item::Memory(pending)));
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        return Err(Refused::Error(Error::Closed));
                    }
                };
                let mut accepted = self.order.lock().unwrap_or_else(|p| p.into_inner());
                self.shared
                    .buffered
                    .fetch_add(pending.size, Ordering::Relaxed);
                permit.send(pending);
                *accepted += 1;
                Ok(())
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
        let deadline = later(deadline);
        self.shared.stop.send_replace(Some(deadline));
        self.sender
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.shared.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            // The task stops itself at the deadline; the grace covers a request in flight.
            let grace = deadline
                .checked_add(Duration::from_secs(1))
                .unwrap_or(deadline);
            let _ = tokio::time::timeout_at(grace, task).await;
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
                *stop = Some(later(Duration::from_secs(24 * 3600)));
            }
            first
        });
        self.shared.wake.notify_one();
    }
}

/// Where the delivery task takes events from.
enum Source {
    Memory(mpsc::Receiver<Pending>),
    Spool {
        spool: Arc<Spool>,
        offset: u64,
        /// Unreadable records passed over since the last batch.
        skipped: u64,
    },
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
            Source::Spool {
                spool,
                offset,
                skipped,
            } => {
                let (records, unreadable) = match spool.read(*offset, max - batch.len()) {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::error!("reading the audit spool: {e}");
                        return;
                    }
                };
                *skipped += unreadable.count;
                *offset = unreadable
                    .end
                    .max(records.last().map_or(*offset, |r| r.end));
                batch.extend(records.into_iter().map(|r| Pending {
                    event: r.event,
                    accepted_at: r.accepted_at,
                    end: r.end,
                    size: 0,
                }));
            }
        }
    }

    /// Unreadable spool records passed over since the last call: settled, as lost.
    fn take_skipped(&mut self) -> u64 {
        match self {
            Source::Spool { skipped, .. } => std::mem::take(skipped),
            Source::Memory(_) => 0,
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
        // Set however the task ends (a panic too), so `flush()` never waits for a dead task.
        struct Finished(Arc<Shared>);
        impl Drop for Finished {
            fn drop(&mut self) {
                self.0.finished.send_replace(true);
            }
        }
        let _finished = Finished(self.shared.clone());
        self.deliver_all(&mut source).await;
    }

    async fn deliver_all(&mut self, source: &mut Source) {
        while let Some(batch) = source
            .next(&self.shared, self.config.max_batch, self.config.linger)
            .await
        {
            let end = batch.last().map_or(0, |p| p.end);
            let count = batch.len() as u64 + source.take_skipped();
            let bytes: usize = batch.iter().map(|p| p.size).sum();
            let left = self.deliver(batch).await;
            self.shared.buffered.fetch_sub(bytes, Ordering::Relaxed);
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
        // Events per request: halved to find an event the server refuses without saying
        // which.
        let mut limit = batch.len();
        while !batch.is_empty() {
            self.expire(&mut batch);
            if batch.is_empty() {
                break;
            }
            let (size, body) = match request_body(&batch, limit) {
                Ok(request) => request,
                Err(error) => {
                    let pending = batch.remove(0);
                    self.reject(&pending, &error);
                    continue;
                }
            };
            match self.send(body).await {
                Ok(stored) => {
                    self.shared
                        .counters
                        .delivered
                        .fetch_add(stored.len() as u64, Ordering::Relaxed);
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
                        None => limit = size / 2,
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
        let until = later(wait);
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
        let oldest_allowed = chrono::Duration::from_std(self.config.max_age)
            .ok()
            .and_then(|max_age| Utc::now().checked_sub_signed(max_age));
        let Some(oldest_allowed) = oldest_allowed else {
            return; // a maximum age beyond the calendar: nothing expires
        };

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

/// Largest request body: the server refuses more than 1 MiB.
const MAX_BODY: usize = 768 * 1024;

/// The request recording the first events of `batch`, at most `limit` of them and fewer
/// when their body would outgrow `MAX_BODY`; with how many it holds.
fn request_body(batch: &[Pending], limit: usize) -> Result<(usize, Vec<u8>)> {
    let mut size = limit.clamp(1, batch.len());
    loop {
        let events = batch[..size].iter().map(|p| p.event.clone()).collect();
        let body = Transport::batch_body(events)?;
        if body.len() <= MAX_BODY || size == 1 {
            return Ok((size, body));
        }
        size = (size * MAX_BODY / body.len()).clamp(1, size - 1);
    }
}

/// The event a batch error points at: `inputs[3].action` is the fourth.
fn rejected_index(error: &Error) -> Option<usize> {
    let field = error.field()?;
    let rest = field.strip_prefix("inputs[")?;
    rest[..rest.find(']')?].parse().ok()
}

/// `now + wait`, or as late as can be said when that overflows.
pub(crate) fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// The longest `Retry-After` honoured.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter, or the server's `Retry-After`.
fn backoff(config: &DeliveryConfig, attempt: u32, error: &Error) -> Duration {
    if let Error::Unavailable {
        retry_after: Some(after),
        ..
    } = error
    {
        // A proxy's or a misconfigured server's Retry-After is not trusted past a minute.
        return (*after).min(MAX_RETRY_AFTER) + config.min_backoff.mul_f64(fastrand::f64());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Actor;

    #[test]
    fn a_huge_retry_after_is_capped_and_times_never_overflow() {
        let error = Error::Unavailable {
            code: "RATE_LIMITED".into(),
            message: String::new(),
            retry_after: Some(Duration::MAX),
        };
        let config = DeliveryConfig::default();
        assert!(backoff(&config, 0, &error) <= MAX_RETRY_AFTER + config.min_backoff);
        assert!(later(Duration::MAX) > Instant::now());
        let plain = Error::unavailable("NETWORK", "");
        assert!(backoff(&config, 60, &plain) <= config.max_backoff);
    }

    #[test]
    fn batches_stay_under_the_servers_body_limit() {
        let batch: Vec<Pending> = (0..100)
            .map(|i| {
                let mut event = Event::new(Actor::user(format!("u-{i}")), "project.created");
                event.metadata = Some(serde_json::json!({ "pad": "x".repeat(60_000) }));
                Pending {
                    event,
                    accepted_at: Utc::now(),
                    end: 0,
                    size: 0,
                }
            })
            .collect();
        let (size, body) = request_body(&batch, 100).expect("body");
        assert!(size > 1 && size < 100, "{size}");
        assert!(body.len() <= MAX_BODY);
        let (size, _) = request_body(&batch[..3], 100).expect("body");
        assert_eq!(size, 3);
    }
}
