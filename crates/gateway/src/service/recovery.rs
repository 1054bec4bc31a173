//! Recovery of missed store notifications (DESIGN.md invariant 6). Apple retries a notification for
//! days, but a gateway that was down longer, or an endpoint that was misconfigured, misses some. The
//! App Store's Notification History holds every notification of the last 180 days: reading it back
//! and feeding each one through the same path as a delivered one recovers what was missed, and
//! changes nothing for what was not (notifications are deduped on their UUID).

use gateway_core::{Timestamp, apple::AppleEnvironment};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ServiceError, ServiceResult, notifications};
use crate::{
    db::{Db, cursors},
    model::App,
    stores::{
        apple::Verifiers,
        apple_api::{AppStoreApi, MAX_CUSTOMER_PAGES, NotificationHistoryRequest},
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

/// Reads Apple's notification history for `[start, end)` and takes every notification in it.
pub async fn recover_apple(
    db: &Db,
    (verifiers, api): (&Verifiers, &AppStoreApi),
    app: &App,
    (start, end): (Timestamp, Timestamp),
    now: Timestamp,
) -> ServiceResult<Recovered> {
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
    let env: AppleEnvironment = verifiers.for_app(app)?.environment();
    let request = NotificationHistoryRequest {
        start_date: start.millis(),
        end_date: end.millis(),
        notification_type: None,
        notification_subtype: None,
        transaction_id: None,
        only_failures: None,
    };
    let items = api
        .notification_history_all(app, env, &request, MAX_CUSTOMER_PAGES)
        .await?;
    let mut out = Recovered {
        start,
        end,
        seen: items.len(),
        recovered: 0,
        duplicates: 0,
        refused: 0,
    };
    for item in items {
        let body = json!({ "signedPayload": item.signed_payload }).to_string();
        match notifications::receive_apple(db, verifiers, app, body.as_bytes(), now).await {
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
    metrics::counter!("gateway_notifications_recovered_total", "store" => "app_store")
        .increment(out.recovered as u64);
    Ok(out)
}

/// One pass of the recovery job for one app: from its cursor (or a day back) to now, then the
/// cursor moves to now.
pub async fn recover_apple_since_cursor(
    db: &Db,
    clients: (&Verifiers, &AppStoreApi),
    app: &App,
    now: Timestamp,
) -> ServiceResult<Recovered> {
    let from = cursors::get(db, &app.id, APPLE_CURSOR)
        .await?
        .map(|c| c.plus_millis(-OVERLAP_MS))
        .unwrap_or(now.plus_millis(-FIRST_WINDOW_MS));
    let out = recover_apple(db, clients, app, (from, now), now).await?;
    cursors::advance(db, &app.id, APPLE_CURSOR, now, now).await?;
    Ok(out)
}
