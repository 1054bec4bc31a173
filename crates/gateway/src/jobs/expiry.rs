//! Expiry: time is an input of the core, so an `expires_at` passing changes nothing by itself. This job
//! re-evaluates the customers whose recorded next change (`customers.next_change_at`) has come, which
//! writes the expiry effects (`entitlement.expired` and the rest) without waiting for a read.

use std::sync::Arc;

use gateway_core::{AppId, AppUserId, Clock};
use sqlx::Row;

use super::Outcome;
use crate::{db::Db, service::decision};

/// Customers re-evaluated per step: small enough that one step holds no lock for long.
pub const BATCH: i64 = 100;

/// Re-evaluates up to [`BATCH`] customers that are due.
pub async fn step(db: &Db, clock: &Arc<dyn Clock>) -> Outcome {
    let now = clock.now();
    let rows = sqlx::query(
        "SELECT app_id, id FROM customers WHERE next_change_at IS NOT NULL AND next_change_at <= $1 \
         ORDER BY next_change_at LIMIT $2",
    )
    .bind(now.millis())
    .bind(BATCH)
    .fetch_all(db.reader())
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "expiry: could not list due customers");
            return Outcome::Failed;
        }
    };
    let mut done = 0;
    for row in &rows {
        let ids: Result<(String, String), _> =
            (|| Ok::<_, sqlx::Error>((row.try_get("app_id")?, row.try_get("id")?)))();
        let Ok((app, customer)) = ids else {
            return Outcome::Failed;
        };
        let (Ok(app), Ok(customer)) = (AppId::parse(app), AppUserId::parse(customer)) else {
            continue;
        };
        match decision::reevaluate(db, &app, &customer, now).await {
            Ok(out) => {
                done += 1;
                if !out.effects.is_empty() {
                    tracing::info!(app = %app, customer = %customer, effects = out.effects.len(), "expiry re-evaluated");
                }
            }
            Err(e) => {
                tracing::error!(app = %app, customer = %customer, error = %e, "expiry: re-evaluation failed");
                return Outcome::Failed;
            }
        }
    }
    metrics::counter!("gateway_expiry_reevaluations_total").increment(done as u64);
    if rows.len() as i64 == BATCH {
        Outcome::Full(done)
    } else {
        Outcome::Partial(done)
    }
}
