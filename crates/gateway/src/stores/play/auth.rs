//! Google's service-account OAuth (the JWT bearer grant): an assertion signed RS256 with the key file's
//! `private_key`, sent to the key file's own `token_uri`, traded for an access token that is reused
//! until shortly before it expires. A key Google refuses is the app's misconfiguration: the error
//! names the app and what to fix, never the key.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::{
    model::App,
    stores::{Problem, StoreError, StoreResult},
};

/// The scope of the Play Developer API.
pub const SCOPE: &str = "https://www.googleapis.com/auth/androidpublisher";
/// Google's token endpoint, when a key file names none.
pub const TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// How long an assertion is valid (Google allows an hour).
const ASSERTION_SECS: u64 = 3600;
/// A token is renewed this long before Google says it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(120);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The fields of a service-account key file the grant needs.
#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct Granted {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct Refused {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// Access tokens by key (its account, key id and token endpoint), reused until they near expiry.
#[derive(Debug, Default)]
pub struct Tokens {
    by_key: Mutex<HashMap<String, (String, Instant)>>,
}

fn not_configured(app: &App, what: &str) -> StoreError {
    StoreError::not_configured(format!(
        "App {}: the `play_store.service_account_json` {what}.",
        app.id
    ))
}

impl Tokens {
    /// An access token for the app's service account: cached, or granted now.
    pub async fn bearer(
        &self,
        http: &reqwest::Client,
        app: &App,
        now: gateway_core::Timestamp,
    ) -> StoreResult<String> {
        let config =
            app.settings.play_store.as_ref().ok_or_else(|| {
                StoreError::not_configured("This app has no `play_store` settings.")
            })?;
        let Some(secret) = &config.service_account_json else {
            return Err(not_configured(
                app,
                "is missing; the Play Developer API needs it",
            ));
        };
        let key: KeyFile = serde_json::from_str(secret.expose())
            .map_err(|_| not_configured(app, "is not a service account key file"))?;
        let token_uri = key.token_uri.as_deref().unwrap_or(TOKEN_URI);
        let cache_key = format!(
            "{}\u{1}{}\u{1}{token_uri}",
            key.client_email,
            key.private_key_id.as_deref().unwrap_or_default()
        );
        if let Some((token, until)) = self.lock().get(&cache_key)
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let assertion = assertion(app, &key, token_uri, now)?;
        let answer = http
            .post(token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|_| {
                StoreError::unavailable("Google's token endpoint does not answer; try again later.")
            })?;
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        if status.is_success() {
            let granted: Granted = serde_json::from_str(&body).map_err(|_| {
                StoreError::unavailable("Google's token endpoint answered with no access token.")
            })?;
            let lifetime = Duration::from_secs(granted.expires_in.unwrap_or(3600));
            let until = Instant::now() + lifetime.saturating_sub(RENEW_BEFORE);
            self.lock()
                .insert(cache_key, (granted.access_token.clone(), until));
            return Ok(granted.access_token);
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(StoreError::unavailable(
                "Google's token endpoint failed; try again later.",
            ));
        }
        let refused: Refused = serde_json::from_str(&body).unwrap_or(Refused {
            error: None,
            error_description: None,
        });
        // Google's description names the account, not the key; it is kept to the error's code.
        Err(StoreError::new(
            Problem::NotConfigured,
            "store_credentials_refused",
            format!(
                "App {}: Google refused the `play_store.service_account_json` key ({}); check that it is current and not revoked.",
                app.id,
                refused.error.as_deref().unwrap_or("refused")
            ),
        )
        .with_details(serde_json::json!({
            "http_status": status.as_u16(),
            "oauth_error": refused.error,
            "oauth_error_description": refused.error_description,
        })))
    }

    /// Forgets the app's token (the API refused it): the next call is granted a new one.
    pub fn forget(&self, app: &App) {
        let email = app
            .settings
            .play_store
            .as_ref()
            .and_then(|c| c.service_account_json.as_ref())
            .and_then(|s| serde_json::from_str::<KeyFile>(s.expose()).ok())
            .map(|k| k.client_email);
        if let Some(email) = email {
            self.lock()
                .retain(|k, _| !k.starts_with(&format!("{email}\u{1}")));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The signed assertion of the JWT bearer grant.
fn assertion(
    app: &App,
    key: &KeyFile,
    token_uri: &str,
    now: gateway_core::Timestamp,
) -> StoreResult<String> {
    let signing = EncodingKey::from_rsa_pem(key.private_key.as_bytes())
        .map_err(|_| not_configured(app, "holds a `private_key` that is not an RSA key"))?;
    let iat = u64::try_from(now.millis().div_euclid(1000)).unwrap_or_default();
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    header.kid = key.private_key_id.clone();
    let claims = Claims {
        iss: &key.client_email,
        scope: SCOPE,
        aud: token_uri,
        iat,
        exp: iat + ASSERTION_SECS,
    };
    jsonwebtoken::encode(&header, &claims, &signing)
        .map_err(|_| not_configured(app, "holds a key that cannot sign"))
}
