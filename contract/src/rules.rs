//! The limits every event must meet, and the checks that apply them. The server answers a
//! broken rule with `BAD_USER_INPUT` at the field the `Violation` names; the kits refuse
//! the event before sending it.

use std::net::IpAddr;

use serde_json::Value;

/// Most events in one `logAuditEvents` call.
pub const MAX_BATCH: usize = 1000;
/// Longest action, in characters.
pub const MAX_ACTION_LEN: usize = 128;
/// Fewest and most dot-separated segments of an action.
pub const ACTION_SEGMENTS: std::ops::RangeInclusive<usize> = 2..=4;
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
/// Deepest nesting of arrays and objects in metadata (and in metadata filters): far below
/// what any reader of stored events recurses through (serde_json stops at 128).
pub const MAX_METADATA_DEPTH: usize = 32;
/// Largest integer JSON numbers may hold exactly in every reader: 2^53 − 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Most data subjects an event may name in `subjectIds` (besides its actor).
pub const MAX_SUBJECTS: usize = 16;
/// How far in the future `occurredAt` may be, in seconds, to allow for clock skew between
/// services.
pub const MAX_FUTURE_SKEW_SECONDS: i64 = 300;

/// A rule an input breaks: the path of the field (relative to the event, `actor.id`) and
/// what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl Violation {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Violation {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Violation {}

type Checked = Result<(), Violation>;

/// An event's fields as the rules see them, whatever type holds them.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventFields<'e> {
    pub action: &'e str,
    pub actor_id: &'e str,
    pub actor_name: Option<&'e str>,
    /// Type, id and name.
    pub target: Option<(&'e str, &'e str, Option<&'e str>)>,
    pub reason: Option<&'e str>,
    pub metadata: Option<&'e Value>,
    pub ip_address: Option<&'e str>,
    pub user_agent: Option<&'e str>,
    pub request_id: Option<&'e str>,
    pub trace_id: Option<&'e str>,
    pub idempotency_key: Option<&'e str>,
    /// The data subjects the event names besides its actor (docs/privacy.md).
    pub subject_ids: &'e [String],
}

/// Checks every field of an event but its time (see [`MAX_FUTURE_SKEW_SECONDS`]), in a
/// fixed order: the first broken rule is the one reported.
pub fn check_event(event: &EventFields<'_>) -> Checked {
    check_action(event.action)?;
    check_id("actor.id", event.actor_id, MAX_ID_LEN)?;
    check_text("actor.name", event.actor_name, MAX_NAME_LEN)?;
    if let Some((kind, id, name)) = event.target {
        check_id("target.type", kind, MAX_TYPE_LEN)?;
        check_id("target.id", id, MAX_ID_LEN)?;
        check_text("target.name", name, MAX_NAME_LEN)?;
    }
    check_text("reason", event.reason, MAX_REASON_LEN)?;
    if let Some(metadata) = event.metadata {
        check_metadata(metadata)?;
    }
    if let Some(ip) = event.ip_address
        && ip.parse::<IpAddr>().is_err()
    {
        return Err(Violation::new(
            "context.ipAddress",
            "context.ipAddress is not an IPv4 or IPv6 address",
        ));
    }
    check_text("context.userAgent", event.user_agent, MAX_USER_AGENT_LEN)?;
    if let Some(id) = event.request_id {
        check_id("context.requestId", id, MAX_KEY_LEN)?;
    }
    if let Some(id) = event.trace_id
        && !is_trace_id(id)
    {
        return Err(Violation::new(
            "context.traceId",
            "context.traceId is not a W3C trace id (32 lower-case hex digits, not all zero)",
        ));
    }
    if let Some(key) = event.idempotency_key {
        check_id("idempotencyKey", key, MAX_KEY_LEN)?;
    }
    check_subjects(event.subject_ids)
}

