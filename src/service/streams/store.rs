//! `audit_streams`: the streams' settings, cursors and leases.
//!
//! Changes (`apply`) run in the write path's transaction, beside the event that records
//! them. Delivery's writes (`claim`, `renew`, `advance`, `failed`) hold for one instance
//! only while its lease is current and the stream's `generation` is the one it read: a
//! pause, a replay or an update bumps the generation, and the delivering instance's next
//! write finds it and stops.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, Order, Query, SelectStatement};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Change, Kind, MAX_STREAMS, Settings};
use crate::error::{Error, Result};
use crate::service::privacy::keyring::Keyring;
use crate::service::query::filter::Filter;

fn streams() -> Alias {
    Alias::new("audit_streams")
}

fn col(name: &str) -> Alias {
    Alias::new(name)
}

/// The columns a stream is read with; the first `INSERTED` are those a new stream sets.
const COLUMNS: [&str; 19] = [
    "id",
    "tenant_id",
    "name",
    "kind",
    "url",
    "subject",
    "kek_id",
    "secret",
    "filter",
    "personal",
    "paused",
    "delivered_seq",
    "generation",
    "created_at",
    "last_error",
    "failing_since_ms",
    "last_delivered_at",
    "lease_owner",
    "lease_until_ms",
];
const INSERTED: usize = 14;

/// A stream as stored.
#[derive(Clone, Debug, FromQueryResult)]
pub struct Row {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub kind: String,
    pub url: String,
    pub subject: Option<String>,
    pub kek_id: Option<String>,
    pub secret: Option<Vec<u8>>,
    pub filter: Option<String>,
    /// Carries personal values in clear, with their salts (`includePersonal`).
    pub personal: bool,
    pub paused: bool,
    pub delivered_seq: i64,
    pub generation: i64,
    pub last_error: Option<String>,
    pub failing_since_ms: Option<i64>,
    pub last_delivered_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
}

impl Row {
    pub fn kind(&self) -> Result<Kind> {
        Kind::parse(&self.kind)
    }

    /// The stored filter, scoped to the stream's tenant.
    pub fn filter(&self) -> Result<Option<Filter>> {
        let Some(text) = &self.filter else {
            return Ok(None);
        };
        let mut filter: Filter = serde_json::from_str(text).map_err(Error::internal)?;
        filter.tenant_ids = vec![self.tenant_id.clone()];
        Ok(Some(filter))
    }
}

/// What a change did, for the event that records it.
pub struct Applied {
    /// `audit.stream.created`, `.updated`, ...
    pub action: &'static str,
    pub id: Uuid,
    pub name: String,
    pub metadata: Value,
}

fn select() -> SelectStatement {
    Query::select()
        .columns(COLUMNS.map(col))
        .from(streams())
        .to_owned()
}

async fn rows(db: &impl ConnectionTrait, select: &SelectStatement) -> Result<Vec<Row>> {
    let statement = db.get_database_backend().build(select);
    Ok(Row::find_by_statement(statement).all(db).await?)
}

/// The tenant's streams, by name.
pub async fn list(db: &impl ConnectionTrait, tenant_id: &str) -> Result<Vec<Row>> {
    let select = select()
        .and_where(Expr::col(col("tenant_id")).eq(tenant_id))
        .order_by(col("name"), Order::Asc)
        .to_owned();
    rows(db, &select).await
}

/// One of the tenant's streams.
pub async fn find(db: &impl ConnectionTrait, tenant_id: &str, id: Uuid) -> Result<Option<Row>> {
    let select = select()
        .and_where(Expr::col(col("tenant_id")).eq(tenant_id))
        .and_where(Expr::col(col("id")).eq(id))
        .to_owned();
    Ok(rows(db, &select).await?.pop())
}

