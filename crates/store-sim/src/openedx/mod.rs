//! A stand-in Open edX LMS that refuses what the real one refuses. Each rule names the edx-platform
//! code it follows (`openedx/core/djangoapps/enrollments/views.py` unless said otherwise):
//!
//! - `POST /oauth2/access_token` (`oauth_dispatch` `AccessTokenView`, `jwt.create_jwt_token_dict`):
//!   client credentials with `token_type=jwt` give `{access_token, token_type: "JWT", expires_in:
//!   3600, scope}`, a signed JWT whose user is the OAuth application's owner; bad credentials 401
//!   `{"error": "invalid_client"}`, another grant type 400 `unsupported_grant_type`.
//! - Authentication (`JwtAuthentication`): `Authorization: JWT <token>`; none 401 "Authentication
//!   credentials were not provided.", an expired token 401 "Token has expired.", another 401 "Invalid
//!   token.".
//! - Throttle (`EnrollmentUserThrottle`): 120 calls a minute for staff, 40 for others, per user across
//!   the enrollment views (per address for the anonymous course view), a sliding window of the calls
//!   let through, 429 with `Retry-After` and DRF's "Request was throttled." when over. It can be
//!   turned off, as `RateLimitConfiguration` turns it off (`@can_disable_rate_limit`).
//! - `POST /api/enrollment/v1/enrollment` (`EnrollmentListView.post`), checks in the LMS's order: a
//!   course id (400), a non-staff caller naming another user (404, empty body), a non-staff caller
//!   asking for a paid mode (403), an unknown user (406), an embargo (403), `is_active` not a JSON
//!   boolean (400); then, for a staff caller changing an existing enrollment, the deactivation
//!   "Enrollment mode mismatch" (400) and `update_enrollment`, which checks only the mode; otherwise
//!   `add_enrollment`: the mode (default audit) must be offered and unexpired (`validate_course_mode`,
//!   400 with `course_details`), an enrollment filter may refuse (403), a closed course refuses a new
//!   enrollment (400), and an existing active enrollment is answered unchanged.
//! - `GET /api/enrollment/v1/enrollment/{user},{course_id}` (`EnrollmentView.get`): staff only for
//!   another user (404, empty body); not enrolled, or no such user, 200 with an empty body.
//! - `GET /api/enrollment/v1/course/{course_id}` (`EnrollmentCourseDetailView`): no authentication;
//!   the run's unexpired modes (all with `include_expired`); unknown course 400.
//! - Modes (`CourseMode.modes_for_course`): a run whose modes are all gone, or that has none, offers
//!   `audit` alone, implicitly.
//!
//! It keeps every enrollment and each call it took, and can be told to fail (an outage).
//!
//! This file holds the LMS's state (users, course runs and their modes, enrollments, the calls it
//! took, the throttle's window) and what it does without HTTP; `http.rs` is its HTTP surface: the
//! router, authentication, the throttle's 429, the handlers and their error answers. Its tests are
//! in `crates/store-sim/tests/openedx.rs`.

mod http;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::Instant,
};

use serde_json::{Value, json};

use crate::SimClock;

/// How long a token lives (`JWT_ACCESS_TOKEN_EXPIRE_SECONDS`).
pub const TOKEN_SECONDS: i64 = 3600;

/// `EnrollmentUserThrottle.THROTTLE_RATES`.
pub const STAFF_PER_MINUTE: usize = 120;
pub const USER_PER_MINUTE: usize = 40;

/// The username of the OAuth application's owner [`Lms::new`] makes.
pub const OWNER: &str = "gateway-service";

/// An enrollment as the LMS holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub mode: String,
    pub is_active: bool,
}

/// One enrollment call the LMS took (and answered 2xx).
#[derive(Debug, Clone)]
pub struct Call {
    pub user: String,
    pub course_id: String,
    pub enrollment: Enrollment,
    pub at: Instant,
    pub body: Value,
}

