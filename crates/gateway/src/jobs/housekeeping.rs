//! Housekeeping: forgets idempotent answers past their replay window, a bounded batch per step.

use gateway_core::Clock;

use super::Outcome;
use crate::db::{Db, idempotency};

/// Rows deleted per step: small deletes keep locks short.
pub const BATCH: i64 = 1_000;

pub async fn step(db: &Db, clock: &dyn Clock) -> Outcome {
    match idempotency::purge(db, clock.now().millis(), BATCH).await {
        Ok(n) if n as i64 == BATCH => Outcome::Full(n as usize),
        Ok(n) => Outcome::Partial(n as usize),
        Err(e) => {
            tracing::error!(error = %e, "housekeeping: could not purge idempotency keys");
            Outcome::Failed
        }
    }
}