/// The tenant's last sequence number (0 before its first event).
pub async fn head(db: &impl ConnectionTrait, tenant_id: &str) -> Result<i64> {
    let select = Query::select()
        .column(col("seq"))
        .from(col("chain_heads"))
        .and_where(Expr::col(col("tenant_id")).eq(tenant_id))
        .to_owned();
    let row = db
        .query_one_raw(db.get_database_backend().build(&select))
        .await?;
    Ok(match row {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    })
}

/// When the tenant's event `seq` was recorded, if it is still there.
async fn recorded_at(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    seq: i64,
) -> Result<Option<DateTime<Utc>>> {
    let select = Query::select()
        .column(col("recorded_at"))
        .from(col("audit_logs"))
        .and_where(Expr::col(col("tenant_id")).eq(tenant_id))
        .and_where(Expr::col(col("seq")).eq(seq))
        .to_owned();
    let row = db
        .query_one_raw(db.get_database_backend().build(&select))
        .await?;
    Ok(row.map(|row| row.try_get_by_index(0)).transpose()?)
}

/// How far a stream is behind its tenant: events after its cursor (those its filter
/// leaves out too, until it passes them), and how long ago the first of them was
/// recorded.
pub async fn lag(db: &impl ConnectionTrait, row: &Row) -> Result<(i64, f64)> {
    let head = head(db, &row.tenant_id).await?;
    let events = std::cmp::max(head - row.delivered_seq, 0);
    let seconds = match events {
        0 => 0.0,
        _ => match recorded_at(db, &row.tenant_id, row.delivered_seq + 1).await? {
            Some(at) => std::cmp::max((Utc::now() - at).num_milliseconds(), 0) as f64 / 1000.0,
            None => 0.0,
        },
    };
    Ok((events, seconds))
}

/// Applies a change in the transaction that records it. The outer error fails the
/// transaction; the inner one is the caller's (a name taken, a stream not found), found
/// before anything is written. `head` is the tenant's sequence before the record.
pub async fn apply(
    txn: &impl ConnectionTrait,
    tenant_id: &str,
    head: i64,
    change: &Change,
) -> Result<Result<Applied>> {
    let id = change.id();
    let existing = find(txn, tenant_id, id).await?;
    let from = |field: &str, from: i64| match from {
        1.. if from <= head + 1 => Ok(from - 1),
        _ => Err(Error::bad_input(
            field,
            format!("fromSequence is 1 to {} (the next event)", head + 1),
        )),
    };
    let applied = match (change, existing) {
        (
            Change::Create {
                kind,
                settings,
                from_sequence,
                personal,
                ..
            },
            _,
        ) => {
            let tenant = sea_orm::Condition::all().add(Expr::col(col("tenant_id")).eq(tenant_id));
            if count(txn, tenant).await? >= MAX_STREAMS {
                return Ok(Err(Error::bad_input(
                    "input",
                    format!("a tenant has at most {MAX_STREAMS} streams"),
                )));
            }
            if named(txn, tenant_id, &settings.name, None).await? {
                return Ok(Err(name_taken()));
            }
            // By default the stream starts with its own record.
            let delivered = match from_sequence {
                Some(n) => match from("input.fromSequence", *n) {
                    Ok(delivered) => delivered,
                    Err(err) => return Ok(Err(err)),
                },
                None => head,
            };
            insert(txn, tenant_id, id, (*kind, *personal), settings, delivered).await?;
            Applied {
                action: "audit.stream.created",
                id,
                name: settings.name.clone(),
                metadata: json!({
                    "kind": kind.as_str(),
                    "includePersonal": personal,
                    "fromSequence": (delivered + 1).to_string(),
                    "settings": described(settings)?,
                }),
            }
        }
        (_, None) => return Ok(Err(Error::NotFound)),
        (Change::Update { settings, .. }, Some(row)) => {
            if named(txn, tenant_id, &settings.name, Some(id)).await? {
                return Ok(Err(name_taken()));
            }
            let mut update = Query::update();
            update
                .value(col("name"), settings.name.as_str())
                .value(col("url"), settings.url.as_str())
                .value(col("subject"), settings.subject.clone())
                .value(col("filter"), filter_text(settings.filter.as_ref())?);
            if let Some((kek_id, sealed)) = &settings.secret {
                update
                    .value(col("kek_id"), kek_id.as_str())
                    .value(col("secret"), sealed.clone());
            }
            changed(txn, tenant_id, id, update).await?;
            applied(
                "audit.stream.updated",
                &row,
                json!({ "settings": described(settings)? }),
            )
        }
        (Change::Pause(_), Some(row)) => {
            let mut update = Query::update();
            update.value(col("paused"), true);
            changed(txn, tenant_id, id, update).await?;
            applied("audit.stream.paused", &row, json!({}))
        }
        (Change::Resume(_), Some(row)) => {
            let mut update = Query::update();
            update
                .value(col("paused"), false)
                .value(col("failing_since_ms"), Option::<i64>::None);
            changed(txn, tenant_id, id, update).await?;
            applied("audit.stream.resumed", &row, json!({}))
        }
        (Change::Replay(_, from_sequence), Some(row)) => {
            let delivered = match from("fromSequence", *from_sequence) {
                Ok(delivered) => delivered,
                Err(err) => return Ok(Err(err)),
            };
            let mut update = Query::update();
            update
                .value(col("delivered_seq"), delivered)
                .value(col("failing_since_ms"), Option::<i64>::None);
            changed(txn, tenant_id, id, update).await?;
            applied(
                "audit.stream.replayed",
                &row,
                json!({
                    "fromSequence": from_sequence.to_string(),
                    "deliveredSequenceBefore": row.delivered_seq.to_string(),
                }),
            )
        }
        (Change::Delete(_), Some(row)) => {
            let delete = Query::delete()
                .from_table(streams())
                .and_where(Expr::col(col("tenant_id")).eq(tenant_id))
                .and_where(Expr::col(col("id")).eq(id))
                .to_owned();
            txn.execute(&delete).await?;
            applied(
                "audit.stream.deleted",
                &row,
                json!({ "deliveredSequence": row.delivered_seq.to_string() }),
            )
        }
    };
    Ok(Ok(applied))
}

