//! Webhook endpoints and outbound delivery, signed as Standard Webhooks specifies
//! (<https://www.standardwebhooks.com/>): headers `webhook-id` (the outbox event's id, the same on
//! every attempt), `webhook-timestamp` (seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256>`
//! of `id.timestamp.body`, one per active secret, space-separated). Secrets are `whsec_<base64>`.

use base64::{Engine, engine::general_purpose::STANDARD};
use gateway_core::{AppId, Timestamp, text};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{ServiceError, ServiceResult, openedx};
use crate::db::{
    Db,
    endpoints::{self, Endpoint, SigningSecret},
    new_id,
};

/// The event types an endpoint can ask for.
pub const EVENT_TYPES: &[&str] = &[
    "entitlement.granted",
    "entitlement.revoked",
    "entitlement.expired",
    "entitlement.renewed",
    "purchase.pending",
    "purchase.refunded",
    "balance.changed",
    crate::stores::CONSENT_RESCINDED,
];

/// Secret prefix of Standard Webhooks.
const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a generated secret.
const SECRET_BYTES: usize = 32;

/// How long a rotated-out secret keeps signing, unless the rotation says otherwise: long enough for
/// the receiver to deploy the new one.
const DEFAULT_ROTATION_OVERLAP_SECS: i64 = 24 * 3600;

/// What an endpoint is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Signed HTTP POSTs of every event (Standard Webhooks).
    #[default]
    Webhook,
    /// The Open edX connector: enrollments through the LMS's Enrollment API.
    Openedx,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Openedx => "openedx",
        }
    }
}

/// A new endpoint.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// `webhook` (default) or `openedx`.
    #[serde(default)]
    pub kind: Kind,
    /// A webhook's `https://` (or `http://`) URL; for `openedx`, the LMS's base URL.
    pub url: String,
    /// Event types to deliver; absent or empty: every type (for `openedx`, the entitlement events).
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// A webhook's `whsec_<base64>` secret of your own; when absent one is generated and shown once.
    #[serde(default)]
    pub secret: Option<String>,
    /// Required for `openedx`: the LMS's OAuth2 client and what a revocation does.
    #[serde(default)]
    pub openedx: Option<openedx::Settings>,
}

/// A change to an endpoint; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// A paused endpoint gets no new deliveries.
    pub active: Option<bool>,
    /// New Open edX settings (`openedx` endpoints), replacing the old ones whole.
    pub openedx: Option<openedx::Settings>,
}

/// A secret rotation.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SecretRotation)]
pub struct Rotation {
    /// The new secret; when absent one is generated and shown once.
    #[serde(default)]
    pub secret: Option<String>,
    /// How long the current secrets keep signing beside the new one (default 86400; 0 ends them now).
    #[serde(default)]
    pub overlap_seconds: Option<i64>,
}

/// An endpoint as the API shows it: never its secrets, only when each was made and ends.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    pub id: String,
    pub kind: String,
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub active: bool,
    /// A webhook's signing secrets.
    pub secrets: Vec<SecretView>,
    /// An `openedx` endpoint's settings, its client secret only as set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openedx: Option<openedx::SettingsView>,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
    /// The secret just generated, shown on creation or rotation only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_secret: Option<String>,
}

/// When a signing secret was made and when it stops signing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecretView {
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Timestamp>,
}

pub fn view(e: &Endpoint, new_secret: Option<String>) -> EndpointView {
    EndpointView {
        id: e.id.clone(),
        kind: e.kind.clone(),
        url: e.url.clone(),
        description: e.description.clone(),
        events: e.events.clone(),
        active: e.active,
        secrets: e
            .secrets
            .iter()
            .map(|s| SecretView {
                created_at: s.created_at,
                expires_at: s.expires_at,
            })
            .collect(),
        openedx: (e.kind == "openedx")
            .then(|| openedx::Settings::of(e).map(|s| s.view()))
            .flatten(),
        created_at: e.created_at,
        updated_at: e.updated_at,
        new_secret,
    }
}

fn check_url(url: &str) -> ServiceResult<()> {
    super::text(&text::URL_TEXT, "invalid_url", "url", url)
}

