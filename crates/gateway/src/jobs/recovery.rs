//! The recovery job: every tick, for each store, each app set up to read that store's history and
//! whose run is due reads it from where it stopped and takes what the gateway missed (see
//! `service::recovery`). An app's run is leased in the database, so one instance reads it at a
//! time; a failing app backs off alone, logged and counted, and the others go on.

use std::sync::{Arc, OnceLock};

use gateway_core::Clock;

use super::Outcome;
use crate::{
    db::{self, apps},
    service::{Context, ServiceError, recovery},
};

/// This process's name as a lease holder.
fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| db::new_id("inst"))
}

/// One pass over every app.
pub async fn step(cx: &Context, clock: &Arc<dyn Clock>) -> Outcome {
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
    let mut polls = Vec::new();
    for adapter in cx.stores.all() {
        polls.extend(
            all.iter()
                .filter(|a| adapter.can_poll(a))
                .map(|a| (adapter, a)),
        );
    }
    for (adapter, app) in polls {
        let store = adapter.store().as_str();
        let pass = recovery::recover_step(cx, adapter, app, instance(), clock.now()).await;
        match pass {
            Ok(recovery::Pass::Skipped) => {}
            Ok(recovery::Pass::Read {
                recovered,
                finished,
            }) => {
                done += recovered.recovered;
                more |= !finished;
                if recovered.recovered > 0 {
                    tracing::warn!(app = %app.id, store, recovered = recovered.recovered, seen = recovered.seen, "recovery: missed notifications taken from the store's history");
                }
            }
            Err(e) => {
                metrics::counter!("gateway_recovery_failures_total", "store" => store, "app" => app.id.to_string())
                    .increment(1);
                let internal = matches!(e, ServiceError::Internal(_));
                tracing::error!(app = %app.id, store, error = %e, internal, "recovery: the store's notification history could not be read; this app backs off");
            }
        }
    }
    if more {
        Outcome::Full(done)
    } else {
        Outcome::Partial(done)
    }
}
