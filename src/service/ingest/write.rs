//! One group-commit transaction: lock the heads, plan each job's events against the chain
//! and the stored idempotency keys, insert, move the heads, NOTIFY, commit.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use entity::audit_log::{self, ActorType, Outcome};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use serde_json::json;

use super::job::{Erasure, Request, Work};
use super::rows::{count_events, insert, insert_sealed};
use super::tables::{Head, ROWS_PER_INSERT, load_keyed, lock_heads, move_heads, remember_keys};
use crate::error::{Error, Result};
use crate::service::actions::{self, Change};
use crate::service::ingest::event::{NewEvent, Personal, Target, micros};
use crate::service::privacy::keyring::Keyring;
use crate::service::privacy::store::{self, DataKeys, Sealed};
use crate::service::retention;
use crate::service::streams;
use sha2::Digest;

/// Events already stored, by tenant and idempotency key.
type Known = HashMap<(String, String), audit_log::Model>;

/// Per job, its events or its own failure.
type JobResults = Vec<Result<Vec<audit_log::Model>>>;

/// Where a transaction's time went, for `/metrics`.
pub(super) struct Spent {
    /// Numbering and hashing events.
    pub chain: Duration,
    /// Adding them to the hourly and daily rollups.
    pub rollup: Duration,
}

/// Writes a group of jobs in one transaction. The outer error fails the whole group; the
/// inner results are per job. Also returns the new rows, in commit order.
pub(super) async fn write(
    db: &DatabaseConnection,
    keyring: Option<&Keyring>,
    requests: &[Request],
) -> Result<(JobResults, Vec<audit_log::Model>, Spent)> {
    let txn = db.begin().await?;
    let recorded_at = micros(Utc::now());

    let mut heads = locked_heads(&txn, requests).await?;
    let mut known = load_keyed(&txn, requests).await?;
    let keys = subject_keys(&txn, keyring, requests).await?;

    let mut results = Vec::with_capacity(requests.len());
    let mut rows = Vec::new();
    let mut sealed = Vec::new();
    let mut chain = Duration::ZERO;
    for (tenant_id, work) in requests {
        let head = heads
            .get_mut(tenant_id.as_str())
            .map(|(_, head)| head)
            .ok_or_else(|| Error::internal("chain head not locked"))?;
        let events = match work {
            Work::Log(events) => Cow::Borrowed(events),
            Work::Purge(cutoff) => {
                match retention::cut(&txn, tenant_id, head.seq, *cutoff, recorded_at).await? {
                    Some(cut) => Cow::Owned(vec![purge_event(tenant_id, &cut)]),
                    None => {
                        results.push(Ok(Vec::new()));
                        continue;
                    }
                }
            }
            Work::Erase(erasure) => {
                let erased = store::erase(&txn, tenant_id, &erasure.subject_id).await?;
                Cow::Owned(vec![erasure_event(erasure, erased)])
            }
            Work::Expire(action, cutoff) => {
                match store::expire(&txn, tenant_id, action, *cutoff).await? {
                    0 => {
                        results.push(Ok(Vec::new()));
                        continue;
                    }
                    expired => Cow::Owned(vec![expiry_event(action, *cutoff, expired)]),
                }
            }
            Work::Configure(change, requested_by) => {
                let changed = actions::store::apply(&txn, tenant_id, change).await?;
                Cow::Owned(vec![change_event(change, requested_by, changed)])
            }
            Work::Stream(change, requested_by) => {
                match streams::store::apply(&txn, tenant_id, head.seq, change).await? {
                    Ok(applied) => Cow::Owned(vec![stream_event(applied, requested_by)]),
                    Err(refused) => {
                        results.push(Err(refused));
                        continue;
                    }
                }
            }
        };
        let planning = Instant::now();
        let planned = plan(tenant_id, &events, head, recorded_at, &known, &keys);
        chain += planning.elapsed();
        let adopted = planned.and_then(|planned| {
            adopt(tenant_id, planned, head, &mut known, &mut rows, &mut sealed)
        });
        results.push(adopted);
    }

    for chunk in rows.chunks(ROWS_PER_INSERT) {
        insert(&txn, chunk).await?;
    }
    insert_sealed(&txn, &sealed).await?;
    remember_keys(&txn, &rows, recorded_at).await?;
    let counting = Instant::now();
    count_events(&txn, &rows).await?;
    let rollup = counting.elapsed();
    let moved: Vec<_> = (heads.iter())
        .filter(|(_, (first, head))| head.seq > *first)
        .map(|(tenant_id, (first, head))| (*tenant_id, *first, head))
        .collect();
    if !moved.is_empty() {
        move_heads(&txn, &moved).await?;
    }
    txn.commit().await?;
    Ok((results, rows, Spent { chain, rollup }))
}

