//! The simulated App Store driven as the gateway sees it (notifications received and verified, the
//! fake API's answers) and through its control surface; some tests look into its books.

use axum::{Json, Router, routing::post};
use gateway_core::{
    Timestamp,
    apple::{AppleEnvironment, SignedDataVerifier, TrustedRoots},
};

use super::*;
use crate::apple::api::ApiKey;

/// 2026-11-22T10:00:00Z.
const T0: i64 = 1_795_341_600_000;
const DAY: i64 = 86_400_000;

/// The payload of a compact JWS, unverified.
fn payload(jws: &str) -> Value {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let part = jws.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A store whose notifications land in `received`, answered `{"status": "decided"}`.
struct Rig {
    store: Arc<AppleStore>,
    key: ApiKey,
    api: String,
    received: Arc<Mutex<Vec<Value>>>,
    http: reqwest::Client,
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn rig() -> Rig {
    let chain = Arc::new(AppleChain::generate().unwrap());
    let key = ApiKey::generate("69a6de70-03db-47e3-e053-5b8c7c11a4d1", "2X9R4HXF34").unwrap();
    let server = AppStoreServer::new(chain, key.clone(), "edu.acme.app");
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let gateway = Router::new().route(
        "/notify",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                lock(&sink).push(body);
                Json(json!({"status": "decided"}))
            }
        }),
    );
    let gateway = serve(gateway).await;
    server.set_notification_url(&format!("{gateway}/notify"));
    let store = AppleStore::new(server.clone(), SimClock::fixed(T0));
    let api = serve(server.router().merge(store.router())).await;
    Rig {
        store,
        key,
        api,
        received,
        http: reqwest::Client::new(),
    }
}

impl Rig {
    fn verifier(&self) -> SignedDataVerifier {
        SignedDataVerifier::new(
            TrustedRoots::from_pems(&[self.store.chain().root_pem()]).unwrap(),
            "edu.acme.app",
            AppleEnvironment::Sandbox,
            None,
        )
    }

    /// The last notification the gateway received, verified as the gateway verifies it:
    /// (payload, transaction, renewal info), each as JSON.
    fn last(&self) -> (Value, Value, Option<Value>) {
        let body = lock(&self.received).last().cloned().unwrap();
        let now = Timestamp::from_millis(self.store.clock().now_ms());
        let v = self.verifier();
        let jws = body["signedPayload"].as_str().unwrap();
        v.verify_notification(jws, now).unwrap();
        let n = payload(jws);
        let t = n["data"]["signedTransactionInfo"].as_str().unwrap();
        v.verify_transaction(t, now).unwrap();
        let r = n["data"]["signedRenewalInfo"].as_str().map(|r| {
            v.verify_renewal_info(r, now).unwrap();
            payload(r)
        });
        let t = payload(t);
        (n, t, r)
    }

    /// Calls the fake App Store Server API with a bearer token as Apple's libraries make it.
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.key.key_id.clone());
        let claims = json!({"iss": self.key.issuer_id, "aud": "appstoreconnect-v1", "bid": "edu.acme.app",
            "exp": SimClock::system().now_ms() / 1000 + 300});
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(self.key.private_key_pem.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.unwrap()
    }

    async fn control(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}/sim/apple/{path}", self.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }
}

