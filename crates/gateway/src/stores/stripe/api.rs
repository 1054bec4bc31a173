//! The Stripe API client: customers, Checkout Sessions, the objects an event names, and the events
//! list the recovery job reads. Form-encoded bodies, the app's secret key as a bearer token, the
//! pinned `Stripe-Version`, an `Idempotency-Key` on every POST (Stripe replays the first answer to
//! a key); 429 and 5xx retried with back-off through the shared [`crate::stores::call`]; Stripe's
//! error envelope mapped to the adapter's errors.

use std::time::Duration;

use gateway_core::stripe::models::{API_VERSION, CheckoutSession, Event, List, Subscription};
use reqwest::Method;
use serde::{Deserialize, de::DeserializeOwned};

use crate::{
    backoff::{Backoff, Jitter},
    model::App,
    stores::{Problem, StoreError, StoreResult, call},
};

/// Stripe's host for the API.
pub const BASE_URL: &str = "https://api.stripe.com";

/// Three attempts, 500 ms and 1 s apart (up to 20% longer), at most 5 s: a client may be waiting.
const POLICY: call::Policy = call::Policy {
    service: "Stripe API",
    attempts: 3,
    backoff: Backoff {
        first: Duration::from_millis(500),
        doublings: 4,
        cap: Duration::from_secs(5),
        jitter: Jitter::Above,
    },
    timeout: Duration::from_secs(15),
};

/// The most events one page of the events list holds.
pub const EVENTS_PAGE: u32 = 100;

/// Stripe's error envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    error: StripeError,
}

#[derive(Debug, Deserialize)]
struct StripeError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<String>,
}

/// A customer (`cus_…`): only its id is read.
#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub id: String,
}

/// A form body: Stripe's bracketed keys, in order.
pub type Form = Vec<(String, String)>;

/// The client; cheap to share.
#[derive(Debug, Clone)]
pub struct StripeApi {
    http: reqwest::Client,
}

impl StripeApi {
    pub fn new(http: reqwest::Client) -> Self {
        StripeApi { http }
    }

    /// `POST /v1/customers`.
    pub async fn create_customer(&self, app: &App, form: Form, key: &str) -> StoreResult<Customer> {
        self.fetch(app, Method::POST, "/v1/customers", Some((form, key)))
            .await
    }

    /// `POST /v1/checkout/sessions`.
    pub async fn create_checkout_session(
        &self,
        app: &App,
        form: Form,
        key: &str,
    ) -> StoreResult<CheckoutSession> {
        self.fetch(
            app,
            Method::POST,
            "/v1/checkout/sessions",
            Some((form, key)),
        )
        .await
    }

    /// A `POST` that makes an object (`/v1/refunds`, say).
    pub async fn create<T: DeserializeOwned>(
        &self,
        app: &App,
        path: &str,
        form: Form,
        key: &str,
    ) -> StoreResult<T> {
        self.fetch(app, Method::POST, path, Some((form, key))).await
    }

    /// `DELETE /v1/subscriptions/{id}`: cancels a subscription now.
    pub async fn cancel_subscription(&self, app: &App, id: &str) -> StoreResult<Subscription> {
        self.fetch(
            app,
            Method::DELETE,
            &format!("/v1/subscriptions/{id}"),
            None,
        )
        .await
    }

    /// `GET` of an object by its API path (`/v1/payment_intents/pi_…`), as JSON.
    pub async fn object<T: DeserializeOwned>(&self, app: &App, path: &str) -> StoreResult<T> {
        if !path.starts_with("/v1/") || path.contains("..") {
            return Err(StoreError::new(
                Problem::Malformed,
                "malformed_notification",
                "The event names an object outside Stripe's v1 API.",
            ));
        }
        self.fetch(app, Method::GET, path, None).await
    }

    /// One page of `GET /v1/events`, newest first, created in `[start, end]` (Unix seconds),
    /// after `starting_after` when given.
    pub async fn events(
        &self,
        app: &App,
        (start, end): (i64, i64),
        starting_after: Option<&str>,
    ) -> StoreResult<List<Event>> {
        let mut path = format!(
            "/v1/events?limit={EVENTS_PAGE}&created%5Bgte%5D={start}&created%5Blte%5D={end}"
        );
        if let Some(after) = starting_after {
            path.push_str("&starting_after=");
            path.push_str(&urlencoding(after));
        }
        self.fetch(app, Method::GET, &path, None).await
    }

