//! The service layer: plain functions and one write path over the database. SQL lives here.

pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod cursor;
pub mod event;
pub mod export;
pub mod filter;
pub mod ingest;
pub mod keys;
pub mod live;
pub mod mailbox;
pub mod maintenance;
pub mod memory;
pub mod pubsub;
pub mod query;
pub mod retention;
pub mod sequence;
pub mod share;
pub mod stats;
pub mod trail;
pub mod transparency;
pub mod tree;
