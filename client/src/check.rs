//! What audit-service accepts, on the client's side: `Event::validate` refuses what the
//! server would, by the same rules (`audit_contract::rules`), so that a bad event fails at
//! the call site rather than in the background; `Event::sanitized` makes what comes from a
//! request acceptable instead.

use std::net::IpAddr;

use audit_contract::rules::{
    EventFields, MAX_ID_LEN, MAX_KEY_LEN, MAX_METADATA_DEPTH, MAX_NAME_LEN, MAX_REASON_LEN,
    MAX_SAFE_INTEGER, MAX_TYPE_LEN, MAX_USER_AGENT_LEN, check_event, check_metadata, compact_len,
    depth, is_trace_id,
};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::Event;

impl Event {
    /// Checks what the server would refuse; the error's path is relative to the event.
    pub fn validate(&self) -> Result<()> {
        let context = self.context.as_ref();
        let fields = EventFields {
            action: &self.action,
            actor_id: &self.actor.id,
            actor_name: self.actor.name.as_deref(),
            target: self
                .target
                .as_ref()
                .map(|t| (t.kind.as_str(), t.id.as_str(), t.name.as_deref())),
            reason: self.reason.as_deref(),
            metadata: self.metadata.as_ref(),
            ip_address: context.and_then(|c| c.ip_address.as_deref()),
            user_agent: context.and_then(|c| c.user_agent.as_deref()),
            request_id: context.and_then(|c| c.request_id.as_deref()),
            trace_id: context.and_then(|c| c.trace_id.as_deref()),
            idempotency_key: self.idempotency_key.as_deref(),
            subject_ids: self.subject_ids.as_deref().unwrap_or_default(),
        };
        check_event(&fields).map_err(|broken| Error::invalid(&broken.field, broken.message))
    }
}

impl Event {
    /// Roughly what the event takes in memory and on the wire, for the buffer's byte bound.
    pub(crate) fn approx_size(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let mut size = 256 + self.actor.id.len() + text(&self.actor.name) + self.action.len();
        size += text(&self.reason) + text(&self.idempotency_key);
        size += (self.subject_ids.iter().flatten())
            .map(String::len)
            .sum::<usize>();
        if let Some(target) = &self.target {
            size += target.kind.len() + target.id.len() + text(&target.name);
        }
        if let Some(context) = &self.context {
            size +=
                text(&context.ip_address) + text(&context.user_agent) + text(&context.request_id);
        }
        size + self.metadata.as_ref().map_or(0, compact_len)
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

fn is_unsafe_integer(number: &serde_json::Number) -> bool {
    number.as_u64().is_some_and(|n| n > MAX_SAFE_INTEGER)
        || number
            .as_i64()
            .is_some_and(|n| n.unsigned_abs() > MAX_SAFE_INTEGER)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, Context, Target};

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
