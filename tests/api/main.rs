//! API tests: each starts the real server on a random port and talks HTTP to it, on SQLite
//! and (with `TEST_DATABASE_URL`) on PostgreSQL.

#![expect(
    clippy::expect_used,
    reason = "a test fails loudly at the first surprise"
)]

mod auth;
mod chain;
mod client;
mod cluster;
mod config;
mod console;
mod cost;
mod events;
mod explain;
mod export;
mod federation;
mod filter;
mod fuzz;
mod helpers;
mod hostile;
mod http;
mod limits;
mod memory;
mod metrics;
mod node_kit;
mod outage;
mod pagination;
mod privacy;
mod proofs;
mod replicas;
mod schema;
mod shutdown;
mod stats;
mod streams;
mod subscriptions;
mod traces;
mod validation;
