//! What audit-service accepts, on the client's side: `Event::validate` refuses what the
//! server would (so a bad event fails at the call site, not in the background), and
//! `Event::sanitized` makes what comes from a request acceptable instead.

use std::net::IpAddr;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::Event;

/// Limits the server enforces, checked here too so that a bad event fails at the call
/// site instead of in the background.
const MAX_ACTION_LEN: usize = 128;
const MAX_ID_LEN: usize = 256;
const MAX_TYPE_LEN: usize = 64;
const MAX_NAME_LEN: usize = 256;
const MAX_REASON_LEN: usize = 4096;
const MAX_USER_AGENT_LEN: usize = 1024;
const MAX_KEY_LEN: usize = 256;
const MAX_METADATA_BYTES: usize = 64 * 1024;
const MAX_METADATA_DEPTH: usize = 32;

impl Event {
    /// Checks what the server would refuse; the error's path is relative to the event.
    pub fn validate(&self) -> Result<()> {
        check_action(&self.action)?;
        check_id("actor.id", &self.actor.id, MAX_ID_LEN)?;
        check_text("actor.name", self.actor.name.as_deref(), MAX_NAME_LEN)?;
        if let Some(target) = &self.target {
            check_id("target.type", &target.kind, MAX_TYPE_LEN)?;
            check_id("target.id", &target.id, MAX_ID_LEN)?;
            check_text("target.name", target.name.as_deref(), MAX_NAME_LEN)?;
        }
        check_text("reason", self.reason.as_deref(), MAX_REASON_LEN)?;
        if let Some(metadata) = &self.metadata {
            check_metadata(metadata)?;
        }
        if let Some(context) = &self.context {
            if let Some(ip) = &context.ip_address
                && ip.parse::<IpAddr>().is_err()
            {
                return Err(Error::invalid(
                    "context.ipAddress",
                    "context.ipAddress is not an IPv4 or IPv6 address",
                ));
            }
            check_text(
                "context.userAgent",
                context.user_agent.as_deref(),
                MAX_USER_AGENT_LEN,
            )?;
            if let Some(id) = &context.request_id {
                check_id("context.requestId", id, MAX_KEY_LEN)?;
            }
            if context
                .trace_id
                .as_deref()
                .is_some_and(|id| !is_trace_id(id))
            {
                return Err(Error::invalid(
                    "context.traceId",
                    "context.traceId is not a W3C trace id (32 lower-case hex digits, not all zero)",
                ));
            }
        }
        if let Some(key) = &self.idempotency_key {
            check_id("idempotencyKey", key, MAX_KEY_LEN)?;
        }
        Ok(())
    }
}

impl Event {
    /// Roughly what the event takes in memory and on the wire, for the buffer's byte bound.
    pub(crate) fn approx_size(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let mut size = 256 + self.actor.id.len() + text(&self.actor.name) + self.action.len();
        size += text(&self.reason) + text(&self.idempotency_key);
        if let Some(target) = &self.target {
            size += target.kind.len() + target.id.len() + text(&target.name);
        }
        if let Some(context) = &self.context {
            size +=
                text(&context.ip_address) + text(&context.user_agent) + text(&context.request_id);
        }
        size + self.metadata.as_ref().map_or(0, json_size)
    }

