//! Whole stories driven through the simulated App Store (`store_sim::apple::store`): Apple's actions
//! reach the gateway only as signed notifications, and the customer's snapshot and outbox follow.
//! Plus the `purchase-gateway sim` command against a running gateway.

use std::{sync::Arc, time::Duration};

use gateway_core::{Clock, Timestamp};
use serde_json::{Value, json};
use store_sim::{
    SimClock,
    apple::{
        api::{ApiKey, AppStoreServer},
        chain::AppleChain,
        store::{AppleStore, ExpirySubtype, Period, ProductKind, Purchase, RevocationReason},
    },
};

use crate::{both, helpers::*};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// The simulated App Store of app `acme`, on the gateway's clock.
pub(crate) struct Sim {
    pub(crate) store: Arc<AppleStore>,
    pub(crate) server: Arc<AppStoreServer>,
    key: ApiKey,
    url: String,
    /// The app's `app_store` settings as opened.
    settings: Value,
}

impl Sim {
    /// Seeds `acme`'s catalog and points its App Store settings at a new simulator, whose
    /// notifications go to the gateway and whose time is the gateway's.
    pub(crate) async fn open(app: &TestApp) -> Sim {
        app.seed_catalog("acme").await;
        let chain = Arc::new(AppleChain::generate().unwrap());
        let key = ApiKey::generate("69a6de70-03db-47e3-e053-5b8c7c11a4d1", "SIMKEY0001").unwrap();
        let server = AppStoreServer::new(chain.clone(), key.clone(), "edu.acme.app");
        server.set_notification_url(&format!(
            "{}/v1/apps/acme/notifications/app_store",
            app.addr
        ));
        let clock = app.clock.clone();
        let store = AppleStore::new(
            server.clone(),
            SimClock::from_fn(move || clock.now().millis()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = server.router().merge(store.router());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let settings = json!({
            "bundle_id": "edu.acme.app", "environment": "Sandbox", "root_certificates_pem": [chain.root_pem()],
            "api_base_url": url, "issuer_id": key.issuer_id, "key_id": key.key_id, "private_key_pem": key.private_key_pem
        });
        app.patch("/v1/apps/acme", json!({ "app_store": settings }))
            .await
            .expect(200);
        Sim {
            store,
            server,
            key,
            url,
            settings,
        }
    }

    /// Sets more of the app's `app_store` settings.
    pub(crate) async fn set(&self, app: &TestApp, more: Value) {
        let mut settings = self.settings.clone();
        if let (Some(s), Some(m)) = (settings.as_object_mut(), more.as_object()) {
            s.extend(m.clone());
        }
        app.patch("/v1/apps/acme", json!({ "app_store": settings }))
            .await
            .expect(200);
    }

    /// The types of the notifications in the fake API's Get Notification History, with the result
    /// of their last send attempt.
    async fn notification_history(&self, app: &TestApp) -> Vec<(String, String)> {
        self.signed_history(app)
            .await
            .into_iter()
            .map(|(kind, result, _)| (kind, result))
            .collect()
    }

    /// Delivers again, in the order given, the latest notification Apple sent of each type (as
    /// Apple's retries, or notifications that reached the gateway late, do); the gateway's answers.
    async fn deliver_again(&self, app: &TestApp, kinds: &[&str]) -> Vec<Value> {
        let sent = self.signed_history(app).await;
        let mut answers = Vec::new();
        for kind in kinds {
            let (_, _, payload) = sent
                .iter()
                .rev()
                .find(|(k, _, _)| k == kind)
                .unwrap_or_else(|| panic!("Apple sent no {kind}"));
            let answer = app
                .post(
                    "/v1/apps/acme/notifications/app_store",
                    json!({ "signedPayload": payload }),
                )
                .await
                .expect(200);
            answers.push(answer);
        }
        answers
    }

    /// Get Notification History's notifications: type, last send result and signed payload.
    async fn signed_history(&self, app: &TestApp) -> Vec<(String, String, String)> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.key.key_id.clone());
        let exp = SimClock::system().now_ms() / 1000 + 300;
        let claims = json!({"iss": self.key.issuer_id, "aud": "appstoreconnect-v1", "bid": "edu.acme.app", "exp": exp});
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(self.key.private_key_pem.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let now = app.clock.now().millis();
        let page: Value = app
            .client
            .post(format!("{}/inApps/v1/notifications/history", self.url))
            .bearer_auth(token)
            .json(&json!({"startDate": now - 90 * DAY, "endDate": now + DAY}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["notificationHistory"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let jws = n["signedPayload"].as_str().unwrap();
                let kind = jws_payload(jws)["notificationType"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let result = n["sendAttempts"][0]["sendAttemptResult"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                (kind, result, jws.to_owned())
            })
            .collect()
    }
}

fn jws_payload(jws: &str) -> Value {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let part = jws.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A new order of `product` for `customer`; its `app_account_token`.
pub(crate) async fn order(app: &TestApp, customer: &str, product: &str) -> String {
    let order = app
        .post(
            &format!("/v1/apps/acme/customers/{customer}/orders"),
            json!({"product_ids": [product]}),
        )
        .await
        .expect(201);
    order["app_account_token"].as_str().unwrap().to_owned()
}

async fn snapshot(app: &TestApp, customer: &str) -> Value {
    app.get(&format!("/v1/apps/acme/customers/{customer}"))
        .await
        .expect(200)
}

/// An entitlement of a snapshot: (status, expires_at).
fn entitlement(snap: &Value, id: &str) -> (String, Value) {
    let e = snap["entitlements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no entitlement {id} in {snap}"));
    (
        e["status"].as_str().unwrap().to_owned(),
        e["expires_at"].clone(),
    )
}

fn status(snap: &Value, id: &str) -> String {
    entitlement(snap, id).0
}

fn rfc3339(ms: i64) -> Value {
    Value::String(Timestamp::from_millis(ms).to_rfc3339())
}

const COURSE: &str = "course-v1:Acme+CS101+2026";

both!(
    a_purchase_refund_reversal_and_family_revoke_arrive_as_notifications,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let token = order(&app, "alice", "cs101").await;
        let bought = sim
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
            .await
            .unwrap();
        assert_eq!(bought.notification_type, "ONE_TIME_CHARGE");
        assert_eq!(bought.http_status, Some(200), "{:?}", bought.gateway_answer);
        assert_eq!(
            bought.gateway_answer.as_ref().unwrap()["status"],
            "decided",
            "the order's appAccountToken names the customer"
        );
        assert_eq!(status(&snapshot(&app, "alice").await, COURSE), "active");
        // The app posting what StoreKit signed changes nothing more.
        let jws = sim
            .store
            .signed_transaction(&bought.transaction_id)
            .unwrap();
        let version = snapshot(&app, "alice").await["version"].clone();
        let answer = app
            .post(
                "/v1/apps/acme/purchases",
                json!({"app_user_id": "alice", "store": "app_store", "signed_transaction": jws}),
            )
            .await
            .expect(200);
        assert_eq!(answer["status"], "granted");
        assert_eq!(answer["customer"]["version"], version);
        // Apple refunds only at the customer's request: an operator cannot refund it here.
        let id = answer["purchase"]["id"].as_str().unwrap();
        app.post(
            &format!("/v1/apps/acme/purchases/{id}/refund"),
            json!({"reason": "asked by support"}),
        )
        .await
        .error(409, "store_cannot_refund");
        assert_eq!(snapshot(&app, "alice").await["version"], version);

        app.clock.advance_millis(HOUR);
        let refunded = sim
            .store
            .refund(&bought.transaction_id, RevocationReason::Other)
            .await
            .unwrap();
        assert_eq!(
            refunded.gateway_answer.as_ref().unwrap()["status"],
            "decided"
        );
        assert_eq!(status(&snapshot(&app, "alice").await, COURSE), "refunded");

        app.clock.advance_millis(HOUR);
        sim.store
            .reverse_refund(&bought.transaction_id)
            .await
            .unwrap();
        assert_eq!(status(&snapshot(&app, "alice").await, COURSE), "active");

        app.clock.advance_millis(HOUR);
        let revoked = sim.store.revoke(&bought.transaction_id).await.unwrap();
        assert_eq!(revoked.http_status, Some(200));
        assert_eq!(status(&snapshot(&app, "alice").await, COURSE), "revoked");

        assert_eq!(
            app.outbox_types("alice").await,
            vec![
                "entitlement.granted",
                "purchase.refunded",
                "entitlement.revoked",
                "entitlement.granted",
                "entitlement.revoked"
            ]
        );
        let history = sim.notification_history(&app).await;
        let expected: Vec<(String, String)> =
            ["ONE_TIME_CHARGE", "REFUND", "REFUND_REVERSED", "REVOKE"]
                .into_iter()
                .map(|t| (t.to_owned(), "SUCCESS".to_owned()))
                .collect();
        assert_eq!(history, expected);
    }
);

both!(
    a_consumable_refund_claws_the_balance_back,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let token = order(&app, "bob", "coins100").await;
        let bought = sim
            .store
            .buy("edu.acme.coins100", ProductKind::Consumable, Some(&token))
            .await
            .unwrap();
        assert_eq!(snapshot(&app, "bob").await["balances"]["COINS"], 100);
        app.clock.advance_millis(DAY);
        sim.store
            .refund(&bought.transaction_id, RevocationReason::AppIssue)
            .await
            .unwrap();
        assert_eq!(snapshot(&app, "bob").await["balances"]["COINS"], 0);
        assert_eq!(
            app.outbox_types("bob").await,
            vec!["balance.changed", "purchase.refunded", "balance.changed"]
        );
    }
);

/// Buys three packs of 100 coins for `customer`, refunds one of three (33.333 %) a day later and
/// reverses the refund a day after that; the transaction id.
async fn three_packs_one_refunded(app: &TestApp, sim: &Sim, customer: &str) -> String {
    let token = order(app, customer, "coins100").await;
    let bought = sim
        .store
        .buy_with(&store_sim::apple::store::Purchase {
            app_account_token: Some(&token),
            quantity: 3,
            ..store_sim::apple::store::Purchase::new("edu.acme.coins100", ProductKind::Consumable)
        })
        .await
        .unwrap();
    app.clock.advance_millis(DAY);
    let refunded = sim
        .store
        .refund_share(
            &bought.transaction_id,
            RevocationReason::Other,
            Some(33_333),
        )
        .await
        .unwrap();
    assert_eq!(refunded.transaction["revocationType"], "REFUND_PRORATED");
    assert_eq!(refunded.transaction["revocationPercentage"], 33_333);
    app.clock.advance_millis(DAY);
    sim.store
        .reverse_refund(&bought.transaction_id)
        .await
        .unwrap();
    bought.transaction_id
}

both!(
    a_prorated_consumable_refund_claws_back_its_share_and_its_reversal_restores_it,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        // In order: one pack of three is clawed back, then given again.
        let token = order(&app, "bob", "coins100").await;
        let bought = sim
            .store
            .buy_with(&store_sim::apple::store::Purchase {
                app_account_token: Some(&token),
                quantity: 3,
                ..store_sim::apple::store::Purchase::new(
                    "edu.acme.coins100",
                    ProductKind::Consumable,
                )
            })
            .await
            .unwrap();
        assert_eq!(snapshot(&app, "bob").await["balances"]["COINS"], 300);
        app.clock.advance_millis(DAY);
        sim.store
            .refund_share(
                &bought.transaction_id,
                RevocationReason::Other,
                Some(33_333),
            )
            .await
            .unwrap();
        let snap = snapshot(&app, "bob").await;
        assert_eq!(snap["balances"]["COINS"], 200, "{snap}");
        assert_eq!(snap["purchases"][0]["status"], "active");
        app.clock.advance_millis(DAY);
        sim.store
            .reverse_refund(&bought.transaction_id)
            .await
            .unwrap();
        assert_eq!(snapshot(&app, "bob").await["balances"]["COINS"], 300);
        // The purchase stands throughout: only the balance moves, 300, 200, 300.
        assert_eq!(app.outbox_types("bob").await, vec!["balance.changed"; 3]);
        // The timeline shows the units the refund took, from the transaction Apple signed.
        let timeline = app
            .get("/v1/apps/acme/customers/bob/timeline")
            .await
            .expect(200);
        let text = timeline.to_string();
        assert!(
            text.contains("partly_refunded") && text.contains("REFUND_PRORATED"),
            "{timeline}"
        );

        // Out of order: Apple's two notifications reach the gateway reversal first; the balance
        // ends where it started all the same.
        sim.server
            .set_notification_url("http://127.0.0.1:9/unreachable");
        three_packs_one_refunded(&app, &sim, "cleo").await;
        sim.deliver_again(&app, &["REFUND_REVERSED", "REFUND", "ONE_TIME_CHARGE"])
            .await;
        let snap = snapshot(&app, "cleo").await;
        assert_eq!(snap["balances"]["COINS"], 300, "{snap}");
    }
);

/// The transactions Apple was told are finished, once `want` of them are (the delivery worker
/// performs the finish after the grant), or as they are after five seconds.
async fn finished_soon(sim: &Sim, want: usize) -> Vec<String> {
    for _ in 0..50 {
        if sim.server.finished().len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.server.finished()
}

both!(
    the_gateway_finishes_a_transaction_once_after_its_grant,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        sim.set(&app, json!({"finish_transactions": true})).await;
        // Bought in the app, which stopped before finishing: Apple's notification grants it, and
        // the gateway finishes it.
        let token = order(&app, "alice", "coins100").await;
        let bought = sim
            .store
            .buy("edu.acme.coins100", ProductKind::Consumable, Some(&token))
            .await
            .unwrap();
        assert_eq!(snapshot(&app, "alice").await["balances"]["COINS"], 100);
        assert_eq!(
            finished_soon(&sim, 1).await,
            vec![bought.transaction_id.clone()]
        );
        // The app comes back and submits it: granted already, and not finished again.
        let again = app
            .post(
                "/v1/apps/acme/purchases",
                json!({"app_user_id": "alice", "store": "app_store",
                    "transaction_id": bought.transaction_id}),
            )
            .await
            .expect(200);
        assert_eq!(again["status"], "granted", "{again}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sim.server.finished().len(), 1, "finished once");

        // A product the catalog does not sell yet: held, not granted, not finished; once the
        // catalog maps it, it is granted, then finished.
        let token = order(&app, "alice", "coins100").await;
        let held = sim
            .store
            .buy("edu.acme.coins500", ProductKind::Consumable, Some(&token))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            sim.server.finished().len(),
            1,
            "nothing granted, nothing finished"
        );
        app.put(
            "/v1/apps/acme/products/coins500",
            json!({"kind": "consumable", "store_skus": {"app_store": "edu.acme.coins500"},
                "consumable": {"currency": "COINS", "amount": 500}}),
        )
        .await
        .expect(201);
        assert_eq!(snapshot(&app, "alice").await["balances"]["COINS"], 600);
        assert_eq!(
            finished_soon(&sim, 2).await,
            vec![bought.transaction_id, held.transaction_id]
        );
        let finishes: Vec<_> = app
            .outbox("alice")
            .await
            .into_iter()
            .filter(|e| e.event_type == "store.app_store.finish")
            .collect();
        assert_eq!(finishes.len(), 2, "{finishes:?}");
    }
);

both!(
    family_members_are_granted_their_own_copies_and_lose_them_with_the_purchasers_refund,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let token = order(&app, "alice", "cs101").await;
        let bought = sim
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
            .await
            .unwrap();
        assert_eq!(status(&snapshot(&app, "alice").await, COURSE), "active");
        // Alice shares the course with Bob and Cleo; each one's app submits its own copy.
        let mut copies = Vec::new();
        for member in ["bob", "cleo"] {
            let copy = sim.store.share_with_family(&bought.transaction_id).unwrap();
            assert_eq!(copy["inAppOwnershipType"], "FAMILY_SHARED");
            let id = copy["transactionId"].as_str().unwrap().to_owned();
            let signed = sim.store.signed_transaction(&id).unwrap();
            let answer = app
                .post(
                    "/v1/apps/acme/purchases",
                    json!({"app_user_id": member, "store": "app_store", "signed_transaction": signed}),
                )
                .await
                .expect(200);
            assert_eq!(answer["status"], "granted", "{answer}");
            assert_eq!(status(&answer["customer"], COURSE), "active");
            copies.push(id);
        }
        // Cleo's copy is Cleo's: Bob cannot claim it.
        let cleos = sim.store.signed_transaction(&copies[1]).unwrap();
        app.post(
            "/v1/apps/acme/purchases",
            json!({"app_user_id": "bob", "store": "app_store", "signed_transaction": cleos}),
        )
        .await
        .error(409, "purchase_of_another_customer");

        // Alice stops sharing with Cleo alone: Cleo's copy is revoked, the others stand.
        app.clock.advance_millis(DAY);
        sim.store.revoke(&copies[1]).await.unwrap();
        assert_eq!(status(&snapshot(&app, "cleo").await, COURSE), "revoked");
        assert_eq!(status(&snapshot(&app, "bob").await, COURSE), "active");

        // Apple refunds Alice: her purchase and Bob's copy end together.
        app.clock.advance_millis(DAY);
        sim.store
            .refund(&bought.transaction_id, RevocationReason::Other)
            .await
            .unwrap();
        assert_eq!(status(&snapshot(&app, "alice").await, COURSE), "refunded");
        assert_eq!(status(&snapshot(&app, "bob").await, COURSE), "revoked");
    }
);

