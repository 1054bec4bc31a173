//! The stand-in LMS refuses what edx-platform refuses. Each test names the edx-platform code it
//! mirrors (`openedx/core/djangoapps/enrollments/views.py` unless said otherwise).

use reqwest::StatusCode;
use serde_json::{Value, json};
use store_sim::{
    SimClock,
    openedx::{Course, Enrollment, Lms, Mode, OWNER},
};

const COURSE: &str = "course-v1:Acme+CS101+2026";
const NOW: i64 = 1_800_000_000_000;

struct Fixture {
    lms: Lms,
    url: String,
    http: reqwest::Client,
    clock: SimClock,
}

impl Fixture {
    async fn start() -> Fixture {
        let lms = Lms::new("client", "secret");
        let clock = SimClock::fixed(NOW);
        lms.set_clock(clock.clone());
        lms.add_course(
            COURSE,
            Course {
                modes: vec![Mode::new("audit"), Mode::new("verified")],
                enrollment_end: None,
            },
        );
        lms.add_user("alice");
        let url = lms.serve().await.unwrap();
        Fixture {
            lms,
            url,
            http: reqwest::Client::new(),
            clock,
        }
    }

    /// A run whose verified mode expired a moment ago (its upgrade deadline has passed).
    fn late_course(&self) -> &'static str {
        let late = "course-v1:Acme+Late+2026";
        self.lms.add_course(
            late,
            Course {
                modes: vec![Mode::new("audit"), Mode::expiring("verified", NOW - 1)],
                enrollment_end: None,
            },
        );
        late
    }

    async fn token(&self) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/oauth2/access_token", self.url))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "client"),
                ("client_secret", "secret"),
                ("token_type", "jwt"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["access_token"].as_str().unwrap().to_owned()
    }

    async fn post(&self, token: &str, body: Value) -> (StatusCode, String) {
        let res = self
            .http
            .post(format!("{}/api/enrollment/v1/enrollment", self.url))
            .header("authorization", format!("JWT {token}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status(), res.text().await.unwrap())
    }

    async fn get(&self, token: Option<&str>, path: &str) -> (StatusCode, String) {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.header("authorization", format!("JWT {t}"));
        }
        let res = req.send().await.unwrap();
        (res.status(), res.text().await.unwrap())
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn enroll(user: &str, mode: &str, active: bool) -> Value {
    json!({"user": user, "mode": mode, "is_active": active, "course_details": {"course_id": COURSE}})
}

/// `oauth_dispatch.views.AccessTokenView` with `jwt.create_jwt_token_dict`; bad credentials are
/// oauthlib's `InvalidClientError`.
#[tokio::test]
async fn tokens_are_jwts_of_the_applications_owner_and_bad_credentials_are_401() {
    let f = Fixture::start().await;
    let res = f
        .http
        .post(format!("{}/oauth2/access_token", f.url))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "client"),
            ("client_secret", "wrong"),
            ("token_type", "jwt"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let token = f.token().await;
    let claims = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["preferred_username"], OWNER);
    assert_eq!(claims["exp"], NOW / 1000 + 3600);
}

/// `JwtAuthentication`: no credentials, a token of another scheme, and an expired token are 401.
#[tokio::test]
async fn calls_without_a_good_jwt_are_401() {
    let f = Fixture::start().await;
    let (status, body) = f
        .get(
            None,
            &format!("/api/enrollment/v1/enrollment/alice,{COURSE}"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(&body)["detail"],
        "Authentication credentials were not provided."
    );
    let token = f.token().await;
    let res = f
        .http
        .post(format!("{}/api/enrollment/v1/enrollment", f.url))
        .bearer_auth(&token)
        .json(&enroll("alice", "verified", true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    f.clock.advance(3_600_000);
    let (status, body) = f.post(&token, enroll("alice", "verified", true)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(&body)["detail"], "Token has expired.");
    assert!(f.lms.enrollment("alice", COURSE).is_none());
}

/// `EnrollmentListView.post`: a caller who is not `GlobalStaff` naming another user gets a 404 with
/// an empty body; an unknown user is 406; `is_active` must be a JSON boolean.
#[tokio::test]
async fn non_staff_callers_unknown_users_and_non_boolean_flags_are_refused() {
    let f = Fixture::start().await;
    let token = f.token().await;
    f.lms.set_staff(OWNER, false);
    let (status, body) = f.post(&token, enroll("alice", "verified", true)).await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, ""));
    let (status, _) = f
        .get(
            Some(&token),
            &format!("/api/enrollment/v1/enrollment/alice,{COURSE}"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "EnrollmentView.get hides others too"
    );
    f.lms.set_staff(OWNER, true);
    let (status, body) = f.post(&token, enroll("nobody", "verified", true)).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(json_of(&body)["message"], "The user nobody does not exist.");
    let (status, body) = f
        .post(
            &token,
            json!({"user": "alice", "mode": "verified", "is_active": "true", "course_details": {"course_id": COURSE}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(&body)["message"],
        "'true' is an invalid enrollment activation status."
    );
    let (status, body) = f
        .post(
            &token,
            json!({"user": "alice", "is_active": true, "course_details": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(&body)["message"],
        "Course ID must be specified to create a new enrollment."
    );
    assert!(f.lms.enrollment("alice", COURSE).is_none());
    assert!(f.lms.calls().is_empty());
}

/// `api.add_enrollment` and `api.validate_course_mode` over `CourseMode.modes_for_course`: the mode
/// is optional (audit), must be offered and unexpired, and a run without modes offers audit alone.
#[tokio::test]
async fn modes_must_be_offered_and_unexpired_and_default_to_audit() {
    let f = Fixture::start().await;
    let token = f.token().await;
    for u in ["bob", "carol", "dan"] {
        f.lms.add_user(u);
    }
    let (status, body) = f
        .post(
            &token,
            json!({"user": "alice", "is_active": true, "course_details": {"course_id": COURSE}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = json_of(&body);
    assert_eq!(answer["mode"], "audit");
    for field in ["created", "mode", "is_active", "user", "course_details"] {
        assert!(answer.get(field).is_some(), "{field} in {answer}");
    }
    assert_eq!(
        answer["course_details"]["course_modes"][1]["slug"],
        "verified"
    );

    let (status, body) = f.post(&token, enroll("bob", "professional", true)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let refused = json_of(&body);
    assert_eq!(
        refused["message"],
        format!(
            "The [professional] course mode is expired or otherwise unavailable for course run [{COURSE}]."
        )
    );
    assert_eq!(refused["course_details"]["course_id"], COURSE);

    let late = f.late_course();
    let mut upgrade = enroll("carol", "verified", true);
    upgrade["course_details"]["course_id"] = late.into();
    let (status, body) = f.post(&token, upgrade).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an expired mode: {body}");
    assert!(json_of(&body).get("course_details").is_some());

    let bare = "course-v1:Acme+Bare+2026";
    f.lms.add_course(bare, Course::default());
    let mut honor = enroll("dan", "honor", true);
    honor["course_details"]["course_id"] = bare.into();
    assert_eq!(f.post(&token, honor).await.0, StatusCode::BAD_REQUEST);
    let mut audit = enroll("dan", "audit", true);
    audit["course_details"]["course_id"] = bare.into();
    assert_eq!(f.post(&token, audit).await.0, StatusCode::OK);
    let (status, body) = f
        .get(None, &format!("/api/enrollment/v1/course/{bare}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["course_modes"][0]["slug"], "audit");
}

/// `EnrollmentListView.post`'s staff update branch: deactivating with a mode other than the current
/// one is a 400 "Enrollment mode mismatch"; without a mode it deactivates; `update_enrollment` moves
/// the mode of an enrollment even after enrollment has closed, where `CourseEnrollment.enroll` refuses
/// a new one.
#[tokio::test]
async fn deactivation_needs_the_current_mode_or_none_and_updates_skip_the_enrollment_dates() {
    let f = Fixture::start().await;
    let token = f.token().await;
    assert_eq!(
        f.post(&token, enroll("alice", "verified", true)).await.0,
        StatusCode::OK
    );
    let (status, body) = f.post(&token, enroll("alice", "audit", false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(&body)["message"],
        "Enrollment mode mismatch: active mode=verified, requested mode=audit. Won't deactivate."
    );
    assert!(f.lms.enrollment("alice", COURSE).unwrap().is_active);
    let (status, _) = f
        .post(
            &token,
            json!({"user": "alice", "is_active": false, "course_details": {"course_id": COURSE}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        f.lms.enrollment("alice", COURSE),
        Some(Enrollment {
            mode: "verified".into(),
            is_active: false
        })
    );

    f.lms.add_course(
        COURSE,
        Course {
            modes: vec![Mode::new("audit"), Mode::new("verified")],
            enrollment_end: Some(NOW - 1),
        },
    );
    f.lms.add_user("erin");
    let (status, body) = f.post(&token, enroll("erin", "verified", true)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "closed to new learners");
    assert!(
        json_of(&body)["message"]
            .as_str()
            .unwrap()
            .starts_with("An error occurred")
    );
    assert_eq!(
        f.post(&token, enroll("alice", "audit", true)).await.0,
        StatusCode::OK
    );
    assert_eq!(f.lms.enrollment("alice", COURSE).unwrap().mode, "audit");
}

/// `embargo.api.get_embargo_response` and the `CourseEnrollmentStarted` filter
/// (`EnrollmentNotAllowed`): both are 403, and neither has anything to do with the token.
#[tokio::test]
async fn embargoes_and_filters_are_403() {
    let f = Fixture::start().await;
    let token = f.token().await;
    f.lms.embargo("alice");
    let (status, body) = f.post(&token, enroll("alice", "verified", true)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(json_of(&body)["user_message_url"].is_string());
    f.lms.add_user("bob");
    f.lms.filter_out(COURSE);
    let (status, body) = f.post(&token, enroll("bob", "verified", true)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(json_of(&body)["localizedMessage"].is_string());
    assert!(f.lms.calls().is_empty());
}

/// `EnrollmentUserThrottle`: 120 calls a minute for a staff caller across the enrollment views, a
/// 429 with `Retry-After` past it, room again as the window slides, and none when rate limiting is
/// off (`RateLimitConfiguration`).
#[tokio::test]
async fn staff_callers_are_throttled_at_120_a_minute_across_views() {
    let f = Fixture::start().await;
    let token = f.token().await;
    for i in 0..120 {
        let path = if i % 2 == 0 {
            format!("/api/enrollment/v1/enrollment/alice,{COURSE}")
        } else {
            format!("/api/enrollment/v1/enrollment/bob,{COURSE}")
        };
        assert_eq!(
            f.get(Some(&token), &path).await.0,
            StatusCode::OK,
            "call {i}"
        );
        f.clock.advance(100);
    }
    let res = f
        .http
        .post(format!("{}/api/enrollment/v1/enrollment", f.url))
        .header("authorization", format!("JWT {token}"))
        .json(&enroll("alice", "verified", true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after), "{after}");
    let said = res.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        said.starts_with("Request was throttled. Expected available in"),
        "{said}"
    );
    assert_eq!(f.lms.throttled(), 1);
    f.clock.advance(after as i64 * 1000);
    assert_eq!(
        f.post(&token, enroll("alice", "verified", true)).await.0,
        StatusCode::OK
    );
    for _ in 0..200 {
        f.clock.advance(1);
        f.lms.throttle(false);
        assert_ne!(
            f.get(
                Some(&token),
                &format!("/api/enrollment/v1/enrollment/alice,{COURSE}")
            )
            .await
            .0,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}

/// `EnrollmentView.get`: a learner who is not enrolled is a 200 with an empty body; an enrollment is
/// the serialized one. `EnrollmentCourseDetailView`: no authentication, unexpired modes unless
/// `include_expired`, an unknown course 400.
#[tokio::test]
async fn reads_answer_as_the_lms_does() {
    let f = Fixture::start().await;
    let token = f.token().await;
    let path = format!("/api/enrollment/v1/enrollment/alice,{COURSE}");
    assert_eq!(
        f.get(Some(&token), &path).await,
        (StatusCode::OK, String::new())
    );
    f.post(&token, enroll("alice", "verified", true)).await;
    let (status, body) = f.get(Some(&token), &path).await;
    assert_eq!(status, StatusCode::OK);
    let read = json_of(&body);
    assert_eq!(
        (read["mode"].as_str(), read["is_active"].as_bool()),
        (Some("verified"), Some(true))
    );
    assert!(read["created"].is_string());

    let late = f.late_course();
    let slugs = |body: &str| -> Vec<String> {
        json_of(body)["course_modes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["slug"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, now) = f
        .get(None, &format!("/api/enrollment/v1/course/{late}"))
        .await;
    assert_eq!(slugs(&now), ["audit"]);
    let (_, all) = f
        .get(
            None,
            &format!("/api/enrollment/v1/course/{late}?include_expired=0"),
        )
        .await;
    assert_eq!(slugs(&all), ["audit", "verified"]);
    let (status, body) = f
        .get(None, "/api/enrollment/v1/course/course-v1:No+Such+Run")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(&body)["message"],
        "No course found for course ID 'course-v1:No+Such+Run'"
    );
}
