//! The recovery job: every tick, each app that has App Store Server API credentials and whose run is
//! due reads Apple's notification history from where it stopped and takes what the gateway missed
//! (see `service::recovery`). An app's run is leased in the database, so one instance reads it at a
//! time; a failing app backs off alone, logged and counted, and the others go on.

use std::sync::{Arc, OnceLock};

use gateway_core::Clock;

use super::Outcome;
use crate::service::Context;
use crate::{
    db::{self, apps},
    service::{ServiceError, recovery},
    stores::apple::{Verifiers, api::AppStoreApi},
};

/// This process's name as a lease holder.
fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| db::new_id("inst"))
}

/// One pass over every app.
pub async fn step(
    cx: &Context,
    clock: &Arc<dyn Clock>,
    verifiers: &Verifiers,
    api: &AppStoreApi,
) -> Outcome {
    let db = &cx.db;
    let all = match apps::list(db).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "recovery: could not list apps");
            return Outcome::Failed;
        }
    };
    let mut done = 0;
    let mut more = false;
    for app in all.iter().filter(|a| recovery::can_recover(a)) {
        let pass =
            recovery::recover_apple_step(cx, (verifiers, api), app, instance(), clock.now()).await;
        match pass {
            Ok(recovery::Pass::Skipped) => {}
            Ok(recovery::Pass::Read {
                recovered,
                finished,
            }) => {
                done += recovered.recovered;
                more |= !finished;
                if recovered.recovered > 0 {
                    tracing::warn!(app = %app.id, recovered = recovered.recovered, seen = recovered.seen, "recovery: missed App Store notifications taken from Apple's history");
                }
            }
            Err(e) => {
                metrics::counter!("gateway_recovery_failures_total", "store" => "app_store", "app" => app.id.to_string())
                    .increment(1);
                let internal = matches!(e, ServiceError::Internal(_));
                tracing::error!(app = %app.id, error = %e, internal, "recovery: App Store notification history could not be read; this app backs off");
            }
        }
    }
    if more {
        Outcome::Full(done)
    } else {
        Outcome::Partial(done)
    }
}
