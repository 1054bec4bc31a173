//! The Pub/Sub push sender: each RTDN becomes a `DeveloperNotification` (store-formats G5), base64
//! in a Pub/Sub push request, POSTed to the package's push endpoint (store-formats G6):
//!
//! ```json
//! {"message": {"data": "<base64 DeveloperNotification>", "messageId": "…", "message_id": "…",
//!              "publishTime": "…", "publish_time": "…"},
//!  "subscription": "projects/<p>/subscriptions/<s>"}
//! ```
//!
//! A push is authenticated per the package's [`PushSettings`]: `Authorization: Bearer <OIDC JWT>`
//! signed RS256 by the simulator's own "Google" key (whose public half it serves as a JWKS at
//! `GET /oauth2/v3/certs`, the path of `https://www.googleapis.com/oauth2/v3/certs`), or a
//! `?token=` on the URL. Tests forge what an attacker or a misconfiguration would send
//! ([`Forge`]). Every send is recorded ([`Delivery`]); Pub/Sub counts 102, 200, 201, 202 and 204 as
//! an acknowledgement. A push can be re-sent with the same `messageId`, and changes can be left
//! unpushed ([`PushMode::Skip`]) so that only a poller finds them.
//!
//! This file holds the settings, the signing and the sending; `http.rs` serves the JWKS.

mod http;

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{PlayError, PlaySim, auth::RsaKey, lock, random_below, rfc3339};

/// How long Pub/Sub waits for the endpoint before it counts the push as failed (its default ack
/// deadline).
const ACK_DEADLINE: Duration = Duration::from_secs(10);
/// How long the OIDC tokens on pushes live, as Google's do.
const OIDC_SECONDS: i64 = 3600;
/// The issuer of Google-signed OIDC tokens.
const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The subscription name pushes carry when the settings name none.
pub(in crate::play) const DEFAULT_SUBSCRIPTION: &str = "projects/play-sim/subscriptions/play-rtdn";
/// The statuses Pub/Sub takes as an acknowledgement.
const ACK_STATUSES: [u16; 5] = [102, 200, 201, 202, 204];

/// How pushes to a package are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAuth {
    /// No authentication.
    None,
    /// A Google-signed OIDC token for `service_account_email`, with `audience` as its `aud`.
    Oidc {
        audience: String,
        service_account_email: String,
    },
    /// `?token=<token>` appended to the endpoint URL.
    Token(String),
}

/// A package's Pub/Sub push subscription for RTDNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSettings {
    /// Where pushes go, e.g. the gateway's `.../v1/apps/{app}/notifications/play_store`.
    pub endpoint: String,
    pub auth: PushAuth,
    /// The subscription's full name, `projects/<project>/subscriptions/<name>`.
    pub subscription: String,
}

impl PushSettings {
    /// Pushes with an OIDC token for `service_account_email`, its audience the endpoint URL
    /// (Pub/Sub's default).
    pub fn oidc(endpoint: &str, service_account_email: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            auth: PushAuth::Oidc {
                audience: endpoint.to_owned(),
                service_account_email: service_account_email.to_owned(),
            },
            subscription: DEFAULT_SUBSCRIPTION.into(),
        }
    }

    /// Pushes with `?token=<token>` on the URL.
    pub fn token(endpoint: &str, token: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            auth: PushAuth::Token(token.to_owned()),
            subscription: DEFAULT_SUBSCRIPTION.into(),
        }
    }

    /// The same settings with another OIDC audience.
    pub fn with_audience(mut self, audience: &str) -> Self {
        if let PushAuth::Oidc {
            audience: ref mut a,
            ..
        } = self.auth
        {
            *a = audience.to_owned();
        }
        self
    }

    /// The same settings with another subscription name.
    pub fn with_subscription(mut self, subscription: &str) -> Self {
        subscription.clone_into(&mut self.subscription);
        self
    }
}

/// Something wrong with a push's authentication, to test that the receiver refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forge {
    /// Signed by a key that is not in the JWKS (with the real key's `kid`).
    OtherKey,
    /// Another `aud`.
    Audience(String),
    /// Another `email`.
    Email(String),
    /// `email_verified: false`.
    EmailUnverified,
    /// Another `iss`.
    Issuer(String),
    /// Expired an hour ago.
    Expired,
    /// No `Authorization` header and no `?token=`.
    NoAuth,
    /// `?token=<this>` instead of the configured token.
    WrongToken(String),
}