both!(
    a_subscription_renews_falls_into_grace_and_expires,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let t0 = t0().millis();
        let token = order(&app, "carol", "premium").await;
        let bought = sim
            .store
            .buy(
                "edu.acme.premium",
                ProductKind::AutoRenewable(Period::ONE_MONTH),
                Some(&token),
            )
            .await
            .unwrap();
        assert_eq!(
            (bought.notification_type, bought.subtype),
            ("SUBSCRIBED", Some("INITIAL_BUY"))
        );
        // 22 November to 22 December, then to 22 January.
        let first_end = t0 + 30 * DAY;
        let second_end = first_end + 31 * DAY;
        assert_eq!(
            entitlement(&snapshot(&app, "carol").await, "premium"),
            ("active".to_owned(), rfc3339(first_end))
        );
        let lineage = bought.original_transaction_id;

        app.clock.set(Timestamp::from_millis(first_end - HOUR));
        let renewed = sim.store.renew(&lineage).await.unwrap();
        assert_eq!(renewed.notification_type, "DID_RENEW");
        assert_eq!(renewed.gateway_answer.unwrap()["status"], "decided");
        assert_eq!(
            entitlement(&snapshot(&app, "carol").await, "premium"),
            ("active".to_owned(), rfc3339(second_end))
        );

        app.clock.set(Timestamp::from_millis(second_end + HOUR));
        let failed = sim
            .store
            .fail_to_renew(&lineage, Some(Duration::from_secs(16 * 86_400)))
            .await
            .unwrap();
        assert_eq!(failed.subtype, Some("GRACE_PERIOD"));
        assert_eq!(
            status(&snapshot(&app, "carol").await, "premium"),
            "grace_period"
        );

        app.clock.advance_millis(DAY);
        let recovered = sim.store.renew(&lineage).await.unwrap();
        assert_eq!(
            (recovered.notification_type, recovered.subtype),
            ("DID_RENEW", Some("BILLING_RECOVERY"))
        );
        let third_end = Period::ONE_MONTH.after(second_end + HOUR + DAY);
        assert_eq!(
            entitlement(&snapshot(&app, "carol").await, "premium"),
            ("active".to_owned(), rfc3339(third_end))
        );

        app.clock.advance_millis(DAY);
        let expired = sim
            .store
            .expire(&lineage, ExpirySubtype::Voluntary)
            .await
            .unwrap();
        assert_eq!(
            (expired.notification_type, expired.subtype),
            ("EXPIRED", Some("VOLUNTARY"))
        );
        assert_eq!(expired.renewal_info.unwrap()["autoRenewStatus"], 0);
        assert_eq!(status(&snapshot(&app, "carol").await, "premium"), "expired");
        assert_eq!(
            app.outbox_types("carol").await,
            vec![
                "entitlement.granted",
                "entitlement.renewed",
                "entitlement.renewed",
                "entitlement.expired"
            ]
        );
        let kinds: Vec<String> = sim
            .notification_history(&app)
            .await
            .into_iter()
            .map(|(kind, _)| kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "SUBSCRIBED",
                "DID_RENEW",
                "DID_FAIL_TO_RENEW",
                "DID_RENEW",
                "EXPIRED"
            ]
        );
    }
);

