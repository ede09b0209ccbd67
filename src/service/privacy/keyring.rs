//! The key-encryption keys (KEKs) of the privacy key file, and the wrapping of data keys
//! under them.
//!
//! The file is JSON: `{"keys": [{"id": "...", "key": "<32 bytes, base64url>"}, ...]}`. The
//! first key wraps new data keys; the others still unwrap the data keys wrapped before a
//! rotation (`privacy-key rotate`, then `privacy-key rewrap`, then the old key may go).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A data key: 32 random bytes per tenant and data subject.
pub type DataKey = [u8; 32];

/// Largest key file read; a real one holds a few keys of 70 bytes each.
const MAX_FILE: u64 = 64 << 10;
/// Bytes of an XChaCha20-Poly1305 nonce.
const NONCE: usize = 24;

/// The KEKs, current first.
pub struct Keyring {
    keys: Vec<Kek>,
}

struct Kek {
    id: String,
    cipher: XChaCha20Poly1305,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    key: String,
}

impl Keyring {
    /// Reads a key file; any problem is an error that names the file.
    pub fn load(path: &Path) -> anyhow::Result<Keyring> {
        let text =
            read_bounded(path).with_context(|| format!("privacy key file {}", path.display()))?;
        Keyring::parse(&text).with_context(|| format!("privacy key file {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<Keyring> {
        let file: KeyFile = serde_json::from_str(text)
            .context("not a privacy key file (`privacy-key create` makes one)")?;
        anyhow::ensure!(!file.keys.is_empty(), "it holds no key");
        let mut keys = Vec::with_capacity(file.keys.len());
        for entry in file.keys {
            anyhow::ensure!(!entry.id.is_empty(), "a key has an empty id");
            anyhow::ensure!(
                keys.iter().all(|k: &Kek| k.id != entry.id),
                "key id `{}` is there twice",
                entry.id
            );
            let bytes = BASE64_URL_SAFE_NO_PAD
                .decode(entry.key.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .with_context(|| format!("key `{}` is not 32 bytes of base64url", entry.id))?;
            keys.push(Kek {
                id: entry.id,
                cipher: XChaCha20Poly1305::new_from_slice(&bytes)?,
            });
        }
        Ok(Keyring { keys })
    }

    /// The file text of a new keyring of one key; with `old`, the new key comes first and
    /// `old`'s keys follow (a rotation).
    pub fn new_file(old: Option<&str>) -> anyhow::Result<String> {
        let mut entries = vec![KeyEntry {
            id: format!("kek-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")),
            key: BASE64_URL_SAFE_NO_PAD.encode(random::<32>()?),
        }];
        if let Some(old) = old {
            let old: KeyFile = serde_json::from_str(old).context("not a privacy key file")?;
            anyhow::ensure!(
                old.keys.iter().all(|k| k.id != entries[0].id),
                "a key was made this second already; try again"
            );
            entries.extend(old.keys);
        }
        Ok(serde_json::to_string_pretty(&KeyFile { keys: entries })?)
    }

    /// The id of the key new data keys are wrapped with.
    pub fn current(&self) -> &str {
        &self.keys[0].id
    }

    /// Wraps a data key under the current KEK, bound to its tenant and subject.
    pub fn wrap(&self, tenant_id: &str, subject_id: &str, key: &DataKey) -> Result<Vec<u8>> {
        self.seal(&bound_to(tenant_id, subject_id), key)
    }

    /// Unwraps a data key that `wrap` made under the KEK `kek_id`.
    pub fn unwrap(
        &self,
        tenant_id: &str,
        subject_id: &str,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey> {
        let key = self.open(&bound_to(tenant_id, subject_id), kek_id, wrapped)?;
        key.try_into()
            .map_err(|_| Error::internal("a data key is not 32 bytes"))
    }

    /// Seals a secret (a stream's signing secret or token) under the current KEK, bound to
    /// what it belongs to (`owner`), so that it never rests in the database in clear.
    pub fn seal(&self, owner: &[u8], secret: &[u8]) -> Result<Vec<u8>> {
        let nonce = random::<NONCE>().map_err(|e| Error::internal(e.to_string()))?;
        let sealed = self.keys[0]
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: owner,
                },
            )
            .map_err(|_| Error::internal("cannot seal under the privacy key"))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// Opens what `seal` sealed for `owner` under the KEK `kek_id`.
    pub fn open(&self, owner: &[u8], kek_id: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let kek = (self.keys.iter().find(|k| k.id == kek_id)).ok_or_else(|| {
            Error::internal(format!(
                "keys are wrapped by `{kek_id}`, which the privacy key file lacks"
            ))
        })?;
        let (nonce, sealed) = sealed
            .split_first_chunk::<NONCE>()
            .ok_or_else(|| Error::internal("a sealed key is too short"))?;
        kek.cipher
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: sealed,
                    aad: owner,
                },
            )
            .map_err(|_| Error::internal(format!("a sealed key does not open with `{kek_id}`")))
    }
}

