//! Records audit events in audit-service: typed helpers, reliable batched delivery, a tower
//! Layer and an async-graphql Extension. See docs/integration.md.

mod builder;
pub mod catalog;
mod client;
mod delivery;
mod error;
mod event;
mod graphql;
mod spool;
mod transport;

pub use builder::EventBuilder;
pub use catalog::{CATALOG, actions};
pub use client::{AuditClient, AuditClientBuilder};
pub use delivery::{Metrics, OnFull, ShutdownReport};
pub use error::{Error, Result};
pub use event::{Actor, ActorType, Context, Event, Outcome, Target, is_valid_action};
pub use graphql::Recorded;
pub use transport::Credential;
