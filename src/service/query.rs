//! Reading events: filters, keyset pages on `(occurred_at, id)`, and counts.
//!
//! Every filter maps to an indexed column; pages never use OFFSET, so page 2,000 costs what
//! page 1 costs.

use chrono::{DateTime, Utc};
use entity::audit_log::{self, ActorType, Column, Outcome};
use sea_orm::sea_query::extension::postgres::PgBinOper;
use sea_orm::sea_query::{BinOper, Expr, ExprTrait, Func, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, Order, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, Statement,
};
use serde_json::Value;
use uuid::Uuid;

use super::cursor::Cursor;
use super::event::{
    MAX_ID_LEN, MAX_KEY_LEN, MAX_TYPE_LEN, check_id, check_json_object, is_valid_action,
    is_valid_segment,
};
use crate::error::{Error, Result};

/// Default page size.
pub const DEFAULT_PAGE: u64 = 50;
/// Largest page size.
pub const MAX_PAGE: u64 = 500;
/// Most values in one list filter.
pub const MAX_FILTER_VALUES: usize = 100;

/// Which events to read. Lists match any of their values; absent fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The tenants the caller may read; always set by the server, never by the input alone.
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

/// Page order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PageOrder {
    #[default]
    NewestFirst,
    OldestFirst,
}

/// Relay-style page arguments.
#[derive(Clone, Debug, Default)]
pub struct PageArgs {
    pub first: Option<i32>,
    pub after: Option<String>,
    pub last: Option<i32>,
    pub before: Option<String>,
    pub order: PageOrder,
}

