//! `store_cursors`: how far a recovery job has read a store's history, per app.

use gateway_core::{AppId, Timestamp};

use super::{Db, DbResult};

/// The cursor `name` of `app`, if it was ever set.
pub async fn get(db: &Db, app: &AppId, name: &str) -> DbResult<Option<Timestamp>> {
    let value: Option<i64> =
        sqlx::query_scalar("SELECT value FROM store_cursors WHERE app_id = $1 AND name = $2")
            .bind(app.as_str())
            .bind(name)
            .fetch_optional(db.reader())
            .await?;
    Ok(value.map(Timestamp::from_millis))
}

/// Moves the cursor `name` of `app` forward to `to` (never back, should two instances race).
pub async fn advance(
    db: &Db,
    app: &AppId,
    name: &str,
    to: Timestamp,
    now: Timestamp,
) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO store_cursors (app_id, name, value, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (app_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
         WHERE store_cursors.value < excluded.value",
    )
    .bind(app.as_str())
    .bind(name)
    .bind(to.millis())
    .bind(now.millis())
    .execute(db.writer())
    .await?;
    Ok(())
}
