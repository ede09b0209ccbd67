//! The privacy tables: data keys (`audit_subject_keys`), sealed values (`audit_personal`,
//! a row per event and subject, the first holding the event's sealed values) and their
//! erasure.

use std::collections::{BTreeSet, HashMap};

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, FromQueryResult};
use uuid::Uuid;

use super::keyring::{DataKey, Keyring, random};
use super::seal::{EventKey, Values};
use crate::error::{Error, Result};

/// Data keys by tenant and subject.
pub type DataKeys = HashMap<(String, String), DataKey>;

/// An event's sealed values, as stored.
pub struct Sealed {
    pub tenant_id: String,
    pub event_id: Uuid,
    /// The event's data subjects, sorted: its key needs all of their keys.
    pub subjects: Vec<String>,
    pub sealed: Vec<u8>,
}

/// Rows a statement takes at most (5 parameters each, far below SQLite's 32,766).
const ROWS_PER_STATEMENT: usize = 1000;

fn keys_table() -> Alias {
    Alias::new("audit_subject_keys")
}

fn personal_table() -> Alias {
    Alias::new("audit_personal")
}

#[derive(FromQueryResult)]
struct KeyRow {
    tenant_id: String,
    subject_id: String,
    kek_id: String,
    wrapped: Vec<u8>,
}

/// The data keys of `wanted` (tenant, subject) pairs; those missing are made and stored.
/// Runs under the tenants' chain-head locks, so no other writer makes the same key.
pub async fn data_keys(
    txn: &impl ConnectionTrait,
    keyring: &Keyring,
    wanted: &BTreeSet<(String, String)>,
) -> Result<DataKeys> {
    let mut keys = load_keys(txn, keyring, wanted).await?;
    let missing: Vec<_> = wanted.iter().filter(|w| !keys.contains_key(*w)).collect();
    let now = chrono::Utc::now();
    for chunk in missing.chunks(ROWS_PER_STATEMENT) {
        let mut insert = Query::insert();
        insert.into_table(keys_table()).columns(
            ["tenant_id", "subject_id", "kek_id", "wrapped", "created_at"].map(Alias::new),
        );
        for (tenant_id, subject_id) in chunk {
            let key = random::<32>().map_err(|e| Error::internal(e.to_string()))?;
            let wrapped = keyring.wrap(tenant_id, subject_id, &key)?;
            insert
                .values([
                    tenant_id.into(),
                    subject_id.into(),
                    keyring.current().into(),
                    wrapped.into(),
                    now.into(),
                ])
                .map_err(Error::internal)?;
            keys.insert((tenant_id.clone(), subject_id.clone()), key);
        }
        txn.execute(&insert).await?;
    }
    Ok(keys)
}

async fn load_keys(
    db: &impl ConnectionTrait,
    keyring: &Keyring,
    wanted: &BTreeSet<(String, String)>,
) -> Result<DataKeys> {
    let mut by_tenant: HashMap<&str, Vec<&str>> = HashMap::new();
    for (tenant_id, subject_id) in wanted {
        by_tenant.entry(tenant_id).or_default().push(subject_id);
    }
    let mut keys = DataKeys::new();
    for (tenant_id, subjects) in by_tenant {
        for chunk in subjects.chunks(ROWS_PER_STATEMENT) {
            let select = Query::select()
                .columns(["tenant_id", "subject_id", "kek_id", "wrapped"].map(Alias::new))
                .from(keys_table())
                .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
                .and_where(Expr::col(Alias::new("subject_id")).is_in(chunk.iter().copied()))
                .to_owned();
            for row in KeyRow::find_by_statement(db.get_database_backend().build(&select))
                .all(db)
                .await?
            {
                let key =
                    keyring.unwrap(&row.tenant_id, &row.subject_id, &row.kek_id, &row.wrapped)?;
                keys.insert((row.tenant_id, row.subject_id), key);
            }
        }
    }
    Ok(keys)
}

