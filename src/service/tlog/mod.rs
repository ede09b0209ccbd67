//! The verifiable log: the chain's canonical encoding (`canonical`) and its verification
//! (`chain`), the Merkle tree and its proofs (`tree`), signed checkpoints (`checkpoint`),
//! and the background work that seals, signs and verifies (`transparency`).

pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod merkle;
pub mod transparency;
pub mod tree;
