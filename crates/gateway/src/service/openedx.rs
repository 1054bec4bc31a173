//! The Open edX connector: an endpoint of kind `openedx` turns entitlement events into calls of the
//! LMS's Enrollment API, authenticated with an OAuth2 client-credentials JWT, and reads enrollments
//! back. It follows edx-platform's own rules (`openedx/core/djangoapps/enrollments/views.py`):
//!
//! - Token: `POST {lms}/oauth2/access_token` with `grant_type=client_credentials`, the client id and
//!   secret, and `token_type=jwt`; the answer's `access_token` is sent as `Authorization: JWT <token>`
//!   and reused until shortly before its `expires_in` ends. The JWT's user is the OAuth application's
//!   owner, who must be staff to enroll others. Only a 401 means the token is no longer good: it is
//!   dropped and the call made once more with a new one.
//! - Grant or renewal: `POST {lms}/api/enrollment/v1/enrollment` with
//!   `{user, mode, is_active: true, course_details: {course_id}}`, where `course_id` and `mode` are
//!   the entitlement's attributes (`mode` defaults to the endpoint's `default_mode`).
//! - Revocation or expiry, Upgrade-Lite (`revoke: audit`): the same call with mode `audit`, made only
//!   where the course run offers audit (`GET {lms}/api/enrollment/v1/course/{course_id}`, asked once
//!   and kept for [`COURSE_TTL`]). The LMS refuses a mode the run does not offer, and moving a
//!   learner to a mode picked anyway would enroll them where they should not be.
//! - Revocation or expiry, Pay-to-Enroll (`revoke: unenroll`): `{user, is_active: false,
//!   course_details}` with no mode. The LMS refuses to deactivate with a mode other than the
//!   learner's current one ("Enrollment mode mismatch"), and the learner's mode may have moved since
//!   the grant (an upgrade on the LMS, a support change); without a mode the LMS deactivates
//!   whichever enrollment the learner has.
//!
//! What an answer means, and whether the delivery is tried again ([`Retry`]):
//!
//! | LMS answer | meaning | then |
//! |---|---|---|
//! | 2xx | done | delivered |
//! | 401 | the token is no longer good | a new token, once; then retried |
//! | 404, empty body | the OAuth application's owner is not staff | retried (fixed on the LMS) |
//! | 404 with a body | no Enrollment API at this URL | retried (fixed in the endpoint) |
//! | 406 | no such LMS user | retried: the learner may register later |
//! | 400 with `course_details` | the mode is not available (missing or expired) | dead at once |
//! | 400 otherwise | the call itself is refused (a mode mismatch, a bad course id) | dead at once |
//! | 403 | refused by the LMS's policy: an embargo or an enrollment filter | dead at once |
//! | 429 | throttled | retried after its `Retry-After`; every call of the endpoint held back |
//! | 5xx, no answer | the LMS is down | retried with back-off |
//!
//! A dead delivery can be sent again (`POST .../deliveries/{id}/retry`) once the course or the
//! learner is fixed. Calls are paced per endpoint ([`Settings::requests_per_minute`]) below the
//! LMS's throttle (120 a minute for staff callers), by the delivery job.
//!
//! The Enrollment API sets an enrollment to what it is told, so a repeated call changes nothing: a
//! retried delivery is safe. The user is the customer's `app_user_id`, which is the LMS username.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use gateway_core::Timestamp;
use serde::{Deserialize, Serialize};

pub use super::webhooks::Retry;
use super::{ServiceError, ServiceResult, webhooks::Sent};
use crate::db::{Db, DbResult, endpoints::Endpoint, pacing};

/// The kind of the timeline line an LMS answer writes: an enrollment call taken ...
pub const LMS_TOOK: &str = "lms.enrollment";
/// ... or refused, on its first attempt or its last.
pub const LMS_REFUSED: &str = "lms.enrollment_failed";

/// The event types the connector acts on.
pub const EVENT_TYPES: &[&str] = &[
    "entitlement.granted",
    "entitlement.renewed",
    "entitlement.revoked",
    "entitlement.expired",
];

/// How long before its stated expiry a token is renewed.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// How long the LMS has to answer one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long what a course run offers is kept before it is asked again.
pub const COURSE_TTL: Duration = Duration::from_secs(3600);

