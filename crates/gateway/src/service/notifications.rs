//! Store notifications. A store's word reaches the gateway here: verified by the store's adapter,
//! deduped on the store's id of it (Apple's `notificationUUID`), turned into facts about the purchase
//! lineage, and decided in one transaction with the raw body. A notification about a lineage no
//! customer holds yet is kept as orphan facts, which join the lineage when the app submits the
//! purchase, so nothing acknowledged is lost and a refund that arrives before its purchase still wins.
//! A notification about a SKU the catalog does not map is held too, and decided when the catalog maps
//! it ([`rerun_unmapped`]).

use gateway_core::{AppId, Timestamp, ids::Store};
use serde::Serialize;

use super::{
    Context, ServiceResult,
    batch::{Done, Held, Notification, Recorded, Work},
};
use crate::{
    db::unmapped,
    model::App,
    stores::{Adapter, Delivery, Notice},
};

/// What became of a notification.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Received {
    /// `decided` (it changed or confirmed a customer's state), `held` (kept until its purchase is
    /// known), `recorded` (kept; nothing to decide) or `duplicate`.
    pub status: &'static str,
    /// The store's id of the notification.
    pub notification_uuid: String,
}

/// Takes one notification body for `store`. Answers only once the raw body is durable.
pub async fn receive(
    cx: &Context,
    app: &App,
    store: Store,
    delivery: Delivery<'_>,
    now: Timestamp,
) -> ServiceResult<Received> {
    let adapter = cx.adapter(store)?;
    let notice = adapter.verify_notification(app, delivery, now).await?;
    decide(cx, adapter, app, notice, now).await
}

/// Decides on a notification its store verified (delivered, or read back from its history).
pub async fn decide(
    cx: &Context,
    adapter: Adapter<'_>,
    app: &App,
    notice: Notice,
    now: Timestamp,
) -> ServiceResult<Received> {
    let source = adapter.names().notification;
    let Notice {
        id,
        raw,
        cause,
        transaction,
        events,
        owed,
        ..
    } = notice;
    let work = match transaction {
        Some(transaction) => Work::Notification(Box::new(Notification {
            app: app.id.clone(),
            source,
            id: id.clone(),
            raw,
            cause,
            transaction,
            events,
            owed,
            held_as: None,
            now,
        })),
        None => Work::Record(Box::new(Recorded {
            app: app.id.clone(),
            source,
            dedupe_key: id.clone(),
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
        notification_uuid: id,
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
            let body: Held = serde_json::from_str(&h.body).map_err(crate::db::DbError::from)?;
            let app: AppId = h.app.parse().map_err(|_| {
                crate::db::DbError::Corrupt(format!("app id {:?} of a held input", h.app))
            })?;
            let adapter = Store::parse(&h.store)
                .and_then(|s| cx.stores.adapter(s))
                .ok_or_else(|| {
                    crate::db::DbError::Corrupt(format!("store {:?} of a held input", h.store))
                })?;
            let store = (adapter.store(), adapter.names().notification);
            let n = Notification::from_held(app, store, h.inbound_id, body, now)?;
            works.push(Work::Notification(Box::new(n)));
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
