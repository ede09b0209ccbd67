//! The verifiable log: the chain's canonical encoding (`canonical`) and its verification
//! (`chain`); the Merkle tree of RFC 9162 (`merkle`), stored as tiles (`tree`, with the
//! process's `cache` of them); signed checkpoints (`checkpoint`); and the background work
//! that seals, signs and verifies (`transparency`).

pub mod cache;
pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod merkle;
pub mod transparency;
pub mod tree;
