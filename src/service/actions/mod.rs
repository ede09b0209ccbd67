//! The action registry of each tenant: what an action means, the JSON Schema (2020-12) its
//! metadata must satisfy, where its metadata holds personal data, and how long its personal
//! values are kept. Schemas are compiled once per registration and cached.
//!
//! Instances see each other's changes within `REFRESH` (their caches reload a tenant's
//! registry when it is older than that); the instance that made a change sees it at once.

pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::service::ingest::event::NewEvent;

/// How old a tenant's cached registry may be before it is read again.
const REFRESH: Duration = Duration::from_secs(1);
/// Largest metadata schema, as JSON text.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// Deepest nesting of a metadata schema.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Most personal paths per action.
pub const MAX_PERSONAL_PATHS: usize = 32;
/// Largest compiled regular expression of a schema's `pattern`s (the `regex` crate's
/// engine, linear in the text: no catastrophic backtracking).
const MAX_REGEX_BYTES: usize = 1 << 20;

/// A registered action.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    pub action: String,
    pub description: String,
    pub metadata_schema: Option<Value>,
    /// JSON Pointers into metadata (`/email`) of personal values.
    pub personal_paths: Vec<String>,
    /// Days the personal values of its events are kept; then they are erased.
    pub retention_days: Option<i32>,
    pub updated_at: DateTime<Utc>,
}

/// A change to a tenant's registry or settings; each is recorded as an event.
#[derive(Clone, Debug)]
pub enum Change {
    Register(Action),
    Remove(String),
    RequireRegistered(bool),
}

/// An action, ready to check events against.
struct Compiled {
    action: Action,
    validator: Option<jsonschema::Validator>,
}

/// A tenant's registry as cached.
struct Tenant {
    loaded: Instant,
    require_registered: bool,
    actions: HashMap<String, Arc<Compiled>>,
}

/// The registries of the tenants this instance writes for.
#[derive(Clone)]
pub struct Registry {
    db: DatabaseConnection,
    tenants: Arc<Mutex<HashMap<String, Arc<Tenant>>>>,
}

impl Registry {
    pub fn new(db: DatabaseConnection) -> Self {
        Registry {
            db,
            tenants: Arc::default(),
        }
    }

    /// Checks each event against its action's registration (schema; registration when the
    /// tenant requires it) and gives it the action's personal paths. Errors point into the
    /// list: `[2].metadata.role`.
    pub async fn prepare(&self, tenant_id: &str, events: &mut [NewEvent]) -> Result<()> {
        let tenant = self.tenant(tenant_id).await?;
        for (i, event) in events.iter_mut().enumerate() {
            let Some(compiled) = tenant.actions.get(&event.action) else {
                // audit-service's own actions (`audit.*`) need no registration.
                if tenant.require_registered && !event.action.starts_with("audit.") {
                    return Err(Error::bad_input(
                        format!("[{i}].action"),
                        format!(
                            "action `{}` is not registered, and this tenant requires \
                             registered actions (registerAuditAction)",
                            event.action
                        ),
                    ));
                }
                continue;
            };
            if let Some(validator) = &compiled.validator {
                let empty = Value::Object(Default::default());
                let metadata = event.metadata.as_ref().unwrap_or(&empty);
                if let Some(error) = validator.iter_errors(metadata).next() {
                    let field = field_path(error.instance_path().as_str());
                    return Err(Error::bad_input(
                        format!("[{i}].{field}"),
                        format!(
                            "metadata does not match the schema of `{}`: {error}",
                            event.action
                        ),
                    ));
                }
            }
            event
                .personal_paths
                .clone_from(&compiled.action.personal_paths);
        }
        Ok(())
    }

    /// Drops a tenant's cached registry (after a change this instance made).
    pub fn forget(&self, tenant_id: &str) {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant_id);
    }

    async fn tenant(&self, tenant_id: &str) -> Result<Arc<Tenant>> {
        let cached = (self.tenants.lock().unwrap_or_else(|e| e.into_inner()))
            .get(tenant_id)
            .cloned();
        if let Some(tenant) = cached.as_ref().filter(|t| t.loaded.elapsed() < REFRESH) {
            return Ok(tenant.clone());
        }
        let (require_registered, actions) = store::load(&self.db, tenant_id).await?;
        let mut compiled = HashMap::with_capacity(actions.len());
        for action in actions {
            // An unchanged registration keeps its compiled schema.
            let same = cached
                .as_ref()
                .and_then(|t| t.actions.get(&action.action))
                .filter(|c| c.action == action);
            let entry = match same {
                Some(same) => same.clone(),
                None => Arc::new(compile(action)?),
            };
            compiled.insert(entry.action.action.clone(), entry);
        }
        let tenant = Arc::new(Tenant {
            loaded: Instant::now(),
            require_registered,
            actions: compiled,
        });
        (self.tenants.lock().unwrap_or_else(|e| e.into_inner()))
            .insert(tenant_id.to_owned(), tenant.clone());
        Ok(tenant)
    }
}

