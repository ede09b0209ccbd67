//! One tenant's events in sequence (commit) order, a bounded batch at a time: the one reader
//! behind chain verification, export, the NOTIFY relay and the live tail's replay.

use entity::audit_log::{self, Column};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    StreamTrait,
};

use super::pages::{self as query, Full};
use crate::error::Result;
use crate::service::capacity::memory::{Memory, Meter};
use crate::service::query::filter::Filter;

/// Rows per batch unless told otherwise.
const BATCH: u64 = 1000;
/// Most memory one batch's events take once decoded: a batch ends early rather than pass
/// it, and each batch is charged to the server's memory until the next one is read.
pub const BATCH_BYTES: usize = 4 << 20;

/// Where a reader stands in a tenant's sequence, and what it reads from there.
pub struct BySequence {
    tenant_id: String,
    /// The last sequence number already read.
    after: i64,
    /// The last sequence number to read, inclusive.
    through: Option<i64>,
    filter: Option<Filter>,
    batch: u64,
    /// Rows to ask for next: fewer than `batch` after a batch that ended early.
    ask: u64,
    meter: Meter,
}

impl BySequence {
    /// Reads the tenant's events after sequence number `after`, charging them to `memory`.
    pub fn after(memory: &Memory, tenant_id: impl Into<String>, after: i64) -> Self {
        let tenant_id = tenant_id.into();
        BySequence {
            meter: Meter::new(memory, &tenant_id, BATCH_BYTES),
            tenant_id,
            after,
            through: None,
            filter: None,
            batch: BATCH,
            ask: BATCH,
        }
    }

    /// Stops after sequence number `last`.
    pub fn through(mut self, last: i64) -> Self {
        self.through = Some(last);
        self
    }

    /// Reads only the events the filter matches.
    pub fn matching(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Reads at most `rows` a batch.
    pub fn batch(mut self, rows: u64) -> Self {
        self.batch = rows.max(1);
        self.ask = self.batch;
        self
    }

    /// The last sequence number read.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// The next batch, empty at the end; the reader moves past it. The memory of the
    /// previous batch is given back first: its events must be gone by now.
    pub async fn next(
        &mut self,
        db: &(impl ConnectionTrait + StreamTrait),
    ) -> Result<Vec<audit_log::Model>> {
        self.meter.release();
        let mut select = audit_log::Entity::find()
            .filter(Column::TenantId.eq(self.tenant_id.as_str()))
            .filter(Column::Seq.gt(self.after));
        if let Some(last) = self.through {
            select = select.filter(Column::Seq.lte(last));
        }
        if let Some(filter) = &self.filter {
            select = select.filter(filter.condition(ConnectionTrait::get_database_backend(db))?);
        }
        let select = select.order_by_asc(Column::Seq).limit(self.ask);
        let statement = select.build(ConnectionTrait::get_database_backend(db));
        let rows =
            query::decoded(db, statement, &self.meter, Full::Stop, query::by_position).await?;
        // Large events: ask for about as many as fit next time, rather than have the
        // database send rows that are dropped unread.
        self.ask = match rows.len() as u64 {
            n if n < self.ask && !rows.is_empty() => (n * 2).min(self.batch),
            _ => (self.ask * 2).min(self.batch),
        };
        if let Some(last) = rows.last() {
            self.after = last.seq;
        }
        Ok(rows)
    }
}