/// Whether and how a change is pushed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PushMode {
    /// Pushed as Pub/Sub would.
    #[default]
    Send,
    /// Not pushed: a poller must find the change.
    Skip,
    /// Pushed with forged authentication.
    Forge(Forge),
}

/// One push the simulator sent.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub message_id: String,
    pub package: String,
    /// The URL POSTed to (with `?token=` when the settings say so).
    pub url: String,
    /// The HTTP status the endpoint answered; `None` when it did not answer in time.
    pub status: Option<u16>,
    /// Whether Pub/Sub would count the answer as an acknowledgement (102, 200, 201, 202, 204).
    pub acked: bool,
    /// The endpoint's answer body, or the transport error.
    pub answer: Option<String>,
    /// The push request body.
    pub body: Value,
    /// The DeveloperNotification inside it, decoded.
    pub notification: Value,
    /// The `Authorization` header sent, if any.
    pub authorization: Option<String>,
    /// When it was sent, by the simulator's clock.
    pub at_ms: i64,
}

/// What a Real-time developer notification says (one of the DeveloperNotification members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::play) enum Rtdn {
    Subscription {
        notification_type: u8,
        token: String,
    },
    OneTime {
        notification_type: u8,
        token: String,
        sku: String,
    },
    Voided {
        token: String,
        order_id: String,
        /// 1 subscription, 2 one-time.
        product_type: u8,
        /// 1 full, 2 quantity-based partial.
        refund_type: u8,
    },
    RefundReview {
        pending_refund_token: String,
        order_id: String,
        account_id: Option<String>,
        profile_id: Option<String>,
    },
    Test,
}

/// `CHARGEBACK`, the only refund reason pending reviews have, as the RTDN's integer. The field
/// list comes from public implementations (store-deltas G-3, medium confidence); the integer is
/// the position of CHARGEBACK in the Orders API's RefundEvent.refundReason enum.
const REFUND_REASON_CHARGEBACK: u8 = 2;

impl Rtdn {
    /// The DeveloperNotification JSON.
    pub(in crate::play) fn notification(&self, package: &str, now: i64) -> Value {
        let mut n = Map::new();
        n.insert("version".into(), "1.0".into());
        n.insert("packageName".into(), package.into());
        n.insert("eventTimeMillis".into(), now.to_string().into());
        let (key, member) = match self {
            Self::Subscription {
                notification_type,
                token,
            } => (
                "subscriptionNotification",
                json!({"version": "1.0", "notificationType": notification_type, "purchaseToken": token}),
            ),
            Self::OneTime {
                notification_type,
                token,
                sku,
            } => (
                "oneTimeProductNotification",
                json!({"version": "1.0", "notificationType": notification_type, "purchaseToken": token, "sku": sku}),
            ),
            Self::Voided {
                token,
                order_id,
                product_type,
                refund_type,
            } => (
                "voidedPurchaseNotification",
                json!({"purchaseToken": token, "orderId": order_id, "productType": product_type, "refundType": refund_type}),
            ),
            Self::RefundReview {
                pending_refund_token,
                order_id,
                account_id,
                profile_id,
            } => {
                let mut m = json!({"version": "1.0", "pendingRefundToken": pending_refund_token,
                    "orderId": order_id, "refundReason": REFUND_REASON_CHARGEBACK});
                if let Some(a) = account_id {
                    m["obfuscatedAccountId"] = a.clone().into();
                }
                if let Some(p) = profile_id {
                    m["obfuscatedProfileId"] = p.clone().into();
                }
                ("pendingRefundReviewNotification", m)
            }
            Self::Test => ("testNotification", json!({"version": "1.0"})),
        };
        n.insert(key.into(), member);
        Value::Object(n)
    }
}

