//! `GET /export`: what a filter matches, streamed as NDJSON or CSV under the same
//! credentials and scopes as `auditLogs`, and recorded in the caller's tenant. Exports take
//! slots shared fairly between tenants, and one whose client stops reading is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use entity::audit_log;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::ExportFormat;
use crate::credentials::{Principal, Scope};
use crate::error::Error;
use crate::graphql::types::AuditLogFilter;
use crate::refusals::{Origin, caller_event};
use crate::service::capacity::share::Held;
use crate::service::ingest::Ingestor;
use crate::service::ingest::event::NewEvent;
use crate::service::query::PageOrder;
use crate::service::query::export;
use crate::service::query::filter::Filter;

use super::caller::{admit, consistency};
use super::errors::{error_response, status_of};
use super::state::AppState;

/// How long an export waits for one of its tenant's export slots before it is refused
/// (less than a stalled export holds one, so that a refusal is told as such).
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// How long a client may leave a part of the body unread before the export is dropped
/// (and its slot and memory given back).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest filter an export's record holds; a longer one is cut there.
const RECORDED_FILTER_BYTES: usize = 16 * 1024;

/// The query string of `/export`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    format: Option<String>,
    /// An `AuditLogFilter` as JSON.
    filter: Option<String>,
    #[serde(rename = "orderBy")]
    order_by: Option<String>,
}

/// What was asked for, checked.
struct Asked {
    format: ExportFormat,
    order: PageOrder,
    filter_json: Value,
}

pub(super) async fn export(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let (principal, origin) = match admit(&state, &parts).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let (asked, filter) = match asked(&state, &parts, &principal, &origin) {
        Ok(asked) => asked,
        Err(err) => return error_response(status_of(&err), err),
    };
    let exports = &state.context.exports;
    let Ok(slot) = exports.acquire(&principal.tenant_id, 1, SLOT_WAIT).await else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, Error::Busy);
    };
    // On record before the first byte: an export that cannot be recorded does not happen.
    let record = Record {
        ingestor: state.context.ingestor.clone(),
        principal: Arc::new(principal),
        origin,
    };
    let requested = match record
        .write("audit.export.requested", asked.metadata())
        .await
    {
        Ok(id) => id,
        Err(err) => return error_response(status_of(&err), err),
    };
    let finished = Finished {
        record,
        requested,
        rows: 0,
        complete: false,
    };
    let context = &state.context;
    let consistency = consistency(&parts.headers);
    let db = context.reads.pick(consistency.0.as_deref()).await;
    let pages = export::pages(
        db,
        context.memory.clone(),
        finished.record.principal.tenant_id.clone(),
        filter,
        asked.order,
    );
    let body = body(asked.format, pages, finished, slot);
    attachment(asked.format, body)
}

/// What an export asks for, checked, and its filter for the caller; or why it is refused
/// (`FORBIDDEN` without `audit:read`, on record; `BAD_USER_INPUT` naming the parameter).
fn asked(
    state: &AppState,
    parts: &Parts,
    principal: &Principal,
    origin: &Origin,
) -> Result<(Asked, Filter), Error> {
    if !principal.has(Scope::Read) {
        let reason = "`/export` needs the audit:read scope";
        state.context.refusals.record_denial(
            Some(&principal.tenant_id),
            Some(&principal.subject),
            Some(&principal.credential),
            reason,
            origin,
        );
        return Err(Error::Forbidden(reason.to_owned()));
    }
    let asked = Query::<Params>::try_from_uri(&parts.uri)
        .map_err(|err| Error::bad_input("", format!("the query string is not valid: {err}")))
        .and_then(|Query(params)| check(params))?;
    let filter = AuditLogFilter::from_json(asked.filter_json.clone())
        .and_then(|filter| filter.into_filter(principal));
    // The SQL is built once here too, so that what this backend cannot filter on (some
    // metadata filters on SQLite) is refused before the first byte.
    let backend = state.context.db.get_database_backend();
    let filter = filter.and_then(|f| {
        f.condition(backend)
            .map_err(|e| e.rooted_at("filter.", true))
            .map(|_| f)
    })?;
    Ok((asked, filter))
}

impl Asked {
    /// What `audit.export.requested` records. The filter goes as text: as JSON it would
    /// nest two levels deeper than it may itself.
    fn metadata(&self) -> Value {
        let mut filter = self.filter_json.to_string();
        let cut = filter.len() > RECORDED_FILTER_BYTES;
        if cut {
            let mut end = RECORDED_FILTER_BYTES;
            while !filter.is_char_boundary(end) {
                end -= 1;
            }
            filter.truncate(end);
        }
        let order = match self.order {
            PageOrder::OldestFirst => "OCCURRED_AT_ASC",
            PageOrder::NewestFirst => "OCCURRED_AT_DESC",
        };
        json!({
            "format": self.format.extension(),
            "orderBy": order,
            "filter": filter,
            "filterCut": cut,
        })
    }
}

