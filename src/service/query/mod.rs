//! Reading events: keyset pages and lookups (`pages`), what matches (`filter`), cursors,
//! a tenant's events in sequence order (`sequence`), the trails of many subjects at once,
//! statistics and exports.

pub mod cursor;
pub mod export;
pub mod filter;
mod pages;
pub mod sequence;
pub mod stats;
pub mod trail;

pub use pages::*;
