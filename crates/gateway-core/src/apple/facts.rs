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
        // Family Sharing ending is a revoke; a prorated refund of a consumable takes back its share
        // of the units; anything else with a revocation date is a refund (a revoked transaction no
        // longer entitles, as StoreKit has it).
        let family = t.revocation_type.as_deref() == Some("FAMILY_REVOKE")
            || t.in_app_ownership_type.as_deref() == Some("FAMILY_SHARED");
        let kind = if family {
            Some(EventKind::Revoked)
        } else {
            match taken(t, product) {
                Taken::Whole => Some(EventKind::Refunded),
                Taken::Units(units) => Some(EventKind::PartlyRefunded { quantity: units }),
                Taken::Nothing => None,
            }
        };
        if let Some(kind) = kind {
            events.push(StoreEvent {
                dedupe_key: format!("apple:{id}:revoked:{revoked_ms}"),
                occurred_at: Timestamp::from_millis(revoked_ms),
                kind,
            });
        }
    }
    // An upgraded transaction (`isUpgraded`) states no end of its own: its lineage goes on under
    // the new product, whose transaction starts the new period and names the product to follow.
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

/// What a refund takes back.
enum Taken {
    /// The whole purchase: a revoked transaction no longer entitles.
    Whole,
    /// Some units of a consumable.
    Units(u32),
    /// Nothing Apple's share amounts to: less than half a unit.
    Nothing,
}

/// What a refund of `t` takes back: for a prorated refund of a consumable, its share of the whole
/// quantity (`revocationPercentage` is in thousandths of a percent; 1 of 3 is 33333), rounded to
/// units; a share that rounds to every unit is the whole purchase. Any other refund is whole.
fn taken(t: &JwsTransaction, product: &Product) -> Taken {
    let share = match (t.revocation_type.as_deref(), t.revocation_percentage) {
        (Some("REFUND_PRORATED"), Some(share)) if product.kind == ProductKind::Consumable => {
            share.clamp(0, 100_000)
        }
        _ => return Taken::Whole,
    };
    let quantity = i64::from(t.quantity.unwrap_or(1).max(1));
    let units = (quantity * share + 50_000) / 100_000;
    match u32::try_from(units) {
        Ok(0) => Taken::Nothing,
        Ok(units) if i64::from(units) < quantity => Taken::Units(units),
        _ => Taken::Whole,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn product(kind: &str) -> Product {
        let consumable =
            (kind == "consumable").then(|| serde_json::json!({"currency": "COINS", "amount": 100}));
        serde_json::from_value(serde_json::json!({"id": "p", "kind": kind,
            "store_skus": {"app_store": "edu.p"}, "entitlements": [], "consumable": consumable,
            "access_duration": null, "expires_at": null, "active": true}))
        .unwrap()
    }

    fn refunded(quantity: u32, kind: Option<&str>, share: Option<i64>) -> JwsTransaction {
        serde_json::from_value(
            serde_json::json!({"transactionId": "1", "originalTransactionId": "1",
            "purchaseDate": 1_000, "quantity": quantity, "revocationDate": 2_000,
            "revocationReason": 0, "revocationType": kind, "revocationPercentage": share}),
        )
        .unwrap()
    }

    fn refund_kind(t: &JwsTransaction, p: &Product) -> Option<EventKind> {
        let facts = transaction_facts(t, "pur".into(), p).unwrap();
        facts
            .events
            .into_iter()
            .find(|e| e.dedupe_key.contains(":revoked:"))
            .map(|e| e.kind)
    }

    #[test]
    fn a_prorated_refund_takes_back_its_share_of_a_consumables_units() {
        let coins = product("consumable");
        let prorated = |q, share| refunded(q, Some("REFUND_PRORATED"), Some(share));
        let units = |quantity| Some(EventKind::PartlyRefunded { quantity });
        // 1 of 3 is 33.333 %; 2 of 3 is 66.667 %.
        assert_eq!(refund_kind(&prorated(3, 33_333), &coins), units(1));
        assert_eq!(refund_kind(&prorated(3, 66_667), &coins), units(2));
        // Every unit is the whole purchase; less than half a unit is nothing taken.
        assert_eq!(
            refund_kind(&prorated(3, 100_000), &coins),
            Some(EventKind::Refunded)
        );
        assert_eq!(refund_kind(&prorated(3, 10_000), &coins), None);
        // A full refund, and any refund of another kind of product, is whole.
        assert_eq!(
            refund_kind(&refunded(3, Some("REFUND_FULL"), None), &coins),
            Some(EventKind::Refunded)
        );
        for kind in ["non_consumable", "subscription"] {
            let p = product(kind);
            assert_eq!(
                refund_kind(&prorated(1, 40_000), &p),
                Some(EventKind::Refunded),
                "{kind}"
            );
        }
        assert_eq!(
            refund_kind(&refunded(1, Some("FAMILY_REVOKE"), None), &coins),
            Some(EventKind::Revoked)
        );
    }
}
