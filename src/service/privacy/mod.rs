//! Privacy by design (docs/privacy.md): an event's personal values are sealed under its
//! data subjects' keys before it is stored, its hash covers salted commitments to them, and
//! erasing a subject destroys its key and its sealed values while every hash and proof
//! stays as it was.

pub mod keyring;
pub mod seal;
pub mod store;

use std::collections::BTreeMap;

use entity::audit_log;
use serde_json::Value;

use seal::Values;

/// What a reader without `audit:pii` sees in place of a personal value.
pub const REDACTED: &str = "[redacted]";
/// What every reader sees in place of an erased value.
pub const ERASED: &str = "[erased]";

/// The personal fields every event may have, by path.
pub const ACTOR_NAME: &str = "actor.name";
pub const IP_ADDRESS: &str = "context.ipAddress";
pub const USER_AGENT: &str = "context.userAgent";
/// The path of a personal value in metadata: `metadata` and its JSON Pointer.
const METADATA: &str = "metadata";

/// Takes a row's personal values out of it, leaving `null` in their place: the fixed
/// personal fields and what the JSON Pointers `pointers` reach in its metadata.
pub fn take(model: &mut audit_log::Model, pointers: &[String]) -> Values {
    let mut values = Values::new();
    let mut field = |path: &str, value: Option<String>| {
        if let Some(value) = value {
            values.insert(path.to_owned(), Value::String(value));
        }
    };
    field(ACTOR_NAME, model.actor_name.take());
    field(IP_ADDRESS, model.ip_address.take());
    field(USER_AGENT, model.user_agent.take());
    for pointer in pointers {
        if let Some(value) = model.metadata.0.pointer_mut(pointer)
            && !value.is_null()
        {
            values.insert(format!("{METADATA}{pointer}"), value.take());
        }
    }
    values
}

/// How a reader sees a version-3 event's personal values.
pub enum Shown<'a> {
    /// In clear, those not erased (`audit:pii`).
    Clear(Option<&'a Values>),
    Redacted,
}

/// The paths a stored row has commitments for (its personal values), with the commitments.
pub fn commitments(model: &audit_log::Model) -> BTreeMap<String, String> {
    (model.personal.as_deref())
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// The row as a reader sees it: each personal value in its place, in clear, `[redacted]` or
/// `[erased]`. A row without personal values comes back as it is.
pub fn show(model: &audit_log::Model, shown: &Shown<'_>) -> audit_log::Model {
    let mut model = model.clone();
    for path in commitments(&model).into_keys() {
        let value = match shown {
            Shown::Redacted => Value::from(REDACTED),
            Shown::Clear(values) => values
                .and_then(|v| v.get(&path))
                .cloned()
                .unwrap_or_else(|| Value::from(ERASED)),
        };
        let text = || match &value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        match path.as_str() {
            ACTOR_NAME => model.actor_name = Some(text()),
            IP_ADDRESS => model.ip_address = Some(text()),
            USER_AGENT => model.user_agent = Some(text()),
            metadata => {
                if let Some(pointer) = metadata.strip_prefix(METADATA)
                    && let Some(slot) = model.metadata.0.pointer_mut(pointer)
                {
                    *slot = value;
                }
            }
        }
    }
    model
}