#[tokio::test]
async fn a_purchase_is_notified_and_served_as_apple_does() {
    let rig = rig().await;
    let token = "7389a31a-fb6d-4569-a2a6-db7d85d84813";
    let done = rig
        .store
        .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(token))
        .await
        .unwrap();
    assert_eq!(
        (done.notification_type, done.subtype, done.http_status),
        ("ONE_TIME_CHARGE", None, Some(200))
    );
    assert_eq!(done.send_attempt_result, "SUCCESS");
    assert_eq!(done.gateway_answer, Some(json!({"status": "decided"})));
    assert_eq!(done.transaction_id, done.original_transaction_id);
    assert_eq!(done.transaction_id.len(), 16);
    let (n, t, r) = rig.last();
    assert_eq!(n["notificationType"], "ONE_TIME_CHARGE");
    assert!(n.get("subtype").is_none());
    assert_eq!(n["notificationUUID"], done.notification_uuid.as_str());
    assert_eq!(n["version"], "2.0");
    assert_eq!(n["signedDate"], T0);
    assert_eq!(n["data"]["bundleId"], "edu.acme.app");
    assert_eq!(n["data"]["environment"], "Sandbox");
    assert!(r.is_none(), "one-time purchases have no renewal info");
    assert_eq!(
        t,
        json!({"transactionId": done.transaction_id, "originalTransactionId": done.transaction_id,
            "bundleId": "edu.acme.app", "productId": "edu.acme.cs101", "purchaseDate": T0,
            "originalPurchaseDate": T0, "quantity": 1, "type": "Non-Consumable", "appAccountToken": token,
            "inAppOwnershipType": "PURCHASED", "signedDate": T0, "environment": "Sandbox",
            "transactionReason": "PURCHASE", "storefront": "USA", "storefrontId": "143441",
            "price": 9990, "currency": "USD"})
    );
    // The fake API serves the same transaction.
    let info = rig
        .api(
            reqwest::Method::GET,
            &format!("/inApps/v1/transactions/{}", done.transaction_id),
            None,
        )
        .await;
    let served = payload(info["signedTransactionInfo"].as_str().unwrap());
    assert_eq!(served, t);
    let signed = rig.store.signed_transaction(&done.transaction_id).unwrap();
    assert_eq!(payload(&signed), t);

    rig.store.clock().advance(DAY);
    let refunded = rig
        .store
        .refund(&done.transaction_id, RevocationReason::AppIssue)
        .await
        .unwrap();
    let (n, t, _) = rig.last();
    assert_eq!(n["notificationType"], "REFUND");
    assert_eq!(
        (
            &t["revocationDate"],
            &t["revocationReason"],
            &t["revocationType"]
        ),
        (&json!(T0 + DAY), &json!(1), &json!("REFUND_FULL"))
    );
    assert_eq!(refunded.transaction["revocationDate"], T0 + DAY);
    let refunds = rig
        .api(
            reqwest::Method::GET,
            &format!("/inApps/v2/refund/lookup/{}", done.transaction_id),
            None,
        )
        .await;
    assert_eq!(refunds["signedTransactions"].as_array().unwrap().len(), 1);
    assert!(matches!(
        rig.store
            .refund(&done.transaction_id, RevocationReason::Other)
            .await,
        Err(AppleStoreError::AlreadyRevoked(_))
    ));

    rig.store.clock().advance(DAY);
    rig.store
        .reverse_refund(&done.transaction_id)
        .await
        .unwrap();
    let (n, t, _) = rig.last();
    assert_eq!(n["notificationType"], "REFUND_REVERSED");
    assert!(t.get("revocationDate").is_none() && t.get("revocationReason").is_none());
    assert_eq!(t["signedDate"], T0 + 2 * DAY);
    let refunds = rig
        .api(
            reqwest::Method::GET,
            &format!("/inApps/v2/refund/lookup/{}", done.transaction_id),
            None,
        )
        .await;
    assert_eq!(refunds["signedTransactions"], json!([]));
    assert!(matches!(
        rig.store.reverse_refund(&done.transaction_id).await,
        Err(AppleStoreError::NotRefunded(_))
    ));

    rig.store.revoke(&done.transaction_id).await.unwrap();
    let (n, t, _) = rig.last();
    assert_eq!(n["notificationType"], "REVOKE");
    assert_eq!(
        (&t["inAppOwnershipType"], &t["revocationType"]),
        (&json!("FAMILY_SHARED"), &json!("FAMILY_REVOKE"))
    );

    // Every notification is in the API's history, with its one attempt.
    let history = rig
        .api(
            reqwest::Method::POST,
            "/inApps/v1/notifications/history",
            Some(json!({"startDate": T0 - DAY, "endDate": T0 + 10 * DAY})),
        )
        .await;
    let types: Vec<String> = history["notificationHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert_eq!(h["sendAttempts"][0]["sendAttemptResult"], "SUCCESS");
            payload(h["signedPayload"].as_str().unwrap())["notificationType"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        types,
        ["ONE_TIME_CHARGE", "REFUND", "REFUND_REVERSED", "REVOKE"]
    );
}

