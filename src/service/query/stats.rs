//! Event counts grouped by dimensions and time buckets (`auditLogStats`).
//!
//! Answered from the rollups (`audit_stats` by hour, `audit_stats_daily` by day, both kept
//! by the ingest transaction and by retention) when they hold what the question needs: the
//! daily one for the whole days of the question, the hourly one for the hours around them.
//! Otherwise counted from the events themselves, over at most `RAW_WINDOW_DAYS` so that one
//! request cannot scan a tenant's whole history.

use chrono::{DateTime, Duration, Utc};
use entity::audit_log;
use entity::audit_log::{ActorType, Outcome};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query, SelectStatement, UnionType};
use sea_orm::{ActiveEnum, Condition, ConnectionTrait, DbBackend, QueryResult};

use crate::error::{Error, Result};
use crate::service::query::filter::Filter;

/// Most buckets in one answer.
pub const MAX_BUCKETS: u64 = 1000;
/// Widest time window counted from the events themselves.
pub const RAW_WINDOW_DAYS: i64 = 31;

/// What events can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Action,
    ActorId,
    ActorType,
    TargetType,
    Outcome,
    TenantId,
}

/// The length of a time bucket; buckets start at UTC boundaries, weeks on Mondays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
    Week,
    Month,
}

/// One group's count; what was not grouped by is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub start: Option<DateTime<Utc>>,
    pub action: Option<String>,
    pub actor_id: Option<String>,
    pub actor_type: Option<ActorType>,
    pub target_type: Option<String>,
    pub outcome: Option<Outcome>,
    pub tenant_id: Option<String>,
    pub count: i64,
}

/// The start of the hour of `at`, in seconds since 1970: the rollup's time key.
pub fn hour_start(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(3600) * 3600
}

/// SQL for the start of the hour of column `occurred_at`, in seconds since 1970.
pub fn hour_sql(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "(floor(extract(epoch FROM occurred_at) / 3600) * 3600)::bigint",
        _ => "(CAST(strftime('%s', occurred_at) AS INTEGER) / 3600 * 3600)",
    }
}

/// SQL for the start of the bucket holding the hour (or day) starting at `hour` (seconds
/// since 1970).
fn bucket_sql(backend: DbBackend, hour: &str, interval: Interval) -> String {
    match (interval, backend) {
        (Interval::Hour, _) => hour.to_owned(),
        (Interval::Day, _) => format!("({hour} - {hour} % 86400)"),
        // 1970-01-05 (345,600 s) was a Monday.
        (Interval::Week, _) => {
            format!("({hour} - (({hour} - 345600) % 604800 + 604800) % 604800)")
        }
        (Interval::Month, DbBackend::Postgres) => format!(
            "extract(epoch FROM date_trunc('month', to_timestamp({hour}) AT TIME ZONE 'UTC'))::bigint"
        ),
        (Interval::Month, _) => {
            format!("CAST(strftime('%s', {hour}, 'unixepoch', 'start of month') AS INTEGER)")
        }
    }
}

/// Counts the events `filter` matches, grouped by `group_by` (and by `interval` buckets of
/// `occurred_at`), ordered by bucket start, then by count, largest first; at most `first`.
pub async fn count(
    db: &impl ConnectionTrait,
    filter: &Filter,
    group_by: &[Dimension],
    interval: Option<Interval>,
    first: u64,
    now: DateTime<Utc>,
) -> Result<Vec<Bucket>> {
    if first > MAX_BUCKETS {
        return Err(Error::bad_input(
            "first",
            format!("first must be between 0 and {MAX_BUCKETS}"),
        ));
    }
    let mut dimensions: Vec<Dimension> = Vec::with_capacity(group_by.len());
    for dimension in group_by {
        if !dimensions.contains(dimension) {
            dimensions.push(*dimension);
        }
    }
    let backend = db.get_database_backend();
    let mut select = if rollups_answer(filter, &dimensions) {
        from_rollups(backend, filter, &dimensions, interval)?
    } else {
        check_window(filter, now)?;
        from_events(backend, filter, &dimensions, interval)?
    };
    if interval.is_some() {
        select.order_by(Alias::new("start"), Order::Asc);
    }
    select.order_by(Alias::new("count"), Order::Desc);
    for dimension in &dimensions {
        select.order_by(Alias::new(column(*dimension)), Order::Asc);
    }
    select.limit(first);
    let rows = db.query_all(&select).await?;
    let mut buckets = Vec::with_capacity(rows.len());
    for row in &rows {
        // Without GROUP BY columns, no matching event still makes one row, counting nothing.
        if row.try_get::<Option<i64>>("", "count")?.unwrap_or(0) > 0 {
            buckets.push(bucket(row, &dimensions, interval.is_some())?);
        }
    }
    Ok(buckets)
}

