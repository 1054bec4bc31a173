//! RevenueCat as an upstream provider: its webhook events, authenticated by the Authorization header
//! the operator set, grant and end access for the customer RevenueCat names; a wrong header and a
//! malformed body are refused and change nothing.

use gateway_core::Clock;
use serde_json::{Value, json};

use crate::{both, helpers::*};

const AUTH: &str = "Bearer rc_hook_4f9a2c1e7b";
const DAY: i64 = 86_400_000;

async fn open(app: &TestApp) {
    app.seed_catalog("acme").await;
    app.patch(
        "/v1/apps/acme",
        json!({"revenuecat": {"webhook_authorization": AUTH}}),
    )
    .await
    .expect(200);
}

fn event(id: &str, kind: &str, app: &TestApp, extra: Value) -> String {
    let now = app.clock.now().millis();
    let mut e = json!({"id": id, "type": kind, "app_id": "app1a2b3c", "event_timestamp_ms": now,
        "app_user_id": "ada", "original_app_user_id": "ada", "aliases": ["ada"],
        "product_id": "edu.acme.premium", "entitlement_ids": ["premium"], "period_type": "NORMAL",
        "purchased_at_ms": now, "expiration_at_ms": now + 30 * DAY, "store": "APP_STORE",
        "environment": "PRODUCTION", "transaction_id": "2000000900", "original_transaction_id": "2000000900",
        "price": 9.99, "currency": "USD", "country_code": "US", "subscriber_attributes": {}});
    if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    json!({"api_version": "1.0", "event": e}).to_string()
}

async fn post(app: &TestApp, body: &str, auth: Option<&str>) -> Answer {
    let mut req = app
        .client
        .post(format!(
            "{}/v1/apps/acme/notifications/revenuecat",
            app.addr
        ))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    }
}

async fn status(app: &TestApp, id: &str) -> Value {
    app.entitlement("ada", id).await["status"].clone()
}

both!(
    revenuecat_events_grant_and_end_access_for_the_customer_it_names,
    |app: TestApp| async move {
        open(&app).await;
        let bought = event("rc-1", "INITIAL_PURCHASE", &app, json!({}));
        // A wrong or missing Authorization, and a body that is no webhook: refused, nothing kept.
        post(&app, &bought, Some("Bearer wrong"))
            .await
            .error(401, "invalid_authorization");
        post(&app, &bought, None)
            .await
            .error(401, "invalid_authorization");
        post(&app, r#"{"event": {"type": "RENEWAL"}}"#, Some(AUTH))
            .await
            .error(400, "malformed_notification");
        assert_eq!(app.count("inbound").await, 0);

        let answer = post(&app, &bought, Some(AUTH)).await.expect(200);
        assert_eq!(answer["status"], "decided", "{answer}");
        assert_eq!(status(&app, "premium").await, "active");
        let again = post(&app, &bought, Some(AUTH)).await.expect(200);
        assert_eq!(again["status"], "duplicate");

        // A test event is kept, not decided.
        let test = event("rc-test", "TEST", &app, json!({}));
        assert_eq!(
            post(&app, &test, Some(AUTH)).await.expect(200)["status"],
            "recorded"
        );

        // An ordinary cancellation keeps access until the expiration ends it.
        app.clock.advance_millis(DAY);
        let cancelled = event(
            "rc-2",
            "CANCELLATION",
            &app,
            json!({"cancel_reason": "UNSUBSCRIBE"}),
        );
        post(&app, &cancelled, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, "premium").await, "active");
        app.clock.advance_millis(29 * DAY + 1000);
        let expired = event(
            "rc-3",
            "EXPIRATION",
            &app,
            json!({"expiration_reason": "UNSUBSCRIBE"}),
        );
        post(&app, &expired, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, "premium").await, "expired");

        // A course bought through RevenueCat on Google Play, then refunded by customer support.
        let course = "course-v1:Acme+CS101+2026";
        let bought = event(
            "rc-4",
            "NON_RENEWING_PURCHASE",
            &app,
            json!({"store": "PLAY_STORE", "product_id": "cs101", "expiration_at_ms": null,
                "transaction_id": "GPA.3333-4444-5555-66666", "original_transaction_id": "GPA.3333-4444-5555-66666"}),
        );
        post(&app, &bought, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, course).await, "active");
        let snap = app.get("/v1/apps/acme/customers/ada").await.expect(200);
        let relayed = snap["purchases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["product_id"] == "cs101")
            .unwrap()
            .clone();
        assert_eq!(relayed["store"], "play_store");
        assert_eq!(
            relayed["store_transaction_id"],
            "rc:GPA.3333-4444-5555-66666"
        );
        app.clock.advance_millis(DAY);
        let refunded = event(
            "rc-5",
            "CANCELLATION",
            &app,
            json!({"store": "PLAY_STORE", "product_id": "cs101", "cancel_reason": "CUSTOMER_SUPPORT",
                "transaction_id": "GPA.3333-4444-5555-66666", "original_transaction_id": "GPA.3333-4444-5555-66666"}),
        );
        post(&app, &refunded, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, course).await, "refunded");
    }
);