/// How long a 429 without a usable `Retry-After` holds the endpoint's calls back: DRF's throttle
/// counts requests over a minute.
const THROTTLED_DEFAULT: Duration = Duration::from_secs(60);

/// The default pace: below the 120 calls a minute that Open edX allows a staff caller
/// (`EnrollmentUserThrottle`), leaving room for the calls the pace does not see.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 100;

/// What a revocation does on the LMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Revoke {
    /// Move the learner to the `audit` mode (Upgrade-Lite); the course run must offer audit.
    Audit,
    /// Deactivate the enrollment, whatever its mode (Pay-to-Enroll).
    Unenroll,
}

/// An Open edX endpoint's settings, as given and as stored.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The OAuth2 application's client id (an application of grant type client credentials whose
    /// owner is staff on the LMS).
    pub client_id: String,
    /// Its client secret: stored, never shown.
    pub client_secret: String,
    /// What a revocation or expiry does (default `audit`).
    #[serde(default = "default_revoke")]
    pub revoke: Revoke,
    /// The mode of a grant whose entitlement names none (default `verified`).
    #[serde(default = "default_mode")]
    pub default_mode: String,
    /// The most Enrollment API calls a minute, shared by every instance (default 100, below Open
    /// edX's 120 for staff callers). Raise it only with the LMS's own limit.
    #[serde(default = "default_requests_per_minute")]
    #[schema(minimum = 1, maximum = 100000)]
    pub requests_per_minute: u32,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("revoke", &self.revoke)
            .field("default_mode", &self.default_mode)
            .field("requests_per_minute", &self.requests_per_minute)
            .finish()
    }
}

fn default_revoke() -> Revoke {
    Revoke::Audit
}

fn default_mode() -> String {
    "verified".into()
}

fn default_requests_per_minute() -> u32 {
    DEFAULT_REQUESTS_PER_MINUTE
}

/// The settings as the API shows them: the secret only as set.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SettingsView {
    pub client_id: String,
    pub client_secret_set: bool,
    pub revoke: Revoke,
    pub default_mode: String,
    pub requests_per_minute: u32,
}

impl Settings {
    pub fn check(&self) -> ServiceResult<()> {
        use gateway_core::text::{SECRET_TEXT, STORE_ID};
        let code = "invalid_openedx_settings";
        super::text(&STORE_ID, code, "openedx.client_id", &self.client_id)?;
        super::text(
            &SECRET_TEXT,
            code,
            "openedx.client_secret",
            &self.client_secret,
        )?;
        super::text(&STORE_ID, code, "openedx.default_mode", &self.default_mode)?;
        if !(1..=100_000).contains(&self.requests_per_minute) {
            return Err(ServiceError::bad_request(
                code,
                "`openedx.requests_per_minute` must be from 1 to 100000.",
            ));
        }
        Ok(())
    }

    pub fn view(&self) -> SettingsView {
        SettingsView {
            client_id: self.client_id.clone(),
            client_secret_set: !self.client_secret.is_empty(),
            revoke: self.revoke,
            default_mode: self.default_mode.clone(),
            requests_per_minute: self.requests_per_minute,
        }
    }

    pub fn of(endpoint: &Endpoint) -> Option<Settings> {
        serde_json::from_value(endpoint.config.clone()).ok()
    }

    /// The time between two calls at the endpoint's pace.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(60_000 / u64::from(self.requests_per_minute.max(1)))
    }

    /// How far ahead of its slot a call may go: a tenth of a minute's calls may come at once, so
    /// no window of a minute holds more than 110% of the pace.
    pub fn burst(&self) -> Duration {
        self.interval() * (self.requests_per_minute / 10)
    }
}

/// What the connector keeps between calls, per endpoint: its token and what each course offers.
#[derive(Debug, Default)]
pub struct Caches {
    tokens: Mutex<HashMap<String, (String, String, Instant)>>,
    courses: Mutex<HashMap<(String, String), (CourseModes, Instant)>>,
}

impl Caches {
    fn token(&self, endpoint: &str, client_id: &str) -> Option<String> {
        let map = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        map.get(endpoint)
            .filter(|(client, _, until)| client == client_id && *until > Instant::now())
            .map(|(_, token, _)| token.clone())
    }

