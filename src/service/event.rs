//! An event as a caller submits it, its validation, and the limits that validation enforces.

use std::net::IpAddr;

use chrono::{DateTime, Duration, Timelike, Utc};
use entity::audit_log::{self, ActorType, Outcome};
use serde_json::Value;
use uuid::Uuid;

use super::canonical::{
    CHAIN_VERSION, MAX_SAFE_INTEGER, canonical_bytes, canonical_ip, chain_hash,
};
use crate::error::{Error, Result};
use crate::telemetry::is_trace_id;

/// Most events in one `logAuditEvents` call.
pub const MAX_BATCH: usize = 1000;
/// Longest action, in characters.
pub const MAX_ACTION_LEN: usize = 128;
/// Longest actor or target id, in characters.
pub const MAX_ID_LEN: usize = 256;
/// Longest target type, in characters.
pub const MAX_TYPE_LEN: usize = 64;
/// Longest actor or target name, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Longest reason, in characters.
pub const MAX_REASON_LEN: usize = 4096;
/// Longest user agent, in characters.
pub const MAX_USER_AGENT_LEN: usize = 1024;
/// Longest request id or idempotency key, in characters.
pub const MAX_KEY_LEN: usize = 256;
/// Largest metadata object, in bytes of compact JSON.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Most values in a metadata object (each object, array, string, number, boolean and null
/// counts one): what bounds its size once decoded, which compact text does not (an empty
/// array is two bytes of text and 72 in memory, a one-element array 360).
pub const MAX_METADATA_VALUES: usize = 4096;
/// The most a metadata object within the limits takes once decoded (`service::memory`).
pub const MAX_METADATA_MEMORY: usize = 3 << 19;
/// How far in the future `occurredAt` may be, to allow for clock skew between services.
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);

/// The target of an operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub kind: String,
    pub id: String,
    pub name: Option<String>,
}

/// An event as submitted; the server adds id, tenant, sequence and timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub actor_type: ActorType,
    pub actor_id: String,
    pub actor_name: Option<String>,
    pub action: String,
    pub target: Option<Target>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub metadata: Option<Value>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// A W3C trace id: 32 lower-case hex digits, not all zero.
    pub trace_id: Option<String>,
    pub idempotency_key: Option<String>,
}

impl NewEvent {
    /// Checks every field; the error's path is relative to the event (`action`, `actor.id`).
    pub fn validate(&self, now: DateTime<Utc>) -> Result<()> {
        check_action(&self.action)?;
        check_id("actor.id", &self.actor_id, MAX_ID_LEN)?;
        check_text("actor.name", self.actor_name.as_deref(), MAX_NAME_LEN)?;
        if let Some(target) = &self.target {
            check_id("target.type", &target.kind, MAX_TYPE_LEN)?;
            check_id("target.id", &target.id, MAX_ID_LEN)?;
            check_text("target.name", target.name.as_deref(), MAX_NAME_LEN)?;
        }
        check_text("reason", self.reason.as_deref(), MAX_REASON_LEN)?;
        if let Some(at) = self.occurred_at {
            check_occurred_at(at, now)?;
        }
        if let Some(metadata) = &self.metadata {
            check_metadata(metadata)?;
        }
        if let Some(ip) = &self.ip_address
            && ip.parse::<IpAddr>().is_err()
        {
            return Err(Error::bad_input(
                "context.ipAddress",
                "context.ipAddress is not an IPv4 or IPv6 address",
            ));
        }
        check_text(
            "context.userAgent",
            self.user_agent.as_deref(),
            MAX_USER_AGENT_LEN,
        )?;
        if let Some(id) = &self.request_id {
            check_id("context.requestId", id, MAX_KEY_LEN)?;
        }
        if let Some(id) = &self.trace_id
            && !is_trace_id(id)
        {
            return Err(Error::bad_input(
                "context.traceId",
                "context.traceId is not a W3C trace id (32 lower-case hex digits, not all zero)",
            ));
        }
        if let Some(key) = &self.idempotency_key {
            check_id("idempotencyKey", key, MAX_KEY_LEN)?;
        }
        Ok(())
    }

    /// The row this event becomes, chained to `prev_hash`. Timestamps are cut to
    /// microseconds, the precision both databases store, so the returned row equals the
    /// stored one.
    pub fn into_model(
        self,
        tenant_id: &str,
        seq: i64,
        recorded_at: DateTime<Utc>,
        prev_hash: Vec<u8>,
    ) -> audit_log::Model {
        let mut model = self.into_unhashed(Uuid::now_v7(), tenant_id, seq, recorded_at);
        model.prev_hash = prev_hash;
        model.hash = chain_hash(&model.prev_hash, &model);
        model
    }

