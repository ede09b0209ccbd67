//! The canonical encoding of an event (version 1) and its chain hash: pure functions that
//! mirror `docs/chain.md`, the specification outside tools verify against.

use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use entity::audit_log;
use sea_orm::ActiveEnum;
use sha2::{Digest, Sha256};

use serde_json::Value;

/// Largest integer metadata may hold: the hash chain encodes numbers as IEEE doubles
/// (RFC 8785), exact only up to 2^53 - 1 (I-JSON, RFC 7493).
pub use audit_contract::rules::MAX_SAFE_INTEGER;

/// Rust's text form of an IP address, which is what the hash chain covers.
pub fn canonical_ip(ip: String) -> String {
    ip.parse::<IpAddr>().map(|ip| ip.to_string()).unwrap_or(ip)
}

/// A stored IP address in canonical form: PostgreSQL's `inet` reads back as `host/prefix`
/// and writes some IPv6 forms differently (`::1.2.3.4` for `::102:304`). Stored addresses
/// are canonical already otherwise, so those are the only ones re-parsed.
pub fn host_only(ip: &str) -> Cow<'_, str> {
    let reworded = ip.contains('/') || (ip.contains('.') && ip.contains(':'));
    if !reworded {
        return Cow::Borrowed(ip);
    }
    let host = ip.split_once('/').map_or(ip, |(host, _)| host);
    Cow::Owned(canonical_ip(host.to_owned()))
}

/// Version of the canonical encoding new events are hashed with, part of every hashed
/// event: 2 covers `trace_id`; 3 covers `personal`, the commitments to the personal values
/// that are `null` in their place (docs/privacy.md). Events keep the version they were
/// hashed with.
pub const CHAIN_VERSION: i16 = 3;
/// The versions this server reads.
pub const KNOWN_VERSIONS: [i16; 3] = [1, 2, 3];
/// `prev_hash` of a tenant's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// `SHA-256(prev_hash ‖ canonical_bytes(event))`.
pub fn chain_hash(prev_hash: &[u8], event: &audit_log::Model) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical_bytes(event));
    hasher.finalize().to_vec()
}

/// The event as RFC 8785 (JCS) JSON: every stored field but the hashes, keys sorted, no
/// whitespace, `null` for absent values, `seq` as a decimal string, timestamps as RFC 3339
/// UTC with exactly six fractional digits, ids in lower-case, IP addresses canonical.
///
/// The fixed fields are written by hand in key order (this runs once per ingested event);
/// `metadata` goes through a JCS serializer. A test checks the whole against JCS.
pub fn canonical_bytes(e: &audit_log::Model) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let ip = e.ip_address.as_deref().map(host_only);
    out.extend_from_slice(b"{\"action\":");
    string(&mut out, Some(&e.action));
    out.extend_from_slice(b",\"actor_id\":");
    string(&mut out, Some(&e.actor_id));
    out.extend_from_slice(b",\"actor_name\":");
    string(&mut out, e.actor_name.as_deref());
    out.extend_from_slice(b",\"actor_type\":");
    string(&mut out, Some(&e.actor_type.to_value()));
    let _ = write!(out, ",\"chain_version\":{},\"id\":", e.chain_version);
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    string(&mut out, Some(e.id.hyphenated().encode_lower(&mut id)));
    out.extend_from_slice(b",\"idempotency_key\":");
    string(&mut out, e.idempotency_key.as_deref());
    out.extend_from_slice(b",\"ip_address\":");
    string(&mut out, ip.as_deref());
    out.extend_from_slice(b",\"metadata\":");
    write_jcs(&mut out, &e.metadata);
    out.extend_from_slice(b",\"occurred_at\":");
    write_timestamp(&mut out, e.occurred_at);
    out.extend_from_slice(b",\"outcome\":");
    string(&mut out, Some(&e.outcome.to_value()));
    if e.chain_version >= 3 {
        out.extend_from_slice(b",\"personal\":");
        match e.personal.as_deref().map(serde_json::from_str::<Value>) {
            Some(Ok(commitments)) => write_jcs(&mut out, &commitments),
            // Unreadable commitments hash as the text they are, so the hash fails to match.
            Some(Err(_)) => string(&mut out, e.personal.as_deref()),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",\"reason\":");
    string(&mut out, e.reason.as_deref());
    out.extend_from_slice(b",\"recorded_at\":");
    write_timestamp(&mut out, e.recorded_at);
    out.extend_from_slice(b",\"request_id\":");
    string(&mut out, e.request_id.as_deref());
    out.extend_from_slice(b",\"seq\":");
    let _ = write!(out, "\"{}\"", e.seq);
    out.extend_from_slice(b",\"target_id\":");
    string(&mut out, e.target_id.as_deref());
    out.extend_from_slice(b",\"target_name\":");
    string(&mut out, e.target_name.as_deref());
    out.extend_from_slice(b",\"target_type\":");
    string(&mut out, e.target_type.as_deref());
    out.extend_from_slice(b",\"tenant_id\":");
    string(&mut out, Some(&e.tenant_id));
    if e.chain_version >= 2 {
        out.extend_from_slice(b",\"trace_id\":");
        string(&mut out, e.trace_id.as_deref());
    }
    out.extend_from_slice(b",\"user_agent\":");
    string(&mut out, e.user_agent.as_deref());
    out.push(b'}');
    out
}

