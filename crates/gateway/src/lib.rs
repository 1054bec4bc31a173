//! Purchase Gateway, the service: verifies store purchases, decides with `gateway_core`, records every
//! decision in one transaction, and serves the HTTP API.
//!
//! - [`config`]: settings, loaded and checked once.
//! - [`db`]: storage on SQLite or PostgreSQL; all SQL lives there.
//! - [`service`]: use cases, one function per thing a caller can ask.
//! - [`http`]: the router, extractors and one module per resource.
//! - [`model`]: apps, keys and secrets.
//! - [`telemetry`]: logs and metrics.

pub mod config;
pub mod db;
pub mod http;
pub mod model;
pub mod service;
pub mod telemetry;

use std::sync::Arc;

use gateway_core::Clock;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, db::Db, http::AppState};

/// Connects to the configured database, applies migrations, and assembles the shared state.
pub async fn prepare(config: Config, clock: Arc<dyn Clock>) -> Result<AppState, db::DbError> {
    let db = Db::connect(&config.database_url).await?;
    db.migrate().await?;
    let bootstrap_hash = config
        .bootstrap_admin_key
        .as_ref()
        .map(|k| service::keys::hash_key(k.expose()));
    Ok(AppState {
        db,
        config: Arc::new(config),
        clock,
        metrics: telemetry::metrics(),
        bootstrap_hash,
    })
}

/// Serves the API on `listener` until `shutdown` is cancelled, then finishes the requests in flight.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = http::router(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
