//! The Google Play simulator over real HTTP, as the gateway meets it: the token endpoint, the Play
//! Developer API and the Pub/Sub pushes it sends to a small receiver standing in for the gateway.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode as AxumStatus},
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use reqwest::StatusCode;
use serde_json::{Value, json};
use store_sim::{
    SimClock,
    play::{
        Action, Buy, Forge, Period, PlaySim, PushMode, PushSettings, Refund, SCOPE, ServiceAccount,
        Subscribe, VoidedReason, VoidedSource,
    },
};

const PKG: &str = "com.acme.app";
/// 2027-01-15T08:00:00Z.
const NOW: i64 = 1_800_000_000_000;
const DAY: i64 = 86_400_000;
const PUSH_EMAIL: &str = "rtdn-push@acme-project.iam.gserviceaccount.com";
const RECEIVER_PATH: &str = "/v1/apps/acme/notifications/play_store";

/// One push the receiver took.
#[derive(Debug, Clone)]
struct Received {
    authorization: Option<String>,
    query: Option<String>,
    body: Value,
}

impl Received {
    /// The DeveloperNotification inside the push.
    fn notification(&self) -> Value {
        let data = self.body["message"]["data"].as_str().unwrap();
        serde_json::from_slice(&STANDARD.decode(data).unwrap()).unwrap()
    }
}

#[derive(Clone)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> AxumStatus {
    r.received.lock().unwrap().push(Received {
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        query,
        body: serde_json::from_slice(&body).unwrap(),
    });
    AxumStatus::from_u16(r.status.load(Ordering::SeqCst)).unwrap()
}

struct Rig {
    sim: Arc<PlaySim>,
    url: String,
    http: reqwest::Client,
    account: ServiceAccount,
    receiver: Receiver,
    endpoint: String,
}

async fn rig() -> Rig {
    rig_on(SimClock::fixed(NOW)).await
}

async fn rig_on(clock: SimClock) -> Rig {
    let receiver = Receiver {
        received: Arc::new(Mutex::new(Vec::new())),
        status: Arc::new(AtomicU16::new(200)),
    };
    let app = Router::new()
        .route(RECEIVER_PATH, post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}{RECEIVER_PATH}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sim = PlaySim::new(clock).unwrap();
    let url = sim.serve().await.unwrap();
    sim.add_package(PKG);
    let account = sim.create_service_account("acme-project").unwrap();
    sim.grant(&account, PKG).unwrap();
    sim.set_push(PKG, PushSettings::oidc(&endpoint, PUSH_EMAIL))
        .unwrap();
    Rig {
        sim,
        url,
        http: reqwest::Client::new(),
        account,
        receiver,
        endpoint,
    }
}

impl Rig {
    fn now(&self) -> i64 {
        self.sim.clock().now_ms()
    }

