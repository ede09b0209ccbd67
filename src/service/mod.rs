//! The service layer: plain functions and one write path over the database. SQL lives here,
//! a folder per concern.

pub mod actions;
pub mod capacity;
pub mod ingest;
pub mod keys;
pub mod live;
pub mod privacy;
pub mod query;
pub mod replicas;
pub mod retention;
pub mod streams;
pub mod tlog;
