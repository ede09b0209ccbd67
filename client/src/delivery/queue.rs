//! The caller's side of background delivery: the bounded queue `enqueue()` feeds, in
//! memory or in the spool, and the delivery task it starts (`worker`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, mpsc, watch};

use super::dead_letter::DeadLetter;
use super::shared::{
    Counters, DeliveryConfig, Metrics, OnFull, Pending, Shared, ShutdownReport, later,
};
use super::source::{Activity, Source};
use super::worker::{Tracker, Worker};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::spool::Spool;
use crate::transport::Transport;

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
    max_batch: usize,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
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
            taken: AtomicU64::new(0),
            full: Notify::new(),
        });
        let (sender, source) = match &spool {
            Some(spool) => (
                None,
                Source::Spool {
                    spool: spool.clone(),
                    offset: spool.acked(),
                    skipped: (0, 0),
                    activity: Activity::default(),
                },
            ),
            None => {
                let (tx, rx) = mpsc::channel(config.buffer.max(1));
                (Some(tx), Source::Memory(rx, Activity::default()))
            }
        };
        let worker = Arc::new(Worker {
            transport,
            shared: shared.clone(),
            dead_letter: DeadLetter::new(config.dead_letter.clone()),
            config: config.clone(),
            spool: spool.clone(),
            tracker: Mutex::new(Tracker::default()),
        });
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
            max_batch: config.max_batch,
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
                let accepted = *accepted;
                self.shared.wake.notify_one();
                self.signal_full(accepted);
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
                let accepted = *accepted;
                self.signal_full(accepted);
                Ok(())
            }
        }
    }

    /// Ends the delivery task's linger once a whole batch is waiting.
    fn signal_full(&self, accepted: u64) {
        let waiting = accepted.saturating_sub(self.shared.taken.load(Ordering::Relaxed));
        if waiting >= self.max_batch as u64 {
            self.shared.full.notify_one();
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
        self.shared.full.notify_one(); // no need to wait out the linger
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
        self.shared.full.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            // The task stops itself at the deadline; the grace covers a request in flight.
            let grace = deadline
                .checked_add(Duration::from_secs(1))
                .unwrap_or(deadline);
            let _ = tokio::time::timeout_at(grace, task).await;
        }
        let metrics = self.metrics();
        let abandoned = self.shared.counters.abandoned.load(Ordering::Relaxed);
        ShutdownReport {
            delivered: metrics.delivered,
            undelivered: metrics.pending + abandoned,
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
        self.shared.full.notify_one();
    }
}