#[tokio::test]
async fn a_subscription_renews_fails_recovers_and_expires() {
    let rig = rig().await;
    let bought = rig
        .store
        .buy(
            "edu.acme.premium",
            ProductKind::AutoRenewable(Period::ONE_MONTH),
            None,
        )
        .await
        .unwrap();
    let lineage = bought.original_transaction_id.clone();
    let (n, t, r) = rig.last();
    assert_eq!(
        (&n["notificationType"], &n["subtype"], &n["data"]["status"]),
        (&json!("SUBSCRIBED"), &json!("INITIAL_BUY"), &json!(1))
    );
    // 2026-11-22 + one calendar month.
    let first_end = T0 + 30 * DAY;
    assert_eq!(t["expiresDate"], first_end);
    assert_eq!(t["type"], "Auto-Renewable Subscription");
    assert!(t["webOrderLineItemId"].is_string() && t["subscriptionGroupIdentifier"].is_string());
    let r = r.unwrap();
    assert_eq!(
        (
            &r["autoRenewStatus"],
            &r["isInBillingRetryPeriod"],
            &r["renewalDate"]
        ),
        (&json!(1), &json!(false), &json!(first_end))
    );

    let renewed = rig.store.renew(&lineage).await.unwrap();
    let (n, t, _) = rig.last();
    assert_eq!(n["notificationType"], "DID_RENEW");
    assert!(n.get("subtype").is_none());
    assert_ne!(renewed.transaction_id, lineage);
    assert_eq!(t["originalTransactionId"], lineage.as_str());
    assert_eq!(t["transactionReason"], "RENEWAL");
    assert_eq!(t["purchaseDate"], first_end, "renewed when the period ends");
    let second_end = first_end + 31 * DAY;
    assert_eq!(t["expiresDate"], second_end);

    rig.store.clock().set(second_end + 1_000);
    rig.store
        .fail_to_renew(&lineage, Some(Duration::from_secs(16 * 86_400)))
        .await
        .unwrap();
    let (n, t, r) = rig.last();
    let r = r.unwrap();
    assert_eq!(
        (&n["notificationType"], &n["subtype"], &n["data"]["status"]),
        (
            &json!("DID_FAIL_TO_RENEW"),
            &json!("GRACE_PERIOD"),
            &json!(4)
        )
    );
    assert_eq!(t["transactionId"], renewed.transaction_id.as_str());
    assert_eq!(
        (
            &r["isInBillingRetryPeriod"],
            &r["gracePeriodExpiresDate"],
            &r["expirationIntent"]
        ),
        (&json!(true), &json!(second_end + 16 * DAY), &json!(2))
    );
    let statuses = rig
        .api(
            reqwest::Method::GET,
            &format!("/inApps/v1/subscriptions/{lineage}"),
            None,
        )
        .await;
    assert_eq!(statuses["data"][0]["lastTransactions"][0]["status"], 4);

    let recovered = rig.store.renew(&lineage).await.unwrap();
    assert_eq!(recovered.subtype, Some("BILLING_RECOVERY"));
    assert_eq!(
        recovered.transaction["purchaseDate"],
        second_end + 1_000,
        "a late renewal starts now"
    );
    let r = recovered.renewal_info.unwrap();
    assert!(r.get("gracePeriodExpiresDate").is_none());
    assert_eq!(r["isInBillingRetryPeriod"], false);

    rig.store.fail_to_renew(&lineage, None).await.unwrap();
    let (n, _, r) = rig.last();
    assert!(n.get("subtype").is_none());
    assert_eq!(n["data"]["status"], 3, "billing retry");
    assert!(r.unwrap().get("gracePeriodExpiresDate").is_none());

    rig.store
        .expire(&lineage, ExpirySubtype::BillingRetry)
        .await
        .unwrap();
    let (n, t, r) = rig.last();
    let r = r.unwrap();
    assert_eq!(
        (&n["notificationType"], &n["subtype"], &n["data"]["status"]),
        (&json!("EXPIRED"), &json!("BILLING_RETRY"), &json!(2))
    );
    assert_eq!(
        t["expiresDate"],
        second_end + 1_000,
        "expired early: the period ends now"
    );
    assert_eq!(
        (
            &r["autoRenewStatus"],
            &r["expirationIntent"],
            &r["isInBillingRetryPeriod"]
        ),
        (&json!(0), &json!(2), &json!(false))
    );
    let statuses = rig
        .api(
            reqwest::Method::GET,
            &format!("/inApps/v1/subscriptions/{lineage}"),
            None,
        )
        .await;
    assert_eq!(statuses["data"][0]["lastTransactions"][0]["status"], 2);
    assert!(matches!(
        rig.store.expire(&lineage, ExpirySubtype::Voluntary).await,
        Err(AppleStoreError::AlreadyExpired(_))
    ));
    let history = rig
        .api(
            reqwest::Method::GET,
            &format!("/inApps/v2/history/{lineage}"),
            None,
        )
        .await;
    assert_eq!(history["signedTransactions"].as_array().unwrap().len(), 3);
    let back = rig.store.renew(&lineage).await.unwrap();
    assert_eq!(
        (back.notification_type, back.subtype),
        ("DID_RENEW", Some("BILLING_RECOVERY"))
    );
}

