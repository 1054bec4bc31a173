//! Google Play end to end through the Play simulator (`store_sim::play`): its token endpoint checks
//! the gateway's signed assertions, its Developer API holds the purchases, and its Pub/Sub pushes
//! reach the gateway with Google-signed OIDC tokens. Every story runs on both databases.

use std::sync::Arc;

use gateway_core::Clock;
use serde_json::{Value, json};
use store_sim::{
    SimClock,
    play::{Action, Buy, Forge, Period, PlaySim, PushMode, PushSettings, Refund, Subscribe},
};

use crate::{both, helpers::*};

const PACKAGE: &str = "edu.acme.app";
const PUSH_ACCOUNT: &str = "pubsub-push@acme-project.iam.gserviceaccount.com";
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// The simulated Play of app `acme`, on the gateway's clock, pushing to the gateway.
struct Play {
    sim: Arc<PlaySim>,
    url: String,
}

impl Play {
    /// Seeds `acme`'s catalog (with Play SKUs) and points its Play settings at a new simulator.
    async fn open(app: &TestApp) -> Play {
        app.seed_catalog("acme").await;
        for (id, body) in [
            (
                "coins100",
                json!({"kind": "consumable", "store_skus": {"app_store": "edu.acme.coins100", "play_store": "coins_100"},
                    "consumable": {"currency": "COINS", "amount": 100}}),
            ),
            (
                "premium",
                json!({"kind": "subscription", "store_skus": {"app_store": "edu.acme.premium", "play_store": "premium"},
                    "entitlements": [{"id": "premium"}]}),
            ),
        ] {
            app.put(&format!("/v1/apps/acme/products/{id}"), body)
                .await
                .expect(200);
        }
        let clock = app.clock.clone();
        let sim = PlaySim::new(SimClock::from_fn(move || clock.now().millis())).unwrap();
        let url = sim.serve().await.unwrap();
        sim.add_package(PACKAGE);
        let account = sim.create_service_account("acme-project").unwrap();
        sim.grant(&account, PACKAGE).unwrap();
        let endpoint = format!("{}/v1/apps/acme/notifications/play_store", app.addr);
        sim.set_push(PACKAGE, PushSettings::oidc(&endpoint, PUSH_ACCOUNT))
            .unwrap();
        app.patch(
            "/v1/apps/acme",
            json!({"play_store": {
                "package_name": PACKAGE, "service_account_json": account.key_file_json(),
                "api_base_url": url, "pubsub_audience": endpoint, "pubsub_service_account": PUSH_ACCOUNT,
                "google_certs_url": format!("{url}/oauth2/v3/certs")
            }}),
        )
        .await
        .expect(200);
        Play { sim, url }
    }

    async fn buy(&self, sku: &str, customize: impl FnOnce(&mut Buy)) -> String {
        let mut buy = Buy::new(PACKAGE, sku);
        customize(&mut buy);
        let out = self.sim.buy(buy).await.unwrap();
        out.purchase_token.unwrap()
    }

    /// The acknowledgements (and consumptions) the simulated API took, by token.
    fn acknowledged(&self, token: &str) -> bool {
        let one_time = self
            .sim
            .product_purchase(token)
            .is_some_and(|p| p["acknowledgementState"] == "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED");
        let sub = self
            .sim
            .subscription_purchase(token)
            .is_some_and(|p| p["acknowledgementState"] == "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED");
        one_time || sub
    }

