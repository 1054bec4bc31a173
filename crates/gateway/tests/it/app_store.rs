//! App Store purchases submitted by an app, signed by the simulator exactly as Apple signs them.

use reqwest::Method;
use serde_json::{Value, json};
use store_sim::apple::chain::AppleChain;

use crate::{both, helpers::*};

struct Store {
    chain: AppleChain,
}

impl Store {
    /// An app whose App Store settings pin the simulator's root, with the standard catalog.
    async fn open(app: &TestApp) -> Store {
        app.seed_catalog("acme").await;
        let chain = AppleChain::generate().unwrap();
        app.patch("/v1/apps/acme", json!({"app_store": {"bundle_id": "edu.acme.app", "environment": "Sandbox", "root_certificates_pem": [chain.root_pem()]}})).await.expect(200);
        Store { chain }
    }

    fn transaction(&self, id: &str, sku: &str, purchased: i64, extra: Value) -> String {
        let mut t = json!({
            "transactionId": id, "originalTransactionId": id, "bundleId": "edu.acme.app", "productId": sku,
            "purchaseDate": purchased, "originalPurchaseDate": purchased, "signedDate": purchased,
            "environment": "Sandbox", "inAppOwnershipType": "PURCHASED", "type": "Non-Consumable", "quantity": 1,
            "transactionReason": "PURCHASE", "storefront": "USA", "price": 9990, "currency": "USD"
        });
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        self.chain.sign(&t).unwrap()
    }
}

async fn submit(app: &TestApp, user: &str, jws: &str) -> Answer {
    app.request(
        Method::POST,
        "/v1/apps/acme/purchases",
        Some(ADMIN_KEY),
        Some(json!({"app_user_id": user, "store": "app_store", "signed_transaction": jws})),
        &[],
    )
    .await
}

both!(
    a_verified_purchase_grants_and_a_duplicate_changes_nothing,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let jws = store.transaction("1000", "edu.acme.cs101", t0().millis(), json!({}));
        let first = submit(&app, "learner-1", &jws).await.expect(200);
        assert_eq!(first["status"], "granted");
        assert_eq!(first["finish_transaction"], true);
        assert_eq!(first["purchase"]["store_transaction_id"], "1000");
        assert_eq!(first["purchase"]["environment"], "Sandbox");
        let ent = &first["customer"]["entitlements"][0];
        assert_eq!(
            (
                ent["id"].as_str(),
                ent["status"].as_str(),
                ent["store"].as_str()
            ),
            (
                Some("course-v1:Acme+CS101+2026"),
                Some("active"),
                Some("app_store")
            )
        );
        let counts = app.counts().await;
        let again = submit(&app, "learner-1", &jws).await.expect(200);
        assert_eq!(again["customer"]["version"], first["customer"]["version"]);
        assert_eq!(app.counts().await, counts, "a duplicate writes nothing");
        let outbox = app.outbox("learner-1").await;
        assert_eq!(
            outbox
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
            vec!["entitlement.granted"]
        );
        // One store transaction never gives access to two customers at once.
        submit(&app, "learner-2", &jws)
            .await
            .error(409, "purchase_of_another_customer");
    }
);

both!(
    a_refund_that_arrives_first_still_wins,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let bought = t0().millis();
        let refunded = store.transaction("2000", "edu.acme.cs101", bought, json!({"revocationDate": bought + 3_600_000, "revocationReason": 0, "revocationType": "REFUND_FULL", "signedDate": bought + 3_600_000}));
        let answer = submit(&app, "u1", &refunded).await.expect(200);
        assert_eq!(answer["status"], "rejected");
        assert_eq!(answer["customer"]["entitlements"][0]["status"], "refunded");
        let plain = store.transaction("2000", "edu.acme.cs101", bought, json!({}));
        let answer = submit(&app, "u1", &plain).await.expect(200);
        assert_eq!(
            answer["status"], "rejected",
            "the earlier-signed purchase does not undo the refund"
        );
    }
);

both!(
    consumables_and_renewals_follow_the_signed_data,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let t = t0().millis();
        let coins = store.transaction(
            "3000",
            "edu.acme.coins100",
            t,
            json!({"type": "Consumable", "quantity": 2}),
        );
        assert_eq!(
            submit(&app, "u1", &coins).await.expect(200)["customer"]["balances"]["COINS"],
            200
        );
        let month = 30 * 86_400_000_i64;
        let sub = store.transaction(
            "4000",
            "edu.acme.premium",
            t,
            json!({"type": "Auto-Renewable Subscription", "expiresDate": t + month}),
        );
        let first = submit(&app, "u1", &sub).await.expect(200);
        let premium = |snap: &Value| {
            snap["entitlements"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["id"] == "premium")
                .unwrap()
                .clone()
        };
        assert_eq!(
            premium(&first["customer"])["expires_at"],
            gateway_core::Timestamp::from_millis(t + month).to_rfc3339()
        );
        let renewal = store.transaction("4001", "edu.acme.premium", t + month, json!({"originalTransactionId": "4000", "type": "Auto-Renewable Subscription", "expiresDate": t + 2 * month, "transactionReason": "RENEWAL"}));
        let renewed = submit(&app, "u1", &renewal).await.expect(200);
        assert_eq!(
            premium(&renewed["customer"])["expires_at"],
            gateway_core::Timestamp::from_millis(t + 2 * month).to_rfc3339()
        );
        assert_eq!(
            renewed["customer"]["purchases"].as_array().unwrap().len(),
            2,
            "the renewal joined its lineage"
        );
    }
);

both!(
    what_apple_did_not_sign_is_refused_and_changes_nothing,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let t = t0().millis();
        let good = store.transaction("5000", "edu.acme.cs101", t, json!({}));
        let before = app.counts().await;
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let parts: Vec<&str> = good.split('.').collect();
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["price"] = json!(0);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            parts[2]
        );
        let stranger = AppleChain::generate().unwrap();
        let untrusted = stranger.sign(&json!({"transactionId": "5001", "bundleId": "edu.acme.app", "productId": "edu.acme.cs101", "purchaseDate": t, "signedDate": t, "environment": "Sandbox"})).unwrap();
        let cases = [
            (forged, "invalid_signature"),
            (untrusted, "untrusted_certificate_chain"),
            (
                store.transaction(
                    "5002",
                    "edu.acme.cs101",
                    t,
                    json!({"bundleId": "com.other.app"}),
                ),
                "wrong_app",
            ),
            (
                store.transaction(
                    "5003",
                    "edu.acme.cs101",
                    t,
                    json!({"environment": "Production"}),
                ),
                "wrong_environment",
            ),
            (
                store.transaction("5004", "edu.acme.unknown", t, json!({})),
                "unknown_product",
            ),
            ("garbage.not.jws".to_owned(), "malformed_signed_data"),
        ];
        for (jws, code) in cases {
            submit(&app, "u1", &jws).await.error(422, code);
        }
        // Not even the shape of a JWS: refused by the document's own rule.
        submit(&app, "u1", "garbage")
            .await
            .error(400, "invalid_signed_transaction");
        app.request(
            Method::POST,
            "/v1/apps/acme/purchases",
            Some(ADMIN_KEY),
            Some(json!({"app_user_id": "u1", "store": "app_store"})),
            &[],
        )
        .await
        .error(400, "signed_transaction_required");
        app.request(
            Method::POST,
            "/v1/apps/acme/purchases",
            Some(ADMIN_KEY),
            Some(json!({"app_user_id": "u1", "store": "itunes", "signed_transaction": good})),
            &[],
        )
        .await
        .error(400, "invalid_store");
        assert_eq!(app.counts().await, before);
    }
);