/// The push sender's state.
pub(in crate::play) struct Pushes {
    /// The simulator's "Google" key, which signs the OIDC tokens and is served as the JWKS.
    google: RsaKey,
    /// The same key's certificate, as `oauth2/v1/certs` serves it.
    google_cert: String,
    google_kid: String,
    /// A key Google does not have, for [`Forge::OtherKey`]; made on first use.
    other: Mutex<Option<RsaKey>>,
    default_mode: Mutex<PushMode>,
    deliveries: Mutex<Vec<Delivery>>,
    next_message: AtomicU64,
    http: reqwest::Client,
}

/// A 21-digit numeric id for a service account (`sub`, `azp`), stable for its email.
fn numeric_id(email: &str) -> String {
    let hash = email.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!(
        "1{:020}",
        u128::from(hash) * 1000 % 100_000_000_000_000_000_000
    )
}

impl Pushes {
    pub(in crate::play) fn new() -> Result<Self, PlayError> {
        let google = RsaKey::generate()?;
        let google_cert = google.certificate_pem("securetoken.system.gserviceaccount.com", 14)?;
        Ok(Self {
            google,
            google_cert,
            google_kid: super::auth::hex_id(20),
            other: Mutex::new(None),
            default_mode: Mutex::new(PushMode::Send),
            deliveries: Mutex::new(Vec::new()),
            next_message: AtomicU64::new(
                10_000_000_000_000_000 + random_below(1_000_000_000_000_000),
            ),
            http: reqwest::Client::new(),
        })
    }

    /// Signs `claims` with the "Google" key, or with another key for [`Forge::OtherKey`].
    fn sign(&self, claims: &Value, other_key: bool) -> Result<String, PlayError> {
        if !other_key {
            return self.google.sign(&self.google_kid, claims);
        }
        let mut other = lock(&self.other);
        if other.is_none() {
            *other = Some(RsaKey::generate()?);
        }
        match other.as_ref() {
            Some(key) => key.sign(&self.google_kid, claims),
            None => Err(PlayError::Key("no forging key".into())),
        }
    }

    /// The OIDC token Pub/Sub puts on a push, forged as asked.
    fn oidc(
        &self,
        audience: &str,
        email: &str,
        forge: Option<&Forge>,
        now_ms: i64,
    ) -> Result<String, PlayError> {
        let id = numeric_id(email);
        let mut iat = now_ms.div_euclid(1000);
        if forge == Some(&Forge::Expired) {
            iat -= 2 * OIDC_SECONDS;
        }
        let mut claims = json!({"aud": audience, "azp": id, "email": email, "email_verified": true,
            "exp": iat + OIDC_SECONDS, "iat": iat, "iss": GOOGLE_ISSUER, "sub": id});
        match forge {
            Some(Forge::Audience(a)) => claims["aud"] = a.clone().into(),
            Some(Forge::Email(e)) => claims["email"] = e.clone().into(),
            Some(Forge::EmailUnverified) => claims["email_verified"] = false.into(),
            Some(Forge::Issuer(i)) => claims["iss"] = i.clone().into(),
            _ => {}
        }
        self.sign(&claims, forge == Some(&Forge::OtherKey))
    }
}

impl PlaySim {
    /// Whether changes are pushed (and how) when an action does not say: [`PushMode::Skip`] stops
    /// all pushes until set back to [`PushMode::Send`].
    pub fn set_push_mode(&self, mode: PushMode) {
        *lock(&self.push.default_mode) = mode;
    }

    pub(in crate::play) fn push_mode(&self) -> PushMode {
        lock(&self.push.default_mode).clone()
    }

