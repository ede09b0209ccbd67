//! Records audit events in audit-service: typed helpers, reliable batched delivery, a tower
//! Layer and an async-graphql Extension. See docs/integration.md.

mod builder;
pub mod catalog;
mod check;
mod client;
mod delivery;
mod error;
mod event;
#[cfg(feature = "async-graphql")]
pub mod extension;
mod forwarded;
mod graphql;
pub mod layer;
mod schema;
mod spool;
mod transport;

pub use audit_contract::rules::is_valid_action;
pub use builder::EventBuilder;
pub use catalog::{CATALOG, actions};
pub use client::{AuditClient, AuditClientBuilder};
pub use delivery::{Metrics, OnFull, ShutdownReport};
pub use error::{Error, Result};
pub use event::{Actor, ActorType, Context, Event, Outcome, Target};
#[cfg(feature = "async-graphql")]
pub use extension::{AuditExtension, Audited};
pub use graphql::Recorded;
pub use layer::{AuditDetails, AuditLayer, IpNet};
pub use transport::Credential;
