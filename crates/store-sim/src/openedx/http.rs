//! The stand-in LMS's HTTP surface: its router, JWT authentication, the throttle's 429, the
//! handlers and their error answers. The rules they follow are listed, and the state they read and
//! change is kept, in `mod.rs`.

use std::{collections::HashMap, sync::atomic::Ordering};

use axum::{
    Form, Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Enrollment, Lms, STAFF_PER_MINUTE, TOKEN_SECONDS, USER_PER_MINUTE};

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    preferred_username: String,
    administrator: bool,
    grant_type: String,
    scopes: Vec<String>,
    version: String,
    iat: i64,
    exp: i64,
}

fn message(status: StatusCode, text: String) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

fn detail(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "detail": text }))).into_response()
}

fn empty(status: StatusCode) -> Response {
    status.into_response()
}

impl Lms {
    /// Its routes.
    pub fn router(&self) -> axum::Router {
        use axum::routing::{get, post};
        axum::Router::new()
            .route("/oauth2/access_token", post(token))
            .route("/api/enrollment/v1/enrollment", post(enroll))
            .route("/api/enrollment/v1/enrollment/{spec}", get(read))
            .route("/api/enrollment/v1/course/{course_id}", get(course))
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

    /// The user a request authenticates as, or the 401 the LMS answers (`JwtAuthentication`).
    fn authenticate(&self, headers: &HeaderMap) -> Result<String, Box<Response>> {
        let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            let mut res = detail(
                StatusCode::UNAUTHORIZED,
                "Authentication credentials were not provided.",
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "JWT realm=\"api\"".parse().unwrap(),
            );
            return Err(Box::new(res));
        };
        let invalid = || Box::new(detail(StatusCode::UNAUTHORIZED, "Invalid token."));
        let token = auth.strip_prefix("JWT ").ok_or_else(invalid)?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_audience(&["openedx"]);
        let claims = jsonwebtoken::decode::<Claims>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(&self.inner.key),
            &validation,
        )
        .map_err(|_| invalid())?
        .claims;
        if claims.exp * 1000 <= self.now() {
            return Err(Box::new(detail(
                StatusCode::UNAUTHORIZED,
                "Token has expired.",
            )));
        }
        Ok(claims.preferred_username)
    }

    /// Counts a call against the throttle of `key` (`SimpleRateThrottle.allow_request`), or the 429.
    fn throttle_check(&self, key: &str, per_minute: usize) -> Result<(), Box<Response>> {
        if !self.inner.throttle_on.load(Ordering::SeqCst) {
            return Ok(());
        }
        let now = self.now();
        let mut state = self.state();
        let history = state.history.entry(key.to_owned()).or_default();
        while history.back().is_some_and(|&t| t <= now - 60_000) {
            history.pop_back();
        }
        if history.len() < per_minute {
            history.push_front(now);
            return Ok(());
        }
        // `SimpleRateThrottle.wait`: the time left for the oldest call, shared over the calls left.
        let remaining = 60_000 - (now - history.back().copied().unwrap_or(now));
        let available = (per_minute as i64 - history.len() as i64 + 1).max(1);
        let wait = ((remaining as f64 / available as f64) / 1000.0)
            .ceil()
            .max(1.0) as u64;
        state.throttled += 1;
        let unit = if wait == 1 { "second" } else { "seconds" };
        let mut res = detail(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Request was throttled. Expected available in {wait} {unit}."),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, wait.to_string().parse().unwrap());
        Err(Box::new(res))
    }
}

async fn token(State(lms): State<Lms>, Form(form): Form<HashMap<String, String>>) -> Response {
    let s = &lms.inner;
    s.token_calls.fetch_add(1, Ordering::SeqCst);
    let field = |k: &str| form.get(k).map(String::as_str);
    if field("client_id") != Some(s.client_id.as_str())
        || field("client_secret") != Some(s.client_secret.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if field("grant_type") != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let now = lms.now() / 1000;
    let claims = Claims {
        iss: "http://lms.example/oauth2".into(),
        aud: "openedx".into(),
        sub: uuid::Uuid::new_v4().simple().to_string(),
        preferred_username: s.owner.clone(),
        administrator: lms.is_staff(&s.owner),
        grant_type: "client-credentials".into(),
        scopes: vec!["read".into(), "write".into()],
        version: "1.2.0".into(),
        iat: now,
        exp: now + TOKEN_SECONDS,
    };
    let Ok(jwt) = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&s.key),
    ) else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let answer = if field("token_type").is_some_and(|t| t.eq_ignore_ascii_case("jwt")) {
        json!({"access_token": jwt, "token_type": "JWT", "expires_in": TOKEN_SECONDS,
            "scope": "read write email profile"})
    } else {
        // An opaque DOT token, which the Enrollment API's `JWT` scheme does not take.
        json!({"access_token": uuid::Uuid::new_v4().simple().to_string(), "token_type": "Bearer",
            "expires_in": TOKEN_SECONDS, "scope": "read write"})
    };
    (StatusCode::OK, Json(answer)).into_response()
}