    fn keep_token(&self, endpoint: &str, client_id: &str, token: &str, valid_for: Duration) {
        let until = Instant::now() + valid_for.saturating_sub(TOKEN_MARGIN);
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                endpoint.to_owned(),
                (client_id.to_owned(), token.to_owned(), until),
            );
    }

    fn forget_token(&self, endpoint: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint);
    }

    fn course(&self, endpoint: &str, course_id: &str) -> Option<CourseModes> {
        let map = self.courses.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(endpoint.to_owned(), course_id.to_owned()))
            .filter(|(_, until)| *until > Instant::now())
            .map(|(modes, _)| modes.clone())
    }

    fn keep_course(&self, endpoint: &str, course_id: &str, modes: &CourseModes) {
        self.courses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (endpoint.to_owned(), course_id.to_owned()),
                (modes.clone(), Instant::now() + COURSE_TTL),
            );
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The enrollment call one event asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrollment {
    pub user: String,
    pub course_id: String,
    /// The mode to set; `None` deactivates whatever mode the learner has.
    pub mode: Option<String>,
    pub is_active: bool,
    /// What the event was.
    pub change: Change,
}

/// What an event did to the learner's access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Grant,
    Renewal,
    Revocation,
}

impl Enrollment {
    /// The Enrollment API body of the call.
    fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "user": self.user,
            "is_active": self.is_active,
            "course_details": {"course_id": self.course_id},
        });
        if let Some(mode) = &self.mode {
            body["mode"] = mode.as_str().into();
        }
        body
    }

    /// Whether the learner's enrollment is read before the call, which then may not be needed:
    ///
    /// - an unenrollment: a learner who is not enrolled is left so. Without the read the LMS would
    ///   make an inactive enrollment in its default mode (`add_enrollment`), and refuse to where the
    ///   run offers no audit.
    /// - a renewal: a learner already enrolled in the mode is left so. The LMS refuses even an
    ///   unchanged enrollment once the run's enrollment has closed (`CourseEnrollment.enroll`), and
    ///   subscriptions renew long after that.
    pub fn reads_first(&self) -> bool {
        !self.is_active || self.change == Change::Renewal
    }

    /// The Enrollment API calls it takes at most, for the endpoint's pace.
    pub fn calls(&self) -> usize {
        if self.reads_first() { 2 } else { 1 }
    }

    /// What the call does, for the timeline.
    pub fn describe(&self) -> String {
        match (&self.mode, self.is_active) {
            (Some(mode), true) => format!("enrolled {} in {} as {mode}", self.user, self.course_id),
            _ => format!("unenrolled {} from {}", self.user, self.course_id),
        }
    }
}

/// What an event asks of the LMS; `None` when nothing (another event type, or an entitlement that
/// names no course).
pub fn enrollment_for(settings: &Settings, body: &serde_json::Value) -> Option<Enrollment> {
    let event_type = body["type"].as_str()?;
    let data = &body["data"];
    let user = data["app_user_id"].as_str()?.to_owned();
    let attributes = &data["entitlement"]["attributes"];
    let course_id = attributes["course_id"].as_str()?.to_owned();
    let mode = attributes["mode"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| settings.default_mode.clone());
    let change = match event_type {
        "entitlement.granted" => Change::Grant,
        "entitlement.renewed" => Change::Renewal,
        "entitlement.revoked" | "entitlement.expired" => Change::Revocation,
        _ => return None,
    };
    let (mode, is_active) = match (change, settings.revoke) {
        (Change::Grant | Change::Renewal, _) => (Some(mode), true),
        (Change::Revocation, Revoke::Audit) => (Some(AUDIT.to_owned()), true),
        (Change::Revocation, Revoke::Unenroll) => (None, false),
    };
    Some(Enrollment {
        user,
        course_id,
        mode,
        is_active,
        change,
    })
}

/// The free mode Upgrade-Lite moves a learner back to.
const AUDIT: &str = "audit";

/// What the LMS said of one event.
#[derive(Debug, Clone)]
pub struct Answered {
    pub sent: Sent,
    /// The call made, when the event asked for one.
    pub enrollment: Option<Enrollment>,
}

/// A learner's enrollment as the LMS reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LmsEnrollment {
    pub mode: String,
    pub is_active: bool,
    /// When it was made (ISO 8601, as the LMS writes it).
    #[serde(default)]
    pub created: Option<String>,
}

