//! Recovery of missed store notifications (DESIGN.md invariant 6). Apple retries a notification for
//! days, but a gateway that was down longer, or an endpoint that was misconfigured, misses some. The
//! App Store's Notification History holds every notification of the last 180 days: reading it back
//! and feeding each one through the same path as a delivered one recovers what was missed, and
//! changes nothing for what was not (notifications are deduped on their UUID).
//!
//! History is read a page at a time (Apple's pages hold 20): each page's notifications are decided
//! together (they share the committer's batches), and only then is the next page asked for, so a
//! window of any length needs the memory of one page. The job saves its place after every committed
//! page, holds a lease so one instance reads an app at a time, and backs off per app, so one app's
//! failing credentials never hold the others up.

use gateway_core::{Timestamp, apple::AppleEnvironment};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Context, ServiceError, ServiceResult, notifications};
use crate::{
    db::cursors,
    model::App,
    stores::apple::{
        Verifiers,
        api::{
            AppStoreApi, NotificationHistoryItem, NotificationHistoryRequest,
            NotificationHistoryResponse,
        },
    },
};

/// The cursor of the App Store recovery job.
pub const APPLE_CURSOR: &str = "app_store.notification_history";
/// How far back the first recovery of an app reads.
const FIRST_WINDOW_MS: i64 = 24 * 3_600_000;
/// Each window starts this much before the last one ended, for notifications Apple recorded late.
const OVERLAP_MS: i64 = 10 * 60_000;
/// Apple keeps 180 days of history.
const HISTORY_MS: i64 = 180 * 86_400_000;
/// How often the job reads each app's history: Apple retries a notification for days, so this only
/// bounds how late a missed one is taken.
pub const INTERVAL_MS: i64 = 15 * 60_000;
/// How long an instance holds an app's run without saving a page before another may take it over:
/// far longer than one page takes (one API call and twenty decisions).
const LEASE_MS: i64 = 5 * 60_000;
/// Pages one step reads before it lets the job loop go round (it comes straight back): 10,000
/// notifications, so a long backlog does not keep one app's lease, or the shutdown, waiting.
const PAGES_PER_STEP: usize = 500;
/// Failures in a row after which a run forgets its page token and reads its window from the start
/// again (Apple's tokens may expire; what was taken is deduplicated).
const FORGET_TOKEN_AFTER: i64 = 3;

/// A recovery's window and what it found.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recovered {
    pub start: Timestamp,
    pub end: Timestamp,
    /// Notifications in Apple's history for the window.
    pub seen: usize,
    /// Of them, the ones the gateway had not received: now decided, held or recorded.
    pub recovered: usize,
    /// Of them, the ones the gateway had already received.
    pub duplicates: usize,
    /// Of them, the ones refused (a forged or malformed payload would be; Apple's are not).
    pub refused: usize,
}

/// True when the app can call the App Store Server API.
pub fn can_recover(app: &App) -> bool {
    app.settings
        .app_store
        .as_ref()
        .is_some_and(|c| c.issuer_id.is_some() && c.key_id.is_some() && c.private_key_pem.is_some())
}