/// Stores sealed values, a row per subject; only the first subject's row holds the sealed
/// bytes (the others name the event for erasure), so that naming 16 subjects does not
/// write the values 16 times.
pub async fn insert(txn: &impl ConnectionTrait, sealed: &[Sealed]) -> Result<()> {
    let rows: Vec<_> = sealed
        .iter()
        .flat_map(|s| {
            s.subjects
                .iter()
                .enumerate()
                .map(move |(i, subject)| (s, i, subject))
        })
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = Query::insert();
        insert
            .into_table(personal_table())
            .columns(["tenant_id", "subject_id", "event_id", "subjects", "sealed"].map(Alias::new));
        for (s, i, subject) in chunk {
            let subjects = serde_json::to_string(&s.subjects).map_err(Error::internal)?;
            let bytes = if *i == 0 {
                s.sealed.clone()
            } else {
                Vec::new()
            };
            insert
                .values([
                    s.tenant_id.as_str().into(),
                    subject.as_str().into(),
                    s.event_id.into(),
                    subjects.into(),
                    bytes.into(),
                ])
                .map_err(Error::internal)?;
        }
        txn.execute(&insert).await?;
    }
    Ok(())
}

#[derive(FromQueryResult)]
struct PersonalRow {
    tenant_id: String,
    subject_id: String,
    event_id: Uuid,
    subjects: String,
    sealed: Vec<u8>,
}

/// An event's personal values, decrypted: the JSON text of their object by path, not yet
/// parsed; and the event's key, which gives their salts.
pub struct Opened {
    pub text: Vec<u8>,
    pub key: EventKey,
}

impl Opened {
    /// The values, parsed.
    pub fn values(&self) -> Result<Values> {
        serde_json::from_slice(&self.text).map_err(Error::internal)
    }
}

/// The personal values of events (tenant, id), opened; an event missing from the answer
/// has none left: they were erased.
pub async fn open(
    db: &impl ConnectionTrait,
    keyring: &Keyring,
    events: &[(String, Uuid)],
) -> Result<HashMap<(String, Uuid), Opened>> {
    let mut by_tenant: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (tenant_id, id) in events {
        by_tenant.entry(tenant_id).or_default().push(*id);
    }
    let mut rows = Vec::new();
    for (tenant_id, ids) in by_tenant {
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let select = Query::select()
                .columns(
                    ["tenant_id", "subject_id", "event_id", "subjects", "sealed"].map(Alias::new),
                )
                .from(personal_table())
                .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
                .and_where(Expr::col(Alias::new("event_id")).is_in(chunk.iter().copied()))
                .to_owned();
            let statement = db.get_database_backend().build(&select);
            rows.extend(PersonalRow::find_by_statement(statement).all(db).await?);
        }
    }
    let wanted: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.tenant_id.clone(), r.subject_id.clone()))
        .collect();
    let keys = load_keys(db, keyring, &wanted).await?;
    let mut opened = HashMap::new();
    for row in rows {
        let place = (row.tenant_id, row.event_id);
        // The other subjects' rows hold no bytes; their keys were loaded all the same.
        if row.sealed.is_empty() || opened.contains_key(&place) {
            continue;
        }
        let subjects: Vec<String> = serde_json::from_str(&row.subjects).map_err(Error::internal)?;
        let subject_keys: Option<Vec<&DataKey>> = subjects
            .iter()
            .map(|s| keys.get(&(place.0.clone(), s.clone())))
            .collect();
        // A subject erased meanwhile (its key gone): the values are erased too.
        let Some(subject_keys) = subject_keys else {
            continue;
        };
        let key = EventKey::derive(&place.0, place.1, &subject_keys);
        let text = key.open(&row.sealed)?;
        opened.insert(place, Opened { text, key });
    }
    Ok(opened)
}

/// Destroys a subject's data key and the sealed values of every event it is a subject of
/// (all of the event's rows, whoever else is its subject too). Returns how many events lost
/// their values.
pub async fn erase(txn: &impl ConnectionTrait, tenant_id: &str, subject_id: &str) -> Result<u64> {
    let col = |name: &str| Expr::col(Alias::new(name));
    let events = Query::select()
        .column(Alias::new("event_id"))
        .from(personal_table())
        .and_where(col("tenant_id").eq(tenant_id))
        .and_where(col("subject_id").eq(subject_id))
        .to_owned();
    let backend = txn.get_database_backend();
    let erased = txn.query_all_raw(backend.build(&events)).await?.len() as u64;
    let sealed = Query::delete()
        .from_table(personal_table())
        .and_where(col("tenant_id").eq(tenant_id))
        .and_where(col("event_id").in_subquery(events))
        .to_owned();
    txn.execute(&sealed).await?;
    let key = Query::delete()
        .from_table(keys_table())
        .and_where(col("tenant_id").eq(tenant_id))
        .and_where(col("subject_id").eq(subject_id))
        .to_owned();
    txn.execute(&key).await?;
    Ok(erased)
}