/// A JSON value's RFC 8785 (JCS) bytes.
pub fn jcs(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_jcs(&mut out, value);
    out
}

/// A JSON value as RFC 8785 says: object keys sorted by UTF-16 code units, numbers as
/// ECMAScript prints them (`1e+21`, `0.0001`, `100` for 100.0, `0` for -0).
fn write_jcs(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => match n.as_i64() {
            // Integers metadata may hold (±(2^53 - 1)) print the same either way.
            Some(i) if i.unsigned_abs() <= MAX_SAFE_INTEGER => drop(write!(out, "{i}")),
            _ => {
                let f = n.as_f64().unwrap_or_default();
                out.extend_from_slice(ryu_js::Buffer::new().format(f).as_bytes());
            }
        },
        Value::String(text) => string(out, Some(text)),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_jcs(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, Some(key));
                out.push(b':');
                write_jcs(out, item);
            }
            out.push(b'}');
        }
    }
}

/// A JSON string or `null`. serde_json escapes exactly as JCS does: `"`, `\`, and control
/// characters (`\b \f \n \r \t`, else `\u00xx` in lower-case hex).
fn string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        // Writing a string to a Vec cannot fail.
        Some(s) => drop(serde_json::to_writer(&mut *out, s)),
        None => out.extend_from_slice(b"null"),
    }
}

/// RFC 3339 in UTC with exactly six fractional digits: `2026-01-02T03:04:05.123456Z`.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `timestamp` as a JSON string, written in place (it runs twice per ingested event).
fn write_timestamp(out: &mut Vec<u8>, at: DateTime<Utc>) {
    let _ = write!(
        out,
        "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\"",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond() / 1000
    );
}

/// One line of an export: the canonical encoding with `hash` and `prev_hash` (hex) added.
pub fn export_line(event: &audit_log::Model) -> Vec<u8> {
    let mut line = canonical_bytes(event);
    line.pop();
    line.reserve(2 * (event.hash.len() + event.prev_hash.len()) + 28);
    line.extend_from_slice(b",\"hash\":\"");
    push_hex(&mut line, &event.hash);
    line.extend_from_slice(b"\",\"prev_hash\":\"");
    push_hex(&mut line, &event.prev_hash);
    line.extend_from_slice(b"\"}\n");
    line
}

