//! What audit-service accepts, written once: the limits and rules every event must meet
//! (`rules`), the action catalog (`catalog`), and both as data for kits in other languages
//! (`spec`, which `contract.json` holds). The server refuses what breaks them; the Rust
//! kit refuses it before sending; the Node kit builds its checks from `contract.json`.

pub mod catalog;
pub mod rules;
pub mod spec;

pub use catalog::{CATALOG, CatalogEntry};
pub use rules::Violation;
