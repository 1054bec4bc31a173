//! Google Play's answers, as Google writes them, read and mapped to the core's facts: each row of the
//! subscription-state table in `play::facts`, one-time products, voided purchases and notifications.

use gateway_core::{
    EventKind, Product, PurchaseStatus, Timestamp,
    play::{
        facts::{gone_facts, product_facts, subscription_facts, voided_event},
        models::{
            DeveloperNotification, ProductPurchaseV2, PushRequest, SubscriptionPurchaseV2,
            VoidedPurchase,
        },
    },
    purchase::fold,
};
use serde_json::json;

const DAY: i64 = 86_400_000;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn rfc(ms: i64) -> String {
    at(ms).to_rfc3339()
}

fn product(kind: &str) -> Product {
    serde_json::from_value(json!({"id": "premium", "kind": kind,
        "store_skus": {"play_store": "premium_monthly"}, "entitlements": [{"id": "premium", "attributes": {}}],
        "consumable": if kind == "consumable" { json!({"currency": "COINS", "amount": 100}) } else { json!(null) },
        "access_duration": null, "expires_at": null, "active": true}))
    .unwrap()
}

fn subscription(state: &str, expiry: i64, auto_renew: bool) -> SubscriptionPurchaseV2 {
    serde_json::from_value(json!({
        "kind": "androidpublisher#subscriptionPurchaseV2",
        "regionCode": "US",
        "startTime": rfc(0),
        "subscriptionState": state,
        "acknowledgementState": "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED",
        "lineItems": [{
            "productId": "premium_monthly",
            "expiryTime": rfc(expiry),
            "latestSuccessfulOrderId": "GPA.3345-1234-5678-90123",
            "autoRenewingPlan": {"autoRenewEnabled": auto_renew, "recurringPrice": {"currencyCode": "USD", "units": "9", "nanos": 990000000}},
            "offerDetails": {"basePlanId": "monthly", "offerTags": []}
        }],
        "etag": "abc"
    }))
    .unwrap()
}

/// The status of the token after `reads` (each a state read at a time), at `now`.
fn status_after(reads: &[(SubscriptionPurchaseV2, i64)], now: i64) -> PurchaseStatus {
    let p = product("subscription");
    let mut events = Vec::new();
    for (s, when) in reads {
        let f = subscription_facts(s, "tok-1", "pur_1".into(), &p, at(*when)).unwrap();
        events.extend(f.events);
    }
    fold(&events, Some(&p), at(now)).status
}

#[test]
fn every_subscription_state_maps_as_the_table_says() {
    let active = subscription("SUBSCRIPTION_STATE_ACTIVE", 30 * DAY, true);
    assert_eq!(
        status_after(&[(active.clone(), DAY)], 10 * DAY),
        PurchaseStatus::Active
    );
    assert_eq!(
        status_after(&[(active.clone(), DAY)], 31 * DAY),
        PurchaseStatus::Expired
    );
    let canceled = subscription("SUBSCRIPTION_STATE_CANCELED", 30 * DAY, false);
    assert_eq!(
        status_after(&[(canceled.clone(), DAY)], 10 * DAY),
        PurchaseStatus::Active
    );
    let f = subscription_facts(
        &canceled,
        "tok-1",
        "p".into(),
        &product("subscription"),
        at(DAY),
    )
    .unwrap();
    assert!(
        f.events
            .iter()
            .any(|e| e.kind == EventKind::AutoRenewChanged { enabled: false })
    );
    let grace = subscription("SUBSCRIPTION_STATE_IN_GRACE_PERIOD", 33 * DAY, true);
    assert_eq!(
        status_after(&[(grace.clone(), 30 * DAY)], 32 * DAY),
        PurchaseStatus::Active
    );
    assert_eq!(
        status_after(&[(grace, 30 * DAY)], 34 * DAY),
        PurchaseStatus::Expired
    );
    let hold = subscription("SUBSCRIPTION_STATE_ON_HOLD", 30 * DAY, true);
    assert_eq!(
        status_after(&[(hold.clone(), 31 * DAY)], 31 * DAY),
        PurchaseStatus::Expired
    );
    let paused = subscription("SUBSCRIPTION_STATE_PAUSED", 30 * DAY, true);
    assert_eq!(
        status_after(&[(paused.clone(), 30 * DAY)], 30 * DAY - 1),
        PurchaseStatus::Expired
    );
    let expired = subscription("SUBSCRIPTION_STATE_EXPIRED", 30 * DAY, false);
    assert_eq!(
        status_after(&[(expired, 30 * DAY)], 20 * DAY),
        PurchaseStatus::Expired
    );
    let mut pending = subscription("SUBSCRIPTION_STATE_PENDING", 30 * DAY, true);
    pending.start_time = None;
    assert_eq!(
        status_after(&[(pending.clone(), 0)], DAY),
        PurchaseStatus::Pending
    );
    let mut canceled_pending = pending.clone();
    canceled_pending.subscription_state = "SUBSCRIPTION_STATE_PENDING_PURCHASE_CANCELED".into();
    assert_eq!(
        status_after(&[(pending, 0), (canceled_pending, DAY)], 2 * DAY),
        PurchaseStatus::Revoked,
        "a pending subscription Play cancelled grants nothing"
    );
    // Recovered from hold, resumed from a pause: a later paid period brings access back.
    let recovered = subscription("SUBSCRIPTION_STATE_ACTIVE", 62 * DAY, true);
    assert_eq!(
        status_after(&[(hold, 31 * DAY), (recovered.clone(), 32 * DAY)], 40 * DAY),
        PurchaseStatus::Active
    );
    assert_eq!(
        status_after(
            &[(active, DAY), (paused, 30 * DAY), (recovered, 45 * DAY)],
            50 * DAY
        ),
        PurchaseStatus::Active
    );
    let unknown = subscription("SUBSCRIPTION_STATE_SOMETHING_NEW", 30 * DAY, true);
    assert!(
        subscription_facts(&unknown, "t", "p".into(), &product("subscription"), at(0)).is_err()
    );
}