/// Reads Apple's notification history for `[start, end)` and takes every notification in it, page
/// after page.
pub async fn recover_apple(
    cx: &Context,
    (verifiers, api): (&Verifiers, &AppStoreApi),
    app: &App,
    (start, end): (Timestamp, Timestamp),
    now: Timestamp,
) -> ServiceResult<Recovered> {
    let (start, env) = window(verifiers, app, (start, end), now)?;
    let mut out = Recovered::new(start, end);
    let mut token: Option<String> = None;
    loop {
        token = next_page(
            cx,
            (verifiers, api),
            app,
            (env, start, end),
            token,
            now,
            &mut out,
        )
        .await?;
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
pub async fn recover_apple_step(
    cx: &Context,
    clients: (&Verifiers, &AppStoreApi),
    app: &App,
    owner: &str,
    now: Timestamp,
) -> ServiceResult<Pass> {
    let db = &cx.db;
    let run_key = (&app.id, APPLE_CURSOR);
    let lease = |from: Timestamp| from.plus_millis(LEASE_MS);
    let Some(run) = cursors::claim_run(db, run_key, owner, now, lease(now)).await? else {
        return Ok(Pass::Skipped);
    };
    let read = read_run(cx, clients, app, owner, &run, now).await;
    match read {
        Ok((recovered, finished)) => {
            let due = if finished {
                now.plus_millis(INTERVAL_MS)
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
    (verifiers, api): (&Verifiers, &AppStoreApi),
    app: &App,
    owner: &str,
    run: &cursors::Run,
    now: Timestamp,
) -> ServiceResult<(Recovered, bool)> {
    let db = &cx.db;
    let (start, end) = match run.window {
        Some(w) => w,
        None => {
            let from = cursors::get(db, &app.id, APPLE_CURSOR)
                .await?
                .map(|c| c.plus_millis(-OVERLAP_MS))
                .unwrap_or(now.plus_millis(-FIRST_WINDOW_MS));
            (from, now)
        }
    };
    let (start, env) = window(verifiers, app, (start, end), now)?;
    let mut out = Recovered::new(start, end);
    let mut token = run.page_token.clone();
    for _ in 0..PAGES_PER_STEP {
        token = next_page(
            cx,
            (verifiers, api),
            app,
            (env, start, end),
            token,
            now,
            &mut out,
        )
        .await?;
        let until = now.plus_millis(LEASE_MS);
        if !cursors::save_page(
            db,
            (&app.id, APPLE_CURSOR),
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

/// Checks that the app can read its history and bounds the window to Apple's 180 days.
fn window(
    verifiers: &Verifiers,
    app: &App,
    (start, end): (Timestamp, Timestamp),
    now: Timestamp,
) -> ServiceResult<(Timestamp, AppleEnvironment)> {
    if !can_recover(app) {
        return Err(ServiceError::new(
            super::Kind::Conflict,
            "store_not_configured",
            "This app has no App Store Server API key (`issuer_id`, `key_id`, `private_key_pem`).",
        ));
    }
    let start = start.max(now.plus_millis(-HISTORY_MS));
    if start >= end {
        // Two times, each of the right shape, that do not make a window: more than a schema states.
        return Err(ServiceError::new(
            super::Kind::Unprocessable,
            "invalid_window",
            "`start` must be before `end`, and within Apple's 180 days of history.",
        ));
    }
    Ok((start, verifiers.for_app(app)?.environment()))
}

/// Reads the page at `token` of the window and takes its notifications; returns the next page's
/// token, `None` at the window's end.
async fn next_page(
    cx: &Context,
    (verifiers, api): (&Verifiers, &AppStoreApi),
    app: &App,
    (env, start, end): (AppleEnvironment, Timestamp, Timestamp),
    token: Option<String>,
    now: Timestamp,
    out: &mut Recovered,
) -> ServiceResult<Option<String>> {
    let page = read_page(api, app, env, (start, end), token.as_deref()).await?;
    let before = out.recovered;
    take_page(cx, verifiers, app, &page.notification_history, now, out).await?;
    metrics::counter!("gateway_notifications_recovered_total", "store" => "app_store")
        .increment((out.recovered - before) as u64);
    next_token(&page)
}

async fn read_page(
    api: &AppStoreApi,
    app: &App,
    env: AppleEnvironment,
    (start, end): (Timestamp, Timestamp),
    token: Option<&str>,
) -> ServiceResult<NotificationHistoryResponse> {
    let request = NotificationHistoryRequest {
        start_date: start.millis(),
        end_date: end.millis(),
        notification_type: None,
        notification_subtype: None,
        transaction_id: None,
        only_failures: None,
    };
    Ok(api.notification_history(app, env, token, &request).await?)
}

/// The token of the page after `page`, if there is one. A page that says there is more but brings
/// nothing is a store paging without end: Apple's pages are never empty when more follow.
fn next_token(page: &NotificationHistoryResponse) -> ServiceResult<Option<String>> {
    if !page.has_more {
        return Ok(None);
    }
    match &page.pagination_token {
        Some(t) if !page.notification_history.is_empty() => Ok(Some(t.clone())),
        _ => Err(ServiceError::new(
            super::Kind::Unavailable,
            "store_paging_runaway",
            "The App Store Server API said there is more history but sent none; paging stopped.",
        )),
    }
}

/// Takes one page of history: its notifications are decided concurrently, so they share batches.
async fn take_page(
    cx: &Context,
    verifiers: &Verifiers,
    app: &App,
    items: &[NotificationHistoryItem],
    now: Timestamp,
    out: &mut Recovered,
) -> ServiceResult<()> {
    let bodies: Vec<String> = items
        .iter()
        .map(|item| json!({ "signedPayload": item.signed_payload }).to_string())
        .collect();
    let taken = futures_util::future::join_all(
        bodies
            .iter()
            .map(|body| notifications::receive_apple(cx, verifiers, app, body.as_bytes(), now)),
    )
    .await;
    out.seen += items.len();
    for result in taken {
        match result {
            Ok(r) if r.status == "duplicate" => out.duplicates += 1,
            Ok(r) => {
                tracing::info!(app = %app.id, notification = %r.notification_uuid, status = r.status, "recovered a missed App Store notification");
                out.recovered += 1;
            }
            Err(ServiceError::Client { code, message, .. }) => {
                tracing::warn!(app = %app.id, code, %message, "a notification of Apple's history was refused");
                out.refused += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