async fn entitlement_of(app: &TestApp, customer: &str, id: &str) -> Value {
    app.entitlement(customer, id).await["status"].clone()
}

both!(
    a_revenuecat_transfer_moves_what_it_relayed_to_the_new_customer,
    |app: TestApp| async move {
        open(&app).await;
        let bought = event(
            "rc-b1",
            "INITIAL_PURCHASE",
            &app,
            json!({"app_user_id": "bob"}),
        );
        post(&app, &bought, Some(AUTH)).await.expect(200);
        assert_eq!(entitlement_of(&app, "bob", "premium").await, "active");

        // Bob logs in on another device as Cleo; RevenueCat moves his purchases to her.
        app.clock.advance_millis(DAY);
        let now = app.clock.now().millis();
        let transfer = json!({"api_version": "1.0", "event": {"id": "rc-t1", "type": "TRANSFER",
            "event_timestamp_ms": now, "store": "APP_STORE", "environment": "PRODUCTION",
            "transferred_from": ["bob"], "transferred_to": ["cleo"], "entitlement_ids": ["premium"]}})
        .to_string();
        let answer = post(&app, &transfer, Some(AUTH)).await.expect(200);
        assert_eq!(answer["status"], "decided", "{answer}");
        assert_eq!(entitlement_of(&app, "cleo", "premium").await, "active");
        assert_eq!(entitlement_of(&app, "bob", "premium").await, Value::Null);
        let again = post(&app, &transfer, Some(AUTH)).await.expect(200);
        assert_eq!(again["status"], "duplicate");

        // Her later renewal event names her and keeps the one purchase.
        let renewed = event(
            "rc-b2",
            "RENEWAL",
            &app,
            json!({"app_user_id": "cleo", "expiration_at_ms": now + 60 * DAY}),
        );
        post(&app, &renewed, Some(AUTH)).await.expect(200);
        let snap = app.get("/v1/apps/acme/customers/cleo").await.expect(200);
        assert_eq!(snap["purchases"].as_array().unwrap().len(), 1, "{snap}");
        assert_eq!(entitlement_of(&app, "cleo", "premium").await, "active");
    }
);

async fn purchase(app: &TestApp, lineage: &str) -> Value {
    let snap = app.get("/v1/apps/acme/customers/ada").await.expect(200);
    snap["purchases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["store_transaction_id"] == lineage)
        .cloned()
        .unwrap_or(Value::Null)
}

both!(
    a_temporary_grant_ends_as_the_store_purchase_that_follows_it_starts,
    |app: TestApp| async move {
        open(&app).await;
        // A yearly plan grants the same entitlement as the monthly one.
        app.put(
            "/v1/apps/acme/products/premium_year",
            json!({"kind": "subscription", "store_skus": {"app_store": "edu.acme.premium.year"},
                "entitlements": [{"id": "premium"}]}),
        )
        .await
        .expect(201);
        let course = "course-v1:Acme+CS101+2026";
        let granted_at = app.clock.now().millis();

        // The App Store cannot be reached: RevenueCat grants the plan and, for another purchase,
        // the course, each for a day.
        let grant = event(
            "rc-g1",
            "TEMPORARY_ENTITLEMENT_GRANT",
            &app,
            json!({"transaction_id": "rc_tmp_1", "original_transaction_id": null,
                "expiration_at_ms": granted_at + DAY}),
        );
        post(&app, &grant, Some(AUTH)).await.expect(200);
        let course_grant = event(
            "rc-g2",
            "TEMPORARY_ENTITLEMENT_GRANT",
            &app,
            json!({"store": "PLAY_STORE", "product_id": "cs101", "transaction_id": "rc_tmp_2",
                "original_transaction_id": null, "expiration_at_ms": granted_at + DAY}),
        );
        post(&app, &course_grant, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, "premium").await, "active");
        assert_eq!(status(&app, course).await, "active");
        assert_eq!(
            purchase(&app, "rc:grant:rc_tmp_1").await["status"],
            "active"
        );

        // An hour later the store's purchase arrives: another transaction id, another product
        // (the learner picked the yearly plan), dated just before the grant.
        app.clock.advance_millis(3_600_000);
        let bought = event(
            "rc-g3",
            "INITIAL_PURCHASE",
            &app,
            json!({"product_id": "edu.acme.premium.year", "transaction_id": "2000000777",
                "original_transaction_id": "2000000777", "purchased_at_ms": granted_at - 120_000,
                "expiration_at_ms": granted_at + 365 * DAY}),
        );
        let answer = post(&app, &bought, Some(AUTH)).await.expect(200);
        assert_eq!(answer["status"], "decided", "{answer}");
        let held = app.entitlement("ada", "premium").await;
        assert_eq!(held["status"], "active");
        assert_eq!(held["product_id"], "premium_year", "{held}");
        assert_eq!(
            purchase(&app, "rc:grant:rc_tmp_1").await["status"],
            "expired"
        );
        assert_eq!(
            purchase(&app, "rc:grant:rc_tmp_2").await["status"],
            "active",
            "a grant of another entitlement runs on"
        );
        let again = post(&app, &bought, Some(AUTH)).await.expect(200);
        assert_eq!(again["status"], "duplicate");

        // The purchase is refunded: access ends now, not when the grant would have run out.
        let refunded = event(
            "rc-g4",
            "CANCELLATION",
            &app,
            json!({"product_id": "edu.acme.premium.year", "cancel_reason": "CUSTOMER_SUPPORT",
                "transaction_id": "2000000777", "original_transaction_id": "2000000777"}),
        );
        post(&app, &refunded, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, "premium").await, "refunded");

        // The course's store purchase never comes: RevenueCat ends that grant by its transaction
        // id, whatever original transaction the event names.
        let ended = event(
            "rc-g5",
            "EXPIRATION",
            &app,
            json!({"store": "PLAY_STORE", "product_id": "cs101", "transaction_id": "rc_tmp_2",
                "original_transaction_id": "GPA.1111-2222-3333-44444",
                "expiration_reason": "UNKNOWN"}),
        );
        post(&app, &ended, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, course).await, "expired");
        assert_eq!(
            purchase(&app, "rc:GPA.1111-2222-3333-44444").await,
            Value::Null
        );
    }
);

