//! The Open edX connector against a stand-in LMS that implements the two calls it makes (the OAuth2
//! token endpoint and the Enrollment API) and checks the client credentials and the token.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Form, Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
};
use serde_json::{Value, json};
use store_sim::apple_store::{ProductKind, RevocationReason};

use crate::{
    both,
    helpers::*,
    sim::{Sim, order},
};

const COURSE: &str = "course-v1:Acme+CS101+2026";
const CLIENT_ID: &str = "gateway-client";
const CLIENT_SECRET: &str = "lms-client-secret-5c1f0e";

/// An enrollment as the LMS holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Enrolled {
    mode: String,
    is_active: bool,
}

#[derive(Default)]
struct LmsState {
    tokens: Mutex<Vec<String>>,
    token_calls: AtomicUsize,
    enrollments: Mutex<HashMap<(String, String), Enrolled>>,
    calls: Mutex<Vec<Value>>,
    /// Answer enrollment calls with this status instead (0: work normally).
    fail_with: AtomicU16,
}

/// A stand-in LMS.
#[derive(Clone)]
struct Lms {
    url: String,
    state: Arc<LmsState>,
}

async fn token(
    State(s): State<Arc<LmsState>>,
    Form(form): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    s.token_calls.fetch_add(1, Ordering::SeqCst);
    let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
        && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        && form.get("token_type").map(String::as_str) == Some("jwt");
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        );
    }
    let t = format!("eyJ.{}.sig", uuid::Uuid::new_v4().simple());
    s.tokens.lock().unwrap().push(t.clone());
    (
        StatusCode::OK,
        Json(
            json!({"access_token": t, "token_type": "JWT", "expires_in": 3600, "scope": "read write"}),
        ),
    )
}

async fn enroll(
    State(s): State<Arc<LmsState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let known = auth
        .strip_prefix("JWT ")
        .is_some_and(|t| s.tokens.lock().unwrap().iter().any(|k| k == t));
    if !known {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"detail": "Authentication credentials were not provided."})),
        );
    }
    let fail = s.fail_with.load(Ordering::SeqCst);
    if fail != 0 {
        return (
            StatusCode::from_u16(fail).unwrap(),
            Json(json!({"message": "unavailable"})),
        );
    }
    s.calls.lock().unwrap().push(body.clone());
    let (Some(user), Some(course), Some(mode)) = (
        body["user"].as_str(),
        body["course_details"]["course_id"].as_str(),
        body["mode"].as_str(),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": "user, mode and course_details.course_id are required"})),
        );
    };
    let is_active = body["is_active"].as_bool().unwrap_or(true);
    s.enrollments.lock().unwrap().insert(
        (user.to_owned(), course.to_owned()),
        Enrolled {
            mode: mode.to_owned(),
            is_active,
        },
    );
    (
        StatusCode::OK,
        Json(
            json!({"user": user, "mode": mode, "is_active": is_active, "course_details": {"course_id": course}}),
        ),
    )
}

impl Lms {
    async fn start() -> Lms {
        let state = Arc::new(LmsState::default());
        let router = axum::Router::new()
            .route("/oauth2/access_token", axum::routing::post(token))
            .route("/api/enrollment/v1/enrollment", axum::routing::post(enroll))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Lms { url, state }
    }

    fn enrollment(&self, user: &str) -> Option<Enrolled> {
        self.state
            .enrollments
            .lock()
            .unwrap()
            .get(&(user.to_owned(), COURSE.to_owned()))
            .cloned()
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
            self.state.calls.lock().unwrap()
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
            lms.state.token_calls.load(Ordering::SeqCst),
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
        let mut failed = Vec::new();
        for _ in 0..100 {
            failed = app
                .get("/v1/apps/acme/deliveries?status=pending")
                .await
                .expect(200)["deliveries"]
                .as_array()
                .unwrap()
                .clone();
            if failed.iter().any(|d| d["last_error"].is_string()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let head = failed
            .iter()
            .find(|d| d["last_error"].is_string())
            .unwrap_or_else(|| panic!("no failed attempt in {failed:#?}"));
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
        lms.state.fail_with.store(503, Ordering::SeqCst);
        app.post(
            "/v1/apps/acme/customers/carol/grants",
            json!({"product_id": "cs101", "reason": "x"}),
        )
        .await
        .expect(201);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(lms.enrollment("carol").is_none());
        lms.state.fail_with.store(0, Ordering::SeqCst);
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
