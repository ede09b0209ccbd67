//! DataLoaders: events by id and the trails of actors and targets, batched so that N
//! federation entities cost a constant number of SQL statements, not N.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use entity::audit_log;
use uuid::Uuid;

use sea_orm::DatabaseConnection;

use super::budget::Budget;
use crate::service::privacy::keyring::Keyring;
use crate::service::privacy::store::{self, Opened};
use crate::service::query;
use crate::service::query::cursor::Cursor;
use crate::service::query::filter::Filter;
use crate::service::query::trail::{self, Subject};
use crate::service::replicas::ReadSource;

/// Most keys per batch (SQLite allows 500 members in one UNION).
pub const MAX_BATCH: usize = 250;
/// About how many events one trail statement may load.
const LOAD_CHUNK_ROWS: usize = 1000;
/// Loads for one request, against its budget (see `admission`). Keys carry the caller's
/// tenants too.
pub struct AuditLoader {
    /// Where the request reads.
    pub reads: Arc<ReadSource>,
    pub budget: Arc<Budget>,
}

/// An event by id, within some tenants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub tenant_ids: Arc<[String]>,
    pub id: Uuid,
}

/// What the trails of one batch share: filter (with the caller's tenants), cursor, size.
#[derive(Clone, Debug)]
pub struct TrailArgs {
    fingerprint: String,
    pub filter: Filter,
    pub after: Option<Cursor>,
    pub limit: u64,
}

impl TrailArgs {
    pub fn new(filter: Filter, after: Option<Cursor>, limit: u64) -> Arc<Self> {
        let fingerprint = format!("{filter:?}|{after:?}|{limit}");
        Arc::new(TrailArgs {
            fingerprint,
            filter,
            after,
            limit,
        })
    }
}

impl PartialEq for TrailArgs {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for TrailArgs {}

impl std::hash::Hash for TrailArgs {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
    }
}

/// The newest events of one actor or target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrailKey {
    pub subject: Subject,
    pub args: Arc<TrailArgs>,
}

/// How many events one actor or target has (cursor and size ignored).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CountKey(pub TrailKey);

/// Groups keys that one statement can serve: same arguments, same kind of subject.
fn batches<'k>(
    keys: impl Iterator<Item = &'k TrailKey>,
) -> HashMap<(Arc<TrailArgs>, bool), Vec<Subject>> {
    let mut batches: HashMap<(Arc<TrailArgs>, bool), Vec<Subject>> = HashMap::new();
    for key in keys {
        let is_actor = matches!(key.subject, Subject::Actor(..));
        batches
            .entry((key.args.clone(), is_actor))
            .or_default()
            .push(key.subject.clone());
    }
    batches
}

/// The personal values of events, opened. They are read from the primary, where an
/// erasure takes effect at once, and batched across requests: a key names its event's
/// tenant, and only callers with `audit:pii` load any.
pub struct PersonalLoader {
    pub db: DatabaseConnection,
    pub keyring: Arc<Keyring>,
}

/// An event by tenant, actor and id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PersonalKey(pub String, pub String, pub Uuid);

impl Loader<PersonalKey> for PersonalLoader {
    type Value = Arc<Opened>;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[PersonalKey],
    ) -> Result<HashMap<PersonalKey, Self::Value>, Self::Error> {
        let events: Vec<_> = keys
            .iter()
            .map(|k| (k.0.clone(), k.1.clone(), k.2))
            .collect();
        let opened = store::open(&self.db, &self.keyring, &events).await?;
        Ok(opened
            .into_iter()
            .map(|((tenant_id, actor_id, id), opened)| {
                (PersonalKey(tenant_id, actor_id, id), Arc::new(opened))
            })
            .collect())
    }
}

impl Loader<EventKey> for AuditLoader {
    type Value = audit_log::Model;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[EventKey]) -> Result<HashMap<EventKey, Self::Value>, Self::Error> {
        let mut by_tenants: HashMap<Arc<[String]>, Vec<Uuid>> = HashMap::new();
        for key in keys {
            by_tenants
                .entry(key.tenant_ids.clone())
                .or_default()
                .push(key.id);
        }
        let mut found = HashMap::new();
        for (tenant_ids, ids) in by_tenants {
            let turn = self.budget.turn().await;
            let meter = self.budget.meter();
            let rows = query::find_many(self.reads.db().await, &tenant_ids, ids, &meter).await?;
            drop(turn);
            for row in rows {
                let key = EventKey {
                    tenant_ids: tenant_ids.clone(),
                    id: row.id,
                };
                found.insert(key, row);
            }
        }
        Ok(found)
    }
}

impl Loader<TrailKey> for AuditLoader {
    type Value = Vec<audit_log::Model>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[TrailKey]) -> Result<HashMap<TrailKey, Self::Value>, Self::Error> {
        let mut found = HashMap::new();
        for ((args, _), subjects) in batches(keys.iter()) {
            // A statement loads at most about `LOAD_CHUNK_ROWS` events, each charged to the
            // request's budget before it is decoded.
            let per_chunk = (LOAD_CHUNK_ROWS / args.limit.max(1) as usize).max(1);
            for chunk in subjects.chunks(per_chunk) {
                let turn = self.budget.turn().await;
                let meter = self.budget.meter();
                let pages = trail::pages(
                    self.reads.db().await,
                    chunk,
                    &args.filter,
                    args.after.as_ref(),
                    args.limit,
                    &meter,
                )
                .await?;
                drop(turn);
                for (subject, rows) in pages {
                    found.insert(
                        TrailKey {
                            subject,
                            args: args.clone(),
                        },
                        rows,
                    );
                }
            }
        }
        Ok(found)
    }
}

impl Loader<CountKey> for AuditLoader {
    type Value = u64;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[CountKey]) -> Result<HashMap<CountKey, Self::Value>, Self::Error> {
        let mut found = HashMap::new();
        for ((args, _), subjects) in batches(keys.iter().map(|k| &k.0)) {
            let turn = self.budget.turn().await;
            let counts = trail::counts(self.reads.db().await, &subjects, &args.filter).await?;
            drop(turn);
            for (subject, n) in counts {
                found.insert(
                    CountKey(TrailKey {
                        subject,
                        args: args.clone(),
                    }),
                    n,
                );
            }
        }
        Ok(found)
    }
}
