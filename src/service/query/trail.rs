//! The audit trails of many actors or targets at once: the first page of each, and their
//! counts, in one statement per batch however many subjects it holds (federation entities).

use std::collections::HashMap;

use entity::audit_log::{self, ActorType, Column};
use sea_orm::sea_query::{Alias, Asterisk, Expr, ExprTrait, Query, UnionType};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QueryResult, QuerySelect, QueryTrait, StreamTrait,
};

use super::pages::{Full, beyond, decoded};
use crate::error::Result;
use crate::service::capacity::memory::Meter;
use crate::service::query::cursor::Cursor;
use crate::service::query::filter::Filter;

/// Whose trail: an actor's or a target's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Actor(ActorType, String),
    Target(String, String),
}

impl Subject {
    fn condition(&self) -> Condition {
        match self {
            Subject::Actor(kind, id) => Condition::all()
                .add(Column::ActorType.eq(*kind))
                .add(Column::ActorId.eq(id.as_str())),
            Subject::Target(kind, id) => Condition::all()
                .add(Column::TargetType.eq(kind.as_str()))
                .add(Column::TargetId.eq(id.as_str())),
        }
    }

    fn owns(&self, e: &audit_log::Model) -> bool {
        match self {
            Subject::Actor(kind, id) => e.actor_type == *kind && e.actor_id == *id,
            Subject::Target(kind, id) => {
                e.target_type.as_ref() == Some(kind) && e.target_id.as_ref() == Some(id)
            }
        }
    }
}

/// Up to `limit` newest events of each subject (after `after`, when given), matching the
/// filter: one `UNION ALL` of per-subject index scans.
pub async fn pages(
    db: &(impl ConnectionTrait + StreamTrait),
    subjects: &[Subject],
    filter: &Filter,
    after: Option<&Cursor>,
    limit: u64,
    meter: &Meter,
) -> Result<HashMap<Subject, Vec<audit_log::Model>>> {
    let backend = ConnectionTrait::get_database_backend(db);
    let condition = filter.condition(backend)?;
    let mut union: Option<sea_orm::sea_query::SelectStatement> = None;
    for (i, subject) in subjects.iter().enumerate() {
        let mut select = audit_log::Entity::find()
            .filter(condition.clone())
            .filter(subject.condition());
        if let Some(cursor) = after {
            select = select.filter(beyond(cursor, true));
        }
        let page = select
            .order_by_desc(Column::OccurredAt)
            .order_by_desc(Column::Id)
            .limit(limit)
            .into_query();
        // Each member in its own subquery: SQLite allows no ORDER BY or LIMIT in a member.
        let member = Query::select()
            .column(Asterisk)
            .from_subquery(page, Alias::new(format!("s{i}")))
            .to_owned();
        union = Some(match union {
            None => member,
            Some(mut union) => {
                union.union(UnionType::All, member);
                union
            }
        });
    }
    let mut pages: HashMap<Subject, Vec<audit_log::Model>> =
        subjects.iter().map(|s| (s.clone(), Vec::new())).collect();
    let Some(union) = union else { return Ok(pages) };
    // Its columns come in the table's order, not `Column`'s: decoded by name.
    let decode = |row: &QueryResult| audit_log::Model::from_query_result(row, "");
    let rows = decoded(db, backend.build(&union), meter, Full::Fail, decode).await?;
    for row in rows {
        if let Some(subject) = subjects.iter().find(|s| s.owns(&row)) {
            pages.entry(subject.clone()).or_default().push(row);
        }
    }
    for page in pages.values_mut() {
        page.sort_by_key(|e| std::cmp::Reverse((e.occurred_at, e.id)));
    }
    Ok(pages)
}

/// How many events of each subject match the filter, in one grouped count.
pub async fn counts(
    db: &impl ConnectionTrait,
    subjects: &[Subject],
    filter: &Filter,
) -> Result<HashMap<Subject, u64>> {
    let backend = db.get_database_backend();
    let mut any = Condition::any();
    for subject in subjects {
        any = any.add(subject.condition());
    }
    let (kind, id) = match subjects.first() {
        Some(Subject::Actor(..)) => (Column::ActorType, Column::ActorId),
        _ => (Column::TargetType, Column::TargetId),
    };
    let query = audit_log::Entity::find()
        .select_only()
        .column(kind)
        .column(id)
        .column_as(Expr::col(Column::Id).count(), "n")
        .filter(filter.condition(backend)?)
        .filter(any)
        .group_by(kind)
        .group_by(id)
        .build(backend);
    let rows = db.query_all_raw(query).await?;
    let mut counts: HashMap<Subject, u64> = subjects.iter().map(|s| (s.clone(), 0)).collect();
    for row in rows {
        let n: i64 = row.try_get("", "n")?;
        let subject = match subjects.first() {
            Some(Subject::Actor(..)) => {
                Subject::Actor(row.try_get("", "actor_type")?, row.try_get("", "actor_id")?)
            }
            _ => Subject::Target(
                row.try_get("", "target_type")?,
                row.try_get("", "target_id")?,
            ),
        };
        if let Some(count) = counts.get_mut(&subject) {
            *count = n as u64;
        }
    }
    Ok(counts)
}