    /// Whether `token` is acknowledged within a few seconds: the server's own delivery worker may
    /// hold the acknowledgement's lease while a test step runs.
    async fn acknowledged_soon(&self, token: &str) -> bool {
        for _ in 0..50 {
            if self.acknowledged(token) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    fn calls_to(&self, token: &str, verb: &str) -> usize {
        self.sim
            .calls()
            .iter()
            .filter(|c| c.path.contains(token) && c.path.ends_with(verb) && c.status < 300)
            .count()
    }
}

async fn submit(app: &TestApp, user: &str, token: &str, product: Option<&str>) -> Answer {
    let mut body = json!({"app_user_id": user, "store": "play_store", "purchase_token": token});
    if let Some(p) = product {
        body["product_id"] = json!(p);
    }
    app.post("/v1/apps/acme/purchases", body).await
}

/// Runs the delivery worker until nothing is left to send now.
async fn deliver(app: &TestApp) {
    let clock: Arc<dyn Clock> = Arc::new(app.clock.clone());
    let senders = gateway::jobs::deliveries::Senders {
        http: reqwest::Client::new(),
        lms: Arc::new(gateway::service::openedx::Caches::default()),
        stores: app.cx.stores.clone(),
    };
    for _ in 0..5 {
        gateway::jobs::deliveries::step(&app.db, &clock, &senders).await;
    }
}

async fn premium(app: &TestApp) -> String {
    let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
    entitlement(&snap, "premium")
}

fn entitlement(snap: &Value, id: &str) -> String {
    snap["entitlements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .map_or("none".into(), |e| e["status"].as_str().unwrap().to_owned())
}

both!(
    a_purchase_is_granted_then_acknowledged,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let token = play.buy("cs101", |_| {}).await;
        // Pub/Sub pushed ONE_TIME_PRODUCT_PURCHASED before any customer held the token: kept, held.
        let pushed = play.sim.deliveries();
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].status, Some(200), "{:?}", pushed[0].answer);
        assert!(
            !play.acknowledged(&token),
            "nothing is acknowledged before a grant"
        );

        // Play's API fails after the submission's read, for a while: the acknowledgement waits.
        play.sim.fail_after(1, vec![(503, None); 20]);
        let answer = submit(&app, "u1", &token, Some("cs101")).await.expect(200);
        assert_eq!(answer["status"], "granted");
        assert_eq!(
            entitlement(&answer["customer"], "course-v1:Acme+CS101+2026"),
            "active"
        );
        assert_eq!(answer["purchase"]["store"], "play_store");
        // The acknowledgement is owed by the grant's commit and performed by the outbox after it.
        let owed = app.outbox("u1").await;
        assert!(
            owed.iter()
                .any(|e| e.event_type == "store.play_store.acknowledge"),
            "{owed:?}"
        );
        // After 48 hours it is overdue; once Play answers again, it is acknowledged.
        deliver(&app).await;
        assert!(!play.acknowledged(&token));
        let overdue = |app: &TestApp| {
            let before = app.clock.now().plus_millis(-48 * HOUR);
            let db = app.db.clone();
            async move {
                gateway::db::deliveries::overdue_store_actions(&db, before)
                    .await
                    .unwrap()
            }
        };
        assert!(overdue(&app).await.is_empty());
        app.clock.advance_millis(49 * HOUR);
        assert_eq!(
            overdue(&app).await,
            [("store.play_store.acknowledge".to_owned(), 1)]
        );
        play.sim.fail_next(Vec::new());
        app.clock.advance_millis(HOUR);
        deliver(&app).await;
        assert!(play.acknowledged_soon(&token).await);
        assert!(overdue(&app).await.is_empty());
        assert_eq!(play.calls_to(&token, ":acknowledge"), 1);
        // Submitting again changes nothing and acknowledges nothing more.
        submit(&app, "u1", &token, None).await.expect(200);
        deliver(&app).await;
        assert_eq!(play.calls_to(&token, ":acknowledge"), 1);
    }
);

