//! Recovery of missed store notifications (DESIGN.md invariant 6). Stores retry a notification for
//! days, but a gateway that was down longer, or an endpoint that was misconfigured, misses some. Each
//! store keeps a history to read back (the App Store's Notification History holds every notification
//! of the last 180 days); its adapter reads it a page at a time ([`Adapter::poll`]) and verifies each
//! entry as a delivered notification is, and each goes through the same path as a delivered one:
//! what was missed is recovered, and what was not changes nothing (notifications are deduped on the
//! store's id of them).
//!
//! Each page's notifications are decided together (they share the committer's batches), and only then
//! is the next page asked for, so a window of any length needs the memory of one page. The job saves
//! its place after every committed page (a cursor per app and store), holds a lease so one instance
//! reads an app's history at a time, and backs off per app, so one app's failing credentials never
//! hold the others up.

use gateway_core::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Context, ServiceError, ServiceResult, notifications};
use crate::{db::cursors, model::App, stores::Adapter};

/// How far back the first recovery of an app reads.
const FIRST_WINDOW_MS: i64 = 24 * 3_600_000;
/// Each window starts this much before the last one ended, for notifications a store recorded late.
const OVERLAP_MS: i64 = 10 * 60_000;
/// How often the job reads each app's history, unless the app says (Play's `voided_poll_minutes`):
/// stores retry a notification for days, so this only bounds how late a missed one is taken.
pub const INTERVAL_MS: i64 = 15 * 60_000;
/// How long an instance holds an app's run without saving a page before another may take it over:
/// far longer than one page takes (one API call and a page of decisions).
const LEASE_MS: i64 = 5 * 60_000;
/// Pages one step reads before it lets the job loop go round (it comes straight back): 10,000
/// notifications, so a long backlog does not keep one app's lease, or the shutdown, waiting.
const PAGES_PER_STEP: usize = 500;
/// Failures in a row after which a run forgets its page token and reads its window from the start
/// again (a store's tokens may expire; what was taken is deduplicated).
const FORGET_TOKEN_AFTER: i64 = 3;

/// A recovery's window and what it found.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recovered {
    pub start: Timestamp,
    pub end: Timestamp,
    /// Notifications in the store's history for the window.
    pub seen: usize,
    /// Of them, the ones the gateway had not received: now decided, held or recorded.
    pub recovered: usize,
    /// Of them, the ones the gateway had already received.
    pub duplicates: usize,
    /// Of them, the ones refused (a forged or malformed payload would be; a store's own are not).
    pub refused: usize,
}

