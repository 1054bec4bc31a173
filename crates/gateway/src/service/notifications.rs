//! App Store Server Notifications V2. Apple's word reaches the gateway here: verified, deduped on
//! `notificationUUID`, turned into facts about the purchase lineage, and decided in one transaction
//! with the raw body. A notification about a lineage no customer holds yet is kept as orphan facts,
//! which join the lineage when the app submits the purchase, so nothing acknowledged is lost and a
//! refund that arrives before its purchase still wins.

use gateway_core::{
    EventKind, StoreEvent, Timestamp,
    apple::models::{JwsRenewalInfo, NotificationPayload},
    ids::Store,
};
use serde::{Deserialize, Serialize};

use super::{ServiceError, ServiceResult, decision};
use crate::{
    db::{self, Db, customers, inbound, orders, products},
    model::App,
    stores::apple::{self, Verifiers},
};

/// Apple's envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
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

const SOURCE: &str = "app_store.notification";

/// Takes one notification body. Answers only once the raw body is durable.
pub async fn receive_apple(
    db: &Db,
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
    let verifier = verifiers.for_app(app)?;
    let n = verifier.verify_notification(&envelope.signed_payload, now)?;
    let raw = String::from_utf8_lossy(body).into_owned();
    let uuid = n.notification_uuid.clone();
    if inbound::exists(db, &app.id, SOURCE, &uuid).await? {
        return Ok(Received {
            status: "duplicate",
            notification_uuid: uuid,
        });
    }

    let data = n.data.as_ref();
    let transaction = match data.and_then(|d| d.signed_transaction_info.as_deref()) {
        Some(jws) => Some(verifier.verify_transaction(jws, now)?),
        None => None,
    };
    let renewal = match data.and_then(|d| d.signed_renewal_info.as_deref()) {
        Some(jws) => Some(verifier.verify_renewal_info(jws, now)?),
        None => None,
    };
    let Some(t) = transaction else {
        record_only(db, app, &uuid, &raw, now).await?;
        return Ok(Received {
            status: "recorded",
            notification_uuid: uuid,
        });
    };
    let sku = t.product_id.clone().unwrap_or_default();
    let Some(product) = products::by_sku(db, &app.id, "app_store", &sku).await? else {
        tracing::warn!(app = %app.id, sku = %sku, notification = %uuid, "notification for a product the catalog does not know; kept");
        record_only(db, app, &uuid, &raw, now).await?;
        return Ok(Received {
            status: "recorded",
            notification_uuid: uuid,
        });
    };
    let mut facts = apple::transaction_facts(&t, db::new_id("pur"), &product)?;
    facts
        .events
        .extend(notification_events(&n, renewal.as_ref()));

    let lineage = facts.store_transaction_id.clone();
    let owner = match customers::purchase_owner(db, &app.id, Store::AppStore, &lineage).await? {
        Some(owner) => Some(owner),
        None => match t.app_account_token.as_deref() {
            Some(token) => orders::by_app_account_token(db, &app.id, token)
                .await?
                .map(|o| o.customer_id.to_string()),
            None => None,
        },
    };
    let Some(owner) = owner else {
        hold(db, app, &uuid, &raw, &facts, now).await?;
        return Ok(Received {
            status: "held",
            notification_uuid: uuid,
        });
    };
    let customer = owner.parse().map_err(|_| {
        ServiceError::Internal(db::DbError::Corrupt(format!("customer id {owner:?}")))
    })?;
    let subtype = n
        .subtype
        .as_deref()
        .map(|s| format!("/{s}"))
        .unwrap_or_default();
    let input = decision::Input {
        source: SOURCE,
        dedupe_key: uuid.clone(),
        raw,
        cause: format!(
            "App Store notification {}{subtype} for transaction {}.",
            n.notification_type,
            t.transaction_id.as_deref().unwrap_or("?")
        ),
        actor: "app_store".into(),
        manual: Vec::new(),
        purchases: vec![facts],
    };
    decision::apply(db, &app.id, &customer, input, now).await?;
    Ok(Received {
        status: "decided",
        notification_uuid: uuid,
    })
}

/// The facts a notification states beyond its transaction's own fields.
fn notification_events(
    n: &NotificationPayload,
    renewal: Option<&JwsRenewalInfo>,
) -> Vec<StoreEvent> {
    let at = Timestamp::from_millis(n.signed_date.unwrap_or_default());
    let key = |what: &str| format!("apple:notification:{}:{what}", n.notification_uuid);
    let event = |what: &str, kind: EventKind| StoreEvent {
        dedupe_key: key(what),
        occurred_at: at,
        kind,
    };
    match (n.notification_type.as_str(), n.subtype.as_deref()) {
        ("REFUND_REVERSED", _) => vec![event("refund_reversed", EventKind::RefundReversed)],
        ("EXPIRED", _) | ("GRACE_PERIOD_EXPIRED", _) => vec![event("expired", EventKind::Expired)],
        ("DID_FAIL_TO_RENEW", Some("GRACE_PERIOD")) => {
            match renewal.and_then(|r| r.grace_period_expires_date) {
                Some(until) => vec![event(
                    "grace_period",
                    EventKind::GracePeriod {
                        until: Timestamp::from_millis(until),
                    },
                )],
                None => vec![event("billing_retry", EventKind::BillingRetry)],
            }
        }
        ("DID_FAIL_TO_RENEW", _) => vec![event("billing_retry", EventKind::BillingRetry)],
        ("DID_CHANGE_RENEWAL_STATUS", Some(sub)) => {
            vec![event(
                "auto_renew",
                EventKind::AutoRenewChanged {
                    enabled: sub == "AUTO_RENEW_ENABLED",
                },
            )]
        }
        _ => Vec::new(),
    }
}

/// Keeps the raw notification with no decision to make (TEST, CONSUMPTION_REQUEST, unknown products).
async fn record_only(
    db: &Db,
    app: &App,
    uuid: &str,
    raw: &str,
    now: Timestamp,
) -> ServiceResult<()> {
    let mut conn = db.writer().acquire().await?;
    let raw = inbound::Raw {
        source: SOURCE,
        dedupe_key: uuid,
        customer: None,
        body: raw,
    };
    inbound::insert(&mut conn, &app.id, raw, now).await?;
    Ok(())
}

/// Keeps the raw notification and its facts until a customer holds the lineage.
async fn hold(
    db: &Db,
    app: &App,
    uuid: &str,
    raw: &str,
    facts: &gateway_core::PurchaseFacts,
    now: Timestamp,
) -> ServiceResult<()> {
    let mut tx = db.writer().begin().await?;
    let raw = inbound::Raw {
        source: SOURCE,
        dedupe_key: uuid,
        customer: None,
        body: raw,
    };
    if let Some(id) = inbound::insert(&mut tx, &app.id, raw, now).await? {
        customers::insert_orphan_events(&mut tx, &app.id, facts, &id, now).await?;
    }
    tx.commit().await?;
    Ok(())
}