both!(
    an_app_account_token_binds_the_purchase_to_its_customer,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let order = app
            .post(
                "/v1/apps/acme/customers/alice/orders",
                json!({"product_ids": ["cs101"]}),
            )
            .await
            .expect(201);
        let token = order["app_account_token"].as_str().unwrap();
        let jws = store.transaction(
            "6000",
            "edu.acme.cs101",
            t0().millis(),
            json!({"appAccountToken": token}),
        );
        submit(&app, "mallory", &jws)
            .await
            .error(409, "transaction_of_another_customer");
        let pk = app.key("acme", "publishable", &[]).await;
        let answer = app.request(Method::POST, "/v1/apps/acme/purchases", Some(&pk), Some(json!({"app_user_id": "alice", "store": "app_store", "signed_transaction": jws, "order_id": order["order_id"], "product_id": "cs101"})), &[]).await.expect(200);
        assert_eq!(answer["status"], "granted");
    }
);

impl Store {
    fn notify_body(
        &self,
        kind: &str,
        subtype: Option<&str>,
        uuid: &str,
        at: i64,
        signed_transaction: Option<String>,
    ) -> String {
        self.chain
            .notification(&store_sim::apple::chain::Notification {
                notification_type: kind,
                subtype,
                uuid,
                signed_date: at,
                bundle_id: "edu.acme.app",
                environment: "Sandbox",
                signed_transaction,
                ..Default::default()
            })
            .unwrap()
    }
}

async fn notify(app: &TestApp, body: String) -> Answer {
    let res = app
        .client
        .post(format!("{}/v1/apps/acme/notifications/app_store", app.addr))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        body,
        headers,
    }
}

fn entitlement_status(snap: &Value, id: &str) -> String {
    snap["entitlements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .map(|e| e["status"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

both!(
    notifications_refund_reverse_and_are_deduped,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let t = t0().millis();
        let course = "course-v1:Acme+CS101+2026";
        submit(
            &app,
            "u1",
            &store.transaction("7000", "edu.acme.cs101", t, json!({})),
        )
        .await
        .expect(200);
        let refunded_tx = store.transaction(
            "7000",
            "edu.acme.cs101",
            t,
            json!({"revocationDate": t + 1000, "revocationReason": 0, "signedDate": t + 1000}),
        );
        let refund = store.notify_body("REFUND", None, "n-refund", t + 1000, Some(refunded_tx));
        assert_eq!(
            notify(&app, refund.clone()).await.expect(200)["status"],
            "decided"
        );
        assert_eq!(
            entitlement_status(
                &app.get("/v1/apps/acme/customers/u1").await.expect(200),
                course
            ),
            "refunded"
        );
        let counts = app.counts().await;
        assert_eq!(
            notify(&app, refund).await.expect(200)["status"],
            "duplicate"
        );
        assert_eq!(app.counts().await, counts, "Apple's retry changes nothing");
        let reversed_tx =
            store.transaction("7000", "edu.acme.cs101", t, json!({"signedDate": t + 2000}));
        notify(
            &app,
            store.notify_body(
                "REFUND_REVERSED",
                None,
                "n-reversed",
                t + 2000,
                Some(reversed_tx),
            ),
        )
        .await
        .expect(200);
        assert_eq!(
            entitlement_status(
                &app.get("/v1/apps/acme/customers/u1").await.expect(200),
                course
            ),
            "active"
        );
        let types: Vec<String> = app.outbox_types("u1").await;
        assert_eq!(
            types,
            vec![
                "entitlement.granted",
                "purchase.refunded",
                "entitlement.revoked",
                "entitlement.granted"
            ]
        );
    }
);

both!(
    a_notification_the_database_cannot_keep_is_a_5xx_and_apples_retry_is_taken_once,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let t = t0().millis();
        let token = crate::sim::order(&app, "u1", "cs101").await;
        let body = store.notify_body(
            "ONE_TIME_CHARGE",
            None,
            "n-fault",
            t,
            Some(store.transaction(
                "8100",
                "edu.acme.cs101",
                t,
                json!({ "appAccountToken": token }),
            )),
        );
        // The database refuses every write of an input, as a full disk or a failed primary would.
        let (arm, disarm) = match app.backend {
            Backend::Sqlite => (
                "CREATE TRIGGER forced_fault BEFORE INSERT ON inbound BEGIN SELECT RAISE(ABORT, 'forced fault'); END",
                "DROP TRIGGER forced_fault",
            ),
            Backend::Postgres => (
                "CREATE RULE forced_fault AS ON INSERT TO inbound DO INSTEAD SELECT 1 / 0",
                "DROP RULE forced_fault ON inbound",
            ),
        };
        sqlx::query(arm).execute(app.db.writer()).await.unwrap();
        let refused = notify(&app, body.clone()).await;
        assert!(
            refused.status.is_server_error(),
            "Apple retries a 5xx, not a 4xx: {} {}",
            refused.status,
            refused.body
        );
        assert_eq!(app.count("inbound").await, 0, "nothing kept");
        assert_eq!(app.count("entitlements").await, 0);
        sqlx::query(disarm).execute(app.db.writer()).await.unwrap();
        // Apple's retry is taken, once.
        assert_eq!(
            notify(&app, body.clone()).await.expect(200)["status"],
            "decided"
        );
        assert_eq!(notify(&app, body).await.expect(200)["status"], "duplicate");
        assert_eq!(app.count("inbound").await, 1);
        assert_eq!(
            app.entitlement("u1", "course-v1:Acme+CS101+2026").await["status"],
            "active"
        );
    }
);

both!(
    a_commitment_plans_billing_is_kept_and_shown_in_the_timeline,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let t = t0().millis();
        let month = 30 * 86_400_000_i64;
        let token = crate::sim::order(&app, "u1", "premium").await;
        let tx = store.transaction(
            "8200",
            "edu.acme.premium",
            t,
            json!({"appAccountToken": token, "type": "Auto-Renewable Subscription",
                "expiresDate": t + month, "billingPlanType": "MONTHLY",
                "commitmentInfo": {"billingPeriodNumber": 1, "totalBillingPeriods": 12,
                    "commitmentExpiresDate": t + 12 * month, "commitmentPrice": 119_880}}),
        );
        let body = store.notify_body("SUBSCRIBED", Some("INITIAL_BUY"), "n-plan", t, Some(tx));
        assert_eq!(notify(&app, body).await.expect(200)["status"], "decided");
        assert_eq!(app.entitlement("u1", "premium").await["status"], "active");
        let timeline = app
            .get("/v1/apps/acme/customers/u1/timeline")
            .await
            .expect(200);
        let cause = timeline["events"][0]["cause"].as_str().unwrap();
        assert!(cause.contains("(MONTHLY plan, period 1 of 12)"), "{cause}");
        // The raw notification, commitment included, is kept as it came.
        let raw: String = sqlx::query_scalar("SELECT raw FROM inbound")
            .fetch_one(app.db.reader())
            .await
            .unwrap();
        let payload = |jws: &str| -> Value {
            use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
            let part = jws.split('.').nth(1).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        };
        let envelope: Value = serde_json::from_str(&raw).unwrap();
        let notification = payload(envelope["signedPayload"].as_str().unwrap());
        let kept = payload(
            notification["data"]["signedTransactionInfo"]
                .as_str()
                .unwrap(),
        );
        assert_eq!(kept["billingPlanType"], "MONTHLY");
        assert_eq!(kept["commitmentInfo"]["totalBillingPeriods"], 12);
    }
);

