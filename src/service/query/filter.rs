//! Which events a reader wants: the filter's checks, its SQL on both backends, and its
//! in-memory form for the live tail, side by side so that the three keep one meaning.
//! `tests/api/filter.rs` checks, over generated filters and events, that they agree.

use chrono::{DateTime, Utc};
use entity::audit_log::{self, ActorType, Column, Outcome};
use sea_orm::sea_query::extension::postgres::PgBinOper;
use sea_orm::sea_query::{BinOper, Expr, ExprTrait, Func, SimpleExpr};
use sea_orm::{ColumnTrait, Condition, DbBackend};
use serde_json::Value;

use crate::error::{Error, Result};
use audit_contract::rules::{
    MAX_ID_LEN, MAX_KEY_LEN, MAX_TYPE_LEN, check_id, check_json_object, is_valid_action,
    is_valid_segment,
};

/// Most values in one list filter.
pub const MAX_FILTER_VALUES: usize = 100;

/// Which events to read. Lists match any of their values; absent fields do not filter.
/// Stored as JSON (a stream's filter) without its tenants, which the reader sets.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// The tenants the caller may read; always set by the server, never by the input alone.
    #[serde(skip)]
    pub tenant_ids: Vec<String>,
    pub actor_ids: Option<Vec<String>>,
    pub actor_types: Option<Vec<ActorType>>,
    /// Exact actions, or prefixes written `project.*`.
    pub actions: Option<Vec<String>>,
    pub target_type: Option<String>,
    pub target_ids: Option<Vec<String>>,
    pub outcomes: Option<Vec<Outcome>>,
    /// Inclusive lower bound on `occurred_at`.
    pub occurred_after: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `occurred_at`.
    pub occurred_before: Option<DateTime<Utc>>,
    pub request_id: Option<String>,
    /// JSON containment: the event's metadata contains this object.
    pub metadata: Option<Value>,
}
impl Filter {
    /// Checks the filter's shape; paths are relative to the filter (`actions[2]`).
    pub fn validate(&self) -> Result<()> {
        let lists = [
            ("actorIds", self.actor_ids.as_ref().map(Vec::len)),
            ("actorTypes", self.actor_types.as_ref().map(Vec::len)),
            ("actions", self.actions.as_ref().map(Vec::len)),
            ("targetIds", self.target_ids.as_ref().map(Vec::len)),
            ("outcomes", self.outcomes.as_ref().map(Vec::len)),
        ];
        for (field, len) in lists {
            if let Some(len) = len {
                check_list(field, len)?;
            }
        }
        for (i, action) in self.actions.iter().flatten().enumerate() {
            let valid = match action.strip_suffix(".*") {
                Some(prefix) => {
                    let segments: Vec<&str> = prefix.split('.').collect();
                    segments.len() <= 3 && segments.iter().all(|s| is_valid_segment(s))
                }
                None => is_valid_action(action),
            };
            if !valid {
                return Err(Error::bad_input(
                    format!("actions[{i}]"),
                    "actions entries are actions (`project.created`) or prefixes (`project.*`)",
                ));
            }
        }
        if self.target_ids.is_some() && self.target_type.is_none() {
            return Err(Error::bad_input("targetIds", "targetIds needs targetType"));
        }
        // Values no stored event can hold: refused alike on both databases.
        let ids = [
            ("actorIds", self.actor_ids.as_deref(), MAX_ID_LEN),
            ("targetIds", self.target_ids.as_deref(), MAX_ID_LEN),
        ];
        for (field, values, max) in ids {
            for (i, value) in values.into_iter().flatten().enumerate() {
                check_id(&format!("{field}[{i}]"), value, max)?;
            }
        }
        if let Some(kind) = &self.target_type {
            check_id("targetType", kind, MAX_TYPE_LEN)?;
        }
        if let Some(request_id) = &self.request_id {
            check_id("requestId", request_id, MAX_KEY_LEN)?;
        }
        if let Some(metadata) = &self.metadata {
            check_json_object("metadata", metadata)?;
        }
        Ok(())
    }