/// Appends `bytes` in lowercase hex, without a string of its own.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + 2 * bytes.len(), 0);
    // Fails only when the room is not twice the bytes, which it is.
    let _ = hex::encode_to_slice(bytes, &mut out[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use entity::audit_log::{ActorType, Outcome};
    use serde_json::json;

    fn sample() -> audit_log::Model {
        audit_log::Model {
            id: "01900000-0000-7000-8000-0000000000ab".parse().unwrap(),
            tenant_id: "acme".into(),
            seq: 7,
            occurred_at: "2026-01-02T03:04:05.120Z".parse().unwrap(),
            recorded_at: "2026-01-02T03:04:06Z".parse().unwrap(),
            actor_type: ActorType::User,
            actor_id: "u\"1\n".into(),
            actor_name: Some("Zoë 😀".into()),
            action: "project.created".into(),
            target_type: Some("project".into()),
            target_id: Some("p1".into()),
            target_name: None,
            outcome: Outcome::Success,
            reason: None,
            metadata: json!({ "z": 1.0, "a": [1e21, 1e-7, 0.1, -0.0, "\u{1f}", 9007199254740991u64, -42, 1.5e300, 123456789.125], "é": { "b": null, "a": true }, "\u{1F600}": 1, "\u{E000}": 2 }).into(),
            ip_address: Some("10.0.0.1/32".into()),
            user_agent: None,
            request_id: None,
            trace_id: None,
            chain_version: 1,
            idempotency_key: Some("k".into()),
            prev_hash: vec![],
            hash: vec![],
            personal: None,
        }
    }

    #[test]
    fn an_export_line_is_the_canonical_encoding_with_its_hashes_in_hex() {
        let mut event = sample();
        event.hash = vec![0xab, 0x01, 0x00];
        event.prev_hash = vec![0xff];
        let line = String::from_utf8(export_line(&event)).unwrap();
        let canonical = String::from_utf8(canonical_bytes(&event)).unwrap();
        let open = canonical.strip_suffix('}').unwrap();
        assert_eq!(
            line,
            format!("{open},\"hash\":\"ab0100\",\"prev_hash\":\"ff\"}}\n")
        );
    }

    #[test]
    fn hand_written_encoding_is_jcs() {
        let e = sample();
        let as_value = json!({
            "action": e.action, "actor_id": e.actor_id, "actor_name": e.actor_name,
            "actor_type": "user", "chain_version": 1, "id": e.id.to_string(),
            "idempotency_key": e.idempotency_key, "ip_address": "10.0.0.1",
            "metadata": *e.metadata, "occurred_at": "2026-01-02T03:04:05.120000Z",
            "outcome": "success", "reason": null, "recorded_at": "2026-01-02T03:04:06.000000Z",
            "request_id": null, "seq": "7", "target_id": "p1", "target_name": null,
            "target_type": "project", "tenant_id": "acme", "user_agent": null,
        });
        let jcs = serde_json_canonicalizer::to_vec(&as_value).unwrap();
        assert_eq!(
            String::from_utf8(canonical_bytes(&e)).unwrap(),
            String::from_utf8(jcs).unwrap()
        );
    }

    /// Version 2 is version 1 with `trace_id` (null when there is none).
    #[test]
    fn version_2_covers_the_trace_id() {
        let mut e = sample();
        let v1 = chain_hash(&GENESIS, &e);
        e.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        assert_eq!(
            chain_hash(&GENESIS, &e),
            v1,
            "version 1 does not cover trace_id"
        );
        e.chain_version = 2;
        let v2 = chain_hash(&GENESIS, &e);
        let mut as_value: Value = serde_json::from_slice(&canonical_bytes(&e)).unwrap();
        assert_eq!(as_value["chain_version"], 2);
        assert_eq!(as_value["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        as_value["trace_id"] = Value::Null;
        e.trace_id = None;
        let jcs = serde_json_canonicalizer::to_vec(&as_value).unwrap();
        assert_eq!(canonical_bytes(&e), jcs);
        assert_ne!(chain_hash(&GENESIS, &e), v2);
    }

    #[test]
    fn any_field_change_changes_the_hash() {
        let e = sample();
        let base = chain_hash(&GENESIS, &e);
        assert_eq!(base.len(), 32);
        let mut other = e.clone();
        other.reason = Some(String::new());
        assert_ne!(chain_hash(&GENESIS, &other), base, "null and empty differ");
        let mut other = e.clone();
        other.seq = 8;
        assert_ne!(chain_hash(&GENESIS, &other), base);
        assert_ne!(chain_hash(&[1; 32], &e), base);
    }
}
