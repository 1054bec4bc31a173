//! The Play Developer API client (Android Publisher v3): the purchase reads, acknowledgements and
//! consumption, voided purchases, orders and refund reviews the gateway needs. A bearer token from
//! the app's service account ([`super::auth`]); 429 and 5xx retried with back-off through the shared
//! [`crate::stores::call`]; a token Google refuses is renewed once; Google's error envelope mapped to
//! the adapter's errors. Nothing here calls what Google shuts down in 2027
//! (`purchases.subscriptions.get`, `latestOrderId`).

use std::time::Duration;

use gateway_core::play::models::{
    ProductPurchase, ProductPurchaseV2, SubscriptionPurchaseV2, VoidedPurchasesList,
};
use reqwest::Method;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::auth::Tokens;
use crate::{
    backoff::{Backoff, Jitter},
    model::App,
    stores::{Problem, StoreError, StoreResult, call},
};

/// Google's host for the API.
pub const BASE_URL: &str = "https://androidpublisher.googleapis.com";

/// Four attempts, 250 ms, 500 ms, 1 s apart (up to 20% longer), at most 5 s: a client may be waiting.
const POLICY: call::Policy = call::Policy {
    service: "Play Developer API",
    attempts: 4,
    backoff: Backoff {
        first: Duration::from_millis(250),
        doublings: 8,
        cap: Duration::from_secs(5),
        jitter: Jitter::Above,
    },
    timeout: Duration::from_secs(10),
};

/// The most voided purchases one page holds.
pub const VOIDED_PAGE: u32 = 1000;

/// Google's error envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    error: GoogleError,
}

#[derive(Debug, Deserialize)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    errors: Vec<Reason>,
}

#[derive(Debug, Deserialize)]
struct Reason {
    #[serde(default)]
    reason: Option<String>,
}

/// An order (`orders.get`): only what the gateway reads of it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[serde(default)]
    pub order_id: String,
    #[serde(default)]
    pub purchase_token: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
}

/// `orders.reviewrefund`'s body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRefund {
    pub pending_refund_token: String,
    pub sample_content_provided: bool,
    /// `DECLINE`, `APPROVE` or `NEUTRAL`.
    pub refund_preference: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumption_percentage_milliunits: Option<u32>,
}

/// What a subscription read found.
#[derive(Debug, Clone)]
pub enum Subscription {
    Found(Box<SubscriptionPurchaseV2>),
    /// HTTP 410: Play no longer answers for this token (expired long ago).
    Gone,
}

/// The client; cheap to share.
pub struct PlayApi {
    http: reqwest::Client,
    tokens: Tokens,
    /// The time the service account's assertions state.
    clock: std::sync::Arc<dyn gateway_core::Clock>,
}

impl std::fmt::Debug for PlayApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayApi").finish_non_exhaustive()
    }
}

impl PlayApi {
    pub fn new(http: reqwest::Client, clock: std::sync::Arc<dyn gateway_core::Clock>) -> Self {
        PlayApi {
            http,
            tokens: Tokens::default(),
            clock,
        }
    }

    /// `purchases.productsv2.getproductpurchasev2`.
    pub async fn product(&self, app: &App, token: &str) -> StoreResult<ProductPurchaseV2> {
        let path = format!("purchases/productsv2/tokens/{token}");
        self.fetch(app, Method::GET, &path, &[], None).await
    }

    /// `purchases.products.get` (v1), for a product id at hand.
    pub async fn product_v1(
        &self,
        app: &App,
        product_id: &str,
        token: &str,
    ) -> StoreResult<ProductPurchase> {
        let path = format!("purchases/products/{product_id}/tokens/{token}");
        self.fetch(app, Method::GET, &path, &[], None).await
    }

    /// `purchases.subscriptionsv2.get`.
    pub async fn subscription(&self, app: &App, token: &str) -> StoreResult<Subscription> {
        let path = format!("purchases/subscriptionsv2/tokens/{token}");
        match self.send(app, Method::GET, &path, &[], None).await {
            Ok(body) => {
                parse(&body, "a subscription purchase").map(|s| Subscription::Found(Box::new(s)))
            }
            Err(e) if e.code == "purchase_gone" => Ok(Subscription::Gone),
            Err(e) => Err(e),
        }
    }

