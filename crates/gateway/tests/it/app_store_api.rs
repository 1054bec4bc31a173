//! The App Store Server API client against the simulator's fake API: every call, its paging, its
//! retries and Apple's errors. The signed answers are verified with the simulator's root, so each test
//! checks what Apple would have said, not only that something came back. No database is needed except
//! for the TEST notification, which is delivered to a real gateway.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use gateway::{
    model::{App, AppSettings, AppStoreConfig, AppleEnvironment as ModelEnvironment, Secret},
    stores::StoreError,
    stores::apple::api::{
        AppStoreApi, ConsumptionRequest, ConsumptionRequestV1, DeliveryStatus, MAX_CUSTOMER_PAGES,
        NotificationHistoryRequest, Order, ProductType, RefundPreference, SubscriptionStatus,
        TransactionHistoryRequest,
    },
};
use gateway_core::{
    Timestamp,
    apple::{AppleEnvironment, SignedDataVerifier, TrustedRoots},
};
use serde_json::{Value, json};
use store_sim::apple::{
    api::{ApiKey, AppStoreServer},
    chain::{AppleChain, Notification},
};

use crate::helpers::{Backend, spawn_app};

const BUNDLE: &str = "edu.acme.app";
const SANDBOX: AppleEnvironment = AppleEnvironment::Sandbox;
const DAY: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The simulator's API on loopback, and an app configured to call it.
struct Sim {
    chain: Arc<AppleChain>,
    key: ApiKey,
    server: Arc<AppStoreServer>,
    url: String,
    app: App,
    api: AppStoreApi,
}

impl Sim {
    async fn start() -> Sim {
        let chain = Arc::new(AppleChain::generate().unwrap());
        let key = ApiKey::generate("69a6de70-03db-47e3-e053-5b8c7c11a4d1", "2X9R4HXF34").unwrap();
        let server = AppStoreServer::new(chain.clone(), key.clone(), BUNDLE);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = server.router();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let app = app_for(&chain, &key, &url, BUNDLE);
        Sim {
            chain,
            key,
            server,
            url,
            app,
            api: AppStoreApi::new(reqwest::Client::new()),
        }
    }

    fn verifier(&self) -> SignedDataVerifier {
        SignedDataVerifier::new(
            TrustedRoots::from_pems(&[self.chain.root_pem()]).unwrap(),
            BUNDLE,
            SANDBOX,
            None,
        )
    }

    /// The transaction ids of signed transactions, each verified as Apple-signed for the app.
    fn ids(&self, signed: &[String]) -> Vec<String> {
        let verifier = self.verifier();
        signed
            .iter()
            .map(|jws| {
                verifier
                    .verify_transaction(jws, Timestamp::from_millis(now_ms()))
                    .expect("signed by the simulated App Store")
                    .transaction_id
                    .unwrap()
            })
            .collect()
    }

    fn signed_payload(&self, n: &Notification<'_>) -> String {
        let body: Value = serde_json::from_str(&self.chain.notification(n).unwrap()).unwrap();
        body["signedPayload"].as_str().unwrap().to_owned()
    }
}

/// An app (as the gateway stores it) whose App Store settings point at the simulator.
fn app_for(chain: &AppleChain, key: &ApiKey, url: &str, bundle: &str) -> App {
    App {
        id: "acme".parse().unwrap(),
        name: "Acme Courses".into(),
        settings: AppSettings {
            app_store: Some(AppStoreConfig {
                bundle_id: bundle.into(),
                app_apple_id: None,
                environment: ModelEnvironment::Sandbox,
                issuer_id: Some(key.issuer_id.clone()),
                key_id: Some(key.key_id.clone()),
                private_key_pem: Some(Secret::new(key.private_key_pem.clone())),
                root_certificates_pem: Some(vec![chain.root_pem().to_owned()]),
                api_base_url: Some(url.into()),
                shared_secret: None,
                verify_receipt_url: None,
                verify_receipt_sandbox_url: None,
                answer_consumption_requests: false,
                finish_transactions: false,
            }),
            play_store: None,
            stripe: None,
            revenuecat: None,
            customer_auth: None,
            embargoed_countries: Vec::new(),
            transfer_policy: Default::default(),
            account_salt: Secret::new("account-salt-for-tests"),
        },
        created_at: crate::helpers::t0(),
        updated_at: crate::helpers::t0(),
    }
}

