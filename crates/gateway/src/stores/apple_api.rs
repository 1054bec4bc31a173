//! The App Store Server API client: an ES256 bearer token per request (kid, iss, aud, bid), the base
//! URL per app and environment, and Apple's error and rate-limit rules. Apple's own libraries never
//! retry; the gateway does, because a purchase waits on the answer: 429 waits as `Retry-After` says,
//! 5xx and Apple's retryable codes back off with jitter, a bounded number of times.

use std::time::Duration;

use gateway_core::apple::AppleEnvironment;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::{
    model::App,
    service::{Kind, ServiceError, ServiceResult},
};

/// Apple's production and sandbox hosts.
pub const PRODUCTION_URL: &str = "https://api.storekit.apple.com";
pub const SANDBOX_URL: &str = "https://api.storekit-sandbox.apple.com";

/// Attempts per call: the first and three retries.
const ATTEMPTS: u32 = 4;
/// The longest wait between attempts: a client is waiting on the answer.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// One request's limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a bearer token is valid: Apple refuses more than an hour; five minutes is what its
/// libraries use.
const TOKEN_LIFETIME_SECS: u64 = 300;

/// Apple's error codes that mean "try again".
const RETRYABLE: [i64; 4] = [4_040_002, 4_040_004, 4_040_006, 5_000_001];

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
    exp: u64,
    aud: &'static str,
    bid: &'a str,
}

#[derive(Deserialize)]
struct AppleError {
    #[serde(rename = "errorCode")]
    error_code: Option<i64>,
    #[serde(rename = "errorMessage")]
    error_message: Option<String>,
}

#[derive(Deserialize)]
struct TransactionInfo {
    #[serde(rename = "signedTransactionInfo")]
    signed_transaction_info: String,
}

/// The client; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppStoreApi {
    http: reqwest::Client,
}

fn unavailable(message: impl Into<String>) -> ServiceError {
    ServiceError::new(Kind::Unavailable, "store_unavailable", message)
}

