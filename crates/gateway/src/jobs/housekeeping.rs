//! Housekeeping: forgets idempotent answers past their replay window, a bounded batch per step;
//! decides store inputs held for a SKU that the catalog maps by now (the catalog change decides them
//! at once; this is for those a stop left behind), and publishes how many stay held.

use gateway_core::Clock;

use super::Outcome;
use crate::service::Context;
use crate::{
    db::{idempotency, unmapped},
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
    match idempotency::purge(db, clock.now().millis(), BATCH).await {
        Ok(n) if n as i64 == BATCH => Outcome::Full(n as usize),
        Ok(n) => Outcome::Partial(n as usize),
        Err(e) => {
            tracing::error!(error = %e, "housekeeping: could not purge idempotency keys");
            Outcome::Failed
        }
    }
}
