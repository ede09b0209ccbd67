//! Signed checkpoints of the tenants' trees: C2SP `tlog-checkpoint` bodies
//! (`<origin>\n<tree size>\n<base64 root hash>\n`), signed as C2SP signed notes with Ed25519,
//! stored once and never rewritten.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use entity::tree_checkpoint::{self, Column};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::service::tlog::merkle::Hash;
use crate::service::tlog::tree::Tree;

/// The signature algorithm byte of Ed25519 in C2SP signed notes.
const ED25519: u8 = 0x01;

/// The key checkpoints are signed with.
pub struct Signer {
    name: String,
    key: SigningKey,
}

impl Signer {
    /// A new random key named `name`.
    pub fn generate(name: &str) -> Result<Self> {
        check_name(name)?;
        let mut seed = [0; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Signer {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads a key as [`Signer::private_key`] writes it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::internal(format!(
                "cannot read the checkpoint key {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(text.trim())
            .ok_or_else(|| Error::internal(format!("{} is not a checkpoint key", path.display())))
    }

    /// `PRIVATE+KEY+<name>+<key id>+<base64(0x01 ‖ seed)>`, the form Go's `note` package uses.
    pub fn private_key(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id(),
            BASE64.encode(bytes)
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("PRIVATE+KEY+")?;
        // The base64 key may hold `+` itself: it is the rest.
        let mut parts = rest.splitn(3, '+');
        let (name, id, key) = (parts.next()?, parts.next()?, parts.next()?);
        let bytes = BASE64.decode(key).ok()?;
        let (&alg, seed) = bytes.split_first()?;
        let signer = Signer {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed.try_into().ok()?),
        };
        let valid = alg == ED25519
            && check_name(name).is_ok()
            && u32::from_str_radix(id, 16).ok()? == signer.key_id();
        valid.then_some(signer)
    }

    /// `<name>+<key id>+<base64(0x01 ‖ public key)>`: what auditors verify signatures with.
    pub fn verifier_key(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.verifying_key().as_bytes());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.key_id(),
            BASE64.encode(bytes)
        )
    }

    /// The first four bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`.
    fn key_id(&self) -> u32 {
        key_id(&self.name, &self.key.verifying_key())
    }

    /// The signed note of `body` (which ends with a newline).
    pub fn sign(&self, body: &str) -> String {
        let mut signature = self.key_id().to_be_bytes().to_vec();
        signature.extend_from_slice(&self.key.sign(body.as_bytes()).to_bytes());
        format!(
            "{body}\n\u{2014} {} {}\n",
            self.name,
            BASE64.encode(signature)
        )
    }

    /// The body of `note` when it carries a valid signature of this key.
    pub fn verify<'n>(&self, note: &'n str) -> Option<&'n str> {
        let (body, valid) = self.check(note)?;
        valid.then_some(body)
    }

    /// The body of `note` and whether this key's signature of it is valid; `None` when the
    /// note has no signature by this key (another key signed it, before a rotation, say).
    pub fn check<'n>(&self, note: &'n str) -> Option<(&'n str, bool)> {
        let split = note.rfind("\n\n")? + 1;
        let (body, signatures) = note.split_at(split);
        let prefix = format!("\u{2014} {} ", self.name);
        let id = self.key_id().to_be_bytes();
        let signature = signatures.lines().find_map(|line| {
            let bytes = BASE64.decode(line.strip_prefix(&prefix)?).ok()?;
            let (line_id, signature) = bytes.split_at_checked(4)?;
            (line_id == id).then(|| signature.to_vec())
        })?;
        let valid = ed25519_dalek::Signature::from_slice(&signature)
            .is_ok_and(|s| self.key.verifying_key().verify(body.as_bytes(), &s).is_ok());
        Some((body, valid))
    }
}

fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update(b"\n")
        .chain_update([ED25519])
        .chain_update(key.as_bytes())
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A key name is not empty and has no `+` and no whitespace (C2SP signed-note).
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(Error::bad_input(
            "name",
            "a key name is not empty and has no `+` and no spaces",
        ));
    }
    Ok(())
}