/// Why a call to the LMS did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: Option<u16>,
    pub error: String,
    pub retry: Retry,
}

impl Failure {
    /// A failure tried again with the delivery's back-off.
    fn later(status: Option<u16>, error: String) -> Failure {
        Failure {
            status,
            error,
            retry: Retry::Later,
        }
    }

    /// The LMS did not answer (`what`: the call).
    fn unreachable(what: &str, e: reqwest::Error) -> Failure {
        Failure::later(
            None,
            format!("could not reach the LMS{what}: {}", e.without_url()),
        )
    }
}

impl From<Failure> for Sent {
    fn from(f: Failure) -> Sent {
        Sent {
            status: f.status,
            error: Some(f.error),
            retry: f.retry,
        }
    }
}

/// An answer of the LMS: its status, headers and body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    /// What a non-2xx answer means (see the module's table).
    fn refusal(&self) -> Failure {
        refusal(self.status, &self.headers, &self.body)
    }
}

/// Sends one request and reads its answer whole.
async fn send(request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
    let res = request
        .timeout(CALL_TIMEOUT)
        .send()
        .await
        .map_err(|e| Failure::unreachable("", e))?;
    Ok(Answer {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap_or_default(),
    })
}

/// The modes a course run offers now (unexpired), by slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourseModes(pub Vec<String>);

/// An Open edX endpoint ready for calls.
pub struct Lms<'a> {
    http: &'a reqwest::Client,
    caches: &'a Caches,
    endpoint: &'a Endpoint,
    settings: Settings,
}

