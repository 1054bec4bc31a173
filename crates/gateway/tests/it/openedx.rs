//! The Open edX connector against the simulator's stand-in LMS, which refuses what edx-platform
//! refuses (`store_sim::openedx`; each of its rules is tested against the edx-platform code it
//! mirrors in `crates/store-sim/tests/openedx.rs`).

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use gateway::{
    jobs::deliveries::{self, Senders},
    service::openedx as connector,
};
use gateway_core::{Clock, Timestamp};
use serde_json::{Value, json};
use store_sim::{
    SimClock,
    apple::store::{ProductKind, RevocationReason},
    openedx::{self, Course, Enrollment as Enrolled, Mode, OWNER},
};

use crate::{
    both,
    helpers::*,
    sim::{Sim, order},
};

const COURSE: &str = "course-v1:Acme+CS101+2026";
const CLIENT_ID: &str = "gateway-client";
const CLIENT_SECRET: &str = "lms-client-secret-5c1f0e";

/// The simulator's stand-in LMS, served, on the gateway's clock, with `COURSE` offering audit and
/// verified and the learners alice, bob and carol.
#[derive(Clone)]
struct Lms {
    url: String,
    sim: openedx::Lms,
}

impl Lms {
    async fn start(app: &TestApp) -> Lms {
        let sim = openedx::Lms::new(CLIENT_ID, CLIENT_SECRET);
        let clock = app.clock.clone();
        sim.set_clock(SimClock::from_fn(move || clock.now().millis()));
        sim.add_course(
            COURSE,
            Course {
                modes: vec![Mode::new("audit"), Mode::new("verified")],
                enrollment_end: None,
            },
        );
        for user in ["alice", "bob", "carol"] {
            sim.add_user(user);
        }
        let url = sim.serve().await.unwrap();
        Lms { url, sim }
    }

    fn enrollment(&self, user: &str) -> Option<Enrolled> {
        self.sim.enrollment(user, COURSE)
    }