/// Reads lines of a running `sim serve` until it says it serves; returns its URL.
pub(crate) async fn served_url(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    let mut url = None;
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listens on ").nth(1) {
                url = rest
                    .split_whitespace()
                    .next()
                    .map(|u| u.trim_end_matches(':').to_owned());
            }
            if line.starts_with("Serving until Ctrl-C") {
                return;
            }
        }
        panic!("`sim serve` stopped before serving");
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("`sim serve` starts within 20 s");
    url.expect("`sim serve` says where it listens")
}

/// `purchase-gateway sim apple <args>`: (success, stdout, stderr).
async fn sim_apple(args: &[&str]) -> (bool, String, String) {
    sim_command("apple", args).await
}

/// `purchase-gateway sim <store> <args>`: (success, stdout, stderr).
pub(crate) async fn sim_command(store: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_purchase-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("sim")
        .arg(store)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_command_points_an_app_at_itself_and_acts_as_apple() {
    use tokio::io::AsyncBufReadExt;

    let app = spawn_app(Backend::Sqlite).await.unwrap();
    app.seed_catalog("acme").await;
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_purchase-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args([
            "sim",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            &app.addr,
            "--app",
            "acme",
            "--admin-key",
            ADMIN_KEY,
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let url = served_url(&mut lines).await;

    let settings = app.get("/v1/apps/acme").await.expect(200)["app_store"].clone();
    assert_eq!(settings["api_base_url"], url.as_str());
    assert_eq!(
        (&settings["bundle_id"], &settings["environment"]),
        (&json!("edu.acme.app"), &json!("Sandbox"))
    );
    assert_eq!(
        settings["root_certificates_pem"].as_array().unwrap().len(),
        1
    );
    assert_eq!(settings["private_key_pem_set"], true);
    assert_eq!(
        settings["shared_secret_set"], true,
        "secrets it does not set are kept"
    );

    let token = order(&app, "dave", "cs101").await;
    let (ok, out, err) = sim_apple(&[
        "buy",
        "--sim",
        &url,
        "--sku",
        "edu.acme.cs101",
        "--kind",
        "non-consumable",
        "--token",
        &token,
    ])
    .await;
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["notification_type"], "ONE_TIME_CHARGE");
    assert_eq!(answer["http_status"], 200);
    assert_eq!(answer["transaction"]["appAccountToken"], token.as_str());
    assert!(
        err.starts_with("Apple sent ONE_TIME_CHARGE for transaction "),
        "{err}"
    );
    assert_eq!(status(&snapshot(&app, "dave").await, COURSE), "active");

    let id = answer["transaction_id"].as_str().unwrap();
    let (ok, _, err) = sim_apple(&["refund", "--transaction-id", id, "--sim", &url]).await;
    assert!(ok, "{err}");
    assert_eq!(status(&snapshot(&app, "dave").await, COURSE), "refunded");

    let (ok, _, err) = sim_apple(&["refund", "--sim", &url, "--transaction-id", "42"]).await;
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("no transaction \"42\""),
        "{err}"
    );
    serve.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_google_command_points_an_app_at_itself_and_acts_as_google() {
    use tokio::io::AsyncBufReadExt;

    let app = spawn_app(Backend::Sqlite).await.unwrap();
    // The simulator keeps real time, and Google refuses assertions signed at another time.
    app.clock
        .set(Timestamp::from_millis(SimClock::system().now_ms()));
    app.seed_catalog("acme").await;
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_purchase-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["sim", "google", "serve", "--listen", "127.0.0.1:0"])
        .args(["--gateway", &app.addr, "--app", "acme"])
        .args(["--admin-key", ADMIN_KEY, "--package", "edu.acme.app"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let url = served_url(&mut lines).await;

    let settings = app.get("/v1/apps/acme").await.expect(200)["play_store"].clone();
    assert_eq!(settings["api_base_url"], url.as_str());
    assert_eq!(settings["package_name"], "edu.acme.app");
    assert_eq!(
        settings["google_certs_url"],
        format!("{url}/oauth2/v3/certs")
    );
    assert_eq!(
        settings["pubsub_audience"],
        format!("{}/v1/apps/acme/notifications/play_store", app.addr)
    );
    assert_eq!(settings["service_account_json_set"], true);

    // Dave orders the course; the Android app passes the order's account id to Play Billing.
    let order = app
        .post(
            "/v1/apps/acme/customers/dave/orders",
            json!({"product_ids": ["cs101"]}),
        )
        .await
        .expect(201);
    let account = order["obfuscated_account_id"].as_str().unwrap();
    let (ok, out, err) = sim_command(
        "google",
        &[
            "buy",
            "--sim",
            &url,
            "--product-id",
            "cs101",
            "--obfuscated-account-id",
            account,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["notification"]["oneTimeProductNotification"]["notificationType"],
        1
    );
    assert_eq!(answer["delivery"]["status"], 200, "{answer}");
    assert!(
        err.starts_with("Google Play pushed ONE_TIME_PRODUCT_PURCHASED for purchase token "),
        "{err}"
    );
    assert_eq!(status(&snapshot(&app, "dave").await, COURSE), "active");
    let token = answer["purchase_token"].as_str().unwrap();

    let (ok, out, err) = sim_command(
        "google",
        &[
            "refund",
            "--sim",
            &url,
            "--purchase-token",
            token,
            "--source",
            "google",
            "--reason",
            "chargeback",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["notification"]["voidedPurchaseNotification"]["refundType"],
        1
    );
    assert_eq!(status(&snapshot(&app, "dave").await, COURSE), "refunded");
    let (ok, out, _) = sim_command("google", &["voided", "--sim", &url]).await;
    assert!(ok);
    let voided: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(voided[0]["voidedReason"], 7, "{voided}");
    assert_eq!(voided[0]["voidedSource"], 2, "{voided}");

    let (ok, _, err) = sim_command(
        "google",
        &["renew", "--sim", &url, "--purchase-token", "nope"],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("no purchase token \"nope\""),
        "{err}"
    );
    serve.kill().await.unwrap();
}

both!(
    billing_retry_that_fails_ends_expired,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let token = order(&app, "dave", "premium").await;
        let bought = sim
            .store
            .buy(
                "edu.acme.premium",
                ProductKind::AutoRenewable(Period::ONE_MONTH),
                Some(&token),
            )
            .await
            .unwrap();
        let lineage = bought.original_transaction_id;
        app.clock
            .set(Timestamp::from_millis(t0().millis() + 30 * DAY + HOUR));
        // No grace period: Apple retries billing while access is off.
        let failed = sim.store.fail_to_renew(&lineage, None).await.unwrap();
        assert_eq!(failed.subtype, None);
        assert_eq!(
            status(&snapshot(&app, "dave").await, "premium"),
            "billing_retry"
        );
        app.clock.advance_millis(10 * DAY);
        let expired = sim
            .store
            .expire(&lineage, ExpirySubtype::BillingRetry)
            .await
            .unwrap();
        assert_eq!(
            (expired.notification_type, expired.subtype),
            ("EXPIRED", Some("BILLING_RETRY"))
        );
        assert_eq!(status(&snapshot(&app, "dave").await, "premium"), "expired");
    }
);

/// Premium Plus, a step up from Premium in its subscription group: Premium's entitlement and one
/// more.
async fn premium_plus(app: &TestApp) {
    app.put(
        "/v1/apps/acme/products/premium_plus",
        json!({"kind": "subscription", "store_skus": {"app_store": "edu.acme.premium_plus"},
            "entitlements": [{"id": "premium"}, {"id": "plus"}]}),
    )
    .await
    .expect(201);
}

both!(
    an_upgrade_moves_the_entitlements_at_once_and_a_downgrade_at_renewal,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        premium_plus(&app).await;
        let t0 = t0().millis();
        let token = order(&app, "dora", "premium").await;
        let monthly = ProductKind::AutoRenewable(Period::ONE_MONTH);
        let bought = sim
            .store
            .buy("edu.acme.premium", monthly, Some(&token))
            .await
            .unwrap();
        let lineage = bought.original_transaction_id;
        let snap = snapshot(&app, "dora").await;
        assert_eq!(
            entitlement(&snap, "premium"),
            ("active".to_owned(), rfc3339(t0 + 30 * DAY))
        );
        assert!(app.entitlement("dora", "plus").await.is_null());

        // Ten days in, Dora upgrades: Premium Plus starts now, a new month, under the same lineage.
        let upgraded_at = t0 + 10 * DAY;
        app.clock.set(Timestamp::from_millis(upgraded_at));
        let up = sim
            .store
            .change_plan(&lineage, "edu.acme.premium_plus", true)
            .await
            .unwrap();
        assert_eq!(up.http_status, Some(200), "{:?}", up.gateway_answer);
        let snap = snapshot(&app, "dora").await;
        let new_end = rfc3339(upgraded_at + 31 * DAY);
        assert_eq!(
            entitlement(&snap, "plus"),
            ("active".to_owned(), new_end.clone())
        );
        assert_eq!(
            entitlement(&snap, "premium"),
            ("active".to_owned(), new_end.clone()),
            "no gap: premium goes on under the new product"
        );
        let purchases = snap["purchases"].as_array().unwrap();
        assert_eq!(purchases.len(), 1, "one lineage, not both products: {snap}");
        assert_eq!(purchases[0]["product_id"], "premium_plus");

        // The upgraded transaction, seen again late (a restore), changes nothing.
        let old = sim
            .store
            .signed_transaction(&bought.transaction_id)
            .unwrap();
        app.post(
            "/v1/apps/acme/purchases",
            json!({"app_user_id": "dora", "store": "app_store", "signed_transaction": old}),
        )
        .await
        .expect(200);
        let snap = snapshot(&app, "dora").await;
        assert_eq!(snap["purchases"][0]["product_id"], "premium_plus");
        assert_eq!(
            entitlement(&snap, "plus"),
            ("active".to_owned(), new_end.clone())
        );

        // She then downgrades: nothing changes until the renewal, which bills Premium alone.
        app.clock.advance_millis(DAY);
        sim.store
            .change_plan(&lineage, "edu.acme.premium", false)
            .await
            .unwrap();
        let snap = snapshot(&app, "dora").await;
        assert_eq!(
            entitlement(&snap, "plus"),
            ("active".to_owned(), new_end.clone())
        );
        assert_eq!(snap["purchases"][0]["product_id"], "premium_plus");

        app.clock
            .set(Timestamp::from_millis(upgraded_at + 31 * DAY - HOUR));
        sim.store.renew(&lineage).await.unwrap();
        let snap = snapshot(&app, "dora").await;
        assert_eq!(snap["purchases"][0]["product_id"], "premium");
        let renewed_end = rfc3339(upgraded_at + 31 * DAY + 31 * DAY);
        assert_eq!(
            entitlement(&snap, "premium"),
            ("active".to_owned(), renewed_end)
        );
        assert!(
            app.entitlement("dora", "plus").await["status"] != "active",
            "plus ends with the downgrade: {snap}"
        );

        // Out of order: Eve's upgrade and the renewal that downgrades her back reach the gateway
        // renewal first. She ends on the product Apple stated last, not on the late upgrade.
        let token = order(&app, "eve", "premium").await;
        let bought = sim
            .store
            .buy("edu.acme.premium", monthly, Some(&token))
            .await
            .unwrap();
        let lineage = bought.original_transaction_id;
        sim.server
            .set_notification_url("http://127.0.0.1:9/unreachable");
        app.clock.advance_millis(DAY);
        sim.store
            .change_plan(&lineage, "edu.acme.premium_plus", true)
            .await
            .unwrap();
        sim.store
            .change_plan(&lineage, "edu.acme.premium", false)
            .await
            .unwrap();
        sim.store.renew(&lineage).await.unwrap();
        sim.deliver_again(&app, &["DID_RENEW", "DID_CHANGE_RENEWAL_PREF"])
            .await;
        let snap = snapshot(&app, "eve").await;
        assert_eq!(snap["purchases"][0]["product_id"], "premium", "{snap}");
        assert!(
            app.entitlement("eve", "plus").await["status"] != "active",
            "the late upgrade does not bring plus back: {snap}"
        );
    }
);

both!(
    an_upgrade_to_a_shorter_period_ends_with_the_new_period,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        premium_plus(&app).await;
        // A year of Premium; a month in, an upgrade to monthly Premium Plus.
        let token = order(&app, "finn", "premium").await;
        let yearly = ProductKind::AutoRenewable(Period::ONE_YEAR);
        let bought = sim
            .store
            .buy("edu.acme.premium", yearly, Some(&token))
            .await
            .unwrap();
        app.clock.advance_millis(30 * DAY);
        let up = sim
            .store
            .change_plan_to(
                &bought.original_transaction_id,
                "edu.acme.premium_plus",
                Some(Period::ONE_MONTH),
            )
            .await
            .unwrap();
        let new_end = up.transaction["expiresDate"].as_i64().unwrap();
        assert!(new_end < bought.transaction["expiresDate"].as_i64().unwrap());
        let snap = snapshot(&app, "finn").await;
        assert_eq!(
            entitlement(&snap, "premium"),
            ("active".to_owned(), rfc3339(new_end)),
            "access runs to the new month's end, not the replaced year's: {snap}"
        );
    }
);

/// The causes of a customer's timeline and the remark each decision recorded, oldest first.
async fn remarks(app: &TestApp, customer: &str) -> Vec<(String, Value)> {
    let timeline = app
        .get(&format!("/v1/apps/acme/customers/{customer}/timeline"))
        .await
        .expect(200);
    let mut out: Vec<(String, Value)> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let remark = e["detail"]["facts"]
                .as_array()
                .and_then(|f| f.iter().find_map(|f| f.get("remark").cloned()))
                .unwrap_or(Value::Null);
            (e["cause"].as_str().unwrap().to_owned(), remark)
        })
        .collect();
    out.reverse();
    out
}