    /// Checks the tenants a filter asks for (`tenantIds`), before access decides on them.
    pub fn validate_tenants(tenant_ids: &[String]) -> Result<()> {
        check_list("tenantIds", tenant_ids.len())?;
        for (i, tenant_id) in tenant_ids.iter().enumerate() {
            check_id(&format!("tenantIds[{i}]"), tenant_id, MAX_ID_LEN)?;
        }
        Ok(())
    }

    /// The SQL condition; `validate` must have passed.
    pub fn condition(&self, backend: DbBackend) -> Result<Condition> {
        let mut all = Condition::all().add(Column::TenantId.is_in(self.tenant_ids.clone()));
        if let Some(ids) = &self.actor_ids {
            all = all.add(Column::ActorId.is_in(ids.clone()));
        }
        if let Some(types) = &self.actor_types {
            all = all.add(Column::ActorType.is_in(types.iter().copied()));
        }
        if let Some(actions) = &self.actions {
            let mut any = Condition::any();
            for action in actions {
                any = any.add(match action.strip_suffix('*') {
                    // `project.` up to, not including, `project/`: '/' follows '.' in byte
                    // order, and the column compares bytes (COLLATE "C" on PostgreSQL).
                    Some(prefix) => Condition::all()
                        .add(Column::Action.gte(prefix))
                        .add(Column::Action.lt(format!("{}/", &prefix[..prefix.len() - 1]))),
                    None => Condition::all().add(Column::Action.eq(action.as_str())),
                });
            }
            all = all.add(any);
        }
        if let Some(target_type) = &self.target_type {
            all = all.add(Column::TargetType.eq(target_type.as_str()));
        }
        if let Some(ids) = &self.target_ids {
            all = all.add(Column::TargetId.is_in(ids.clone()));
        }
        if let Some(outcomes) = &self.outcomes {
            all = all.add(Column::Outcome.is_in(outcomes.iter().copied()));
        }
        if let Some(after) = self.occurred_after {
            all = all.add(Column::OccurredAt.gte(after));
        }
        if let Some(before) = self.occurred_before {
            all = all.add(Column::OccurredAt.lt(before));
        }
        if let Some(request_id) = &self.request_id {
            all = all.add(Column::RequestId.eq(request_id.as_str()));
        }
        if let Some(metadata) = &self.metadata {
            all = all.add(match backend {
                DbBackend::Postgres => Expr::col(Column::Metadata).binary(
                    PgBinOper::Contains,
                    Expr::val(metadata.clone()).cast_as("jsonb"),
                ),
                _ => sqlite_contains("$", metadata)?,
            });
        }
        Ok(all)
    }

    /// Whether a stored event matches, evaluated in the server (for live subscriptions): the
    /// same meaning as the SQL condition, including JSON containment for `metadata`.
    pub fn matches(&self, e: &audit_log::Model) -> bool {
        let any = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref().is_none_or(|l| l.iter().any(|v| v == value))
        };
        self.tenant_ids.contains(&e.tenant_id)
            && any(&self.actor_ids, &e.actor_id)
            && self
                .actor_types
                .as_ref()
                .is_none_or(|t| t.contains(&e.actor_type))
            && self.actions.as_ref().is_none_or(|actions| {
                actions.iter().any(|a| match a.strip_suffix('*') {
                    Some(prefix) => e.action.starts_with(prefix),
                    None => *a == e.action,
                })
            })
            && self
                .target_type
                .as_ref()
                .is_none_or(|t| e.target_type.as_ref() == Some(t))
            && self
                .target_ids
                .as_ref()
                .is_none_or(|ids| e.target_id.as_ref().is_some_and(|id| ids.contains(id)))
            && self
                .outcomes
                .as_ref()
                .is_none_or(|o| o.contains(&e.outcome))
            && self.occurred_after.is_none_or(|t| e.occurred_at >= t)
            && self.occurred_before.is_none_or(|t| e.occurred_at < t)
            && self
                .request_id
                .as_ref()
                .is_none_or(|r| e.request_id.as_ref() == Some(r))
            && self
                .metadata
                .as_ref()
                .is_none_or(|m| json_contains(&e.metadata, m))
    }
}

