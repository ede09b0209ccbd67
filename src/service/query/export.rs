//! Exports: every event a filter matches, in keyset order, a bounded page at a time, as
//! NDJSON (the chain's canonical encoding with `hash` and `prev_hash`, what
//! `audit-service export` writes, so an export can be chain-checked) or as CSV (RFC 4180,
//! a header row, metadata as a JSON string).

use entity::audit_log;
use futures_util::Stream;
use sea_orm::{ActiveEnum, ConnectionTrait, DatabaseConnection, StreamTrait};

use super::pages::{self as query, PageOrder};
use crate::config::ExportFormat;
use crate::error::{Error, Result};
use crate::service::capacity::memory::{Memory, Meter};
use crate::service::privacy::{Shown, show};
use crate::service::query::cursor::Cursor;
use crate::service::query::filter::Filter;
use crate::service::query::sequence::{BATCH_BYTES, BySequence};
use crate::service::tlog::canonical::{export_line, timestamp};

/// Rows read per query.
const PAGE: u64 = 500;

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 23] = [
    "sequence",
    "id",
    "tenant_id",
    "occurred_at",
    "recorded_at",
    "actor_type",
    "actor_id",
    "actor_name",
    "action",
    "target_type",
    "target_id",
    "target_name",
    "outcome",
    "reason",
    "metadata",
    "ip_address",
    "user_agent",
    "request_id",
    "trace_id",
    "idempotency_key",
    "chain_version",
    "hash",
    "prev_hash",
];

impl ExportFormat {
    /// The media type of an export in this format.
    pub fn media_type(self) -> &'static str {
        match self {
            ExportFormat::Ndjson => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }

    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Ndjson => "ndjson",
            ExportFormat::Csv => "csv",
        }
    }

    /// What comes before the first event: the CSV header row.
    pub fn header(self) -> Vec<u8> {
        match self {
            ExportFormat::Ndjson => Vec::new(),
            ExportFormat::Csv => csv_records([CSV_COLUMNS]),
        }
    }

    /// A page of events, each ending in a newline.
    pub fn encode(self, events: &[audit_log::Model]) -> Vec<u8> {
        match self {
            ExportFormat::Ndjson => {
                let mut lines = Vec::with_capacity(events.len() * 1024);
                for event in events {
                    lines.extend_from_slice(&export_line(event));
                }
                lines
            }
            ExportFormat::Csv => csv_records(events.iter().map(|event| {
                // Personal values read as `[redacted]`; the NDJSON form has null and the
                // commitments in their place, as the hash covers them.
                let redacted = event
                    .personal
                    .is_some()
                    .then(|| show(event, &Shown::Redacted));
                let event = redacted.as_ref().unwrap_or(event);
                let text = |value: &Option<String>| value.clone().unwrap_or_default();
                [
                    event.seq.to_string(),
                    event.id.to_string(),
                    event.tenant_id.clone(),
                    timestamp(event.occurred_at),
                    timestamp(event.recorded_at),
                    event.actor_type.to_value(),
                    event.actor_id.clone(),
                    text(&event.actor_name),
                    event.action.clone(),
                    text(&event.target_type),
                    text(&event.target_id),
                    text(&event.target_name),
                    event.outcome.to_value(),
                    text(&event.reason),
                    event.metadata.to_string(),
                    text(&event.ip_address),
                    text(&event.user_agent),
                    text(&event.request_id),
                    text(&event.trace_id),
                    text(&event.idempotency_key),
                    event.chain_version.to_string(),
                    hex::encode(&event.hash),
                    hex::encode(&event.prev_hash),
                ]
            })),
        }
    }

    /// What ends an export that failed part-way: a record with no newline after it, so
    /// that a truncated file cannot pass for a whole one.
    pub fn failure(self) -> Vec<u8> {
        match self {
            ExportFormat::Ndjson => {
                br#"{"error":"the export failed here; it is incomplete"}"#.to_vec()
            }
            ExportFormat::Csv => b"# the export failed here; it is incomplete".to_vec(),
        }
    }
}

/// CSV records, each CRLF-terminated, fields quoted where RFC 4180 needs it; one writer
/// for them all.
fn csv_records<R, F, T>(records: R) -> Vec<u8>
where
    R: IntoIterator<Item = F>,
    F: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    for fields in records {
        // Writing to memory fails only on a field count mismatch, which fixed rows cannot
        // have.
        let _ = writer.write_record(fields);
    }
    writer.into_inner().unwrap_or_default()
}

/// The matching events, page by page: one tenant after another (in the filter's order of
/// tenants), each tenant's events in `order`. Every page is then a walk down the index on
/// `(tenant_id, occurred_at, id)`; ordering several tenants' events by time together would
/// make the database sort all of them again for every page. A page is at most `PAGE` rows
/// and `BATCH_BYTES` of decoded events, charged to `memory` for `reader` (the tenant
/// asking) until the page after next is read: a reader may encode one page while the next
/// is read, and memory stays at two pages, whatever the size of the export.
pub fn pages(
    db: DatabaseConnection,
    memory: Memory,
    reader: String,
    filter: Filter,
    order: PageOrder,
) -> impl Stream<Item = Result<Vec<audit_log::Model>>> {
    async_stream::stream! {
        let meters = [(); 2].map(|_| Meter::new(&memory, &reader, BATCH_BYTES));
        let mut turn = 0;
        for tenant_id in &filter.tenant_ids {
            let one = Filter {
                tenant_ids: vec![tenant_id.clone()],
                ..filter.clone()
            };
            let mut after: Option<Cursor> = None;
            loop {
                let meter = &meters[turn % 2];
                turn += 1;
                meter.release();
                // A busy pool or memory is waited out a few times before the export fails.
                let mut attempt = 0;
                let page = loop {
                    match query::scan(&db, &one, order, after.as_ref(), PAGE, meter).await {
                        Err(Error::Unavailable(_) | Error::Busy) if attempt < 3 => attempt += 1,
                        done => break done,
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                };
                let rows = match page {
                    Ok(rows) => rows,
                    Err(err) => {
                        yield Err(err);
                        return;
                    }
                };
                let Some(last) = rows.last() else { break };
                after = Some(Cursor::of(last));
                yield Ok(rows);
            }
        }
    }
}

/// Writes a tenant's events (those the filter matches, if one is given) to `out` in
/// sequence order, the order its chain verifies in; returns how many.
pub async fn tenant(
    db: &(impl ConnectionTrait + StreamTrait),
    memory: &Memory,
    tenant_id: &str,
    filter: Option<Filter>,
    format: ExportFormat,
    out: &mut impl std::io::Write,
    mut reached: impl FnMut(i64),
) -> Result<u64> {
    let mut events = BySequence::after(memory, tenant_id, 0);
    if let Some(filter) = filter {
        events = events.matching(filter);
    }
    out.write_all(&format.header()).map_err(Error::internal)?;
    let mut written = 0;
    loop {
        let rows = events.next(db).await?;
        if rows.is_empty() {
            return Ok(written);
        }
        out.write_all(&format.encode(&rows))
            .map_err(Error::internal)?;
        written += rows.len() as u64;
        reached(events.position());
    }
}
