//! RevenueCat as an upstream provider: its webhook events, field for field, and what each states as
//! the core's facts. What RevenueCat says is taken on its word (it has already verified the
//! purchase with its store): the customer it names, the product, the dates.
//!
//! | event | facts |
//! | --- | --- |
//! | `INITIAL_PURCHASE` | purchased, until `expiration_at_ms`; auto-renew on |
//! | `NON_RENEWING_PURCHASE`, `TEMPORARY_ENTITLEMENT_GRANT` | purchased, until `expiration_at_ms` |
//! | `RENEWAL` | purchased, renewed to `expiration_at_ms`; auto-renew on |
//! | `SUBSCRIPTION_EXTENDED`, `PRODUCT_CHANGE` | purchased, renewed to `expiration_at_ms` |
//! | `UNCANCELLATION` | auto-renew on |
//! | `CANCELLATION` with `cancel_reason` `CUSTOMER_SUPPORT` | refunded |
//! | `CANCELLATION`, another reason | auto-renew off (access runs to `EXPIRATION`) |
//! | `BILLING_ISSUE` | grace period until `grace_period_expiration_at_ms`, else billing retry |
//! | `EXPIRATION` | expired |
//! | `REFUND_REVERSED` | refund reversed |
//! | `TRANSFER` | no facts: the purchases it relayed move from `transferred_from` to `transferred_to` |
//! | `SUBSCRIPTION_PAUSED`, `TEST`, `INVOICE_ISSUANCE`, `VIRTUAL_CURRENCY_TRANSACTION`, `EXPERIMENT_ENROLLMENT`, `SUBSCRIBER_ALIAS`, others | nothing (kept) |
//!
//! A purchase's lineage is RevenueCat's `original_transaction_id` (the store's), prefixed `rc:` so
//! that it never mixes with a purchase the gateway verified with the store itself.
//!
//! A temporary grant (RevenueCat's access while a store cannot be reached, for at most a day) is a
//! lineage of its own, `rc:grant:<transaction_id>`. It has one of two follow-ups, and only one of them
//! names it: an `EXPIRATION` with the grant's `transaction_id` ends it, and the store's purchase that
//! succeeds it (an `INITIAL_PURCHASE`) may carry another transaction id and another product. Which
//! grant a purchase succeeds is found by customer, entitlement and time ([`GrantRef`]); the
//! purchase's adapter asks the customer's record, which this module cannot see.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{EventKind, StoreEvent, Timestamp, ids::Store};

/// What the lineage of every purchase RevenueCat relays begins with.
pub const LINEAGE_PREFIX: &str = "rc:";

/// What the lineage of a temporary grant begins with.
pub const GRANT_PREFIX: &str = "rc:grant:";

/// How far before a grant the store's purchase that succeeds it may be dated: the learner paid on the
/// device, then RevenueCat, unable to reach the store, granted access.
pub const GRANT_LEAD_MS: i64 = 60 * 60 * 1000;

/// How an event may concern a temporary grant that its lineage does not name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantRef {
    /// An `EXPIRATION`: about the grant of this lineage when the customer holds one (RevenueCat ends
    /// a grant that way), else about the lineage the event names.
    Named(String),
    /// A purchase dated `at`: it succeeds the customer's running grant of one of the same
    /// entitlements that began no more than [`GRANT_LEAD_MS`] after `at` and still ran at `at`, which
    /// ends as the purchase starts.
    FollowUp { at: Timestamp },
}

/// The body RevenueCat posts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Webhook {
    #[serde(default)]
    pub api_version: Option<String>,
    pub event: Event,
}

/// One event. Fields RevenueCat may leave out are `Option`s; new ones are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub app_user_id: Option<String>,
    #[serde(default)]
    pub original_app_user_id: Option<String>,
    #[serde(default)]
    pub product_id: Option<String>,
    #[serde(default)]
    pub entitlement_ids: Option<Vec<String>>,
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub event_timestamp_ms: Option<i64>,
    #[serde(default)]
    pub purchased_at_ms: Option<i64>,
    #[serde(default)]
    pub expiration_at_ms: Option<i64>,
    #[serde(default)]
    pub grace_period_expiration_at_ms: Option<i64>,
    #[serde(default)]
    pub cancel_reason: Option<String>,
    #[serde(default)]
    pub expiration_reason: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub original_transaction_id: Option<String>,
    #[serde(default)]
    pub period_type: Option<String>,
    #[serde(default)]
    pub subscriber_attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// `TRANSFER`: the customers RevenueCat moved the purchases from, and to.
    #[serde(default)]
    pub transferred_from: Option<Vec<String>>,
    #[serde(default)]
    pub transferred_to: Option<Vec<String>>,
}

