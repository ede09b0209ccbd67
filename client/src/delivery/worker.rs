//! The delivery task: reads accepted events in batches (from memory or the spool) and sends
//! them to `logAuditEvents` from a few concurrent senders, retrying with backoff until each
//! event is stored, refused, or too old (then dead-lettered); and it tracks which events are
//! settled, in acceptance order, for `flush()` and the spool.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::dead_letter::DeadLetter;
use super::shared::{DeliveryConfig, MAX_RETRY_AFTER, Pending, Shared, later};
use super::source::Source;
use crate::error::{Error, Result};
use crate::spool::Spool;
use crate::transport::Transport;

/// What the delivery tasks share: one reads batches, `concurrency` send them.
pub(crate) struct Worker {
    pub transport: Arc<Transport>,
    pub shared: Arc<Shared>,
    pub config: DeliveryConfig,
    pub dead_letter: DeadLetter,
    pub spool: Option<Arc<Spool>>,
    /// Batches settle out of order; this finds the prefix settled in acceptance order.
    pub tracker: Mutex<Tracker>,
}

/// Most batches settled past one that is not, before new batches wait.
const MAX_AHEAD: usize = 256;

/// Settled batches not yet joined to the settled prefix, by first event.
#[derive(Default)]
pub(crate) struct Tracker {
    /// Events settled in acceptance order, without a gap.
    settled: u64,
    /// First event of a settled batch → its event count and where its spool records end.
    ahead: BTreeMap<u64, (u64, u64)>,
}

/// A batch on its way, with its place in acceptance order.
struct Batch {
    first: u64,
    /// Its events, and the unreadable spool records passed over before them.
    count: u64,
    /// Where its spool records end (0 without a spool).
    end: u64,
    events: Vec<Pending>,
}