/// A list filter holds 1 to `MAX_FILTER_VALUES` values.
fn check_list(field: &str, len: usize) -> Result<()> {
    if len == 0 {
        return Err(Error::bad_input(
            field,
            format!("{field} must not be empty; leave it out to not filter on it"),
        ));
    }
    if len > MAX_FILTER_VALUES {
        return Err(Error::bad_input(
            field,
            format!("{field} holds at most {MAX_FILTER_VALUES} values"),
        ));
    }
    Ok(())
}

/// JSON containment for SQLite, which has no `@>`: objects recurse by key, scalars compare
/// type and value, arrays must contain each listed scalar.
fn sqlite_contains(path: &str, wanted: &Value) -> Result<SimpleExpr> {
    let metadata = || Expr::col((audit_log::Entity, Column::Metadata));
    let json_type = |path: &str| Expr::expr(Func::cust("json_type").arg(metadata()).arg(path));
    let unsupported = || {
        Error::bad_input(
            "metadata",
            "on SQLite, metadata filters support objects (keys without `\"` or `\\`), scalars and \
             arrays of scalars",
        )
    };
    Ok(match wanted {
        Value::Object(map) => {
            let mut all = json_type(path).eq("object");
            for (key, value) in map {
                if key.contains(['"', '\\']) {
                    return Err(unsupported());
                }
                all = all.and(sqlite_contains(&format!("{path}.\"{key}\""), value)?);
            }
            all
        }
        Value::Array(items) => {
            let mut all = json_type(path).eq("array");
            for item in items {
                let (types, value) = scalar(item).ok_or_else(unsupported)?;
                all = all.and(Expr::cust_with_values(
                    format!(
                        "EXISTS (SELECT 1 FROM json_each(\"audit_logs\".\"metadata\", ?) AS e \
                         WHERE e.type IN ({types}) AND e.atom IS ?)"
                    ),
                    [sea_orm::Value::from(path.to_owned()), value],
                ));
            }
            all
        }
        scalar_value => {
            let (types, value) = scalar(scalar_value).ok_or_else(unsupported)?;
            let extract = Expr::expr(Func::cust("json_extract").arg(metadata()).arg(path));
            Expr::cust_with_exprs(
                format!("json_type(\"audit_logs\".\"metadata\", ?) IN ({types})"),
                [Expr::val(path)],
            )
            .and(extract.binary(BinOper::Is, Expr::val(value)))
        }
    })
}

/// SQLite's JSON type names for a scalar, and its SQL value.
fn scalar(value: &Value) -> Option<(&'static str, sea_orm::Value)> {
    Some(match value {
        Value::Null => ("'null'", sea_orm::Value::String(None)),
        Value::Bool(true) => ("'true'", 1i64.into()),
        Value::Bool(false) => ("'false'", 0i64.into()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ("'integer', 'real'", i.into()),
            None => ("'integer', 'real'", n.as_f64()?.into()),
        },
        Value::String(s) => ("'text'", s.clone().into()),
        _ => return None,
    })
}

/// PostgreSQL's `@>` on JSON values: objects contain objects key by key, arrays contain every
/// wanted element somewhere, scalars are equal (numbers by value).
fn json_contains(have: &Value, wanted: &Value) -> bool {
    match (have, wanted) {
        (Value::Object(have), Value::Object(wanted)) => wanted
            .iter()
            .all(|(k, w)| have.get(k).is_some_and(|h| json_contains(h, w))),
        (Value::Array(have), Value::Array(wanted)) => wanted
            .iter()
            .all(|w| have.iter().any(|h| json_contains(h, w))),
        (Value::Number(h), Value::Number(w)) => h.as_f64() == w.as_f64(),
        (h, w) => h == w,
    }
}