#[test]
fn reading_the_same_state_again_adds_no_fact() {
    let p = product("subscription");
    let s = subscription("SUBSCRIPTION_STATE_ACTIVE", 30 * DAY, true);
    let first = subscription_facts(&s, "tok", "p".into(), &p, at(DAY)).unwrap();
    let again = subscription_facts(&s, "tok", "p".into(), &p, at(2 * DAY)).unwrap();
    let keys = |f: &gateway_core::PurchaseFacts| -> Vec<String> {
        f.events.iter().map(|e| e.dedupe_key.clone()).collect()
    };
    assert_eq!(keys(&first), keys(&again));
    let renewed = subscription("SUBSCRIPTION_STATE_ACTIVE", 60 * DAY, true);
    let later = subscription_facts(&renewed, "tok", "p".into(), &p, at(30 * DAY)).unwrap();
    let new: Vec<_> = keys(&later)
        .into_iter()
        .filter(|k| !keys(&first).contains(k))
        .collect();
    assert_eq!(
        new.len(),
        2,
        "a renewal adds its paid period and its auto-renew state: {new:?}"
    );
}

#[test]
fn one_time_products_pending_purchased_and_cancelled() {
    let p = product("consumable");
    let body = |state: &str| -> ProductPurchaseV2 {
        serde_json::from_value(json!({
            "kind": "androidpublisher#productPurchaseV2",
            "productLineItem": [{"productId": "coins_100", "productOfferDetails": {
                "purchaseOptionId": "default", "quantity": 3, "refundableQuantity": 3,
                "consumptionState": "CONSUMPTION_STATE_YET_TO_BE_CONSUMED", "offerToken": "x"}}],
            "purchaseStateContext": {"purchaseState": state},
            "purchaseCompletionTime": if state == "PURCHASED" { json!(rfc(5)) } else { json!(null) },
            "acknowledgementState": "ACKNOWLEDGEMENT_STATE_PENDING",
            "orderId": "GPA.1234-5678-9012-34567",
            "regionCode": "US",
            "obfuscatedExternalAccountId": "5b0a5d2e-9a55-4a9d-8a8e-0f3c2d1e4b6a"
        }))
        .unwrap()
    };
    let pending = product_facts(&body("PENDING"), "t", "p".into(), &p, at(1)).unwrap();
    assert_eq!(pending.events[0].kind, EventKind::Pending);
    let bought = product_facts(&body("PURCHASED"), "t", "p".into(), &p, at(9)).unwrap();
    assert_eq!(
        bought.events[0].kind,
        EventKind::Purchased {
            expires_at: None,
            quantity: 3
        }
    );
    assert_eq!(
        bought.events[0].occurred_at,
        at(5),
        "paid when Play completed it"
    );
    assert_eq!(bought.environment.as_deref(), Some("Production"));
    let both: Vec<_> = pending
        .events
        .iter()
        .chain(&bought.events)
        .cloned()
        .collect();
    assert_eq!(fold(&both, Some(&p), at(10)).status, PurchaseStatus::Active);
    let cancelled = product_facts(&body("CANCELLED"), "t", "p".into(), &p, at(9)).unwrap();
    let ended: Vec<_> = pending
        .events
        .iter()
        .chain(&cancelled.events)
        .cloned()
        .collect();
    assert_eq!(
        fold(&ended, Some(&p), at(10)).status,
        PurchaseStatus::Revoked
    );
}