both!(
    a_refund_notification_before_its_purchase_still_wins,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let t = t0().millis();
        let refunded_tx = store.transaction(
            "8000",
            "edu.acme.cs101",
            t,
            json!({"revocationDate": t + 5000, "revocationReason": 1, "signedDate": t + 5000}),
        );
        assert_eq!(
            notify(
                &app,
                store.notify_body("REFUND", None, "n-early", t + 5000, Some(refunded_tx))
            )
            .await
            .expect(200)["status"],
            "held"
        );
        let answer = submit(
            &app,
            "u1",
            &store.transaction("8000", "edu.acme.cs101", t, json!({})),
        )
        .await
        .expect(200);
        assert_eq!(answer["status"], "rejected");
        assert_eq!(
            entitlement_status(&answer["customer"], "course-v1:Acme+CS101+2026"),
            "refunded"
        );
        let orphans: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orphan_events")
            .fetch_one(app.db.reader())
            .await
            .unwrap();
        assert_eq!(orphans, 0, "the held facts joined their purchase");
    }
);

both!(
    subscription_notifications_renew_and_expire,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let t = t0().millis();
        let month = 30 * 86_400_000_i64;
        let order = app
            .post(
                "/v1/apps/acme/customers/u1/orders",
                json!({"product_ids": ["premium"]}),
            )
            .await
            .expect(201);
        let token = order["app_account_token"].as_str().unwrap().to_owned();
        let sub = |id: &str, from: i64, to: i64, reason: &str| {
            store.transaction(id, "edu.acme.premium", from, json!({"originalTransactionId": "9000", "type": "Auto-Renewable Subscription", "expiresDate": to, "transactionReason": reason, "appAccountToken": token}))
        };
        // The purchase reaches the gateway by notification alone: the order's token names the customer.
        assert_eq!(
            notify(
                &app,
                store.notify_body(
                    "SUBSCRIBED",
                    Some("INITIAL_BUY"),
                    "s1",
                    t,
                    Some(sub("9000", t, t + month, "PURCHASE"))
                )
            )
            .await
            .expect(200)["status"],
            "decided"
        );
        assert_eq!(
            entitlement_status(
                &app.get("/v1/apps/acme/customers/u1").await.expect(200),
                "premium"
            ),
            "active"
        );
        notify(
            &app,
            store.notify_body(
                "DID_RENEW",
                None,
                "s2",
                t + month,
                Some(sub("9001", t + month, t + 2 * month, "RENEWAL")),
            ),
        )
        .await
        .expect(200);
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        let premium = snap["entitlements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == "premium")
            .unwrap()
            .clone();
        assert_eq!(
            premium["expires_at"],
            gateway_core::Timestamp::from_millis(t + 2 * month).to_rfc3339()
        );
        // Apple extends the period by a week (a service outage, say): same transaction, later date.
        let week = 7 * 86_400_000_i64;
        notify(
            &app,
            store.notify_body(
                "RENEWAL_EXTENDED",
                None,
                "s2x",
                t + month + 500,
                Some(sub("9001", t + month, t + 2 * month + week, "RENEWAL")),
            ),
        )
        .await
        .expect(200);
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        let extended = snap["entitlements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == "premium")
            .unwrap()["expires_at"]
            .clone();
        assert_eq!(
            extended,
            gateway_core::Timestamp::from_millis(t + 2 * month + week).to_rfc3339()
        );
        notify(
            &app,
            store.notify_body(
                "EXPIRED",
                Some("VOLUNTARY"),
                "s3",
                t + month + 1000,
                Some(sub("9001", t + month, t + 2 * month, "RENEWAL")),
            ),
        )
        .await
        .expect(200);
        assert_eq!(
            entitlement_status(
                &app.get("/v1/apps/acme/customers/u1").await.expect(200),
                "premium"
            ),
            "expired"
        );
    }
);

both!(
    test_notifications_are_recorded_and_forgeries_refused,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let t = t0().millis();
        assert_eq!(
            notify(&app, store.notify_body("TEST", None, "t1", t, None))
                .await
                .expect(200)["status"],
            "recorded"
        );
        let before = app.counts().await;
        let stranger = AppleChain::generate().unwrap();
        let forged = stranger
            .notification(&store_sim::apple::chain::Notification {
                notification_type: "TEST",
                uuid: "t2",
                signed_date: t,
                bundle_id: "edu.acme.app",
                environment: "Sandbox",
                ..Default::default()
            })
            .unwrap();
        notify(&app, forged)
            .await
            .error(422, "untrusted_certificate_chain");
        notify(&app, "{\"nope\": 1}".into())
            .await
            .error(400, "malformed_notification");
        let other_bundle = store
            .chain
            .notification(&store_sim::apple::chain::Notification {
                notification_type: "TEST",
                uuid: "t3",
                signed_date: t,
                bundle_id: "com.other",
                environment: "Sandbox",
                ..Default::default()
            })
            .unwrap();
        notify(&app, other_bundle).await.error(422, "wrong_app");
        assert_eq!(
            app.counts().await,
            before,
            "refused notifications are not stored"
        );
    }
);