both!(
    revenuecat_billing_issues_uncancellations_and_reversed_refunds,
    |app: TestApp| async move {
        open(&app).await;
        let start = app.clock.now().millis();
        let lineage = "rc:2000000900";
        let bought = event(
            "rc-u1",
            "INITIAL_PURCHASE",
            &app,
            json!({"expiration_at_ms": start + 30 * DAY}),
        );
        post(&app, &bought, Some(AUTH)).await.expect(200);
        assert_eq!(purchase(&app, lineage).await["auto_renew"], true);

        // Turned off, then on again.
        app.clock.advance_millis(DAY);
        let off = event(
            "rc-u2",
            "CANCELLATION",
            &app,
            json!({"cancel_reason": "UNSUBSCRIBE"}),
        );
        post(&app, &off, Some(AUTH)).await.expect(200);
        assert_eq!(purchase(&app, lineage).await["auto_renew"], false);
        app.clock.advance_millis(DAY);
        let on = event("rc-u3", "UNCANCELLATION", &app, json!({}));
        post(&app, &on, Some(AUTH)).await.expect(200);
        assert_eq!(purchase(&app, lineage).await["auto_renew"], true);

        // The renewal's payment fails: RevenueCat names a grace period of three days, which keeps
        // access past the period's end.
        app.clock.set(gateway_core::Timestamp::from_millis(
            start + 30 * DAY - 1000,
        ));
        let issue = event(
            "rc-u4",
            "BILLING_ISSUE",
            &app,
            json!({"grace_period_expiration_at_ms": start + 33 * DAY,
                "expiration_at_ms": start + 30 * DAY}),
        );
        post(&app, &issue, Some(AUTH)).await.expect(200);
        app.clock.advance_millis(DAY);
        assert_eq!(status(&app, "premium").await, "grace_period");
        // The card is mended: the renewal runs to the next period's end.
        let renewed = event(
            "rc-u5",
            "RENEWAL",
            &app,
            json!({"transaction_id": "2000000901", "expiration_at_ms": start + 61 * DAY}),
        );
        post(&app, &renewed, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, "premium").await, "active");

        // Support refunds it, and the refund is reversed: access is back.
        app.clock.advance_millis(DAY);
        let refunded = event(
            "rc-u6",
            "CANCELLATION",
            &app,
            json!({"cancel_reason": "CUSTOMER_SUPPORT"}),
        );
        post(&app, &refunded, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, "premium").await, "refunded");
        app.clock.advance_millis(DAY);
        let reversed = event("rc-u7", "REFUND_REVERSED", &app, json!({}));
        post(&app, &reversed, Some(AUTH)).await.expect(200);
        assert_eq!(status(&app, "premium").await, "active");
        let again = post(&app, &reversed, Some(AUTH)).await.expect(200);
        assert_eq!(again["status"], "duplicate");
    }
);