both!(
    a_pending_purchase_grants_only_once_play_confirms_it,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let token = play.buy("cs101", |b| b.pending = true).await;
        let answer = submit(&app, "u1", &token, Some("cs101")).await.expect(200);
        assert_eq!(answer["status"], "pending");
        assert_ne!(
            entitlement(&answer["customer"], "course-v1:Acme+CS101+2026"),
            "active"
        );
        deliver(&app).await;
        assert!(
            !play.acknowledged(&token),
            "a pending payment is not acknowledged"
        );
        // Play confirms: its RTDN makes the gateway read the token again.
        play.sim.confirm(&token).await.unwrap();
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(entitlement(&snap, "course-v1:Acme+CS101+2026"), "active");
        deliver(&app).await;
        assert!(play.acknowledged_soon(&token).await);

        // Another pending purchase that Play cancels ends as nothing.
        let dropped = play.buy("cs101", |b| b.pending = true).await;
        submit(&app, "u2", &dropped, Some("cs101"))
            .await
            .expect(200);
        play.sim.cancel_pending(&dropped).await.unwrap();
        let snap = app.get("/v1/apps/acme/customers/u2").await.expect(200);
        assert_eq!(snap["purchases"][0]["status"], "revoked");
        assert_eq!(entitlement(&snap, "course-v1:Acme+CS101+2026"), "revoked");
        let granted = app.outbox("u2").await;
        assert!(
            !granted
                .iter()
                .any(|e| e.event_type == "entitlement.granted"),
            "nothing was ever granted: {granted:?}"
        );
        deliver(&app).await;
        assert!(!play.acknowledged(&dropped));

        // The app sends the same token again once Play Billing says it is paid; Play's notification
        // has not come yet. The gateway reads the token again and grants.
        let slow = play.buy("cs101", |b| b.pending = true).await;
        let answer = submit(&app, "u3", &slow, Some("cs101")).await.expect(200);
        assert_eq!(answer["status"], "pending");
        play.sim
            .act_with(
                Action::Confirm {
                    token: slow.clone(),
                },
                PushMode::Skip,
            )
            .await
            .unwrap();
        let answer = submit(&app, "u3", &slow, Some("cs101")).await.expect(200);
        assert_eq!(answer["status"], "granted", "{answer}");
        assert!(play.acknowledged_soon(&slow).await);
    }
);

both!(
    a_purchase_refused_by_a_rule_is_never_acknowledged,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        // Bought through u1's order (its obfuscatedAccountId), with no push to the gateway; u2
        // submits it: refused, so nothing grants it and nothing acknowledges it.
        play.sim.set_push_mode(PushMode::Skip);
        let order = app
            .post(
                "/v1/apps/acme/customers/u1/orders",
                json!({"product_ids": ["cs101"]}),
            )
            .await
            .expect(201);
        let account = order["obfuscated_account_id"].as_str().unwrap().to_owned();
        let token = play
            .buy("cs101", |b| b.obfuscated_account_id = Some(account))
            .await;
        submit(&app, "u2", &token, None)
            .await
            .error(409, "transaction_of_another_customer");
        deliver(&app).await;
        assert!(!play.acknowledged(&token));
        assert_eq!(play.calls_to(&token, ":acknowledge"), 0);
        // Play refunds what is not acknowledged within three days.
        app.clock.advance_millis(3 * DAY + HOUR);
        play.sim.tick().await;
        assert!(
            play.sim
                .voided_purchases()
                .iter()
                .any(|v| v["purchaseToken"] == token.as_str()),
            "Play refunded the unacknowledged purchase"
        );
    }
);

