//! Callers. Every `/v1` call carries `Authorization: Bearer <key>`; [`Caller`] resolves it and answers
//! the permission questions handlers ask.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use gateway_core::AppId;

use super::{AppState, error::ApiError};
use crate::{
    model::{ApiKey, KeyKind, Scope},
    service::keys,
};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub ApiKey);

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Already authenticated by the idempotency layer.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("Send an API key as `Authorization: Bearer <key>`.")
        })?;
        let key = keys::authenticate(&state.cx.db, token, state.bootstrap_hash.as_deref())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::unauthorized("This API key is not valid or was revoked."))?;
        Ok(Caller(key))
    }
}

/// The header a customer's JWT travels in, next to the app's publishable key.
pub const CUSTOMER_TOKEN_HEADER: &str = "x-customer-token";

/// For a publishable key acting for `customer`: when the app authenticates customers with JWTs, the
/// request's customer token must be valid and be that customer's; its expiry, if so. Secret keys act
/// for any customer.
pub async fn customer_access(
    state: &AppState,
    caller: &Caller,
    app: &crate::model::App,
    customer: &gateway_core::AppUserId,
    headers: &axum::http::HeaderMap,
) -> Result<Option<std::time::SystemTime>, ApiError> {
    if caller.0.kind != KeyKind::Publishable {
        return Ok(None);
    }
    let token = headers
        .get(CUSTOMER_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    crate::service::customer_auth::verify(&state.jwks, app, customer, token)
        .await
        .map_err(ApiError::from)
}

impl Caller {
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Admin keys only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("This call needs an admin key."))
        }
    }

    /// An admin key, or a secret key of `app` holding one of `scopes`.
    pub fn require(&self, app: &AppId, scopes: &[Scope]) -> Result<(), ApiError> {
        if self.0.is_admin() {
            return Ok(());
        }
        self.same_app(app)?;
        if self.0.kind == KeyKind::Secret && self.0.scopes.iter().any(|s| scopes.contains(s)) {
            return Ok(());
        }
        let names: Vec<String> = scopes
            .iter()
            .map(|s| format!("{s:?}").to_lowercase())
            .collect();
        Err(ApiError::forbidden(format!(
            "This call needs a secret key with one of the scopes: {}.",
            names.join(", ")
        )))
    }

    /// Like [`Caller::require`], but a publishable key of `app` is enough too: the calls an app makes
    /// for the customer it is acting for.
    pub fn require_or_publishable(&self, app: &AppId, scopes: &[Scope]) -> Result<(), ApiError> {
        if self.0.kind == KeyKind::Publishable {
            return self.same_app(app);
        }
        self.require(app, scopes)
    }

    fn same_app(&self, app: &AppId) -> Result<(), ApiError> {
        if self.0.app_id.as_ref() == Some(app) {
            Ok(())
        } else {
            Err(ApiError::forbidden("This key belongs to another app."))
        }
    }
}
