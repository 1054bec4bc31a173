//! The Open edX connector: an endpoint of kind `openedx` turns entitlement events into calls of the
//! LMS's Enrollment API, authenticated with an OAuth2 client-credentials JWT.
//!
//! - Token: `POST {lms}/oauth2/access_token` with `grant_type=client_credentials`, the client id and
//!   secret, and `token_type=jwt`; the answer's `access_token` is sent as `Authorization: JWT <token>`
//!   and reused until shortly before its `expires_in` ends. A 401 or 403 from the LMS drops it and
//!   the call is made once more with a new one.
//! - Grant or renewal: `POST {lms}/api/enrollment/v1/enrollment` with
//!   `{user, mode, is_active: true, course_details: {course_id}}`, where `course_id` and `mode` are
//!   the entitlement's attributes (`mode` defaults to the endpoint's `default_mode`).
//! - Revocation or expiry: the same call with mode `audit` (Upgrade-Lite: the learner keeps the free
//!   track) or with `is_active: false` (Pay-to-Enroll: the learner is unenrolled), as the endpoint's
//!   `revoke` says.
//!
//! The Enrollment API sets an enrollment to what it is told, so a repeated call changes nothing: a
//! retried delivery is safe. The user is the customer's `app_user_id`, which is the LMS username.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{ServiceResult, webhooks::Sent};
use crate::db::endpoints::Endpoint;

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

/// What a revocation does on the LMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Revoke {
    /// Move the learner to the `audit` mode (Upgrade-Lite).
    Audit,
    /// Deactivate the enrollment (Pay-to-Enroll).
    Unenroll,
}

/// An Open edX endpoint's settings, as given and as stored.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The OAuth2 application's client id (an application of grant type client credentials).
    pub client_id: String,
    /// Its client secret: stored, never shown.
    pub client_secret: String,
    /// What a revocation or expiry does (default `audit`).
    #[serde(default = "default_revoke")]
    pub revoke: Revoke,
    /// The mode of a grant whose entitlement names none (default `verified`).
    #[serde(default = "default_mode")]
    pub default_mode: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("revoke", &self.revoke)
            .field("default_mode", &self.default_mode)
            .finish()
    }
}

fn default_revoke() -> Revoke {
    Revoke::Audit
}

fn default_mode() -> String {
    "verified".into()
}

/// The settings as the API shows them: the secret only as set.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SettingsView {
    pub client_id: String,
    pub client_secret_set: bool,
    pub revoke: Revoke,
    pub default_mode: String,
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
        super::text(&STORE_ID, code, "openedx.default_mode", &self.default_mode)
    }

    pub fn view(&self) -> SettingsView {
        SettingsView {
            client_id: self.client_id.clone(),
            client_secret_set: !self.client_secret.is_empty(),
            revoke: self.revoke,
            default_mode: self.default_mode.clone(),
        }
    }

    pub fn of(endpoint: &Endpoint) -> Option<Settings> {
        serde_json::from_value(endpoint.config.clone()).ok()
    }
}

/// Access tokens by endpoint, reused until shortly before they expire.
#[derive(Debug, Default)]
pub struct Tokens {
    by_endpoint: Mutex<HashMap<String, (String, String, Instant)>>,
}

impl Tokens {
    fn cached(&self, endpoint: &str, client_id: &str) -> Option<String> {
        let map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        map.get(endpoint)
            .filter(|(client, _, until)| client == client_id && *until > Instant::now())
            .map(|(_, token, _)| token.clone())
    }

    fn keep(&self, endpoint: &str, client_id: &str, token: &str, valid_for: Duration) {
        let until = Instant::now() + valid_for.saturating_sub(TOKEN_MARGIN);
        self.by_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                endpoint.to_owned(),
                (client_id.to_owned(), token.to_owned(), until),
            );
    }

    fn forget(&self, endpoint: &str) {
        self.by_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint);
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
    pub mode: String,
    pub is_active: bool,
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
    let grant = match event_type {
        "entitlement.granted" | "entitlement.renewed" => true,
        "entitlement.revoked" | "entitlement.expired" => false,
        _ => return None,
    };
    Some(match (grant, settings.revoke) {
        (true, _) => Enrollment {
            user,
            course_id,
            mode,
            is_active: true,
        },
        (false, Revoke::Audit) => Enrollment {
            user,
            course_id,
            mode: "audit".into(),
            is_active: true,
        },
        (false, Revoke::Unenroll) => Enrollment {
            user,
            course_id,
            mode,
            is_active: false,
        },
    })
}

