//! What a version-3 event keeps of its personal values: per value a commitment the hash
//! chain covers, and the values themselves sealed under a key only the event's data
//! subjects' keys give.
//!
//! - The event key is HMAC-SHA256 keyed by the subjects' data keys (in subject order) over
//!   the tenant and the event's id: destroying any one subject's key destroys it.
//! - A value's salt is HMAC-SHA256(event key, `salt` ‖ path), cut to 16 bytes; its
//!   commitment is SHA-256 of the JCS array `[salt (base64url), path, value]` (SD-JWT's
//!   disclosure). Without the key the salt is gone, so even a guessable value (an IP
//!   address) cannot be tried against its commitment.
//! - The values, as one JSON object by path, are sealed with XChaCha20-Poly1305 under
//!   HMAC-SHA256(event key, `seal`).

use std::collections::BTreeMap;

use base64::Engine;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use chacha20poly1305::aead::Aead;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::keyring::{DataKey, random};
use crate::error::{Error, Result};
use crate::service::tlog::canonical::jcs;

/// Personal values by path (`actor.name`, `metadata/email`).
pub type Values = BTreeMap<String, Value>;

/// The key of one event's personal values.
pub struct EventKey([u8; 32]);

type HmacSha256 = Hmac<Sha256>;

impl EventKey {
    /// The event's key from its subjects' data keys, in the order of `subjects` (sorted).
    pub fn derive(tenant_id: &str, event_id: Uuid, keys: &[&DataKey]) -> EventKey {
        let joined: Vec<u8> = keys.iter().flat_map(|key| key.iter().copied()).collect();
        EventKey(hmac(
            &joined,
            &[
                b"audit-service event key\0",
                tenant_id.as_bytes(),
                b"\0",
                event_id.as_bytes(),
            ],
        ))
    }

    /// The salt of the value at `path`, in base64url.
    pub fn salt(&self, path: &str) -> String {
        let full = hmac(&self.0, &[b"salt\0", path.as_bytes()]);
        BASE64_URL_SAFE_NO_PAD.encode(&full[..16])
    }

    /// The commitment to `value` at `path`, in lower-case hex.
    pub fn commit(&self, path: &str, value: &Value) -> String {
        commitment(&self.salt(path), path, value)
    }

    /// The values, encrypted: a random nonce, then the ciphertext.
    pub fn seal(&self, values: &Values) -> Result<Vec<u8>> {
        let nonce = random::<24>().map_err(|e| Error::internal(e.to_string()))?;
        let plain = serde_json::to_vec(values).map_err(|e| Error::internal(e.to_string()))?;
        let sealed = self
            .cipher()
            .encrypt(&XNonce::from(nonce), plain.as_slice())
            .map_err(|_| Error::internal("cannot seal personal values"))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// The values `seal` sealed, as the JSON text they were sealed as (the caller charges
    /// what they take once parsed before parsing them).
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        let (nonce, sealed) = sealed
            .split_first_chunk::<24>()
            .ok_or_else(|| Error::internal("sealed personal values are too short"))?;
        self.cipher()
            .decrypt(&XNonce::from(*nonce), sealed)
            .map_err(|_| Error::internal("sealed personal values do not open"))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&hmac(&self.0, &[b"seal"]).into())
    }
}

/// SHA-256 of the JCS array `[salt, path, value]`, in lower-case hex.
pub fn commitment(salt: &str, path: &str, value: &Value) -> String {
    let disclosure = Value::Array(vec![salt.into(), path.into(), value.clone()]);
    hex::encode(Sha256::digest(jcs(&disclosure)))
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seals_and_commits_per_event_and_subject() {
        let id = Uuid::now_v7();
        let key = EventKey::derive("t", id, &[&[1; 32], &[2; 32]]);
        let values: Values = [("actor.name".to_owned(), json!("Ada"))].into();
        let plain = key.open(&key.seal(&values).unwrap()).unwrap();
        assert_eq!(serde_json::from_slice::<Values>(&plain).unwrap(), values);
        let c = key.commit("actor.name", &json!("Ada"));
        assert_eq!(
            c,
            EventKey::derive("t", id, &[&[1; 32], &[2; 32]]).commit("actor.name", &json!("Ada"))
        );
        assert_ne!(
            c,
            EventKey::derive("t", id, &[&[1; 32], &[3; 32]]).commit("actor.name", &json!("Ada"))
        );
        assert_ne!(
            c,
            EventKey::derive("t", Uuid::now_v7(), &[&[1; 32], &[2; 32]])
                .commit("actor.name", &json!("Ada"))
        );
        assert_ne!(c, key.commit("context.userAgent", &json!("Ada")));
        let other = EventKey::derive("t", id, &[&[1; 32]]);
        assert!(other.open(&key.seal(&values).unwrap()).is_err());
    }

    /// The commitment is what docs/privacy.md says: SHA-256 over the JCS disclosure.
    #[test]
    fn commitment_is_sha256_of_the_disclosure() {
        let expected = hex::encode(Sha256::digest(br#"["c2FsdA","metadata/email","a@b.c"]"#));
        assert_eq!(
            commitment("c2FsdA", "metadata/email", &json!("a@b.c")),
            expected
        );
    }
}
