//! Customer JWTs: when an app sets `customer_auth.mode = "jwt"`, a publishable-key call acting for a
//! customer must also carry that customer's JWT (issued by the operator's own identity provider) in
//! `X-Customer-Token`; its `sub` must be the customer in the path, so one learner cannot read or buy
//! as another. Keys come from the app's JWKS URL, cached, and fetched again when an unknown `kid`
//! appears (key rotation), at most once per [`REFRESH_COOLDOWN`].
//!
//! A token must carry `exp` and `sub`, and `iss` and `aud` when the app names an issuer or an audience
//! (which they must then match). `exp`, `nbf` and `iat` are checked against the gateway's clock with
//! [`LEEWAY_SECS`] of slack: a token issued in the future is as suspect as one not valid yet.

use std::time::{Duration, SystemTime};

use gateway_core::AppUserId;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::Jwk};
use serde::Deserialize;

use super::{Kind, ServiceError, ServiceResult};
use crate::{
    jwks::Missing,
    model::{App, CustomerAuthMode},
};

pub use crate::jwks::{JwksCache, REFRESH_COOLDOWN};

/// Slack on `exp`, `nbf` and `iat`, in seconds: the identity provider's clock and ours may differ by a
/// little, and a token should not be refused for that; more would stretch a stolen token's life.
pub const LEEWAY_SECS: u64 = 30;

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

/// The key `kid` of the app's key set, or why the token cannot be checked.
async fn key(cache: &JwksCache, url: &str, kid: Option<&str>) -> ServiceResult<Jwk> {
    cache.key(url, kid).await.map_err(|missing| match missing {
        Missing::Unreachable => ServiceError::new(
            Kind::Unauthorized,
            "customer_token_unverifiable",
            "The customer token cannot be checked now: the app's JWKS URL does not answer with a key set.",
        ),
        Missing::UnknownKey => unauthorized(
            "invalid_customer_token",
            "The customer token names a key the app's JWKS does not have.",
        ),
    })
}

/// Checks that `token` is a valid JWT of the app's identity provider for `customer`; when the app
/// asks for one, the token's expiry, which ends the reads it holds open.
pub async fn verify(
    cache: &JwksCache,
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
    let jwk = key(cache, url, header.kid.as_deref()).await?;
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
    let expires =
        Duration::try_from_secs_f64(data.claims.exp).map_err(|_| bad("its `exp` is not a time"))?;
    Ok(Some(SystemTime::UNIX_EPOCH + expires))
}