impl<'a> Lms<'a> {
    /// `None` when the endpoint's settings cannot be read.
    pub fn new(
        http: &'a reqwest::Client,
        caches: &'a Caches,
        endpoint: &'a Endpoint,
    ) -> Option<Self> {
        Some(Lms {
            http,
            caches,
            endpoint,
            settings: Settings::of(endpoint)?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.url.trim_end_matches('/'))
    }

    /// `{lms}/api/enrollment/v1/{kind}/{id}`, the id one percent-encoded path segment.
    fn api_url(&self, kind: &str, id: &str) -> Result<reqwest::Url, Failure> {
        let not_a_base = || Failure::later(None, "the endpoint's url is not a base URL".into());
        let mut url =
            reqwest::Url::parse(&self.url("/api/enrollment/v1")).map_err(|_| not_a_base())?;
        url.path_segments_mut()
            .map_err(|()| not_a_base())?
            .extend([kind, id]);
        Ok(url)
    }

    async fn token(&self) -> Result<String, Failure> {
        let s = &self.settings;
        if let Some(t) = self.caches.token(&self.endpoint.id, &s.client_id) {
            return Ok(t);
        }
        let answer = self
            .http
            .post(self.url("/oauth2/access_token"))
            .timeout(CALL_TIMEOUT)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", s.client_id.as_str()),
                ("client_secret", s.client_secret.as_str()),
                ("token_type", "jwt"),
            ])
            .send()
            .await
            .map_err(|e| Failure::unreachable(" for a token", e))?;
        let status = answer.status().as_u16();
        if !answer.status().is_success() {
            return Err(Failure::later(
                Some(status),
                format!(
                    "the LMS refused the client credentials (HTTP {status}); check openedx.client_id and client_secret"
                ),
            ));
        }
        let parsed: TokenAnswer = answer.json().await.map_err(|e| {
            Failure::later(
                Some(status),
                format!(
                    "the LMS's token answer is not what OAuth2 specifies: {}",
                    e.without_url()
                ),
            )
        })?;
        let valid_for = Duration::from_secs(parsed.expires_in.unwrap_or(300));
        self.caches.keep_token(
            &self.endpoint.id,
            &s.client_id,
            &parsed.access_token,
            valid_for,
        );
        Ok(parsed.access_token)
    }

    /// Makes one authenticated call (built by `request` from the base client), once more with a new
    /// token if the LMS answers 401: only a 401 means the token is no longer good.
    async fn call(
        &self,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Answer, Failure> {
        let with_token =
            |token: String| request(self.http).header("authorization", format!("JWT {token}"));
        let answer = send(with_token(self.token().await?)).await?;
        if answer.status != 401 {
            return Ok(answer);
        }
        self.caches.forget_token(&self.endpoint.id);
        send(with_token(self.token().await?)).await
    }

    /// Makes the LMS call one event asks for.
    pub async fn deliver(&self, body: &str) -> Answered {
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let Some(enrollment) = enrollment_for(&self.settings, &parsed) else {
            return Answered {
                sent: Sent::delivered(None),
                enrollment: None,
            };
        };
        let sent = match self.enroll(&enrollment).await {
            Ok(status) => Sent::delivered(Some(status)),
            Err(f) => f.into(),
        };
        Answered {
            sent,
            enrollment: Some(enrollment),
        }
    }

    async fn enroll(&self, enrollment: &Enrollment) -> Result<u16, Failure> {
        if enrollment.change == Change::Revocation && enrollment.mode.as_deref() == Some(AUDIT) {
            let modes = self.course_modes(&enrollment.course_id).await?;
            if !modes.0.iter().any(|m| m == AUDIT) {
                return Err(Failure {
                    status: None,
                    error: format!(
                        "{} offers no audit mode (it offers: {}), so the learner cannot be moved back to audit; \
                         add an audit mode to the course run, or make the endpoint revoke by unenrolling",
                        enrollment.course_id,
                        if modes.0.is_empty() {
                            "none".to_owned()
                        } else {
                            modes.0.join(", ")
                        }
                    ),
                    retry: Retry::Never,
                });
            }
        }
        if enrollment.reads_first() {
            let current = self.read(&enrollment.user, &enrollment.course_id).await?;
            let settled = match &current {
                None => !enrollment.is_active,
                Some(c) if !enrollment.is_active => !c.is_active,
                Some(c) => c.is_active && Some(&c.mode) == enrollment.mode.as_ref(),
            };
            if settled {
                return Ok(200);
            }
        }
        let body = enrollment.body();
        let url = self.url("/api/enrollment/v1/enrollment");
        let answer = self.call(|http| http.post(&url).json(&body)).await?;
        if (200..300).contains(&answer.status) {
            return Ok(answer.status);
        }
        Err(answer.refusal())
    }

    /// The modes `course_id` offers now: asked of the LMS once and kept for [`COURSE_TTL`].
    pub async fn course_modes(&self, course_id: &str) -> Result<CourseModes, Failure> {
        if let Some(modes) = self.caches.course(&self.endpoint.id, course_id) {
            return Ok(modes);
        }
        // The course view takes no authentication (`EnrollmentCourseDetailView`).
        let answer = send(self.http.get(self.api_url("course", course_id)?)).await?;
        if answer.status != 200 {
            let mut failure = answer.refusal();
            if matches!(answer.status, 400 | 404) {
                failure.error =
                    format!("the LMS knows no course run {course_id}: {}", failure.error);
                failure.retry = Retry::Never;
            }
            return Err(failure);
        }
        #[derive(Deserialize)]
        struct Mode {
            slug: String,
        }
        #[derive(Deserialize)]
        struct Course {
            course_modes: Vec<Mode>,
        }
        let course: Course = serde_json::from_str(&answer.body).map_err(|e| {
            Failure::later(
                Some(answer.status),
                format!("the LMS's course answer is not the Enrollment API's: {e}"),
            )
        })?;
        let modes = CourseModes(course.course_modes.into_iter().map(|m| m.slug).collect());
        self.caches
            .keep_course(&self.endpoint.id, course_id, &modes);
        Ok(modes)
    }

    /// `user`'s enrollment in `course_id` as the LMS has it; `None` when they are not enrolled (the
    /// LMS answers an empty 200). The call takes a slot of the endpoint's pace, waiting for it.
    pub async fn read_enrollment(
        &self,
        db: &Db,
        now: Timestamp,
        user: &str,
        course_id: &str,
    ) -> Result<Option<LmsEnrollment>, Failure> {
        let send_at = slots(db, self.endpoint, &self.settings, now, 1)
            .await
            .map_err(|e| {
                Failure::later(None, format!("the endpoint's pace could not be read: {e}"))
            })?[0];
        let wait = send_at.millis().saturating_sub(now.millis());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        self.read(user, course_id).await
    }

    /// `GET {lms}/api/enrollment/v1/enrollment/{user},{course_id}`, unpaced.
    async fn read(&self, user: &str, course_id: &str) -> Result<Option<LmsEnrollment>, Failure> {
        let url = self.api_url("enrollment", &format!("{user},{course_id}"))?;
        let answer = self.call(|http| http.get(url.clone())).await?;
        if answer.status != 200 {
            return Err(answer.refusal());
        }
        if answer.body.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&answer.body).map(Some).map_err(|e| {
            Failure::later(
                Some(answer.status),
                format!("the LMS's enrollment answer is not the Enrollment API's: {e}"),
            )
        })
    }
}

