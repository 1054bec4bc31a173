//! `inbound`: every input, raw, as received, deduped by (app, source, dedupe key). Nothing that was
//! acknowledged is lost: an input's row commits with its decision, or alone when there is nothing to
//! decide yet.

use gateway_core::{AppId, Timestamp};
use sqlx::AnyConnection;

use super::{Db, DbResult, new_id};

/// A raw input to keep.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    pub source: &'a str,
    pub dedupe_key: &'a str,
    /// The customer it was decided for, when one is known.
    pub customer: Option<&'a str>,
    pub body: &'a str,
}

/// Keeps `raw` unless an input with its dedupe key was kept before. Returns the new row's id, or
/// `None` for a replay.
pub async fn insert(
    conn: &mut AnyConnection,
    app: &AppId,
    raw: Raw<'_>,
    now: Timestamp,
) -> DbResult<Option<String>> {
    let id = new_id("inb");
    let done = sqlx::query(
        "INSERT INTO inbound (id, app_id, source, dedupe_key, customer_id, raw, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (app_id, source, dedupe_key) DO NOTHING",
    )
    .bind(&id)
    .bind(app.as_str())
    .bind(raw.source)
    .bind(raw.dedupe_key)
    .bind(raw.customer)
    .bind(raw.body)
    .bind(now.millis())
    .execute(&mut *conn)
    .await?;
    Ok((done.rows_affected() == 1).then_some(id))
}

/// True when an input with this dedupe key was kept.
pub async fn exists(db: &Db, app: &AppId, source: &str, dedupe_key: &str) -> DbResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM inbound WHERE app_id = $1 AND source = $2 AND dedupe_key = $3",
    )
    .bind(app.as_str())
    .bind(source)
    .bind(dedupe_key)
    .fetch_one(db.reader())
    .await?;
    Ok(n > 0)
}