    fn into_unhashed(
        self,
        id: Uuid,
        tenant_id: &str,
        seq: i64,
        recorded_at: DateTime<Utc>,
    ) -> audit_log::Model {
        let (target_type, target_id, target_name) = match self.target {
            Some(t) => (Some(t.kind), Some(t.id), t.name),
            None => (None, None, None),
        };
        audit_log::Model {
            id,
            tenant_id: tenant_id.to_owned(),
            seq,
            occurred_at: micros(self.occurred_at.unwrap_or(recorded_at)),
            recorded_at: micros(recorded_at),
            actor_type: self.actor_type,
            actor_id: self.actor_id,
            actor_name: self.actor_name,
            action: self.action,
            target_type,
            target_id,
            target_name,
            outcome: self.outcome,
            reason: self.reason,
            metadata: self
                .metadata
                .unwrap_or_else(|| Value::Object(Default::default()))
                .into(),
            ip_address: self.ip_address.map(canonical_ip),
            user_agent: self.user_agent,
            request_id: self.request_id,
            trace_id: self.trace_id,
            chain_version: CHAIN_VERSION,
            idempotency_key: self.idempotency_key,
            prev_hash: Vec::new(),
            hash: Vec::new(),
        }
    }

    /// Whether `stored` records this same event, for idempotent retries: the row this event
    /// would become, in the place of `stored`, has the same canonical encoding (the one the
    /// hash chain covers), so whatever a database gives back for a value (`1e16` as an
    /// integer, an address as `host/prefix`) equals its retry. `occurredAt` is compared
    /// only when the caller gave it: a retry without it means "now" both times.
    pub fn same_content(&self, stored: &audit_log::Model) -> bool {
        let mut retry = self.clone().into_unhashed(
            stored.id,
            &stored.tenant_id,
            stored.seq,
            stored.recorded_at,
        );
        if self.occurred_at.is_none() {
            retry.occurred_at = stored.occurred_at;
        }
        // An event stored before an upgrade keeps the version it was hashed with; and a
        // retry usually comes in another trace, so the trace id is the stored one's.
        retry.chain_version = stored.chain_version;
        retry.trace_id.clone_from(&stored.trace_id);
        canonical_bytes(&retry) == canonical_bytes(stored)
    }
}

/// Cuts a timestamp to microseconds.
pub fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(at.nanosecond() / 1000 * 1000)
        .unwrap_or(at)
}

/// Dot-separated lower-case segments, 2 to 4 of them, `[a-z][a-z0-9_]*` each.
pub fn is_valid_action(action: &str) -> bool {
    let segments: Vec<&str> = action.split('.').collect();
    action.len() <= MAX_ACTION_LEN
        && (2..=4).contains(&segments.len())
        && segments.iter().all(|s| is_valid_segment(s))
}