/// Holds every call of `endpoint` back until `until` (the LMS's `Retry-After`). The pace lets a call go
/// up to [`Settings::burst`] ahead of its slot, so the slots restart that much later.
pub async fn hold(
    db: &Db,
    endpoint: &Endpoint,
    settings: &Settings,
    until: Timestamp,
) -> DbResult<()> {
    let burst = settings.burst().as_millis() as i64;
    pacing::hold_until(db, &endpoint.id, until.plus_millis(burst)).await
}

/// `count` call slots of `endpoint`'s pace, each the time from which its call may be made.
pub async fn slots(
    db: &Db,
    endpoint: &Endpoint,
    settings: &Settings,
    now: Timestamp,
    count: usize,
) -> DbResult<Vec<Timestamp>> {
    let interval = settings.interval().as_millis() as i64;
    let burst = settings.burst().as_millis() as i64;
    let first = pacing::reserve(db, &endpoint.id, now, interval, count as i64).await?;
    Ok((0..count as i64)
        .map(|i| {
            let slot = first.millis() + i * interval - burst;
            Timestamp::from_millis(slot.max(now.millis()))
        })
        .collect())
}

/// What a non-2xx answer of the Enrollment API means (see the module's table).
fn refusal(status: u16, headers: &reqwest::header::HeaderMap, body: &str) -> Failure {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let said = json["message"]
        .as_str()
        .or(json["detail"].as_str())
        .map(|m| m.chars().take(300).collect::<String>())
        .unwrap_or_else(|| body.chars().take(200).collect());
    let (error, retry) = match status {
        401 => (
            format!("the LMS did not take a new token either (HTTP 401): {said}"),
            Retry::Later,
        ),
        404 if body.trim().is_empty() => (
            "the OAuth application's owner is not staff on the LMS (HTTP 404 with an empty body: the \
             Enrollment API hides other learners from non-staff callers); give that user staff status"
                .to_owned(),
            Retry::Later,
        ),
        404 => (
            format!("the LMS has no Enrollment API at this URL (HTTP 404); check the endpoint's url: {said}"),
            Retry::Later,
        ),
        406 => (format!("no such LMS user (HTTP 406): {said}"), Retry::Later),
        400 if json.get("course_details").is_some() => (
            format!("the mode is not available in the course run (HTTP 400): {said}"),
            Retry::Never,
        ),
        400 if said.starts_with("An error occurred while creating") => (
            format!(
                "the LMS refused the enrollment (HTTP 400): the run's enrollment has closed, it is \
                 invitation-only or full, or an enrollment filter stopped it: {said}"
            ),
            Retry::Never,
        ),
        400 => (format!("the LMS refused the call (HTTP 400): {said}"), Retry::Never),
        403 => (
            format!("refused by the LMS's policy, an embargo or an enrollment filter (HTTP 403): {said}"),
            Retry::Never,
        ),
        429 => {
            let after = retry_after(headers).unwrap_or(THROTTLED_DEFAULT);
            (
                format!(
                    "the LMS is throttling the gateway (HTTP 429); its calls wait {} s",
                    after.as_secs()
                ),
                Retry::After(after),
            )
        }
        _ => (format!("the LMS answered HTTP {status}: {said}"), Retry::Later),
    };
    Failure {
        status: Some(status),
        error,
        retry,
    }
}