both!(
    what_apple_says_beyond_the_facts_is_in_the_timeline_once,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let token = order(&app, "erin", "premium").await;
        let monthly = ProductKind::AutoRenewable(Period::ONE_MONTH);
        let bought = sim
            .store
            .buy("edu.acme.premium", monthly, Some(&token))
            .await
            .unwrap();
        let tx = &bought.transaction_id;
        app.clock.advance_millis(DAY);
        sim.store
            .tell(tx, "PRICE_INCREASE", Some("PENDING"))
            .await
            .unwrap();
        sim.store.tell(tx, "REFUND_DECLINED", None).await.unwrap();
        let told = remarks(&app, "erin").await;
        assert_eq!(told.len(), 3, "{told:?}");
        assert!(told[1].0.contains("PRICE_INCREASE/PENDING"), "{told:?}");
        assert_eq!(told[1].1, "PRICE_INCREASE/PENDING");
        assert!(
            told[2]
                .0
                .contains(&format!("REFUND_DECLINED for transaction {tx}"))
        );
        assert_eq!(told[2].1, "REFUND_DECLINED");

        // Apple sends the refusal again: a duplicate, not a second line.
        let again = sim.deliver_again(&app, &["REFUND_DECLINED"]).await;
        assert_eq!(again[0]["status"], "duplicate", "{again:?}");
        assert_eq!(remarks(&app, "erin").await.len(), 3);
        // Nothing changed for the customer and nothing went out.
        assert_eq!(status(&snapshot(&app, "erin").await, "premium"), "active");
        assert_eq!(app.outbox_types("erin").await, vec!["entitlement.granted"]);

        // An external purchase token names no customer: it is kept as Apple sent it.
        let token = sim
            .store
            .external_purchase_token("UNREPORTED", "ACQUISITION")
            .await
            .unwrap();
        assert_eq!(token.gateway_answer.unwrap()["status"], "recorded");
        let kept: Vec<String> = sqlx::query_scalar("SELECT raw FROM inbound")
            .fetch_all(app.db.reader())
            .await
            .unwrap();
        let tokens: Vec<Value> = kept
            .iter()
            .filter_map(|raw| {
                let body: Value = serde_json::from_str(raw).ok()?;
                let n = jws_payload(body["signedPayload"].as_str()?);
                (n["notificationType"] == "EXTERNAL_PURCHASE_TOKEN")
                    .then(|| n["externalPurchaseToken"].clone())
            })
            .collect();
        assert_eq!(tokens.len(), 1, "{kept:?}");
        assert_eq!(tokens[0]["tokenType"], "ACQUISITION");
        assert!(tokens[0]["tokenExpirationDate"].is_i64());

        // The simulator refuses what Apple never sends.
        let refused = sim.store.tell(tx, "OFFER_REDEEMED", None).await;
        assert!(refused.is_err(), "OFFER_REDEEMED needs a subtype");
    }
);

