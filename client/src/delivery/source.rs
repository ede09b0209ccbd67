//! Where the delivery task takes its events from: the memory buffer or the spool, a batch
//! at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::shared::{Pending, Shared, later};
use crate::spool::Spool;

/// Where the delivery task takes events from.
pub(crate) enum Source {
    Memory(mpsc::Receiver<Pending>, Activity),
    Spool {
        spool: Arc<Spool>,
        offset: u64,
        /// Unreadable records passed over since the last batch, and where the last ends.
        skipped: (u64, u64),
        activity: Activity,
    },
}

/// When the source last gave a batch: within a second counts as steady traffic.
#[derive(Default)]
pub(crate) struct Activity(Option<Instant>);

const BUSY_FOR: Duration = Duration::from_secs(1);

impl Source {
    /// The next batch: waits for a first event, then up to `linger` for more. `None` once
    /// the client is shut down and nothing is left.
    pub(super) async fn next(
        &mut self,
        shared: &Shared,
        max: usize,
        linger: Duration,
    ) -> Option<Vec<Pending>> {
        let mut batch = Vec::with_capacity(max.min(1024));
        let mut linger_until = None;
        loop {
            let stop = *shared.stop.borrow();
            if matches!(self, Source::Spool { .. }) && stop.is_some_and(|d| d <= Instant::now()) {
                return None; // past the deadline the rest stays in the spool
            }
            self.take(shared, &mut batch, max);
            let stopping = stop.is_some();
            if batch.len() >= max || (!batch.is_empty() && (stopping || linger.is_zero())) {
                self.active();
                return Some(batch);
            }
            if batch.is_empty() && self.has_skipped() {
                return Some(batch); // only unreadable records: settled all the same
            }
            if batch.is_empty() && !stopping && !linger.is_zero() && self.busy() {
                // Under steady traffic the task looks again after a linger rather than be
                // woken by the next event: that wake-up is a system call on the caller's
                // task, paid by one `enqueue()` in every batch. What it finds has waited a
                // linger already.
                let _ = tokio::time::timeout(linger, shared.full.notified()).await;
                self.take(shared, &mut batch, max);
                if !batch.is_empty() {
                    self.active();
                    return Some(batch);
                }
                continue;
            }
            if batch.is_empty() {
                match self {
                    Source::Memory(rx, _) => {
                        batch.push(rx.recv().await?);
                        shared.taken.fetch_add(1, Ordering::Relaxed);
                    }
                    Source::Spool { .. } if stopping => return None,
                    Source::Spool { .. } => shared.wake.notified().await,
                }
                continue;
            }
            // The linger is waited out without a wake-up per event (a wake-up costs the
            // caller a system call): callers signal only when a whole batch is waiting, and
            // `shutdown` when it begins.
            let until = *linger_until.get_or_insert_with(|| later(linger));
            let full = tokio::time::timeout_at(until, shared.full.notified()).await;
            if full.is_err() {
                self.take(shared, &mut batch, max);
                self.active();
                return Some(batch);
            }
        }
    }

    /// Adds what is ready now, without waiting.
    fn take(&mut self, shared: &Shared, batch: &mut Vec<Pending>, max: usize) {
        let before = batch.len();
        match self {
            Source::Memory(rx, _) => {
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
                ..
            } => {
                let (records, unreadable) = match spool.read(*offset, max - batch.len()) {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::error!("reading the audit spool: {e}");
                        return;
                    }
                };
                skipped.0 += unreadable.count;
                skipped.1 = skipped.1.max(unreadable.end);
                shared.taken.fetch_add(unreadable.count, Ordering::Relaxed);
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
        let taken = (batch.len() - before) as u64;
        shared.taken.fetch_add(taken, Ordering::Relaxed);
    }

    fn activity(&mut self) -> &mut Activity {
        match self {
            Source::Memory(_, activity) | Source::Spool { activity, .. } => activity,
        }
    }

    fn busy(&mut self) -> bool {
        self.activity().0.is_some_and(|at| at.elapsed() < BUSY_FOR)
    }

    fn active(&mut self) {
        self.activity().0 = Some(Instant::now());
    }

    /// Unreadable spool records passed over since the last call, and where the last ends:
    /// settled, as lost.
    pub(super) fn take_skipped(&mut self) -> (u64, u64) {
        match self {
            Source::Spool { skipped, .. } => std::mem::take(skipped),
            Source::Memory(..) => (0, 0),
        }
    }

    fn has_skipped(&self) -> bool {
        matches!(self, Source::Spool { skipped, .. } if skipped.0 > 0)
    }
}