impl Worker {
    /// Reads batches and hands them to `concurrency` senders; ends when the client is shut
    /// down and everything is settled or left.
    pub async fn run(self: Arc<Self>, mut source: Source) {
        // Set however the task ends (a panic too), so `flush()` never waits for a dead task.
        struct Finished(Arc<Shared>);
        impl Drop for Finished {
            fn drop(&mut self) {
                self.0.finished.send_replace(true);
            }
        }
        let _finished = Finished(self.shared.clone());
        let senders = self.config.concurrency.max(1);
        let (tx, rx) = mpsc::channel::<Batch>(1);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..senders {
            tasks.spawn(self.clone().send_batches(rx.clone()));
        }
        let mut next = 0;
        while let Some(events) = source
            .next(&self.shared, self.config.max_batch, self.config.linger)
            .await
        {
            let (skipped, skipped_end) = source.take_skipped();
            let count = events.len() as u64 + skipped;
            let end = events.last().map_or(0, |p| p.end).max(skipped_end);
            // Behind a batch that does not settle, the others wait rather than pile up.
            while self.unsettled_ahead() >= MAX_AHEAD {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let batch = Batch {
                first: next,
                count,
                end,
                events,
            };
            next += count;
            if tx.send(batch).await.is_err() {
                break;
            }
        }
        drop(tx);
        while tasks.join_next().await.is_some() {}
    }

    /// One sender: takes the next batch and delivers it, until there are no more.
    async fn send_batches(
        self: Arc<Self>,
        batches: Arc<tokio::sync::Mutex<mpsc::Receiver<Batch>>>,
    ) {
        loop {
            let Some(mut batch) = batches.lock().await.recv().await else {
                return;
            };
            let bytes: usize = batch.events.iter().map(|p| p.size).sum();
            // A panic (in a token callback, say) gives up this batch, not the sender.
            let delivered = AssertUnwindSafe(self.deliver(&mut batch.events))
                .catch_unwind()
                .await;
            self.shared.buffered.fetch_sub(bytes, Ordering::Relaxed);
            let error = match delivered {
                Ok(()) if batch.events.is_empty() => None,
                // The shutdown deadline: with a spool, what is left stays there for the
                // next start; without, it goes to the dead-letter file.
                Ok(()) if self.spool.is_some() => continue,
                Ok(()) => Some(Error::unavailable(
                    "SHUTDOWN",
                    "not delivered before the client shut down",
                )),
                Err(_) => {
                    tracing::error!("audit delivery panicked; its batch is dead-lettered");
                    Some(Error::unavailable("INTERNAL", "delivery panicked"))
                }
            };
            if let Some(error) = error {
                for pending in &batch.events {
                    self.give_up(pending, &error);
                }
                self.shared
                    .counters
                    .abandoned
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
            }
            self.settle(batch.first, batch.count, batch.end);
        }
    }

    /// Batches settled past one that is not.
    fn unsettled_ahead(&self) -> usize {
        let tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        tracker.ahead.len()
    }

    /// Marks a batch settled; moves the settled prefix (and the spool's acknowledged
    /// offset) past every batch settled without a gap before it.
    fn settle(&self, first: u64, count: u64, end: u64) {
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        tracker.ahead.insert(first, (count, end));
        let mut acked = None;
        while let Some((count, end)) = {
            let at = tracker.settled;
            tracker.ahead.remove(&at)
        } {
            tracker.settled += count;
            acked = Some(end).filter(|&end| end > 0).or(acked);
        }
        self.shared.settled.send_replace(tracker.settled);
        drop(tracker);
        // Outside the tracker's lock; the spool ignores an offset behind the one it has.
        if let (Some(spool), Some(end)) = (&self.spool, acked)
            && let Err(e) = spool.ack(end)
        {
            tracing::error!("acknowledging the audit spool: {e}");
        }
    }

    /// Sends a batch until it is settled; what is left in it was not delivered by the
    /// shutdown deadline.
    async fn deliver(&self, batch: &mut Vec<Pending>) {
        let mut attempt = 0u32;
        // Events per request: halved to find an event the server refuses without saying
        // which.
        let mut limit = batch.len();
        while !batch.is_empty() {
            self.expire(batch);
            if batch.is_empty() {
                break;
            }
            let (size, body) = match request_body(batch, limit) {
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
                Err(Error::Closed) => return,
                Err(error) => {
                    self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(attempt, "audit delivery failed, will retry: {error}");
                    let wait = backoff(&self.config, attempt, &error);
                    attempt = attempt.saturating_add(1);
                    if !self.sleep(wait).await {
                        return;
                    }
                }
            }
        }
    }

    /// One request, cut short at the shutdown deadline (`Error::Closed`), also when the
    /// deadline is set while the request is in flight; none is sent past it.
    async fn send(&self, body: Vec<u8>) -> Result<Vec<crate::graphql::Stored>> {
        let mut stop = self.shared.stop.subscribe();
        let request = self.transport.log_many(body);
        tokio::pin!(request);
        loop {
            let deadline = *stop.borrow_and_update();
            if let Some(deadline) = deadline {
                if deadline <= Instant::now() {
                    return Err(Error::Closed);
                }
                return tokio::time::timeout_at(deadline, &mut request)
                    .await
                    .unwrap_or(Err(Error::Closed));
            }
            tokio::select! {
                result = &mut request => return result,
                changed = stop.changed() => if changed.is_err() { return request.await },
            }
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
    fn expire(&self, batch: &mut Vec<Pending>) {
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
pub(crate) const MAX_BODY: usize = 768 * 1024;

/// The request recording the first events of `batch`, at most `limit` of them and fewer
/// when their body would outgrow `MAX_BODY`; with how many it holds.
pub(crate) fn request_body(batch: &[Pending], limit: usize) -> Result<(usize, Vec<u8>)> {
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

/// Exponential backoff with jitter, or the server's `Retry-After`.
pub(crate) fn backoff(config: &DeliveryConfig, attempt: u32, error: &Error) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, Event};

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
