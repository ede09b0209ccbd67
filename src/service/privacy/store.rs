//! The privacy tables: data keys (`audit_subject_keys`), sealed values (`audit_personal`,
//! a row per event and subject, keyed by tenant, subject and event; the actor's row holds
//! the event's sealed values, the others name the event for erasure) and their erasure.

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
    /// The event's actor, one of its subjects, whose row holds the sealed bytes.
    pub actor_id: String,
    /// The event's data subjects, sorted: its key needs all of their keys.
    pub subjects: Vec<String>,
    pub sealed: Vec<u8>,
}

/// Rows a statement takes at most (5 parameters each, far below SQLite's 32,766).
pub const ROWS_PER_STATEMENT: usize = 1000;

fn keys_table() -> Alias {
    Alias::new("audit_subject_keys")
}

pub fn personal_table() -> Alias {
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

#[derive(FromQueryResult)]
struct PersonalRow {
    tenant_id: String,
    subject_id: String,
    event_id: Uuid,
    subjects: String,
    sealed: Vec<u8>,
}

impl PersonalRow {
    fn subjects(&self) -> Result<Vec<String>> {
        serde_json::from_str(&self.subjects).map_err(Error::internal)
    }
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

/// An event's place among the sealed rows: its tenant, its actor (whose row holds the
/// sealed values: the actor is always a subject) and its id.
pub type Place = (String, String, Uuid);

/// The rows of `subjects` (in one tenant) for `events`, a statement per thousand events.
async fn rows_of(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    subjects: &BTreeSet<&str>,
    events: &[Uuid],
) -> Result<Vec<PersonalRow>> {
    let mut rows = Vec::new();
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let select = Query::select()
            .columns(["tenant_id", "subject_id", "event_id", "subjects", "sealed"].map(Alias::new))
            .from(personal_table())
            .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
            .and_where(Expr::col(Alias::new("subject_id")).is_in(subjects.iter().copied()))
            .and_where(Expr::col(Alias::new("event_id")).is_in(chunk.iter().copied()))
            .to_owned();
        let statement = db.get_database_backend().build(&select);
        rows.extend(PersonalRow::find_by_statement(statement).all(db).await?);
    }
    Ok(rows)
}

/// The personal values of events, opened; an event missing from the answer has none left:
/// they were erased.
pub async fn open(
    db: &impl ConnectionTrait,
    keyring: &Keyring,
    events: &[Place],
) -> Result<HashMap<Place, Opened>> {
    let mut by_tenant: HashMap<&str, (BTreeSet<&str>, Vec<Uuid>)> = HashMap::new();
    for (tenant_id, actor_id, id) in events {
        let (actors, ids) = by_tenant.entry(tenant_id).or_default();
        actors.insert(actor_id);
        ids.push(*id);
    }
    let actors: HashMap<(&str, Uuid), &str> = (events.iter())
        .map(|(tenant_id, actor_id, id)| ((tenant_id.as_str(), *id), actor_id.as_str()))
        .collect();
    let mut holders = Vec::new();
    for (tenant_id, (subjects, ids)) in by_tenant {
        let rows = rows_of(db, tenant_id, &subjects, &ids).await?;
        // Only the actor's row of each event holds its sealed values.
        holders.extend(rows.into_iter().filter(|row| {
            actors.get(&(row.tenant_id.as_str(), row.event_id)) == Some(&row.subject_id.as_str())
                && !row.sealed.is_empty()
        }));
    }
    let mut wanted = BTreeSet::new();
    for row in &holders {
        wanted.extend(
            row.subjects()?
                .into_iter()
                .map(|s| (row.tenant_id.clone(), s)),
        );
    }
    let keys = load_keys(db, keyring, &wanted).await?;
    let mut opened = HashMap::new();
    for row in holders {
        let subject_keys: Option<Vec<&DataKey>> = (row.subjects()?.into_iter())
            .map(|s| keys.get(&(row.tenant_id.clone(), s)))
            .collect();
        // A subject erased meanwhile (its key gone): the values are erased too.
        let Some(subject_keys) = subject_keys else {
            continue;
        };
        let key = EventKey::derive(&row.tenant_id, row.event_id, &subject_keys);
        let text = key.open(&row.sealed)?;
        opened.insert(
            (row.tenant_id, row.subject_id, row.event_id),
            Opened { text, key },
        );
    }
    Ok(opened)
}

/// Deletes every subject's row of each event `rows` name (each row lists its event's
/// subjects); returns how many events that was.
async fn delete_events(
    txn: &impl ConnectionTrait,
    tenant_id: &str,
    rows: &[PersonalRow],
) -> Result<u64> {
    let mut by_subject: HashMap<String, BTreeSet<Uuid>> = HashMap::new();
    for row in rows {
        for subject in row.subjects()? {
            by_subject.entry(subject).or_default().insert(row.event_id);
        }
    }
    for (subject, events) in by_subject {
        let events: Vec<Uuid> = events.into_iter().collect();
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let delete = Query::delete()
                .from_table(personal_table())
                .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
                .and_where(Expr::col(Alias::new("subject_id")).eq(subject.as_str()))
                .and_where(Expr::col(Alias::new("event_id")).is_in(chunk.iter().copied()))
                .to_owned();
            txn.execute(&delete).await?;
        }
    }
    let events: BTreeSet<Uuid> = rows.iter().map(|row| row.event_id).collect();
    Ok(events.len() as u64)
}

