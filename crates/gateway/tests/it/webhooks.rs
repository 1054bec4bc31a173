//! Fulfilment by webhook: outbox events reach a stand-in receiver after commit, signed per Standard
//! Webhooks (checked with the `standardwebhooks` package from PyPI, an implementation of its own), in
//! order per customer, through outages, dead letters and retries by hand, and exactly once in effect
//! with two gateways on one PostgreSQL.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap};
use gateway_core::Clock;
use serde_json::{Value, json};
use store_sim::apple::store::ProductKind;

use crate::{
    both,
    helpers::*,
    sim::{Sim, order},
};

const COURSE: &str = "course-v1:Acme+CS101+2026";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    /// What the receiver answered.
    answered: u16,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// What the receiver's handler shares: the requests so far and the status to answer.
type ReceiverState = (Arc<Mutex<Vec<Got>>>, Arc<AtomicU16>);

/// A stand-in webhook receiver that answers every request with the status it is set to.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    answer: Arc<AtomicU16>,
}

impl Receiver {
    async fn start(answer: u16) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(AtomicU16::new(answer));
        let state = (got.clone(), answer.clone());
        let router = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State((got, answer)): State<ReceiverState>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let h = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        let status = answer.load(Ordering::SeqCst);
                        got.lock().unwrap().push(Got {
                            id: h("webhook-id"),
                            timestamp: h("webhook-timestamp"),
                            signature: h("webhook-signature"),
                            body: String::from_utf8(body.to_vec()).unwrap(),
                            answered: status,
                        });
                        axum::http::StatusCode::from_u16(status).unwrap()
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Receiver { url, got, answer }
    }

    fn set(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The requests answered 2xx.
    fn accepted(&self) -> Vec<Got> {
        self.got()
            .into_iter()
            .filter(|g| (200..300).contains(&g.answered))
            .collect()
    }

    /// Waits until `done` holds of what the receiver got (10 s at most).
    async fn wait_for(&self, what: &str, done: impl Fn(&[Got]) -> bool) {
        for _ in 0..200 {
            if done(&self.got()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the receiver never got {what}; it got {:#?}", self.got());
    }
}

/// Creates a webhook endpoint of `acme` for `receiver`; (endpoint id, secret).
async fn endpoint(app: &TestApp, receiver: &Receiver, events: Value) -> (String, String) {
    let created = app
        .post(
            "/v1/apps/acme/webhook_endpoints",
            json!({"url": receiver.url, "events": events}),
        )
        .await
        .expect(201);
    (
        created["id"].as_str().unwrap().to_owned(),
        created["new_secret"].as_str().unwrap().to_owned(),
    )
}

/// A manual grant a second after the previous action, so that facts of one customer never tie.
async fn grant(app: &TestApp, customer: &str) {
    app.clock.advance_millis(1000);
    app.post(
        &format!("/v1/apps/acme/customers/{customer}/grants"),
        json!({"product_id": "cs101", "reason": "test"}),
    )
    .await
    .expect(201);
}

async fn revoke(app: &TestApp, customer: &str) {
    app.clock.advance_millis(1000);
    app.delete(
        &format!("/v1/apps/acme/customers/{customer}/grants/{COURSE}"),
        Some(json!({"reason": "test"})),
    )
    .await
    .expect(200);
}

async fn deliveries(app: &TestApp, query: &str) -> Vec<Value> {
    app.get(&format!("/v1/apps/acme/deliveries{query}"))
        .await
        .expect(200)["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the app's deliveries matching `query` number `n` (10 s at most).
async fn wait_deliveries(app: &TestApp, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let found = deliveries(app, query).await;
        if found.len() == n {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "expected {n} deliveries for {query:?}; there are {:#?}",
        deliveries(app, "").await
    );
}

/// Checks every request with the `standardwebhooks` package against `secrets` (any one may sign);
/// returns, per request, whether it verified.
fn verify_independently(got: &[Got], secret: &str) -> Vec<bool> {
    let cases: Vec<Value> = got
        .iter()
        .map(|g| {
            json!({"secret": secret, "body": g.body, "headers": {
                "webhook-id": g.id, "webhook-timestamp": g.timestamp, "webhook-signature": g.signature}})
        })
        .collect();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
for case in json.load(sys.stdin):
    try:
        Webhook(case["secret"]).verify(case["body"], case["headers"])
        print("ok")
    except Exception as e:
        print("refused", e)
"#;
    let mut child = std::process::Command::new(python_with("standardwebhooks", "1.1.0"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&cases).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().map(|l| l == "ok").collect()
}

both!(
    a_purchase_through_the_simulator_reaches_the_receiver_signed,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let receiver = Receiver::start(200).await;
        let (endpoint_id, secret) = endpoint(&app, &receiver, json!([])).await;
        assert!(secret.starts_with("whsec_"));
        // The secret is shown once, at creation.
        let read = app
            .get(&format!("/v1/apps/acme/webhook_endpoints/{endpoint_id}"))
            .await
            .expect(200);
        assert!(!read.to_string().contains(&secret[6..]), "{read}");
        assert_eq!(read["secrets"].as_array().unwrap().len(), 1);

        let token = order(&app, "alice", "cs101").await;
        let bought = sim
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
            .await
            .unwrap();
        assert_eq!(bought.http_status, Some(200));
        receiver
            .wait_for("entitlement.granted", |g| !g.is_empty())
            .await;
        let got = receiver.got();
        assert_eq!(got.len(), 1, "{got:#?}");
        let event = got[0].json();
        assert_eq!(event["type"], "entitlement.granted");
        assert_eq!(event["data"]["app_user_id"], "alice");
        assert_eq!(event["data"]["entitlement"]["id"], COURSE);
        let outbox = app.outbox("alice").await;
        assert_eq!(got[0].id, outbox[0].id, "webhook-id is the outbox event");

        assert_eq!(verify_independently(&got, &secret), vec![true]);
        let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(
            verify_independently(&got, other),
            vec![false],
            "the check can fail"
        );

        let listed = wait_deliveries(&app, "?status=delivered", 1).await;
        assert_eq!(listed[0]["event_id"], got[0].id.as_str());
        assert_eq!(listed[0]["endpoint_id"], endpoint_id.as_str());
        assert_eq!(listed[0]["attempts"], 1);
        assert_eq!(listed[0]["last_status"], 200);
    }
);

both!(
    a_rotation_signs_with_old_and_new_secrets_until_the_overlap_ends,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let receiver = Receiver::start(200).await;
        let (id, old) = endpoint(&app, &receiver, json!(["entitlement.granted"])).await;
        let rotated = app
            .post(
                &format!("/v1/apps/acme/webhook_endpoints/{id}/rotate_secret"),
                json!({"overlap_seconds": 3600}),
            )
            .await
            .expect(200);
        let new = rotated["new_secret"].as_str().unwrap().to_owned();
        assert_ne!(new, old);
        grant(&app, "u1").await;
        receiver.wait_for("a grant", |g| g.len() == 1).await;
        let got = receiver.got();
        assert_eq!(got[0].signature.split(' ').count(), 2);
        assert_eq!(verify_independently(&got, &old), vec![true]);
        assert_eq!(verify_independently(&got, &new), vec![true]);

        // After the overlap only the new secret signs; revokes are filtered out.
        app.clock.advance_millis(3_600_001);
        revoke(&app, "u1").await;
        grant(&app, "u1").await;
        receiver
            .wait_for("the second grant", |g| g.len() == 2)
            .await;
        let got = receiver.got();
        assert_eq!(got[1].json()["type"], "entitlement.granted");
        assert_eq!(got[1].signature.split(' ').count(), 1);
        assert_eq!(verify_independently(&got[1..], &new), vec![true]);
        assert_eq!(verify_independently(&got[1..], &old), vec![false]);
    }
);

both!(
    a_receiver_down_for_a_while_gets_every_event_in_order_with_stable_ids,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let receiver = Receiver::start(503).await;
        endpoint(&app, &receiver, json!([])).await;
        grant(&app, "u1").await;
        revoke(&app, "u1").await;
        grant(&app, "u1").await;
        grant(&app, "u2").await;
        // Only the head of each customer's queue is tried while the receiver is down.
        receiver
            .wait_for("two first attempts", |g| g.len() >= 2)
            .await;
        let first_ids: Vec<String> = app.outbox("u1").await.into_iter().map(|e| e.id).collect();
        assert_eq!(first_ids.len(), 3);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tried: Vec<String> = receiver.got().into_iter().map(|g| g.id).collect();
        assert!(!tried.contains(&first_ids[1]) && !tried.contains(&first_ids[2]));
        let pending = deliveries(&app, "?status=pending&app_user_id=u1").await;
        assert_eq!(pending.len(), 3);

        // Retries come with the back-off: a few seconds later, the same event again.
        app.clock.advance_millis(6_000);
        receiver
            .wait_for("a retry of u1's first event", |g| {
                g.iter().filter(|x| x.id == first_ids[0]).count() >= 2
            })
            .await;

        receiver.set(200);
        for _ in 0..10 {
            app.clock.advance_millis(60_000);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        receiver
            .wait_for("every event", |g| {
                g.iter().filter(|x| x.answered == 200).count() == 4
            })
            .await;
        let accepted = receiver.accepted();
        let u1: Vec<&Got> = accepted
            .iter()
            .filter(|g| g.json()["data"]["app_user_id"] == "u1")
            .collect();
        let ids: Vec<&str> = u1.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, first_ids, "in order, each once");
        let types: Vec<Value> = u1.iter().map(|g| g.json()["type"].clone()).collect();
        assert_eq!(
            types,
            vec![
                json!("entitlement.granted"),
                json!("entitlement.revoked"),
                json!("entitlement.granted")
            ]
        );
        // Every attempt of one event carried the same id and body, each signed.
        let all = receiver.got();
        for g in &all {
            let same = all.iter().filter(|x| x.id == g.id);
            assert!(same.clone().all(|x| x.body == g.body));
        }
        let delivered = wait_deliveries(&app, "?status=delivered", 4).await;
        let head = delivered
            .iter()
            .find(|d| d["event_id"] == first_ids[0].as_str())
            .unwrap();
        assert!(head["attempts"].as_i64().unwrap() >= 3, "{head}");
    }
);

both!(
    a_dead_letter_shows_holds_the_customer_back_and_retries_by_hand,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let receiver = Receiver::start(500).await;
        endpoint(&app, &receiver, json!([])).await;
        grant(&app, "u1").await;
        revoke(&app, "u1").await;
        receiver
            .wait_for("a first attempt", |g| !g.is_empty())
            .await;
        // The retry window is 24 hours: the first attempt after it dead-letters the delivery.
        app.clock.advance_millis(25 * 3_600_000);
        let dead = wait_deliveries(&app, "?status=dead", 1).await;
        assert_eq!(dead[0]["event_type"], "entitlement.granted");
        assert_eq!(dead[0]["last_status"], 500);
        assert!(dead[0]["last_error"].as_str().unwrap().contains("HTTP 500"));
        let metrics = app.get("/metrics").await;
        let text = metrics.body.as_str().unwrap_or_default().to_owned();
        assert!(
            text.contains("gateway_deliveries_dead_total"),
            "the metric an alert reads"
        );
        // The revoke waits behind the dead grant: never sent out of order.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let revoke_id = app.outbox("u1").await[1].id.clone();
        assert!(receiver.got().iter().all(|g| g.id != revoke_id));

        receiver.set(200);
        let id = dead[0]["id"].as_str().unwrap();
        let retried = app
            .post(&format!("/v1/apps/acme/deliveries/{id}/retry"), json!({}))
            .await
            .expect(200);
        assert_eq!(retried["status"], "pending");
        receiver
            .wait_for("both events", |g| {
                g.iter().filter(|x| x.answered == 200).count() == 2
            })
            .await;
        let accepted = receiver.accepted();
        assert_eq!(accepted[0].json()["type"], "entitlement.granted");
        assert_eq!(accepted[1].id, revoke_id);
        app.post(&format!("/v1/apps/acme/deliveries/{id}/retry"), json!({}))
            .await
            .error(409, "delivery_delivered");
    }
);

both!(
    bad_endpoint_and_delivery_requests_are_refused_and_change_nothing,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let base = "/v1/apps/acme/webhook_endpoints";
        app.post(base, json!({"url": "ftp://example.com/x"}))
            .await
            .error(400, "invalid_url");
        app.post(base, json!({"url": "not a url"}))
            .await
            .error(400, "invalid_url");
        app.post(
            base,
            json!({"url": "https://example.com/x", "events": ["entitlement.granted", "nope"]}),
        )
        .await
        .error(400, "unknown_event_type");
        app.post(
            base,
            json!({"url": "https://example.com/x", "secret": "whsec_c2hvcnQ="}),
        )
        .await
        .error(400, "invalid_secret");
        assert_eq!(app.count("webhook_endpoints").await, 0);
        app.get(&format!("{base}/we_nope"))
            .await
            .error(404, "endpoint_not_found");
        app.get("/v1/apps/acme/deliveries?status=lost")
            .await
            .error(400, "invalid_status");
        app.get("/v1/apps/acme/deliveries?limit=0")
            .await
            .error(400, "invalid_limit");
        app.post("/v1/apps/acme/deliveries/dlv_nope/retry", json!({}))
            .await
            .error(404, "delivery_not_found");

        // An operator's own secret is taken and never shown.
        let mine = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let created = app
            .post(
                base,
                json!({"url": "https://example.com/x", "secret": mine}),
            )
            .await
            .expect(201);
        assert!(created.get("new_secret").is_none());
        assert!(
            !created
                .to_string()
                .contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        );
        let id = created["id"].as_str().unwrap();
        app.patch(&format!("{base}/{id}"), json!({"events": ["bogus"]}))
            .await
            .error(400, "unknown_event_type");
        let listed = app.get(base).await.expect(200);
        assert_eq!(listed["endpoints"][0]["events"], json!([]));
    }
);

/// Two gateways on one PostgreSQL share the delivery work: every event reaches the receiver exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_deliver_each_event_once() {
    let Some(a) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let b = spawn_on(Backend::Postgres, a.test_db.clone()).await;
    a.seed_catalog("acme").await;
    let receiver = Receiver::start(200).await;
    endpoint(&a, &receiver, json!([])).await;
    let customers = 40;
    for i in 0..customers {
        let gw = if i % 2 == 0 { &a } else { &b };
        grant(gw, &format!("c{i}")).await;
        revoke(gw, &format!("c{i}")).await;
    }
    receiver
        .wait_for("every event", |g| g.len() >= 2 * customers)
        .await;
    // Long enough for a second delivery of anything to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = receiver.got();
    assert_eq!(got.len(), 2 * customers, "no event twice");
    let mut ids: Vec<&str> = got.iter().map(|g| g.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2 * customers);
    for i in 0..customers {
        let types: Vec<Value> = got
            .iter()
            .filter(|g| g.json()["data"]["app_user_id"] == format!("c{i}").as_str())
            .map(|g| g.json()["type"].clone())
            .collect();
        assert_eq!(
            types,
            vec![json!("entitlement.granted"), json!("entitlement.revoked")]
        );
    }
    b.stop().await;
}