both!(
    a_void_found_by_the_poller_revokes_and_claws_back,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let course = play.buy("cs101", |_| {}).await;
        let coins = play.buy("coins_100", |_| {}).await;
        submit(&app, "u1", &course, None).await.expect(200);
        let snap = submit(&app, "u1", &coins, Some("coins100"))
            .await
            .expect(200);
        assert_eq!(snap["customer"]["balances"]["COINS"], 100);
        deliver(&app).await;
        // The server's own delivery worker may hold the consumption's lease: wait for it.
        assert!(
            play.acknowledged_soon(&coins).await,
            "a consumable is consumed"
        );
        assert_eq!(play.calls_to(&coins, ":consume"), 1, "consumed, once");
        // Refunds Play does not push: only its voided purchases know.
        play.sim.set_push_mode(PushMode::Skip);
        app.clock.advance_millis(HOUR);
        play.sim.refund(&course, Refund::default()).await.unwrap();
        play.sim.refund(&coins, Refund::default()).await.unwrap();
        let recovered = app
            .post(
                "/v1/apps/acme/notifications/play_store/recover",
                json!({"start": t0().plus_millis(-DAY)}),
            )
            .await
            .expect(200);
        assert_eq!(recovered["seen"], 2, "{recovered}");
        assert_eq!(recovered["recovered"], 2, "{recovered}");
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(entitlement(&snap, "course-v1:Acme+CS101+2026"), "refunded");
        assert_eq!(snap["balances"]["COINS"], 0, "the coins are clawed back");
        // The walk again finds nothing new.
        let again = app
            .post(
                "/v1/apps/acme/notifications/play_store/recover",
                json!({"start": t0().plus_millis(-DAY)}),
            )
            .await
            .expect(200);
        assert_eq!(again["duplicates"], 2, "{again}");

        // The job walks each app as often as the app says (`voided_poll_minutes`).
        let mut settings = app.get("/v1/apps/acme").await.expect(200)["play_store"].clone();
        settings["voided_poll_minutes"] = json!(1);
        settings
            .as_object_mut()
            .unwrap()
            .retain(|k, _| !k.starts_with("service_account_json"));
        app.patch("/v1/apps/acme", json!({"play_store": settings}))
            .await
            .expect(200);
        let acme = gateway::service::apps::get(&app.db, &"acme".parse().unwrap())
            .await
            .unwrap();
        let step = |app: &TestApp| {
            let (cx, acme, now) = (app.cx.clone(), acme.clone(), app.clock.now());
            async move {
                let adapter = cx
                    .stores
                    .adapter(gateway_core::ids::Store::PlayStore)
                    .unwrap();
                let pass = gateway::service::recovery::recover_step(&cx, adapter, &acme, "t", now)
                    .await
                    .unwrap();
                matches!(pass, gateway::service::recovery::Pass::Read { .. })
            }
        };
        assert!(step(&app).await, "the first walk reads");
        app.clock.advance_millis(30_000);
        assert!(!step(&app).await, "not due yet");
        app.clock.advance_millis(31_000);
        assert!(step(&app).await, "due after a minute, not fifteen");
    }
);

both!(
    a_purchase_productsv2_refuses_is_read_through_v1_when_the_product_is_named,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let coins = play.buy("coins_100", |b| b.quantity = 2).await;
        play.sim.refuse_v2(&coins);
        // Without a product id there is nothing else to ask.
        submit(&app, "u1", &coins, None)
            .await
            .error(404, "purchase_token_not_found");
        // Named by its catalog id (or Play's), v1 answers for it.
        let answer = submit(&app, "u1", &coins, Some("coins_100"))
            .await
            .expect(200);
        assert_eq!(answer["status"], "granted", "{answer}");
        assert_eq!(answer["customer"]["balances"]["COINS"], 200);
        let v1 = format!("/purchases/products/coins_100/tokens/{coins}");
        assert_eq!(
            play.sim
                .calls()
                .iter()
                .filter(|c| c.method == "GET" && c.path.ends_with(&v1) && c.status == 200)
                .count(),
            1,
            "read once through v1"
        );
        deliver(&app).await;
        assert!(play.acknowledged_soon(&coins).await, "and consumed");
    }
);

