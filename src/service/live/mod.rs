//! Live delivery: committed events fanned out per instance (`feed`), brought in from other
//! instances by the NOTIFY listener (`listener`), each subscription's queue and tail
//! (`tail`), queues bounded in bytes (`mailbox`).

pub mod feed;
pub mod listener;
pub mod mailbox;
mod tail;

pub use tail::{QUEUE_BYTES, Queue, queue, tail};
