//! Purchase Gateway, the service: verifies store purchases, decides with `gateway_core`, records every
//! decision in one transaction, and serves the HTTP API.
//!
//! The layers point down only: [`http`] and [`jobs`] call [`service`], which calls [`stores`] and
//! [`db`], which use `gateway_core`; `tests/layers.rs` holds them to it.
//!
//! - [`http`]: the router, extractors and one module per resource.
//! - [`jobs`]: background work, claimed or leased in the database: expiry, outbound deliveries
//!   (webhooks, Open edX, store actions), recovery from the stores' notification histories, and
//!   housekeeping (old idempotent answers, inputs held for SKUs mapped since).
//! - [`service`]: use cases, one function per thing a caller can ask; they share a
//!   [`service::Context`] (storage, store adapters, the committer).
//! - [`stores`]: store adapters, one folder per store, behind one set of verbs.
//! - [`db`]: storage on SQLite or PostgreSQL; all SQL lives there.
//! - [`config`], [`model`] (apps, keys and secrets), [`backoff`] (the one back-off with jitter) and
//!   [`telemetry`] (logs and metrics) are leaves any layer may use.
//!
//! The binary (`main.rs`) adds the command line, including the `demo` and `sim` commands that drive
//! the store simulator.

pub mod backoff;
pub mod config;
pub mod db;
pub mod http;
pub mod jobs;
pub mod jwks;
pub mod model;
pub mod service;
pub mod stores;
pub mod telemetry;

use std::sync::Arc;

use gateway_core::Clock;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, db::Db, http::AppState};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("the HTTP client cannot start: {0}")]
    Http(#[from] reqwest::Error),
}

/// Connects to the configured database, applies migrations, and assembles the shared state.
pub async fn prepare(config: Config, clock: Arc<dyn Clock>) -> Result<AppState, StartError> {
    let db = Db::connect(&config.database_url).await?;
    db.migrate().await?;
    let bootstrap_hash = config
        .bootstrap_admin_key
        .as_ref()
        .map(|k| service::keys::hash_key(k.expose()));
    let http = reqwest::Client::builder()
        .user_agent(concat!("purchase-gateway/", env!("CARGO_PKG_VERSION")))
        .build()?;
    Ok(AppState {
        cx: service::Context::new(db, http.clone(), clock.clone()),
        config: Arc::new(config),
        clock,
        metrics: telemetry::metrics(),
        bootstrap_hash,
        jwks: Arc::new(service::customer_auth::JwksCache::new(http.clone())),
        // A receiver's redirect is its misconfiguration, not a place to post signed events to.
        outbound: reqwest::Client::builder()
            .user_agent(concat!("purchase-gateway/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        lms: Arc::new(service::openedx::Caches::default()),
        shutdown: CancellationToken::new(),
    })
}

/// Serves the API on `listener`, and runs the background jobs, until `shutdown` is cancelled; then
/// finishes the requests in flight.
pub async fn run(
    mut state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    state.shutdown = shutdown.clone();
    let expiry = spawn_job(
        "expiry",
        EXPIRY_TICK,
        None,
        &state,
        &shutdown,
        |s| async move { jobs::expiry::step(&s.cx, &s.clock).await },
    );
    let deliveries = spawn_job(
        "deliveries",
        DELIVERY_TICK,
        Some((state.cx.db.changes().outbox_signal(), DELIVERY_LINGER)),
        &state,
        &shutdown,
        |s| async move {
            let senders = jobs::deliveries::Senders {
                http: s.outbound.clone(),
                lms: s.lms.clone(),
                stores: s.cx.stores.clone(),
            };
            jobs::deliveries::step(&s.cx.db, &s.clock, &senders).await
        },
    );
    let housekeeping = spawn_job(
        "housekeeping",
        HOUSEKEEPING_TICK,
        None,
        &state,
        &shutdown,
        |s| async move { jobs::housekeeping::step(&s.cx, s.clock.as_ref()).await },
    );
    let recovery = spawn_job(
        "recovery",
        RECOVERY_TICK,
        None,
        &state,
        &shutdown,
        |s| async move { jobs::recovery::step(&s.cx, &s.clock).await },
    );
    let listener_task = match state.cx.db.dialect {
        db::Dialect::Postgres => Some(tokio::spawn(db::changes::listen(
            state.cx.db.clone(),
            state.config.database_url.clone(),
            shutdown.clone(),
        ))),
        db::Dialect::Sqlite => None,
    };
    let router = http::router(state);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    let _ = tokio::join!(expiry, deliveries, housekeeping, recovery);
    if let Some(t) = listener_task {
        let _ = t.await;
    }
    served
}

/// Runs a background job's loop in a task of its own; each step gets the app state.
fn spawn_job<F, Fut>(
    name: &'static str,
    tick: std::time::Duration,
    wake: Option<(Arc<tokio::sync::Notify>, std::time::Duration)>,
    state: &AppState,
    shutdown: &CancellationToken,
    step: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(AppState) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = jobs::Outcome> + Send + 'static,
{
    let state = state.clone();
    tokio::spawn(jobs::run_loop(
        name,
        tick,
        wake,
        shutdown.clone(),
        move || step(state.clone()),
    ))
}

/// How often the recovery job looks for apps whose history read is due. Each app is read every
/// `service::recovery::INTERVAL_MS` (or sooner after a back-off ends); the tick only bounds how late.
const RECOVERY_TICK: std::time::Duration = std::time::Duration::from_secs(60);

/// How often old idempotent answers are forgotten.
const HOUSEKEEPING_TICK: std::time::Duration = std::time::Duration::from_secs(300);

/// How often the delivery worker looks for work when no commit of this process woke it: the longest
/// an event committed through another instance waits to be sent.
const DELIVERY_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// How long the delivery worker waits after a commit wakes it, so that the commits of a burst are
/// dispatched together: a few milliseconds of latency for one write transaction instead of many.
const DELIVERY_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// How often the expiry job looks for customers whose access has ended: the longest an
/// `entitlement.expired` event waits after its `expires_at` when no one reads the customer.
const EXPIRY_TICK: std::time::Duration = std::time::Duration::from_secs(5);
