//! The Open edX connector against a stand-in LMS that implements the two calls it makes (the OAuth2
//! token endpoint and the Enrollment API) and checks the client credentials and the token.

use std::time::Duration;

use serde_json::{Value, json};
use store_sim::{
    apple_store::{ProductKind, RevocationReason},
    openedx::{self, Enrollment as Enrolled},
};

use crate::{
    both,
    helpers::*,
    sim::{Sim, order},
};

const COURSE: &str = "course-v1:Acme+CS101+2026";
const CLIENT_ID: &str = "gateway-client";
const CLIENT_SECRET: &str = "lms-client-secret-5c1f0e";

/// The simulator's stand-in LMS, served.
#[derive(Clone)]
struct Lms {
    url: String,
    sim: openedx::Lms,
}

impl Lms {
    async fn start() -> Lms {
        let sim = openedx::Lms::new(CLIENT_ID, CLIENT_SECRET);
        let url = sim.serve().await.unwrap();
        Lms { url, sim }
    }

    fn enrollment(&self, user: &str) -> Option<Enrolled> {
        self.sim.enrollment(user, COURSE)
    }

    /// Waits until `user`'s enrollment in the course is `want` (10 s at most).
    async fn wait_for(&self, user: &str, want: Enrolled) {
        for _ in 0..200 {
            if self.enrollment(user).as_ref() == Some(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{user} never became {want:?} in the LMS; it is {:?}, after calls {:#?}",
            self.enrollment(user),
            self.sim.calls()
        );
    }
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

fn verified() -> Enrolled {
    Enrolled {
        mode: "verified".into(),
        is_active: true,
    }
}

both!(
    a_purchase_enrolls_the_learner_and_a_refund_moves_them_back_to_audit,
    |app: TestApp| async move {
        let sim = Sim::open(&app).await;
        let lms = Lms::start().await;
        let created = lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;
        assert_eq!(created["kind"], "openedx");
        assert_eq!(created["openedx"]["client_secret_set"], true);
        assert!(!created.to_string().contains(CLIENT_SECRET), "{created}");
        assert!(created.get("new_secret").is_none());

        let token = order(&app, "alice", "cs101").await;
        let bought = sim
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
            .await
            .unwrap();
        lms.wait_for("alice", verified()).await;

        app.clock.advance_millis(3_600_000);
        sim.store
            .refund(&bought.transaction_id, RevocationReason::Other)
            .await
            .unwrap();
        lms.wait_for(
            "alice",
            Enrolled {
                mode: "audit".into(),
                is_active: true,
            },
        )
        .await;
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
    pay_to_enroll_unenrolls_on_revoke_and_a_bad_secret_is_a_clear_failure,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start().await;
        lms_endpoint(&app, &lms, "unenroll", CLIENT_SECRET).await;
        let wrong = Lms::start().await;
        lms_endpoint(&app, &wrong, "unenroll", "not-the-secret").await;
        let c = "/v1/apps/acme/customers/bob";
        app.post(
            &format!("{c}/grants"),
            json!({"product_id": "cs101", "reason": "scholarship"}),
        )
        .await
        .expect(201);
        lms.wait_for("bob", verified()).await;
        app.clock.advance_millis(1000);
        app.delete(
            &format!("{c}/grants/{COURSE}"),
            Some(json!({"reason": "chargeback"})),
        )
        .await
        .expect(200);
        lms.wait_for(
            "bob",
            Enrolled {
                mode: "verified".into(),
                is_active: false,
            },
        )
        .await;

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
        let timeline = app.get(&format!("{c}/timeline")).await.expect(200);
        assert!(
            timeline["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "lms.enrollment_failed"),
            "{timeline}"
        );
    }
);

both!(
    an_lms_outage_is_retried_until_the_enrollment_lands,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let lms = Lms::start().await;
        lms_endpoint(&app, &lms, "audit", CLIENT_SECRET).await;
        lms.sim.fail_with(503);
        app.post(
            "/v1/apps/acme/customers/carol/grants",
            json!({"product_id": "cs101", "reason": "x"}),
        )
        .await
        .expect(201);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(lms.enrollment("carol").is_none());
        lms.sim.fail_with(0);
        for _ in 0..5 {
            app.clock.advance_millis(10_000);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lms.wait_for("carol", verified()).await;
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