    /// Waits until `user`'s enrollment in `course` is `want` (10 s at most).
    async fn wait_in(&self, course: &str, user: &str, want: Enrolled) {
        for _ in 0..200 {
            if self.sim.enrollment(user, course).as_ref() == Some(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{user} never became {want:?} in the LMS; it is {:?}, after calls {:#?}",
            self.sim.enrollment(user, course),
            self.sim.calls()
        );
    }

    async fn wait_for(&self, user: &str, want: Enrolled) {
        self.wait_in(COURSE, user, want).await;
    }
}

fn enrolled(mode: &str, is_active: bool) -> Enrolled {
    Enrolled {
        mode: mode.into(),
        is_active,
    }
}

/// Waits for a customer's timeline to hold an event of `kind`; that event.
async fn timeline_event(app: &TestApp, customer: &str, kind: &str) -> Value {
    let mut events = Value::Null;
    for _ in 0..200 {
        let timeline = app
            .get(&format!("/v1/apps/acme/customers/{customer}/timeline"))
            .await
            .expect(200);
        events = timeline["events"].clone();
        if let Some(e) = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind)
        {
            return e.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {kind} in {customer}'s timeline: {events:#}");
}

/// The deliveries of `status` to a customer.
async fn deliveries_of(app: &TestApp, customer: &str, status: &str) -> Vec<Value> {
    app.get(&format!(
        "/v1/apps/acme/deliveries?status={status}&app_user_id={customer}"
    ))
    .await
    .expect(200)["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

/// A product granting `course` in `mode`.
async fn course_product(app: &TestApp, id: &str, course: &str, mode: &str) {
    app.put(
        &format!("/v1/apps/acme/products/{id}"),
        json!({"kind": "non_consumable", "entitlements": [{"id": course, "attributes": {"course_id": course, "mode": mode}}]}),
    )
    .await
    .expect(201);
}

/// Moves the clock `steps` times by `ms`, giving the delivery job time to run after each.
async fn let_time_pass(app: &TestApp, steps: usize, ms: i64) {
    for _ in 0..steps {
        app.clock.advance_millis(ms);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn grant(app: &TestApp, customer: &str, product: &str) {
    app.post(
        &format!("/v1/apps/acme/customers/{customer}/grants"),
        json!({"product_id": product, "reason": "scholarship"}),
    )
    .await
    .expect(201);
}

async fn revoke(app: &TestApp, customer: &str, entitlement: &str) {
    app.delete(
        &format!("/v1/apps/acme/customers/{customer}/grants/{entitlement}"),
        Some(json!({"reason": "chargeback"})),
    )
    .await
    .expect(200);
}

async fn lms_endpoint(app: &TestApp, lms: &Lms, revoke: &str, secret: &str) -> Value {
    app.post(
        "/v1/apps/acme/webhook_endpoints",
        json!({"kind": "openedx", "url": lms.url, "openedx": {
            "client_id": CLIENT_ID, "client_secret": secret, "revoke": revoke}}),
    )
    .await
    .expect(201)
}

both!(
    a_purchase_enrolls_the_learner_and_a_refund_moves_them_back_to_audit,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let lms = Lms::start(&app).await;
        let created = lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;
        assert_eq!(created["kind"], "openedx");
        assert_eq!(created["openedx"]["client_secret_set"], true);
        assert_eq!(created["openedx"]["requests_per_minute"], 100);
        assert!(!created.to_string().contains(CLIENT_SECRET), "{created}");
        assert!(created.get("new_secret").is_none());

        let token = order(&app, "alice", "cs101").await;
        let bought = sim
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
            .await
            .unwrap();
        lms.wait_for("alice", enrolled("verified", true)).await;

        app.clock.advance_millis(600_000);
        sim.store
            .refund(&bought.transaction_id, RevocationReason::Other)
            .await
            .unwrap();
        lms.wait_for("alice", enrolled("audit", true)).await;
        assert_eq!(
            lms.sim.token_calls(),
            1,
            "the token is reused until it expires"
        );

        // The LMS's answers are in the customer's timeline.
        let mut kinds = Vec::new();
        for _ in 0..100 {
            let timeline = app
                .get("/v1/apps/acme/customers/alice/timeline")
                .await
                .expect(200);
            kinds = timeline["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["kind"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>();
            if kinds.iter().filter(|k| *k == "lms.enrollment").count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            kinds.iter().filter(|k| *k == "lms.enrollment").count(),
            2,
            "{kinds:?}"
        );
        let timeline = app
            .get("/v1/apps/acme/customers/alice/timeline")
            .await
            .expect(200);
        let newest = &timeline["events"][0];
        assert_eq!(newest["kind"], "lms.enrollment");
        assert_eq!(newest["detail"]["mode"], "audit");
        assert_eq!(newest["detail"]["http_status"], 200);
    }
);

both!(
    pay_to_enroll_unenrolls_whatever_the_learners_mode_and_a_bad_secret_is_a_clear_failure,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start(&app).await;
        lms_endpoint(&app, &lms, "unenroll", CLIENT_SECRET).await;
        let wrong = Lms::start(&app).await;
        lms_endpoint(&app, &wrong, "unenroll", "not-the-secret").await;
        grant(&app, "bob", "cs101").await;
        lms.wait_for("bob", enrolled("verified", true)).await;
        // The learner's mode moves on the LMS (an upgrade, a support change): the product's mode is
        // no longer theirs, and deactivating with it would be refused as a mode mismatch.
        lms.sim
            .set_enrollment("bob", COURSE, enrolled("professional", true));
        app.clock.advance_millis(1000);
        revoke(&app, "bob", COURSE).await;
        lms.wait_for("bob", enrolled("professional", false)).await;
        let unenrolled = timeline_event(&app, "bob", "lms.enrollment").await;
        assert_eq!(unenrolled["detail"]["is_active"], false, "{unenrolled}");

        // The LMS that refuses the credentials: the delivery says why, without the secret.
        let (head, failed) = app.failed_delivery().await;
        let error = head["last_error"].as_str().unwrap();
        assert!(error.contains("refused the client credentials"), "{error}");
        assert_eq!(head["last_status"], 401);
        assert!(
            !serde_json::to_string(&failed)
                .unwrap()
                .contains("not-the-secret")
        );
        assert!(wrong.enrollment("bob").is_none());
        timeline_event(&app, "bob", "lms.enrollment_failed").await;
    }
);

both!(
    an_unenrollment_of_a_learner_who_is_not_enrolled_changes_nothing,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start(&app).await;
        // Granted before the LMS was connected: carol was never enrolled there.
        grant(&app, "carol", "cs101").await;
        for _ in 0..200 {
            let waiting: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE dispatched_at IS NULL")
                    .fetch_one(app.db.reader())
                    .await
                    .unwrap();
            if waiting == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lms_endpoint(&app, &lms, "unenroll", CLIENT_SECRET).await;
        app.clock.advance_millis(1000);
        revoke(&app, "carol", COURSE).await;
        timeline_event(&app, "carol", "lms.enrollment").await;
        // Read first and found not enrolled: no inactive enrollment was made for her.
        assert_eq!(lms.enrollment("carol"), None);
        assert!(lms.sim.calls().is_empty(), "{:#?}", lms.sim.calls());
    }
);

both!(
    upgrade_lite_refuses_clearly_where_the_course_offers_no_audit,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start(&app).await;
        let paid_only = "course-v1:Acme+PRO+2026";
        lms.sim.add_course(
            paid_only,
            Course {
                modes: vec![Mode::new("verified"), Mode::new("professional")],
                enrollment_end: None,
            },
        );
        course_product(&app, "pro", paid_only, "verified").await;
        lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;
        grant(&app, "alice", "pro").await;
        lms.wait_in(paid_only, "alice", enrolled("verified", true))
            .await;
        app.clock.advance_millis(1000);
        revoke(&app, "alice", paid_only).await;
        let failed = timeline_event(&app, "alice", "lms.enrollment_failed").await;
        let cause = failed["cause"].as_str().unwrap();
        assert!(cause.contains("offers no audit mode"), "{cause}");
        assert!(cause.contains("verified, professional"), "{cause}");
        // Straight to the dead letters: no retry would change what the course offers.
        let dead = deliveries_of(&app, "alice", "dead").await;
        assert_eq!(dead.len(), 1, "{dead:#?}");
        assert!(
            dead[0]["last_error"]
                .as_str()
                .unwrap()
                .contains("offers no audit mode")
        );
        assert_eq!(dead[0]["attempts"], 1);
        // Nothing was done on the LMS: not a silent enrollment in a paid mode, nor an audit one.
        assert_eq!(
            lms.sim.enrollment("alice", paid_only),
            Some(enrolled("verified", true))
        );
        // Asked once: a second revocation uses what is known of the course.
        grant(&app, "bob", "pro").await;
        lms.wait_in(paid_only, "bob", enrolled("verified", true))
            .await;
        revoke(&app, "bob", paid_only).await;
        timeline_event(&app, "bob", "lms.enrollment_failed").await;
        assert_eq!(lms.sim.course_views(), 1);
    }
);

both!(
    each_lms_refusal_gives_its_own_error_and_is_retried_only_when_it_can_heal,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start(&app).await;
        let late = "course-v1:Acme+Late+2026";
        lms.sim.add_course(
            late,
            Course {
                modes: vec![
                    Mode::new("audit"),
                    Mode::expiring("verified", t0().millis() - 1),
                ],
                enrollment_end: None,
            },
        );
        course_product(&app, "late", late, "verified").await;
        lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;

        // The OAuth application's owner is not staff: a 404 with an empty body.
        lms.sim.set_staff(OWNER, false);
        grant(&app, "alice", "cs101").await;
        let failed = timeline_event(&app, "alice", "lms.enrollment_failed").await;
        assert!(
            failed["cause"]
                .as_str()
                .unwrap()
                .contains("owner is not staff"),
            "{failed}"
        );
        assert_eq!(failed["detail"]["http_status"], 404);
        // Fixed on the LMS, the retry lands.
        lms.sim.set_staff(OWNER, true);
        let_time_pass(&app, 10, 10_000).await;
        lms.wait_for("alice", enrolled("verified", true)).await;

        // An unknown user: 406, retried, for the learner may register later.
        grant(&app, "dora", "cs101").await;
        let failed = timeline_event(&app, "dora", "lms.enrollment_failed").await;
        let cause = failed["cause"].as_str().unwrap();
        assert!(
            cause.contains("no such LMS user") && cause.contains("The user dora does not exist."),
            "{cause}"
        );
        assert_eq!(deliveries_of(&app, "dora", "pending").await.len(), 1);
        lms.sim.add_user("dora");
        let_time_pass(&app, 10, 10_000).await;
        lms.wait_for("dora", enrolled("verified", true)).await;

        // A mode the run no longer offers (the verified deadline has passed): dead at once.
        grant(&app, "bob", "late").await;
        let failed = timeline_event(&app, "bob", "lms.enrollment_failed").await;
        let cause = failed["cause"].as_str().unwrap();
        assert!(cause.contains("mode is not available"), "{cause}");
        assert_eq!(deliveries_of(&app, "bob", "dead").await.len(), 1);
        assert!(lms.sim.enrollment("bob", late).is_none());

        // An embargo: a 403 that is the LMS's policy, not a stale token.
        lms.sim.embargo("carol");
        let tokens = lms.sim.token_calls();
        grant(&app, "carol", "cs101").await;
        let failed = timeline_event(&app, "carol", "lms.enrollment_failed").await;
        assert!(
            failed["cause"].as_str().unwrap().contains("embargo"),
            "{failed}"
        );
        let dead = deliveries_of(&app, "carol", "dead").await;
        assert_eq!(dead.len(), 1, "{dead:#?}");
        assert_eq!(
            lms.sim.token_calls(),
            tokens,
            "a 403 does not renew the token"
        );
    }
);

both!(
    an_expired_token_is_renewed_when_the_lms_says_401,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start(&app).await;
        lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;
        grant(&app, "alice", "cs101").await;
        lms.wait_for("alice", enrolled("verified", true)).await;
        // Two hours on the LMS's clock: its JWT has expired, though the gateway's cache has not.
        app.clock.advance_millis(2 * 3_600_000);
        revoke(&app, "alice", COURSE).await;
        lms.wait_for("alice", enrolled("audit", true)).await;
        assert_eq!(lms.sim.token_calls(), 2);
    }
);

both!(
    an_lms_outage_is_retried_until_the_enrollment_lands,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start(&app).await;
        lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;
        lms.sim.fail_with(503);
        grant(&app, "carol", "cs101").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(lms.enrollment("carol").is_none());
        lms.sim.fail_with(0);
        let_time_pass(&app, 5, 10_000).await;
        lms.wait_for("carol", enrolled("verified", true)).await;
    }
);

both!(
    a_burst_of_purchases_queues_under_the_lms_throttle_and_every_learner_is_enrolled,
    |app: TestApp| async move {
        const BURST: usize = 500;
        let sim = Sim::open(&app).await;
        let lms = Lms::start(&app).await;
        lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;
        let learners: Vec<String> = (0..BURST).map(|i| format!("learner{i:03}")).collect();
        for l in &learners {
            lms.sim.add_user(l);
        }
        // Bought from 50 devices at once.
        futures_util::stream::iter(&learners)
            .for_each_concurrent(50, |l| {
                let (app, store) = (&app, &sim.store);
                async move {
                    let token = order(app, l, "cs101").await;
                    store
                        .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
                        .await
                        .unwrap();
                }
            })
            .await;
        // Time goes by a second a step, the delivery job's steps keeping up with it, as in
        // production; the stand-in's throttle counts on the same clock.
        let clock: Arc<dyn Clock> = Arc::new(app.clock.clone());
        let http = reqwest::Client::new();
        let senders = Senders {
            http: http.clone(),
            lms: Arc::new(connector::Caches::default()),
            stores: app.cx.stores.clone(),
        };
        let mut seconds = 0;
        while lms.sim.calls().len() < BURST && seconds < 1200 {
            deliveries::step(&app.db, &clock, &senders).await;
            app.clock.advance_millis(1000);
            seconds += 1;
        }
        for l in &learners {
            assert_eq!(lms.enrollment(l), Some(enrolled("verified", true)), "{l}");
        }
        assert_eq!(
            lms.sim.throttled(),
            0,
            "paced below the LMS's limit, no call was throttled"
        );
        let dead = app
            .get("/v1/apps/acme/deliveries?status=dead")
            .await
            .expect(200);
        assert_eq!(dead["deliveries"], json!([]));
        // 500 calls at 100 a minute, the first tenth of a minute's at once: about five minutes.
        assert!((280..=320).contains(&seconds), "{seconds} s");
    }
);

both!(
    a_429_holds_every_call_of_the_endpoint_until_its_retry_after_and_loses_nothing,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start(&app).await;
        // A pace above the LMS's limit (raised without lifting the LMS's own): the LMS answers 429.
        // At 1,000 a minute, a tenth of a minute's calls go at once.
        app.post(
            "/v1/apps/acme/webhook_endpoints",
            json!({"kind": "openedx", "url": lms.url, "openedx": {
                "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "requests_per_minute": 1000}}),
        )
        .await
        .expect(201);
        let learners: Vec<String> = (0..130).map(|i| format!("learner{i:03}")).collect();
        for l in &learners {
            lms.sim.add_user(l);
            grant(&app, l, "cs101").await;
        }
        for _ in 0..300 {
            if lms.sim.throttled() > 0 {
                break;
            }
            app.clock.advance_millis(100);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert!(lms.sim.throttled() > 0, "the pace outran the LMS's limit");
        // A throttled delivery waits its Retry-After, on no back-off of its own.
        let at =
            |d: &Value| Timestamp::parse_rfc3339(d["next_attempt_at"].as_str().unwrap()).unwrap();
        let mut throttled = Vec::new();
        for _ in 0..100 {
            let pending = app
                .get("/v1/apps/acme/deliveries?status=pending")
                .await
                .expect(200);
            throttled = pending["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["last_status"] == 429)
                .cloned()
                .collect();
            if !throttled.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held_until = throttled
            .iter()
            .map(at)
            .min()
            .expect("a throttled delivery");
        assert!(held_until > app.clock.now());
        // A learner who buys now waits for the hold too, without spending an attempt.
        lms.sim.add_user("latecomer");
        grant(&app, "latecomer", "cs101").await;
        let mut waiting = Vec::new();
        for _ in 0..100 {
            waiting = deliveries_of(&app, "latecomer", "pending").await;
            if !waiting.is_empty() && waiting[0]["next_attempt_at"].is_string() {
                // A few more steps of the job, which must leave it waiting.
                tokio::time::sleep(Duration::from_millis(1200)).await;
                waiting = deliveries_of(&app, "latecomer", "pending").await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(waiting.len(), 1, "{waiting:#?}");
        assert_eq!(waiting[0]["attempts"], 0, "{waiting:#?}");
        assert!(
            at(&waiting[0]) >= held_until,
            "deferred to {:?}, before the LMS's Retry-After ends at {held_until:?}",
            at(&waiting[0])
        );
        // When the LMS takes calls again, everyone is enrolled; nothing died, and waiting for the
        // throttle is no failure in anyone's timeline.
        for _ in 0..400 {
            if lms.sim.calls().len() > learners.len() {
                break;
            }
            app.clock.advance_millis(1000);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        for l in learners.iter().map(String::as_str).chain(["latecomer"]) {
            assert_eq!(lms.enrollment(l), Some(enrolled("verified", true)), "{l}");
        }
        let dead = app
            .get("/v1/apps/acme/deliveries?status=dead")
            .await
            .expect(200);
        assert_eq!(dead["deliveries"], json!([]));
        let first_throttled = throttled[0]["customer_id"].as_str().unwrap();
        timeline_event(&app, first_throttled, "lms.enrollment").await;
        let timeline = app
            .get(&format!(
                "/v1/apps/acme/customers/{first_throttled}/timeline"
            ))
            .await
            .expect(200);
        let kinds: Vec<&Value> = timeline["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["kind"])
            .collect();
        assert!(
            !kinds.contains(&&json!("lms.enrollment_failed")),
            "{kinds:?}"
        );
    }
);

both!(
    the_connector_reads_an_enrollment_as_the_lms_reports_it,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start(&app).await;
        let created = lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;
        let endpoint = gateway::db::endpoints::by_id(&app.db, created["id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap();
        let (http, caches) = (reqwest::Client::new(), connector::Caches::default());
        let reader = connector::Lms::new(&http, &caches, &endpoint).unwrap();
        let now = app.clock.now();
        assert_eq!(
            reader.read_enrollment(&app.db, now, "alice", COURSE).await,
            Ok(None),
            "an empty 200: not enrolled"
        );
        lms.sim
            .set_enrollment("alice", COURSE, enrolled("verified", true));
        let read = reader
            .read_enrollment(&app.db, now, "alice", COURSE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((read.mode.as_str(), read.is_active), ("verified", true));
        assert!(read.created.is_some());
        lms.sim.set_staff(OWNER, false);
        let refused = reader
            .read_enrollment(&app.db, now, "alice", COURSE)
            .await
            .unwrap_err();
        assert!(refused.error.contains("not staff"), "{}", refused.error);
        assert_eq!(refused.status, Some(404));
    }
);

both!(
    bad_openedx_endpoints_are_refused,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let base = "/v1/apps/acme/webhook_endpoints";
        app.post(
            base,
            json!({"kind": "openedx", "url": "https://lms.example.com"}),
        )
        .await
        .error(400, "invalid_openedx_settings");
        app.post(
            base,
            json!({"kind": "openedx", "url": "https://lms.example.com", "openedx": {"client_id": "", "client_secret": "s"}}),
        )
        .await
        .error(400, "invalid_openedx_settings");
        app.post(
            base,
            json!({"kind": "openedx", "url": "https://lms.example.com", "events": ["balance.changed"],
                   "openedx": {"client_id": "c", "client_secret": "s"}}),
        )
        .await
        .error(400, "unknown_event_type");
        app.post(
            base,
            json!({"url": "https://example.com/hook", "openedx": {"client_id": "c", "client_secret": "s"}}),
        )
        .await
        .error(400, "invalid_endpoint");
        app.post(
            base,
            json!({"kind": "lms", "url": "https://lms.example.com"}),
        )
        .await
        .error(400, "invalid_body");
        app.post(
            base,
            json!({"kind": "openedx", "url": "https://lms.example.com", "openedx": {"client_id": "c", "client_secret": "s", "requests_per_minute": 0}}),
        )
        .await
        .error(400, "invalid_openedx_settings");
        assert_eq!(app.count("webhook_endpoints").await, 0);
        let created = app
            .post(
                base,
                json!({"kind": "openedx", "url": "https://lms.example.com", "openedx": {"client_id": "c", "client_secret": "s"}}),
            )
            .await
            .expect(201);
        let id = created["id"].as_str().unwrap();
        app.post(&format!("{base}/{id}/rotate_secret"), json!({}))
            .await
            .error(409, "not_a_webhook");
    }
);

/// The consumption answers Apple received, once `n` have arrived (10 s at most).
async fn consumption_answers(sim: &Sim, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let sent = sim.server.consumption_requests();
        if sent.len() >= n {
            return sent.into_iter().map(|r| r.body).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} consumption answers reached Apple");
}

both!(
    a_refund_request_about_a_course_says_whether_the_lms_enrolled_the_learner,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        sim.set(&app, json!({ "answer_consumption_requests": true }))
            .await;
        let lms = Lms::start(&app).await;
        lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;

        // Alice is enrolled: delivered. Dave has no LMS account: granted, but the course was never
        // delivered. The LMS is down when Carol buys: an outage.
        let learners = [
            ("alice", "lms.enrollment", "DELIVERED"),
            ("dave", "lms.enrollment_failed", "UNDELIVERED_OTHER"),
            (
                "carol",
                "lms.enrollment_failed",
                "UNDELIVERED_SERVER_OUTAGE",
            ),
        ];
        for (n, (learner, told, delivery)) in learners.into_iter().enumerate() {
            if learner == "carol" {
                lms.sim.fail_with(503);
            }
            let token = order(&app, learner, "cs101").await;
            let bought = sim
                .store
                .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
                .await
                .unwrap();
            if learner == "alice" {
                lms.wait_for("alice", enrolled("verified", true)).await;
            }
            timeline_event(&app, learner, told).await;
            sim.store
                .tell(&bought.transaction_id, "CONSUMPTION_REQUEST", None)
                .await
                .unwrap();
            let answers = consumption_answers(&sim, n + 1).await;
            assert_eq!(
                answers[n]["deliveryStatus"], delivery,
                "{learner}: {answers:?}"
            );
            assert!(answers[n].get("consumptionPercentage").is_none());
        }
    }
);
