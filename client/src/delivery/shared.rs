//! What the caller's side of delivery (`queue`) and the delivery task (`worker`) share:
//! the settings, the counters, an event on its way, and the state both watch.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::error::Error;
use crate::event::Event;

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
    /// Batches in flight at once.
    pub concurrency: usize,
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
            concurrency: 4,
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
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub retries: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Events given up at the shutdown deadline (or when delivery panicked).
    pub abandoned: AtomicU64,
}

/// An accepted event on its way.
pub(crate) struct Pending {
    pub event: Event,
    pub accepted_at: DateTime<Utc>,
    /// Where its spool record ends (0 without a spool).
    pub end: u64,
    /// What it holds of the memory buffer's byte bound (0 from a spool).
    pub size: usize,
}

/// What the caller's side and the delivery task both see.
pub(crate) struct Shared {
    pub counters: Counters,
    /// Events settled (delivered, refused or dead-lettered), in acceptance order.
    pub settled: watch::Sender<u64>,
    /// New spool records to read.
    pub wake: Notify,
    /// Set by `shutdown`: no more events; stop retrying at this instant.
    pub stop: watch::Sender<Option<Instant>>,
    /// Set when the delivery task has ended.
    pub finished: watch::Sender<bool>,
    /// Bytes of the events in the memory buffer.
    pub buffered: AtomicUsize,
    /// Events the delivery task has taken, of those accepted.
    pub taken: AtomicU64,
    /// A whole batch is waiting (or shutdown began): the linger may end.
    pub full: Notify,
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

/// `now + wait`, or as late as can be said when that overflows.
pub(crate) fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// The longest `Retry-After` honoured.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
