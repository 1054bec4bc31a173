//! Customer JWTs: when an app sets `customer_auth.mode = "jwt"`, a publishable-key call acting for a
//! customer must also carry that customer's JWT (issued by the operator's own identity provider) in
//! `X-Customer-Token`; its `sub` must be the customer in the path, so one learner cannot read or buy
//! as another. Keys come from the app's JWKS URL, cached, and fetched again when an unknown `kid`
//! appears (key rotation), at most once per [`REFRESH_COOLDOWN`].
//!
//! A token must carry `exp` and `sub`, and `iss` and `aud` when the app names an issuer or an audience
//! (which they must then match). `exp`, `nbf` and `iat` are checked against the gateway's clock with
//! [`LEEWAY_SECS`] of slack: a token issued in the future is as suspect as one not valid yet.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use gateway_core::AppUserId;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header,
    jwk::{Jwk, JwkSet},
};
use serde::Deserialize;
use tokio::sync::RwLock;

use super::{Kind, ServiceError, ServiceResult};
use crate::model::{App, CustomerAuthMode};

/// How long a fetched key set is trusted before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);

/// The least time between two fetches of one key set, so a flood of tokens with made-up `kid`s cannot
/// turn the gateway into a load generator against the identity provider.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

/// How long a JWKS request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Slack on `exp`, `nbf` and `iat`, in seconds: the identity provider's clock and ours may differ by a
/// little, and a token should not be refused for that; more would stretch a stolen token's life.
pub const LEEWAY_SECS: u64 = 30;

struct Cached {
    keys: JwkSet,
    fetched: Instant,
}

/// Key sets by URL, shared by every request of the process.
pub struct JwksCache {
    http: reqwest::Client,
    sets: RwLock<HashMap<String, Cached>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwksCache")
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: f64,
    /// A NumericDate may have a fraction.
    #[serde(default)]
    iat: Option<f64>,
}

/// Why a token failed jsonwebtoken's checks, as the end of a sentence.
fn why(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "it has expired (`exp`)".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (`nbf`)".into(),
        ErrorKind::InvalidIssuer => "its issuer (`iss`) is not the one the app names".into(),
        ErrorKind::InvalidAudience => "its audience (`aud`) is not the one the app names".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no `{claim}` claim"),
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        _ => e.to_string(),
    }
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::new(Kind::Unauthorized, code, message)
}

impl JwksCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            sets: RwLock::new(HashMap::new()),
        }
    }

    async fn fetch(&self, url: &str) -> ServiceResult<JwkSet> {
        let res = self.http.get(url).timeout(FETCH_TIMEOUT).send().await;
        let set = match res {
            Ok(r) if r.status().is_success() => r.json::<JwkSet>().await.ok(),
            _ => None,
        };
        let Some(set) = set else {
            tracing::warn!(jwks_url = %url, "the customer JWKS could not be fetched");
            return Err(ServiceError::new(
                Kind::Unauthorized,
                "customer_token_unverifiable",
                "The customer token cannot be checked now: the app's JWKS URL does not answer with a key set.",
            ));
        };
        self.sets.write().await.insert(
            url.to_owned(),
            Cached {
                keys: set.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(set)
    }

    /// The key `kid` of the set at `url`, fetching when the set is stale or lacks it.
    async fn key(&self, url: &str, kid: Option<&str>) -> ServiceResult<Jwk> {
        let pick = |set: &JwkSet| -> Option<Jwk> {
            match kid {
                Some(kid) => set.find(kid).cloned(),
                None if set.keys.len() == 1 => set.keys.first().cloned(),
                None => None,
            }
        };
        let (cached, may_refresh) = {
            let sets = self.sets.read().await;
            match sets.get(url) {
                Some(c) if c.fetched.elapsed() < JWKS_TTL => {
                    (pick(&c.keys), c.fetched.elapsed() >= REFRESH_COOLDOWN)
                }
                _ => (None, true),
            }
        };
        if let Some(key) = cached {
            return Ok(key);
        }
        if !may_refresh {
            return Err(unauthorized(
                "invalid_customer_token",
                "The customer token names a key the app's JWKS does not have.",
            ));
        }
        let set = self.fetch(url).await?;
        pick(&set).ok_or_else(|| {
            unauthorized(
                "invalid_customer_token",
                "The customer token names a key the app's JWKS does not have.",
            )
        })
    }

    /// Checks that `token` is a valid JWT of the app's identity provider for `customer`; when the app
    /// asks for one, the token's expiry, which ends the reads it holds open.
    pub async fn verify(
        &self,
        app: &App,
        customer: &AppUserId,
        token: Option<&str>,
    ) -> ServiceResult<Option<SystemTime>> {
        let Some(auth) = app
            .settings
            .customer_auth
            .as_ref()
            .filter(|a| a.mode == CustomerAuthMode::Jwt)
        else {
            return Ok(None);
        };
        let Some(url) = auth.jwks_url.as_deref() else {
            return Err(unauthorized(
                "customer_token_unverifiable",
                "The app asks for customer JWTs but has no `jwks_url`.",
            ));
        };
        let token = token.ok_or_else(|| {
            unauthorized(
                "customer_token_required",
                "This app authenticates customers: send the customer's JWT as `X-Customer-Token`.",
            )
        })?;
        let bad = |why: &str| {
            unauthorized(
                "invalid_customer_token",
                format!("The customer token is not valid: {why}."),
            )
        };
        let header = decode_header(token).map_err(|_| bad("it is not a JWT"))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(bad("shared-secret algorithms are not accepted"));
        }
        let jwk = self.key(url, header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| bad("the JWKS key cannot verify it"))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss` and `aud` only when the token has them: a configured one is
        // required too, or a token minted for another audience without one would pass.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &auth.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &auth.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| bad(&why(&e)))?;
        // jsonwebtoken does not look at `iat`.
        let now = jsonwebtoken::get_current_timestamp();
        if data
            .claims
            .iat
            .is_some_and(|iat| iat > (now + LEEWAY_SECS) as f64)
        {
            return Err(bad("it was issued in the future (`iat`)"));
        }
        if data.claims.sub != customer.as_str() {
            return Err(ServiceError::forbidden(
                "customer_mismatch",
                "The customer token belongs to another customer.",
            ));
        }
        let expires = Duration::try_from_secs_f64(data.claims.exp)
            .map_err(|_| bad("its `exp` is not a time"))?;
        Ok(Some(SystemTime::UNIX_EPOCH + expires))
    }
}
