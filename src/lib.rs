//! audit-service: the audit log of a platform's control plane, as a GraphQL server.
//!
//! `startup::Application` is what `main` runs and what the tests start; `graphql` is the
//! API, `service` the database work behind it, `http` the transport.

pub mod commands;
pub mod config;
mod console;
pub mod context;
pub mod credentials;
pub mod error;
pub mod fuzzing;
mod graphiql;
pub mod graphql;
pub mod http;
pub mod metrics;
pub mod progress;
pub mod refusals;
pub mod service;
pub mod startup;
pub mod telemetry;
pub mod ws;
