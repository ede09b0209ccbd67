//! An event as a caller submits it, its validation (by the rules of `audit_contract`), and
//! the row it becomes.

use std::collections::BTreeMap;

use audit_contract::rules::{EventFields, MAX_FUTURE_SKEW_SECONDS, check_event};
use chrono::{DateTime, Duration, Timelike, Utc};
use entity::audit_log::{self, ActorType, Outcome};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::service::privacy::{self, seal::EventKey, seal::Values, store::DataKeys};
use crate::service::tlog::canonical::{CHAIN_VERSION, canonical_bytes, canonical_ip, chain_hash};

pub use audit_contract::rules::MAX_BATCH;

/// The target of an operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub kind: String,
    pub id: String,
    pub name: Option<String>,
}

/// An event as submitted; the server adds id, tenant, sequence and timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub actor_type: ActorType,
    pub actor_id: String,
    pub actor_name: Option<String>,
    pub action: String,
    pub target: Option<Target>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub metadata: Option<Value>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// A W3C trace id: 32 lower-case hex digits, not all zero.
    pub trace_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Data subjects besides the actor whose personal data the event holds.
    pub subject_ids: Vec<String>,
    /// JSON Pointers of the personal values in `metadata`, from the action's registration
    /// (set by the service, never by the caller).
    pub personal_paths: Vec<String>,
}

/// What a new event leaves to seal beside it: its data subjects and personal values.
pub struct Personal {
    pub subjects: Vec<String>,
    pub values: Values,
    /// The event's key, which the values are sealed with.
    pub key: EventKey,
}

impl NewEvent {
    /// The event's data subjects, sorted: its actor and `subject_ids`.
    pub fn subjects(&self) -> Vec<String> {
        let mut subjects = self.subject_ids.clone();
        subjects.push(self.actor_id.clone());
        subjects.sort_unstable();
        subjects.dedup();
        subjects
    }

    /// Whether the event holds personal values (and needs its subjects' keys).
    pub fn has_personal(&self) -> bool {
        let metadata = self.metadata.as_ref();
        self.actor_name.is_some()
            || self.ip_address.is_some()
            || self.user_agent.is_some()
            || (self.personal_paths.iter()).any(|p| {
                metadata
                    .and_then(|m| m.pointer(p))
                    .is_some_and(|v| !v.is_null())
            })
    }

    /// Checks every field (`audit_contract::rules`); the error's path is relative to the
    /// event (`action`, `actor.id`).
    pub fn validate(&self, now: DateTime<Utc>) -> Result<()> {
        check_event(&EventFields {
            action: &self.action,
            actor_id: &self.actor_id,
            actor_name: self.actor_name.as_deref(),
            target: self
                .target
                .as_ref()
                .map(|t| (t.kind.as_str(), t.id.as_str(), t.name.as_deref())),
            reason: self.reason.as_deref(),
            metadata: self.metadata.as_ref(),
            ip_address: self.ip_address.as_deref(),
            user_agent: self.user_agent.as_deref(),
            request_id: self.request_id.as_deref(),
            trace_id: self.trace_id.as_deref(),
            idempotency_key: self.idempotency_key.as_deref(),
            subject_ids: &self.subject_ids,
        })?;
        if let Some(at) = self.occurred_at {
            check_occurred_at(at, now)?;
        }
        Ok(())
    }

    /// The row this event becomes, chained to `prev_hash`, and the personal values taken
    /// out of it (committed to in its `personal`). Timestamps are cut to microseconds, the
    /// precision both databases store, so the returned row equals the stored one.
    pub fn into_model(
        self,
        tenant_id: &str,
        seq: i64,
        recorded_at: DateTime<Utc>,
        prev_hash: Vec<u8>,
        keys: &DataKeys,
    ) -> Result<(audit_log::Model, Option<Personal>)> {
        let id = Uuid::now_v7();
        let (mut model, personal) =
            self.into_unhashed(id, tenant_id, seq, recorded_at, CHAIN_VERSION, keys)?;
        model.prev_hash = prev_hash;
        model.hash = chain_hash(&model.prev_hash, &model);
        Ok((model, personal))
    }