fn applied(action: &'static str, row: &Row, metadata: Value) -> Applied {
    let mut metadata = metadata;
    metadata["kind"] = row.kind.clone().into();
    Applied {
        action,
        id: row.id,
        name: row.name.clone(),
        metadata,
    }
}

fn name_taken() -> Error {
    Error::bad_input(
        "input.name",
        "your tenant has a stream of this name already",
    )
}

/// What the record of a change says of the settings: never the secret, only whether one
/// was set.
fn described(settings: &Settings) -> Result<Value> {
    Ok(json!({
        "url": settings.url,
        "subject": settings.subject,
        "filter": settings.filter.as_ref().map(serde_json::to_value).transpose().map_err(Error::internal)?,
        "secretSet": settings.secret.is_some(),
    }))
}

fn filter_text(filter: Option<&Filter>) -> Result<Option<String>> {
    filter
        .map(serde_json::to_string)
        .transpose()
        .map_err(Error::internal)
}

async fn count(db: &impl ConnectionTrait, condition: sea_orm::Condition) -> Result<u64> {
    let select = Query::select()
        .expr(Func::count(Expr::col(col("id"))))
        .from(streams())
        .cond_where(condition)
        .to_owned();
    let row = db
        .query_one_raw(db.get_database_backend().build(&select))
        .await?;
    let count: i64 = match row {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    };
    Ok(u64::try_from(count).unwrap_or_default())
}