/// What the LMS said of one event.
#[derive(Debug, Clone)]
pub struct Answered {
    pub sent: Sent,
    /// The call made, when the event asked for one.
    pub enrollment: Option<Enrollment>,
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

async fn token(
    http: &reqwest::Client,
    tokens: &Tokens,
    endpoint: &Endpoint,
    settings: &Settings,
) -> Result<String, Sent> {
    if let Some(t) = tokens.cached(&endpoint.id, &settings.client_id) {
        return Ok(t);
    }
    let answer = http
        .post(format!("{}/oauth2/access_token", base(&endpoint.url)))
        .timeout(CALL_TIMEOUT)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", settings.client_id.as_str()),
            ("client_secret", settings.client_secret.as_str()),
            ("token_type", "jwt"),
        ])
        .send()
        .await
        .map_err(|e| Sent {
            status: None,
            error: Some(format!(
                "could not reach the LMS for a token: {}",
                e.without_url()
            )),
        })?;
    let status = answer.status();
    if !status.is_success() {
        return Err(Sent {
            status: Some(status.as_u16()),
            error: Some(format!(
                "the LMS refused the client credentials (HTTP {}); check openedx.client_id and client_secret",
                status.as_u16()
            )),
        });
    }
    let parsed: TokenAnswer = answer.json().await.map_err(|e| Sent {
        status: Some(status.as_u16()),
        error: Some(format!(
            "the LMS's token answer is not what OAuth2 specifies: {}",
            e.without_url()
        )),
    })?;
    let valid_for = Duration::from_secs(parsed.expires_in.unwrap_or(300));
    tokens.keep(
        &endpoint.id,
        &settings.client_id,
        &parsed.access_token,
        valid_for,
    );
    Ok(parsed.access_token)
}

/// Makes the LMS call one event asks for.
pub async fn deliver(
    http: &reqwest::Client,
    tokens: &Tokens,
    endpoint: &Endpoint,
    body: &str,
) -> Answered {
    let settings = match Settings::of(endpoint) {
        Some(s) => s,
        None => {
            return Answered {
                sent: Sent {
                    status: None,
                    error: Some("the endpoint's Open edX settings cannot be read".into()),
                },
                enrollment: None,
            };
        }
    };
    let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let Some(enrollment) = enrollment_for(&settings, &parsed) else {
        return Answered {
            sent: Sent {
                status: None,
                error: None,
            },
            enrollment: None,
        };
    };
    let call = serde_json::json!({
        "user": enrollment.user,
        "mode": enrollment.mode,
        "is_active": enrollment.is_active,
        "course_details": {"course_id": enrollment.course_id},
    });
    let mut sent = Sent {
        status: None,
        error: None,
    };
    for fresh_token in [false, true] {
        if fresh_token {
            tokens.forget(&endpoint.id);
        }
        let token = match token(http, tokens, endpoint, &settings).await {
            Ok(t) => t,
            Err(refused) => {
                sent = refused;
                break;
            }
        };
        let answer = http
            .post(format!(
                "{}/api/enrollment/v1/enrollment",
                base(&endpoint.url)
            ))
            .timeout(CALL_TIMEOUT)
            .header("authorization", format!("JWT {token}"))
            .json(&call)
            .send()
            .await;
        sent = match answer {
            Ok(res) if res.status().is_success() => Sent {
                status: Some(res.status().as_u16()),
                error: None,
            },
            Ok(res) => Sent::refused(res, "the LMS").await,
            Err(e) => Sent {
                status: None,
                error: Some(format!("could not reach the LMS: {}", e.without_url())),
            },
        };
        // A token the LMS no longer takes is replaced once.
        if !matches!(sent.status, Some(401 | 403)) {
            break;
        }
    }
    Answered {
        sent,
        enrollment: Some(enrollment),
    }
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
                mode: "verified".into(),
                is_active: true
            }
        );
        let audit = enrollment_for(
            &settings(Revoke::Audit),
            &event("entitlement.revoked", attrs.clone()),
        )
        .unwrap();
        assert_eq!((audit.mode.as_str(), audit.is_active), ("audit", true));
        let gone = enrollment_for(
            &settings(Revoke::Unenroll),
            &event("entitlement.expired", attrs.clone()),
        )
        .unwrap();
        assert_eq!((gone.mode.as_str(), gone.is_active), ("verified", false));
        let default = enrollment_for(
            &settings(Revoke::Audit),
            &event(
                "entitlement.renewed",
                serde_json::json!({"course_id": "course-v1:A+B+C"}),
            ),
        )
        .unwrap();
        assert_eq!(default.mode, "professional");
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
}