/// The throttle of an authenticated caller (`EnrollmentUserThrottle.allow_request`).
fn throttle_user(lms: &Lms, caller: &str) -> Result<(), Box<Response>> {
    let staff = lms.is_staff(caller);
    let (scope, rate) = if staff {
        ("staff", STAFF_PER_MINUTE)
    } else {
        ("user", USER_PER_MINUTE)
    };
    lms.throttle_check(&format!("throttle_{scope}_{caller}"), rate)
}

/// `EnrollmentListView.post`.
async fn enroll(State(lms): State<Lms>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match lms.authenticate(&headers) {
        Ok(c) => c,
        Err(res) => return *res,
    };
    if let Err(res) = throttle_user(&lms, &caller) {
        return *res;
    }
    let fail = lms.inner.fail_with.load(Ordering::SeqCst);
    if fail != 0 {
        return message(
            StatusCode::from_u16(fail).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "unavailable".into(),
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return detail(StatusCode::BAD_REQUEST, "JSON parse error");
    };
    let username = body["user"].as_str().unwrap_or(&caller).to_owned();
    let Some(course_id) = body["course_details"]["course_id"]
        .as_str()
        .filter(|c| !c.is_empty())
    else {
        return message(
            StatusCode::BAD_REQUEST,
            "Course ID must be specified to create a new enrollment.".into(),
        );
    };
    if !course_id.starts_with("course-v1:") || course_id.matches('+').count() != 2 {
        return message(
            StatusCode::BAD_REQUEST,
            format!("No course '{course_id}' found for enrollment"),
        );
    }
    let staff = lms.is_staff(&caller);
    // A non-staff caller may not enroll someone else: the LMS hides them (404, no body).
    if username != caller && !staff {
        return empty(StatusCode::NOT_FOUND);
    }
    let mode = match &body["mode"] {
        Value::Null => None,
        Value::String(m) => Some(m.clone()),
        other => Some(other.to_string()),
    };
    if !staff && !matches!(mode.as_deref(), None | Some("audit" | "honor")) {
        return message(
            StatusCode::FORBIDDEN,
            format!(
                "User does not have permission to create enrollment with mode [{}].",
                mode.unwrap_or_default()
            ),
        );
    }
    if !lms.state().users.contains_key(&username) {
        return message(
            StatusCode::NOT_ACCEPTABLE,
            format!("The user {username} does not exist."),
        );
    }
    if lms.state().embargoed.contains(&username) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({
                "message": format!("Users from this location cannot access the course '{course_id}'."),
                "user_message_url": "http://lms.example/embargo/blocked-message/enrollment/default/"
            })),
        )
            .into_response();
    }
    let is_active = match body.get("is_active") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return message(
                StatusCode::BAD_REQUEST,
                format!("'{shown}' is an invalid enrollment activation status."),
            );
        }
    };
    let Some(course) = lms.state().courses.get(course_id).cloned() else {
        return message(
            StatusCode::BAD_REQUEST,
            format!("No course '{course_id}' found for enrollment"),
        );
    };
    let now = lms.now();
    let current = lms.enrollment(&username, course_id);
    let mode_changed = current
        .as_ref()
        .is_some_and(|e| mode.as_ref().is_some_and(|m| *m != e.mode));
    let active_changed = current
        .as_ref()
        .is_some_and(|e| is_active.is_some_and(|a| a != e.is_active));
    // `validate_course_mode`: expired modes count only when deactivating.
    let offered = |slug: &str| {
        let include_expired = is_active == Some(false);
        Lms::modes(&course, now, include_expired)
            .iter()
            .any(|m| m.slug == slug)
    };
    let unavailable = |slug: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "message": format!("The [{slug}] course mode is expired or otherwise unavailable for course run [{course_id}]."),
                "course_details": lms.course_details(course_id, false),
            })),
        )
            .into_response()
    };
    if staff && (mode_changed || active_changed) {
        let current = current.unwrap_or(Enrollment {
            mode: String::new(),
            is_active: false,
        });
        if mode_changed && active_changed && is_active == Some(false) {
            return message(
                StatusCode::BAD_REQUEST,
                format!(
                    "Enrollment mode mismatch: active mode={}, requested mode={}. Won't deactivate.",
                    current.mode,
                    mode.unwrap_or_default()
                ),
            );
        }
        // `update_enrollment`: the mode is checked; enrollment dates are not.
        if let Some(m) = &mode
            && !offered(m)
        {
            return unavailable(m);
        }
        let updated = Enrollment {
            mode: mode.unwrap_or(current.mode),
            is_active: is_active.unwrap_or(current.is_active),
        };
        lms.record(&username, course_id, updated, &body);
        return (StatusCode::OK, Json(lms.serialized(&username, course_id))).into_response();
    }
    // `add_enrollment`: the course's default mode when none is given.
    let slug = mode.clone().unwrap_or_else(|| "audit".into());
    if !offered(&slug) {
        return unavailable(&mode.unwrap_or_else(|| "None".into()));
    }
    if lms.state().filtered.contains(course_id) {
        let text = "Enrollment in this course is not allowed by a filter.";
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"message": text, "localizedMessage": text})),
        )
            .into_response();
    }
    // `CourseEnrollment.enroll`: a closed course takes no one, not even one already enrolled.
    if course.enrollment_end.is_some_and(|end| end <= now) {
        return message(
            StatusCode::BAD_REQUEST,
            format!(
                "An error occurred while creating the new course enrollment for user '{username}' in course '{course_id}'"
            ),
        );
    }
    if current.as_ref().is_some_and(|e| e.is_active) && is_active != Some(false) {
        return (StatusCode::OK, Json(lms.serialized(&username, course_id))).into_response();
    }
    let made = Enrollment {
        mode: slug,
        is_active: is_active.unwrap_or(true),
    };
    lms.record(&username, course_id, made, &body);
    (StatusCode::OK, Json(lms.serialized(&username, course_id))).into_response()
}