/// Whether another of the tenant's streams than `except` has this name.
async fn named(
    txn: &impl ConnectionTrait,
    tenant_id: &str,
    name: &str,
    except: Option<Uuid>,
) -> Result<bool> {
    let mut select = Query::select();
    select
        .column(col("id"))
        .from(streams())
        .and_where(Expr::col(col("tenant_id")).eq(tenant_id))
        .and_where(Expr::col(col("name")).eq(name));
    if let Some(id) = except {
        select.and_where(Expr::col(col("id")).ne(id));
    }
    let row = txn
        .query_one_raw(txn.get_database_backend().build(&select))
        .await?;
    Ok(row.is_some())
}

async fn insert(
    txn: &impl ConnectionTrait,
    tenant_id: &str,
    id: Uuid,
    (kind, personal): (Kind, bool),
    settings: &Settings,
    delivered: i64,
) -> Result<()> {
    let (kek_id, secret) = settings.secret.clone().unzip();
    let insert = Query::insert()
        .into_table(streams())
        .columns(COLUMNS[..INSERTED].iter().map(|c| col(c)))
        .values([
            id.into(),
            tenant_id.into(),
            settings.name.as_str().into(),
            kind.as_str().into(),
            settings.url.as_str().into(),
            settings.subject.clone().into(),
            kek_id.into(),
            secret.into(),
            filter_text(settings.filter.as_ref())?.into(),
            personal.into(),
            false.into(),
            delivered.into(),
            0i64.into(),
            crate::service::ingest::event::micros(Utc::now()).into(),
        ])
        .map_err(Error::internal)?
        .to_owned();
    txn.execute(&insert).await?;
    Ok(())
}

/// Applies an update to a stream and bumps its generation, so that whoever delivers it
/// stops and the next delivery starts from the new state.
async fn changed(
    txn: &impl ConnectionTrait,
    tenant_id: &str,
    id: Uuid,
    mut update: sea_orm::sea_query::UpdateStatement,
) -> Result<()> {
    update
        .table(streams())
        .value(
            col("generation"),
            Expr::col(col("generation")).add(Expr::val(1)),
        )
        .value(col("lease_owner"), Option::<String>::None)
        .value(col("lease_until_ms"), Option::<i64>::None)
        .and_where(Expr::col(col("tenant_id")).eq(tenant_id))
        .and_where(Expr::col(col("id")).eq(id));
    txn.execute(&update).await?;
    Ok(())
}

/// Streams to deliver that nobody holds (or whose holder's lease ran out), and those
/// `owner` holds.
pub async fn claimable(db: &impl ConnectionTrait, owner: &str, now_ms: i64) -> Result<Vec<Row>> {
    let select = select()
        .and_where(Expr::col(col("paused")).eq(false))
        .cond_where(
            sea_orm::Condition::any()
                .add(Expr::col(col("lease_owner")).is_null())
                .add(Expr::col(col("lease_owner")).eq(owner))
                .add(Expr::col(col("lease_until_ms")).lt(now_ms)),
        )
        .to_owned();
    rows(db, &select).await
}

/// Takes the lease of a stream of `generation` until `until_ms`; whether it was taken.
pub async fn claim(
    db: &impl ConnectionTrait,
    row: &Row,
    owner: &str,
    now_ms: i64,
    until_ms: i64,
) -> Result<bool> {
    let update = Query::update()
        .table(streams())
        .value(col("lease_owner"), owner)
        .value(col("lease_until_ms"), until_ms)
        .and_where(Expr::col(col("id")).eq(row.id))
        .and_where(Expr::col(col("generation")).eq(row.generation))
        .and_where(Expr::col(col("paused")).eq(false))
        .cond_where(
            sea_orm::Condition::any()
                .add(Expr::col(col("lease_owner")).is_null())
                .add(Expr::col(col("lease_owner")).eq(owner))
                .add(Expr::col(col("lease_until_ms")).lt(now_ms)),
        )
        .to_owned();
    Ok(db.execute(&update).await?.rows_affected() == 1)
}

/// The lease a delivery holds: the stream, its generation, its owner.
#[derive(Clone)]
pub struct Lease {
    pub id: Uuid,
    pub generation: i64,
    pub owner: String,
}