/// Whether the rollups hold the answer: no actor ids, no per-event filters, and time bounds
/// on whole hours.
fn rollups_answer(filter: &Filter, dimensions: &[Dimension]) -> bool {
    let whole_hour = |at: &Option<DateTime<Utc>>| {
        at.is_none_or(|t| t.timestamp() % 3600 == 0 && t.timestamp_subsec_nanos() == 0)
    };
    !dimensions.contains(&Dimension::ActorId)
        && filter.actor_ids.is_none()
        && filter.target_ids.is_none()
        && filter.request_id.is_none()
        && filter.metadata.is_none()
        && whole_hour(&filter.occurred_after)
        && whole_hour(&filter.occurred_before)
}

/// Counting events one by one needs a window of at most `RAW_WINDOW_DAYS`.
fn check_window(filter: &Filter, now: DateTime<Utc>) -> Result<()> {
    let message = format!(
        "grouping by ACTOR_ID, or filtering on actorIds, targetIds, requestId, metadata or \
         times within an hour, counts events one by one: give filter.occurredAfter at most \
         {RAW_WINDOW_DAYS} days before filter.occurredBefore (or now)"
    );
    let Some(after) = filter.occurred_after else {
        return Err(Error::bad_input("filter.occurredAfter", message));
    };
    let before = filter.occurred_before.unwrap_or(now);
    if before - after > Duration::days(RAW_WINDOW_DAYS) {
        return Err(Error::bad_input("filter.occurredAfter", message));
    }
    Ok(())
}

/// The column a dimension groups by, in both tables (and its name in the answer).
fn column(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Action => "action",
        Dimension::ActorId => "actor_id",
        Dimension::ActorType => "actor_type",
        Dimension::TargetType => "target_type",
        Dimension::Outcome => "outcome",
        Dimension::TenantId => "tenant_id",
    }
}

/// Reads the rollups: the whole days within the time bounds from the daily one, the hours
/// around them from the hourly one (every hour, for buckets of hours or bounds less than a
/// day apart). Their rows go by the name `audit_logs` in the statement, so that the
/// filter's conditions (on tenant, action, actor type, target type and outcome, which the
/// rollups share with the log) apply as written.
fn from_rollups(
    backend: DbBackend,
    filter: &Filter,
    dimensions: &[Dimension],
    interval: Option<Interval>,
) -> Result<SelectStatement> {
    let after = filter.occurred_after.map(|t| t.timestamp());
    let before = filter.occurred_before.map(|t| t.timestamp());
    // The whole days between the bounds, if any.
    let first_day = after.map(|t| t + (86_400 - t.rem_euclid(86_400)) % 86_400);
    let end_day = before.map(|t| t - t.rem_euclid(86_400));
    let days = interval != Some(Interval::Hour)
        && match (first_day, end_day) {
            (Some(first), Some(end)) => first < end,
            _ => true,
        };
    let rows = if days {
        let mut rows = rollup_rows("audit_stats_daily", "day_start", &[(first_day, end_day)]);
        let mut edges = Vec::new();
        if after.is_some() && after < first_day {
            edges.push((after, first_day));
        }
        if before.is_some() && end_day < before {
            edges.push((end_day, before));
        }
        if !edges.is_empty() {
            rows.union(
                UnionType::All,
                rollup_rows("audit_stats", "hour_start", &edges),
            );
        }
        rows
    } else {
        rollup_rows("audit_stats", "hour_start", &[(after, before)])
    };
    let untimed = Filter {
        occurred_after: None,
        occurred_before: None,
        ..filter.clone()
    };
    let mut select = Query::select();
    select
        .from_subquery(rows, audit_log::Entity)
        .cond_where(untimed.condition(backend)?);
    group(
        &mut select,
        dimensions,
        interval.map(|i| bucket_sql(backend, "at", i)),
        "target_type",
        "CAST(SUM(events) AS BIGINT)",
    );
    Ok(select)
}

