//! Housekeeping: forgets idempotent answers past their replay window, a bounded batch per step;
//! decides store inputs held for a SKU that the catalog maps by now (the catalog change decides them
//! at once; this is for those a stop left behind), and publishes how many stay held; and publishes
//! (and logs) the store actions overdue, such as Play acknowledgements waiting for more than 48 hours.

use gateway_core::Clock;

use super::Outcome;
use crate::service::Context;
use crate::{
    db::{deliveries, idempotency, unmapped},
    service::notifications,
};

/// Rows deleted per step: small deletes keep locks short.
pub const BATCH: i64 = 1_000;

pub async fn step(cx: &Context, clock: &dyn Clock) -> Outcome {
    let db = &cx.db;
    if let Err(e) = notifications::rerun_unmapped(cx, None, clock.now()).await {
        tracing::error!(error = %e, "housekeeping: inputs held for an unmapped SKU could not be decided");
    }
    match unmapped::count(db).await {
        Ok(n) => metrics::gauge!("gateway_inputs_held_unmapped").set(n as f64),
        Err(e) => tracing::error!(error = %e, "housekeeping: could not count held inputs"),
    }
    overdue_store_actions(cx, clock.now()).await;
    match idempotency::purge(db, clock.now().millis(), BATCH).await {
        Ok(n) if n as i64 == BATCH => Outcome::Full(n as usize),
        Ok(n) => Outcome::Partial(n as usize),
        Err(e) => {
            tracing::error!(error = %e, "housekeeping: could not purge idempotency keys");
            Outcome::Failed
        }
    }
}

/// How long a store action may wait before it is overdue: Play refunds a purchase left
/// unacknowledged for three days, so an acknowledgement still waiting after two needs a person.
pub const OVERDUE_AFTER_MS: i64 = 48 * 3_600_000;

/// Publishes how many store actions are overdue, by type, and says so in the log when any are.
async fn overdue_store_actions(cx: &Context, now: gateway_core::Timestamp) {
    let before = now.plus_millis(-OVERDUE_AFTER_MS);
    match deliveries::overdue_store_actions(&cx.db, before).await {
        Ok(overdue) => {
            for event_type in crate::stores::ACTION_TYPES {
                let n = overdue
                    .iter()
                    .find(|(t, _)| t == event_type)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("gateway_store_actions_overdue", "type" => event_type)
                    .set(n as f64);
                if n > 0 {
                    tracing::error!(
                        event_type,
                        count = n,
                        "store actions still undelivered after 48 hours (a Play purchase unacknowledged for 72 hours is refunded): see /v1/apps/{{app}}/deliveries"
                    );
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "housekeeping: could not count overdue store actions")
        }
    }
}