/// The body of an export: `pages` encoded in `format`, by a task of its own that hands
/// the body one page at a time. A client that stops reading stops it within
/// `SEND_TIMEOUT`, slot and memory and all, rather than leaving it suspended for as long as
/// the connection lasts; a body that ends before the export did ends without its last
/// chunk, so that an HTTP client sees the failure too.
fn body(
    format: ExportFormat,
    pages: impl Stream<Item = Result<Vec<audit_log::Model>, Error>> + Send + 'static,
    finished: Finished,
    slot: Held,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let (sender, receiver) = mpsc::channel::<Bytes>(1);
    let complete = Arc::new(AtomicBool::new(false));
    let completed = complete.clone();
    tokio::spawn(async move {
        // Moved in whole (not field by field), so that its record is written when the task
        // ends, with what it counted.
        let (mut finished, _slot) = (finished, slot);
        let send = |bytes: Vec<u8>| sender.send_timeout(Bytes::from(bytes), SEND_TIMEOUT);
        if send(format.header()).await.is_err() {
            return;
        }
        let mut pages = std::pin::pin!(pages);
        let mut next = pages.next().await;
        while let Some(page) = next.take() {
            // A page is encoded on a blocking thread while the next one is read.
            let encoded = match page {
                Ok(rows) => {
                    finished.rows += rows.len() as u64;
                    let encoding = tokio::task::spawn_blocking(move || format.encode(&rows));
                    let (encoded, after) = tokio::join!(encoding, pages.next());
                    next = after;
                    encoded.map_err(Error::internal)
                }
                Err(err) => Err(err),
            };
            let bytes = match encoded {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::error!(error = %err, "export failed part-way");
                    let _ = send(format.failure()).await;
                    return;
                }
            };
            if send(bytes).await.is_err() {
                tracing::info!("dropping an export whose client stopped reading");
                return;
            }
        }
        finished.complete = true;
        completed.store(true, Ordering::Release);
    });
    let end = futures_util::stream::once(async move {
        match complete.load(Ordering::Acquire) {
            true => None,
            false => Some(Err(std::io::Error::other("the export ended part-way"))),
        }
    })
    .filter_map(std::future::ready);
    ReceiverStream::new(receiver).map(Ok).chain(end)
}

/// The response carrying `body` as a file to download.
fn attachment(
    format: ExportFormat,
    body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    let file_name = format!(
        "attachment; filename=\"audit-export-{}.{}\"",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        format.extension()
    );
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.media_type()),
        )],
        Body::from_stream(body),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&file_name) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// The format, order and filter asked for; paths name the query parameter.
fn check(params: Params) -> Result<Asked, Error> {
    let format = match params.format.as_deref() {
        None | Some("ndjson") => ExportFormat::Ndjson,
        Some("csv") => ExportFormat::Csv,
        Some(_) => return Err(Error::bad_input("format", "format is `ndjson` or `csv`")),
    };
    let order = match params.order_by.as_deref() {
        None | Some("OCCURRED_AT_ASC") => PageOrder::OldestFirst,
        Some("OCCURRED_AT_DESC") => PageOrder::NewestFirst,
        Some(_) => {
            return Err(Error::bad_input(
                "orderBy",
                "orderBy is `OCCURRED_AT_ASC` or `OCCURRED_AT_DESC`",
            ));
        }
    };
    let filter_json = match params.filter.as_deref() {
        None => json!({}),
        Some(text) => serde_json::from_str(text)
            .map_err(|_| Error::bad_input("filter", "filter is an AuditLogFilter as JSON"))?,
    };
    Ok(Asked {
        format,
        order,
        filter_json,
    })
}

/// Writes the export's own events in the caller's tenant.
struct Record {
    ingestor: Ingestor,
    principal: Arc<Principal>,
    origin: Origin,
}

impl Record {
    fn event(&self, action: &str, metadata: Value) -> NewEvent {
        caller_event(&self.principal, &self.origin, action, metadata)
    }

    /// Records an event and returns its id.
    async fn write(&self, action: &str, metadata: Value) -> Result<String, Error> {
        let event = self.event(action, metadata);
        let stored = self
            .ingestor
            .ingest(&self.principal.tenant_id, vec![event])
            .await?;
        Ok(stored.first().map(|e| e.id.to_string()).unwrap_or_default())
    }
}

/// Records how an export ended (`audit.export.finished`) when its body is done or dropped,
/// which is also what happens when the client goes away.
struct Finished {
    record: Record,
    requested: String,
    rows: u64,
    complete: bool,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let event = self.record.event(
            "audit.export.finished",
            json!({
                "requestedEventId": self.requested,
                "rowCount": self.rows,
                "complete": self.complete,
            }),
        );
        let ingestor = self.record.ingestor.clone();
        let tenant_id = self.record.principal.tenant_id.clone();
        tokio::spawn(async move {
            // The export happened: its end is retried for a while before it is given up.
            for wait in [1, 2, 4, 8, 16, 0] {
                match ingestor.ingest(&tenant_id, vec![event.clone()]).await {
                    Ok(_) => return,
                    Err(err) if wait == 0 => {
                        tracing::error!(error = %err, "could not record the end of an export");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(wait)).await,
                }
            }
        });
    }
}
