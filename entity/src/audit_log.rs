//! One governance operation: who did what to which resource, when, and with what outcome.
//!
//! The table is append-only; rows are written only by the service's ingest path.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// A stored audit event.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_logs")]
pub struct Model {
    /// UUID v7, assigned by the server.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    /// Gap-free per-tenant sequence, in commit order.
    pub seq: i64,
    pub occurred_at: DateTimeUtc,
    pub recorded_at: DateTimeUtc,
    pub actor_type: ActorType,
    pub actor_id: String,
    pub actor_name: Option<String>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub target_name: Option<String>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    /// `jsonb` on PostgreSQL, read back as text and parsed here, one row at a time.
    #[sea_orm(column_type = "JsonBinary", select_as = "text")]
    pub metadata: Metadata,
    /// `inet` on PostgreSQL, read back as text (`host/prefix`).
    #[sea_orm(select_as = "text")]
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// The W3C trace id (32 lower-case hex digits) of the request that logged the event.
    pub trace_id: Option<String>,
    /// The canonical encoding the event was hashed with (docs/chain.md): 1 or 2.
    pub chain_version: i16,
    pub idempotency_key: Option<String>,
    /// `hash` of the tenant's previous event (32 zero bytes before the first).
    pub prev_hash: Vec<u8>,
    /// SHA-256 of `prev_hash` and the event's canonical bytes.
    pub hash: Vec<u8>,
    /// Version 3: the commitments to the event's personal values, a JSON object by path
    /// (`{"actor.name": "<hex>"}`); the values themselves are sealed elsewhere and `null`
    /// here. `None` when the event has none.
    pub personal: Option<String>,
}

/// Who acted.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "lowercase")]
pub enum ActorType {
    #[sea_orm(string_value = "user")]
    User,
    #[sea_orm(string_value = "service")]
    Service,
    #[sea_orm(string_value = "system")]
    System,
}

/// How the operation ended.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[sea_orm(string_value = "success")]
    Success,
    #[sea_orm(string_value = "failure")]
    Failure,
    #[sea_orm(string_value = "denied")]
    Denied,
}

/// An event's metadata, a JSON object. Read leniently: a stored value this reader cannot
/// parse (nested deeper than serde_json's 128 levels, which older servers let in) becomes
/// an object saying so, rather than failing the whole query it came in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata(pub Json);

/// The key of the object that stands in for unreadable metadata.
pub const UNREADABLE: &str = "$unreadable";

impl Metadata {
    /// Parses stored text; see the type's description for what cannot be parsed.
    pub fn parse(text: &str) -> Self {
        match serde_json::from_str(text) {
            Ok(value) => Metadata(value),
            Err(err) => {
                let reason = format!("stored metadata cannot be read: {err}");
                Metadata(Json::Object(
                    [(UNREADABLE.to_owned(), Json::String(reason))]
                        .into_iter()
                        .collect(),
                ))
            }
        }
    }
}

impl std::ops::Deref for Metadata {
    type Target = Json;

    fn deref(&self) -> &Json {
        &self.0
    }
}

impl From<Json> for Metadata {
    fn from(value: Json) -> Self {
        Metadata(value)
    }
}

impl From<Metadata> for Value {
    fn from(metadata: Metadata) -> Self {
        Value::Json(Some(Box::new(metadata.0)))
    }
}

impl sea_orm::TryGetable for Metadata {
    fn try_get_by<I: sea_orm::ColIdx>(
        res: &QueryResult,
        index: I,
    ) -> Result<Self, sea_orm::TryGetError> {
        String::try_get_by(res, index).map(|text| Metadata::parse(&text))
    }
}

impl sea_orm::sea_query::ValueType for Metadata {
    fn try_from(v: Value) -> Result<Self, sea_orm::sea_query::ValueTypeErr> {
        match v {
            Value::Json(Some(value)) => Ok(Metadata(*value)),
            Value::String(Some(text)) => Ok(Metadata::parse(&text)),
            _ => Err(sea_orm::sea_query::ValueTypeErr),
        }
    }

    fn type_name() -> String {
        "Metadata".to_owned()
    }

    fn array_type() -> sea_orm::sea_query::ArrayType {
        sea_orm::sea_query::ArrayType::Json
    }

    fn column_type() -> ColumnType {
        ColumnType::JsonBinary
    }
}

/// A stored event decoded by position, for selects that read `Column`s in order (as
/// `Entity::find()` does): `select.into_model::<ByPosition>()`. The derived decoder looks
/// each column up by name and, for every NULL, formats an error message that it then
/// drops; on a page of 50 events that was a sixth of the server's instructions.
pub struct ByPosition(pub Model);

impl sea_orm::FromQueryResult for ByPosition {
    fn from_query_result(res: &QueryResult, pre: &str) -> Result<Self, DbErr> {
        debug_assert!(
            pre.is_empty() && in_column_order(res),
            "columns out of order"
        );
        Ok(ByPosition(Model {
            id: get(res, 0)?,
            tenant_id: get(res, 1)?,
            seq: get(res, 2)?,
            occurred_at: get(res, 3)?,
            recorded_at: get(res, 4)?,
            actor_type: get(res, 5)?,
            actor_id: get(res, 6)?,
            actor_name: optional(res, 7)?,
            action: get(res, 8)?,
            target_type: optional(res, 9)?,
            target_id: optional(res, 10)?,
            target_name: optional(res, 11)?,
            outcome: get(res, 12)?,
            reason: optional(res, 13)?,
            metadata: get(res, 14)?,
            ip_address: optional(res, 15)?,
            user_agent: optional(res, 16)?,
            request_id: optional(res, 17)?,
            trace_id: optional(res, 18)?,
            chain_version: get(res, 19)?,
            idempotency_key: optional(res, 20)?,
            prev_hash: get(res, 21)?,
            hash: get(res, 22)?,
            personal: optional(res, 23)?,
        }))
    }
}

fn get<T: sea_orm::TryGetable>(res: &QueryResult, index: usize) -> Result<T, DbErr> {
    Ok(T::try_get_by_index(res, index)?)
}

fn optional<T: sea_orm::TryGetable>(res: &QueryResult, index: usize) -> Result<Option<T>, DbErr> {
    use sea_orm::sqlx::{Row, ValueRef};
    let null = match (res.try_as_pg_row(), res.try_as_sqlite_row()) {
        (Some(row), _) => row.try_get_raw(index).is_ok_and(|value| value.is_null()),
        (_, Some(row)) => row.try_get_raw(index).is_ok_and(|value| value.is_null()),
        _ => false,
    };
    if null {
        Ok(None)
    } else {
        get(res, index).map(Some)
    }
}

/// Whether the result's columns are `Column`'s, in order.
fn in_column_order(res: &QueryResult) -> bool {
    use sea_orm::sqlx::{Column as _, Row};
    use sea_orm::{IdenStatic, Iterable};
    let names: Vec<&str> = match (res.try_as_pg_row(), res.try_as_sqlite_row()) {
        (Some(row), _) => row.columns().iter().map(|c| c.name()).collect(),
        (_, Some(row)) => row.columns().iter().map(|c| c.name()).collect(),
        _ => return true,
    };
    names.iter().copied().eq(Column::iter().map(|c| c.as_str()))
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