/// Locks the heads of the tenants written to, in sorted order so that every writer locks
/// them in the same order and none deadlock. Per tenant: the sequence when locked, and the
/// head as it moves.
async fn locked_heads<'r>(
    txn: &DatabaseTransaction,
    requests: &'r [Request],
) -> Result<BTreeMap<&'r str, (i64, Head)>> {
    let mut tenant_ids: Vec<&str> = requests.iter().map(|(t, _)| t.as_str()).collect();
    tenant_ids.sort_unstable();
    tenant_ids.dedup();
    let mut locked = lock_heads(txn, &tenant_ids).await?;
    let mut heads = BTreeMap::new();
    for tenant_id in tenant_ids {
        let head = locked
            .remove(tenant_id)
            .ok_or_else(|| Error::internal("chain head not locked"))?;
        heads.insert(tenant_id, (head.seq, head));
    }
    Ok(heads)
}

/// The data keys of the subjects of the events that hold personal values; made for those
/// who have none yet.
async fn subject_keys(
    txn: &DatabaseTransaction,
    keyring: Option<&Keyring>,
    requests: &[Request],
) -> Result<DataKeys> {
    let mut wanted = BTreeSet::new();
    for (tenant_id, work) in requests {
        if let Work::Log(events) = work {
            for event in events.iter().filter(|e| e.has_personal()) {
                wanted.extend(event.subjects().into_iter().map(|s| (tenant_id.clone(), s)));
            }
        }
    }
    if wanted.is_empty() {
        return Ok(DataKeys::new());
    }
    let keyring =
        keyring.ok_or_else(|| Error::internal("personal values need a privacy key file"))?;
    store::data_keys(txn, keyring, &wanted).await
}

/// Takes a job's planned events: the new ones move the head, become known by their keys
/// and go to `rows`, their personal values, sealed, to `sealed`; all of them answer the job.
fn adopt(
    tenant_id: &str,
    planned: Vec<Planned>,
    head: &mut Head,
    known: &mut Known,
    rows: &mut Vec<audit_log::Model>,
    sealed: &mut Vec<Sealed>,
) -> Result<Vec<audit_log::Model>> {
    let mut models = Vec::with_capacity(planned.len());
    for Planned {
        model,
        is_new,
        personal,
    } in planned
    {
        if let Some(personal) = personal.filter(|_| is_new) {
            sealed.push(Sealed {
                tenant_id: tenant_id.to_owned(),
                event_id: model.id,
                actor_id: model.actor_id.clone(),
                sealed: personal.key.seal(&personal.values)?,
                subjects: personal.subjects,
            });
        }
        if is_new {
            head.seq = model.seq;
            head.hash = model.hash.clone();
            head.recorded_at = Some(model.recorded_at);
            if let Some(key) = &model.idempotency_key {
                known.insert((tenant_id.to_owned(), key.clone()), model.clone());
            }
            rows.push(model.clone());
        }
        models.push(model);
    }
    Ok(models)
}

/// The event that records a purge, in the purged tenant's own chain.
fn purge_event(tenant_id: &str, cut: &retention::Cut) -> NewEvent {
    NewEvent {
        action: "audit.retention.purged".to_owned(),
        target: Some(Target {
            kind: "tenant".to_owned(),
            id: tenant_id.to_owned(),
            name: None,
        }),
        metadata: Some(json!({
            "purgedCount": cut.purged_count,
            "throughSequence": cut.seq.to_string(),
            "throughHash": hex::encode(&cut.hash),
            "recordedBefore": crate::service::tlog::canonical::timestamp(cut.cutoff),
        })),
        ..system_event()
    }
}