#[tokio::test]
async fn refused_actions_change_nothing_and_the_control_surface_says_why() {
    let rig = rig().await;
    let coins = rig
        .store
        .buy_with(&Purchase {
            quantity: 3,
            ..Purchase::new("edu.acme.coins", ProductKind::Consumable)
        })
        .await
        .unwrap();
    assert_eq!(coins.transaction["quantity"], 3);
    assert!(matches!(
        rig.store.renew(&coins.transaction_id).await,
        Err(AppleStoreError::NotASubscription(_))
    ));
    assert!(matches!(
        rig.store.refund("404", RevocationReason::Other).await,
        Err(AppleStoreError::UnknownTransaction(_))
    ));
    assert!(matches!(
        rig.store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some("nope"))
            .await,
        Err(AppleStoreError::Invalid(_))
    ));
    assert_eq!(lock(&rig.received).len(), 1);

    let (status, body) = rig
        .control("refund", json!({"transaction_id": "404"}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("unknown_transaction"))
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("404"));
    let (status, body) = rig
        .control("buy", json!({"sku": "x", "kind": "subscription"}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_request"))
    );
    let (status, _) = rig.control("renew", json!({"nope": 1})).await;
    assert_eq!(status, 400);
    let (status, body) = rig
        .control(
            "buy",
            json!({"sku": "edu.acme.premium", "kind": "auto-renewable", "period": "P1W"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["transaction"]["expiresDate"], T0 + 7 * DAY);
    assert_eq!(body["gateway_answer"]["status"], "decided");
    let (status, body) = rig
        .control(
            "expire",
            json!({"original_transaction_id": body["original_transaction_id"], "subtype": "VOLUNTARY"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["renewal_info"]["expirationIntent"], 1);
    let signed: Value = rig
        .http
        .get(format!(
            "{}/sim/apple/transactions/{}/signed",
            rig.api, coins.transaction_id
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(signed["signedTransactionInfo"].as_str().unwrap().len() > 100);
    let res = rig
        .http
        .get(format!("{}/sim/apple/transactions/9/signed", rig.api))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);

    // Nowhere to send: refused before anything changes.
    let bare = AppStoreServer::new(
        rig.store.server().chain().clone(),
        rig.key.clone(),
        "edu.acme.app",
    );
    let store = AppleStore::new(bare, SimClock::fixed(T0));
    assert!(matches!(
        store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, None)
            .await,
        Err(AppleStoreError::NoNotificationUrl)
    ));
    assert!(lock(&store.books).transactions.is_empty());
}

#[tokio::test]
async fn a_gateway_that_does_not_answer_is_recorded_as_apple_records_it() {
    let rig = rig().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", closed.local_addr().unwrap());
    drop(closed);
    rig.store.server().set_notification_url(&url);
    let done = rig
        .store
        .buy("edu.acme.cs101", ProductKind::NonConsumable, None)
        .await
        .unwrap();
    assert_eq!(
        (done.http_status, done.send_attempt_result),
        (None, "NO_RESPONSE")
    );
    let history = rig
        .api(
            reqwest::Method::POST,
            "/inApps/v1/notifications/history",
            Some(json!({"startDate": T0 - DAY, "endDate": T0 + DAY, "onlyFailures": true})),
        )
        .await;
    assert_eq!(
        history["notificationHistory"][0]["sendAttempts"],
        json!([{"attemptDate": T0, "sendAttemptResult": "NO_RESPONSE"}])
    );
}

#[tokio::test]
async fn an_upgrade_starts_a_new_period_at_once_and_a_downgrade_waits_for_the_renewal() {
    let rig = rig().await;
    let monthly = ProductKind::AutoRenewable(Period::ONE_MONTH);
    let bought = rig
        .store
        .buy("edu.acme.premium", monthly, None)
        .await
        .unwrap();
    let lineage = bought.original_transaction_id.clone();

    rig.store.clock().set(T0 + 10 * DAY);
    let up = rig
        .store
        .change_plan(&lineage, "edu.acme.premium_plus", true)
        .await
        .unwrap();
    let (n, t, r) = rig.last();
    assert_eq!(
        (&n["notificationType"], &n["subtype"]),
        (&json!("DID_CHANGE_RENEWAL_PREF"), &json!("UPGRADE"))
    );
    assert_ne!(up.transaction_id, bought.transaction_id);
    assert_eq!(t["originalTransactionId"], lineage.as_str());
    assert_eq!(t["productId"], "edu.acme.premium_plus");
    assert_eq!(
        t["purchaseDate"],
        T0 + 10 * DAY,
        "the new period starts now"
    );
    assert_eq!(
        t["subscriptionGroupIdentifier"],
        bought.transaction["subscriptionGroupIdentifier"]
    );
    let r = r.unwrap();
    assert_eq!(r["autoRenewProductId"], "edu.acme.premium_plus");
    assert_eq!(r["productId"], "edu.acme.premium_plus");
    // The old transaction is marked upgraded, as the API serves it.
    let old = rig.store.transaction(&bought.transaction_id).unwrap();
    assert_eq!(old["isUpgraded"], true);
    let served = rig
        .api(
            reqwest::Method::GET,
            &format!("/inApps/v1/transactions/{}", bought.transaction_id),
            None,
        )
        .await;
    let served = payload(served["signedTransactionInfo"].as_str().unwrap());
    assert_eq!(served["isUpgraded"], true);

    let down = rig
        .store
        .change_plan(&lineage, "edu.acme.premium", false)
        .await
        .unwrap();
    let (n, t, r) = rig.last();
    assert_eq!(
        (&n["notificationType"], &n["subtype"]),
        (&json!("DID_CHANGE_RENEWAL_PREF"), &json!("DOWNGRADE"))
    );
    assert_eq!(
        down.transaction_id, up.transaction_id,
        "nothing is billed now"
    );
    assert_eq!(t["productId"], "edu.acme.premium_plus");
    assert_eq!(r.unwrap()["autoRenewProductId"], "edu.acme.premium");

    rig.store.renew(&lineage).await.unwrap();
    let (n, t, r) = rig.last();
    assert_eq!(n["notificationType"], "DID_RENEW");
    assert_eq!(
        t["productId"], "edu.acme.premium",
        "the downgrade is billed at renewal"
    );
    assert!(t.get("isUpgraded").is_none());
    assert_eq!(r.unwrap()["productId"], "edu.acme.premium");

    // Moving to the product it is on is refused, through the control surface too.
    let (status, body) = rig
        .control(
            "change-plan",
            json!({"original_transaction_id": lineage, "product_id": "edu.acme.premium"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = rig
        .control(
            "change-plan",
            json!({"original_transaction_id": lineage, "product_id": "edu.acme.premium_plus"}),
        )
        .await;
    assert_eq!(
        (status, &body["subtype"]),
        (200, &json!("UPGRADE")),
        "{body}"
    );
}
