//! API keys: created once and shown once, stored as SHA-256 hashes, revocable.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use entity::api_key::{self, ActiveModel, Column, Entity};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};
use audit_contract::rules::{MAX_ID_LEN, check_id};

/// Every key starts so, so scanners and people recognize it.
pub const KEY_PREFIX: &str = "ak_";

/// SHA-256 of a key. Keys carry 256 random bits, so a fast hash is enough.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates a key; returns its record and the key itself, which is never shown again.
pub async fn create(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    scopes: &[String],
    name: &str,
) -> Result<(api_key::Model, String)> {
    // The tenant becomes every event's tenant and the subject an actor id: the same rules.
    check_id("tenant", tenant_id, MAX_ID_LEN)?;
    check_id("name", name, MAX_ID_LEN - "api-key:".len())?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| Error::internal(e.to_string()))?;
    let key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let record = ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id.to_owned()),
        name: Set(name.to_owned()),
        scopes: Set(scopes.join(" ")),
        key_hash: Set(hash(&key)),
        prefix: Set(key[..KEY_PREFIX.len() + 6].to_owned()),
        created_at: Set(Utc::now()),
        revoked_at: Set(None),
    }
    .insert(db)
    .await?;
    Ok((record, key))
}

/// Every key, newest first.
pub async fn list(db: &impl ConnectionTrait) -> Result<Vec<api_key::Model>> {
    Ok(Entity::find()
        .order_by_desc(Column::CreatedAt)
        .all(db)
        .await?)
}

/// Revokes a key; `false` when there is no such active key.
pub async fn revoke(db: &impl ConnectionTrait, id: Uuid) -> Result<bool> {
    let result = Entity::update_many()
        .col_expr(Column::RevokedAt, sea_orm::sea_query::Expr::val(Utc::now()))
        .filter(Column::Id.eq(id))
        .filter(Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// The active key with this hash.
pub async fn find_active(
    db: &impl ConnectionTrait,
    key_hash: &[u8],
) -> Result<Option<api_key::Model>> {
    Ok(Entity::find()
        .filter(Column::KeyHash.eq(key_hash.to_vec()))
        .filter(Column::RevokedAt.is_null())
        .one(db)
        .await?)
}

/// Whether any key was ever created. Until then, with no JWT key configured, the server is
/// open; revoking keys never reopens it.
pub async fn any_created(db: &impl ConnectionTrait) -> Result<bool> {
    Ok(Entity::find().count(db).await? > 0)
}
