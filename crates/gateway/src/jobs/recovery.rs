//! The recovery job: every tick, each app that has App Store Server API credentials reads Apple's
//! notification history since its cursor and takes what the gateway missed (see
//! `service::recovery`). Every instance may run it: notifications are deduped, and the cursor only
//! moves forward.

use std::sync::Arc;

use gateway_core::Clock;

use super::Outcome;
use crate::{
    db::{Db, apps},
    service::recovery,
    stores::{apple::Verifiers, apple_api::AppStoreApi},
};

/// One pass over every app.
pub async fn step(
    db: &Db,
    clock: &Arc<dyn Clock>,
    verifiers: &Verifiers,
    api: &AppStoreApi,
) -> Outcome {
    let all = match apps::list(db).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "recovery: could not list apps");
            return Outcome::Failed;
        }
    };
    let mut done = 0;
    let mut failed = false;
    for app in all.iter().filter(|a| recovery::can_recover(a)) {
        match recovery::recover_apple_since_cursor(db, (verifiers, api), app, clock.now()).await {
            Ok(r) => {
                done += r.recovered;
                if r.recovered > 0 {
                    tracing::warn!(app = %app.id, recovered = r.recovered, seen = r.seen, "recovery: missed App Store notifications taken from Apple's history");
                }
            }
            Err(e) => {
                failed = true;
                tracing::error!(app = %app.id, error = %e, "recovery: App Store notification history could not be read");
            }
        }
    }
    if failed {
        Outcome::Failed
    } else {
        Outcome::Partial(done)
    }
}