pub fn is_valid_segment(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_action(action: &str) -> Result<()> {
    if is_valid_action(action) {
        return Ok(());
    }
    Err(Error::bad_input(
        "action",
        format!(
            "action must be 2 to 4 dot-separated lower-case segments matching [a-z][a-z0-9_]* \
             and at most {MAX_ACTION_LEN} characters, like `project.created`"
        ),
    ))
}

/// An identifier: not blank, no control characters, bounded. Also what filters and
/// arguments naming identifiers must be, so that bad ones get the same answer everywhere.
pub fn check_id(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::bad_input(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::bad_input(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    check_len(field, value, max)
}

/// Free text: bounded, and no NUL (PostgreSQL cannot store it).
fn check_text(field: &str, value: Option<&str>, max: usize) -> Result<()> {
    let Some(value) = value else { return Ok(()) };
    if value.contains('\0') {
        return Err(Error::bad_input(
            field,
            format!("{field} must not contain NUL characters"),
        ));
    }
    check_len(field, value, max)
}

fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    if value.chars().count() > max {
        return Err(Error::bad_input(
            field,
            format!("{field} is longer than {max} characters"),
        ));
    }
    Ok(())
}

/// Between 1970 and 5 minutes from now, with no leap second: both databases store such an
/// instant exactly as given, so its hash still matches when read back.
fn check_occurred_at(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
    if at > now + MAX_FUTURE_SKEW {
        return Err(Error::bad_input(
            "occurredAt",
            "occurredAt is more than 5 minutes in the future",
        ));
    }
    if at < DateTime::UNIX_EPOCH {
        return Err(Error::bad_input("occurredAt", "occurredAt is before 1970"));
    }
    if at.nanosecond() >= 1_000_000_000 {
        return Err(Error::bad_input(
            "occurredAt",
            "occurredAt may not be a leap second",
        ));
    }
    Ok(())
}

/// Deepest nesting of arrays and objects in metadata (and in metadata filters): far below
/// what any reader of stored events recurses through (serde_json stops at 128).
pub const MAX_METADATA_DEPTH: usize = 32;

fn check_metadata(metadata: &Value) -> Result<()> {
    check_json_object("metadata", metadata)?;
    if has_unsafe_integer(metadata) {
        return Err(Error::bad_input(
            "metadata",
            "metadata integers must be between -(2^53 - 1) and 2^53 - 1",
        ));
    }
    Ok(())
}

/// A JSON object as metadata or a metadata filter: nested at most `MAX_METADATA_DEPTH`
/// deep, no NUL in keys or strings (PostgreSQL cannot store it), at most 64 KiB and
/// `MAX_METADATA_VALUES` values.
pub fn check_json_object(field: &str, value: &Value) -> Result<()> {
    if !value.is_object() {
        return Err(Error::bad_input(
            field,
            format!("{field} must be a JSON object"),
        ));
    }
    if depth(value) > MAX_METADATA_DEPTH {
        return Err(Error::bad_input(
            field,
            format!("{field} nests deeper than {MAX_METADATA_DEPTH} levels"),
        ));
    }
    if has_nul(value) {
        return Err(Error::bad_input(
            field,
            format!("{field} must not contain NUL characters"),
        ));
    }
    let values = count_values(value);
    if values > MAX_METADATA_VALUES {
        return Err(Error::bad_input(
            field,
            format!("{field} holds {values} values, more than the limit of {MAX_METADATA_VALUES}"),
        ));
    }
    let size = serde_json::to_vec(value).map_err(Error::internal)?.len();
    if size > MAX_METADATA_BYTES {
        return Err(Error::bad_input(
            field,
            format!("{field} is {size} bytes, more than the limit of {MAX_METADATA_BYTES}"),
        ));
    }
    Ok(())
}

/// How deeply arrays and objects nest (a scalar is 0). Recursion stays within what serde
/// let through: 128 levels.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// How many values `value` holds, itself included.
fn count_values(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_values).sum(),
        Value::Object(map) => map.values().map(count_values).sum(),
        _ => 0,
    }
}

fn has_unsafe_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            n.as_u64().is_some_and(|u| u > MAX_SAFE_INTEGER)
                || n.as_i64()
                    .is_some_and(|i| i.unsigned_abs() > MAX_SAFE_INTEGER)
        }
        Value::Array(items) => items.iter().any(has_unsafe_integer),
        Value::Object(map) => map.values().any(has_unsafe_integer),
        _ => false,
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::memory::value_size;
    use serde_json::json;

    #[test]
    fn metadata_within_the_limits_stays_small_in_memory() {
        let most = MAX_METADATA_VALUES;
        let nested = |n: usize| (0..n).fold(json!(0), |inner, _| json!([inner]));
        let shapes = [
            json!({ "a": vec![0; most - 2] }),
            json!({ "a": vec![json!({}); most - 2] }),
            json!({ "a": vec![json!([]); most - 2] }),
            json!({ "a": vec![json!({ "": 0 }); (most - 2) / 2] }),
            json!({ "a": vec![json!([[0]]); (most - 2) / 3] }),
            json!({ "a": vec![nested(30); (most - 2) / 31] }),
        ];
        for metadata in shapes {
            check_metadata(&metadata).unwrap();
            let size = value_size(&metadata);
            assert!(
                size <= MAX_METADATA_MEMORY,
                "{size} bytes: {:.60}",
                metadata.to_string()
            );
        }
        let over = json!({ "a": vec![0; most] });
        let refused = check_metadata(&over).unwrap_err();
        assert!(refused.to_string().contains("4098 values"), "{refused}");
    }

    #[test]
    fn action_format() {
        for ok in [
            "project.created",
            "project.member.added",
            "a.b.c.d",
            "role_x.assigned2",
        ] {
            assert!(is_valid_action(ok), "{ok}");
        }
        for bad in [
            "project",
            "Project.created",
            "project..created",
            "project.",
            ".project",
            "a.b.c.d.e",
            "project.1created",
            "project.created!",
            "proj ect.created",
            "",
        ] {
            assert!(!is_valid_action(bad), "{bad}");
        }
        assert!(!is_valid_action(&format!("a.{}", "b".repeat(127))));
    }
}