/// Reads the store's history for `[start, end)` and takes every notification in it, page after
/// page.
pub async fn recover(
    cx: &Context,
    adapter: Adapter<'_>,
    app: &App,
    (start, end): (Timestamp, Timestamp),
    now: Timestamp,
) -> ServiceResult<Recovered> {
    let window = adapter.poll_window(app, (start, end), now)?;
    let mut out = Recovered::new(window.0, window.1);
    let mut token: Option<String> = None;
    loop {
        token = next_page(cx, adapter, app, window, token, now, &mut out).await?;
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// What one step of the job did for an app.
#[derive(Debug, Clone)]
pub enum Pass {
    /// Another instance holds the app's run, or it is not due.
    Skipped,
    /// It read pages; `finished` when it reached the window's end (else it comes back at once).
    Read {
        recovered: Recovered,
        finished: bool,
    },
}

/// One step of the recovery job for one app, as `owner` (this instance): if the app's run is due and
/// free, claims it, reads on from where it stopped (or starts a window from the cursor, or a day
/// back), saving its place after each committed page. A failure backs this app off alone.
pub async fn recover_step(
    cx: &Context,
    adapter: Adapter<'_>,
    app: &App,
    owner: &str,
    now: Timestamp,
) -> ServiceResult<Pass> {
    let db = &cx.db;
    let run_key = (&app.id, adapter.names().cursor);
    let lease = |from: Timestamp| from.plus_millis(LEASE_MS);
    let Some(run) = cursors::claim_run(db, run_key, owner, now, lease(now)).await? else {
        return Ok(Pass::Skipped);
    };
    let read = read_run(cx, adapter, app, owner, &run, now).await;
    match read {
        Ok((recovered, finished)) => {
            let due = if finished {
                now.plus_millis(adapter.poll_interval_ms(app).unwrap_or(INTERVAL_MS))
            } else {
                now
            };
            let end = finished.then_some(recovered.end);
            cursors::release_run(db, run_key, owner, end, (due, now)).await?;
            Ok(Pass::Read {
                recovered,
                finished,
            })
        }
        Err(e) => {
            let failures = (run.failures + 1).clamp(1, 30) as u32;
            let due = now.plus_millis(crate::backoff::STEP.delay(failures).as_millis() as i64);
            cursors::fail_run(db, run_key, owner, due, FORGET_TOKEN_AFTER).await?;
            Err(e)
        }
    }
}

/// Reads pages of `run` until its window ends or the step's page budget is spent.
async fn read_run(
    cx: &Context,
    adapter: Adapter<'_>,
    app: &App,
    owner: &str,
    run: &cursors::Run,
    now: Timestamp,
) -> ServiceResult<(Recovered, bool)> {
    let db = &cx.db;
    let (start, end) = match run.window {
        Some(w) => w,
        None => {
            let from = cursors::get(db, &app.id, adapter.names().cursor)
                .await?
                .map(|c| c.plus_millis(-OVERLAP_MS))
                .unwrap_or(now.plus_millis(-FIRST_WINDOW_MS));
            (from, now)
        }
    };
    let (start, end) = adapter.poll_window(app, (start, end), now)?;
    let mut out = Recovered::new(start, end);
    let mut token = run.page_token.clone();
    for _ in 0..PAGES_PER_STEP {
        token = next_page(cx, adapter, app, (start, end), token, now, &mut out).await?;
        let until = now.plus_millis(LEASE_MS);
        if !cursors::save_page(
            db,
            (&app.id, adapter.names().cursor),
            owner,
            ((start, end), token.as_deref()),
            until,
        )
        .await?
        {
            return Err(ServiceError::conflict(
                "recovery_lease_lost",
                "Another instance took this app's history read over.",
            ));
        }
        if token.is_none() {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

impl Recovered {
    fn new(start: Timestamp, end: Timestamp) -> Self {
        Recovered {
            start,
            end,
            seen: 0,
            recovered: 0,
            duplicates: 0,
            refused: 0,
        }
    }
}

/// Reads the page at `token` of the window and takes its notifications; returns the next page's
/// token, `None` at the window's end.
async fn next_page(
    cx: &Context,
    adapter: Adapter<'_>,
    app: &App,
    window: (Timestamp, Timestamp),
    token: Option<String>,
    now: Timestamp,
    out: &mut Recovered,
) -> ServiceResult<Option<String>> {
    let page = adapter.poll(app, window, token.as_deref(), now).await?;
    let before = out.recovered;
    take_page(cx, adapter, app, page.notices, now, out).await?;
    metrics::counter!("gateway_notifications_recovered_total", "store" => adapter.store().as_str())
        .increment((out.recovered - before) as u64);
    Ok(page.next?)
}

/// Takes one page of history: its notifications are decided concurrently, so they share batches.
async fn take_page(
    cx: &Context,
    adapter: Adapter<'_>,
    app: &App,
    notices: Vec<crate::stores::StoreResult<crate::stores::Notice>>,
    now: Timestamp,
    out: &mut Recovered,
) -> ServiceResult<()> {
    out.seen += notices.len();
    let taken = futures_util::future::join_all(
        notices
            .into_iter()
            .map(|n| async move { notifications::decide(cx, adapter, app, n?, now).await }),
    )
    .await;
    for result in taken {
        match result {
            Ok(r) if r.status == "duplicate" => out.duplicates += 1,
            Ok(r) => {
                tracing::info!(app = %app.id, store = adapter.store().as_str(), notification = %r.notification_uuid, status = r.status, "recovered a missed store notification");
                out.recovered += 1;
            }
            Err(ServiceError::Client { code, message, .. }) => {
                tracing::warn!(app = %app.id, store = adapter.store().as_str(), code, %message, "a notification of the store's history was refused");
                out.refused += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