/// What an event states about one purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stated {
    pub lineage: String,
    /// The store the purchase was made in, whose SKU names the catalog's product.
    pub store: Store,
    /// The store's product id (for Google Play, the subscription id before `:`).
    pub sku: String,
    pub customer: String,
    pub events: Vec<StoreEvent>,
    /// The temporary grant the event may concern.
    pub grant: Option<GrantRef>,
}

fn at(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_millis)
}

/// The store a RevenueCat `store` names, when the gateway sells there.
fn store_of(name: &str) -> Option<Store> {
    match name {
        "APP_STORE" | "MAC_APP_STORE" => Some(Store::AppStore),
        "PLAY_STORE" => Some(Store::PlayStore),
        "STRIPE" => Some(Store::Stripe),
        _ => None,
    }
}

/// The facts an event states, or `None` for one that states none (see the module's table).
pub fn facts(e: &Event) -> Option<Stated> {
    let store = store_of(e.store.as_deref()?)?;
    let customer = e.app_user_id.clone()?;
    let product = e.product_id.as_deref()?;
    // Play products come as `subscriptionId:basePlanId`.
    let sku = product.split(':').next().unwrap_or(product).to_owned();
    let now = at(e.event_timestamp_ms)?;
    let temporary = e.kind == "TEMPORARY_ENTITLEMENT_GRANT";
    let lineage = if temporary {
        format!("{GRANT_PREFIX}{}", e.transaction_id.as_deref()?)
    } else {
        format!(
            "rc:{}",
            e.original_transaction_id
                .as_deref()
                .or(e.transaction_id.as_deref())?
        )
    };
    let key = |what: &str| format!("rc:{}:{what}", e.id);
    let purchased = || StoreEvent {
        dedupe_key: key("purchased"),
        occurred_at: at(e.purchased_at_ms).unwrap_or(now),
        kind: EventKind::Purchased {
            expires_at: at(e.expiration_at_ms),
            quantity: 1,
        },
    };
    let fact = |what: &str, kind: EventKind| StoreEvent {
        dedupe_key: key(what),
        occurred_at: now,
        kind,
    };
    let events = match e.kind.as_str() {
        // A subscription renews by itself until a CANCELLATION says otherwise.
        "INITIAL_PURCHASE" => vec![
            purchased(),
            fact("auto_renew", EventKind::AutoRenewChanged { enabled: true }),
        ],
        "NON_RENEWING_PURCHASE" | "TEMPORARY_ENTITLEMENT_GRANT" => vec![purchased()],
        "RENEWAL" | "SUBSCRIPTION_EXTENDED" | "PRODUCT_CHANGE" => {
            let mut v = vec![purchased()];
            if let Some(expires_at) = at(e.expiration_at_ms) {
                v.push(fact("renewed", EventKind::Renewed { expires_at }));
            }
            if e.kind == "RENEWAL" {
                v.push(fact(
                    "auto_renew",
                    EventKind::AutoRenewChanged { enabled: true },
                ));
            }
            v
        }
        "UNCANCELLATION" => vec![fact(
            "auto_renew",
            EventKind::AutoRenewChanged { enabled: true },
        )],
        "CANCELLATION" if e.cancel_reason.as_deref() == Some("CUSTOMER_SUPPORT") => {
            vec![fact("refunded", EventKind::Refunded)]
        }
        "CANCELLATION" => vec![fact(
            "auto_renew",
            EventKind::AutoRenewChanged { enabled: false },
        )],
        "BILLING_ISSUE" => match at(e.grace_period_expiration_at_ms) {
            Some(until) => vec![fact("grace", EventKind::GracePeriod { until })],
            None => vec![fact("retry", EventKind::BillingRetry)],
        },
        "EXPIRATION" => {
            let when = at(e.expiration_at_ms).unwrap_or(now).min(now);
            vec![StoreEvent {
                dedupe_key: key("expired"),
                occurred_at: when,
                kind: EventKind::Expired,
            }]
        }
        "REFUND_REVERSED" => vec![fact("refund_reversed", EventKind::RefundReversed)],
        _ => return None,
    };
    let grant = match e.kind.as_str() {
        "EXPIRATION" => e
            .transaction_id
            .as_deref()
            .map(|id| GrantRef::Named(format!("{GRANT_PREFIX}{id}"))),
        "INITIAL_PURCHASE" | "NON_RENEWING_PURCHASE" => Some(GrantRef::FollowUp {
            at: at(e.purchased_at_ms).unwrap_or(now),
        }),
        _ => None,
    };
    Some(Stated {
        lineage,
        store,
        sku,
        customer,
        events,
        grant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProductKind, PurchaseStatus, purchase::fold_with_terms};

    fn event(kind: &str, extra: serde_json::Value) -> Event {
        let mut v = serde_json::json!({"id": format!("evt-{kind}"), "type": kind, "app_user_id": "ada",
            "product_id": "premium_monthly:monthly", "store": "PLAY_STORE", "environment": "PRODUCTION",
            "event_timestamp_ms": 1_000, "purchased_at_ms": 1_000, "expiration_at_ms": 100_000,
            "transaction_id": "GPA.1", "original_transaction_id": "GPA.1", "entitlement_ids": ["premium"]});
        if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    fn status(events: &[StoreEvent], now: i64) -> PurchaseStatus {
        fold_with_terms(
            events,
            Some(ProductKind::Subscription),
            None,
            Timestamp::from_millis(now),
        )
        .status
    }

    #[test]
    fn a_purchase_runs_until_expiration_and_a_support_cancellation_refunds() {
        let bought = facts(&event("INITIAL_PURCHASE", serde_json::json!({}))).unwrap();
        assert_eq!(bought.store, Store::PlayStore);
        assert_eq!(bought.sku, "premium_monthly");
        assert_eq!(bought.lineage, "rc:GPA.1");
        assert_eq!(bought.customer, "ada");
        assert_eq!(status(&bought.events, 50_000), PurchaseStatus::Active);

        // An ordinary cancellation keeps access; the expiration ends it.
        let mut events = bought.events.clone();
        events.extend(
            facts(&event(
                "CANCELLATION",
                serde_json::json!({"cancel_reason": "UNSUBSCRIBE", "event_timestamp_ms": 2_000}),
            ))
            .unwrap()
            .events,
        );
        assert_eq!(status(&events, 50_000), PurchaseStatus::Active);
        events.extend(
            facts(&event(
                "EXPIRATION",
                serde_json::json!({"event_timestamp_ms": 100_000}),
            ))
            .unwrap()
            .events,
        );
        assert_eq!(status(&events, 100_001), PurchaseStatus::Expired);

        // A refund is a cancellation for customer support.
        let mut refunded = bought.events;
        refunded.extend(facts(&event("CANCELLATION", serde_json::json!({"cancel_reason": "CUSTOMER_SUPPORT", "event_timestamp_ms": 3_000}))).unwrap().events);
        assert_eq!(status(&refunded, 50_000), PurchaseStatus::Refunded);

        assert_eq!(
            facts(&event("SUBSCRIPTION_PAUSED", serde_json::json!({}))),
            None
        );
        assert_eq!(facts(&event("TEST", serde_json::json!({}))), None);
        assert_eq!(
            facts(&event(
                "INITIAL_PURCHASE",
                serde_json::json!({"store": "AMAZON"})
            )),
            None
        );
    }

    #[test]
    fn a_temporary_grant_is_its_own_lineage_which_its_expiration_may_name() {
        let temp = facts(&event(
            "TEMPORARY_ENTITLEMENT_GRANT",
            serde_json::json!({"transaction_id": "tmp-1", "expiration_at_ms": 86_401_000}),
        ))
        .unwrap();
        assert_eq!(temp.lineage, "rc:grant:tmp-1");
        assert_eq!(temp.grant, None);
        let end = facts(&event("EXPIRATION", serde_json::json!({"transaction_id": "tmp-1", "original_transaction_id": null, "event_timestamp_ms": 5_000}))).unwrap();
        assert_eq!(end.grant, Some(GrantRef::Named(temp.lineage.clone())));
        let mut events = temp.events;
        events.extend(end.events);
        assert_eq!(status(&events, 6_000), PurchaseStatus::Expired);

        // The store's purchase names no grant: it is matched by its date.
        let bought = facts(&event(
            "INITIAL_PURCHASE",
            serde_json::json!({"transaction_id": "GPA.9", "original_transaction_id": "GPA.9", "purchased_at_ms": 4_000}),
        ))
        .unwrap();
        assert_eq!(bought.lineage, "rc:GPA.9");
        assert_eq!(
            bought.grant,
            Some(GrantRef::FollowUp {
                at: Timestamp::from_millis(4_000)
            })
        );
        let renewal = facts(&event("RENEWAL", serde_json::json!({}))).unwrap();
        assert_eq!(
            renewal.grant, None,
            "only a first purchase succeeds a grant"
        );
    }
}