/// At most [`MAX_SUBJECTS`] subject ids, each an id of at most [`MAX_ID_LEN`] characters.
pub fn check_subjects(ids: &[String]) -> Checked {
    if ids.len() > MAX_SUBJECTS {
        return Err(Violation::new(
            "subjectIds",
            format!("subjectIds names at most {MAX_SUBJECTS} data subjects"),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        check_id(&format!("subjectIds[{i}]"), id, MAX_ID_LEN)?;
    }
    Ok(())
}

/// Dot-separated lower-case segments, 2 to 4 of them, `[a-z][a-z0-9_]*` each, at most
/// [`MAX_ACTION_LEN`] characters.
pub fn is_valid_action(action: &str) -> bool {
    let segments = action.split('.');
    action.len() <= MAX_ACTION_LEN
        && ACTION_SEGMENTS.contains(&segments.clone().count())
        && segments.into_iter().all(is_valid_segment)
}

/// One segment of an action: `[a-z][a-z0-9_]*`.
pub fn is_valid_segment(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The action rule, as a check of the field `action`.
pub fn check_action(action: &str) -> Checked {
    if is_valid_action(action) {
        return Ok(());
    }
    Err(Violation::new(
        "action",
        format!(
            "action must be 2 to 4 dot-separated lower-case segments matching [a-z][a-z0-9_]* \
             and at most {MAX_ACTION_LEN} characters, like `project.created`"
        ),
    ))
}

/// An identifier: not blank, no control characters, at most `max` characters. Also what
/// filters and arguments naming identifiers must be, so that bad ones get the same answer
/// everywhere.
pub fn check_id(field: &str, value: &str, max: usize) -> Checked {
    if value.trim().is_empty() {
        return Err(Violation::new(field, format!("{field} must not be empty")));
    }
    if value.chars().any(char::is_control) {
        return Err(Violation::new(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    check_len(field, value, max)
}

/// Free text: at most `max` characters, and no NUL (PostgreSQL cannot store it).
pub fn check_text(field: &str, value: Option<&str>, max: usize) -> Checked {
    let Some(value) = value else { return Ok(()) };
    if value.contains('\0') {
        return Err(Violation::new(
            field,
            format!("{field} must not contain NUL characters"),
        ));
    }
    check_len(field, value, max)
}

fn check_len(field: &str, value: &str, max: usize) -> Checked {
    if value.chars().count() > max {
        return Err(Violation::new(
            field,
            format!("{field} is longer than {max} characters"),
        ));
    }
    Ok(())
}

/// A W3C trace id: 32 lower-case hex digits, not all zero.
pub fn is_trace_id(id: &str) -> bool {
    id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.bytes().any(|b| b != b'0')
}

/// Metadata: a JSON object as [`check_json_object`] says, whose integers are within
/// ±[`MAX_SAFE_INTEGER`].
pub fn check_metadata(metadata: &Value) -> Checked {
    check_json_object("metadata", metadata)?;
    if has_unsafe_integer(metadata) {
        return Err(Violation::new(
            "metadata",
            "metadata integers must be between -(2^53 - 1) and 2^53 - 1",
        ));
    }
    Ok(())
}

/// A JSON object as metadata or a metadata filter: nested at most [`MAX_METADATA_DEPTH`]
/// deep, no NUL in keys or strings (PostgreSQL cannot store it), at most
/// [`MAX_METADATA_BYTES`] of compact JSON and [`MAX_METADATA_VALUES`] values.
pub fn check_json_object(field: &str, value: &Value) -> Checked {
    if !value.is_object() {
        return Err(Violation::new(
            field,
            format!("{field} must be a JSON object"),
        ));
    }
    if depth(value) > MAX_METADATA_DEPTH {
        return Err(Violation::new(
            field,
            format!("{field} nests deeper than {MAX_METADATA_DEPTH} levels"),
        ));
    }
    if has_nul(value) {
        return Err(Violation::new(
            field,
            format!("{field} must not contain NUL characters"),
        ));
    }
    let values = count_values(value);
    if values > MAX_METADATA_VALUES {
        return Err(Violation::new(
            field,
            format!("{field} holds {values} values, more than the limit of {MAX_METADATA_VALUES}"),
        ));
    }
    let size = compact_len(value);
    if size > MAX_METADATA_BYTES {
        return Err(Violation::new(
            field,
            format!("{field} is {size} bytes, more than the limit of {MAX_METADATA_BYTES}"),
        ));
    }
    Ok(())
}

/// How deeply arrays and objects nest (a scalar is 0). Recursion stays within what serde
/// let through: 128 levels.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// How many values `value` holds, itself included.
pub fn count_values(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_values).sum(),
        Value::Object(map) => map.values().map(count_values).sum(),
        _ => 0,
    }
}

/// The length of `value` as compact JSON.
pub fn compact_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
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
    use serde_json::json;

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

    #[test]
    fn the_first_broken_rule_is_reported_at_its_field() {
        let metadata = json!({ "a": vec![0; MAX_METADATA_VALUES] });
        let event = EventFields {
            action: "project.created",
            actor_id: "u-1",
            metadata: Some(&metadata),
            trace_id: Some("00"),
            ..EventFields::default()
        };
        let broken = check_event(&event).unwrap_err();
        assert_eq!(broken.field, "metadata");
        assert!(broken.message.contains("4098 values"), "{broken}");
        let event = EventFields {
            metadata: None,
            ..event
        };
        assert_eq!(check_event(&event).unwrap_err().field, "context.traceId");
        assert_eq!(
            compact_len(&json!({"a": [1, "é"]})),
            r#"{"a":[1,"é"]}"#.len()
        );
    }
}