both!(
    an_app_transaction_names_the_apple_account_and_consent_withdrawn_reaches_the_operator,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        // Ada's app hands the gateway its AppTransaction before she buys anything.
        let signed = sim.store.signed_app_transaction("ada@icloud").unwrap();
        let account = sim.store.app_transaction("ada@icloud").unwrap()["appTransactionId"]
            .as_str()
            .unwrap()
            .to_owned();
        let answer = app
            .post(
                "/v1/apps/acme/purchases",
                json!({"app_user_id": "ada", "store": "app_store", "signed_app_transaction": signed}),
            )
            .await
            .expect(200);
        assert_eq!(answer["status"], "identified", "{answer}");
        assert_eq!(answer["app_transaction_id"], account.as_str());
        assert!(answer.get("purchase").is_none());

        // One not signed by Apple, or sent for another store, changes nothing.
        let mut claims = sim.store.app_transaction("mallory").unwrap();
        claims["appTransactionId"] = account.as_str().into();
        let forged = AppleChain::generate().unwrap().sign(&claims).unwrap();
        app.post(
            "/v1/apps/acme/purchases",
            json!({"app_user_id": "mallory", "store": "app_store", "signed_app_transaction": forged}),
        )
        .await
        .error(422, "untrusted_certificate_chain");
        app.post(
            "/v1/apps/acme/purchases",
            json!({"app_user_id": "ada", "store": "play_store", "signed_app_transaction": signed}),
        )
        .await
        .error(400, "field_not_for_store");

        // With a purchase, the purchase is decided and the account kept too.
        let token = order(&app, "ada", "cs101").await;
        let bought = sim
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
            .await
            .unwrap();
        let tx = sim
            .store
            .signed_transaction(&bought.transaction_id)
            .unwrap();
        let answer = app
            .post(
                "/v1/apps/acme/purchases",
                json!({"app_user_id": "ada", "store": "app_store", "signed_transaction": tx,
                    "signed_app_transaction": signed}),
            )
            .await
            .expect(200);
        assert_eq!(answer["status"], "granted");
        assert_eq!(answer["app_transaction_id"], account.as_str());

        // Her parent withdraws consent: Apple tells the gateway, which tells the operator.
        app.clock.advance_millis(DAY);
        let sent = sim.store.rescind_consent("ada@icloud").await.unwrap();
        assert_eq!(sent.http_status, Some(200), "{:?}", sent.gateway_answer);
        let events: Vec<_> = app
            .outbox("ada")
            .await
            .into_iter()
            .filter(|e| e.event_type == "customer.consent_rescinded")
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
        let data = &events[0].payload["data"];
        assert_eq!(data["app_user_id"], "ada");
        assert_eq!(data["app_transaction_id"], account.as_str());
        assert_eq!(data["store"], "app_store");
        let told = remarks(&app, "ada").await;
        let last = told.last().unwrap();
        assert!(last.0.contains("RESCIND_CONSENT"), "{told:?}");
        assert_eq!(last.1, "RESCIND_CONSENT");
        // The purchase itself stands: what consent covered is the operator's to act on.
        assert_eq!(status(&snapshot(&app, "ada").await, COURSE), "active");

        // An account no customer was seen with: kept, and no one is told.
        sim.store.app_transaction("bo@icloud").unwrap();
        let sent = sim.store.rescind_consent("bo@icloud").await.unwrap();
        assert_eq!(sent.http_status, Some(200));
        assert_eq!(
            sent.gateway_answer.unwrap()["status"],
            "recorded",
            "kept without a customer"
        );

        // Transactions name their buyer's account too (StoreKit from iOS 18.4): Cleo's purchase,
        // known only from Apple's notification, and Dan's, submitted by his app, are enough.
        let signed = |id: &str| sim.store.signed_transaction(id).unwrap();
        for (customer, account, submit) in
            [("cleo", "cleo@icloud", false), ("dan", "dan@icloud", true)]
        {
            let token = order(&app, customer, "cs101").await;
            if submit {
                // Apple's notification does not get through: the app's submission alone tells.
                sim.server
                    .set_notification_url("http://127.0.0.1:9/unreachable");
            }
            let bought = sim
                .store
                .buy_with(&Purchase {
                    app_account_token: Some(&token),
                    account: Some(account),
                    ..Purchase::new("edu.acme.cs101", ProductKind::NonConsumable)
                })
                .await
                .unwrap();
            assert!(bought.transaction["appTransactionId"].is_string());
            if submit {
                let answer = app
                    .post(
                        "/v1/apps/acme/purchases",
                        json!({"app_user_id": customer, "store": "app_store",
                            "signed_transaction": signed(&bought.transaction_id)}),
                    )
                    .await
                    .expect(200);
                assert_eq!(answer["status"], "granted");
                sim.server.set_notification_url(&format!(
                    "{}/v1/apps/acme/notifications/app_store",
                    app.addr
                ));
            }
            sim.store.rescind_consent(account).await.unwrap();
            let told = app.outbox_types(customer).await;
            assert!(
                told.contains(&"customer.consent_rescinded".to_owned()),
                "{customer}: {told:?}"
            );
        }
    }
);