/// Erases the personal values of a tenant's events of `action` that occurred before
/// `cutoff` (the action's `retentionDays`); returns how many events lost them.
pub async fn expire(
    txn: &impl ConnectionTrait,
    tenant_id: &str,
    action: &str,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<u64> {
    let col = |name: &str| Expr::col(Alias::new(name));
    let old = Query::select()
        .column(Alias::new("id"))
        .from(Alias::new("audit_logs"))
        .and_where(col("tenant_id").eq(tenant_id))
        .and_where(col("action").eq(action))
        .and_where(col("occurred_at").lt(cutoff))
        .to_owned();
    let sealed = Query::select()
        .distinct()
        .column(Alias::new("event_id"))
        .from(personal_table())
        .and_where(col("tenant_id").eq(tenant_id))
        .and_where(col("event_id").in_subquery(old.clone()))
        .to_owned();
    let backend = txn.get_database_backend();
    let expired = txn.query_all_raw(backend.build(&sealed)).await?.len() as u64;
    let delete = Query::delete()
        .from_table(personal_table())
        .and_where(col("tenant_id").eq(tenant_id))
        .and_where(col("event_id").in_subquery(old))
        .to_owned();
    txn.execute(&delete).await?;
    Ok(expired)
}

/// Deletes the sealed values of a tenant's events up to `through` (a retention purge).
pub async fn purge(txn: &impl ConnectionTrait, tenant_id: &str, through: i64) -> Result<()> {
    let events = Query::select()
        .column(Alias::new("id"))
        .from(Alias::new("audit_logs"))
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
        .and_where(Expr::col(Alias::new("seq")).lte(through))
        .to_owned();
    let delete = Query::delete()
        .from_table(personal_table())
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
        .and_where(Expr::col(Alias::new("event_id")).in_subquery(events))
        .to_owned();
    txn.execute(&delete).await?;
    Ok(())
}

/// Checks at start that the keyring opens the stored data keys: one of each KEK they are
/// wrapped with. A wrong or incomplete key file is an error, never a silent fallback.
pub async fn check(db: &impl ConnectionTrait, keyring: &Keyring) -> Result<()> {
    let kek_ids = Query::select()
        .expr_as(Expr::col(Alias::new("kek_id")).max(), Alias::new("kek_id"))
        .from(keys_table())
        .group_by_col(Alias::new("kek_id"))
        .to_owned();
    let backend = db.get_database_backend();
    for row in db.query_all_raw(backend.build(&kek_ids)).await? {
        let kek_id: String = row.try_get_by_index(0)?;
        let one = Query::select()
            .columns(["tenant_id", "subject_id", "kek_id", "wrapped"].map(Alias::new))
            .from(keys_table())
            .and_where(Expr::col(Alias::new("kek_id")).eq(kek_id.as_str()))
            .limit(1)
            .to_owned();
        if let Some(key) = KeyRow::find_by_statement(backend.build(&one))
            .one(db)
            .await?
        {
            keyring.unwrap(&key.tenant_id, &key.subject_id, &key.kek_id, &key.wrapped)?;
        }
    }
    Ok(())
}

/// Rewraps every data key not wrapped by the current KEK (after a rotation); returns how
/// many were rewrapped.
pub async fn rewrap(db: &impl ConnectionTrait, keyring: &Keyring) -> Result<u64> {
    let select = Query::select()
        .columns(["tenant_id", "subject_id", "kek_id", "wrapped"].map(Alias::new))
        .from(keys_table())
        .and_where(Expr::col(Alias::new("kek_id")).ne(keyring.current()))
        .to_owned();
    let rows = KeyRow::find_by_statement(db.get_database_backend().build(&select))
        .all(db)
        .await?;
    for row in &rows {
        let key = keyring.unwrap(&row.tenant_id, &row.subject_id, &row.kek_id, &row.wrapped)?;
        let update = Query::update()
            .table(keys_table())
            .values([
                (Alias::new("kek_id"), keyring.current().into()),
                (
                    Alias::new("wrapped"),
                    keyring.wrap(&row.tenant_id, &row.subject_id, &key)?.into(),
                ),
            ])
            .and_where(Expr::col(Alias::new("tenant_id")).eq(row.tenant_id.as_str()))
            .and_where(Expr::col(Alias::new("subject_id")).eq(row.subject_id.as_str()))
            .and_where(Expr::col(Alias::new("kek_id")).eq(row.kek_id.as_str()))
            .to_owned();
        db.execute(&update).await?;
    }
    Ok(rows.len() as u64)
}