/// The event that records a change to the registry or the settings.
fn change_event(change: &Change, requested_by: &str, changed: bool) -> NewEvent {
    let (action, target, metadata) = match change {
        Change::Register(action) => (
            "audit.action.registered",
            action.action.clone(),
            json!({
                "description": action.description,
                "metadataSchemaSha256": action.metadata_schema.as_ref().map(|schema| {
                    hex::encode(sha2::Sha256::digest(crate::service::tlog::canonical::jcs(schema)))
                }),
                "personalPaths": action.personal_paths,
                "retentionDays": action.retention_days,
            }),
        ),
        Change::Remove(action) => ("audit.action.removed", action.clone(), json!({})),
        Change::RequireRegistered(require) => (
            "audit.settings.changed",
            "requireRegisteredActions".to_owned(),
            json!({ "requireRegisteredActions": require }),
        ),
    };
    let mut metadata = metadata;
    metadata["requestedBy"] = requested_by.into();
    metadata["changed"] = changed.into();
    NewEvent {
        action: action.to_owned(),
        target: Some(Target {
            kind: "setting".to_owned(),
            id: target,
            name: None,
        }),
        metadata: Some(metadata),
        ..system_event()
    }
}

/// The event that records a change to a log stream (never its secret).
fn stream_event(applied: streams::store::Applied, requested_by: &str) -> NewEvent {
    let mut metadata = applied.metadata;
    metadata["requestedBy"] = requested_by.into();
    NewEvent {
        action: applied.action.to_owned(),
        target: Some(Target {
            kind: "stream".to_owned(),
            id: applied.id.to_string(),
            name: Some(applied.name),
        }),
        metadata: Some(metadata),
        ..system_event()
    }
}

/// The event that records the expiry of an action's personal values.
fn expiry_event(action: &str, cutoff: DateTime<Utc>, expired: u64) -> NewEvent {
    NewEvent {
        action: "audit.personal.expired".to_owned(),
        target: Some(Target {
            kind: "action".to_owned(),
            id: action.to_owned(),
            name: None,
        }),
        metadata: Some(json!({
            "erasedEvents": expired,
            "occurredBefore": crate::service::tlog::canonical::timestamp(cutoff),
        })),
        ..system_event()
    }
}

/// An event by audit-service itself, of no data subject.
fn system_event() -> NewEvent {
    NewEvent {
        actor_type: ActorType::System,
        actor_id: "audit-service".to_owned(),
        actor_name: None,
        action: String::new(),
        target: None,
        outcome: Outcome::Success,
        reason: None,
        occurred_at: None,
        metadata: None,
        ip_address: None,
        user_agent: None,
        request_id: None,
        trace_id: None,
        idempotency_key: None,
        subject_ids: Vec::new(),
        personal_paths: Vec::new(),
    }
}

/// The event that records an erasure, without anything erased.
fn erasure_event(erasure: &Erasure, erased: u64) -> NewEvent {
    NewEvent {
        action: "audit.subject.erased".to_owned(),
        target: Some(Target {
            kind: "subject".to_owned(),
            id: erasure.subject_id.clone(),
            name: None,
        }),
        reason: Some(erasure.reason.clone()),
        metadata: Some(json!({
            "erasedEvents": erased,
            "requestedBy": erasure.requested_by,
        })),
        ..system_event()
    }
}

struct Planned {
    model: audit_log::Model,
    is_new: bool,
    /// A new event's personal values, to seal.
    personal: Option<Personal>,
}

/// Decides, for each event of one job, whether it is new (and its place in the chain) or a
/// retry of a stored event. Fails the whole job on a conflicting idempotency key; the head
/// moves only when the caller accepts the plan.
fn plan(
    tenant_id: &str,
    events: &[NewEvent],
    head: &Head,
    recorded_at: DateTime<Utc>,
    known: &Known,
    keys: &DataKeys,
) -> Result<Vec<Planned>> {
    let mut seq = head.seq;
    let mut prev_hash = head.hash.clone();
    let mut own: HashMap<&str, audit_log::Model> = HashMap::new();
    let mut planned = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        if let Some(key) = &event.idempotency_key {
            let stored = own
                .get(key.as_str())
                .or_else(|| known.get(&(tenant_id.to_owned(), key.clone())));
            if let Some(stored) = stored {
                if !event.same_content(stored, keys)? {
                    return Err(Error::IdempotencyConflict {
                        field: format!("[{i}].idempotencyKey"),
                        key: key.clone(),
                    });
                }
                planned.push(Planned {
                    model: stored.clone(),
                    is_new: false,
                    personal: None,
                });
                continue;
            }
        }
        seq += 1;
        let (model, personal) =
            event
                .clone()
                .into_model(tenant_id, seq, recorded_at, prev_hash, keys)?;
        prev_hash = model.hash.clone();
        if let Some(key) = &event.idempotency_key {
            own.insert(key, model.clone());
        }
        planned.push(Planned {
            model,
            is_new: true,
            personal,
        });
    }
    Ok(planned)
}