both!(
    an_operator_refunds_at_play_and_access_ends,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let sub = play
            .sim
            .subscribe(Subscribe::new(PACKAGE, "premium", "monthly"))
            .await
            .unwrap()
            .purchase_token
            .unwrap();
        let course = play.buy("cs101", |_| {}).await;
        submit(&app, "u1", &sub, Some("premium")).await.expect(200);
        let bought = submit(&app, "u1", &course, Some("cs101")).await.expect(200);
        let snap = &bought["customer"];
        let id_of = |store_id: &str| {
            snap["purchases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["store_transaction_id"] == store_id)
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let (sub_id, course_id) = (id_of(&sub), id_of(&course));
        let refund = |id: &str| format!("/v1/apps/acme/purchases/{id}/refund");

        // Refunds need a key with the `refunds` scope, and a reason.
        let support = app.key("acme", "secret", &["customers", "read"]).await;
        let body = json!({"reason": "the learner asked support"});
        app.request(
            reqwest::Method::POST,
            &refund(&sub_id),
            Some(&support),
            Some(body.clone()),
            &[],
        )
        .await
        .error(403, "forbidden");
        app.post(&refund(&sub_id), json!({"reason": " "}))
            .await
            .error(400, "reason_required");
        app.post(&refund("pur_nope"), body.clone())
            .await
            .error(404, "purchase_not_found");
        app.post(
            &refund(&course_id),
            json!({"reason": "x", "prorated": true}),
        )
        .await
        .error(422, "prorated_refund_not_possible");
        assert_eq!(premium(&app).await, "active", "nothing changed yet");

        // The subscription: revoked at Play (a full refund), access ends at once.
        let refunds = app.key("acme", "secret", &["refunds"]).await;
        let done = app
            .request(
                reqwest::Method::POST,
                &refund(&sub_id),
                Some(&refunds),
                Some(body.clone()),
                &[],
            )
            .await
            .expect(200);
        assert_eq!(done["purchase"]["status"], "refunded", "{done}");
        assert_eq!(premium(&app).await, "refunded");
        let revoke = play
            .sim
            .calls()
            .into_iter()
            .filter(|c| c.path.ends_with(&format!("{sub}:revoke")) && c.status == 200)
            .count();
        assert_eq!(revoke, 1, "subscriptionsv2.revoke once");
        play.sim.settle().await;
        assert_eq!(premium(&app).await, "refunded", "Play's own RTDN agrees");
        app.post(&refund(&sub_id), body.clone())
            .await
            .error(409, "already_refunded");

        // The course: its order refunded with revoke.
        let done = app.post(&refund(&course_id), body).await.expect(200);
        assert_eq!(done["purchase"]["status"], "refunded", "{done}");
        assert_eq!(
            entitlement(&done["customer"], "course-v1:Acme+CS101+2026"),
            "refunded"
        );
        let order = play.sim.product_purchase(&course).unwrap()["orderId"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            play.sim
                .calls()
                .iter()
                .any(|c| c.path.ends_with(&format!("{order}:refund"))
                    && c.query.as_deref() == Some("revoke=true")
                    && c.status < 300),
            "orders.refund with revoke"
        );
        let timeline = app
            .get("/v1/apps/acme/customers/u1/timeline")
            .await
            .expect(200);
        // Play's own notification of the refund may come after the operator's: look for the latter.
        assert!(
            timeline["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["cause"]
                    .as_str()
                    .unwrap()
                    .contains("by an operator: the learner asked support")),
            "{timeline}"
        );
    }
);

both!(
    a_partial_refund_claws_back_its_share_of_the_units,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let coins = play.buy("coins_100", |b| b.quantity = 4).await;
        let snap = submit(&app, "u1", &coins, Some("coins100"))
            .await
            .expect(200);
        assert_eq!(snap["customer"]["balances"]["COINS"], 400);
        deliver(&app).await;

        // One unit refunded and notified: the notification says a partial refund, Play's voided
        // purchases say how many units.
        app.clock.advance_millis(HOUR);
        let one = Refund {
            quantity: Some(1),
            ..Refund::default()
        };
        let pushed = play.sim.refund(&coins, one.clone()).await.unwrap();
        assert_eq!(
            pushed.notification.unwrap()["voidedPurchaseNotification"]["refundType"],
            2
        );
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["balances"]["COINS"], 300, "one unit clawed back");
        assert_eq!(snap["purchases"][0]["status"], "active");

        // Two more, not notified: the voided walk finds them; the first is not counted twice.
        play.sim.set_push_mode(PushMode::Skip);
        app.clock.advance_millis(HOUR);
        let two = Refund {
            quantity: Some(2),
            ..Refund::default()
        };
        play.sim.refund(&coins, two).await.unwrap();
        let recovered = app
            .post(
                "/v1/apps/acme/notifications/play_store/recover",
                json!({"start": t0().plus_millis(-DAY)}),
            )
            .await
            .expect(200);
        assert_eq!(recovered["seen"], 2, "{recovered}");
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["balances"]["COINS"], 100, "three of four clawed back");
        assert_eq!(snap["purchases"][0]["status"], "active");

        // The last unit: nothing of the purchase is left.
        app.clock.advance_millis(HOUR);
        play.sim.set_push_mode(PushMode::Send);
        play.sim.refund(&coins, one).await.unwrap();
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["balances"]["COINS"], 0);
        assert_eq!(snap["purchases"][0]["status"], "refunded");
        let clawbacks: Vec<i64> = app
            .outbox("u1")
            .await
            .iter()
            .filter(|e| e.event_type == "balance.changed")
            .filter_map(|e| e.payload["data"]["balance"].as_i64())
            .collect();
        assert_eq!(clawbacks, [400, 300, 100, 0]);
    }
);

