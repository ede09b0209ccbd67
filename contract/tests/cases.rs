//! The rules against `contract/cases.json`, the cases the Node kit and the server are held
//! to as well: a rule that drifts in one of them fails here or there.

#![expect(clippy::expect_used, reason = "a malformed case fails the test loudly")]

use audit_contract::rules::{EventFields, check_event};
use serde_json::Value;

/// `{"$repeat": s, "times": n, "prefix": p}` and `{"$array": v, "times": n}` written out.
fn expand(value: &Value) -> Value {
    match value {
        Value::Object(map) if map.contains_key("$repeat") => {
            let times = map["times"].as_u64().expect("times") as usize;
            let prefix = map.get("prefix").and_then(Value::as_str).unwrap_or("");
            let unit = map["$repeat"].as_str().expect("a string to repeat");
            Value::String(format!("{prefix}{}", unit.repeat(times)))
        }
        Value::Object(map) if map.contains_key("$array") => {
            let times = map["times"].as_u64().expect("times") as usize;
            Value::Array(vec![map["$array"].clone(); times])
        }
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), expand(v))).collect(),
        Value::Array(items) => items.iter().map(expand).collect(),
        other => other.clone(),
    }
}

fn text<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

#[test]
fn every_case_is_refused_at_its_field_or_accepted() {
    let cases: Value =
        serde_json::from_str(include_str!("../cases.json")).expect("cases.json is JSON");
    let cases = cases["cases"].as_array().expect("cases");
    assert!(cases.len() >= 50, "{} cases", cases.len());
    for case in cases {
        let event = expand(&case["event"]);
        let subjects: Vec<String> = (event.get("subjectIds").and_then(Value::as_array))
            .map(|ids| {
                let id = |v: &Value| v.as_str().expect("a subject id is a string").to_owned();
                ids.iter().map(id).collect()
            })
            .unwrap_or_default();
        let fields = EventFields {
            action: text(&event, &["action"]).expect("action"),
            actor_id: text(&event, &["actor", "id"]).expect("actor.id"),
            actor_name: text(&event, &["actor", "name"]),
            target: event.get("target").map(|t| {
                (
                    text(t, &["type"]).expect("target.type"),
                    text(t, &["id"]).expect("target.id"),
                    text(t, &["name"]),
                )
            }),
            reason: text(&event, &["reason"]),
            metadata: event.get("metadata"),
            ip_address: text(&event, &["context", "ipAddress"]),
            user_agent: text(&event, &["context", "userAgent"]),
            request_id: text(&event, &["context", "requestId"]),
            trace_id: text(&event, &["context", "traceId"]),
            idempotency_key: text(&event, &["idempotencyKey"]),
            subject_ids: &subjects,
        };
        let refused = check_event(&fields).err().map(|v| v.field);
        assert_eq!(
            refused.as_deref(),
            case["field"].as_str(),
            "{}",
            case["name"]
        );
    }
}
