//! `idempotency_keys`: the first answer to a write sent with an `Idempotency-Key`, replayed to every
//! repeat of the same request by the same key.

use sqlx::Row;

use super::{Db, DbResult};

/// How long a request may hold its key before a retry may take it over: twice the request timeout,
/// so a request still running is never overtaken.
pub const IN_FLIGHT_LEASE_MS: i64 = 120_000;

/// How long answers are kept for replay. Clients retry within minutes; a day is generous.
pub const KEEP_MS: i64 = 24 * 3600 * 1000;

/// Forgets answers older than [`KEEP_MS`], at most `limit` of them; returns how many.
pub async fn purge(db: &Db, now_ms: i64, limit: i64) -> DbResult<u64> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE (key_id, idem_key) IN \
         (SELECT key_id, idem_key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
    )
    .bind(now_ms - KEEP_MS)
    .bind(limit)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected())
}

/// What the table knows of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// New: this request owns the key now.
    Claimed,
    /// A request with the key is still running.
    InFlight { request_hash: String },
    /// Answered before.
    Done {
        request_hash: String,
        status: u16,
        response: String,
    },
}

/// Claims `(key_id, idem_key)` for a request, or says what holds it.
pub async fn claim(
    db: &Db,
    key_id: &str,
    idem_key: &str,
    request_hash: &str,
    now_ms: i64,
) -> DbResult<Claim> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (key_id, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (key_id, idem_key) DO NOTHING",
    )
    .bind(key_id)
    .bind(idem_key)
    .bind(request_hash)
    .bind(now_ms)
    .execute(db.writer())
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::Claimed);
    }
    // A claim whose request never finished (the client went away, the process stopped) expires.
    let stale = now_ms - IN_FLIGHT_LEASE_MS;
    let taken = sqlx::query(
        "UPDATE idempotency_keys SET request_hash = $1, created_at = $2 \
         WHERE key_id = $3 AND idem_key = $4 AND status IS NULL AND created_at < $5",
    )
    .bind(request_hash)
    .bind(now_ms)
    .bind(key_id)
    .bind(idem_key)
    .bind(stale)
    .execute(db.writer())
    .await?;
    if taken.rows_affected() == 1 {
        return Ok(Claim::Claimed);
    }
    let row = sqlx::query("SELECT request_hash, status, response FROM idempotency_keys WHERE key_id = $1 AND idem_key = $2")
        .bind(key_id)
        .bind(idem_key)
        .fetch_one(db.writer())
        .await?;
    let request_hash: String = row.try_get("request_hash")?;
    let status: Option<i64> = row.try_get("status")?;
    let response: Option<String> = row.try_get("response")?;
    Ok(match (status, response) {
        (Some(status), Some(response)) => Claim::Done {
            request_hash,
            status: status as u16,
            response,
        },
        _ => Claim::InFlight { request_hash },
    })
}

/// Stores the answer for a claimed key.
pub async fn complete(
    db: &Db,
    key_id: &str,
    idem_key: &str,
    status: u16,
    response: &str,
) -> DbResult<()> {
    sqlx::query("UPDATE idempotency_keys SET status = $1, response = $2 WHERE key_id = $3 AND idem_key = $4")
        .bind(i64::from(status))
        .bind(response)
        .bind(key_id)
        .bind(idem_key)
        .execute(db.writer())
        .await?;
    Ok(())
}

/// Frees a claimed key whose request failed with the gateway's own error, so a retry can run.
pub async fn release(db: &Db, key_id: &str, idem_key: &str) -> DbResult<()> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE key_id = $1 AND idem_key = $2 AND status IS NULL",
    )
    .bind(key_id)
    .bind(idem_key)
    .execute(db.writer())
    .await?;
    Ok(())
}