/// `EnrollmentView.get`: `{user},{course_id}`, or `{course_id}` for the caller's own.
async fn read(State(lms): State<Lms>, headers: HeaderMap, Path(spec): Path<String>) -> Response {
    let caller = match lms.authenticate(&headers) {
        Ok(c) => c,
        Err(res) => return *res,
    };
    if let Err(res) = throttle_user(&lms, &caller) {
        return *res;
    }
    let (user, course_id) = match spec.split_once(',') {
        Some((u, c)) => (u.to_owned(), c.to_owned()),
        None => (caller.clone(), spec.clone()),
    };
    if user != caller && !lms.is_staff(&caller) {
        return empty(StatusCode::NOT_FOUND);
    }
    match lms.serialized(&user, &course_id) {
        Value::Null => empty(StatusCode::OK),
        found => (StatusCode::OK, Json(found)).into_response(),
    }
}

#[derive(Deserialize)]
struct CourseQuery {
    #[serde(default)]
    include_expired: Option<String>,
}

/// `EnrollmentCourseDetailView.get`: no authentication; throttled by the caller's address.
async fn course(
    State(lms): State<Lms>,
    Path(course_id): Path<String>,
    Query(q): Query<CourseQuery>,
) -> Response {
    lms.inner.course_views.fetch_add(1, Ordering::SeqCst);
    if let Err(res) = lms.throttle_check("throttle_user_127.0.0.1", USER_PER_MINUTE) {
        return *res;
    }
    // Any non-empty value asks for expired modes too, "0" included.
    let include_expired = q.include_expired.is_some_and(|v| !v.is_empty());
    match lms.course_details(&course_id, include_expired) {
        Value::Null => message(
            StatusCode::BAD_REQUEST,
            format!("No course found for course ID '{course_id}'"),
        ),
        found => (StatusCode::OK, Json(found)).into_response(),
    }
}