    /// Every push sent so far, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.push.deliveries).clone()
    }

    /// The decoded DeveloperNotifications pushed so far, oldest first (re-sends included).
    pub fn pushed_notifications(&self) -> Vec<Value> {
        self.deliveries()
            .into_iter()
            .map(|d| d.notification)
            .collect()
    }

    /// The "Google" JWKS (`GET /oauth2/v3/certs`): the key that signs push OIDC tokens.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.push.google.jwk(&self.push.google_kid)]})
    }

    /// The "Google" keys as X.509 certificates by `kid`, as `oauth2/v1/certs` lists them.
    pub fn certificates(&self) -> Value {
        json!({ self.push.google_kid.clone(): self.push.google_cert })
    }

    /// The `kid` of the "Google" key.
    pub fn google_key_id(&self) -> &str {
        &self.push.google_kid
    }

    /// An OIDC token as Pub/Sub signs it for a push to `audience` as `email`, now; forged as
    /// asked ([`Forge::NoAuth`] and [`Forge::WrongToken`] do not apply to tokens and are ignored).
    pub fn push_token(
        &self,
        audience: &str,
        email: &str,
        forge: Option<&Forge>,
    ) -> Result<String, PlayError> {
        self.push.oidc(audience, email, forge, self.now())
    }

    /// Pushes a DeveloperNotification for `package` as `mode` says: `Ok(None)` when skipped or
    /// when the package has no push settings.
    pub(in crate::play) async fn push(
        &self,
        package: &str,
        notification: &Value,
        mode: &PushMode,
    ) -> Result<Option<Delivery>, PlayError> {
        if *mode == PushMode::Skip {
            return Ok(None);
        }
        let Some(settings) = self.push_settings(package) else {
            return Ok(None);
        };
        let message_id = self
            .push
            .next_message
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let now = self.now();
        let data = STANDARD.encode(notification.to_string());
        let body = json!({
            "message": {"data": data, "messageId": message_id, "message_id": message_id,
                "publishTime": rfc3339(now), "publish_time": rfc3339(now)},
            "subscription": settings.subscription,
        });
        self.deliver(package, &settings, body, notification.clone(), mode)
            .await
            .map(Some)
    }

    /// Sends an already-pushed message again, with the same `messageId` and body and fresh
    /// authentication, as Pub/Sub redelivers.
    pub async fn resend(&self, message_id: &str) -> Result<Delivery, PlayError> {
        self.resend_with(message_id, PushMode::Send).await
    }

    /// [`PlaySim::resend`] with forged authentication.
    pub async fn resend_with(
        &self,
        message_id: &str,
        mode: PushMode,
    ) -> Result<Delivery, PlayError> {
        let original = self
            .deliveries()
            .into_iter()
            .find(|d| d.message_id == message_id)
            .ok_or_else(|| PlayError::UnknownMessage(message_id.to_owned()))?;
        let settings = self
            .push_settings(&original.package)
            .ok_or_else(|| PlayError::NoPushSettings(original.package.clone()))?;
        let mode = if mode == PushMode::Skip {
            PushMode::Send
        } else {
            mode
        };
        self.deliver(
            &original.package,
            &settings,
            original.body,
            original.notification,
            &mode,
        )
        .await
    }

    /// POSTs a push request body with the authentication the settings and `mode` call for, and
    /// records how it went.
    async fn deliver(
        &self,
        package: &str,
        settings: &PushSettings,
        body: Value,
        notification: Value,
        mode: &PushMode,
    ) -> Result<Delivery, PlayError> {
        let forge = match mode {
            PushMode::Forge(f) => Some(f),
            _ => None,
        };
        let mut url = settings.endpoint.clone();
        let mut authorization = None;
        let query_token = match (&settings.auth, forge) {
            (_, Some(Forge::NoAuth)) => None,
            (_, Some(Forge::WrongToken(t))) => Some(t.clone()),
            (PushAuth::Token(t), _) => Some(t.clone()),
            (
                PushAuth::Oidc {
                    audience,
                    service_account_email,
                },
                _,
            ) => {
                let token = self
                    .push
                    .oidc(audience, service_account_email, forge, self.now())?;
                authorization = Some(format!("Bearer {token}"));
                None
            }
            (PushAuth::None, _) => None,
        };
        if let Some(t) = query_token {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("token=");
            url.push_str(&percent_encode(&t));
        }
        let mut request = self
            .push
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)",
            )
            .body(body.to_string())
            .timeout(ACK_DEADLINE);
        if let Some(a) = &authorization {
            request = request.header("authorization", a);
        }
        let (status, answer) = match request.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                (Some(status), res.text().await.ok())
            }
            Err(e) => (None, Some(e.to_string())),
        };
        let delivery = Delivery {
            message_id: body["message"]["messageId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            package: package.to_owned(),
            url,
            status,
            acked: status.is_some_and(|s| ACK_STATUSES.contains(&s)),
            answer,
            body,
            notification,
            authorization,
            at_ms: self.now(),
        };
        lock(&self.push.deliveries).push(delivery.clone());
        Ok(delivery)
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
