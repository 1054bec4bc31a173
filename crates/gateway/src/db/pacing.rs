//! `endpoint_pacing`: call slots of a rate-limited receiver, handed out in the database so that every
//! instance draws from one budget.

use gateway_core::Timestamp;
use sqlx::Row;

use super::{Db, DbResult, Dialect};

/// Reserves `count` consecutive call slots `interval_ms` apart for `endpoint_id`, the first at `now`
/// or at the end of the slots already handed out, whichever is later. Returns the first slot.
pub async fn reserve(
    db: &Db,
    endpoint_id: &str,
    now: Timestamp,
    interval_ms: i64,
    count: i64,
) -> DbResult<Timestamp> {
    let later = match db.dialect {
        Dialect::Postgres => "GREATEST",
        Dialect::Sqlite => "MAX",
    };
    let span = interval_ms.saturating_mul(count);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO endpoint_pacing (endpoint_id, next_slot_at) VALUES ($1, $2 + $3) \
         ON CONFLICT (endpoint_id) DO UPDATE \
         SET next_slot_at = {later}(endpoint_pacing.next_slot_at, $2) + $3 \
         RETURNING next_slot_at"
    )))
    .bind(endpoint_id)
    .bind(now.millis())
    .bind(span)
    .fetch_one(db.writer())
    .await?;
    let end: i64 = row.try_get("next_slot_at")?;
    Ok(Timestamp::from_millis(end - span))
}

/// Holds every slot of `endpoint_id` back until `until` (the receiver asked to be left alone until
/// then); slots already later stay.
pub async fn hold_until(db: &Db, endpoint_id: &str, until: Timestamp) -> DbResult<()> {
    let later = match db.dialect {
        Dialect::Postgres => "GREATEST",
        Dialect::Sqlite => "MAX",
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO endpoint_pacing (endpoint_id, next_slot_at) VALUES ($1, $2) \
         ON CONFLICT (endpoint_id) DO UPDATE \
         SET next_slot_at = {later}(endpoint_pacing.next_slot_at, $2)"
    )))
    .bind(endpoint_id)
    .bind(until.millis())
    .execute(db.writer())
    .await?;
    Ok(())
}