both!(
    a_delivery_whose_worker_died_is_sent_again_when_its_lease_ends,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let receiver = Receiver::start(503).await;
        endpoint(&app, &receiver, json!([])).await;
        grant(&app, "u1").await;
        receiver.wait_for("a first attempt", |g| g.len() == 1).await;
        receiver.set(200);
        // Another worker claims the retry as soon as it is due (its clock 6 s ahead of this
        // instance's) and dies before sending it: its lease holds the delivery for a minute.
        let t = app.clock.now();
        let claimed = gateway::db::deliveries::claim(
            &app.db,
            t.plus_millis(6_000),
            t.plus_millis(66_000),
            10,
        )
        .await
        .unwrap();
        assert_eq!(claimed.len(), 1);
        app.clock.advance_millis(10_000);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(receiver.got().len(), 1, "held by the dead worker's lease");
        app.clock.advance_millis(57_000);
        receiver
            .wait_for("the grant, sent again", |g| g.len() == 2)
            .await;
        let got = receiver.got();
        assert_eq!(got[1].id, claimed[0].event_id);
        assert_eq!(got[1].answered, 200);
        let done = wait_deliveries(&app, "?status=delivered", 1).await;
        assert_eq!(done[0]["attempts"], 3, "the dead worker's attempt counts");
    }
);