/// A course mode (`CourseMode`).
#[derive(Debug, Clone)]
pub struct Mode {
    pub slug: String,
    /// When it stops being offered (Unix ms); `None`: never.
    pub expires_at: Option<i64>,
}

impl Mode {
    pub fn new(slug: &str) -> Mode {
        Mode {
            slug: slug.to_owned(),
            expires_at: None,
        }
    }

    pub fn expiring(slug: &str, at_ms: i64) -> Mode {
        Mode {
            slug: slug.to_owned(),
            expires_at: Some(at_ms),
        }
    }
}

/// A course run.
#[derive(Debug, Clone, Default)]
pub struct Course {
    /// Its modes; none: `audit` alone, implicitly.
    pub modes: Vec<Mode>,
    /// When enrollment closes (Unix ms).
    pub enrollment_end: Option<i64>,
}

#[derive(Default)]
struct World {
    users: HashMap<String, bool>,
    courses: HashMap<String, Course>,
    enrollments: HashMap<(String, String), (Enrollment, i64)>,
    embargoed: HashSet<String>,
    filtered: HashSet<String>,
    calls: Vec<Call>,
    /// The calls let through, by throttle key, newest first.
    history: HashMap<String, VecDeque<i64>>,
    throttled: usize,
}

struct Inner {
    client_id: String,
    client_secret: String,
    owner: String,
    key: Vec<u8>,
    clock: Mutex<SimClock>,
    throttle_on: std::sync::atomic::AtomicBool,
    token_calls: AtomicUsize,
    course_views: AtomicUsize,
    fail_with: AtomicU16,
    state: Mutex<World>,
}

/// The stand-in LMS; clones share it.
#[derive(Clone)]
pub struct Lms {
    inner: Arc<Inner>,
}

fn iso(ms: Option<i64>) -> Value {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    })
    .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .map_or(Value::Null, Value::String)
}

