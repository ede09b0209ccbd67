//! Opaque cursors: a position in the log, by time (for pages) and by sequence (for resuming).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use entity::audit_log;
use uuid::Uuid;

/// Where an event sits: `(occurred_at, id)` orders pages, `(tenant_id, seq)` orders commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub tenant_id: String,
    pub seq: i64,
    pub occurred_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn of(model: &audit_log::Model) -> Self {
        Cursor {
            tenant_id: model.tenant_id.clone(),
            seq: model.seq,
            occurred_at: model.occurred_at,
            id: model.id,
        }
    }

    pub fn encode(&self) -> String {
        let raw = format!(
            "v1\n{}\n{}\n{}\n{}",
            self.seq,
            self.occurred_at.timestamp_micros(),
            self.id,
            self.tenant_id
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` for anything that is not a cursor this server made.
    pub fn decode(text: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
        let mut parts = raw.splitn(5, '\n');
        if parts.next()? != "v1" {
            return None;
        }
        let seq = parts.next()?.parse().ok()?;
        let occurred_at = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
        let id = parts.next()?.parse().ok()?;
        let tenant_id = parts.next()?.to_owned();
        Some(Cursor {
            tenant_id,
            seq,
            occurred_at,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let cursor = Cursor {
            tenant_id: "acme\nwith newline".into(),
            seq: 42,
            occurred_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for garbage in ["", "abc", "!!!", &URL_SAFE_NO_PAD.encode("v2\n1\n2\n3\n4")] {
            assert_eq!(Cursor::decode(garbage), None, "{garbage}");
        }
    }
}