both!(
    a_subscription_follows_play_through_its_states,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let out = play
            .sim
            .subscribe(Subscribe::new(PACKAGE, "premium", "monthly"))
            .await
            .unwrap();
        let token = out.purchase_token.unwrap();
        let answer = submit(&app, "u1", &token, Some("premium"))
            .await
            .expect(200);
        assert_eq!(answer["status"], "granted");
        deliver(&app).await;
        assert!(play.acknowledged_soon(&token).await);
        // Renewal, grace, hold, recovery, pause, cancellation and expiry each move the entitlement.
        app.clock.advance_millis(30 * DAY);
        play.sim.renew(&token).await.unwrap();
        assert_eq!(premium(&app).await, "active");
        // To the end of the paid period (calendar months), where billing fails.
        let expiry = play.sim.subscription_purchase(&token).unwrap()["lineItems"][0]["expiryTime"]
            .as_str()
            .unwrap()
            .to_owned();
        app.clock
            .set(gateway_core::Timestamp::parse_rfc3339(&expiry).unwrap());
        play.sim
            .act(Action::EnterGracePeriod {
                token: token.clone(),
                grace: std::time::Duration::from_millis(3 * DAY as u64),
            })
            .await
            .unwrap();
        assert_eq!(premium(&app).await, "grace_period");
        play.sim
            .act(Action::PutOnHold {
                token: token.clone(),
            })
            .await
            .unwrap();
        app.clock.advance_millis(4 * DAY);
        assert_ne!(premium(&app).await, "active");
        play.sim
            .act(Action::Recover {
                token: token.clone(),
            })
            .await
            .unwrap();
        assert_eq!(premium(&app).await, "active");
        play.sim
            .act(Action::Pause {
                token: token.clone(),
                duration: Period::ONE_MONTH,
            })
            .await
            .unwrap();
        assert_ne!(premium(&app).await, "active");
        // A duplicate push changes nothing.
        let last = play.sim.deliveries().last().unwrap().clone();
        let before = app.get("/v1/apps/acme/customers/u1").await.expect(200)["version"].clone();
        let again = play.sim.resend(&last.message_id).await.unwrap();
        assert_eq!(again.status, Some(200));
        assert!(again.answer.unwrap().contains("duplicate"));
        let after = app.get("/v1/apps/acme/customers/u1").await.expect(200)["version"].clone();
        assert_eq!(before, after);
        // Resumed by a renewal, cancelled (access to the end of the period), then expired.
        app.clock.advance_millis(30 * DAY);
        play.sim.renew(&token).await.unwrap();
        assert_eq!(premium(&app).await, "active");
        app.clock.advance_millis(60_000);
        play.sim.cancel(&token).await.unwrap();
        assert_eq!(premium(&app).await, "active");
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["purchases"][0]["auto_renew"], false);
        play.sim.expire(&token).await.unwrap();
        assert_eq!(premium(&app).await, "expired");
    }
);