/// A rollup's rows whose start (column `start`, selected as `at`, a name apart from the
/// answer's `start`) lies in one of `ranges` (from, inclusive, to, exclusive; `None` is
/// unbounded).
fn rollup_rows(table: &str, start: &str, ranges: &[(Option<i64>, Option<i64>)]) -> SelectStatement {
    let mut any = Condition::any();
    for (from, to) in ranges {
        let mut range = Condition::all();
        if let Some(from) = from {
            range = range.add(Expr::col(Alias::new(start)).gte(*from));
        }
        if let Some(to) = to {
            range = range.add(Expr::col(Alias::new(start)).lt(*to));
        }
        any = any.add(range);
    }
    let mut select = Query::select();
    select
        .expr_as(Expr::col(Alias::new(start)), Alias::new("at"))
        .columns(
            [
                "tenant_id",
                "action",
                "actor_type",
                "target_type",
                "outcome",
                "events",
            ]
            .map(Alias::new),
        )
        .from(Alias::new(table))
        .cond_where(any);
    select
}

/// Counts the events themselves.
fn from_events(
    backend: DbBackend,
    filter: &Filter,
    dimensions: &[Dimension],
    interval: Option<Interval>,
) -> Result<SelectStatement> {
    let mut select = Query::select();
    select
        .from(audit_log::Entity)
        .cond_where(filter.condition(backend)?);
    group(
        &mut select,
        dimensions,
        interval.map(|i| bucket_sql(backend, hour_sql(backend), i)),
        "coalesce(target_type, '')",
        "COUNT(*)",
    );
    Ok(select)
}

/// Selects and groups by the dimensions and the bucket start, and selects the count.
fn group(
    select: &mut SelectStatement,
    dimensions: &[Dimension],
    start: Option<String>,
    target_type: &'static str,
    count: &'static str,
) {
    if let Some(start) = start {
        select.expr_as(Expr::cust(start), Alias::new("start"));
        select.add_group_by([Expr::col(Alias::new("start"))]);
    }
    for dimension in dimensions {
        let name = column(*dimension);
        let expr = if *dimension == Dimension::TargetType {
            Expr::cust(target_type)
        } else {
            Expr::col(Alias::new(name))
        };
        select.expr_as(expr.clone(), Alias::new(name));
        select.add_group_by([expr]);
    }
    select.expr_as(Expr::cust(count), Alias::new("count"));
}

/// One row of the answer.
fn bucket(row: &QueryResult, dimensions: &[Dimension], timed: bool) -> Result<Bucket> {
    let text = |name: &str| row.try_get::<String>("", name).map_err(Error::from);
    let mut bucket = Bucket {
        count: row.try_get("", "count")?,
        ..Bucket::default()
    };
    if timed {
        let start: i64 = row.try_get("", "start")?;
        bucket.start = Some(
            DateTime::from_timestamp(start, 0)
                .ok_or_else(|| Error::internal("a bucket start out of range"))?,
        );
    }
    for dimension in dimensions {
        let value = text(column(*dimension))?;
        match dimension {
            Dimension::Action => bucket.action = Some(value),
            Dimension::ActorId => bucket.actor_id = Some(value),
            Dimension::ActorType => {
                bucket.actor_type = Some(ActorType::try_from_value(&value).map_err(Error::from)?);
            }
            Dimension::TargetType => bucket.target_type = Some(value).filter(|t| !t.is_empty()),
            Dimension::Outcome => {
                bucket.outcome = Some(Outcome::try_from_value(&value).map_err(Error::from)?);
            }
            Dimension::TenantId => bucket.tenant_id = Some(value),
        }
    }
    Ok(bucket)
}
