//! Queues from a producer that must never wait (the live feed, a shared subscription) to
//! one consumer that may be slow (a subscriber), bounded in items and in bytes. The bytes
//! are taken from allowances shared up a chain (a connection's, its tenant's, the
//! server's), so that what subscribers leave unread is bounded however many there are. A
//! queue that would pass a bound is emptied at once and tells its consumer it lagged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Bytes that queues may hold, within a parent's.
#[derive(Debug)]
pub struct Allowance {
    used: AtomicUsize,
    cap: usize,
    parent: Option<Arc<Allowance>>,
}

impl Allowance {
    /// An allowance of `cap` bytes of its own.
    pub fn root(cap: usize) -> Arc<Self> {
        Arc::new(Allowance {
            used: AtomicUsize::new(0),
            cap,
            parent: None,
        })
    }

    /// An allowance of at most `cap` bytes taken from this one.
    pub fn child(self: &Arc<Self>, cap: usize) -> Arc<Self> {
        Arc::new(Allowance {
            used: AtomicUsize::new(0),
            cap,
            parent: Some(self.clone()),
        })
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` here and in every parent, or nowhere.
    fn take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.cap)
            })
            .is_ok();
        if !taken {
            return false;
        }
        match &self.parent {
            Some(parent) if !parent.take(bytes) => {
                self.used.fetch_sub(bytes, Ordering::AcqRel);
                false
            }
            _ => true,
        }
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(parent) = &self.parent {
            parent.give(bytes);
        }
    }
}

/// A queue of at most `items` items whose bytes come from `allowance`.
pub fn mailbox<T>(items: usize, allowance: Arc<Allowance>) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            bytes: 0,
            lagged: None,
            closed: false,
        }),
        notify: Notify::new(),
        items: items.max(1),
        allowance,
    });
    (Sender(shared.clone()), Receiver(shared))
}

struct Shared<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    items: usize,
    allowance: Arc<Allowance>,
}

struct State<T> {
    queue: VecDeque<(T, usize)>,
    bytes: usize,
    /// Items dropped since the queue overflowed.
    lagged: Option<u64>,
    /// The other side is gone.
    closed: bool,
}

impl<T> Shared<T> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Empties the queue, giving its bytes back.
    fn drain(&self, state: &mut State<T>) {
        state.queue.clear();
        self.allowance.give(std::mem::take(&mut state.bytes));
    }
}

/// The producer's end; the consumer sees the end of the queue once it is dropped.
pub struct Sender<T>(Arc<Shared<T>>);

/// The consumer's end.
pub struct Receiver<T>(Arc<Shared<T>>);

/// What a receiver gets when it falls behind: how many items it missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged(pub u64);

impl<T> Sender<T> {
    /// Queues `item` of `bytes`, never waiting; `false` when the consumer is gone or has
    /// fallen behind (then nothing more is queued: it is told it lagged).
    pub fn push(&self, item: T, bytes: usize) -> bool {
        let mut state = self.0.state();
        if state.closed {
            return false;
        }
        if let Some(missed) = &mut state.lagged {
            *missed += 1;
            return false;
        }
        if state.queue.len() >= self.0.items || !self.0.allowance.take(bytes) {
            state.lagged = Some(state.queue.len() as u64 + 1);
            self.0.drain(&mut state);
            drop(state);
            self.0.notify.notify_one();
            return false;
        }
        state.bytes += bytes;
        state.queue.push_back((item, bytes));
        drop(state);
        self.0.notify.notify_one();
        true
    }

    /// Tells the consumer it fell `missed` items behind upstream; nothing more is queued.
    pub fn lag(&self, missed: u64) {
        let mut state = self.0.state();
        state.lagged = Some(state.queue.len() as u64 + missed);
        self.0.drain(&mut state);
        drop(state);
        self.0.notify.notify_one();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.state().closed = true;
        self.0.notify.notify_one();
    }
}

impl<T> Receiver<T> {
    /// The next item; `Err` once the queue overflowed (what it held is gone), `None` at
    /// the end.
    pub async fn recv(&mut self) -> Option<Result<T, Lagged>> {
        loop {
            {
                let mut state = self.0.state();
                if let Some(missed) = state.lagged {
                    return Some(Err(Lagged(missed)));
                }
                if let Some((item, bytes)) = state.queue.pop_front() {
                    state.bytes -= bytes;
                    self.0.allowance.give(bytes);
                    return Some(Ok(item));
                }
                if state.closed {
                    return None;
                }
            }
            // A single consumer: a notification while it was not waiting is kept for it.
            self.0.notify.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.closed = true;
        self.0.drain(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_bytes_come_back() {
        let connection = Allowance::root(100);
        let (sender, mut receiver) = mailbox(10, connection.clone());
        assert!(sender.push("a", 40) && sender.push("b", 40));
        assert_eq!(connection.used(), 80);
        assert_eq!(receiver.recv().await, Some(Ok("a")));
        assert_eq!(connection.used(), 40);
        drop(sender);
        assert_eq!(receiver.recv().await, Some(Ok("b")));
        assert_eq!(receiver.recv().await, None);
        assert_eq!(connection.used(), 0);
    }

    #[tokio::test]
    async fn a_queue_past_its_bytes_is_emptied_and_lags() {
        let server = Allowance::root(1000);
        let connection = server.child(100);
        let (slow, mut slow_receiver) = mailbox(10, connection.clone());
        let (other, _other_receiver) = mailbox(10, connection.clone());
        assert!(slow.push(1, 60));
        assert!(!other.push(2, 60), "the connection's allowance is used");
        assert!(!slow.push(4, 50));
        assert_eq!(slow_receiver.recv().await, Some(Err(Lagged(2))));
        assert!(!slow.push(5, 1), "nothing more after a lag");
        assert_eq!((connection.used(), server.used()), (0, 0));
    }

    #[tokio::test]
    async fn a_queue_past_its_items_lags_and_a_gone_consumer_takes_nothing() {
        let (sender, mut receiver) = mailbox(2, Allowance::root(usize::MAX));
        assert!(sender.push(1, 1) && sender.push(2, 1));
        assert!(!sender.push(3, 1));
        assert_eq!(receiver.recv().await, Some(Err(Lagged(3))));
        let (sender, receiver) = mailbox::<u8>(2, Allowance::root(10));
        drop(receiver);
        assert!(!sender.push(1, 1));
    }
}
