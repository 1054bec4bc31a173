//! Expiry: time is an input of the core, so an `expires_at` passing changes nothing by itself. This job
//! re-evaluates the customers whose recorded next change (`customers.next_change_at`) has come, which
//! writes the expiry effects (`entitlement.expired` and the rest) without waiting for a read.
//!
//! Claims are leases in the database: a step moves each claimed customer's `next_change_at` one
//! [`LEASE`] ahead before working on it, so several instances never take the same customer at once
//! (PostgreSQL adds `FOR UPDATE SKIP LOCKED`), a customer that fails is retried after the lease instead
//! of blocking the batch, and a crashed instance's claims come back by themselves.

use std::{sync::Arc, time::Duration};

use gateway_core::{AppId, AppUserId, Clock};

use super::Outcome;
use crate::service::Context;
use crate::{db::customers, service::decision};

/// Customers re-evaluated per step: small enough that one step holds no lock for long.
pub const BATCH: i64 = 100;

/// How long a claim holds: far longer than re-evaluating a batch takes.
pub const LEASE: Duration = Duration::from_secs(60);

/// Claims up to [`BATCH`] due customers and re-evaluates them.
pub async fn step(cx: &Context, clock: &Arc<dyn Clock>) -> Outcome {
    let db = &cx.db;
    let now = clock.now();
    let lease_until = now.plus_millis(LEASE.as_millis() as i64);
    let rows = match customers::claim_due(db, now, lease_until, BATCH).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "expiry: could not claim due customers");
            return Outcome::Failed;
        }
    };
    let mut done = 0;
    for (app, customer) in &rows {
        let (Ok(app), Ok(customer)) = (AppId::parse(app), AppUserId::parse(customer)) else {
            continue;
        };
        match decision::reevaluate(cx, &app, &customer, now).await {
            Ok(out) => {
                done += 1;
                if !out.effects.is_empty() {
                    tracing::info!(app = %app, customer = %customer, effects = out.effects.len(), "expiry re-evaluated");
                }
            }
            // The lease stands: this customer is tried again after it; the rest of the batch goes on.
            Err(e) => {
                tracing::error!(app = %app, customer = %customer, error = %e, "expiry: re-evaluation failed")
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
