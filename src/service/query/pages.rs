//! Reading events: keyset pages on `(occurred_at, id)`, and counts.
//!
//! Every filter maps to an indexed column; pages never use OFFSET, so page 2,000 costs what
//! page 1 costs.

use entity::audit_log::{self, ByPosition, Column};
use futures_util::StreamExt;
use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult,
    IdenStatic, Iterable, Order, PaginatorTrait, QueryFilter, QueryOrder, QueryResult, QuerySelect,
    QueryTrait, Select, Statement, StreamTrait,
};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::service::capacity::memory::{ADVANCE, Meter, Overdrawn};
use crate::service::capacity::size::row_size;
use crate::service::query::cursor::Cursor;
use crate::service::query::filter::Filter;

/// Default page size.
pub const DEFAULT_PAGE: u64 = 50;
/// Largest page size.
pub const MAX_PAGE: u64 = 500;
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

/// Which of an event's columns a page reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columns {
    All,
    /// Who did what to which resource, when, how it ended, with what metadata, and the
    /// event's place in its log (for cursors). The other columns are read as placeholders:
    /// empty, zero, NULL, and `recorded_at` as `occurred_at`.
    Summary,
}

impl Columns {
    fn select(self, select: Select<audit_log::Entity>) -> Select<audit_log::Entity> {
        match self {
            Columns::All => select,
            Columns::Summary => Column::iter().fold(select.select_only(), |select, column| {
                match placeholder(column) {
                    Some(value) => select.expr_as(value, column.as_str()),
                    None => select.column(column),
                }
            }),
        }
    }
}

/// What a summary row reads instead of `column`; `None` for the columns it reads.
fn placeholder(column: Column) -> Option<Expr> {
    Some(match column {
        Column::RecordedAt => Expr::col(Column::OccurredAt),
        Column::Reason
        | Column::IpAddress
        | Column::UserAgent
        | Column::RequestId
        | Column::TraceId
        | Column::IdempotencyKey => Expr::val(Option::<String>::None),
        Column::ChainVersion => Expr::val(0i16),
        Column::PrevHash | Column::Hash => Expr::val(Vec::<u8>::new()),
        _ => return None,
    })
}

/// One page, in the requested order.
#[derive(Clone, Debug)]
pub struct Page {
    pub rows: Vec<audit_log::Model>,
    pub has_next_page: bool,
    pub has_previous_page: bool,
}

/// One event by id, within the caller's tenants.
pub async fn find(
    db: &(impl ConnectionTrait + StreamTrait),
    tenant_ids: &[String],
    id: Uuid,
    meter: &Meter,
) -> Result<Option<audit_log::Model>> {
    Ok(find_many(db, tenant_ids, vec![id], meter).await?.pop())
}

/// The events among `ids` that belong to the caller's tenants, in no particular order.
pub async fn find_many(
    db: &(impl ConnectionTrait + StreamTrait),
    tenant_ids: &[String],
    ids: Vec<Uuid>,
    meter: &Meter,
) -> Result<Vec<audit_log::Model>> {
    let select = audit_log::Entity::find()
        .filter(Column::TenantId.is_in(tenant_ids.to_vec()))
        .filter(Column::Id.is_in(ids));
    events(db, select, meter).await
}

/// The events a select of whole rows (every `Column`, in order) reads, decoded by position
/// (`audit_log::ByPosition`), each charged to `meter` first; past the meter's limit, an
/// error.
pub(super) async fn events(
    db: &(impl ConnectionTrait + StreamTrait),
    select: Select<audit_log::Entity>,
    meter: &Meter,
) -> Result<Vec<audit_log::Model>> {
    let statement = select.build(ConnectionTrait::get_database_backend(db));
    decoded(db, statement, meter, Full::Fail, by_position).await
}

/// An event of a select of whole rows, by position.
pub(super) fn by_position(row: &QueryResult) -> Result<audit_log::Model, DbErr> {
    ByPosition::from_query_result(row, "").map(|row| row.0)
}

/// What a read does when the next row would pass its meter's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Full {
    /// Fails: the answer would be too large.
    Fail,
    /// Stops with the rows it has, if it has any (a reader of bounded chunks).
    Stop,
}

/// The rows of `statement`, streamed: each is sized from its raw columns and charged to
/// `meter` before `decode` turns it into a value, so that memory is held before it is spent
/// and never more than the meter allows. Memory is reserved ahead, before the query takes
/// a connection; past that, a row takes only memory free right now: a reader never waits
/// for memory with a connection in hand.
pub(super) async fn decoded<T>(
    db: &(impl ConnectionTrait + StreamTrait),
    statement: Statement,
    meter: &Meter,
    full: Full,
    decode: impl Fn(&QueryResult) -> Result<T, DbErr>,
) -> Result<Vec<T>> {
    meter.reserve(ADVANCE).await.map_err(|_| Error::Busy)?;
    let rows = db.stream_raw(statement).await?;
    let mut rows = std::pin::pin!(rows);
    let mut decoded = Vec::new();
    while let Some(row) = rows.next().await {
        let row = row?;
        match meter.charge(row_size(&row)) {
            Ok(()) => {}
            // A reader of chunks takes the rest in its next chunk.
            Err(_) if full == Full::Stop && !decoded.is_empty() => break,
            Err(Overdrawn::Limit) => {
                meter.settle();
                return Err(Error::bad_input(
                    "first",
                    format!(
                        "the response would be larger than {} MiB; ask for fewer or smaller events",
                        meter.limit() >> 20
                    ),
                ));
            }
            Err(Overdrawn::Busy) => {
                meter.settle();
                return Err(Error::Busy);
            }
        }
        decoded.push(decode(&row)?);
    }
    meter.settle();
    Ok(decoded)
}

/// How many events match.
pub async fn count(db: &impl ConnectionTrait, filter: &Filter) -> Result<u64> {
    let condition = filter.condition(db.get_database_backend())?;
    Ok(audit_log::Entity::find()
        .filter(condition)
        .count(db)
        .await?)
}

/// One page of matching events, of `columns`. `want_far_side` asks for the flag that needs
/// an extra probe (`hasPreviousPage` after `after`, `hasNextPage` before `before`).
pub async fn page(
    db: &(impl ConnectionTrait + StreamTrait),
    filter: &Filter,
    args: &PageArgs,
    want_far_side: bool,
    columns: Columns,
    meter: &Meter,
) -> Result<Page> {
    let scan = Scan::new(filter, args, ConnectionTrait::get_database_backend(db))?;
    let mut rows = events(db, columns.select(scan.select()), meter).await?;
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

/// Up to `limit` matching events past `after`, in `order`, fewer when `meter` fills: the
/// keyset scan behind exports.
pub async fn scan(
    db: &(impl ConnectionTrait + StreamTrait),
    filter: &Filter,
    order: PageOrder,
    after: Option<&Cursor>,
    limit: u64,
    meter: &Meter,
) -> Result<Vec<audit_log::Model>> {
    let newest_first = order == PageOrder::NewestFirst;
    let backend = ConnectionTrait::get_database_backend(db);
    let mut select = audit_log::Entity::find().filter(filter.condition(backend)?);
    if let Some(c) = after {
        select = select.filter(beyond(c, newest_first));
    }
    let statement = ordered(select, newest_first).limit(limit).build(backend);
    decoded(db, statement, meter, Full::Stop, by_position).await
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
