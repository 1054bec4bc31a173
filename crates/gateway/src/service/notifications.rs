//! App Store Server Notifications V2. Apple's word reaches the gateway here: verified, deduped on
//! `notificationUUID`, turned into facts about the purchase lineage, and decided in one transaction
//! with the raw body. A notification about a lineage no customer holds yet is kept as orphan facts,
//! which join the lineage when the app submits the purchase, so nothing acknowledged is lost and a
//! refund that arrives before its purchase still wins. A notification about a SKU the catalog does not
//! map is held too, and decided when the catalog maps it ([`rerun_unmapped`]).

use gateway_core::{AppId, Timestamp};
use serde::{Deserialize, Serialize};

use super::{
    Context, ServiceError, ServiceResult,
    batch::{APPLE_NOTIFICATION, AppleNotification, Done, HeldApple, Recorded, Work},
};
use crate::{db::unmapped, model::App, stores::apple::Verifiers};

/// Apple's envelope. Other fields are ignored, as Apple may add some.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    #[serde(rename = "signedPayload")]
    signed_payload: String,
}

/// What became of a notification.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Received {
    /// `decided` (it changed or confirmed a customer's state), `held` (kept until its purchase is
    /// known), `recorded` (kept; nothing to decide) or `duplicate`.
    pub status: &'static str,
    pub notification_uuid: String,
}

/// Takes one notification body. Answers only once the raw body is durable.
pub async fn receive_apple(
    cx: &Context,
    verifiers: &Verifiers,
    app: &App,
    body: &[u8],
    now: Timestamp,
) -> ServiceResult<Received> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|_| {
        ServiceError::bad_request(
            "malformed_notification",
            "The body is not an App Store Server Notification V2 (`{\"signedPayload\": ...}`).",
        )
    })?;
    super::text(
        &gateway_core::text::SIGNED_DATA,
        "malformed_notification",
        "signedPayload",
        &envelope.signed_payload,
    )?;
    let verifier = verifiers.for_app(app)?;
    let n = verifier.verify_notification(&envelope.signed_payload, now)?;
    let raw = String::from_utf8_lossy(body).into_owned();
    let uuid = n.notification_uuid.clone();

    let data = n.data.as_ref();
    let transaction = match data.and_then(|d| d.signed_transaction_info.as_deref()) {
        Some(jws) => Some(verifier.verify_transaction(jws, now)?),
        None => None,
    };
    let renewal = match data.and_then(|d| d.signed_renewal_info.as_deref()) {
        Some(jws) => Some(verifier.verify_renewal_info(jws, now)?),
        None => None,
    };
    // The answer to a consumption request is owed once the notification is kept: an outbox action
    // in the same transaction, sent by the delivery worker and retried like any delivery.
    let answers = app
        .settings
        .app_store
        .as_ref()
        .is_some_and(|c| c.answer_consumption_requests);
    let owed: Vec<_> = match &transaction {
        Some(t) if answers && n.notification_type == "CONSUMPTION_REQUEST" => {
            super::store_actions::consumption_answer(&uuid, t, verifier.environment())
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    };
    let work = match transaction {
        Some(t) => {
            let subtype = n
                .subtype
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default();
            let cause = format!(
                "App Store notification {}{subtype} for transaction {}.",
                n.notification_type,
                t.transaction_id.as_deref().unwrap_or("?")
            );
            Work::AppleNotification(Box::new(AppleNotification {
                app: app.id.clone(),
                uuid: uuid.clone(),
                raw,
                cause,
                events: gateway_core::apple::facts::notification_events(&n, &t, renewal.as_ref()),
                owed,
                held_as: None,
                transaction: t,
                now,
            }))
        }
        None => Work::Record(Box::new(Recorded {
            app: app.id.clone(),
            source: APPLE_NOTIFICATION,
            dedupe_key: uuid.clone(),
            raw,
            now,
        })),
    };
    let status = match cx.committer().submit(work).await? {
        Done::Decided { outcome, .. } if outcome.duplicate => "duplicate",
        Done::Decided { .. } => "decided",
        Done::Held => "held",
        Done::Recorded => "recorded",
        Done::Duplicate => "duplicate",
    };
    Ok(Received {
        status,
        notification_uuid: uuid,
    })
}

/// Held inputs decided again per round.
const RERUN_BATCH: i64 = 256;

/// Decides the inputs held for a SKU the catalog now maps (of `app`, or of every app), as many as
/// there are: the catalog change that maps a SKU calls it, and the housekeeping job does for any a
/// stop left behind. Returns how many were decided.
pub async fn rerun_unmapped(
    cx: &Context,
    app: Option<&AppId>,
    now: Timestamp,
) -> ServiceResult<usize> {
    let db = &cx.db;
    let mut total = 0;
    loop {
        let held = unmapped::mapped(db, app.map(AppId::as_str), RERUN_BATCH).await?;
        let taken = held.len();
        let mut works = Vec::with_capacity(taken);
        for h in held {
            let body: HeldApple =
                serde_json::from_str(&h.body).map_err(crate::db::DbError::from)?;
            let app: AppId = h.app.parse().map_err(|_| {
                crate::db::DbError::Corrupt(format!("app id {:?} of a held input", h.app))
            })?;
            works.push(Work::AppleNotification(Box::new(
                AppleNotification::from_held(app, h.inbound_id, body, now),
            )));
        }
        // Submitted together, they share the committer's batches.
        let done =
            futures_util::future::join_all(works.into_iter().map(|w| cx.committer().submit(w)))
                .await;
        let mut decided = 0;
        for d in done {
            if !matches!(d?, Done::Held) {
                decided += 1;
            }
        }
        total += decided;
        if decided > 0 {
            tracing::info!(decided, "inputs held for an unmapped SKU were decided");
        }
        // Stop on a short round, or when a round decided nothing (each would be taken again).
        if taken < RERUN_BATCH as usize || decided == 0 {
            return Ok(total);
        }
    }
}