both!(
    a_transaction_id_is_looked_up_with_the_app_store_server_api,
    |app: TestApp| async move {
        let WithApi { chain, server, .. } = WithApi::open(&app).await;
        let t = t0().millis();
        for id in ["11000", "11001"] {
            server.put_transaction(json!({"transactionId": id, "originalTransactionId": id, "bundleId": "edu.acme.app", "productId": "edu.acme.cs101",
            "purchaseDate": t, "signedDate": t, "environment": "Sandbox", "type": "Non-Consumable", "inAppOwnershipType": "PURCHASED"}));
        }
        let by_id = |user: &'static str, id: &'static str| {
            let app = &app;
            async move {
                app.request(
                    Method::POST,
                    "/v1/apps/acme/purchases",
                    Some(ADMIN_KEY),
                    Some(json!({"app_user_id": user, "store": "app_store", "transaction_id": id})),
                    &[],
                )
                .await
            }
        };
        assert_eq!(by_id("u1", "11000").await.expect(200)["status"], "granted");
        // Throttled, then failing, then answering: the gateway waits as told and retries.
        server.fail_next(vec![(429, Some("1".into())), (500, None)]);
        let calls = server.calls();
        assert_eq!(by_id("u2", "11001").await.expect(200)["status"], "granted");
        assert_eq!(server.calls() - calls, 3);
        by_id("u3", "99999")
            .await
            .error(404, "transaction_not_found");
        by_id("u3", "12;DROP")
            .await
            .error(400, "invalid_transaction_id");
        server.fail_next(vec![(500, None), (500, None), (500, None), (500, None)]);
        by_id("u3", "11001").await.error(503, "store_unavailable");
        // Credentials Apple does not know.
        let stranger = store_sim::apple::api::ApiKey::generate(
            "69a6de70-03db-47e3-e053-5b8c7c11a4d1",
            "2X9R4HXF34",
        )
        .unwrap();
        app.patch("/v1/apps/acme", json!({"app_store": {"bundle_id": "edu.acme.app", "environment": "Sandbox", "root_certificates_pem": [chain.root_pem()],
        "api_base_url": format!("{}", server_url(&app).await), "issuer_id": stranger.issuer_id, "key_id": stranger.key_id, "private_key_pem": stranger.private_key_pem}})).await.expect(200);
        by_id("u4", "11000")
            .await
            .error(409, "store_not_configured");
    }
);

/// The App Store API URL an app is configured with.
async fn server_url(app: &TestApp) -> String {
    let a = app.get("/v1/apps/acme").await.expect(200);
    a["app_store"]["api_base_url"].as_str().unwrap().to_owned()
}

both!(
    legacy_receipts_are_verified_with_apple,
    |app: TestApp| async move {
        use std::sync::Arc;

        use store_sim::apple::api::ApiKey;
        app.seed_catalog("acme").await;
        let chain = Arc::new(AppleChain::generate().unwrap());
        let (server, url) = serve_api(chain.clone(), ApiKey::generate("i", "k").unwrap()).await;
        server.set_shared_secret("apple-shared-secret-value");
        let settings = |secret: &str| {
            json!({"app_store": {"bundle_id": "edu.acme.app", "environment": "Sandbox", "shared_secret": secret,
        "verify_receipt_url": format!("{url}/verifyReceipt"), "verify_receipt_sandbox_url": format!("{url}/sandbox/verifyReceipt")}})
        };
        app.patch("/v1/apps/acme", settings("apple-shared-secret-value"))
            .await
            .expect(200);
        let t = t0().millis().to_string();
        let row = |id: &str, sku: &str, extra: Value| {
            let mut r = json!({"product_id": sku, "transaction_id": id, "original_transaction_id": id, "purchase_date_ms": t, "original_purchase_date_ms": t, "quantity": "1", "in_app_ownership_type": "PURCHASED"});
            for (k, v) in extra.as_object().unwrap() {
                r[k] = v.clone();
            }
            r
        };
        server.put_receipt(
            "MIIrec1",
            "Sandbox",
            "edu.acme.app",
            vec![
                row("12000", "edu.acme.cs101", json!({})),
                row("12001", "edu.old.thing", json!({})),
            ],
        );
        server.put_receipt("MIIrec2", "Sandbox", "edu.acme.app", vec![row("12100", "edu.acme.pass", json!({"cancellation_date_ms": (t0().millis() + 1000).to_string(), "cancellation_reason": "0"}))]);
        server.put_receipt(
            "MIIother",
            "Sandbox",
            "com.other.app",
            vec![row("12200", "edu.acme.cs101", json!({}))],
        );
        let send = |user: &'static str, receipt: &'static str| {
            let app = &app;
            async move {
                app.request(
                    Method::POST,
                    "/v1/apps/acme/purchases",
                    Some(ADMIN_KEY),
                    Some(
                        json!({"app_user_id": user, "store": "app_store", "receipt_data": receipt}),
                    ),
                    &[],
                )
                .await
            }
        };
        let calls = server.calls();
        let answer = send("u1", "MIIrec1").await.expect(200);
        assert_eq!(answer["status"], "granted");
        assert_eq!(answer["purchase"]["store_transaction_id"], "12000");
        assert_eq!(
            server.calls() - calls,
            2,
            "production first, then the sandbox on 21007"
        );
        send("u1", "MIIunknown")
            .await
            .error(422, "receipt_not_authentic");
        send("u1", "MIIother").await.error(422, "wrong_app");
        app.put("/v1/apps/acme/products/pass30", json!({"kind": "non_renewing", "store_skus": {"app_store": "edu.acme.pass"}, "access_duration": "P30D", "entitlements": [{"id": "pass"}]})).await.expect(200);
        let refunded = send("u2", "MIIrec2").await.expect(200);
        assert_eq!(refunded["status"], "rejected");
        app.patch("/v1/apps/acme", settings("a-wrong-secret"))
            .await
            .expect(200);
        send("u3", "MIIrec1")
            .await
            .error(409, "store_not_configured");
    }
);

/// An app whose App Store settings point at a running simulated App Store Server API, with the
/// standard catalog.
struct WithApi {
    chain: std::sync::Arc<AppleChain>,
    key: store_sim::apple::api::ApiKey,
    server: std::sync::Arc<store_sim::apple::api::AppStoreServer>,
    url: String,
}

impl WithApi {
    async fn open(app: &TestApp) -> WithApi {
        app.seed_catalog("acme").await;
        let chain = std::sync::Arc::new(AppleChain::generate().unwrap());
        let key = store_sim::apple::api::ApiKey::generate(
            "69a6de70-03db-47e3-e053-5b8c7c11a4d1",
            "2X9R4HXF34",
        )
        .unwrap();
        let (server, url) = serve_api(chain.clone(), key.clone()).await;
        let api = WithApi {
            chain,
            key,
            server,
            url,
        };
        app.patch("/v1/apps/acme", api.settings(json!({})))
            .await
            .expect(200);
        api
    }

