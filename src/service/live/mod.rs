//! Live delivery: committed events fanned out per instance (`pubsub`: the feed and the
//! NOTIFY listener), each subscription's queue and tail (`tail`), queues bounded in bytes
//! (`mailbox`).

pub mod mailbox;
pub mod pubsub;
mod tail;

pub use tail::{QUEUE_BYTES, Queue, queue, tail};
