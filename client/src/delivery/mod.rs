//! Background delivery, in layers: what both sides share at the bottom (`shared`), the
//! dead-letter file and where events come from above it (`dead_letter`, `source`), the
//! delivery task that sends batches to `logAuditEvents`, retrying with backoff until each
//! event is stored, refused or too old (`worker`), and on top the bounded queue that
//! `enqueue()` feeds (`queue`).

mod dead_letter;
mod queue;
mod shared;
mod source;
mod worker;

pub(crate) use queue::Queue;
pub(crate) use shared::{DeliveryConfig, MAX_RETRY_AFTER, later};
pub use shared::{Metrics, OnFull, ShutdownReport};