    /// The event with every value the server would refuse made acceptable: what the Layer
    /// and the Extension record comes from requests, and a hostile request must not be
    /// able to keep its own event out of the log. Control characters become U+FFFD, long
    /// text is cut, a blank id becomes `-`, a bad IP address is dropped, and metadata over
    /// the limits is replaced by a note saying so. Only the action is left as it is.
    pub(crate) fn sanitized(mut self) -> Event {
        self.actor.id = clean_id(&self.actor.id, MAX_ID_LEN);
        self.actor.name = self.actor.name.map(|n| clean_text(&n, MAX_NAME_LEN));
        if let Some(target) = &mut self.target {
            target.kind = clean_id(&target.kind, MAX_TYPE_LEN);
            target.id = clean_id(&target.id, MAX_ID_LEN);
            target.name = target.name.take().map(|n| clean_text(&n, MAX_NAME_LEN));
        }
        self.reason = self.reason.map(|r| clean_text(&r, MAX_REASON_LEN));
        if let Some(metadata) = &mut self.metadata {
            if depth(metadata) <= MAX_METADATA_DEPTH {
                clean_json(metadata);
            }
            if check_metadata(metadata).is_err() {
                *metadata = serde_json::json!({
                    "$omitted": "the details were larger or deeper than metadata may be"
                });
            }
        }
        if let Some(context) = &mut self.context {
            if context
                .ip_address
                .as_deref()
                .is_some_and(|ip| ip.parse::<IpAddr>().is_err())
            {
                context.ip_address = None;
            }
            context.user_agent = context
                .user_agent
                .take()
                .map(|ua| clean_text(&ua, MAX_USER_AGENT_LEN));
            context.request_id = context
                .request_id
                .take()
                .map(|id| clean_id(&id, MAX_KEY_LEN));
            context.trace_id = context.trace_id.take().filter(|id| is_trace_id(id));
        }
        self
    }
}

/// A W3C Trace Context trace id: 32 lower-case hex digits, not all zero.
pub(crate) fn is_trace_id(id: &str) -> bool {
    id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.bytes().any(|b| b != b'0')
}

/// An identifier the server accepts: no control characters, not blank, bounded.
pub(crate) fn clean_id(id: &str, max: usize) -> String {
    let cleaned: String = id
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .take(max)
        .collect();
    if cleaned.trim().is_empty() {
        "-".to_owned()
    } else {
        cleaned
    }
}

fn clean_text(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .take(max)
        .collect()
}

/// Dot-separated lower-case segments, 2 to 4 of them, `[a-z][a-z0-9_]*` each.
pub fn is_valid_action(action: &str) -> bool {
    let segments = action.split('.');
    let count = segments.clone().count();
    action.len() <= MAX_ACTION_LEN
        && (2..=4).contains(&count)
        && segments.into_iter().all(is_segment)
}

fn is_segment(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_action(action: &str) -> Result<()> {
    if is_valid_action(action) {
        return Ok(());
    }
    Err(Error::invalid(
        "action",
        format!(
            "action {action:?} is not 2 to 4 dot-separated lower-case segments matching \
             [a-z][a-z0-9_]* (at most {MAX_ACTION_LEN} characters), like `project.created`"
        ),
    ))
}

fn check_id(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, format!("{field} must not be empty")));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    check_len(field, value, max)
}

fn check_text(field: &str, value: Option<&str>, max: usize) -> Result<()> {
    let Some(value) = value else { return Ok(()) };
    if value.contains('\0') {
        return Err(Error::invalid(
            field,
            format!("{field} must not contain NUL characters"),
        ));
    }
    check_len(field, value, max)
}

fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    if value.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("{field} is longer than {max} characters"),
        ));
    }
    Ok(())
}

fn check_metadata(metadata: &Value) -> Result<()> {
    if !metadata.is_object() {
        return Err(Error::invalid("metadata", "metadata must be a JSON object"));
    }
    if depth(metadata) > MAX_METADATA_DEPTH {
        return Err(Error::invalid(
            "metadata",
            format!("metadata nests deeper than {MAX_METADATA_DEPTH} levels"),
        ));
    }
    if has_nul(metadata) {
        return Err(Error::invalid(
            "metadata",
            "metadata must not contain NUL characters",
        ));
    }
    if has_unsafe_integer(metadata) {
        return Err(Error::invalid(
            "metadata",
            "metadata integers must be between -(2^53 - 1) and 2^53 - 1",
        ));
    }
    let size = json_size(metadata);
    if size > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!("metadata is {size} bytes, more than the limit of {MAX_METADATA_BYTES}"),
        ));
    }
    Ok(())
}

