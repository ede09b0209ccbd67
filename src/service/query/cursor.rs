//! Opaque cursors: a position in the log, by time (for pages) and by sequence (for resuming).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use entity::audit_log;
use uuid::Uuid;

/// 9999-12-31T23:59:59.999999Z in microseconds since 1970.
const MAX_MICROS: i64 = 253_402_300_799_999_999;

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
        let seq = parts.next()?.parse().ok().filter(|seq| *seq >= 0)?;
        // Only instants an event can have (from 1970, within four-digit years): anything
        // else is no position this server made, and some databases cannot compare it.
        let micros = parts
            .next()?
            .parse()
            .ok()
            .filter(|m| (0..=MAX_MICROS).contains(m))?;
        let occurred_at = DateTime::from_timestamp_micros(micros)?;
        let id = parts.next()?.parse().ok()?;
        let tenant_id = parts.next()?.to_owned();
        if tenant_id.is_empty() || tenant_id.contains('\0') {
            return None;
        }
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
        let id = Uuid::now_v7();
        for garbage in [
            "".to_owned(),
            "abc".to_owned(),
            "!!!".to_owned(),
            URL_SAFE_NO_PAD.encode("v2\n1\n2\n3\n4"),
            URL_SAFE_NO_PAD.encode(format!("v1\n1\n-210866803200000001\n{id}\nt")),
            URL_SAFE_NO_PAD.encode(format!("v1\n1\n{}\n{id}\nt", MAX_MICROS + 1)),
            URL_SAFE_NO_PAD.encode(format!("v1\n-1\n0\n{id}\nt")),
            URL_SAFE_NO_PAD.encode(format!("v1\n1\n0\n{id}\nt\0")),
        ] {
            assert_eq!(Cursor::decode(&garbage), None, "{garbage}");
        }
    }
}