/// A `Retry-After` of seconds (DRF sends seconds), at most an hour.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.clamp(1, 3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(revoke: Revoke) -> Settings {
        Settings {
            client_id: "id".into(),
            client_secret: "secret".into(),
            revoke,
            default_mode: "professional".into(),
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
        }
    }

    fn event(t: &str, attributes: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"type": t, "data": {"app_user_id": "alice", "entitlement": {"id": "e", "attributes": attributes}}})
    }

    #[test]
    fn grants_enroll_in_the_entitlements_mode_and_revokes_follow_the_setting() {
        let attrs = serde_json::json!({"course_id": "course-v1:A+B+C", "mode": "verified"});
        let grant = enrollment_for(
            &settings(Revoke::Audit),
            &event("entitlement.granted", attrs.clone()),
        )
        .unwrap();
        assert_eq!(
            grant,
            Enrollment {
                user: "alice".into(),
                course_id: "course-v1:A+B+C".into(),
                mode: Some("verified".into()),
                is_active: true,
                change: Change::Grant,
            }
        );
        assert_eq!(grant.body()["mode"], "verified");
        let audit = enrollment_for(
            &settings(Revoke::Audit),
            &event("entitlement.revoked", attrs.clone()),
        )
        .unwrap();
        assert_eq!(
            (audit.mode.as_deref(), audit.is_active, audit.change),
            (Some("audit"), true, Change::Revocation)
        );
        assert!(!audit.reads_first());
        let gone = enrollment_for(
            &settings(Revoke::Unenroll),
            &event("entitlement.expired", attrs.clone()),
        )
        .unwrap();
        assert_eq!((gone.mode.as_deref(), gone.is_active), (None, false));
        // No mode is sent: the LMS deactivates whatever mode the learner has.
        assert!(gone.body().get("mode").is_none(), "{}", gone.body());
        assert_eq!(gone.body()["is_active"], false);
        assert!(gone.reads_first() && !grant.reads_first());
        let default = enrollment_for(
            &settings(Revoke::Audit),
            &event(
                "entitlement.renewed",
                serde_json::json!({"course_id": "course-v1:A+B+C"}),
            ),
        )
        .unwrap();
        assert_eq!(default.mode.as_deref(), Some("professional"));
        assert_eq!((default.change, default.calls()), (Change::Renewal, 2));
    }

    #[test]
    fn events_without_a_course_ask_nothing() {
        let s = settings(Revoke::Audit);
        assert!(enrollment_for(&s, &event("entitlement.granted", serde_json::json!({}))).is_none());
        assert!(
            enrollment_for(
                &s,
                &event(
                    "balance.changed",
                    serde_json::json!({"course_id": "course-v1:A+B+C"})
                )
            )
            .is_none()
        );
    }

    #[test]
    fn each_refusal_says_what_it_means_and_whether_it_is_retried() {
        let none = reqwest::header::HeaderMap::new();
        let r = |status, body: &str| refusal(status, &none, body);
        assert!(r(404, "").error.contains("not staff"));
        assert_eq!(r(404, "").retry, Retry::Later);
        assert!(
            r(404, "<html>Not Found</html>")
                .error
                .contains("no Enrollment API")
        );
        let user = r(406, r#"{"message": "The user bob does not exist."}"#);
        assert!(user.error.contains("no such LMS user") && user.error.contains("bob"));
        assert_eq!(user.retry, Retry::Later);
        let mode = r(
            400,
            r#"{"message": "The [verified] course mode is expired or otherwise unavailable for course run [x].", "course_details": {}}"#,
        );
        assert!(
            mode.error.contains("mode is not available"),
            "{}",
            mode.error
        );
        assert_eq!(mode.retry, Retry::Never);
        let mismatch = r(400, r#"{"message": "Enrollment mode mismatch"}"#);
        assert_eq!(mismatch.retry, Retry::Never);
        assert!(!mismatch.error.contains("mode is not available"));
        assert_eq!(r(403, r#"{"message": "embargo"}"#).retry, Retry::Never);
        assert_eq!(r(503, "").retry, Retry::Later);
        let mut after = reqwest::header::HeaderMap::new();
        after.insert(reqwest::header::RETRY_AFTER, "17".parse().unwrap());
        assert_eq!(
            refusal(429, &after, "{}").retry,
            Retry::After(Duration::from_secs(17))
        );
        assert_eq!(r(429, "{}").retry, Retry::After(THROTTLED_DEFAULT));
    }

    #[test]
    fn the_pace_spaces_calls_and_lets_a_tenth_of_a_minute_through_at_once() {
        let s = settings(Revoke::Audit);
        assert_eq!(s.interval(), Duration::from_millis(600));
        assert_eq!(s.burst(), Duration::from_secs(6));
        let slow = Settings {
            requests_per_minute: 5,
            ..s
        };
        assert_eq!(slow.burst(), Duration::ZERO);
    }
}