/// What a wrapped key is bound to, so that a key row moved to another subject does not open.
fn bound_to(tenant_id: &str, subject_id: &str) -> Vec<u8> {
    [
        b"audit-service data key\0",
        tenant_id.as_bytes(),
        b"\0",
        subject_id.as_bytes(),
    ]
    .concat()
}

/// `N` bytes from the operating system's generator.
pub fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes)
}

fn read_bounded(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_FILE + 1).read_to_string(&mut text)?;
    anyhow::ensure!(
        text.len() as u64 <= MAX_FILE,
        "larger than {MAX_FILE} bytes"
    );
    Ok(text)
}

/// The keyring a server uses: the configured file; on SQLite without one, a file beside the
/// database, made on first start (and for an in-memory database, a key that lives as long
/// as it does). PostgreSQL needs a configured file.
pub fn open(configured: Option<&Path>, database_url: &str) -> anyhow::Result<Keyring> {
    if let Some(path) = configured {
        return Keyring::load(path);
    }
    let Some(database) = sqlite_file(database_url) else {
        if database_url.starts_with("sqlite:") {
            return Keyring::parse(&Keyring::new_file(None)?);
        }
        anyhow::bail!(
            "a privacy key file is required on PostgreSQL: make one with \
             `audit-service privacy-key create --out FILE` and name it in \
             AUDIT_PRIVACY_KEY_FILE (--privacy-key-file)"
        );
    };
    let path = PathBuf::from(format!("{}.privacy-key", database.display()));
    if !path.exists() {
        crate::commands::write_new_secret(&path, &Keyring::new_file(None)?)?;
        tracing::warn!(
            path = %path.display(),
            "made a privacy key file beside the database: personal values are encrypted \
             under it. Keep it with the database's backups (without it they cannot be read), \
             or set AUDIT_PRIVACY_KEY_FILE"
        );
    }
    Keyring::load(&path)
}

/// The file of a SQLite URL (`sqlite://audit.db?mode=rwc`), unless it is in memory.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory"))
        .then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_unwraps_across_a_rotation() {
        let first = Keyring::new_file(None).unwrap();
        let old = Keyring::parse(&first).unwrap();
        let wrapped = old.wrap("t", "u1", &[7; 32]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let rotated = Keyring::parse(&Keyring::new_file(Some(&first)).unwrap()).unwrap();
        assert_ne!(rotated.current(), old.current());
        let key = rotated.unwrap("t", "u1", old.current(), &wrapped).unwrap();
        assert_eq!(key, [7; 32]);
        assert!(
            rotated.unwrap("t", "u2", old.current(), &wrapped).is_err(),
            "bound to its subject"
        );
        assert!(
            rotated
                .unwrap("t", "u1", rotated.current(), &wrapped)
                .is_err()
        );
    }

    #[test]
    fn refuses_bad_files() {
        for bad in [
            "",
            "{}",
            r#"{"keys":[]}"#,
            r#"{"keys":[{"id":"a","key":"AAAA"}]}"#,
        ] {
            assert!(Keyring::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_sqlite_file() {
        assert_eq!(
            sqlite_file("sqlite://audit.db?mode=rwc"),
            Some("audit.db".into())
        );
        assert_eq!(sqlite_file("sqlite:///tmp/x.db"), Some("/tmp/x.db".into()));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://x"), None);
    }
}
