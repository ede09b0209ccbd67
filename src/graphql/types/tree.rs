//! The verifiable log's checkpoints and proofs, as GraphQL objects.

use async_graphql::SimpleObject;

use crate::graphql::scalars::DateTime;

/// A signed checkpoint of a tenant's Merkle tree: a C2SP `tlog-checkpoint` signed note.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditCheckpoint {
    /// The note's origin line, `<AUDIT_LOG_ORIGIN>/<tenant>` (the tenant percent-encoded).
    pub origin: String,
    /// How many events (leaves) the tree has, in decimal.
    pub tree_size: String,
    /// The tree's root hash, in lower-case hex.
    pub root_hash: String,
    /// The whole signed note: `<origin>\n<size>\n<base64 root>\n\n— <key name> <signature>\n`.
    pub signed_note: String,
    /// The key that verifies the note's signature, `<name>+<key hash>+<base64 key>`.
    pub verifier_key: String,
    /// When the checkpoint was signed.
    pub issued_at: DateTime,
}

impl AuditCheckpoint {
    pub fn new(checkpoint: entity::tree_checkpoint::Model, verifier_key: String) -> Self {
        let origin = checkpoint.signed_note.lines().next().unwrap_or_default();
        AuditCheckpoint {
            origin: origin.to_owned(),
            tree_size: checkpoint.tree_size.to_string(),
            root_hash: hex::encode(&checkpoint.root_hash),
            signed_note: checkpoint.signed_note,
            verifier_key,
            issued_at: DateTime(checkpoint.issued_at),
        }
    }
}

/// The proof that an event is in a tenant's tree (RFC 9162 §2.1.3): its leaf is the event's
/// `hash`, at index `sequence − 1`.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditInclusionProof {
    /// The event's leaf index, `sequence − 1`, in decimal.
    pub leaf_index: String,
    /// The size of the tree the proof is for.
    pub tree_size: String,
    /// The proof's hashes, nearest the leaf first, in lower-case hex.
    pub hashes: Vec<String>,
    /// The signed checkpoint of that tree size, if one was issued.
    pub checkpoint: Option<AuditCheckpoint>,
}

/// The proof that a tenant's tree of `toSize` events extends its tree of `fromSize`
/// (RFC 9162 §2.1.4).
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditConsistencyProof {
    pub from_size: String,
    pub to_size: String,
    /// The proof's hashes, in lower-case hex.
    pub hashes: Vec<String>,
}
