//! The registry's tables: `audit_actions` and `audit_tenant_settings`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Order, Query};
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::{Action, Change};
use crate::error::{Error, Result};

fn actions() -> Alias {
    Alias::new("audit_actions")
}

fn settings() -> Alias {
    Alias::new("audit_tenant_settings")
}

#[derive(FromQueryResult)]
struct ActionRow {
    action: String,
    description: String,
    metadata_schema: Option<String>,
    personal_paths: String,
    retention_days: Option<i32>,
    updated_at: DateTime<Utc>,
}

/// Whether the tenant requires registered actions, and its actions by name.
pub async fn load(db: &impl ConnectionTrait, tenant_id: &str) -> Result<(bool, Vec<Action>)> {
    let select = Query::select()
        .columns(
            [
                "action",
                "description",
                "metadata_schema",
                "personal_paths",
                "retention_days",
                "updated_at",
            ]
            .map(Alias::new),
        )
        .from(actions())
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
        .order_by(Alias::new("action"), Order::Asc)
        .to_owned();
    let backend = db.get_database_backend();
    let rows = ActionRow::find_by_statement(backend.build(&select))
        .all(db)
        .await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in rows {
        found.push(Action {
            action: row.action,
            description: row.description,
            metadata_schema: (row.metadata_schema.as_deref())
                .map(serde_json::from_str)
                .transpose()
                .map_err(Error::internal)?,
            personal_paths: serde_json::from_str(&row.personal_paths).map_err(Error::internal)?,
            retention_days: row.retention_days,
            updated_at: row.updated_at,
        });
    }
    let setting = Query::select()
        .column(Alias::new("require_registered_actions"))
        .from(settings())
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
        .to_owned();
    let require = match db.query_one_raw(backend.build(&setting)).await? {
        Some(row) => row.try_get_by_index::<bool>(0)?,
        None => false,
    };
    Ok((require, found))
}

/// Every registration with `retentionDays`: tenant, action, days.
pub async fn retained(db: &impl ConnectionTrait) -> Result<Vec<(String, String, i32)>> {
    let select = Query::select()
        .columns(["tenant_id", "action", "retention_days"].map(Alias::new))
        .from(actions())
        .and_where(Expr::col(Alias::new("retention_days")).is_not_null())
        .to_owned();
    let rows = db
        .query_all_raw(db.get_database_backend().build(&select))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get_by_index(0)?,
                row.try_get_by_index(1)?,
                row.try_get_by_index(2)?,
            ))
        })
        .collect()
}

/// Applies a change in the transaction that records it; returns whether it changed
/// anything (an action removed that was not there did not).
pub async fn apply(txn: &impl ConnectionTrait, tenant_id: &str, change: &Change) -> Result<bool> {
    let affected = match change {
        Change::Register(action) => {
            let schema = (action.metadata_schema.as_ref())
                .map(serde_json::to_string)
                .transpose()
                .map_err(Error::internal)?;
            let paths = serde_json::to_string(&action.personal_paths).map_err(Error::internal)?;
            let columns = [
                "tenant_id",
                "action",
                "description",
                "metadata_schema",
                "personal_paths",
                "retention_days",
                "updated_at",
            ];
            let insert = Query::insert()
                .into_table(actions())
                .columns(columns.map(Alias::new))
                .values([
                    tenant_id.into(),
                    action.action.as_str().into(),
                    action.description.as_str().into(),
                    schema.into(),
                    paths.into(),
                    action.retention_days.into(),
                    action.updated_at.into(),
                ])
                .map_err(Error::internal)?
                .on_conflict(
                    OnConflict::columns([Alias::new("tenant_id"), Alias::new("action")])
                        .update_columns(columns[2..].iter().map(|c| Alias::new(*c)))
                        .to_owned(),
                )
                .to_owned();
            txn.execute(&insert).await?.rows_affected()
        }
        Change::Remove(action) => {
            let delete = Query::delete()
                .from_table(actions())
                .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant_id))
                .and_where(Expr::col(Alias::new("action")).eq(action.as_str()))
                .to_owned();
            txn.execute(&delete).await?.rows_affected()
        }
        Change::RequireRegistered(require) => {
            let insert = Query::insert()
                .into_table(settings())
                .columns(["tenant_id", "require_registered_actions"].map(Alias::new))
                .values([tenant_id.into(), (*require).into()])
                .map_err(Error::internal)?
                .on_conflict(
                    OnConflict::column(Alias::new("tenant_id"))
                        .update_column(Alias::new("require_registered_actions"))
                        .to_owned(),
                )
                .to_owned();
            txn.execute(&insert).await?.rows_affected()
        }
    };
    Ok(affected > 0)
}