/// Apple's own library for the App Store Server API, from PyPI.
const APPLE_LIBRARY: (&str, &str) = ("app-store-server-library", "3.1.2");

both!(
    offer_signatures_match_what_apples_library_makes_and_verify,
    |app: TestApp| async move {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
        use base64::{Engine, engine::general_purpose::STANDARD};

        let sim = Sim::open(&app).await;
        let signed = sim.store.signed_app_transaction("ada@icloud").unwrap();
        let account = sim.store.app_transaction("ada@icloud").unwrap()["appTransactionId"]
            .as_str()
            .unwrap()
            .to_owned();
        app.post(
            "/v1/apps/acme/purchases",
            json!({"app_user_id": "ada", "store": "app_store", "signed_app_transaction": signed}),
        )
        .await
        .expect(200);
        let username = "7389A31A-FB6D-4569-A2A6-DB7D85D84813";
        let promo = app
            .post(
                "/v1/apps/acme/app_store/offer_signatures",
                json!({"app_user_id": "ada", "kind": "promotional", "product_id": "premium",
                    "offer_identifier": "WINBACK10", "application_username": username}),
            )
            .await
            .expect(200);
        assert_eq!(promo["product_id"], "edu.acme.premium");
        assert_eq!(promo["key_id"], sim.key.key_id.as_str());
        assert_eq!(
            promo["transaction_id"],
            account.as_str(),
            "the account names the customer"
        );
        assert_eq!(promo["timestamp"], app.clock.now().millis());
        let intro = app
            .post(
                "/v1/apps/acme/app_store/offer_signatures",
                json!({"app_user_id": "ada", "kind": "introductory_eligibility",
                    "product_id": "edu.acme.premium", "allow_introductory_offer": false}),
            )
            .await
            .expect(200);
        assert_eq!(intro["transaction_id"], account.as_str());

        // Apple's library signs the same inputs and verifies the gateway's JWS.
        let python = python_with(APPLE_LIBRARY.0, APPLE_LIBRARY.1);
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/py/offer_signatures.py"
        );
        let mut promotional = promo.clone();
        promotional["product_id"] = "edu.acme.premium".into();
        let ask = json!({"pem": sim.key.private_key_pem, "key_id": sim.key.key_id,
            "issuer_id": sim.key.issuer_id, "bundle_id": "edu.acme.app",
            "promotional": promotional, "introductory": intro});
        let seen = run_python(&python, script, &ask);

        // The legacy form: both signatures verify over the gateway's message with the key's
        // public half, so the library signed exactly the message the gateway did.
        let config: gateway::model::AppStoreConfig = serde_json::from_value(json!({
            "bundle_id": "edu.acme.app", "environment": "Sandbox", "key_id": sim.key.key_id,
            "issuer_id": sim.key.issuer_id, "private_key_pem": sim.key.private_key_pem}))
        .unwrap();
        let key = gateway::stores::apple::offers::OfferKey::from_config(&config).unwrap();
        let message = key.promotional_message(&gateway::stores::apple::offers::Promotion {
            product_id: "edu.acme.premium",
            offer_identifier: "WINBACK10",
            application_username: username,
            nonce: promo["nonce"].as_str().unwrap().parse().unwrap(),
            timestamp_ms: promo["timestamp"].as_i64().unwrap(),
        });
        let public = public_key_of(&sim.key.private_key_pem);
        let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public);
        for (who, signature) in [
            ("gateway", promo["signature"].as_str().unwrap()),
            (
                "library",
                seen["library"]["legacy_signature"].as_str().unwrap(),
            ),
        ] {
            let der = STANDARD.decode(signature).unwrap();
            verifier
                .verify(message.as_bytes(), &der)
                .unwrap_or_else(|_| panic!("the {who}'s signature verifies"));
        }

        // The JWS: the same header, the same claims but the fresh nonce and the time.
        for which in ["promotional", "introductory"] {
            let (ours, theirs) = (&seen["gateway"][which], &seen["library"][which]);
            assert_eq!(ours["header"], theirs["header"], "{which}");
            let strip = |v: &Value| {
                let mut c = v["claims"].clone();
                let obj = c.as_object_mut().unwrap();
                let nonce = obj.remove("nonce").unwrap();
                assert!(uuid::Uuid::parse_str(nonce.as_str().unwrap()).is_ok());
                let iat = obj.remove("iat").unwrap().as_i64().unwrap();
                (c, iat)
            };
            let ((ours, our_iat), (theirs, _)) = (strip(ours), strip(theirs));
            assert_eq!(ours, theirs, "{which}");
            assert_eq!(our_iat, app.clock.now().millis() / 1000, "{which}");
        }
        assert_eq!(
            seen["gateway"]["promotional"]["claims"]["transactionId"],
            account.as_str()
        );

        // What cannot be signed is refused, and says why.
        app.post(
            "/v1/apps/acme/app_store/offer_signatures",
            json!({"app_user_id": "ada", "kind": "promotional", "product_id": "premium"}),
        )
        .await
        .error(400, "invalid_offer");
        app.post(
            "/v1/apps/acme/app_store/offer_signatures",
            json!({"app_user_id": "ada", "kind": "promotional", "product_id": "nothing",
                "offer_identifier": "X"}),
        )
        .await
        .error(404, "product_not_found");
        app.post(
            "/v1/apps/acme/app_store/offer_signatures",
            json!({"app_user_id": "newcomer", "kind": "introductory_eligibility",
                "product_id": "premium", "allow_introductory_offer": true}),
        )
        .await
        .error(409, "transaction_id_required");
    }
);