    async fn exchange(&self, assertion: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .post(format!("{}/token", self.url))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion),
            ])
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap())
    }

    async fn token_for(&self, account: &ServiceAccount) -> String {
        let (status, body) = self.exchange(&account.assertion(self.now()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn token(&self) -> String {
        self.token_for(&self.account).await
    }

    /// `{base}/androidpublisher/v3/applications/{PKG}/{rest}`.
    fn api(&self, rest: &str) -> String {
        format!("{}/androidpublisher/v3/applications/{PKG}/{rest}", self.url)
    }

    async fn send(&self, req: reqwest::RequestBuilder, token: Option<&str>) -> (StatusCode, Value) {
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    }

    async fn get(&self, rest: &str) -> (StatusCode, Value) {
        let token = self.token().await;
        self.send(self.http.get(self.api(rest)), Some(&token)).await
    }

    async fn post(&self, rest: &str, body: Value) -> (StatusCode, Value) {
        let token = self.token().await;
        self.send(self.http.post(self.api(rest)).json(&body), Some(&token))
            .await
    }

    fn received(&self) -> Vec<Received> {
        self.receiver.received.lock().unwrap().clone()
    }

    fn notifications(&self) -> Vec<Value> {
        self.received().iter().map(Received::notification).collect()
    }

    /// The subscription notification types pushed so far, in order.
    fn subscription_types(&self) -> Vec<i64> {
        self.notifications()
            .iter()
            .filter_map(|n| n["subscriptionNotification"]["notificationType"].as_i64())
            .collect()
    }

    async fn buy(&self, product: &str) -> String {
        let buy = Buy {
            obfuscated_account_id: Some("user-1".into()),
            ..Buy::new(PKG, product)
        };
        self.sim.buy(buy).await.unwrap().purchase_token.unwrap()
    }

    async fn subscribe(&self) -> (String, String) {
        let plan = Subscribe {
            obfuscated_account_id: Some("user-1".into()),
            ..Subscribe::new(PKG, "premium", "monthly")
        };
        let o = self.sim.subscribe(plan).await.unwrap();
        (o.purchase_token.unwrap(), o.order_id.unwrap())
    }

    async fn subscription(&self, token: &str) -> Value {
        let (status, body) = self
            .get(&format!("purchases/subscriptionsv2/tokens/{token}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn product(&self, token: &str) -> Value {
        let (status, body) = self
            .get(&format!("purchases/productsv2/tokens/{token}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    fn rfc3339(&self, ms: i64) -> String {
        let t =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

/// Asserts Google's error envelope: the status, `error.code`, `error.status` and `errors[0].reason`.
fn assert_google_error((status, body): &(StatusCode, Value), code: u16, grpc: &str, reason: &str) {
    assert_eq!(status.as_u16(), code, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["status"], grpc, "{body}");
    assert_eq!(body["error"]["errors"][0]["reason"], reason, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(body["error"]["errors"][0]["domain"].is_string(), "{body}");
}

#[tokio::test]
async fn key_files_are_laid_out_as_googles_with_a_2048_bit_pkcs8_key() {
    let r = rig().await;
    let file = r.account.key_file();
    assert_eq!(file["type"], "service_account");
    assert_eq!(file["project_id"], "acme-project");
    assert_eq!(file["token_uri"], format!("{}/token", r.url));
    assert_eq!(
        file["auth_uri"],
        "https://accounts.google.com/o/oauth2/auth"
    );
    assert_eq!(
        file["auth_provider_x509_cert_url"],
        "https://www.googleapis.com/oauth2/v1/certs"
    );
    let email = file["client_email"].as_str().unwrap();
    assert!(email.ends_with("@acme-project.iam.gserviceaccount.com"));
    assert_eq!(
        file["client_x509_cert_url"],
        format!(
            "https://www.googleapis.com/robot/v1/metadata/x509/{}",
            email.replace('@', "%40")
        )
    );
    assert_eq!(file["private_key_id"].as_str().unwrap().len(), 40);
    assert!(
        file["client_id"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_digit())
    );
    let pem = file["private_key"].as_str().unwrap();
    let body: String = pem
        .strip_prefix("-----BEGIN PRIVATE KEY-----\n")
        .and_then(|p| p.strip_suffix("-----END PRIVATE KEY-----\n"))
        .unwrap()
        .lines()
        .collect();
    let der = STANDARD.decode(body).unwrap();
    let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).unwrap();
    assert_eq!(key.public_modulus_len(), 256);
}

#[tokio::test]
async fn the_token_endpoint_takes_good_assertions_and_refuses_the_rest_as_google_does() {
    let r = rig().await;
    let now_s = NOW / 1000;
    let (status, body) = r.exchange(&r.account.assertion(NOW).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["access_token"].as_str().unwrap().starts_with("ya29."));
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(r.sim.token_calls(), 1);

    let claims = |aud: &str, iat: i64, exp: i64, scope: Option<&str>| {
        let mut c = json!({"iss": r.account.client_email, "aud": aud, "iat": iat, "exp": exp});
        if let Some(s) = scope {
            c["scope"] = s.into();
        }
        c
    };
    let token_uri = r.account.token_uri.clone();
    let refused = |(status, body): (StatusCode, Value), code: u16, error: &str| {
        assert_eq!(status.as_u16(), code, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert!(body["error_description"].is_string(), "{body}");
    };

    // Signed by another key under this account's name and key id.
    let other = r.sim.create_service_account("acme-project").unwrap();
    let forged = ServiceAccount {
        private_key_pem: other.private_key_pem.clone(),
        ..r.account.clone()
    };
    let assertion = forged.assertion(NOW).unwrap();
    let answer = r.exchange(&assertion).await;
    assert_eq!(answer.1["error_description"], "Invalid JWT Signature.");
    refused(answer, 400, "invalid_grant");
    // Google's own token endpoint is an audience Google takes wherever the grant is posted (its
    // auth libraries always name it); another is refused.
    let assertion = r
        .account
        .sign(&claims(
            "https://oauth2.googleapis.com/token",
            now_s,
            now_s + 3600,
            Some(SCOPE),
        ))
        .unwrap();
    assert_eq!(r.exchange(&assertion).await.0, StatusCode::OK);
    let assertion = r
        .account
        .sign(&claims(
            "https://elsewhere.example/token",
            now_s,
            now_s + 3600,
            Some(SCOPE),
        ))
        .unwrap();
    refused(r.exchange(&assertion).await, 400, "invalid_grant");
    // Expired, and living longer than an hour.
    let assertion = r
        .account
        .sign(&claims(&token_uri, now_s - 7200, now_s - 3600, Some(SCOPE)))
        .unwrap();
    refused(r.exchange(&assertion).await, 400, "invalid_grant");
    let assertion = r
        .account
        .sign(&claims(&token_uri, now_s, now_s + 7200, Some(SCOPE)))
        .unwrap();
    refused(r.exchange(&assertion).await, 400, "invalid_grant");
    // No scope.
    let assertion = r
        .account
        .sign(&claims(&token_uri, now_s, now_s + 3600, None))
        .unwrap();
    refused(r.exchange(&assertion).await, 400, "invalid_scope");
    // Another grant type.
    let res = r
        .http
        .post(format!("{}/token", r.url))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let status = res.status();
    refused(
        (status, res.json().await.unwrap()),
        400,
        "unsupported_grant_type",
    );

    // A revoked key: its assertions and its tokens are refused from then on.
    let token = r.token().await;
    let (status, _) = r.get("purchases/voidedpurchases").await;
    assert_eq!(status, StatusCode::OK);
    r.sim.revoke_key(&r.account).unwrap();
    refused(
        r.exchange(&r.account.assertion(NOW).unwrap()).await,
        401,
        "invalid_client",
    );
    let answer = r
        .send(r.http.get(r.api("purchases/voidedpurchases")), Some(&token))
        .await;
    assert_google_error(&answer, 401, "UNAUTHENTICATED", "authError");
    // Every exchange was counted: 2 good, 6 refused, 2 before revoking, 1 after.
    assert_eq!(r.sim.token_calls(), 11);
}

#[tokio::test]
async fn api_calls_need_a_live_token_with_the_scope_for_a_granted_package() {
    let r = rig().await;
    let path = r.api("purchases/productsv2/tokens/unknown-token");
    let answer = r.send(r.http.get(&path), None).await;
    assert_google_error(&answer, 401, "UNAUTHENTICATED", "required");
    let answer = r.send(r.http.get(&path), Some("ya29.made-up")).await;
    assert_google_error(&answer, 401, "UNAUTHENTICATED", "authError");

    // Issued, then expired an hour later.
    let token = r.token().await;
    let answer = r.send(r.http.get(&path), Some(&token)).await;
    assert_google_error(&answer, 400, "INVALID_ARGUMENT", "invalid");
    assert_eq!(
        answer.1["error"]["message"],
        "The purchase token is no longer valid."
    );
    r.sim.clock().advance(3_600_000);
    let answer = r.send(r.http.get(&path), Some(&token)).await;
    assert_google_error(&answer, 401, "UNAUTHENTICATED", "authError");

    // A token for another scope only.
    let now_s = r.now() / 1000;
    let assertion = r
        .account
        .sign(
            &json!({"iss": r.account.client_email, "aud": r.account.token_uri,
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "iat": now_s, "exp": now_s + 3600}),
        )
        .unwrap();
    let (_, body) = r.exchange(&assertion).await;
    let scoped = body["access_token"].as_str().unwrap().to_owned();
    let answer = r.send(r.http.get(&path), Some(&scoped)).await;
    assert_google_error(&answer, 403, "PERMISSION_DENIED", "insufficientPermissions");

    // An account without access to the package, and a package that does not exist.
    let stranger = r.sim.create_service_account("other-project").unwrap();
    let token = r.token_for(&stranger).await;
    let answer = r.send(r.http.get(&path), Some(&token)).await;
    assert_google_error(&answer, 403, "PERMISSION_DENIED", "permissionDenied");
    let token = r.token().await;
    let elsewhere = format!(
        "{}/androidpublisher/v3/applications/com.nobody/purchases/voidedpurchases",
        r.url
    );
    let answer = r.send(r.http.get(&elsewhere), Some(&token)).await;
    assert_google_error(&answer, 404, "NOT_FOUND", "applicationNotFound");
}

#[tokio::test]
async fn a_one_time_purchase_is_read_acknowledged_and_consumed_through_the_api() {
    let r = rig().await;
    let token = r.buy("coins_100").await;
    let order_id = r.sim.product_purchase(&token).unwrap()["orderId"]
        .as_str()
        .unwrap()
        .to_owned();

    let p = r.product(&token).await;
    assert_eq!(p["kind"], "androidpublisher#productPurchaseV2");
    assert_eq!(p["purchaseStateContext"]["purchaseState"], "PURCHASED");
    assert_eq!(p["acknowledgementState"], "ACKNOWLEDGEMENT_STATE_PENDING");
    assert_eq!(p["purchaseCompletionTime"], r.rfc3339(NOW));
    assert_eq!(p["obfuscatedExternalAccountId"], "user-1");
    assert_eq!(p["regionCode"], "US");
    let item = &p["productLineItem"][0];
    assert_eq!(item["productId"], "coins_100");
    let offer = &item["productOfferDetails"];
    assert_eq!(offer["quantity"], 1);
    assert_eq!(offer["refundableQuantity"], 1);
    assert_eq!(
        offer["consumptionState"],
        "CONSUMPTION_STATE_YET_TO_BE_CONSUMED"
    );
    assert!(offer["purchaseOptionId"].is_string() && offer["offerToken"].is_string());
    assert!(p.get("testPurchaseContext").is_none());

    let (status, v1) = r
        .get(&format!("purchases/products/coins_100/tokens/{token}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1["kind"], "androidpublisher#productPurchase");
    assert_eq!(v1["purchaseState"], 0);
    assert_eq!(v1["acknowledgementState"], 0);
    assert_eq!(v1["consumptionState"], 0);
    assert_eq!(v1["purchaseTimeMillis"], NOW.to_string());
    assert_eq!(v1["orderId"], order_id.as_str());
    // The v1 path names the product: another product's path does not find the token.
    let (status, _) = r
        .get(&format!("purchases/products/gems/tokens/{token}"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let ack = format!("purchases/products/coins_100/tokens/{token}:acknowledge");
    let (status, _) = r.post(&ack, json!({"developerPayload": "order-77"})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let p = r.product(&token).await;
    assert_eq!(
        p["acknowledgementState"],
        "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED"
    );
    let (_, v1) = r
        .get(&format!("purchases/products/coins_100/tokens/{token}"))
        .await;
    assert_eq!(v1["acknowledgementState"], 1);
    assert_eq!(v1["developerPayload"], "order-77");
    let answer = r.post(&ack, json!({})).await;
    assert_google_error(&answer, 400, "FAILED_PRECONDITION", "invalidPurchaseState");
    let acks = r.sim.acknowledgements();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].purchase_token, token);
    assert_eq!(acks[0].developer_payload.as_deref(), Some("order-77"));

    let consume = format!("purchases/products/coins_100/tokens/{token}:consume");
    let (status, _) = r.post(&consume, json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.product(&token).await["productLineItem"][0]["productOfferDetails"]["consumptionState"],
        "CONSUMPTION_STATE_CONSUMED"
    );

    // The call log has each v1 call, in order, with its answer.
    let prefix = format!("/androidpublisher/v3/applications/{PKG}/purchases/products");
    let log: Vec<(String, String, u16)> = r
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.path.starts_with(&format!("{prefix}/")))
        .map(|c| (c.method, c.path[prefix.len()..].to_owned(), c.status))
        .collect();
    assert_eq!(
        log,
        vec![
            ("GET".into(), format!("/coins_100/tokens/{token}"), 200),
            ("GET".into(), format!("/gems/tokens/{token}"), 400),
            (
                "POST".into(),
                format!("/coins_100/tokens/{token}:acknowledge"),
                204
            ),
            ("GET".into(), format!("/coins_100/tokens/{token}"), 200),
            (
                "POST".into(),
                format!("/coins_100/tokens/{token}:acknowledge"),
                400
            ),
            (
                "POST".into(),
                format!("/coins_100/tokens/{token}:consume"),
                204
            ),
        ]
    );

    // The purchase was pushed as ONE_TIME_PRODUCT_PURCHASED.
    let n = &r.notifications()[0];
    assert_eq!(n["packageName"], PKG);
    assert_eq!(n["eventTimeMillis"], NOW.to_string());
    assert_eq!(
        n["oneTimeProductNotification"],
        json!({"version": "1.0", "notificationType": 1, "purchaseToken": token, "sku": "coins_100"})
    );
}

#[tokio::test]
async fn a_pending_purchase_completes_or_is_cancelled() {
    let r = rig().await;
    let pending = |product: &str| Buy {
        pending: true,
        ..Buy::new(PKG, product)
    };
    let o = r.sim.buy(pending("coins_100")).await.unwrap();
    let token = o.purchase_token.unwrap();
    let order_id = o.order_id.unwrap();
    let p = r.product(&token).await;
    assert_eq!(p["purchaseStateContext"]["purchaseState"], "PENDING");
    assert!(p.get("purchaseCompletionTime").is_none());
    let answer = r
        .post(
            &format!("purchases/products/coins_100/tokens/{token}:acknowledge"),
            json!({}),
        )
        .await;
    assert_google_error(&answer, 400, "FAILED_PRECONDITION", "invalidPurchaseState");
    let (_, order) = r.get(&format!("orders/{order_id}")).await;
    assert_eq!(order["state"], "PENDING");

    r.sim.clock().advance(60_000);
    r.sim.confirm(&token).await.unwrap();
    let p = r.product(&token).await;
    assert_eq!(p["purchaseStateContext"]["purchaseState"], "PURCHASED");
    assert_eq!(p["purchaseCompletionTime"], r.rfc3339(NOW + 60_000));
    let (_, order) = r.get(&format!("orders/{order_id}")).await;
    assert_eq!(order["state"], "PROCESSED");

    let other = r
        .sim
        .buy(pending("gems"))
        .await
        .unwrap()
        .purchase_token
        .unwrap();
    r.sim.cancel_pending(&other).await.unwrap();
    let p = r.product(&other).await;
    assert_eq!(p["purchaseStateContext"]["purchaseState"], "CANCELLED");
    assert!(r.sim.confirm(&other).await.is_err());

    let kinds: Vec<(String, i64)> = r
        .notifications()
        .iter()
        .map(|n| {
            let m = &n["oneTimeProductNotification"];
            (
                m["purchaseToken"].as_str().unwrap().to_owned(),
                m["notificationType"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (token.clone(), 1),
            (token, 1),
            (other.clone(), 1),
            (other, 2)
        ]
    );
}

#[tokio::test]
async fn a_subscription_goes_through_its_states_and_each_change_is_pushed_in_order() {
    let r = rig().await;
    let (token, order) = r.subscribe().await;
    let s = r.subscription(&token).await;
    assert_eq!(s["kind"], "androidpublisher#subscriptionPurchaseV2");
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_ACTIVE");
    assert_eq!(s["acknowledgementState"], "ACKNOWLEDGEMENT_STATE_PENDING");
    assert_eq!(s["startTime"], r.rfc3339(NOW));
    assert!(s.get("latestOrderId").is_none(), "removed from the schema");
    assert!(s["etag"].is_string());
    assert_eq!(
        s["externalAccountIdentifiers"]["obfuscatedExternalAccountId"],
        "user-1"
    );
    let item = &s["lineItems"][0];
    assert_eq!(item["productId"], "premium");
    assert_eq!(item["latestSuccessfulOrderId"], order.as_str());
    let month = Period::ONE_MONTH.after(NOW);
    assert_eq!(item["expiryTime"], r.rfc3339(month));
    assert_eq!(item["autoRenewingPlan"]["autoRenewEnabled"], true);
    assert_eq!(
        item["autoRenewingPlan"]["recurringPrice"],
        json!({"currencyCode": "USD", "units": "4", "nanos": 990_000_000})
    );
    assert_eq!(item["offerDetails"]["basePlanId"], "monthly");

    let (status, _) = r
        .post(
            &format!("purchases/subscriptions/premium/tokens/{token}:acknowledge"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.subscription(&token).await["acknowledgementState"],
        "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED"
    );

    // Renewal at the end of the month: order ..0, a month more.
    r.sim.clock().set(month);
    r.sim.renew(&token).await.unwrap();
    let s = r.subscription(&token).await;
    let two_months = Period::ONE_MONTH.after(month);
    assert_eq!(
        s["lineItems"][0]["latestSuccessfulOrderId"],
        format!("{order}..0")
    );
    assert_eq!(s["lineItems"][0]["expiryTime"], r.rfc3339(two_months));

    // The next renewal is declined: grace, then recovery from the original renewal date.
    r.sim.clock().set(two_months);
    let grace = Action::EnterGracePeriod {
        token: token.clone(),
        grace: Duration::from_secs(3 * 86_400),
    };
    r.sim.act(grace).await.unwrap();
    let s = r.subscription(&token).await;
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_IN_GRACE_PERIOD");
    assert_eq!(
        s["inGracePeriodStateContext"]["renewalDeclined"]["pendingOrderId"],
        format!("{order}..1")
    );
    assert_eq!(
        s["lineItems"][0]["expiryTime"],
        r.rfc3339(two_months + 3 * DAY)
    );
    let recover = || Action::Recover {
        token: token.clone(),
    };
    r.sim.act(recover()).await.unwrap();
    let s = r.subscription(&token).await;
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_ACTIVE");
    assert_eq!(
        s["lineItems"][0]["latestSuccessfulOrderId"],
        format!("{order}..1")
    );
    assert!(s.get("inGracePeriodStateContext").is_none());

    // On hold: access ends now; recovery starts a new period.
    r.sim
        .act(Action::PutOnHold {
            token: token.clone(),
        })
        .await
        .unwrap();
    let s = r.subscription(&token).await;
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_ON_HOLD");
    assert_eq!(s["lineItems"][0]["expiryTime"], r.rfc3339(two_months));
    assert_eq!(
        s["onHoldStateContext"]["renewalDeclined"]["pendingOrderId"],
        format!("{order}..2")
    );
    r.sim.clock().advance(DAY);
    r.sim.act(recover()).await.unwrap();
    assert_eq!(
        r.subscription(&token).await["lineItems"][0]["expiryTime"],
        r.rfc3339(Period::ONE_MONTH.after(two_months + DAY))
    );

    // Paused, then resumed by a renewal.
    let pause = Action::Pause {
        token: token.clone(),
        duration: Period::ONE_MONTH,
    };
    r.sim.act(pause).await.unwrap();
    let s = r.subscription(&token).await;
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_PAUSED");
    assert_eq!(
        s["pausedStateContext"]["autoResumeTime"],
        r.rfc3339(Period::ONE_MONTH.after(r.now()))
    );
    r.sim.renew(&token).await.unwrap();

    // Cancelled (still entitled until expiry), restarted, cancelled again and expired.
    r.sim.cancel(&token).await.unwrap();
    let s = r.subscription(&token).await;
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_CANCELED");
    assert_eq!(
        s["lineItems"][0]["autoRenewingPlan"]["autoRenewEnabled"],
        false
    );
    assert_eq!(
        s["canceledStateContext"]["userInitiatedCancellation"]["cancelTime"],
        r.rfc3339(r.now())
    );
    r.sim
        .act(Action::Restart {
            token: token.clone(),
        })
        .await
        .unwrap();
    assert!(
        r.subscription(&token)
            .await
            .get("canceledStateContext")
            .is_none()
    );
    r.sim.expire(&token).await.unwrap();
    let s = r.subscription(&token).await;
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_EXPIRED");
    assert!(s["canceledStateContext"]["systemInitiatedCancellation"].is_object());

    assert_eq!(
        r.subscription_types(),
        vec![4, 2, 6, 1, 5, 1, 10, 2, 3, 7, 13]
    );
    // Each push is a Pub/Sub push request, acknowledged by the receiver's 200.
    for (got, delivery) in r.received().iter().zip(r.sim.deliveries()) {
        let m = &got.body["message"];
        assert_eq!(m["messageId"], m["message_id"]);
        assert_eq!(m["publishTime"], m["publish_time"]);
        assert_eq!(m["messageId"], delivery.message_id.as_str());
        assert_eq!(
            got.body["subscription"],
            "projects/play-sim/subscriptions/play-rtdn"
        );
        let n = got.notification();
        assert_eq!(
            n["subscriptionNotification"]["purchaseToken"],
            token.as_str()
        );
        assert!(
            n["subscriptionNotification"]
                .get("subscriptionId")
                .is_none()
        );
        assert_eq!(delivery.status, Some(200));
        assert!(delivery.acked);
    }
}

/// Decodes a push's OIDC token against the simulator's JWKS as a receiver would.
async fn verify_push_token(
    r: &Rig,
    authorization: Option<&str>,
) -> Result<Value, jsonwebtoken::errors::Error> {
    let jwks: JwkSet = r
        .http
        .get(format!("{}/oauth2/v3/certs", r.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = authorization.unwrap().strip_prefix("Bearer ").unwrap();
    let kid = jsonwebtoken::decode_header(token)?.kid.unwrap();
    let jwk = jwks.find(&kid).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[&r.endpoint]);
    v.set_issuer(&["https://accounts.google.com", "accounts.google.com"]);
    v.leeway = 0;
    Ok(jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &v)?.claims)
}

#[tokio::test]
async fn push_oidc_tokens_verify_against_the_served_jwks_and_forgeries_do_not() {
    // The system clock, so that jsonwebtoken's own expiry check is meaningful.
    let r = rig_on(SimClock::system()).await;
    let jwks: Value = r
        .http
        .get(format!("{}/oauth2/v3/certs", r.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(
        (&key["kty"], &key["alg"], &key["use"], &key["e"]),
        (
            &json!("RSA"),
            &json!("RS256"),
            &json!("sig"),
            &json!("AQAB")
        )
    );
    assert_eq!(key["kid"], r.sim.google_key_id());

    let o = r.sim.send_test_notification(PKG).await.unwrap();
    let got = r.received().pop().unwrap();
    assert_eq!(
        got.notification()["testNotification"],
        json!({"version": "1.0"})
    );
    assert_eq!(o.delivery.unwrap().status, Some(200));
    let claims = verify_push_token(&r, got.authorization.as_deref())
        .await
        .unwrap();
    assert_eq!(claims["email"], PUSH_EMAIL);
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["aud"], r.endpoint.as_str());
    assert_eq!(claims["azp"], claims["sub"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );

    let forged = |forge: Forge| {
        let sim = r.sim.clone();
        async move {
            let test = Action::TestNotification {
                package: PKG.into(),
            };
            sim.act_with(test, PushMode::Forge(forge)).await.unwrap();
        }
    };
    let last_auth = || r.received().pop().unwrap().authorization;
    forged(Forge::OtherKey).await;
    let err = verify_push_token(&r, last_auth().as_deref())
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidSignature
    );
    forged(Forge::Audience("https://elsewhere.example".into())).await;
    let err = verify_push_token(&r, last_auth().as_deref())
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidAudience
    );
    forged(Forge::Expired).await;
    let err = verify_push_token(&r, last_auth().as_deref())
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
    );
    forged(Forge::Issuer("https://evil.example".into())).await;
    let err = verify_push_token(&r, last_auth().as_deref())
        .await
        .unwrap_err();
    assert_eq!(*err.kind(), jsonwebtoken::errors::ErrorKind::InvalidIssuer);
    // These verify as tokens; the receiver must check the claims.
    forged(Forge::Email("someone@evil.example".into())).await;
    let claims = verify_push_token(&r, last_auth().as_deref()).await.unwrap();
    assert_eq!(claims["email"], "someone@evil.example");
    forged(Forge::EmailUnverified).await;
    let claims = verify_push_token(&r, last_auth().as_deref()).await.unwrap();
    assert_eq!(claims["email_verified"], false);
    forged(Forge::NoAuth).await;
    assert_eq!(last_auth(), None);

    // A re-send carries the same message id and body, with fresh authentication.
    let first = r.sim.deliveries()[0].clone();
    let again = r.sim.resend(&first.message_id).await.unwrap();
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.body, first.body);
    let got = r.received().pop().unwrap();
    assert_eq!(got.body, first.body);
    assert!(
        verify_push_token(&r, got.authorization.as_deref())
            .await
            .is_ok()
    );

    // The push reports the status the endpoint answered; only 102/200/201/202/204 acknowledge.
    r.receiver.status.store(500, Ordering::SeqCst);
    let o = r.sim.send_test_notification(PKG).await.unwrap();
    let d = o.delivery.unwrap();
    assert_eq!((d.status, d.acked), (Some(500), false));
    r.receiver.status.store(204, Ordering::SeqCst);
    let d = r.sim.resend(&d.message_id).await.unwrap();
    assert_eq!((d.status, d.acked), (Some(204), true));
}

/// A directory holding Google's own auth library for Python (`google-auth`, with `requests` for its
/// transport) from PyPI, installed on first use.
fn google_auth() -> std::path::PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-google-auth-2.40.3");
    if !dir.join("google").join("oauth2").exists() {
        let out = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&dir)
            .args(["google-auth==2.40.3", "requests==2.32.4"])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "installing google-auth from PyPI failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Runs a Python `script` with google-auth on its path, `case` as JSON on its standard input.
async fn with_google_auth(script: &'static str, case: Value) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .env("PYTHONPATH", google_auth())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(case.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn googles_own_auth_library_accepts_the_push_tokens_and_refuses_forgeries() {
    let r = rig_on(SimClock::system()).await;
    let mut tokens = Vec::new();
    let push = |forge: Option<Forge>| {
        let sim = r.sim.clone();
        async move {
            let test = Action::TestNotification {
                package: PKG.into(),
            };
            let o = match forge {
                Some(f) => sim.act_with(test, PushMode::Forge(f)).await,
                None => sim.act(test).await,
            };
            o.unwrap().delivery.unwrap().authorization.unwrap()
        }
    };
    tokens.push(push(None).await);
    tokens.push(push(Some(Forge::OtherKey)).await);
    tokens.push(push(Some(Forge::Audience("https://elsewhere.example".into()))).await);
    tokens.push(push(Some(Forge::Expired)).await);
    let tokens: Vec<String> = tokens
        .into_iter()
        .map(|t| t.trim_start_matches("Bearer ").to_owned())
        .collect();

    // As Google's Pub/Sub push guide verifies a push: google.oauth2.id_token against Google's
    // certificates (here the simulator's `oauth2/v1/certs`), the audience, then the issuer.
    let script = r#"
import json, sys
from google.auth.transport import requests as transport
from google.oauth2 import id_token
case = json.load(sys.stdin)
request = transport.Request()
for token in case["tokens"]:
    try:
        claims = id_token.verify_token(token, request, audience=case["audience"],
                                       certs_url=case["certs_url"])
        if claims["iss"] not in ("accounts.google.com", "https://accounts.google.com"):
            raise ValueError("wrong issuer")
        print("ok", claims["email"], claims["email_verified"])
    except Exception as e:
        print("refused", type(e).__name__)
"#;
    let case = json!({"tokens": tokens, "audience": r.endpoint,
        "certs_url": format!("{}/oauth2/v1/certs", r.url)});
    let out = with_google_auth(script, case).await;
    let printed = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines,
        [
            format!("ok {PUSH_EMAIL} True").as_str(),
            // Another key: no certificate of its kid.
            "refused MalformedError",
            // Another audience, then expired.
            "refused InvalidValue",
            "refused InvalidValue"
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And the other way: Google's library signs in with the simulator's key file (the JWT bearer
    // grant to its `token_uri`), and the token it gets reads the Play Developer API.
    let script = r#"
import json, sys
from google.auth.transport import requests as transport
from google.oauth2 import service_account
case = json.load(sys.stdin)
creds = service_account.Credentials.from_service_account_info(case["key_file"], scopes=[case["scope"]])
session = transport.AuthorizedSession(creds)
answer = session.get(case["url"])
print(answer.status_code, answer.json().get("kind"))
"#;
    let bought = r.sim.buy(Buy::new(PKG, "coins_100")).await.unwrap();
    let url = format!(
        "{}/androidpublisher/v3/applications/{PKG}/purchases/productsv2/tokens/{}",
        r.url,
        bought.purchase_token.unwrap()
    );
    let case = json!({"key_file": r.account.key_file(), "scope": SCOPE, "url": url});
    let out = with_google_auth(script, case).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200 androidpublisher#productPurchaseV2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        r.sim.token_calls(),
        1,
        "one token for the library's session"
    );
}

#[tokio::test]
async fn token_authenticated_pushes_carry_the_token_on_the_url() {
    let r = rig().await;
    r.sim
        .set_push(PKG, PushSettings::token(&r.endpoint, "s3cret/+="))
        .unwrap();
    r.sim.send_test_notification(PKG).await.unwrap();
    let got = r.received().pop().unwrap();
    assert_eq!(got.query.as_deref(), Some("token=s3cret%2F%2B%3D"));
    assert_eq!(got.authorization, None);
    let test = Action::TestNotification {
        package: PKG.into(),
    };
    r.sim
        .act_with(test, PushMode::Forge(Forge::WrongToken("guess".into())))
        .await
        .unwrap();
    assert_eq!(
        r.received().pop().unwrap().query.as_deref(),
        Some("token=guess")
    );
}

#[tokio::test]
async fn changes_can_be_left_unpushed_for_a_poller_to_find() {
    let r = rig().await;
    let (token, _) = r.subscribe().await;
    let o = r
        .sim
        .act_with(
            Action::Renew {
                token: token.clone(),
            },
            PushMode::Skip,
        )
        .await
        .unwrap();
    assert!(o.delivery.is_none());
    assert_eq!(
        o.notification.unwrap()["subscriptionNotification"]["notificationType"],
        2
    );
    r.sim.set_push_mode(PushMode::Skip);
    r.sim.cancel(&token).await.unwrap();
    r.sim.set_push_mode(PushMode::Send);
    r.sim.expire(&token).await.unwrap();
    assert_eq!(r.subscription_types(), vec![4, 13]);
    assert_eq!(r.sim.deliveries().len(), 2);
}

#[tokio::test]
async fn voided_purchases_page_by_token_and_filter_by_type_time_and_partial_refunds() {
    let r = rig().await;
    let mut voided_orders = Vec::new();
    for i in 0..5 {
        let token = r.buy(&format!("item_{i}")).await;
        let refund = Refund {
            source: VoidedSource::Google,
            reason: if i == 0 {
                VoidedReason::Chargeback
            } else {
                VoidedReason::Remorse
            },
            ..Refund::default()
        };
        let o = r.sim.refund(&token, refund).await.unwrap();
        voided_orders.push(o.order_id.unwrap());
        r.sim.clock().advance(60_000);
    }
    let (sub, _) = r.subscribe().await;
    r.sim.revoke(&sub).await.unwrap();
    let bulk = r
        .sim
        .buy(Buy {
            quantity: 3,
            ..Buy::new(PKG, "potion")
        })
        .await
        .unwrap()
        .purchase_token
        .unwrap();
    let partial = Refund {
        quantity: Some(1),
        ..Refund::default()
    };
    let o = r.sim.refund(&bulk, partial).await.unwrap();
    assert_eq!(
        o.notification.unwrap()["voidedPurchaseNotification"],
        json!({"purchaseToken": bulk, "orderId": o.order_id.unwrap(), "productType": 2, "refundType": 2})
    );
    let p = r.product(&bulk).await;
    assert_eq!(
        p["productLineItem"][0]["productOfferDetails"]["refundableQuantity"],
        2
    );
    assert_eq!(p["purchaseStateContext"]["purchaseState"], "PURCHASED");

    // One-time voids only, two a page.
    let mut pages = Vec::new();
    let mut query = "purchases/voidedpurchases?maxResults=2".to_owned();
    loop {
        let (status, body) = r.get(&query).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        pages.push(body.clone());
        match body["tokenPagination"]["nextPageToken"].as_str() {
            // The time window rides in the token: a new window is ignored.
            Some(next) => {
                query = format!("purchases/voidedpurchases?maxResults=2&startTime=1&token={next}")
            }
            None => break,
        }
    }
    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p["voidedPurchases"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![2, 2, 1]);
    assert!(pages[2].get("tokenPagination").is_none());
    let listed: Vec<Value> = pages
        .iter()
        .flat_map(|p| p["voidedPurchases"].as_array().unwrap().clone())
        .collect();
    let ids: Vec<&str> = listed
        .iter()
        .map(|v| v["orderId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        voided_orders.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let first = &listed[0];
    assert_eq!(first["kind"], "androidpublisher#voidedPurchase");
    assert_eq!(first["purchaseTimeMillis"], NOW.to_string());
    assert_eq!(first["voidedTimeMillis"], NOW.to_string());
    assert_eq!(
        (&first["voidedSource"], &first["voidedReason"]),
        (&json!(2), &json!(7))
    );
    assert_eq!(listed[1]["voidedReason"], 1);
    assert!(listed.iter().all(|v| v.get("voidedQuantity").is_none()));

    // type=1 adds the subscription's; the partial refund only when asked for.
    let (_, all) = r.get("purchases/voidedpurchases?type=1").await;
    let all = all["voidedPurchases"].as_array().unwrap().clone();
    assert_eq!(all.len(), 6);
    assert_eq!(all[5]["purchaseToken"], sub.as_str());
    let (_, with_partial) = r
        .get("purchases/voidedpurchases?includeQuantityBasedPartialRefund=true")
        .await;
    let with_partial = with_partial["voidedPurchases"].as_array().unwrap().clone();
    assert_eq!(with_partial.len(), 6);
    assert_eq!(with_partial[5]["purchaseToken"], bulk.as_str());
    assert_eq!(with_partial[5]["voidedQuantity"], 1);

    // The window filters on when the void was recorded.
    let (_, window) = r
        .get(&format!(
            "purchases/voidedpurchases?startTime={}&endTime={}",
            NOW + 60_000,
            NOW + 120_000
        ))
        .await;
    let ids: Vec<&str> = window["voidedPurchases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["orderId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![voided_orders[1].as_str(), voided_orders[2].as_str()]
    );
    let (_, empty) = r
        .get(&format!("purchases/voidedpurchases?endTime={}", NOW - 1))
        .await;
    assert!(empty.get("voidedPurchases").is_none(), "{empty}");
    assert_eq!(empty["pageInfo"]["totalResults"], 0);
}

#[tokio::test]
async fn purchases_left_unacknowledged_for_three_days_are_refunded() {
    let r = rig().await;
    let forgotten = r.buy("coins_100").await;
    let kept = r.buy("coins_500").await;
    let (status, _) = r
        .post(
            &format!("purchases/products/coins_500/tokens/{kept}:acknowledge"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (sub, sub_order) = r.subscribe().await;

    r.sim.clock().set(NOW + 3 * DAY - 1);
    assert!(r.sim.tick().await.is_empty());
    assert!(r.sim.voided_purchases().is_empty());
    r.sim.clock().set(NOW + 3 * DAY);
    let outcomes = r.sim.tick().await;
    assert_eq!(outcomes.len(), 2);

    let voided = r.sim.voided_purchases();
    assert_eq!(voided.len(), 2);
    let one_time = voided
        .iter()
        .find(|v| v["purchaseToken"] == forgotten.as_str())
        .unwrap();
    assert_eq!(
        (&one_time["voidedSource"], &one_time["voidedReason"]),
        (&json!(2), &json!(8))
    );
    let p = r.product(&forgotten).await;
    assert_eq!(p["purchaseStateContext"]["purchaseState"], "CANCELLED");
    assert_eq!(
        p["productLineItem"][0]["productOfferDetails"]["refundableQuantity"],
        0
    );
    assert_eq!(
        r.product(&kept).await["purchaseStateContext"]["purchaseState"],
        "PURCHASED"
    );
    let s = r.subscription(&sub).await;
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_EXPIRED");
    let voided_rtdns: Vec<Value> = r
        .notifications()
        .into_iter()
        .filter_map(|n| n.get("voidedPurchaseNotification").cloned())
        .collect();
    assert_eq!(voided_rtdns.len(), 2);
    assert!(
        voided_rtdns.contains(&json!({"purchaseToken": sub, "orderId": sub_order,
        "productType": 1, "refundType": 1}))
    );

    // Also noticed lazily by any API call, its RTDN sent in the background.
    let late = r.buy("gems").await;
    r.sim.clock().advance(3 * DAY);
    let (_, page) = r.get("purchases/voidedpurchases").await;
    let listed = page["voidedPurchases"].as_array().unwrap();
    assert!(listed.iter().any(|v| v["purchaseToken"] == late.as_str()));
    r.sim.settle().await;
    assert!(
        r.notifications()
            .iter()
            .any(|n| { n["voidedPurchaseNotification"]["purchaseToken"] == late.as_str() })
    );
}

#[tokio::test]
async fn a_subscription_expired_more_than_60_days_ago_answers_410() {
    let r = rig().await;
    let (token, _) = r.subscribe().await;
    let ack = format!("purchases/subscriptions/premium/tokens/{token}:acknowledge");
    assert_eq!(r.post(&ack, json!({})).await.0, StatusCode::NO_CONTENT);
    r.sim.expire(&token).await.unwrap();
    r.sim.clock().advance(60 * DAY);
    assert_eq!(
        r.subscription(&token).await["subscriptionState"],
        "SUBSCRIPTION_STATE_EXPIRED"
    );
    r.sim.clock().advance(1);
    let answer = r
        .get(&format!("purchases/subscriptionsv2/tokens/{token}"))
        .await;
    assert_google_error(
        &answer,
        410,
        "FAILED_PRECONDITION",
        "subscriptionPurchaseNoLongerAvailable",
    );
}

#[tokio::test]
async fn a_refund_review_records_the_first_answer_and_ignores_the_rest() {
    let r = rig().await;
    let token = r.buy("coins_100").await;
    let o = r.sim.request_refund_review(&token).await.unwrap();
    let pending = o.pending_refund_token.unwrap();
    let order_id = o.order_id.unwrap();
    let n = r.notifications().pop().unwrap();
    assert_eq!(
        n["pendingRefundReviewNotification"],
        json!({"version": "1.0", "pendingRefundToken": pending, "orderId": order_id,
            "refundReason": 2, "obfuscatedAccountId": "user-1"})
    );

    let path = format!("orders/{order_id}:reviewrefund");
    let good = json!({"pendingRefundToken": pending, "sampleContentProvided": false,
        "refundPreference": "DECLINE", "consumptionPercentageMilliunits": 75_000});
    for bad in [
        json!({"pendingRefundToken": pending, "sampleContentProvided": false}),
        json!({"pendingRefundToken": pending, "refundPreference": "DECLINE"}),
        json!({"sampleContentProvided": true, "refundPreference": "DECLINE"}),
        json!({"pendingRefundToken": "made-up", "sampleContentProvided": true, "refundPreference": "APPROVE"}),
        json!({"pendingRefundToken": pending, "sampleContentProvided": true,
            "refundPreference": "APPROVE", "consumptionPercentageMilliunits": 100_001}),
    ] {
        let answer = r.post(&path, bad).await;
        assert_google_error(&answer, 400, "INVALID_ARGUMENT", "badRequest");
    }
    assert!(r.sim.refund_reviews().is_empty());
    assert_eq!(r.post(&path, good).await.0, StatusCode::OK);
    let again = json!({"pendingRefundToken": pending, "sampleContentProvided": true,
        "refundPreference": "APPROVE"});
    assert_eq!(r.post(&path, again).await.0, StatusCode::OK);
    let reviews = r.sim.refund_reviews();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].order_id, order_id);
    assert_eq!(reviews[0].refund_preference, "DECLINE");
    assert!(!reviews[0].sample_content_provided);
    assert_eq!(reviews[0].consumption_percentage_milliunits, Some(75_000));
    assert_eq!(r.sim.ignored_refund_reviews(), 1);
    let answer = r
        .post("orders/GPA.0000-0000-0000-00000:reviewrefund", json!({}))
        .await;
    assert_google_error(&answer, 404, "NOT_FOUND", "notFound");
}

#[tokio::test]
async fn orders_are_read_one_by_one_or_in_a_batch_that_fails_whole() {
    let r = rig().await;
    let a = r
        .sim
        .buy(Buy {
            quantity: 2,
            ..Buy::new(PKG, "coins_100")
        })
        .await
        .unwrap()
        .order_id
        .unwrap();
    let (_, b) = r.subscribe().await;
    let (status, order) = r.get(&format!("orders/{a}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(order["orderId"], a.as_str());
    assert_eq!(order["state"], "PROCESSED");
    assert_eq!(order["salesChannel"], "IN_APP");
    assert_eq!(
        order["total"],
        json!({"currencyCode": "USD", "units": "1", "nanos": 980_000_000})
    );
    assert_eq!(
        order["lineItems"][0]["oneTimePurchaseDetails"]["quantity"],
        2
    );
    assert_eq!(
        order["orderHistory"]["processedEvent"]["eventTime"],
        r.rfc3339(NOW)
    );
    let (status, batch) = r
        .get(&format!("orders:batchGet?orderIds={a}&orderIds={b}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = batch["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["orderId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str(), b.as_str()]);
    assert_eq!(
        batch["orders"][1]["lineItems"][0]["subscriptionDetails"]["basePlanId"],
        "monthly"
    );
    let answer = r
        .get(&format!(
            "orders:batchGet?orderIds={a}&orderIds=GPA.0000-0000-0000-00000"
        ))
        .await;
    assert_google_error(&answer, 404, "NOT_FOUND", "notFound");
    let answer = r
        .get(&format!("orders:batchGet?orderIds={a}&orderIds={a}"))
        .await;
    assert_eq!(answer.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn plan_changes_link_tokens_and_play_store_resubscribes_carry_the_expired_one() {
    let r = rig().await;
    let (old, _) = r.subscribe().await;
    let to = Subscribe {
        period: "P1Y".parse().unwrap(),
        ..Subscribe::new(PKG, "premium", "yearly")
    };
    let o = r
        .sim
        .act(Action::ChangePlan {
            token: old.clone(),
            to,
        })
        .await
        .unwrap();
    let new = o.purchase_token.unwrap();
    let s = r.subscription(&new).await;
    assert_eq!(s["linkedPurchaseToken"], old.as_str());
    assert_eq!(s["lineItems"][0]["offerDetails"]["basePlanId"], "yearly");
    assert_eq!(
        s["externalAccountIdentifiers"]["obfuscatedExternalAccountId"],
        "user-1"
    );
    let s = r.subscription(&old).await;
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_EXPIRED");
    assert!(s["canceledStateContext"]["replacementCancellation"].is_object());
    let last = r.notifications().pop().unwrap();
    assert_eq!(
        last["subscriptionNotification"],
        json!({"version": "1.0", "notificationType": 4, "purchaseToken": new})
    );

    r.sim.expire(&new).await.unwrap();
    let o = r
        .sim
        .act(Action::Resubscribe { token: new.clone() })
        .await
        .unwrap();
    let again = o.purchase_token.unwrap();
    let s = r.subscription(&again).await;
    assert_eq!(
        s["outOfAppPurchaseContext"],
        json!({"expiredPurchaseToken": new,
            "expiredExternalAccountIdentifiers": {"obfuscatedExternalAccountId": "user-1"}})
    );
    assert!(s.get("externalAccountIdentifiers").is_none());
    assert!(s.get("linkedPurchaseToken").is_none());
    let (_, order) = r.get(&format!("orders/{}", o.order_id.unwrap())).await;
    assert_eq!(order["salesChannel"], "PLAY_STORE");

    // Acknowledging attaches the app's account and drops the out-of-app context.
    let ack = format!("purchases/subscriptions/premium/tokens/{again}:acknowledge");
    let body = json!({"externalAccountIds": {"obfuscatedAccountId": "user-1", "obfuscatedProfileId": "p-9"}});
    assert_eq!(r.post(&ack, body).await.0, StatusCode::NO_CONTENT);
    let s = r.subscription(&again).await;
    assert!(s.get("outOfAppPurchaseContext").is_none());
    assert_eq!(
        s["externalAccountIdentifiers"],
        json!({"obfuscatedExternalAccountId": "user-1", "obfuscatedExternalProfileId": "p-9"})
    );
    let ack = r.sim.acknowledgements().pop().unwrap();
    assert_eq!(
        (
            ack.obfuscated_account_id.as_deref(),
            ack.obfuscated_profile_id.as_deref()
        ),
        (Some("user-1"), Some("p-9"))
    );
}

#[tokio::test]
async fn revoking_through_the_api_ends_the_subscription_and_pushes_revoked() {
    let r = rig().await;
    let (token, order) = r.subscribe().await;
    let path = format!("purchases/subscriptionsv2/tokens/{token}:revoke");
    let answer = r.post(&path, json!({"revocationContext": {}})).await;
    assert_google_error(&answer, 400, "INVALID_ARGUMENT", "badRequest");
    let (status, body) = r
        .post(&path, json!({"revocationContext": {"fullRefund": {}}}))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    r.sim.settle().await;
    let s = r.subscription(&token).await;
    assert_eq!(s["subscriptionState"], "SUBSCRIPTION_STATE_EXPIRED");
    assert!(s["canceledStateContext"]["developerInitiatedCancellation"].is_object());
    assert_eq!(r.subscription_types(), vec![4, 12]);
    let (_, page) = r.get("purchases/voidedpurchases?type=1").await;
    assert_eq!(page["voidedPurchases"][0]["orderId"], order.as_str());
    assert_eq!(page["voidedPurchases"][0]["voidedSource"], 1);
    let answer = r
        .post(&path, json!({"revocationContext": {"fullRefund": {}}}))
        .await;
    assert_google_error(&answer, 400, "FAILED_PRECONDITION", "invalidPurchaseState");
}

#[tokio::test]
async fn injected_faults_answer_first_then_the_api_recovers() {
    let r = rig().await;
    let token = r.token().await;
    r.sim.fail_next(vec![(429, Some("2".into())), (503, None)]);
    let url = r.api("purchases/voidedpurchases");
    let res = r.http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.headers()["retry-after"], "2");
    let answer = (res.status(), res.json::<Value>().await.unwrap());
    assert_google_error(&answer, 429, "RESOURCE_EXHAUSTED", "rateLimitExceeded");
    let answer = r.send(r.http.get(&url), Some(&token)).await;
    assert_google_error(&answer, 503, "UNAVAILABLE", "backendError");
    assert_eq!(
        r.send(r.http.get(&url), Some(&token)).await.0,
        StatusCode::OK
    );
    let statuses: Vec<u16> = r.sim.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 503, 200]);
    // An unknown API path answers in Google's envelope and is logged.
    let answer = r
        .send(r.http.get(r.api("purchases/nothing")), Some(&token))
        .await;
    assert_google_error(&answer, 404, "NOT_FOUND", "notFound");
    assert_eq!(r.sim.calls().len(), 4);
}

#[tokio::test]
async fn the_control_surface_sets_up_acts_and_reports_over_http() {
    let r = rig().await;
    let control = |path: &str| format!("{}/sim/play/{path}", r.url);
    let post = |path: &str, body: Value| {
        let req = r.http.post(control(path)).json(&body);
        async move {
            let res = req.send().await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let (status, key_file) = post(
        "service-accounts",
        json!({"project_id": "ops", "packages": ["com.acme.other"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key_file}");
    assert_eq!(key_file["type"], "service_account");
    assert_eq!(key_file["token_uri"], format!("{}/token", r.url));
    let (status, _) = post(
        "packages",
        json!({"package": "com.acme.other", "push": {"endpoint": r.endpoint, "token": "abc"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, o) = post(
        "buy",
        json!({"package": "com.acme.other", "product_id": "coins", "quantity": 3, "push": "skip"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{o}");
    assert!(o.get("delivery").is_none());
    let token = o["purchase_token"].as_str().unwrap().to_owned();
    let (status, o) = post(
        "refund",
        json!({"purchase_token": token, "quantity": 2, "voided_reason": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{o}");
    assert_eq!(
        o["notification"]["voidedPurchaseNotification"]["refundType"],
        2
    );
    assert_eq!(o["delivery"]["status"], 200);
    assert_eq!(
        r.received().pop().unwrap().query.as_deref(),
        Some("token=abc")
    );
    let p: Value = r
        .http
        .get(control(&format!("purchases/{token}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        p["productLineItem"][0]["productOfferDetails"]["refundableQuantity"],
        1
    );
    let (status, err) = post("renew", json!({"purchase_token": token})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["error"]["code"], "not_a_subscription");
    let (status, err) = post("renew", json!({"purchase_token": "nope"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "unknown_purchase_token");
    let (status, o) = post(
        "subscribe",
        json!({"package": PKG, "product_id": "premium",
        "base_plan_id": "weekly", "period": "P1W", "push": {"forge": "no_auth"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r.received().pop().unwrap().authorization, None);
    let sub = o["purchase_token"].as_str().unwrap().to_owned();
    let cancel = |reason: &str| json!({"purchase_token": sub, "survey_reason": reason});
    let (status, _) = post("cancel", cancel("TOO_EXPENSIVE")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post("cancel", cancel("CANCEL_SURVEY_REASON_COST_RELATED")).await;
    assert_eq!(status, StatusCode::OK);
    let s = r.sim.subscription_purchase(&sub).unwrap();
    assert_eq!(
        s["canceledStateContext"]["userInitiatedCancellation"]["cancelSurveyResult"]["reason"],
        "CANCEL_SURVEY_REASON_COST_RELATED"
    );
    assert_eq!(s["lineItems"][0]["expiryTime"], r.rfc3339(NOW + 7 * DAY));
    let (status, clock) = post("clock", json!({"advance_ms": 1000})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(clock["now_ms"], NOW + 1000);
    let voided: Value = r
        .http
        .get(control("voided"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(voided[0]["voidedQuantity"], 2);
    assert_eq!(voided[0]["voidedReason"], 5);
}