/// A JWSTransactionDecodedPayload; `extra` adds or replaces fields.
fn transaction(id: &str, original: &str, sku: &str, kind: &str, at: i64, extra: Value) -> Value {
    let mut t = json!({
        "transactionId": id, "originalTransactionId": original, "bundleId": BUNDLE, "productId": sku,
        "purchaseDate": at, "originalPurchaseDate": at, "signedDate": at, "environment": "Sandbox",
        "inAppOwnershipType": "PURCHASED", "type": kind, "quantity": 1, "transactionReason": "PURCHASE",
        "storefront": "USA", "price": 9990, "currency": "USD"
    });
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    t
}

fn subscription(id: &str, original: &str, group: &str, at: i64, expires: i64) -> Value {
    transaction(
        id,
        original,
        "edu.acme.premium",
        "Auto-Renewable Subscription",
        at,
        json!({"subscriptionGroupIdentifier": group, "expiresDate": expires}),
    )
}

/// The code and details of a refusal.
#[track_caller]
fn refusal(result: Result<impl std::fmt::Debug, StoreError>) -> (&'static str, Value) {
    match result {
        Err(StoreError { code, details, .. }) => (code, details.unwrap_or_default()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn transaction_history_is_followed_to_the_last_page() {
    let sim = Sim::start().await;
    sim.server.set_page_size(2);
    let t = now_ms() - 200 * DAY;
    let month = 30 * DAY;
    // One customer: a subscription renewed four times, a course, and coins, in two lineages and more.
    for n in 0..5 {
        let start = t + n * month;
        sim.server.put_account_transaction(
            "learner",
            subscription(&format!("500{n}"), "5000", "premium", start, start + month),
        );
    }
    sim.server.put_account_transaction(
        "learner",
        transaction(
            "5100",
            "5100",
            "edu.acme.cs101",
            "Non-Consumable",
            t + DAY,
            json!({}),
        ),
    );
    sim.server.put_account_transaction(
        "learner",
        transaction(
            "5200",
            "5200",
            "edu.acme.coins100",
            "Consumable",
            t + 2 * DAY,
            json!({"revocationDate": t + 45 * DAY, "revocationReason": 0, "signedDate": t + 45 * DAY}),
        ),
    );
    // Another customer's purchase is never part of this history.
    sim.server.put_transaction(transaction(
        "9100",
        "9100",
        "edu.acme.cs101",
        "Non-Consumable",
        t,
        json!({}),
    ));

    let all = TransactionHistoryRequest::default();
    let first = sim
        .api
        .transaction_history(&sim.app, SANDBOX, "5002", None, &all)
        .await
        .unwrap();
    assert!(first.has_more);
    assert_eq!(first.signed_transactions.len(), 2);
    assert_eq!(first.bundle_id.as_deref(), Some(BUNDLE));
    assert_eq!(first.environment.as_deref(), Some("Sandbox"));
    assert_eq!(sim.ids(&first.signed_transactions), ["5000", "5100"]);

    let calls = sim.server.calls();
    let history = sim
        .api
        .transaction_history_all(&sim.app, SANDBOX, "5100", &all)
        .await
        .unwrap();
    assert_eq!(
        sim.server.calls() - calls,
        4,
        "seven transactions, two a page"
    );
    assert!(!history.has_more);
    assert!(history.revision.is_some());
    assert_eq!(
        sim.ids(&history.signed_transactions),
        ["5000", "5100", "5001", "5200", "5002", "5003", "5004"],
        "oldest change first; the refunded coins moved to their refund"
    );

    // The same filters on every page: newest first, subscriptions only.
    let subscriptions = TransactionHistoryRequest {
        sort: Some(Order::Descending),
        product_types: vec![ProductType::AutoRenewable],
        ..Default::default()
    };
    let newest_first = sim
        .api
        .transaction_history_all(&sim.app, SANDBOX, "5000", &subscriptions)
        .await
        .unwrap();
    assert_eq!(
        sim.ids(&newest_first.signed_transactions),
        ["5004", "5003", "5002", "5001", "5000"]
    );
    let revoked = TransactionHistoryRequest {
        revoked: Some(true),
        ..Default::default()
    };
    let refunded = sim
        .api
        .transaction_history_all(&sim.app, SANDBOX, "5000", &revoked)
        .await
        .unwrap();
    assert_eq!(sim.ids(&refunded.signed_transactions), ["5200"]);
    let window = TransactionHistoryRequest {
        start_date: Some(t + DAY),
        end_date: Some(t + month + 1),
        product_ids: vec!["edu.acme.premium".into(), "edu.acme.cs101".into()],
        ..Default::default()
    };
    let windowed = sim
        .api
        .transaction_history_all(&sim.app, SANDBOX, "5000", &window)
        .await
        .unwrap();
    assert_eq!(sim.ids(&windowed.signed_transactions), ["5100", "5001"]);

    assert_eq!(
        refusal(
            sim.api
                .transaction_history_all(&sim.app, SANDBOX, "424242", &all)
                .await
        )
        .0,
        "transaction_not_found"
    );
    let (code, details) = refusal(
        sim.api
            .transaction_history(&sim.app, SANDBOX, "5000", Some("not-a-revision"), &all)
            .await,
    );
    assert_eq!(code, "store_refused");
    assert_eq!(details["apple_error_code"], 4000005);
    assert_eq!(
        refusal(
            sim.api
                .transaction_history(&sim.app, SANDBOX, "50/../00", None, &all)
                .await
        )
        .0,
        "invalid_transaction_id",
        "an id that would change the path is refused before any request"
    );
}

#[tokio::test]
async fn a_server_that_never_stops_paging_is_stopped() {
    let sim = Sim::start().await;
    sim.server.put_transaction(transaction(
        "6000",
        "6000",
        "edu.acme.cs101",
        "Non-Consumable",
        now_ms(),
        json!({}),
    ));
    sim.server.set_broken_paging(true);
    let calls = sim.server.calls();
    let (code, _) = refusal(
        sim.api
            .transaction_history_all(&sim.app, SANDBOX, "6000", &Default::default())
            .await,
    );
    assert_eq!(code, "store_paging_runaway");
    assert_eq!(sim.server.calls() - calls, MAX_CUSTOMER_PAGES as u64);
    let (code, _) = refusal(sim.api.refund_history_all(&sim.app, SANDBOX, "6000").await);
    assert_eq!(code, "store_paging_runaway");
}

#[tokio::test]
async fn subscription_statuses_come_by_group_with_their_latest_transaction() {
    let sim = Sim::start().await;
    let now = now_ms();
    let month = 30 * DAY;
    // Group "premium": one subscription renewed (active), one expired in billing retry.
    sim.server.put_account_transaction(
        "learner",
        subscription("7000", "7000", "premium", now - 2 * month, now - month),
    );
    sim.server.put_account_transaction(
        "learner",
        subscription("7001", "7000", "premium", now - month, now + month),
    );
    sim.server.put_account_transaction(
        "learner",
        subscription("7100", "7100", "premium", now - 2 * month, now - DAY),
    );
    sim.server.put_renewal_info(json!({"originalTransactionId": "7100", "productId": "edu.acme.premium", "autoRenewStatus": 1,
        "isInBillingRetryPeriod": true, "gracePeriodExpiresDate": now + DAY, "signedDate": now, "environment": "Sandbox"}));
    // Group "tutoring": refunded.
    let mut refunded = subscription("7200", "7200", "tutoring", now - DAY, now + month);
    refunded["revocationDate"] = now.into();
    refunded["revocationReason"] = 1.into();
    sim.server.put_account_transaction("learner", refunded);
    // Not a subscription: not reported.
    sim.server.put_account_transaction(
        "learner",
        transaction(
            "7300",
            "7300",
            "edu.acme.cs101",
            "Non-Consumable",
            now,
            json!({}),
        ),
    );

    let statuses = sim
        .api
        .subscription_statuses(&sim.app, SANDBOX, "7300", &[])
        .await
        .unwrap();
    assert_eq!(statuses.bundle_id.as_deref(), Some(BUNDLE));
    let groups: Vec<&str> = statuses
        .data
        .iter()
        .map(|g| g.subscription_group_identifier.as_str())
        .collect();
    assert_eq!(groups, ["premium", "tutoring"]);
    let premium = &statuses.data[0].last_transactions;
    let seen: Vec<(&str, Option<SubscriptionStatus>)> = premium
        .iter()
        .map(|l| (l.original_transaction_id.as_str(), l.status()))
        .collect();
    assert_eq!(
        seen,
        [
            ("7000", Some(SubscriptionStatus::Active)),
            ("7100", Some(SubscriptionStatus::BillingGracePeriod))
        ]
    );
    assert_eq!(
        sim.ids(&[premium[0].signed_transaction_info.clone()]),
        ["7001"],
        "the latest renewal"
    );
    let verifier = sim.verifier();
    let renewal = verifier
        .verify_renewal_info(&premium[1].signed_renewal_info, Timestamp::from_millis(now))
        .unwrap();
    assert_eq!(renewal.is_in_billing_retry_period, Some(true));
    assert_eq!(renewal.grace_period_expires_date, Some(now + DAY));
    let made_up = verifier
        .verify_renewal_info(&premium[0].signed_renewal_info, Timestamp::from_millis(now))
        .unwrap();
    assert_eq!(made_up.original_transaction_id.as_deref(), Some("7000"));
    assert_eq!(made_up.renewal_date, Some(now + month));
    assert_eq!(
        statuses.data[1].last_transactions[0].status(),
        Some(SubscriptionStatus::Revoked)
    );

    let active = sim
        .api
        .subscription_statuses(&sim.app, SANDBOX, "7001", &[SubscriptionStatus::Active])
        .await
        .unwrap();
    assert_eq!(active.data.len(), 1);
    assert_eq!(
        active.data[0].last_transactions[0].original_transaction_id,
        "7000"
    );
    assert_eq!(
        refusal(
            sim.api
                .subscription_statuses(&sim.app, SANDBOX, "999", &[])
                .await
        )
        .0,
        "transaction_not_found"
    );
}

#[tokio::test]
async fn refund_history_pages_oldest_refund_first() {
    let sim = Sim::start().await;
    sim.server.set_page_size(2);
    let t = now_ms() - 10 * DAY;
    let refunded = |id: &str, refunded_at: i64| {
        transaction(
            id,
            id,
            "edu.acme.coins100",
            "Consumable",
            t,
            json!({"revocationDate": refunded_at, "revocationReason": 0, "revocationType": "REFUND_FULL", "signedDate": refunded_at}),
        )
    };
    sim.server
        .put_account_transaction("learner", refunded("8000", t + 3 * DAY));
    sim.server
        .put_account_transaction("learner", refunded("8001", t + DAY));
    sim.server
        .put_account_transaction("learner", refunded("8002", t + 2 * DAY));
    sim.server.put_account_transaction(
        "learner",
        transaction(
            "8003",
            "8003",
            "edu.acme.cs101",
            "Non-Consumable",
            t,
            json!({}),
        ),
    );

    let first = sim
        .api
        .refund_history(&sim.app, SANDBOX, "8003", None)
        .await
        .unwrap();
    assert!(first.has_more);
    assert_eq!(sim.ids(&first.signed_transactions), ["8001", "8002"]);
    let all = sim
        .api
        .refund_history_all(&sim.app, SANDBOX, "8003")
        .await
        .unwrap();
    assert!(!all.has_more);
    assert_eq!(sim.ids(&all.signed_transactions), ["8001", "8002", "8000"]);

    // A later refund of another purchase joins the end.
    sim.server.put_account_transaction(
        "learner",
        transaction(
            "8003",
            "8003",
            "edu.acme.cs101",
            "Non-Consumable",
            t,
            json!({"revocationDate": t + 4 * DAY, "revocationReason": 1}),
        ),
    );
    let again = sim
        .api
        .refund_history_all(&sim.app, SANDBOX, "8000")
        .await
        .unwrap();
    assert_eq!(
        sim.ids(&again.signed_transactions),
        ["8001", "8002", "8000", "8003"]
    );
}

#[tokio::test]
async fn notification_history_is_filtered_and_paged() {
    let sim = Sim::start().await;
    sim.server.set_page_size(2);
    let now = now_ms();
    let course = transaction(
        "9000",
        "9000",
        "edu.acme.cs101",
        "Non-Consumable",
        now - 5 * DAY,
        json!({}),
    );
    sim.server.put_transaction(course.clone());
    let signed_course = sim.chain.sign(&course).unwrap();
    let notify = |kind: &'static str,
                  subtype: Option<&'static str>,
                  uuid: &'static str,
                  at: i64,
                  tx: Option<String>| {
        sim.signed_payload(&Notification {
            notification_type: kind,
            subtype,
            uuid,
            signed_date: at,
            bundle_id: BUNDLE,
            environment: "Sandbox",
            signed_transaction: tx,
            ..Default::default()
        })
    };
    let sent = [
        notify(
            "ONE_TIME_CHARGE",
            None,
            "n-1",
            now - 5 * DAY,
            Some(signed_course.clone()),
        ),
        notify(
            "SUBSCRIBED",
            Some("INITIAL_BUY"),
            "n-2",
            now - 4 * DAY,
            None,
        ),
        notify("REFUND", None, "n-3", now - 3 * DAY, Some(signed_course)),
        notify(
            "SUBSCRIBED",
            Some("RESUBSCRIBE"),
            "n-4",
            now - 2 * DAY,
            None,
        ),
        notify("DID_RENEW", None, "n-5", now - DAY, None),
    ];
    for (i, jws) in sent.iter().enumerate() {
        if i == 3 {
            sim.server
                .record_notification_with(jws, &[(now - 2 * DAY, "NO_RESPONSE")])
                .unwrap();
        } else {
            sim.server.record_notification(jws).unwrap();
        }
    }
    // Outside the time span asked about.
    sim.server
        .record_notification(&notify("DID_RENEW", None, "n-0", now - 20 * DAY, None))
        .unwrap();
    let uuids = |items: &[gateway::stores::apple::api::NotificationHistoryItem]| -> Vec<String> {
        let verifier = sim.verifier();
        items
            .iter()
            .map(|i| {
                verifier
                    .verify_notification(&i.signed_payload, Timestamp::from_millis(now))
                    .unwrap()
                    .notification_uuid
            })
            .collect()
    };
    let span = NotificationHistoryRequest {
        start_date: now - 10 * DAY,
        end_date: now,
        ..Default::default()
    };

    let first = sim
        .api
        .notification_history(&sim.app, SANDBOX, None, &span)
        .await
        .unwrap();
    assert!(first.has_more && first.pagination_token.is_some());
    assert_eq!(uuids(&first.notification_history), ["n-1", "n-2"]);
    assert_eq!(
        first.notification_history[0].send_attempts[0].send_attempt_result,
        "SUCCESS"
    );
    let calls = sim.server.calls();
    let all = sim
        .api
        .notification_history_all(&sim.app, SANDBOX, &span, 10)
        .await
        .unwrap();
    assert_eq!(sim.server.calls() - calls, 3);
    assert_eq!(uuids(&all), ["n-1", "n-2", "n-3", "n-4", "n-5"]);

    let subscribed = NotificationHistoryRequest {
        notification_type: Some("SUBSCRIBED".into()),
        notification_subtype: Some("RESUBSCRIBE".into()),
        ..span.clone()
    };
    let found = sim
        .api
        .notification_history_all(&sim.app, SANDBOX, &subscribed, 10)
        .await
        .unwrap();
    assert_eq!(uuids(&found), ["n-4"]);
    let of_customer = NotificationHistoryRequest {
        transaction_id: Some("9000".into()),
        ..span.clone()
    };
    let found = sim
        .api
        .notification_history_all(&sim.app, SANDBOX, &of_customer, 10)
        .await
        .unwrap();
    assert_eq!(uuids(&found), ["n-1", "n-3"]);
    let failures = NotificationHistoryRequest {
        only_failures: Some(true),
        ..span.clone()
    };
    let found = sim
        .api
        .notification_history_all(&sim.app, SANDBOX, &failures, 10)
        .await
        .unwrap();
    assert_eq!(uuids(&found), ["n-4"]);
    assert_eq!(found[0].send_attempts[0].send_attempt_result, "NO_RESPONSE");

    // A page cap the caller chooses.
    assert_eq!(
        refusal(
            sim.api
                .notification_history_all(&sim.app, SANDBOX, &span, 2)
                .await
        )
        .0,
        "store_paging_runaway"
    );
    // Filters Apple refuses together are refused before any request.
    let calls = sim.server.calls();
    let both = NotificationHistoryRequest {
        notification_type: Some("REFUND".into()),
        transaction_id: Some("9000".into()),
        ..span.clone()
    };
    assert_eq!(
        refusal(
            sim.api
                .notification_history(&sim.app, SANDBOX, None, &both)
                .await
        )
        .0,
        "invalid_notification_filter"
    );
    assert_eq!(sim.server.calls(), calls);
    // Apple's own refusals keep Apple's code.
    let backwards = NotificationHistoryRequest {
        start_date: now,
        end_date: now - DAY,
        ..Default::default()
    };
    let (code, details) = refusal(
        sim.api
            .notification_history(&sim.app, SANDBOX, None, &backwards)
            .await,
    );
    assert_eq!(
        (code, &details["apple_error_code"]),
        ("store_refused", &json!(4000013))
    );
    let (_, details) = refusal(
        sim.api
            .notification_history(&sim.app, SANDBOX, Some("expired-token"), &span)
            .await,
    );
    assert_eq!(details["apple_error_code"], 4000014);
}

#[tokio::test]
async fn consumption_information_is_sent_in_apples_shape() {
    let sim = Sim::start().await;
    sim.server.put_transaction(transaction(
        "9500",
        "9500",
        "edu.acme.coins100",
        "Consumable",
        now_ms(),
        json!({}),
    ));
    let request = ConsumptionRequest {
        customer_consented: true,
        sample_content_provided: false,
        delivery_status: DeliveryStatus::Delivered,
        consumption_percentage: Some(25_000),
        refund_preference: Some(RefundPreference::GrantProrated),
    };
    sim.api
        .send_consumption_information(&sim.app, SANDBOX, "9500", &request)
        .await
        .unwrap();
    let v1 = ConsumptionRequestV1 {
        customer_consented: Some(true),
        consumption_status: Some(2),
        platform: Some(1),
        sample_content_provided: Some(true),
        delivery_status: Some(0),
        app_account_token: Some(String::new()),
        account_tenure: Some(3),
        play_time: Some(2),
        lifetime_dollars_refunded: Some(0),
        lifetime_dollars_purchased: Some(1),
        user_status: Some(1),
        refund_preference: None,
    };
    sim.api
        .send_consumption_data(&sim.app, SANDBOX, "9500", &v1)
        .await
        .unwrap();
    let received = sim.server.consumption_requests();
    assert_eq!(received.len(), 2);
    assert_eq!(
        (received[0].version, received[0].transaction_id.as_str()),
        (2, "9500")
    );
    assert_eq!(
        received[0].body,
        json!({"customerConsented": true, "sampleContentProvided": false, "deliveryStatus": "DELIVERED",
            "consumptionPercentage": 25000, "refundPreference": "GRANT_PRORATED"})
    );
    assert_eq!(received[1].version, 1);
    assert_eq!(received[1].body["playTime"], 2);
    assert!(received[1].body.get("refundPreference").is_none());

    // Apple refuses consumption data the customer did not consent to share: its code, stated.
    let (code, details) = refusal(
        sim.api
            .send_consumption_information(
                &sim.app,
                SANDBOX,
                "9500",
                &ConsumptionRequest {
                    customer_consented: false,
                    ..request.clone()
                },
            )
            .await,
    );
    assert_eq!(code, "store_refused");
    assert_eq!(details["http_status"], 400);
    assert_eq!(details["apple_error_code"], 4000035);
    assert_eq!(
        details["apple_error_message"],
        "Invalid customer consented."
    );
    assert_eq!(
        refusal(
            sim.api
                .send_consumption_information(&sim.app, SANDBOX, "9999", &request)
                .await
        )
        .0,
        "transaction_not_found"
    );
    assert_eq!(
        sim.server.consumption_requests().len(),
        2,
        "refused requests are not kept"
    );
}

#[tokio::test]
async fn throttling_and_failures_are_retried_and_then_reported() {
    let sim = Sim::start().await;
    sim.server.put_transaction(subscription(
        "9700",
        "9700",
        "premium",
        now_ms(),
        now_ms() + DAY,
    ));
    // Apple's Retry-After is a Unix time in milliseconds.
    let retry_at = now_ms() + 400;
    sim.server.fail_next(vec![
        (429, Some(retry_at.to_string())),
        (503, None),
        (500, None),
    ]);
    let calls = sim.server.calls();
    let started = Instant::now();
    let statuses = sim
        .api
        .subscription_statuses(&sim.app, SANDBOX, "9700", &[])
        .await
        .unwrap();
    assert_eq!(sim.server.calls() - calls, 4);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited as Retry-After said"
    );
    assert_eq!(
        statuses.data[0].last_transactions[0].status(),
        Some(SubscriptionStatus::Active)
    );

    // Retries are bounded: the caller hears that the store failed, or throttles.
    sim.server.fail_next(vec![(500, None); 4]);
    let calls = sim.server.calls();
    assert_eq!(
        refusal(
            sim.api
                .refund_history(&sim.app, SANDBOX, "9700", None)
                .await
        )
        .0,
        "store_unavailable"
    );
    assert_eq!(sim.server.calls() - calls, 4);
    sim.server.fail_next(vec![(429, Some("0".into())); 4]);
    assert_eq!(
        refusal(sim.api.request_test_notification(&sim.app, SANDBOX).await).0,
        "store_rate_limited"
    );
    // Nothing left over: the next call goes through.
    assert!(
        sim.api
            .transaction_info(&sim.app, SANDBOX, "9700")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_wrong_bearer_token_is_refused_on_every_endpoint() {
    let sim = Sim::start().await;
    sim.server.put_transaction(transaction(
        "9800",
        "9800",
        "edu.acme.coins100",
        "Consumable",
        now_ms(),
        json!({}),
    ));
    // A key Apple never issued to this team, and the right key for another bundle.
    let stranger = ApiKey::generate(&sim.key.issuer_id, &sim.key.key_id).unwrap();
    let strangers = [
        app_for(&sim.chain, &stranger, &sim.url, BUNDLE),
        app_for(&sim.chain, &sim.key, &sim.url, "com.other.app"),
    ];
    for app in &strangers {
        let refused = [
            refusal(
                sim.api
                    .transaction_history(app, SANDBOX, "9800", None, &Default::default())
                    .await,
            ),
            refusal(
                sim.api
                    .subscription_statuses(app, SANDBOX, "9800", &[])
                    .await,
            ),
            refusal(sim.api.refund_history(app, SANDBOX, "9800", None).await),
            refusal(
                sim.api
                    .notification_history(
                        app,
                        SANDBOX,
                        None,
                        &NotificationHistoryRequest {
                            start_date: now_ms() - DAY,
                            end_date: now_ms(),
                            ..Default::default()
                        },
                    )
                    .await,
            ),
            refusal(
                sim.api
                    .send_consumption_information(
                        app,
                        SANDBOX,
                        "9800",
                        &ConsumptionRequest {
                            customer_consented: true,
                            sample_content_provided: false,
                            delivery_status: DeliveryStatus::Delivered,
                            consumption_percentage: None,
                            refund_preference: None,
                        },
                    )
                    .await,
            ),
            refusal(sim.api.request_test_notification(app, SANDBOX).await),
        ];
        for (code, _) in refused {
            assert_eq!(code, "store_not_configured");
        }
    }
    assert!(sim.server.consumption_requests().is_empty());

    // Raw requests without a valid token get Apple's bare 401.
    let http = reqwest::Client::new();
    let routes = [
        (reqwest::Method::GET, "/inApps/v1/transactions/9800"),
        (reqwest::Method::GET, "/inApps/v2/history/9800"),
        (reqwest::Method::GET, "/inApps/v1/subscriptions/9800"),
        (reqwest::Method::GET, "/inApps/v2/refund/lookup/9800"),
        (reqwest::Method::POST, "/inApps/v1/notifications/history"),
        (reqwest::Method::POST, "/inApps/v1/notifications/test"),
        (reqwest::Method::GET, "/inApps/v1/notifications/test/abc"),
        (
            reqwest::Method::PUT,
            "/inApps/v1/transactions/consumption/9800",
        ),
        (
            reqwest::Method::PUT,
            "/inApps/v2/transactions/consumption/9800",
        ),
    ];
    for (method, path) in routes {
        for auth in [None, Some("Bearer not.a.jwt")] {
            let mut req = http
                .request(method.clone(), format!("{}{path}", sim.url))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status().as_u16(), 401, "{method} {path} with {auth:?}");
            assert!(res.text().await.unwrap().is_empty());
        }
    }
}

#[tokio::test]
async fn a_test_notification_reaches_the_gateway_and_its_status_says_so() {
    let sim = Sim::start().await;
    // No notification URL in App Store Connect: Apple's 4040007.
    let (code, _) = refusal(sim.api.request_test_notification(&sim.app, SANDBOX).await);
    assert_eq!(code, "store_not_configured");

    let gateway = spawn_app(Backend::Sqlite).await.unwrap();
    gateway.create_app("acme").await;
    gateway
        .patch(
            "/v1/apps/acme",
            json!({"app_store": {"bundle_id": BUNDLE, "environment": "Sandbox", "root_certificates_pem": [sim.chain.root_pem()]}}),
        )
        .await
        .expect(200);
    let inbound = gateway.count("inbound").await;
    sim.server.set_notification_url(&format!(
        "{}/v1/apps/acme/notifications/app_store",
        gateway.addr
    ));
    let token = sim
        .api
        .request_test_notification(&sim.app, SANDBOX)
        .await
        .unwrap();
    let status = wait_for_attempt(&sim, &token).await;
    assert_eq!(status.send_attempts[0].send_attempt_result, "SUCCESS");
    let payload = sim
        .verifier()
        .verify_notification(&status.signed_payload, Timestamp::from_millis(now_ms()))
        .unwrap();
    assert_eq!(payload.notification_type, "TEST");
    assert_eq!(
        gateway.count("inbound").await,
        inbound + 1,
        "the gateway kept it"
    );

    // A URL where nothing listens: Apple records the failed attempt.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/notifications", closed.local_addr().unwrap());
    drop(closed);
    sim.server.set_notification_url(&dead);
    let failed = sim
        .api
        .request_test_notification(&sim.app, SANDBOX)
        .await
        .unwrap();
    assert_ne!(failed, token);
    let status = wait_for_attempt(&sim, &failed).await;
    assert_eq!(status.send_attempts[0].send_attempt_result, "NO_RESPONSE");

    // Both are in the notification history; only the second failed.
    let tests = NotificationHistoryRequest {
        start_date: now_ms() - DAY,
        end_date: now_ms() + 60_000,
        notification_type: Some("TEST".into()),
        ..Default::default()
    };
    let history = sim
        .api
        .notification_history_all(&sim.app, SANDBOX, &tests, 5)
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    let failures = sim
        .api
        .notification_history_all(
            &sim.app,
            SANDBOX,
            &NotificationHistoryRequest {
                only_failures: Some(true),
                ..tests
            },
            5,
        )
        .await
        .unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].signed_payload, status.signed_payload);

    assert_eq!(
        refusal(
            sim.api
                .test_notification_status(&sim.app, SANDBOX, "ce3af791-365e-4c60-841b-1674b43c1609")
                .await
        )
        .0,
        "test_notification_not_found"
    );
    gateway.stop().await;
}

/// Polls Get Test Notification Status until Apple has tried to deliver it.
async fn wait_for_attempt(
    sim: &Sim,
    token: &str,
) -> gateway::stores::apple::api::TestNotificationStatus {
    for _ in 0..100 {
        let status = sim
            .api
            .test_notification_status(&sim.app, SANDBOX, token)
            .await
            .unwrap();
        if !status.send_attempts.is_empty() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the test notification was never attempted");
}
