//! The `api_keys` table. Only a SHA-256 of each key is stored: keys are 256 random bits, so a fast hash
//! is enough (there is nothing to brute-force), and a lookup is one index probe.

use gateway_core::{AppId, Timestamp};
use sqlx::{Row, any::AnyRow};

use super::{Db, DbError, DbResult, json_col};
use crate::model::{ApiKey, KeyKind, Scope};

/// A key row as listed (never with the key itself).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub kind: KeyKind,
    pub scopes: Vec<Scope>,
    pub prefix: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

pub async fn insert(
    db: &Db,
    key: &ApiKey,
    key_hash: &str,
    prefix: &str,
    now: Timestamp,
) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, app_id, kind, scopes, key_hash, prefix, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&key.id)
    .bind(key.app_id.as_ref().map(|a| a.as_str().to_owned()))
    .bind(key.kind.as_str())
    .bind(serde_json::to_string(&key.scopes)?)
    .bind(key_hash)
    .bind(prefix)
    .bind(now.millis())
    .execute(db.writer())
    .await?;
    Ok(())
}

/// The live key whose hash is `key_hash`.
pub async fn find_by_hash(db: &Db, key_hash: &str) -> DbResult<Option<ApiKey>> {
    let row = sqlx::query(
        "SELECT id, app_id, kind, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(key_hash)
    .fetch_optional(db.reader())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let app: Option<String> = row.try_get("app_id")?;
    Ok(Some(ApiKey {
        id: row.try_get("id")?,
        app_id: app
            .map(AppId::parse)
            .transpose()
            .map_err(|e| DbError::Corrupt(e.to_string()))?,
        kind: kind_col(&row)?,
        scopes: json_col(&row, "scopes")?,
    }))
}

/// A listed key from its row (`id, kind, scopes, prefix, created_at, revoked_at`).
fn key_info(row: &AnyRow) -> DbResult<KeyInfo> {
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    Ok(KeyInfo {
        id: row.try_get("id")?,
        kind: kind_col(row)?,
        scopes: json_col(row, "scopes")?,
        prefix: row.try_get("prefix")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        revoked_at: revoked.map(Timestamp::from_millis),
    })
}

fn kind_col(row: &AnyRow) -> DbResult<KeyKind> {
    let kind: String = row.try_get("kind")?;
    match kind.as_str() {
        "secret" => Ok(KeyKind::Secret),
        "publishable" => Ok(KeyKind::Publishable),
        other => Err(DbError::Corrupt(format!("key kind {other:?}"))),
    }
}

pub async fn list_for_app(db: &Db, app: &AppId) -> DbResult<Vec<KeyInfo>> {
    let rows = sqlx::query(
        "SELECT id, kind, scopes, prefix, created_at, revoked_at FROM api_keys \
         WHERE app_id = $1 ORDER BY created_at, id",
    )
    .bind(app.as_str())
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(key_info).collect()
}

/// Every key (admin keys and every app's), never with the key itself.
pub async fn list_all(db: &Db) -> DbResult<Vec<(Option<String>, KeyInfo)>> {
    let rows = sqlx::query(
        "SELECT id, app_id, kind, scopes, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
    )
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("app_id")?, key_info(row)?)))
        .collect()
}

/// Revokes any key by id (admin keys included); false when there is no such live key.
pub async fn revoke_any(db: &Db, id: &str, now: Timestamp) -> DbResult<bool> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now.millis())
            .bind(id)
            .execute(db.writer())
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes a key of an app; false when there is no such live key.
pub async fn revoke(db: &Db, app: &AppId, id: &str, now: Timestamp) -> DbResult<bool> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = $1 WHERE app_id = $2 AND id = $3 AND revoked_at IS NULL",
    )
    .bind(now.millis())
    .bind(app.as_str())
    .bind(id)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}