both!(
    forged_and_foreign_pushes_are_refused_and_change_nothing,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let token = play.buy("cs101", |_| {}).await;
        submit(&app, "u1", &token, None).await.expect(200);
        let version = app.get("/v1/apps/acme/customers/u1").await.expect(200)["version"].clone();
        for forge in [
            Forge::OtherKey,
            Forge::Audience("https://elsewhere.example/push".into()),
            Forge::Email("someone@else.iam.gserviceaccount.com".into()),
            Forge::EmailUnverified,
            Forge::Issuer("https://evil.example".into()),
            Forge::Expired,
            Forge::NoAuth,
        ] {
            let out = play
                .sim
                .act_with(
                    Action::TestNotification {
                        package: PACKAGE.into(),
                    },
                    PushMode::Forge(forge.clone()),
                )
                .await;
            let delivery = out.unwrap().delivery.unwrap();
            assert_eq!(
                delivery.status,
                Some(401),
                "{forge:?}: {:?}",
                delivery.answer
            );
        }
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["version"], version, "nothing changed");
        // A wrong push token, when the app authenticates pushes by token.
        app.patch(
            "/v1/apps/acme",
            json!({"play_store": {"package_name": PACKAGE, "api_base_url": play.url, "push_token": "s3cret-push-token"}}),
        )
        .await
        .expect(200);
        let url = "/v1/apps/acme/notifications/play_store?token=wrong";
        let body = json!({"message": {"data": "e30=", "messageId": "1"}});
        app.post(url, body).await.error(401, "invalid_push_token");
        // Another package, authenticated.
        let other = base64_json(&json!({"version": "1.0", "packageName": "com.other.app",
            "eventTimeMillis": "1", "testNotification": {"version": "1.0"}}));
        let url = "/v1/apps/acme/notifications/play_store?token=s3cret-push-token";
        let pushed = app
            .post(url, json!({"message": {"data": other, "messageId": "2"}}))
            .await;
        pushed.error(422, "wrong_app");
        // A malformed envelope.
        let malformed = app.post(url, json!({"nothing": true})).await;
        malformed.error(400, "malformed_notification");
        // A token Play does not know, and a product the catalog does not sell.
        let unknown = submit(&app, "u1", "unknown-token-123", Some("cs101")).await;
        unknown.error(404, "purchase_token_not_found");
        let stray = play.buy("not_in_catalog", |_| {}).await;
        let refused = submit(&app, "u1", &stray, None).await;
        refused.error(422, "unknown_product");
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["version"], version);
    }
);