#[test]
fn a_void_refunds_its_order_and_a_gone_token_has_ended() {
    let v: VoidedPurchase = serde_json::from_value(json!({
        "kind": "androidpublisher#voidedPurchase", "purchaseToken": "tok", "purchaseTimeMillis": "1000",
        "voidedTimeMillis": "5000", "orderId": "GPA.1-2-3-4", "voidedSource": 2, "voidedReason": 7
    }))
    .unwrap();
    let e = voided_event(&v, at(9_000));
    assert_eq!(
        (e.kind.clone(), e.occurred_at),
        (EventKind::Refunded, at(5_000))
    );
    assert_eq!(e.dedupe_key, "play:void:GPA.1-2-3-4");
    // Google writes `voidedQuantity: 0` for a full refund when partial ones are asked for.
    let mut full = v.clone();
    full.voided_quantity = Some(0);
    assert_eq!(voided_event(&full, at(9_000)), e);
    // Two of the order's units refunded: a partial refund, keyed by order and time.
    let mut part = v.clone();
    part.voided_quantity = Some(2);
    let p = voided_event(&part, at(9_000));
    assert_eq!(p.kind, EventKind::PartlyRefunded { quantity: 2 });
    assert_eq!(p.dedupe_key, "play:void:GPA.1-2-3-4:5000:2");
    let gone = gone_facts("tok", "p".into(), &product("subscription"), at(1));
    assert_eq!(gone.events[0].kind, EventKind::Expired);
}

#[test]
fn a_push_and_its_notification_are_read_in_either_spelling() {
    let data = base64_of(
        &json!({"version": "1.0", "packageName": "edu.acme.app", "eventTimeMillis": "1503349566168",
        "subscriptionNotification": {"version": "1.0", "notificationType": 4, "purchaseToken": "PURCHASE_TOKEN", "subscriptionId": "my.sku"}}),
    );
    let push: PushRequest =
        serde_json::from_value(json!({"message": {"attributes": {"k": "v"}, "data": data,
        "message_id": "136969346945", "publish_time": "2021-02-26T19:13:55.749Z"},
        "subscription": "projects/myproject/subscriptions/mysubscription"}))
        .unwrap();
    assert_eq!(push.message.id(), Some("136969346945"));
    let n: DeveloperNotification =
        serde_json::from_slice(&decode(push.message.data.as_deref().unwrap())).unwrap();
    assert_eq!(n.event_time_millis, Some(1503349566168));
    assert_eq!(n.subscription_notification.unwrap().notification_type, 4);
    let numeric: DeveloperNotification = serde_json::from_value(
        json!({"packageName": "p", "eventTimeMillis": 17, "testNotification": {"version": "1.0"}}),
    )
    .unwrap();
    assert_eq!(numeric.event_time_millis, Some(17));
    assert!(numeric.test_notification.is_some());
}

fn base64_of(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

fn decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn a_v1_product_purchase_reads_as_v2() {
    // `purchases.products.get` as Google writes it: integer states, int64 as strings.
    let v1: gateway_core::play::models::ProductPurchase = serde_json::from_value(json!({
        "kind": "androidpublisher#productPurchase", "purchaseTimeMillis": "1700000000000",
        "purchaseState": 0, "consumptionState": 0, "developerPayload": "", "orderId": "GPA.3-3-3-3",
        "acknowledgementState": 0, "purchaseType": 0, "quantity": 3, "refundableQuantity": 3,
        "regionCode": "US", "obfuscatedExternalAccountId": "acct"
    }))
    .unwrap();
    let p = product("consumable");
    let v2 = v1.clone().into_v2("coins_100");
    assert_eq!(v2.product_line_item[0].product_id, "coins_100");
    assert_eq!(v2.obfuscated_external_account_id.as_deref(), Some("acct"));
    assert!(
        v2.test_purchase_context.is_some(),
        "purchaseType 0 is a test"
    );
    let facts = product_facts(&v2, "t", "p".into(), &p, at(0)).unwrap();
    assert_eq!(
        facts.events[0].kind,
        EventKind::Purchased {
            expires_at: None,
            quantity: 3
        }
    );
    assert_eq!(facts.events[0].occurred_at, at(1_700_000_000_000));
    assert_eq!(facts.environment.as_deref(), Some("Sandbox"));

    let pending = gateway_core::play::models::ProductPurchase {
        purchase_state: Some(2),
        ..v1.clone()
    }
    .into_v2("coins_100");
    assert_eq!(pending.purchase_completion_time, None);
    let cancelled = gateway_core::play::models::ProductPurchase {
        purchase_state: Some(1),
        ..v1
    }
    .into_v2("coins_100");
    let facts = product_facts(&cancelled, "t", "p".into(), &p, at(5)).unwrap();
    assert_eq!(facts.events[0].kind, EventKind::Refunded);
}