/// The origin line of a tenant's checkpoints: `<prefix>/<tenant>`, the tenant id
/// percent-encoded except for letters, digits and `-._~`, as the line allows no spaces and
/// no `+`.
pub fn origin(prefix: &str, tenant_id: &str) -> String {
    let mut origin = format!("{prefix}/");
    for byte in tenant_id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            origin.push(byte as char);
        } else {
            origin.push_str(&format!("%{byte:02X}"));
        }
    }
    origin
}

/// The checkpoint body of a tree.
pub fn body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", BASE64.encode(root))
}

/// The tenant's latest checkpoint.
pub async fn latest(
    db: &impl ConnectionTrait,
    tenant_id: &str,
) -> Result<Option<tree_checkpoint::Model>> {
    Ok(tree_checkpoint::Entity::find()
        .filter(Column::TenantId.eq(tenant_id))
        .order_by_desc(Column::TreeSize)
        .one(db)
        .await?)
}

/// The tenant's checkpoint of a tree of `size` leaves, if one was issued.
pub async fn at(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    size: u64,
) -> Result<Option<tree_checkpoint::Model>> {
    Ok(
        tree_checkpoint::Entity::find_by_id((tenant_id.to_owned(), size as i64))
            .one(db)
            .await?,
    )
}

/// Signs and stores a checkpoint of the tenant's tree of `size` leaves, unless the latest
/// one already has that size (or a larger one).
pub async fn issue(
    db: &impl ConnectionTrait,
    signer: &Signer,
    prefix: &str,
    tenant_id: &str,
    size: u64,
) -> Result<Option<tree_checkpoint::Model>> {
    let newest = latest(db, tenant_id).await?;
    if size == 0 || newest.is_some_and(|c| c.tree_size as u64 >= size) {
        return Ok(None);
    }
    let root = Tree::new(db, tenant_id).root(size).await?;
    let note = signer.sign(&body(&origin(prefix, tenant_id), size, &root));
    let checkpoint = tree_checkpoint::Model {
        tenant_id: tenant_id.to_owned(),
        tree_size: size as i64,
        root_hash: root.to_vec(),
        signed_note: note,
        issued_at: Utc::now(),
    };
    let row = tree_checkpoint::ActiveModel {
        tenant_id: Set(checkpoint.tenant_id.clone()),
        tree_size: Set(checkpoint.tree_size),
        root_hash: Set(checkpoint.root_hash.clone()),
        signed_note: Set(checkpoint.signed_note.clone()),
        issued_at: Set(checkpoint.issued_at),
    };
    // Another instance may have signed the same tree already: its checkpoint stays.
    let same = OnConflict::columns([Column::TenantId, Column::TreeSize])
        .do_nothing()
        .to_owned();
    tree_checkpoint::Entity::insert(row)
        .on_conflict(same)
        .exec_without_returning(db)
        .await?;
    Ok(Some(checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_notes_verify() -> Result<(), Box<dyn std::error::Error>> {
        let signer = Signer::generate("audit.example")?;
        let loaded = Signer::parse(&signer.private_key()).ok_or("parse")?;
        assert_eq!(loaded.verifier_key(), signer.verifier_key());
        let body = body("audit-service/acme", 3, &[7; 32]);
        let note = signer.sign(&body);
        assert_eq!(signer.verify(&note), Some(body.as_str()));
        // One changed byte anywhere breaks it.
        let tampered = note.replacen("\n3\n", "\n4\n", 1);
        assert_eq!(signer.verify(&tampered), None);
        let other = Signer::generate("audit.example")?;
        assert_eq!(other.verify(&note), None);
        assert!(Signer::generate("two words").is_err());
        Ok(())
    }

    #[test]
    fn origins_escape_what_the_line_may_not_hold() {
        assert_eq!(origin("audit-service", "acme"), "audit-service/acme");
        assert_eq!(origin("a", "x y+z/é"), "a/x%20y%2Bz%2F%C3%A9");
    }
}