fn check_events(kind: &str, events: &[String]) -> ServiceResult<Vec<String>> {
    let known = if kind == "openedx" {
        openedx::EVENT_TYPES
    } else {
        EVENT_TYPES
    };
    let mut out: Vec<String> = Vec::with_capacity(events.len());
    for e in events {
        if !known.contains(&e.as_str()) {
            return Err(ServiceError::bad_request(
                "unknown_event_type",
                format!(
                    "`{e}` is not an event type of a {kind} endpoint; the types are {}.",
                    known.join(", ")
                ),
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// The key a `whsec_` secret stands for.
fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let key = STANDARD.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()?;
    (key.len() >= 16 && key.len() <= 64).then_some(key)
}

fn check_secret(secret: &str) -> ServiceResult<()> {
    super::text(&text::WEBHOOK_SECRET, "invalid_secret", "secret", secret)
}

fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// Creates a webhook endpoint of `app`.
pub async fn create(
    db: &Db,
    app: &AppId,
    body: NewEndpoint,
    now: Timestamp,
) -> ServiceResult<EndpointView> {
    check_url(&body.url)?;
    super::text(
        &text::DESCRIPTION,
        "invalid_description",
        "description",
        &body.description,
    )?;
    let kind = body.kind.as_str();
    let events = check_events(kind, &body.events)?;
    let (secrets, generated, config) = match body.kind {
        Kind::Webhook => {
            if body.openedx.is_some() {
                return Err(ServiceError::bad_request(
                    "invalid_endpoint",
                    "`openedx` settings belong to endpoints of kind `openedx`.",
                ));
            }
            if let Some(s) = &body.secret {
                check_secret(s)?;
            }
            let generated = body.secret.is_none().then(generate_secret);
            let secret = SigningSecret {
                secret: body
                    .secret
                    .clone()
                    .or_else(|| generated.clone())
                    .unwrap_or_default(),
                created_at: now,
                expires_at: None,
            };
            (vec![secret], generated, serde_json::json!({}))
        }
        Kind::Openedx => {
            let Some(settings) = &body.openedx else {
                return Err(ServiceError::bad_request(
                    "invalid_openedx_settings",
                    "An `openedx` endpoint needs `openedx: {client_id, client_secret}`.",
                ));
            };
            if body.secret.is_some() {
                return Err(ServiceError::bad_request(
                    "invalid_endpoint",
                    "An `openedx` endpoint calls the LMS with OAuth2; it has no signing secret.",
                ));
            }
            settings.check()?;
            let config = serde_json::to_value(settings).map_err(crate::db::DbError::from)?;
            (Vec::new(), None, config)
        }
    };
    let endpoint = Endpoint {
        id: new_id("we"),
        app_id: app.clone(),
        kind: kind.into(),
        url: body.url,
        description: body.description,
        events,
        secrets,
        config,
        active: true,
        created_at: now,
        updated_at: now,
    };
    endpoints::insert(db, &endpoint).await?;
    Ok(view(&endpoint, generated))
}

/// An endpoint of `app`, or 404.
pub async fn get(db: &Db, app: &AppId, id: &str) -> ServiceResult<Endpoint> {
    endpoints::get(db, app, id).await?.ok_or_else(|| {
        ServiceError::not_found(
            "endpoint_not_found",
            format!("App {app} has no webhook endpoint {id:?}."),
        )
    })
}

/// Changes an endpoint's URL, filter, description or state.
pub async fn update(
    db: &Db,
    app: &AppId,
    id: &str,
    patch: EndpointPatch,
    now: Timestamp,
) -> ServiceResult<EndpointView> {
    let mut e = get(db, app, id).await?;
    if let Some(url) = patch.url {
        check_url(&url)?;
        e.url = url;
    }
    if let Some(events) = patch.events {
        // A type no endpoint takes breaks the document; one that this endpoint's kind does not take
        // is refused by the endpoint as it stands.
        check_events("webhook", &events)?;
        e.events = check_events(&e.kind, &events).map_err(|_| {
            ServiceError::conflict(
                "unknown_event_type",
                format!(
                    "A {} endpoint takes only the event types {}.",
                    e.kind,
                    openedx::EVENT_TYPES.join(", ")
                ),
            )
        })?;
    }
    if let Some(settings) = patch.openedx {
        if e.kind != "openedx" {
            return Err(ServiceError::conflict(
                "invalid_endpoint",
                "`openedx` settings belong to endpoints of kind `openedx`.",
            ));
        }
        settings.check()?;
        e.config = serde_json::to_value(&settings).map_err(crate::db::DbError::from)?;
    }
    if let Some(d) = patch.description {
        super::text(&text::DESCRIPTION, "invalid_description", "description", &d)?;
        e.description = d;
    }
    if let Some(a) = patch.active {
        e.active = a;
    }
    e.updated_at = now;
    endpoints::update(db, &e).await?;
    Ok(view(&e, None))
}

/// Adds a new signing secret; the current ones keep signing for the overlap, then end.
pub async fn rotate(
    db: &Db,
    app: &AppId,
    id: &str,
    rotation: Rotation,
    now: Timestamp,
) -> ServiceResult<EndpointView> {
    let mut e = get(db, app, id).await?;
    if e.kind != "webhook" {
        return Err(ServiceError::conflict(
            "not_a_webhook",
            "Only webhook endpoints have signing secrets.",
        ));
    }
    if let Some(s) = &rotation.secret {
        check_secret(s)?;
    }
    let overlap = rotation
        .overlap_seconds
        .unwrap_or(DEFAULT_ROTATION_OVERLAP_SECS);
    if !(0..=30 * 24 * 3600).contains(&overlap) {
        return Err(ServiceError::bad_request(
            "invalid_overlap",
            "`overlap_seconds` is between 0 and 2592000 (30 days).",
        ));
    }
    let ends = now.plus_millis(overlap * 1000);
    // Forget the secrets that have ended; end the current ones after the overlap.
    e.secrets.retain(|s| s.expires_at.is_none_or(|at| at > now));
    for s in &mut e.secrets {
        s.expires_at = Some(s.expires_at.map_or(ends, |at| at.min(ends)));
    }
    let generated = rotation.secret.is_none().then(generate_secret);
    e.secrets.push(SigningSecret {
        secret: rotation
            .secret
            .clone()
            .or_else(|| generated.clone())
            .unwrap_or_default(),
        created_at: now,
        expires_at: None,
    });
    e.updated_at = now;
    endpoints::update(db, &e).await?;
    Ok(view(&e, generated))
}

/// The `webhook-signature` header value for one message: a `v1,<base64>` per secret.
pub fn signature<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    msg_id: &str,
    timestamp: i64,
    body: &str,
) -> String {
    let mut out = Vec::new();
    for secret in secrets {
        let Some(key) = secret_key(secret) else {
            continue;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            continue;
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        out.push(format!(
            "v1,{}",
            STANDARD.encode(mac.finalize().into_bytes())
        ));
    }
    out.join(" ")
}

/// What a receiver made of one attempt.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why the attempt failed, when it did.
    pub error: Option<String>,
    /// When a failed attempt is tried again.
    pub retry: Retry,
}

/// When a failed attempt is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// With the delivery's back-off, for its retry window.
    Later,
    /// Not before this long (the receiver's `Retry-After`); the endpoint's other calls wait as long.
    After(std::time::Duration),
    /// Never: the same call would be refused the same way. The delivery is dead-lettered at once.
    Never,
}

impl Sent {
    /// A 2xx answer (or an attempt that had nothing to send).
    pub fn delivered(status: Option<u16>) -> Sent {
        Sent {
            status,
            error: None,
            retry: Retry::Later,
        }
    }

    /// A failure tried again with the delivery's back-off.
    pub fn failed(status: Option<u16>, error: impl Into<String>) -> Sent {
        Sent {
            status,
            error: Some(error.into()),
            retry: Retry::Later,
        }
    }

    /// A non-2xx answer of `who`: its status and the start of its body.
    pub async fn refused(res: reqwest::Response, who: &str) -> Sent {
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(ERROR_EXCERPT).collect();
        Sent::failed(
            Some(status),
            if excerpt.is_empty() {
                format!("{who} answered HTTP {status}")
            } else {
                format!("{who} answered HTTP {status}: {excerpt}")
            },
        )
    }
}

/// How long a receiver has to answer one delivery.
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The most of a receiver's answer kept with a failed attempt.
const ERROR_EXCERPT: usize = 200;

/// Posts one event to a webhook endpoint, signed with every secret that signs at `now`. The
/// signature's timestamp is the wall clock's, as receivers check it against theirs.
pub async fn send(
    http: &reqwest::Client,
    endpoint: &Endpoint,
    event_id: &str,
    body: &str,
    now: Timestamp,
) -> Sent {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let signature = signature(
        endpoint.signing_secrets(now).map(|s| s.secret.as_str()),
        event_id,
        timestamp,
        body,
    );
    let answer = http
        .post(&endpoint.url)
        .timeout(SEND_TIMEOUT)
        .header("content-type", "application/json")
        .header("webhook-id", event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_owned())
        .send()
        .await;
    match answer {
        Ok(res) if res.status().is_success() => Sent::delivered(Some(res.status().as_u16())),
        Ok(res) => Sent::refused(res, "the receiver").await,
        // Without the URL: an operator may have put a token in it.
        Err(e) => Sent::failed(
            None,
            format!("could not reach the receiver: {}", e.without_url()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_as_the_reference_libraries_do() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sig = signature(
            [secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn signs_with_every_secret() {
        let a = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let b = generate_secret();
        let both = signature([a, b.as_str()], "id", 1, "{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature([a], "id", 1, "{}"));
        assert_eq!(parts[1], signature([b.as_str()], "id", 1, "{}"));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn refuses_malformed_secrets() {
        assert!(check_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(check_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(check_secret("whsec_not base64!").is_err());
        assert!(check_secret("whsec_c2hvcnQ=").is_err());
    }

    /// The rule the document states admits exactly the secrets that decode to a usable key.
    #[test]
    fn the_secret_rule_is_what_decodes() {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for n in 0..=80usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let secret = format!("whsec_{}", STANDARD.encode(&bytes));
            assert_eq!(secret_key(&secret).is_some(), (16..=64).contains(&n));
            // Each character in the last data position: non-canonical trailing bits included.
            let last = secret.trim_end_matches('=').len() - 1;
            for c in alphabet {
                let mut variant = secret.clone().into_bytes();
                if last >= 6 {
                    variant[last] = *c;
                }
                let variant = String::from_utf8(variant).unwrap();
                assert_eq!(
                    check_secret(&variant).is_ok(),
                    secret_key(&variant).is_some(),
                    "{variant}"
                );
            }
        }
    }
}