    /// `purchases.products.acknowledge`.
    pub async fn acknowledge_product(
        &self,
        app: &App,
        product_id: &str,
        token: &str,
    ) -> StoreResult<()> {
        let path = format!("purchases/products/{product_id}/tokens/{token}:acknowledge");
        self.send(app, Method::POST, &path, &[], Some(serde_json::json!({})))
            .await
            .map(drop)
    }

    /// `purchases.products.consume`.
    pub async fn consume(&self, app: &App, product_id: &str, token: &str) -> StoreResult<()> {
        let path = format!("purchases/products/{product_id}/tokens/{token}:consume");
        self.send(app, Method::POST, &path, &[], None)
            .await
            .map(drop)
    }

    /// `purchases.subscriptions.acknowledge`, naming the customer's obfuscated account when the
    /// purchase was made outside the app.
    pub async fn acknowledge_subscription(
        &self,
        app: &App,
        subscription_id: &str,
        token: &str,
        external_account: Option<&str>,
    ) -> StoreResult<()> {
        let path = format!("purchases/subscriptions/{subscription_id}/tokens/{token}:acknowledge");
        let body = match external_account {
            Some(id) => serde_json::json!({"externalAccountIds": {"obfuscatedAccountId": id}}),
            None => serde_json::json!({}),
        };
        self.send(app, Method::POST, &path, &[], Some(body))
            .await
            .map(drop)
    }

    /// One page of `purchases.voidedpurchases.list`, subscriptions and quantity-based partial refunds
    /// included, voided (recorded) from `start_ms` to `end_ms`; `page` continues a listing.
    pub async fn voided(
        &self,
        app: &App,
        (start_ms, end_ms): (i64, i64),
        page: Option<&str>,
    ) -> StoreResult<VoidedPurchasesList> {
        let mut query = vec![
            ("type", "1".to_owned()),
            ("maxResults", VOIDED_PAGE.to_string()),
            ("includeQuantityBasedPartialRefund", "true".to_owned()),
        ];
        match page {
            Some(token) => query.push(("token", token.to_owned())),
            None => {
                query.push(("startTime", start_ms.to_string()));
                query.push(("endTime", end_ms.to_string()));
            }
        }
        self.fetch(app, Method::GET, "purchases/voidedpurchases", &query, None)
            .await
    }

    /// `purchases.subscriptionsv2.revoke`: the subscription ends now, refunded in full or pro rata
    /// (what is left of the paid period).
    pub async fn revoke_subscription(
        &self,
        app: &App,
        token: &str,
        prorated: bool,
    ) -> StoreResult<()> {
        let path = format!("purchases/subscriptionsv2/tokens/{token}:revoke");
        let refund = if prorated {
            "proratedRefund"
        } else {
            "fullRefund"
        };
        let body = serde_json::json!({"revocationContext": {refund: {}}});
        self.send(app, Method::POST, &path, &[], Some(body))
            .await
            .map(drop)
    }

    /// `orders.refund` with `revoke=true`: the order is refunded and its purchase voided.
    pub async fn refund_order(&self, app: &App, order_id: &str) -> StoreResult<()> {
        let path = format!("orders/{order_id}:refund");
        let query = [("revoke", "true".to_owned())];
        self.send(app, Method::POST, &path, &query, None)
            .await
            .map(drop)
    }

    /// `orders.get`.
    pub async fn order(&self, app: &App, order_id: &str) -> StoreResult<Order> {
        let path = format!("orders/{order_id}");
        self.fetch(app, Method::GET, &path, &[], None).await
    }

    /// `orders.reviewrefund`: the answer to a refund review.
    pub async fn review_refund(
        &self,
        app: &App,
        order_id: &str,
        review: &ReviewRefund,
    ) -> StoreResult<()> {
        let path = format!("orders/{order_id}:reviewrefund");
        let body = serde_json::to_value(review).unwrap_or_default();
        self.send(app, Method::POST, &path, &[], Some(body))
            .await
            .map(drop)
    }

    async fn fetch<T: DeserializeOwned>(
        &self,
        app: &App,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<serde_json::Value>,
    ) -> StoreResult<T> {
        let text = self.send(app, method, path, query, body).await?;
        parse(&text, "what the call returns")
    }