/// The public half of a `.p8` private key: its uncompressed P-256 point.
fn public_key_of(private_pem: &str) -> Vec<u8> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
    let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(private_pem.as_bytes()).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.secret_pkcs8_der())
        .unwrap();
    pair.public_key().as_ref().to_vec()
}

both!(
    apples_own_library_calls_the_simulator_and_verifies_what_it_signs,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let token = order(&app, "ada", "premium").await;
        let monthly = ProductKind::AutoRenewable(Period::ONE_MONTH);
        let sub = sim
            .store
            .buy("edu.acme.premium", monthly, Some(&token))
            .await
            .unwrap();
        sim.store.renew(&sub.original_transaction_id).await.unwrap();
        let token = order(&app, "ada", "coins100").await;
        let coins = sim
            .store
            .buy("edu.acme.coins100", ProductKind::Consumable, Some(&token))
            .await
            .unwrap();
        let token = order(&app, "ada", "cs101").await;
        let course = sim
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
            .await
            .unwrap();
        sim.store
            .refund(&course.transaction_id, RevocationReason::Other)
            .await
            .unwrap();
        let account = sim.store.app_transaction("ada@icloud").unwrap()["appTransactionId"]
            .as_str()
            .unwrap()
            .to_owned();
        sim.store.rescind_consent("ada@icloud").await.unwrap();
        sim.store
            .tell(&sub.transaction_id, "PRICE_INCREASE", Some("PENDING"))
            .await
            .unwrap();
        sim.store
            .external_purchase_token("CREATED", "LINK_OUT")
            .await
            .unwrap();

        let python = python_with(APPLE_LIBRARY.0, APPLE_LIBRARY.1);
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/py/sim_with_apple_library.py"
        );
        let ask = json!({"url": sim.url, "root_pem": sim.settings["root_certificates_pem"][0],
            "pem": sim.key.private_key_pem, "key_id": sim.key.key_id, "issuer_id": sim.key.issuer_id,
            "bundle_id": "edu.acme.app", "subscription": sub.original_transaction_id,
            "consumable": coins.transaction_id, "refunded": course.transaction_id,
            "app_transaction_id": account, "now": app.clock.now().millis()});
        let seen = run_python(&python, script, &ask);

        assert_eq!(seen["transaction"], "edu.acme.coins100", "{seen}");
        assert_eq!(seen["status"], 1);
        assert_eq!(seen["renewal_product"], "edu.acme.premium");
        assert_eq!(seen["history"].as_array().unwrap().len(), 2, "{seen}");
        assert_eq!(seen["refunds"], json!([course.transaction_id]));
        let kinds: Vec<&str> = seen["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        for kind in [
            "SUBSCRIBED",
            "DID_RENEW",
            "ONE_TIME_CHARGE",
            "REFUND",
            "RESCIND_CONSENT",
            "PRICE_INCREASE",
            "EXTERNAL_PURCHASE_TOKEN",
        ] {
            assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
        }
        assert_eq!(seen["app_transaction"], account.as_str());
        assert_eq!(seen["app_account_token"], true);
        assert_eq!(seen["test_notification"], "TEST");
        assert_eq!(seen["unknown"], json!([404, 4040010]));
        // What the library sent was kept as Apple keeps it.
        let consumption = sim.server.consumption_requests();
        assert_eq!(consumption.len(), 1);
        assert_eq!(consumption[0].version, 2);
        assert_eq!(consumption[0].body["consumptionPercentage"], 25_000);
        assert!(sim.server.finished().contains(&coins.transaction_id));
    }
);

/// Runs a Python script with `input` as JSON on stdin; its stdout, as JSON.
fn run_python(python: &std::path::Path, script: &str, input: &Value) -> Value {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