    async fn fetch<T: DeserializeOwned>(
        &self,
        app: &App,
        method: Method,
        path: &str,
        form: Option<(Form, &str)>,
    ) -> StoreResult<T> {
        let text = self.send(app, method, path, form).await?;
        serde_json::from_str(&text).map_err(|e| {
            tracing::warn!(error = %e, "Stripe API answer not understood");
            StoreError::unavailable(
                "The Stripe API answered with something the gateway cannot read.",
            )
        })
    }

    async fn send(
        &self,
        app: &App,
        method: Method,
        path: &str,
        form: Option<(Form, &str)>,
    ) -> StoreResult<String> {
        let config = app
            .settings
            .stripe
            .as_ref()
            .ok_or_else(|| StoreError::not_configured("This app has no `stripe` settings."))?;
        let secret = config.secret_key.as_ref().ok_or_else(|| {
            StoreError::not_configured("This app has no Stripe secret key (`stripe.secret_key`).")
        })?;
        let base = config.api_base_url.as_deref().unwrap_or(BASE_URL);
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let build = || {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(secret.expose())
                .header("stripe-version", API_VERSION)
                .header("accept", "application/json");
            if let Some((form, key)) = &form {
                request = request
                    .header("idempotency-key", *key)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(encode(form));
            }
            Ok(request)
        };
        let judge = |status: u16, _: &str, retry_after: Option<&str>| call::Verdict {
            // A 409 is a concurrent use of one idempotency key: worth another try.
            retryable: status == 429 || status == 409 || status >= 500,
            wait: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(POLICY.backoff.cap)),
        };
        let unreachable =
            || StoreError::unavailable("The Stripe API does not answer; try again later.");
        match call::send(&POLICY, build, judge, unreachable).await? {
            Ok(text) => Ok(text),
            Err(refused) => Err(refusal(app, &refused)),
        }
    }
}

/// A form body, keys and values percent-encoded.
fn encode(form: &Form) -> String {
    form.iter()
        .map(|(k, v)| format!("{}={}", urlencoding(k), urlencoding(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters.
fn urlencoding(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The error for a final non-2xx answer, from Stripe's envelope.
fn refusal(app: &App, refused: &call::Refusal) -> StoreError {
    let stripe = serde_json::from_str::<Envelope>(&refused.body)
        .ok()
        .map(|e| e.error);
    let message = stripe
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_default();
    let details = serde_json::json!({
        "http_status": refused.status,
        "stripe_type": stripe.as_ref().and_then(|e| e.kind.clone()),
        "stripe_code": stripe.as_ref().and_then(|e| e.code.clone()),
        "stripe_param": stripe.as_ref().and_then(|e| e.param.clone()),
        "stripe_message": message,
    });
    let error = match refused.status {
        401 => StoreError::new(
            Problem::NotConfigured,
            "store_credentials_refused",
            format!("App {}: Stripe refused the `stripe.secret_key`.", app.id),
        ),
        403 => StoreError::new(
            Problem::NotConfigured,
            "store_permission_denied",
            format!(
                "App {}: the Stripe key may not make this call (a restricted key lacks a permission).",
                app.id
            ),
        ),
        404 => StoreError::new(
            Problem::NotFound,
            "stripe_object_not_found",
            format!("Stripe knows no such object: {message}"),
        ),
        400 | 402 => StoreError::new(
            Problem::Refused,
            "store_refused",
            format!("Stripe refused the request: {message}"),
        ),
        s if s == 429 || s >= 500 || refused.retryable => {
            StoreError::unavailable("The Stripe API failed; try again later.")
        }
        s => StoreError::new(
            Problem::Refused,
            "store_refused",
            format!("The Stripe API refused the request ({s}): {message}"),
        ),
    };
    error.with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_encode_brackets_and_reserved_characters() {
        let form: Form = vec![
            ("metadata[app_user_id]".into(), "ada lovelace".into()),
            (
                "success_url".into(),
                "https://x.example/r?session_id={CHECKOUT_SESSION_ID}".into(),
            ),
        ];
        assert_eq!(
            encode(&form),
            "metadata%5Bapp_user_id%5D=ada%20lovelace&success_url=https%3A%2F%2Fx.example%2Fr%3Fsession_id%3D%7BCHECKOUT_SESSION_ID%7D"
        );
    }
}
