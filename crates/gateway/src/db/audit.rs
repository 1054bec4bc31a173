//! `audit_log`: append-only, one hash chain per customer (see `gateway_core::audit`). Rows are only ever
//! inserted; the chain's head lives on the customer row, written in the same transaction.

use gateway_core::{
    AppId, AppUserId, Timestamp,
    audit::{AuditContent, chain_hash, verify_chain},
};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::{Db, DbResult, customers::CustomerRow};

/// One row of a customer's timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    pub seq: i64,
    pub at: Timestamp,
    pub kind: String,
    pub cause: String,
    pub detail: serde_json::Value,
    pub hash: String,
}

/// What a new audit row says.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub at: Timestamp,
    /// The input's source (`api.grant`, `app_store`, ...) or the event (`balance.negative`).
    pub kind: &'a str,
    /// A sentence for the timeline.
    pub cause: &'a str,
    pub detail: &'a serde_json::Value,
}

/// Appends a row to the customer's chain and advances `row` (seq and head) to it.
pub async fn append(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
    row: &mut CustomerRow,
    entry: Entry<'_>,
) -> DbResult<()> {
    let Entry {
        at,
        kind,
        cause,
        detail,
    } = entry;
    let seq = row.audit_seq + 1;
    let detail_json = serde_json::to_string(detail)?;
    let content = AuditContent {
        seq,
        at_millis: at.millis(),
        kind,
        cause,
        detail_json: &detail_json,
    };
    let hash = chain_hash(&row.audit_head, content);
    sqlx::query(
        "INSERT INTO audit_log (app_id, customer_id, seq, at, kind, cause, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(seq)
    .bind(at.millis())
    .bind(kind)
    .bind(cause)
    .bind(&detail_json)
    .bind(&row.audit_head)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    row.audit_seq = seq;
    row.audit_head = hash;
    Ok(())
}

/// The customer's timeline, newest first, `limit` rows before sequence `before` (exclusive).
pub async fn timeline(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
    before: Option<i64>,
    limit: i64,
) -> DbResult<Vec<AuditRow>> {
    let rows = sqlx::query(
        "SELECT seq, at, kind, cause, detail, hash FROM audit_log WHERE app_id = $1 AND customer_id = $2 \
         AND seq < $3 ORDER BY seq DESC LIMIT $4",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(audit_row).collect()
}

/// Checks the customer's whole chain; `Err(seq)` names the first row that does not match.
pub async fn verify(db: &Db, app: &AppId, customer: &AppUserId) -> DbResult<Result<(), i64>> {
    let rows = sqlx::query(
        "SELECT seq, at, kind, cause, detail, hash FROM audit_log WHERE app_id = $1 AND customer_id = $2 ORDER BY seq",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .fetch_all(db.reader())
    .await?;
    let mut owned = Vec::with_capacity(rows.len());
    for r in &rows {
        owned.push((
            r.try_get::<i64, _>("seq")?,
            r.try_get::<i64, _>("at")?,
            r.try_get::<String, _>("kind")?,
            r.try_get::<String, _>("cause")?,
            r.try_get::<String, _>("detail")?,
            r.try_get::<String, _>("hash")?,
        ));
    }
    let chain = owned.iter().map(|(seq, at, kind, cause, detail, hash)| {
        (
            AuditContent {
                seq: *seq,
                at_millis: *at,
                kind,
                cause,
                detail_json: detail,
            },
            hash.as_str(),
        )
    });
    Ok(verify_chain(chain).map_err(|i| owned[i].0))
}

/// The customer's latest `limit` audit rows of the given kinds, newest first.
pub async fn latest_of_kinds(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
    kinds: [&str; 2],
    limit: i64,
) -> DbResult<Vec<AuditRow>> {
    let rows = sqlx::query(
        "SELECT seq, at, kind, cause, detail, hash FROM audit_log WHERE app_id = $1 AND customer_id = $2 \
         AND kind IN ($3, $4) ORDER BY seq DESC LIMIT $5",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(kinds[0])
    .bind(kinds[1])
    .bind(limit)
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(audit_row).collect()
}

/// An audit row as read back (`seq, at, kind, cause, detail, hash`).
fn audit_row(r: &sqlx::any::AnyRow) -> DbResult<AuditRow> {
    let detail: String = r.try_get("detail")?;
    Ok(AuditRow {
        seq: r.try_get("seq")?,
        at: Timestamp::from_millis(r.try_get("at")?),
        kind: r.try_get("kind")?,
        cause: r.try_get("cause")?,
        detail: serde_json::from_str(&detail)?,
        hash: r.try_get("hash")?,
    })
}