/// One page, in the requested order.
#[derive(Clone, Debug)]
pub struct Page {
    pub rows: Vec<audit_log::Model>,
    pub has_next_page: bool,
    pub has_previous_page: bool,
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
    pub(super) fn condition(&self, backend: DbBackend) -> Result<Condition> {
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
            "on SQLite, metadata filters support objects, scalars and arrays of scalars",
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

/// One event by id, within the caller's tenants.
pub async fn find(
    db: &impl ConnectionTrait,
    tenant_ids: &[String],
    id: Uuid,
) -> Result<Option<audit_log::Model>> {
    Ok(audit_log::Entity::find_by_id(id)
        .filter(Column::TenantId.is_in(tenant_ids.to_vec()))
        .one(db)
        .await?)
}

/// How many events match.
pub async fn count(db: &impl ConnectionTrait, filter: &Filter) -> Result<u64> {
    let condition = filter.condition(db.get_database_backend())?;
    Ok(audit_log::Entity::find()
        .filter(condition)
        .count(db)
        .await?)
}

/// One page of matching events. `want_far_side` asks for the flag that needs an extra
/// probe (`hasPreviousPage` after `after`, `hasNextPage` before `before`).
pub async fn page(
    db: &impl ConnectionTrait,
    filter: &Filter,
    args: &PageArgs,
    want_far_side: bool,
) -> Result<Page> {
    let scan = Scan::new(filter, args, db.get_database_backend())?;
    let mut rows = scan.select().all(db).await?;
    let has_more = rows.len() as u64 > scan.size;
    rows.truncate(scan.size as usize);
    if !scan.forward {
        rows.reverse();
    }
    let far_side = match scan.far_side_probe() {
        Some(probe) if want_far_side => probe.one(db).await?.is_some(),
        _ => false,
    };
    let (has_next_page, has_previous_page) = if scan.forward {
        (has_more, far_side)
    } else {
        (far_side, has_more)
    };
    Ok(Page {
        rows,
        has_next_page,
        has_previous_page,
    })
}

/// The SQL of a page, for EXPLAIN.
pub fn page_statement(filter: &Filter, args: &PageArgs, backend: DbBackend) -> Result<Statement> {
    Ok(Scan::new(filter, args, backend)?.select().build(backend))
}

/// How to read one page: the filter, the cursor bounds, the direction.
struct Scan {
    condition: Condition,
    size: u64,
    /// Paging with `first` (towards the end of the order) rather than `last`.
    forward: bool,
    newest_first: bool,
    after: Option<Cursor>,
    before: Option<Cursor>,
}

impl Scan {
    fn new(filter: &Filter, args: &PageArgs, backend: DbBackend) -> Result<Self> {
        Ok(Scan {
            condition: filter.condition(backend)?,
            size: page_size(args.first, args.last)?,
            forward: args.last.is_none(),
            newest_first: args.order == PageOrder::NewestFirst,
            after: decode_cursor(args.after.as_deref(), "after")?,
            before: decode_cursor(args.before.as_deref(), "before")?,
        })
    }

    /// One row more than the page, to tell whether more follow.
    fn select(&self) -> Select<audit_log::Entity> {
        // "after" lies towards the end of the page order, "before" towards its start.
        let mut select = audit_log::Entity::find().filter(self.condition.clone());
        if let Some(c) = &self.after {
            select = select.filter(beyond(c, self.newest_first));
        }
        if let Some(c) = &self.before {
            select = select.filter(beyond(c, !self.newest_first));
        }
        ordered(select, self.newest_first == self.forward).limit(self.size + 1)
    }

    /// A one-row query for anything on the other side of the cursor the page starts from.
    fn far_side_probe(&self) -> Option<Select<audit_log::Entity>> {
        let (cursor, page_side_is_older) = if self.forward {
            (self.after.as_ref()?, self.newest_first)
        } else {
            (self.before.as_ref()?, !self.newest_first)
        };
        let page_side = beyond(cursor, page_side_is_older);
        let probe = audit_log::Entity::find().filter(self.condition.clone());
        Some(probe.filter(page_side.not()).limit(1))
    }
}

/// The page size asked for with `first` or `last` (at most one of them), or the default.
pub fn page_size(first: Option<i32>, last: Option<i32>) -> Result<u64> {
    let (field, size) = match (first, last) {
        (Some(_), Some(_)) => {
            return Err(Error::bad_input("last", "give `first` or `last`, not both"));
        }
        (Some(n), None) => ("first", n),
        (None, Some(n)) => ("last", n),
        (None, None) => return Ok(DEFAULT_PAGE),
    };
    if size < 0 || size as u64 > MAX_PAGE {
        return Err(Error::bad_input(
            field,
            format!("{field} must be between 0 and {MAX_PAGE}"),
        ));
    }
    Ok(size as u64)
}

/// The cursor in argument `field`, if given; an error names the argument.
pub fn decode_cursor(cursor: Option<&str>, field: &str) -> Result<Option<Cursor>> {
    cursor
        .map(|text| {
            Cursor::decode(text)
                .ok_or_else(|| Error::bad_input(field, format!("{field} is not a valid cursor")))
        })
        .transpose()
}

/// Rows strictly older than `c` (when `older`) or strictly newer, in `(occurred_at, id)`.
pub(super) fn beyond(c: &Cursor, older: bool) -> SimpleExpr {
    let row = Expr::tuple([Expr::col(Column::OccurredAt), Expr::col(Column::Id)]);
    let at = Expr::tuple([Expr::val(c.occurred_at), Expr::val(c.id)]);
    if older { row.lt(at) } else { row.gt(at) }
}

fn ordered(select: Select<audit_log::Entity>, newest_first: bool) -> Select<audit_log::Entity> {
    let order = if newest_first {
        Order::Desc
    } else {
        Order::Asc
    };
    select
        .order_by(Column::OccurredAt, order.clone())
        .order_by(Column::Id, order)
}

impl Filter {
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

/// Events of one tenant with a sequence number above `after`, matching the filter, in
/// sequence (commit) order: the replay that precedes a live subscription.
pub async fn replay(
    db: &impl ConnectionTrait,
    filter: &Filter,
    tenant_id: &str,
    after: i64,
    limit: u64,
) -> Result<Vec<audit_log::Model>> {
    let condition = filter.condition(db.get_database_backend())?;
    Ok(audit_log::Entity::find()
        .filter(condition)
        .filter(Column::TenantId.eq(tenant_id))
        .filter(Column::Seq.gt(after))
        .order_by_asc(Column::Seq)
        .limit(limit)
        .all(db)
        .await?)
}

/// One tenant's events with sequence numbers in `first..=last`, in order.
pub async fn range(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    first: i64,
    last: i64,
) -> Result<Vec<audit_log::Model>> {
    Ok(audit_log::Entity::find()
        .filter(Column::TenantId.eq(tenant_id))
        .filter(Column::Seq.between(first, last))
        .order_by_asc(Column::Seq)
        .all(db)
        .await?)
}