    /// The app's App Store settings, with `extra` fields added.
    fn settings(&self, extra: Value) -> Value {
        let mut s = json!({
            "bundle_id": "edu.acme.app", "environment": "Sandbox", "root_certificates_pem": [self.chain.root_pem()],
            "api_base_url": self.url, "issuer_id": self.key.issuer_id, "key_id": self.key.key_id,
            "private_key_pem": self.key.private_key_pem
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            s[k] = v.clone();
        }
        json!({ "app_store": s })
    }
}

/// Starts the simulator's App Store Server API (and verifyReceipt) on loopback; returns it and its URL.
async fn serve_api(
    chain: std::sync::Arc<AppleChain>,
    key: store_sim::apple::api::ApiKey,
) -> (
    std::sync::Arc<store_sim::apple::api::AppStoreServer>,
    String,
) {
    let server = store_sim::apple::api::AppStoreServer::new(chain, key, "edu.acme.app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (server, url)
}

both!(
    a_restore_moves_a_purchase_by_the_transfer_policy,
    |app: TestApp| async move {
        let store = Store::open(&app).await;
        let t = t0().millis();
        let course = store.transaction("13000", "edu.acme.cs101", t, json!({}));
        let coins = store.transaction(
            "13001",
            "edu.acme.coins100",
            t,
            json!({"type": "Consumable"}),
        );
        submit(&app, "old-device", &course).await.expect(200);
        submit(&app, "old-device", &coins).await.expect(200);
        let restore = |user: &'static str, jws: Vec<String>| {
            let app = &app;
            async move {
                app.request(
                    Method::POST,
                    &format!("/v1/apps/acme/customers/{user}/restore"),
                    Some(ADMIN_KEY),
                    Some(json!({"store": "app_store", "signed_transactions": jws})),
                    &[],
                )
                .await
            }
        };
        let snap = restore("new-account", vec![course.clone(), coins.clone()])
            .await
            .expect(200);
        assert_eq!(
            entitlement_status(&snap, "course-v1:Acme+CS101+2026"),
            "active"
        );
        assert_eq!(snap["balances"]["COINS"], 100);
        let old = app
            .get("/v1/apps/acme/customers/old-device")
            .await
            .expect(200);
        assert_eq!(
            old["purchases"].as_array().unwrap().len(),
            0,
            "never two customers at once"
        );
        assert_eq!(
            old["balances"]["COINS"], 0,
            "the credit moved with the purchase"
        );
        assert_eq!(
            app.outbox_types("old-device").await,
            vec![
                "entitlement.granted",
                "balance.changed",
                "entitlement.revoked",
                "balance.changed"
            ]
        );
        // Restoring again changes nothing.
        let again = restore("new-account", vec![course.clone()])
            .await
            .expect(200);
        assert_eq!(again["version"], snap["version"]);

        app.patch("/v1/apps/acme", json!({"transfer_policy": "keep"}))
            .await
            .expect(200);
        let kept = restore("third", vec![course]).await.expect(200);
        assert_eq!(kept["entitlements"].as_array().unwrap().len(), 0);
        assert_eq!(
            entitlement_status(
                &app.get("/v1/apps/acme/customers/new-account")
                    .await
                    .expect(200),
                "course-v1:Acme+CS101+2026"
            ),
            "active"
        );
        restore("third", vec![])
            .await
            .error(400, "nothing_to_restore");
        restore("third", vec!["garbage.not.jws".into()])
            .await
            .error(422, "malformed_signed_data");
        restore("third", vec!["garbage".into()])
            .await
            .error(400, "invalid_signed_transaction");
    }
);

both!(
    a_subscriptions_consumption_request_is_answered_without_a_share,
    |app: TestApp| async move {
        use store_sim::apple::chain::Notification;
        let api = WithApi::open(&app).await;
        let (chain, server) = (api.chain.clone(), api.server.clone());
        app.patch(
            "/v1/apps/acme",
            api.settings(json!({ "answer_consumption_requests": true })),
        )
        .await
        .expect(200);
        let t = t0().millis();
        let tx = json!({"transactionId": "32000", "originalTransactionId": "32000", "bundleId": "edu.acme.app",
            "productId": "edu.acme.premium", "purchaseDate": t, "expiresDate": t + 30 * 86_400_000_i64,
            "signedDate": t, "environment": "Sandbox", "type": "Auto-Renewable Subscription",
            "inAppOwnershipType": "PURCHASED", "quantity": 1});
        server.put_transaction(tx.clone());
        let jws = chain.sign(&tx).unwrap();
        assert_eq!(
            submit(&app, "u1", &jws).await.expect(200)["status"],
            "granted"
        );
        let request = chain
            .notification(&Notification {
                notification_type: "CONSUMPTION_REQUEST",
                uuid: "c0000000-0000-4000-8000-000000000009",
                signed_date: t + 1000,
                bundle_id: "edu.acme.app",
                environment: "Sandbox",
                signed_transaction: Some(jws.clone()),
                ..Default::default()
            })
            .unwrap();
        notify(&app, request).await.expect(200);
        // The simulator refuses a share for a subscription, as Apple does: only a rule-abiding
        // answer is taken.
        let mut sent = Vec::new();
        for _ in 0..50 {
            sent = server.consumption_requests();
            if !sent.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(sent.len(), 1, "the answer was taken");
        assert_eq!(sent[0].body["deliveryStatus"], "DELIVERED");
        assert!(
            sent[0].body.get("consumptionPercentage").is_none(),
            "{}",
            sent[0].body
        );
    }
);

both!(
    a_consumption_request_is_kept_and_answered_from_the_ledger,
    |app: TestApp| async move {
        use store_sim::apple::chain::Notification;
        let api = WithApi::open(&app).await;
        let (chain, server) = (api.chain.clone(), api.server.clone());
        let settings =
            |answer: bool| api.settings(json!({ "answer_consumption_requests": answer }));
        app.patch("/v1/apps/acme", settings(false))
            .await
            .expect(200);
        let t = t0().millis();
        let tx = json!({"transactionId": "31000", "originalTransactionId": "31000", "bundleId": "edu.acme.app",
            "productId": "edu.acme.coins100", "purchaseDate": t, "signedDate": t, "environment": "Sandbox",
            "type": "Consumable", "inAppOwnershipType": "PURCHASED", "quantity": 1});
        server.put_transaction(tx.clone());
        let jws = chain.sign(&tx).unwrap();
        assert_eq!(
            submit(&app, "u1", &jws).await.expect(200)["status"],
            "granted"
        );
        // Spend 75 of the 100 coins.
        app.request(
            Method::POST,
            "/v1/apps/acme/customers/u1/balances/COINS/spend",
            Some(ADMIN_KEY),
            Some(json!({"amount": 75, "reason": "a hint"})),
            &[("idempotency-key", "s1")],
        )
        .await
        .expect(200);

        let request = |uuid: &str| {
            chain
                .notification(&Notification {
                    notification_type: "CONSUMPTION_REQUEST",
                    uuid,
                    signed_date: t + 1000,
                    bundle_id: "edu.acme.app",
                    environment: "Sandbox",
                    signed_transaction: Some(jws.clone()),
                    ..Default::default()
                })
                .unwrap()
        };
        // Nothing new for the purchase, but the request itself is kept and is a line of the
        // customer's timeline; with the setting off it is not answered.
        let inbound = app.count("inbound").await;
        let first = notify(&app, request("c0000000-0000-4000-8000-000000000001")).await;
        assert_eq!(first.expect(200)["status"], "decided");
        let timeline = app
            .get("/v1/apps/acme/customers/u1/timeline")
            .await
            .expect(200);
        assert_eq!(
            timeline["events"][0]["detail"]["facts"][0]["remark"],
            "CONSUMPTION_REQUEST"
        );
        assert_eq!(app.count("inbound").await, inbound + 1);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(server.consumption_requests().is_empty());

        app.patch("/v1/apps/acme", settings(true)).await.expect(200);
        let second = notify(&app, request("c0000000-0000-4000-8000-000000000002")).await;
        assert_eq!(second.expect(200)["status"], "decided");
        let mut sent = Vec::new();
        for _ in 0..50 {
            sent = server.consumption_requests();
            if !sent.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(sent.len(), 1, "one answer to one request");
        assert_eq!(sent[0].version, 2);
        assert_eq!(sent[0].transaction_id, "31000");
        assert_eq!(sent[0].body["customerConsented"], true);
        assert_eq!(sent[0].body["deliveryStatus"], "DELIVERED");
        assert_eq!(
            sent[0].body["consumptionPercentage"], 75_000,
            "{}",
            sent[0].body
        );
        // Apple's retry of the same request is a duplicate and is not answered twice.
        let again = notify(&app, request("c0000000-0000-4000-8000-000000000002")).await;
        assert_eq!(again.expect(200)["status"], "duplicate");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(server.consumption_requests().len(), 1);

        // The answer is an owed action, delivered by the delivery worker: shown among the
        // deliveries, not among the endpoints.
        let actions = app
            .get("/v1/apps/acme/deliveries?status=delivered")
            .await
            .expect(200)["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["event_type"] == "store.app_store.consumption")
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!(actions[0]["attempts"], 1);
        let endpoints = app.get("/v1/apps/acme/webhook_endpoints").await.expect(200);
        assert_eq!(endpoints["endpoints"], json!([]));

        // Apple refuses an answer once: it stays owed, and the retry sends it.
        server.fail_next(vec![(
            400,
            Some(
                r#"{"errorCode": 4000000, "errorMessage": "An error that causes a bad request."}"#
                    .into(),
            ),
        )]);
        let third = notify(&app, request("c0000000-0000-4000-8000-000000000003")).await;
        assert_eq!(third.expect(200)["status"], "decided");
        let (owed, _) = app.failed_delivery().await;
        assert!(
            owed["last_error"]
                .as_str()
                .unwrap()
                .contains("Apple did not take")
        );
        app.clock.advance_millis(10_000);
        for _ in 0..100 {
            if server.consumption_requests().len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(server.consumption_requests().len(), 2, "sent on the retry");

        // The owed answer is written with the notification or not at all: when it cannot be written,
        // nothing of the notification is kept and Apple hears a 5xx (and sends it again).
        let refuse: &[&str] = match app.backend {
            Backend::Sqlite => &["CREATE TRIGGER refuse_actions BEFORE INSERT ON outbox \
                 WHEN NEW.event_type LIKE 'store.%' BEGIN SELECT RAISE(ABORT, 'refused'); END"],
            Backend::Postgres => &[
                "CREATE FUNCTION refuse_actions() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
                "CREATE TRIGGER refuse_actions BEFORE INSERT ON outbox FOR EACH ROW \
                 WHEN (NEW.event_type LIKE 'store.%') EXECUTE FUNCTION refuse_actions()",
            ],
        };
        for sql in refuse {
            sqlx::query(sqlx::AssertSqlSafe(*sql))
                .execute(app.db.writer())
                .await
                .unwrap();
        }
        let inbound = app.count("inbound").await;
        let fourth = notify(&app, request("c0000000-0000-4000-8000-000000000004")).await;
        assert!(fourth.status.is_server_error(), "{:?}", fourth.body);
        assert_eq!(
            app.count("inbound").await,
            inbound,
            "the notification is not kept without the answer it owes"
        );
        let allow = match app.backend {
            Backend::Sqlite => "DROP TRIGGER refuse_actions",
            Backend::Postgres => "DROP TRIGGER refuse_actions ON outbox",
        };
        sqlx::query(allow).execute(app.db.writer()).await.unwrap();
        let retried = notify(&app, request("c0000000-0000-4000-8000-000000000004")).await;
        assert_eq!(retried.expect(200)["status"], "decided");
        assert_eq!(app.count("inbound").await, inbound + 1);
        for _ in 0..100 {
            if server.consumption_requests().len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(server.consumption_requests().len(), 3);
    }
);

both!(
    missed_notifications_are_recovered_from_apples_history,
    |app: TestApp| async move {
        use store_sim::apple::chain::Notification;
        let api = WithApi::open(&app).await;
        let (chain, server) = (api.chain.clone(), api.server.clone());
        let t = t0().millis() - 60_000;
        // Two purchases whose notifications Apple sent while the gateway was down: only its history
        // has them.
        let mut missed = Vec::new();
        for (user, id) in [("u1", "41000"), ("u2", "41001")] {
            let order = app
                .post(
                    &format!("/v1/apps/acme/customers/{user}/orders"),
                    json!({"product_ids": ["cs101"]}),
                )
                .await
                .expect(201);
            let tx = json!({"transactionId": id, "originalTransactionId": id, "bundleId": "edu.acme.app",
                "productId": "edu.acme.cs101", "purchaseDate": t, "signedDate": t, "environment": "Sandbox",
                "type": "Non-Consumable", "inAppOwnershipType": "PURCHASED", "quantity": 1,
                "appAccountToken": order["app_account_token"]});
            let body = chain
                .notification(&Notification {
                    notification_type: "ONE_TIME_CHARGE",
                    uuid: &format!("d0000000-0000-4000-8000-00000000000{}", missed.len()),
                    signed_date: t,
                    bundle_id: "edu.acme.app",
                    environment: "Sandbox",
                    signed_transaction: Some(chain.sign(&tx).unwrap()),
                    ..Default::default()
                })
                .unwrap();
            let jws: Value = serde_json::from_str(&body).unwrap();
            missed.push(jws["signedPayload"].as_str().unwrap().to_owned());
        }
        server.record_notification(&missed[0]).unwrap();
        let window =
            json!({"start": gateway_core::Timestamp::from_millis(t - 3_600_000), "end": t0()});
        let first = app
            .post(
                "/v1/apps/acme/notifications/app_store/recover",
                window.clone(),
            )
            .await
            .expect(200);
        assert_eq!(
            (first["seen"].as_i64(), first["recovered"].as_i64()),
            (Some(1), Some(1)),
            "{first}"
        );
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(
            entitlement_status(&snap, "course-v1:Acme+CS101+2026"),
            "active"
        );
        // Read again: nothing new.
        let again = app
            .post("/v1/apps/acme/notifications/app_store/recover", window)
            .await
            .expect(200);
        assert_eq!(
            (again["recovered"].as_i64(), again["duplicates"].as_i64()),
            (Some(0), Some(1))
        );

        // The job does the same from its cursor (a day back the first time), then moves it.
        server.record_notification(&missed[1]).unwrap();
        let clock: std::sync::Arc<dyn gateway_core::Clock> = std::sync::Arc::new(app.clock.clone());
        let outcome = gateway::jobs::recovery::step(&app.cx, &clock).await;
        assert_eq!(outcome, gateway::jobs::Outcome::Partial(1));
        let snap = app.get("/v1/apps/acme/customers/u2").await.expect(200);
        assert_eq!(
            entitlement_status(&snap, "course-v1:Acme+CS101+2026"),
            "active"
        );
        let acme: gateway_core::AppId = "acme".parse().unwrap();
        assert_eq!(
            gateway::db::cursors::get(&app.db, &acme, gateway::stores::apple::NAMES.cursor)
                .await
                .unwrap(),
            Some(t0())
        );
        // Without API credentials there is nothing to read: a clear refusal.
        app.patch("/v1/apps/acme", json!({"app_store": {"bundle_id": "edu.acme.app", "environment": "Sandbox", "root_certificates_pem": [chain.root_pem()]}}))
            .await
            .expect(200);
        app.post(
            "/v1/apps/acme/notifications/app_store/recover",
            json!({"start": t0()}),
        )
        .await
        .error(409, "store_not_configured");
    }
);

both!(
    a_long_history_is_read_page_by_page_resumed_after_a_failure_and_leased,
    |app: TestApp| async move {
        use gateway::{
            db::cursors,
            jobs::{Outcome, recovery::step},
            stores::apple::NAMES,
        };
        use store_sim::apple::chain::Notification;
        let api = WithApi::open(&app).await;
        let (chain, server) = (api.chain.clone(), api.server.clone());
        // A second app whose API key Apple refuses: it fails alone.
        app.create_app("beta").await;
        let mut beta = api.settings(json!({}));
        beta["app_store"]["key_id"] = json!("WRONGKEY01");
        app.patch("/v1/apps/beta", beta).await.expect(200);

        // 5,000 notifications in one window: purchases the gateway has not seen (kept until their
        // customers submit them).
        let n = 5_000;
        let t = t0().millis() - 3_600_000;
        for i in 0..n {
            let id = format!("{}", 700_000 + i);
            let tx = json!({"transactionId": id, "originalTransactionId": id, "bundleId": "edu.acme.app",
                "productId": "edu.acme.cs101", "purchaseDate": t, "signedDate": t, "environment": "Sandbox",
                "type": "Non-Consumable", "inAppOwnershipType": "PURCHASED", "quantity": 1});
            let body = chain
                .notification(&Notification {
                    notification_type: "ONE_TIME_CHARGE",
                    uuid: &format!("e1000000-0000-4000-8000-{i:012}"),
                    signed_date: t + i,
                    bundle_id: "edu.acme.app",
                    environment: "Sandbox",
                    signed_transaction: Some(chain.sign(&tx).unwrap()),
                    ..Default::default()
                })
                .unwrap();
            let payload: Value = serde_json::from_str(&body).unwrap();
            server
                .record_notification(payload["signedPayload"].as_str().unwrap())
                .unwrap();
        }
        let clock: std::sync::Arc<dyn gateway_core::Clock> = std::sync::Arc::new(app.clock.clone());
        let acme: gateway_core::AppId = "acme".parse().unwrap();
        let inbound = app.count("inbound").await;

        // Apple fails once a hundred pages were read: the pages taken stay taken, and the run keeps
        // its place.
        let calls = server.calls();
        server.fail_after(100, vec![(401, None)]);
        assert_eq!(step(&app.cx, &clock).await, Outcome::Partial(0));
        let taken = app.count("inbound").await - inbound;
        assert!(
            taken == 100 * 20,
            "the pages read before the failure were kept: {taken}"
        );
        assert_eq!(
            cursors::get(&app.db, &acme, NAMES.cursor).await.unwrap(),
            None,
            "the cursor moves when the window is done"
        );
        let first_calls = server.calls() - calls;

        // Backing off: the next tick leaves the app alone; once the back-off is over, the run goes
        // on from the page it stopped at.
        let before = server.calls();
        assert_eq!(step(&app.cx, &clock).await, Outcome::Partial(0));
        assert_eq!(
            server.calls(),
            before,
            "both apps back off: neither is asked"
        );
        app.clock.advance_millis(5 * 60_000);
        let resumed = server.calls();
        let outcome = step(&app.cx, &clock).await;
        assert_eq!(outcome, Outcome::Partial(n as usize - taken as usize));
        assert_eq!(app.count("inbound").await - inbound, n);
        assert!(
            first_calls + (server.calls() - resumed) <= 250 + 4,
            "no page was read twice but the one that failed"
        );
        assert_eq!(app.count("orphan_events").await, n);
        assert_eq!(
            cursors::get(&app.db, &acme, NAMES.cursor).await.unwrap(),
            Some(t0()),
            "the cursor is at the end of the window the run began with"
        );

        // Not due again before the interval; and while another instance holds the run, this one
        // leaves it alone.
        let before = server.calls();
        step(&app.cx, &clock).await;
        assert!(server.calls() <= before + 1, "acme was not read again");
        app.clock
            .advance_millis(gateway::service::recovery::INTERVAL_MS);
        let now = gateway_core::Clock::now(&app.clock);
        let held = cursors::claim_run(
            &app.db,
            (&acme, NAMES.cursor),
            "another-instance",
            now,
            now.plus_millis(60_000),
        )
        .await
        .unwrap();
        assert!(held.is_some());
        let before = server.calls();
        step(&app.cx, &clock).await;
        assert!(server.calls() <= before + 1, "acme is leased elsewhere");
    }
);

both!(
    a_notification_for_an_unmapped_sku_is_decided_once_the_catalog_maps_it,
    |app: TestApp| async move {
        // Apple refunds a purchase of a SKU the operator has not put in the catalog yet; when the
        // operator maps it, the refund is decided: the customer who submits the purchase later does
        // not get the course, and the customer who held it loses it.
        let store = Store::open(&app).await;
        let t = t0().millis();
        let refund_of = |id: &str, sku: &str, uuid: &str| {
            let refunded = store.transaction(
                id,
                sku,
                t,
                json!({"revocationDate": t + 5_000, "revocationReason": 0}),
            );
            store.notify_body("REFUND", None, uuid, t + 5_000, Some(refunded))
        };
        let late = refund_of(
            "92000",
            "edu.acme.late",
            "b2000000-0000-4000-8000-000000000001",
        );
        let answer = notify(&app, late.clone()).await.expect(200);
        assert_eq!(answer["status"], "held");
        assert_eq!(app.count("unmapped_inputs").await, 1);
        assert_eq!(
            notify(&app, late).await.expect(200)["status"],
            "duplicate",
            "Apple's retry changes nothing"
        );
        let metrics = app.request(Method::GET, "/metrics", None, None, &[]).await;
        assert!(
            metrics
                .body
                .as_str()
                .unwrap()
                .contains("gateway_inputs_held_unmapped_total"),
            "held inputs are counted"
        );

        // A customer holds cs101; the operator moves its SKU to another product id, and Apple's
        // refund comes meanwhile.
        let bought = store.transaction("92001", "edu.acme.cs101", t, json!({}));
        submit(&app, "holder", &bought).await.expect(200);
        let cs101 = json!({"kind": "non_consumable", "store_skus": {},
            "entitlements": [{"id": "course-v1:Acme+CS101+2026"}]});
        app.put("/v1/apps/acme/products/cs101", cs101)
            .await
            .expect(200);
        let refund = refund_of(
            "92001",
            "edu.acme.cs101",
            "b2000000-0000-4000-8000-000000000002",
        );
        assert_eq!(notify(&app, refund).await.expect(200)["status"], "held");
        assert_eq!(app.count("unmapped_inputs").await, 2);

        // The operator maps both SKUs: the catalog change decides what was held.
        app.put(
            "/v1/apps/acme/products/late",
            json!({"kind": "non_consumable",
            "store_skus": {"app_store": "edu.acme.late"}, "entitlements": [{"id": "late-course"}]}),
        )
        .await
        .expect(201);
        app.put(
            "/v1/apps/acme/products/cs101",
            json!({"kind": "non_consumable",
            "store_skus": {"app_store": "edu.acme.cs101"},
            "entitlements": [{"id": "course-v1:Acme+CS101+2026"}]}),
        )
        .await
        .expect(200);
        assert_eq!(app.count("unmapped_inputs").await, 0);
        let holder = app.get("/v1/apps/acme/customers/holder").await.expect(200);
        assert_eq!(
            entitlement_status(&holder, "course-v1:Acme+CS101+2026"),
            "refunded",
            "{holder}"
        );
        let bought = store.transaction("92000", "edu.acme.late", t, json!({}));
        let answer = submit(&app, "latecomer", &bought).await.expect(200);
        assert_eq!(answer["status"], "rejected", "{answer}");
        assert_eq!(answer["purchase"]["status"], "refunded");
    }
);

both!(
    a_refund_racing_its_purchase_on_another_instance_still_wins,
    |app: TestApp| async move {
        // Two gateways on one database: the app submits each purchase to one while Apple's refund
        // notification for it reaches the other at the same moment. Whichever commits second must
        // see the first: no refund may stay held as an orphan of a lineage someone holds.
        let store = Store::open(&app).await;
        let other = spawn_on(app.backend, app.test_db.clone()).await;
        let t = t0().millis();
        let mut tasks = Vec::new();
        for i in 0..12 {
            let id = format!("{}", 51_000 + i);
            let user = format!("r{i}");
            let bought = store.transaction(&id, "edu.acme.cs101", t, json!({}));
            let refunded = store.transaction(
                &id,
                "edu.acme.cs101",
                t,
                json!({"revocationDate": t + 5_000, "revocationReason": 0}),
            );
            let body = store.notify_body(
                "REFUND",
                None,
                &format!("e0000000-0000-4000-8000-0000000000{i:02}"),
                t + 5_000,
                Some(refunded),
            );
            let (a, b) = (app.addr.clone(), other.addr.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let submit = client
                    .post(format!("{a}/v1/apps/acme/purchases"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"app_user_id": user, "store": "app_store", "signed_transaction": bought}))
                    .send();
                let notify = client
                    .post(format!("{b}/v1/apps/acme/notifications/app_store"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send();
                let (s, n) = tokio::join!(submit, notify);
                assert!(s.unwrap().status().is_success());
                assert!(n.unwrap().status().is_success());
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for i in 0..12 {
            let snap = app
                .get(&format!("/v1/apps/acme/customers/r{i}"))
                .await
                .expect(200);
            assert_eq!(
                snap["purchases"][0]["status"], "refunded",
                "customer r{i}: {snap}"
            );
        }
        assert_eq!(app.count("orphan_events").await, 0);
        other.stop().await;
    }
);

both!(
    transfers_racing_refunds_on_two_instances_leave_no_one_with_access,
    |app: TestApp| async move {
        // Two gateways on one database: for each purchase, two other customers restore it (each
        // restore moves it, under the `transfer` policy) while Apple's refund of it reaches a
        // gateway. Wherever the purchase ends, it is refunded, and no one keeps the course.
        let store = Store::open(&app).await;
        let other = spawn_on(app.backend, app.test_db.clone()).await;
        let t = t0().millis();
        let n = 16;
        let mut tasks = Vec::new();
        for i in 0..n {
            let id = format!("{}", 81_000 + i);
            let bought = store.transaction(&id, "edu.acme.cs101", t, json!({}));
            submit(&app, &format!("t{i}-a"), &bought).await.expect(200);
            let refunded = store.transaction(
                &id,
                "edu.acme.cs101",
                t,
                json!({"revocationDate": t + 5_000, "revocationReason": 0}),
            );
            let body = store.notify_body(
                "REFUND",
                None,
                &format!("a1000000-0000-4000-8000-0000000000{i:02}"),
                t + 5_000,
                Some(refunded),
            );
            let (a, b) = (app.addr.clone(), other.addr.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let restore = |base: &str, user: String| {
                    client
                        .post(format!("{base}/v1/apps/acme/customers/{user}/restore"))
                        .bearer_auth(ADMIN_KEY)
                        .json(&json!({"store": "app_store", "signed_transactions": [bought]}))
                        .send()
                };
                let notify = client
                    .post(format!("{b}/v1/apps/acme/notifications/app_store"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send();
                let (r1, n, r2) = tokio::join!(
                    restore(&a, format!("t{i}-b")),
                    notify,
                    restore(&b, format!("t{i}-c"))
                );
                for r in [r1, n, r2] {
                    let r = r.unwrap();
                    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for i in 0..n {
            let mut holders = 0;
            for who in ["a", "b", "c"] {
                let snap = app
                    .get(&format!("/v1/apps/acme/customers/t{i}-{who}"))
                    .await
                    .expect(200);
                let status = entitlement_status(&snap, "course-v1:Acme+CS101+2026");
                assert!(
                    status.is_empty() || status == "refunded",
                    "t{i}-{who} keeps the course: {snap}"
                );
                for p in snap["purchases"].as_array().unwrap() {
                    assert_eq!(p["status"], "refunded", "t{i}-{who}: {snap}");
                    holders += 1;
                }
            }
            assert_eq!(holders, 1, "purchase {i} is held by one customer");
        }
        assert_eq!(app.count("orphan_events").await, 0);
        other.stop().await;
    }
);

both!(
    notifications_for_one_customer_in_flight_together_are_all_decided,
    |app: TestApp| async move {
        // Ten purchases of one customer reach the gateway at once by notification alone. Inside a
        // batch they resolve to the same customer, so all but one wait for the next batch.
        let store = Store::open(&app).await;
        let order = app
            .post(
                "/v1/apps/acme/customers/u1/orders",
                json!({"product_ids": ["coins100"]}),
            )
            .await
            .expect(201);
        let token = order["app_account_token"].as_str().unwrap().to_owned();
        let t = t0().millis();
        let mut tasks = Vec::new();
        for i in 0..10 {
            let tx = store.transaction(
                &format!("{}", 61_000 + i),
                "edu.acme.coins100",
                t,
                json!({"type": "Consumable", "appAccountToken": token}),
            );
            let body = store.notify_body(
                "ONE_TIME_CHARGE",
                None,
                &format!("f0000000-0000-4000-8000-0000000000{i:02}"),
                t,
                Some(tx),
            );
            let (client, url) = (
                app.client.clone(),
                format!("{}/v1/apps/acme/notifications/app_store", app.addr),
            );
            tasks.push(tokio::spawn(async move {
                let res = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success());
                res.json::<Value>().await.unwrap()["status"].clone()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), "decided");
        }
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["balances"]["COINS"], 1000, "{snap}");
        assert_eq!(snap["version"], 10, "one version per decision: {snap}");
        assert_eq!(snap["purchases"].as_array().unwrap().len(), 10);
    }
);