/// What a delivery writes under its lease.
pub enum Progress<'a> {
    /// Only extend the lease.
    Renew,
    /// The sink acknowledged through `seq` (`delivered`: events went out, not only past a
    /// filter).
    Delivered { seq: i64, delivered: bool },
    /// The sink failed with this error (no secret or URL in it).
    Failed { error: &'a str, now_ms: i64 },
}

/// Writes a delivery's progress and extends its lease to `until_ms`; `false` when the
/// lease is gone (another instance holds it, or the stream changed, paused or went).
pub async fn progress(
    db: &impl ConnectionTrait,
    lease: &Lease,
    progress: Progress<'_>,
    until_ms: i64,
) -> Result<bool> {
    let mut update = Query::update();
    update
        .table(streams())
        .value(col("lease_until_ms"), until_ms)
        .and_where(Expr::col(col("id")).eq(lease.id))
        .and_where(Expr::col(col("generation")).eq(lease.generation))
        .and_where(Expr::col(col("lease_owner")).eq(lease.owner.as_str()));
    match progress {
        Progress::Renew => {}
        Progress::Delivered { seq, delivered } => {
            update
                .value(col("delivered_seq"), seq)
                .value(col("last_error"), Option::<String>::None)
                .value(col("failing_since_ms"), Option::<i64>::None);
            if delivered {
                update.value(
                    col("last_delivered_at"),
                    crate::service::ingest::event::micros(Utc::now()),
                );
            }
        }
        Progress::Failed { error, now_ms } => {
            update.value(col("last_error"), error).value(
                col("failing_since_ms"),
                Func::coalesce([Expr::col(col("failing_since_ms")), Expr::val(now_ms)]),
            );
        }
    }
    Ok(db.execute(&update).await?.rows_affected() == 1)
}

/// Gives a lease up, so that another instance may take the stream at once.
pub async fn release(db: &impl ConnectionTrait, lease: &Lease) -> Result<()> {
    let update = Query::update()
        .table(streams())
        .value(col("lease_owner"), Option::<String>::None)
        .value(col("lease_until_ms"), Option::<i64>::None)
        .and_where(Expr::col(col("id")).eq(lease.id))
        .and_where(Expr::col(col("lease_owner")).eq(lease.owner.as_str()))
        .to_owned();
    db.execute(&update).await?;
    Ok(())
}

/// Seals again under the current KEK every stream secret sealed under another (after a
/// rotation, with `privacy-key rewrap`); returns how many.
pub async fn reseal(db: &impl ConnectionTrait, keyring: &Keyring) -> Result<u64> {
    let select = select()
        .and_where(Expr::col(col("kek_id")).ne(keyring.current()))
        .to_owned();
    let rows = rows(db, &select).await?;
    for row in &rows {
        let (Some(kek_id), Some(sealed)) = (&row.kek_id, &row.secret) else {
            continue;
        };
        let owner = super::secret_owner(&row.tenant_id, row.id);
        let secret = keyring.open(&owner, kek_id, sealed)?;
        let update = Query::update()
            .table(streams())
            .value(col("kek_id"), keyring.current())
            .value(col("secret"), keyring.seal(&owner, &secret)?)
            .and_where(Expr::col(col("id")).eq(row.id))
            .and_where(Expr::col(col("kek_id")).eq(kek_id.as_str()))
            .to_owned();
        db.execute(&update).await?;
    }
    Ok(rows.len() as u64)
}

/// Streams (of every tenant) failing since before `since_ms`.
pub async fn failing(db: &impl ConnectionTrait, since_ms: i64) -> Result<u64> {
    let condition = sea_orm::Condition::all()
        .add(Expr::col(col("paused")).eq(false))
        .add(Expr::col(col("failing_since_ms")).lt(since_ms));
    count(db, condition).await
}