    /// Sends a call under the app's package, retried as the module says, with one renewal of a
    /// bearer token Google refuses; returns the body of a 2xx answer.
    async fn send(
        &self,
        app: &App,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<serde_json::Value>,
    ) -> StoreResult<String> {
        let config =
            app.settings.play_store.as_ref().ok_or_else(|| {
                StoreError::not_configured("This app has no `play_store` settings.")
            })?;
        let base = config.api_base_url.as_deref().unwrap_or(BASE_URL);
        let url = format!(
            "{}/androidpublisher/v3/applications/{}/{path}",
            base.trim_end_matches('/'),
            config.package_name
        );
        let mut renewed = false;
        loop {
            let now = self.clock.now();
            let bearer = self.tokens.bearer(&self.http, app, now).await?;
            let build = || {
                let mut request = self
                    .http
                    .request(method.clone(), &url)
                    .bearer_auth(&bearer)
                    .header("accept", "application/json");
                if !query.is_empty() {
                    request = request.query(query);
                }
                if let Some(body) = &body {
                    request = request.json(body);
                }
                Ok(request)
            };
            let judge = |status: u16, _: &str, retry_after: Option<&str>| call::Verdict {
                retryable: status == 429 || status >= 500,
                wait: retry_after
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s).min(POLICY.backoff.cap)),
            };
            let unreachable = || {
                StoreError::unavailable("The Play Developer API does not answer; try again later.")
            };
            match call::send(&POLICY, build, judge, unreachable).await? {
                Ok(text) => return Ok(text),
                Err(refused) if refused.status == 401 && !renewed => {
                    self.tokens.forget(app);
                    renewed = true;
                }
                Err(refused) => return Err(refusal(app, &refused)),
            }
        }
    }
}

fn parse<T: DeserializeOwned>(text: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| {
        tracing::warn!(error = %e, "Play Developer API answer not understood");
        StoreError::unavailable(format!(
            "The Play Developer API answered with something that is not {what}."
        ))
    })
}

/// The error for a final non-2xx answer, from Google's envelope.
fn refusal(app: &App, refused: &call::Refusal) -> StoreError {
    let google = serde_json::from_str::<Envelope>(&refused.body)
        .ok()
        .map(|e| e.error);
    let status_name = google.as_ref().and_then(|g| g.status.clone());
    let reason = google
        .as_ref()
        .and_then(|g| g.errors.first())
        .and_then(|r| r.reason.clone());
    let message = google.map(|g| g.message).unwrap_or_default();
    let details = serde_json::json!({
        "http_status": refused.status,
        "google_status": status_name,
        "google_reason": reason,
        "google_message": message,
    });
    let precondition = status_name.as_deref() == Some("FAILED_PRECONDITION");
    let error = match refused.status {
        400 if precondition => StoreError::new(
            Problem::Conflict,
            "invalid_purchase_state",
            format!("Google Play refused the call in the purchase's state: {message}"),
        ),
        401 => StoreError::new(
            Problem::NotConfigured,
            "store_credentials_refused",
            format!(
                "App {}: Google refused the access token of the `play_store.service_account_json` key.",
                app.id
            ),
        ),
        403 => StoreError::new(
            Problem::NotConfigured,
            "store_permission_denied",
            format!(
                "App {}: the service account may not use the Play Developer API for this package; grant it access in Play Console.",
                app.id
            ),
        ),
        400 | 404 => StoreError::new(
            Problem::NotFound,
            "purchase_token_not_found",
            "Google Play knows no purchase of this app with this token.",
        ),
        410 => StoreError::new(
            Problem::NotFound,
            "purchase_gone",
            "Google Play no longer answers for this purchase token (it ended long ago).",
        ),
        429 => StoreError::new(
            Problem::Unavailable,
            "store_rate_limited",
            "The Play Developer API is rate-limiting this app; try again later.",
        ),
        s if s >= 500 || refused.retryable => {
            StoreError::unavailable("The Play Developer API failed; try again later.")
        }
        s => StoreError::new(
            Problem::Refused,
            "store_refused",
            format!("The Play Developer API refused the request ({s}): {message}"),
        ),
    };
    error.with_details(details)
}
