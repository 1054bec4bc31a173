//! `outbox`: events for downstream systems, written in the decision's transaction and delivered by the
//! workers after commit. `customer_seq` orders a customer's events for in-order delivery.

use gateway_core::{AppId, AppUserId, Timestamp};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::{Db, DbResult, customers::CustomerRow, new_id};

/// Adds an event; its id is the stable `webhook-id` every delivery attempt will carry.
pub async fn insert(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
    row: &mut CustomerRow,
    event_type: &str,
    payload: &serde_json::Value,
    now: Timestamp,
) -> DbResult<String> {
    let id = new_id("evt");
    row.event_seq += 1;
    sqlx::query(
        "INSERT INTO outbox (id, app_id, customer_id, customer_seq, event_type, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(row.event_seq)
    .bind(event_type)
    .bind(serde_json::to_string(payload)?)
    .bind(now.millis())
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// An outbox event as stored.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEvent {
    pub id: String,
    pub customer_id: String,
    pub customer_seq: i64,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub created_at: Timestamp,
}

/// A customer's events in order.
pub async fn for_customer(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
) -> DbResult<Vec<OutboxEvent>> {
    let rows = sqlx::query(
        "SELECT id, customer_id, customer_seq, event_type, payload, created_at FROM outbox \
         WHERE app_id = $1 AND customer_id = $2 ORDER BY customer_seq, id",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|r| {
            let payload: String = r.try_get("payload")?;
            Ok(OutboxEvent {
                id: r.try_get("id")?,
                customer_id: r.try_get("customer_id")?,
                customer_seq: r.try_get("customer_seq")?,
                event_type: r.try_get("event_type")?,
                payload: serde_json::from_str(&payload)?,
                created_at: Timestamp::from_millis(r.try_get("created_at")?),
            })
        })
        .collect()
}
