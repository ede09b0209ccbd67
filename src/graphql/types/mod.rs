//! The GraphQL object, enum and input types, converted from and to the service layer's.

mod chain;
mod enums;
mod filter;
mod input;
mod objects;
mod stats;
mod tree;
mod viewer;

pub use chain::*;
pub use enums::*;
pub use filter::*;
pub use input::*;
pub use objects::*;
pub use stats::*;
pub use tree::*;
pub use viewer::*;