fn base64_json(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

both!(
    an_upgrade_moves_access_without_gap_or_double_and_a_restore_follows_the_policy,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        app.put(
            "/v1/apps/acme/products/premium_plus",
            json!({"kind": "subscription", "store_skus": {"play_store": "premium_plus"},
                "entitlements": [{"id": "premium"}, {"id": "plus"}]}),
        )
        .await
        .expect(201);
        let old = play
            .sim
            .subscribe(Subscribe::new(PACKAGE, "premium", "monthly"))
            .await
            .unwrap()
            .purchase_token
            .unwrap();
        submit(&app, "u1", &old, Some("premium")).await.expect(200);
        deliver(&app).await;
        // Acknowledged before time passes, or Play refunds it after three days.
        assert!(play.acknowledged_soon(&old).await);
        app.clock.advance_millis(10 * DAY);
        // The upgrade reaches the gateway only as Play's push about the new token.
        let new = play
            .sim
            .act(Action::ChangePlan {
                token: old.clone(),
                to: Subscribe::new(PACKAGE, "premium_plus", "monthly"),
            })
            .await
            .unwrap()
            .purchase_token
            .unwrap();
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(entitlement(&snap, "premium"), "active");
        assert_eq!(entitlement(&snap, "plus"), "active");
        let premium: Vec<_> = snap["entitlements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["id"] == "premium")
            .collect();
        assert_eq!(premium.len(), 1, "one entitlement, not two");
        let status_of = |token: &str| {
            snap["purchases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["store_transaction_id"] == token)
                .map(|p| p["status"].as_str().unwrap().to_owned())
        };
        assert_eq!(status_of(&old).as_deref(), Some("expired"), "{snap}");
        assert_eq!(status_of(&new).as_deref(), Some("active"));
        let lapses: Vec<_> = app
            .outbox("u1")
            .await
            .into_iter()
            .filter(|e| {
                matches!(
                    e.event_type.as_str(),
                    "entitlement.revoked" | "entitlement.expired"
                )
            })
            .collect();
        assert!(lapses.is_empty(), "premium never lapsed: {lapses:?}");
        deliver(&app).await;
        assert!(play.acknowledged_soon(&new).await);

        // Another customer restores the new token on a new device: under the default `transfer`
        // policy it moves to them, and u1 keeps nothing of it.
        let restored = app
            .post(
                "/v1/apps/acme/customers/u2/restore",
                json!({"store": "play_store", "purchase_tokens": [new]}),
            )
            .await
            .expect(200);
        assert_eq!(entitlement(&restored, "plus"), "active");
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_ne!(entitlement(&snap, "plus"), "active");
    }
);

both!(
    a_refund_review_is_answered_from_what_the_gateway_knows_when_the_app_opts_in,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let token = play.buy("cs101", |_| {}).await;
        submit(&app, "u1", &token, Some("cs101")).await.expect(200);
        // Not opted in: the review is kept, nothing is answered.
        play.sim.request_refund_review(&token).await.unwrap();
        deliver(&app).await;
        assert!(play.sim.refund_reviews().is_empty());
        let settings = app.get("/v1/apps/acme").await.expect(200)["play_store"].clone();
        let mut settings = settings;
        settings["answer_refund_reviews"] = json!(true);
        settings
            .as_object_mut()
            .unwrap()
            .retain(|k, _| !k.starts_with("service_account_json"));
        app.patch("/v1/apps/acme", json!({"play_store": settings}))
            .await
            .expect(200);
        let pushed = play.sim.request_refund_review(&token).await.unwrap();
        assert_eq!(pushed.delivery.unwrap().status, Some(200));
        deliver(&app).await;
        let mut reviews = Vec::new();
        for _ in 0..50 {
            reviews = play.sim.refund_reviews();
            if !reviews.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(reviews.len(), 1, "{reviews:?}");
        assert_eq!(
            reviews[0].pending_refund_token,
            pushed.pending_refund_token.unwrap()
        );
        assert_eq!(
            reviews[0].refund_preference, "NEUTRAL",
            "the course was delivered"
        );
        // A review is not a refund: access stays.
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(entitlement(&snap, "course-v1:Acme+CS101+2026"), "active");
    }
);

both!(
    a_resubscription_bought_in_the_play_store_is_linked_to_its_customer_before_acknowledgement,
    |app: TestApp| async move {
        let play = Play::open(&app).await;
        let order = app
            .post(
                "/v1/apps/acme/customers/u1/orders",
                json!({"product_ids": ["premium"]}),
            )
            .await
            .expect(201);
        let account = order["obfuscated_account_id"].as_str().unwrap().to_owned();
        let mut subscribe = Subscribe::new(PACKAGE, "premium", "monthly");
        subscribe.obfuscated_account_id = Some(account.clone());
        let old = play
            .sim
            .subscribe(subscribe)
            .await
            .unwrap()
            .purchase_token
            .unwrap();
        submit(&app, "u1", &old, Some("premium")).await.expect(200);
        deliver(&app).await;
        assert!(play.acknowledged_soon(&old).await);
        app.clock.advance_millis(DAY);
        play.sim.cancel(&old).await.unwrap();
        // Cancelled, it expires at the end of its period.
        app.clock.advance_millis(40 * DAY);
        play.sim.tick().await;
        assert_eq!(premium(&app).await, "expired");
        // Bought again in the Play Store's subscription center, outside the app: only Play's push
        // tells the gateway, and the token it replaces says whose it is.
        app.clock.advance_millis(DAY);
        let new = play
            .sim
            .act(Action::Resubscribe { token: old.clone() })
            .await
            .unwrap()
            .purchase_token
            .unwrap();
        assert_eq!(premium(&app).await, "active");
        deliver(&app).await;
        assert!(play.acknowledged_soon(&new).await);
        let ack = play
            .sim
            .acknowledgements()
            .into_iter()
            .find(|a| a.purchase_token == new)
            .unwrap();
        assert_eq!(
            ack.obfuscated_account_id.as_deref(),
            Some(account.as_str()),
            "acknowledged naming its customer's account"
        );
    }
);