    /// The row, unhashed, in canonical encoding `version`: from version 3 without its
    /// personal values, which come back beside it, committed to with `keys`.
    fn into_unhashed(
        mut self,
        id: Uuid,
        tenant_id: &str,
        seq: i64,
        recorded_at: DateTime<Utc>,
        version: i16,
        keys: &DataKeys,
    ) -> Result<(audit_log::Model, Option<Personal>)> {
        let subjects = self.subjects();
        let pointers = std::mem::take(&mut self.personal_paths);
        let mut model = self.into_row(id, tenant_id, seq, recorded_at, version);
        if version < 3 {
            return Ok((model, None));
        }
        let values = privacy::take(&mut model, &pointers);
        if values.is_empty() {
            return Ok((model, None));
        }
        let subject_keys = (subjects.iter())
            .map(|s| keys.get(&(tenant_id.to_owned(), s.clone())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::internal("a data subject's key was not loaded"))?;
        let key = EventKey::derive(tenant_id, id, &subject_keys);
        let commitments: BTreeMap<&str, String> = (values.iter())
            .map(|(path, value)| (path.as_str(), key.commit(path, value)))
            .collect();
        model.personal = Some(serde_json::to_string(&commitments).map_err(Error::internal)?);
        Ok((
            model,
            Some(Personal {
                subjects,
                values,
                key,
            }),
        ))
    }

    fn into_row(
        self,
        id: Uuid,
        tenant_id: &str,
        seq: i64,
        recorded_at: DateTime<Utc>,
        version: i16,
    ) -> audit_log::Model {
        let (target_type, target_id, target_name) = match self.target {
            Some(t) => (Some(t.kind), Some(t.id), t.name),
            None => (None, None, None),
        };
        audit_log::Model {
            id,
            tenant_id: tenant_id.to_owned(),
            seq,
            occurred_at: micros(self.occurred_at.unwrap_or(recorded_at)),
            recorded_at: micros(recorded_at),
            actor_type: self.actor_type,
            actor_id: self.actor_id,
            actor_name: self.actor_name,
            action: self.action,
            target_type,
            target_id,
            target_name,
            outcome: self.outcome,
            reason: self.reason,
            metadata: self
                .metadata
                .unwrap_or_else(|| Value::Object(Default::default()))
                .into(),
            ip_address: self.ip_address.map(canonical_ip),
            user_agent: self.user_agent,
            request_id: self.request_id,
            trace_id: self.trace_id,
            chain_version: version,
            idempotency_key: self.idempotency_key,
            prev_hash: Vec::new(),
            hash: Vec::new(),
            personal: None,
        }
    }

    /// Whether `stored` records this same event, for idempotent retries: the row this event
    /// would become, in the place of `stored`, has the same canonical encoding (the one the
    /// hash chain covers), so whatever a database gives back for a value (`1e16` as an
    /// integer, an address as `host/prefix`) equals its retry. `occurredAt` is compared
    /// only when the caller gave it: a retry without it means "now" both times.
    ///
    /// Personal values compare by their commitments, made with the subjects' keys of now: a
    /// retry whose subject was erased since conflicts with what was stored.
    pub fn same_content(&self, stored: &audit_log::Model, keys: &DataKeys) -> Result<bool> {
        // An event stored before an upgrade keeps the version it was hashed with.
        let (mut retry, _) = self.clone().into_unhashed(
            stored.id,
            &stored.tenant_id,
            stored.seq,
            stored.recorded_at,
            stored.chain_version,
            keys,
        )?;
        if self.occurred_at.is_none() {
            retry.occurred_at = stored.occurred_at;
        }
        // A retry usually comes in another trace, so the trace id is the stored one's.
        retry.trace_id.clone_from(&stored.trace_id);
        Ok(canonical_bytes(&retry) == canonical_bytes(stored))
    }
}

/// Cuts a timestamp to microseconds.
pub fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(at.nanosecond() / 1000 * 1000)
        .unwrap_or(at)
}

/// Between 1970 and 5 minutes from now, with no leap second: both databases store such an
/// instant exactly as given, so its hash still matches when read back.
fn check_occurred_at(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
    if at > now + Duration::seconds(MAX_FUTURE_SKEW_SECONDS) {
        return Err(Error::bad_input(
            "occurredAt",
            "occurredAt is more than 5 minutes in the future",
        ));
    }
    if at < DateTime::UNIX_EPOCH {
        return Err(Error::bad_input("occurredAt", "occurredAt is before 1970"));
    }
    if at.nanosecond() >= 1_000_000_000 {
        return Err(Error::bad_input(
            "occurredAt",
            "occurredAt may not be a leap second",
        ));
    }
    Ok(())
}
