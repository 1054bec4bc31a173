//! What Apple's signed data states, as the core's facts: a verified transaction about its purchase
//! lineage (`originalTransactionId`), and what a notification adds beyond its transaction's fields.
//! Pure: the gateway's App Store adapter verifies, then calls these.

use crate::{
    EventKind, Product, ProductKind, PurchaseFacts, StoreEvent, Timestamp,
    apple::models::{JwsRenewalInfo, JwsTransaction, NotificationPayload},
    ids::Store,
};

/// A field a transaction must have to state a fact, and does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signed transaction has no `{0}`")]
pub struct Missing(pub &'static str);

/// The facts one verified transaction states about its lineage.
pub fn transaction_facts(
    t: &JwsTransaction,
    purchase_id: String,
    product: &Product,
) -> Result<PurchaseFacts, Missing> {
    let id = t.transaction_id.clone().ok_or(Missing("transactionId"))?;
    let purchased_ms = t.purchase_date.ok_or(Missing("purchaseDate"))?;
    let lineage = t
        .original_transaction_id
        .clone()
        .unwrap_or_else(|| id.clone());
    let at = Timestamp::from_millis(purchased_ms);
    let expires_at = t.expires_date.map(Timestamp::from_millis);
    let renewal = product.kind == ProductKind::Subscription
        && (t.transaction_reason.as_deref() == Some("RENEWAL") || lineage != id);
    let mut events = vec![if renewal {
        StoreEvent {
            dedupe_key: format!("apple:{id}:renewed"),
            occurred_at: at,
            kind: EventKind::Renewed {
                expires_at: expires_at.unwrap_or(at),
            },
        }
    } else {
        StoreEvent {
            dedupe_key: format!("apple:{id}:purchased"),
            occurred_at: at,
            kind: EventKind::Purchased {
                expires_at,
                quantity: t.quantity.unwrap_or(1),
            },
        }
    }];
    if let Some(revoked_ms) = t.revocation_date {
        // Family Sharing ending is a revoke; anything else with a revocation date is a refund.
        let family = t.revocation_type.as_deref() == Some("FAMILY_REVOKE")
            || t.in_app_ownership_type.as_deref() == Some("FAMILY_SHARED");
        events.push(StoreEvent {
            dedupe_key: format!("apple:{id}:revoked:{revoked_ms}"),
            occurred_at: Timestamp::from_millis(revoked_ms),
            kind: if family {
                EventKind::Revoked
            } else {
                EventKind::Refunded
            },
        });
    }
    if t.is_upgraded == Some(true) {
        let when = t.signed_date.map_or(at, Timestamp::from_millis);
        events.push(StoreEvent {
            dedupe_key: format!("apple:{id}:upgraded"),
            occurred_at: when,
            kind: EventKind::Expired,
        });
    }
    Ok(PurchaseFacts {
        id: purchase_id,
        store: Store::AppStore,
        product_id: product.id.clone(),
        store_transaction_id: lineage,
        environment: t.environment.clone(),
        terms: Some(product.terms()),
        settled: None,
        events,
    })
}

/// The facts a notification states beyond its transaction's own fields.
pub fn notification_events(
    n: &NotificationPayload,
    t: &JwsTransaction,
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
        // The transaction keeps its id and gets a later `expiresDate`: a fact of its own, or the new
        // date would be a duplicate of the transaction's first sight.
        ("RENEWAL_EXTENDED", _) => t
            .expires_date
            .map(|to| {
                vec![event(
                    "extended",
                    EventKind::Renewed {
                        expires_at: Timestamp::from_millis(to),
                    },
                )]
            })
            .unwrap_or_default(),
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