/// Destroys a subject's data key and the sealed values of every event it is a subject of
/// (all of the event's rows, whoever else is its subject too). Returns how many events lost
/// their values.
pub async fn erase(txn: &impl ConnectionTrait, tenant_id: &str, subject_id: &str) -> Result<u64> {
    let col = |name: &str| Expr::col(Alias::new(name));
    let select = Query::select()
        .columns(["tenant_id", "subject_id", "event_id", "subjects", "sealed"].map(Alias::new))
        .from(personal_table())
        .and_where(col("tenant_id").eq(tenant_id))
        .and_where(col("subject_id").eq(subject_id))
        .to_owned();
    let backend = txn.get_database_backend();
    let rows = PersonalRow::find_by_statement(backend.build(&select))
        .all(txn)
        .await?;
    let erased = delete_events(txn, tenant_id, &rows).await?;
    let key = Query::delete()
        .from_table(keys_table())
        .and_where(col("tenant_id").eq(tenant_id))
        .and_where(col("subject_id").eq(subject_id))
        .to_owned();
    txn.execute(&key).await?;
    Ok(erased)
}

/// Deletes the sealed values of the tenant's events that `events` selects from `audit_logs`
/// (their ids, actors and sequences), a page of a thousand at a time in sequence order;
/// returns how many events had any.
async fn delete_selected(
    txn: &impl ConnectionTrait,
    tenant_id: &str,
    events: sea_orm::sea_query::SelectStatement,
) -> Result<u64> {
    let backend = txn.get_database_backend();
    let mut deleted = 0;
    let mut after = 0i64;
    loop {
        let page = events
            .clone()
            .and_where(Expr::col(Alias::new("seq")).gt(after))
            .order_by(Alias::new("seq"), sea_orm::sea_query::Order::Asc)
            .limit(ROWS_PER_STATEMENT as u64)
            .to_owned();
        let found = txn.query_all_raw(backend.build(&page)).await?;
        if found.is_empty() {
            return Ok(deleted);
        }
        let mut actors = BTreeSet::new();
        let mut ids = Vec::with_capacity(found.len());
        let mut places = std::collections::HashSet::new();
        for row in &found {
            let id: Uuid = row.try_get_by_index(0)?;
            let actor: String = row.try_get_by_index(1)?;
            after = row.try_get_by_index(2)?;
            places.insert((actor.clone(), id));
            actors.insert(actor);
            ids.push(id);
        }
        let actors: BTreeSet<&str> = actors.iter().map(String::as_str).collect();
        let rows: Vec<PersonalRow> = (rows_of(txn, tenant_id, &actors, &ids).await?)
            .into_iter()
            .filter(|row| places.contains(&(row.subject_id.clone(), row.event_id)))
            .collect();
        deleted += delete_events(txn, tenant_id, &rows).await?;
        if found.len() < ROWS_PER_STATEMENT {
            return Ok(deleted);
        }
    }
}

/// The tenant's events with personal values (id and actor) that `filter` narrows.
fn personal_events(
    tenant_id: &str,
    filter: impl FnOnce(&mut sea_orm::sea_query::SelectStatement),
) -> sea_orm::sea_query::SelectStatement {
    let mut select = Query::select()
        .columns(["id", "actor_id", "seq"].map(Alias::new))
        .from(Alias::new("audit_logs"))
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
        .and_where(Expr::col(Alias::new("personal")).is_not_null())
        .to_owned();
    filter(&mut select);
    select
}

/// Erases the personal values of a tenant's events of `action` that occurred before
/// `cutoff` (the action's `retentionDays`); returns how many events lost them.
pub async fn expire(
    txn: &impl ConnectionTrait,
    tenant_id: &str,
    action: &str,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<u64> {
    let events = personal_events(tenant_id, |select| {
        select
            .and_where(Expr::col(Alias::new("action")).eq(action))
            .and_where(Expr::col(Alias::new("occurred_at")).lt(cutoff));
    });
    delete_selected(txn, tenant_id, events).await
}

/// Deletes the sealed values of a tenant's events up to `through` (a retention purge).
pub async fn purge(txn: &impl ConnectionTrait, tenant_id: &str, through: i64) -> Result<()> {
    let events = personal_events(tenant_id, |select| {
        select.and_where(Expr::col(Alias::new("seq")).lte(through));
    });
    delete_selected(txn, tenant_id, events).await.map(drop)
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
