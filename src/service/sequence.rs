//! One tenant's events in sequence (commit) order, a bounded batch at a time: the one reader
//! behind chain verification, export, the NOTIFY relay and the live tail's replay.

use entity::audit_log::{self, Column};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::filter::Filter;
use super::query;
use crate::error::Result;

/// Rows per batch unless told otherwise.
const BATCH: u64 = 1000;

/// Where a reader stands in a tenant's sequence, and what it reads from there.
#[derive(Clone, Debug)]
pub struct BySequence {
    tenant_id: String,
    /// The last sequence number already read.
    after: i64,
    /// The last sequence number to read, inclusive.
    through: Option<i64>,
    filter: Option<Filter>,
    batch: u64,
}

impl BySequence {
    /// Reads the tenant's events after sequence number `after`.
    pub fn after(tenant_id: impl Into<String>, after: i64) -> Self {
        BySequence {
            tenant_id: tenant_id.into(),
            after,
            through: None,
            filter: None,
            batch: BATCH,
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
        self.batch = rows;
        self
    }

    /// The last sequence number read.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// The next batch, empty at the end; the reader moves past it.
    pub async fn next(&mut self, db: &impl ConnectionTrait) -> Result<Vec<audit_log::Model>> {
        let mut select = audit_log::Entity::find()
            .filter(Column::TenantId.eq(self.tenant_id.as_str()))
            .filter(Column::Seq.gt(self.after));
        if let Some(last) = self.through {
            select = select.filter(Column::Seq.lte(last));
        }
        if let Some(filter) = &self.filter {
            select = select.filter(filter.condition(db.get_database_backend())?);
        }
        let rows = query::events(db, select.order_by_asc(Column::Seq).limit(self.batch)).await?;
        if let Some(last) = rows.last() {
            self.after = last.seq;
        }
        Ok(rows)
    }
}