/// Checks a registration before it is stored; error paths are the input's fields.
pub fn check(action: &Action) -> Result<()> {
    audit_contract::rules::check_action(&action.action)?;
    if action.description.chars().count() > 1000 {
        return Err(Error::bad_input(
            "description",
            "description has at most 1,000 characters",
        ));
    }
    if action.personal_paths.len() > MAX_PERSONAL_PATHS {
        return Err(Error::bad_input(
            "personalPaths",
            format!("at most {MAX_PERSONAL_PATHS} personal paths"),
        ));
    }
    for (i, path) in action.personal_paths.iter().enumerate() {
        if !path.starts_with('/') || path.len() > 256 || path.contains("~2") {
            return Err(Error::bad_input(
                format!("personalPaths[{i}]"),
                "a personal path is a JSON Pointer into metadata, like `/email` (at most 256 \
                 characters)",
            ));
        }
    }
    if action.retention_days.is_some_and(|d| d < 1) {
        return Err(Error::bad_input(
            "retentionDays",
            "retentionDays is 1 or more",
        ));
    }
    compile(action.clone()).map(drop)
}

/// Compiles an action's schema, refusing hostile ones: too large, too deep, with remote
/// references or with patterns the linear-time engine cannot take.
fn compile(action: Action) -> Result<Compiled> {
    let Some(schema) = &action.metadata_schema else {
        return Ok(Compiled {
            action,
            validator: None,
        });
    };
    let refuse = |message: String| Error::bad_input("metadataSchema", message);
    let size = serde_json::to_vec(schema).map_err(Error::internal)?.len();
    if size > MAX_SCHEMA_BYTES {
        return Err(refuse(format!(
            "a schema has at most {MAX_SCHEMA_BYTES} bytes of JSON"
        )));
    }
    if depth(schema) > MAX_SCHEMA_DEPTH {
        return Err(refuse(format!(
            "a schema nests at most {MAX_SCHEMA_DEPTH} levels"
        )));
    }
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_pattern_options(jsonschema::PatternOptions::regex().size_limit(MAX_REGEX_BYTES))
        .build(schema)
        .map_err(|e| refuse(format!("not a usable JSON Schema (2020-12): {e}")))?;
    Ok(Compiled {
        action,
        validator: Some(validator),
    })
}

/// How deep a JSON value nests (a scalar is 1).
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((value, level)) = stack.pop() {
        deepest = deepest.max(level);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, level + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, level + 1))),
            _ => {}
        }
    }
    deepest
}

/// A metadata JSON Pointer as a field path: `/role` → `metadata.role`, `/a/0` →
/// `metadata.a[0]`.
fn field_path(pointer: &str) -> String {
    let mut field = "metadata".to_owned();
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            field.push_str(&format!("[{token}]"));
        } else {
            field.push('.');
            field.push_str(&token);
        }
    }
    field
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_failing_field() {
        assert_eq!(field_path(""), "metadata");
        assert_eq!(field_path("/role"), "metadata.role");
        assert_eq!(field_path("/a/0/b~1c"), "metadata.a[0].b/c");
    }

    #[test]
    fn refuses_hostile_schemas() {
        let action = |schema: Value| Action {
            action: "project.created".into(),
            description: String::new(),
            metadata_schema: Some(schema),
            personal_paths: vec![],
            retention_days: None,
            updated_at: Utc::now(),
        };
        let mut deep = json!({"type": "object"});
        for _ in 0..40 {
            deep = json!({ "properties": { "a": deep } });
        }
        assert!(check(&action(deep)).is_err());
        assert!(check(&action(json!({ "$ref": "https://example.com/s.json" }))).is_err());
        assert!(
            check(&action(json!({ "pattern": "(?=a)b" }))).is_err(),
            "lookaround"
        );
        assert!(check(&action(json!({ "type": "object", "required": ["role"] }))).is_ok());
    }
}