impl Lms {
    /// An LMS whose OAuth2 application has these credentials, owned by the staff user [`OWNER`], on
    /// the system clock, its throttle on.
    pub fn new(client_id: &str, client_secret: &str) -> Lms {
        let mut state = World::default();
        state.users.insert(OWNER.to_owned(), true);
        Lms {
            inner: Arc::new(Inner {
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
                owner: OWNER.to_owned(),
                key: uuid::Uuid::new_v4().as_bytes().to_vec(),
                clock: Mutex::new(SimClock::system()),
                throttle_on: true.into(),
                token_calls: AtomicUsize::new(0),
                course_views: AtomicUsize::new(0),
                fail_with: AtomicU16::new(0),
                state: Mutex::new(state),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, World> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> i64 {
        self.inner
            .clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .now_ms()
    }

    /// Reads time from `clock` (a test's, say) for tokens, mode expiry and the throttle.
    pub fn set_clock(&self, clock: SimClock) {
        *self.inner.clock.lock().unwrap_or_else(|e| e.into_inner()) = clock;
    }

    /// A learner account.
    pub fn add_user(&self, username: &str) {
        self.state()
            .users
            .entry(username.to_owned())
            .or_insert(false);
    }

    /// Gives or takes away a user's staff status (`is_staff`).
    pub fn set_staff(&self, username: &str, staff: bool) {
        self.state().users.insert(username.to_owned(), staff);
    }

    /// A course run and its modes.
    pub fn add_course(&self, course_id: &str, course: Course) {
        self.state().courses.insert(course_id.to_owned(), course);
    }

    /// Embargoes a user (as from a restricted country) from every course.
    pub fn embargo(&self, username: &str) {
        self.state().embargoed.insert(username.to_owned());
    }

    /// An enrollment filter (`CourseEnrollmentStarted`) that refuses every enrollment in a course.
    pub fn filter_out(&self, course_id: &str) {
        self.state().filtered.insert(course_id.to_owned());
    }

    /// Turns the throttle on or off (`RateLimitConfiguration.enabled`).
    pub fn throttle(&self, on: bool) {
        self.inner.throttle_on.store(on, Ordering::SeqCst);
    }

    /// How many calls the throttle refused.
    pub fn throttled(&self) -> usize {
        self.state().throttled
    }

    /// Sets an enrollment directly, as a change on the LMS (a learner's upgrade, a support action).
    pub fn set_enrollment(&self, user: &str, course_id: &str, enrollment: Enrollment) {
        let now = self.now();
        self.state()
            .enrollments
            .insert((user.to_owned(), course_id.to_owned()), (enrollment, now));
    }

    /// `user`'s enrollment in `course_id`, if any.
    pub fn enrollment(&self, user: &str, course_id: &str) -> Option<Enrollment> {
        self.state()
            .enrollments
            .get(&(user.to_owned(), course_id.to_owned()))
            .map(|(e, _)| e.clone())
    }

    /// Every enrollment call taken, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// How many tokens were asked for.
    pub fn token_calls(&self) -> usize {
        self.inner.token_calls.load(Ordering::SeqCst)
    }

    /// How many times a course's modes were asked for.
    pub fn course_views(&self) -> usize {
        self.inner.course_views.load(Ordering::SeqCst)
    }

    /// Answer enrollment calls with `status` (an outage); 0 works normally again.
    pub fn fail_with(&self, status: u16) {
        self.inner.fail_with.store(status, Ordering::SeqCst);
    }

    fn is_staff(&self, user: &str) -> bool {
        self.state().users.get(user).copied().unwrap_or(false)
    }

    /// The modes `course` offers at `now` (`CourseMode.modes_for_course`).
    fn modes(course: &Course, now: i64, include_expired: bool) -> Vec<Mode> {
        let live: Vec<Mode> = course
            .modes
            .iter()
            .filter(|m| include_expired || m.expires_at.is_none_or(|at| at > now))
            .cloned()
            .collect();
        if live.is_empty() {
            vec![Mode::new("audit")]
        } else {
            live
        }
    }

    /// `CourseSerializer`.
    fn course_details(&self, course_id: &str, include_expired: bool) -> Value {
        let now = self.now();
        let state = self.state();
        let Some(course) = state.courses.get(course_id) else {
            return Value::Null;
        };
        let modes: Vec<Value> = Self::modes(course, now, include_expired)
            .iter()
            .map(|m| {
                let mut name = m.slug.clone();
                if let Some(first) = name.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                json!({"slug": m.slug, "name": name,
                    "min_price": if m.slug == "audit" || m.slug == "honor" { 0 } else { 49 },
                    "suggested_prices": "", "currency": "usd",
                    "expiration_datetime": iso(m.expires_at), "description": null,
                    "sku": null, "bulk_sku": null})
            })
            .collect();
        json!({"course_id": course_id, "course_name": format!("Course {course_id}"),
            "enrollment_start": null, "enrollment_end": iso(course.enrollment_end),
            "course_start": null, "course_end": null, "invite_only": false,
            "course_modes": modes, "pacing_type": "Self Paced"})
    }

    /// `CourseEnrollmentSerializer`.
    fn serialized(&self, user: &str, course_id: &str) -> Value {
        let found = self
            .state()
            .enrollments
            .get(&(user.to_owned(), course_id.to_owned()))
            .cloned();
        match found {
            None => Value::Null,
            Some((e, created)) => json!({"created": iso(Some(created)), "mode": e.mode,
                "is_active": e.is_active, "user": user,
                "course_details": self.course_details(course_id, false)}),
        }
    }

    fn record(&self, user: &str, course_id: &str, enrollment: Enrollment, body: &Value) {
        let now = self.now();
        let mut state = self.state();
        let key = (user.to_owned(), course_id.to_owned());
        let created = state.enrollments.get(&key).map_or(now, |(_, c)| *c);
        state.enrollments.insert(key, (enrollment.clone(), created));
        state.calls.push(Call {
            user: user.to_owned(),
            course_id: course_id.to_owned(),
            enrollment,
            at: Instant::now(),
            body: body.clone(),
        });
    }
}