impl AppStoreApi {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// The HTTP client, shared with the other App Store calls (legacy receipts).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET /inApps/v1/transactions/{transactionId}`: the signed transaction, unverified.
    pub async fn transaction_info(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
    ) -> ServiceResult<String> {
        if transaction_id.is_empty() || !transaction_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ServiceError::bad_request(
                "invalid_transaction_id",
                "`transaction_id` is the digits of an App Store transaction id.",
            ));
        }
        let body = self
            .get(
                app,
                env,
                &format!("/inApps/v1/transactions/{transaction_id}"),
            )
            .await?;
        let info: TransactionInfo = serde_json::from_str(&body).map_err(|_| {
            unavailable(
                "The App Store Server API answered with something that is not a transaction.",
            )
        })?;
        Ok(info.signed_transaction_info)
    }

    fn base_url(app: &App, env: AppleEnvironment) -> ServiceResult<String> {
        let config = app
            .settings
            .app_store
            .as_ref()
            .ok_or_else(|| not_configured("This app has no `app_store` settings."))?;
        Ok(config.api_base_url.clone().unwrap_or_else(|| {
            match env {
                AppleEnvironment::Production => PRODUCTION_URL,
                AppleEnvironment::Sandbox => SANDBOX_URL,
            }
            .to_owned()
        }))
    }

    fn bearer(app: &App) -> ServiceResult<String> {
        let config = app
            .settings
            .app_store
            .as_ref()
            .ok_or_else(|| not_configured("This app has no `app_store` settings."))?;
        let (Some(issuer), Some(key_id), Some(pem)) =
            (&config.issuer_id, &config.key_id, &config.private_key_pem)
        else {
            return Err(not_configured(
                "The App Store Server API needs the app's `app_store.issuer_id`, `key_id` and `private_key_pem`.",
            ));
        };
        let key = EncodingKey::from_ec_pem(pem.expose().as_bytes()).map_err(|_| {
            not_configured("The app's `app_store.private_key_pem` is not an ES256 (.p8) key.")
        })?;
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key_id.clone());
        header.typ = Some("JWT".into());
        let claims = Claims {
            iss: issuer,
            iat,
            exp: iat + TOKEN_LIFETIME_SECS,
            aud: "appstoreconnect-v1",
            bid: &config.bundle_id,
        };
        jsonwebtoken::encode(&header, &claims, &key)
            .map_err(|_| not_configured("The App Store Server API token could not be signed."))
    }

    async fn get(&self, app: &App, env: AppleEnvironment, path: &str) -> ServiceResult<String> {
        let url = format!("{}{path}", Self::base_url(app, env)?.trim_end_matches('/'));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = Self::bearer(app)?;
            let sent = self
                .http
                .get(&url)
                .bearer_auth(token)
                .header("accept", "application/json")
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await;
            let res = match sent {
                Ok(r) => r,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "App Store Server API unreachable; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(_) => {
                    return Err(unavailable(
                        "The App Store Server API does not answer; try again later.",
                    ));
                }
            };
            let status = res.status();
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let text = res.text().await.unwrap_or_default();
            if status.is_success() {
                return Ok(text);
            }
            let apple: Option<AppleError> = serde_json::from_str(&text).ok();
            let code = apple.as_ref().and_then(|e| e.error_code);
            let retryable = status.as_u16() == 429
                || status.is_server_error()
                || code.is_some_and(|c| RETRYABLE.contains(&c));
            if retryable && attempt < ATTEMPTS {
                let wait = match (status.as_u16(), retry_after) {
                    (429, Some(after)) => retry_after_wait(after),
                    _ => backoff(attempt),
                };
                tracing::warn!(
                    status = status.as_u16(),
                    code,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "App Store Server API asked to retry"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let message = apple.and_then(|e| e.error_message).unwrap_or_default();
            return Err(match (status.as_u16(), code) {
                (401, _) => not_configured(
                    "Apple refused the app's App Store Server API credentials (issuer_id, key_id, private_key_pem, bundle_id).",
                ),
                (404, Some(4_040_010)) => ServiceError::not_found(
                    "transaction_not_found",
                    "The App Store knows no transaction with this id.",
                ),
                (429, _) => ServiceError::new(
                    Kind::Unavailable,
                    "store_rate_limited",
                    "The App Store Server API is rate-limiting this app; try again later.",
                ),
                (s, _) if s >= 500 || retryable => {
                    unavailable("The App Store Server API failed; try again later.")
                }
                (s, code) => ServiceError::new(
                    Kind::Unprocessable,
                    "store_refused",
                    format!(
                        "The App Store Server API refused the request ({s}, error {}): {message}",
                        code.unwrap_or_default()
                    ),
                ),
            });
        }
    }
}

fn not_configured(message: &str) -> ServiceError {
    ServiceError::conflict("store_not_configured", message)
}

/// Apple's `Retry-After` is the UNIX time in milliseconds when to try again; a small number is taken
/// as seconds, as HTTP means it. Capped at [`MAX_WAIT`].
fn retry_after_wait(after: u64) -> Duration {
    let wait = if after > 1_000_000_000_000 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Duration::from_millis(after.saturating_sub(now))
    } else {
        Duration::from_secs(after)
    };
    wait.min(MAX_WAIT)
}

/// 200 ms, 400 ms, 800 ms ... with about 20% jitter, capped at [`MAX_WAIT`].
fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.saturating_sub(1).min(8));
    let jitter = rand::random_range(0..=base / 5);
    Duration::from_millis(base + jitter).min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_apple_writes_it() {
        assert_eq!(retry_after_wait(2), Duration::from_secs(2));
        assert_eq!(retry_after_wait(60), MAX_WAIT);
        let soon = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 1_000;
        let wait = retry_after_wait(soon);
        assert!(
            wait <= Duration::from_millis(1_000) && wait >= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(backoff(1) >= Duration::from_millis(200) && backoff(10) <= MAX_WAIT);
    }
}
