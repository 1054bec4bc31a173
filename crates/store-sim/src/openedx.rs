//! A stand-in Open edX LMS with the two calls the gateway's connector makes, checked as the LMS does:
//!
//! - `POST /oauth2/access_token`: form `grant_type=client_credentials`, `client_id`, `client_secret`,
//!   `token_type=jwt`; answers `{access_token, token_type: "JWT", expires_in, scope}` or 401.
//! - `POST /api/enrollment/v1/enrollment` with `Authorization: JWT <token>` and
//!   `{user, mode, is_active, course_details: {course_id}}`: sets the enrollment and answers it; 401
//!   without a token it issued, 400 without the fields.
//!
//! It keeps every enrollment and when each call arrived, and can be told to fail (an outage).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::Instant,
};

use axum::{
    Form, Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
};
use serde_json::{Value, json};

/// An enrollment as the LMS holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub mode: String,
    pub is_active: bool,
}

/// One enrollment call the LMS took.
#[derive(Debug, Clone)]
pub struct Call {
    pub user: String,
    pub course_id: String,
    pub enrollment: Enrollment,
    pub at: Instant,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    client_id: String,
    client_secret: String,
    tokens: Mutex<Vec<String>>,
    token_calls: AtomicUsize,
    enrollments: Mutex<HashMap<(String, String), Enrollment>>,
    calls: Mutex<Vec<Call>>,
    fail_with: AtomicU16,
}

/// The stand-in LMS; clones share it.
#[derive(Clone)]
pub struct Lms {
    inner: Arc<Inner>,
}

async fn token(
    State(lms): State<Lms>,
    Form(form): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    let s = &lms.inner;
    s.token_calls.fetch_add(1, Ordering::SeqCst);
    let field = |k: &str| form.get(k).map(String::as_str);
    let ok = field("grant_type") == Some("client_credentials")
        && field("client_id") == Some(s.client_id.as_str())
        && field("client_secret") == Some(s.client_secret.as_str())
        && field("token_type") == Some("jwt");
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
    State(lms): State<Lms>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let s = &lms.inner;
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
            StatusCode::from_u16(fail).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            Json(json!({"message": "unavailable"})),
        );
    }
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
    let enrollment = Enrollment {
        mode: mode.to_owned(),
        is_active: body["is_active"].as_bool().unwrap_or(true),
    };
    s.enrollments
        .lock()
        .unwrap()
        .insert((user.to_owned(), course.to_owned()), enrollment.clone());
    s.calls.lock().unwrap().push(Call {
        user: user.to_owned(),
        course_id: course.to_owned(),
        enrollment: enrollment.clone(),
        at: Instant::now(),
        body: body.clone(),
    });
    (
        StatusCode::OK,
        Json(
            json!({"user": user, "mode": mode, "is_active": enrollment.is_active,
            "course_details": {"course_id": course}}),
        ),
    )
}

impl Lms {
    /// An LMS whose OAuth2 application has these credentials.
    pub fn new(client_id: &str, client_secret: &str) -> Lms {
        Lms {
            inner: Arc::new(Inner {
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
                ..Default::default()
            }),
        }
    }

    /// Its routes.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/oauth2/access_token", axum::routing::post(token))
            .route("/api/enrollment/v1/enrollment", axum::routing::post(enroll))
            .with_state(self.clone())
    }

    /// Serves it on a free port of 127.0.0.1; its base URL.
    pub async fn serve(&self) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(url)
    }

    /// `user`'s enrollment in `course_id`, if any.
    pub fn enrollment(&self, user: &str, course_id: &str) -> Option<Enrollment> {
        self.inner
            .enrollments
            .lock()
            .unwrap()
            .get(&(user.to_owned(), course_id.to_owned()))
            .cloned()
    }

    /// Every enrollment call taken, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// How many tokens were asked for.
    pub fn token_calls(&self) -> usize {
        self.inner.token_calls.load(Ordering::SeqCst)
    }

    /// Answer enrollment calls with `status` (an outage); 0 works normally again.
    pub fn fail_with(&self, status: u16) {
        self.inner.fail_with.store(status, Ordering::SeqCst);
    }
}