/// Largest integer metadata may hold: the hash chain encodes numbers as IEEE doubles.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

fn is_unsafe_integer(number: &serde_json::Number) -> bool {
    number.as_u64().is_some_and(|n| n > MAX_SAFE_INTEGER)
        || number
            .as_i64()
            .is_some_and(|n| n.unsigned_abs() > MAX_SAFE_INTEGER)
}

fn has_unsafe_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => is_unsafe_integer(n),
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

/// Makes JSON acceptable as metadata: NUL becomes U+FFFD (in keys too), and integers the
/// chain cannot hold exactly become strings. Recursion is bounded by the caller's depth check.
fn clean_json(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Value::Number(n) if is_unsafe_integer(n) => *value = Value::String(n.to_string()),
        Value::Array(items) => items.iter_mut().for_each(clean_json),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace('\0', "\u{FFFD}"), v))
                    .collect();
            }
            map.values_mut().for_each(clean_json);
        }
        _ => {}
    }
}

/// The size of compact JSON, without building it.
fn json_size(value: &Value) -> usize {
    let mut size = ByteCount(0);
    match serde_json::to_writer(&mut size, value) {
        Ok(()) => size.0,
        Err(_) => usize::MAX,
    }
}

/// Counts what is written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, Context, Target};

    #[test]
    fn actions_follow_the_servers_rule() {
        for good in ["project.created", "a.b.c.d", "api_key.rotated", "x1.y_2"] {
            assert!(is_valid_action(good), "{good}");
        }
        for bad in [
            "project",
            "Project.created",
            "a.b.c.d.e",
            "project..x",
            "1a.b",
            "a.b-c",
            "",
        ] {
            assert!(!is_valid_action(bad), "{bad}");
        }
    }

    #[test]
    fn sanitized_events_pass() {
        let mut event = Event::new(Actor::user("\t"), "project.deleted");
        event.target = Some(Target::new("project", format!("a\0b{}", "x".repeat(300))));
        event.reason = Some("r\0".into());
        event.metadata = Some(serde_json::json!({ "big": "y".repeat(70_000) }));
        let mut small = event.clone();
        small.metadata = Some(serde_json::json!({ "a\0": ["b\0", 9_007_199_254_740_993u64, -1] }));
        assert!(small.validate().is_err());
        assert_eq!(
            small.sanitized().metadata,
            Some(serde_json::json!({ "a\u{FFFD}": ["b\u{FFFD}", "9007199254740993", -1] }))
        );
        event.context = Some(Context {
            ip_address: Some("not-an-ip".into()),
            user_agent: Some("ua\0".into()),
            request_id: Some(" ".into()),
            trace_id: Some("4BF92F3577B34DA6A3CE929D0E0E4736".into()),
        });
        assert!(event.validate().is_err());
        let event = event.sanitized();
        event.validate().expect("valid once sanitized");
        assert_eq!(event.actor.id, "\u{FFFD}");
        let target = event.target.as_ref().expect("target");
        assert!(target.id.starts_with("a\u{FFFD}b") && target.id.chars().count() == 256);
        let context = event.context.expect("context");
        assert_eq!(
            (context.ip_address, context.request_id.as_deref()),
            (None, Some("-"))
        );
        assert_eq!(context.trace_id, None, "not a trace id: dropped");
    }

    #[test]
    fn invalid_events_name_their_field() {
        let mut event = Event::new(Actor::user(" "), "project.created");
        assert_eq!(event.validate().unwrap_err().field(), Some("actor.id"));
        event.actor.id = "u".into();
        event.metadata = Some(serde_json::json!([1]));
        assert_eq!(event.validate().unwrap_err().field(), Some("metadata"));
        event.metadata = None;
        event.action = "Project.Created".into();
        assert_eq!(event.validate().unwrap_err().field(), Some("action"));
    }
}
