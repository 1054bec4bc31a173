//! `Idempotency-Key` on writes: the first answer to a request is kept under (caller, key) and replayed
//! to every repeat; a repeat with another body is refused; a key whose first request is still running
//! is refused until it finishes. Answers of the gateway's own failures (5xx) are not kept, so a retry
//! runs again.

use std::{collections::HashSet, sync::Arc};

use axum::{
    body::{Body, to_bytes},
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use gateway_core::text::IDEMPOTENCY_KEY;

use super::{
    AppState,
    auth::{Caller, bearer},
    error::{ApiError, too_large},
};
use crate::{
    db::idempotency::{self, Claim},
    service::keys::{self, hash_key},
};

/// The largest body kept; the request limit is the same.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The writes the API serves, as (method, route template): only those take an `Idempotency-Key`, so
/// a method or path no route takes is answered 405 or 404, never a replay or a key conflict.
#[derive(Debug, Default)]
pub struct Writes(HashSet<(Method, String)>);

impl Writes {
    /// The writes of the OpenAPI document (whose path templates are the router's).
    pub fn of(doc: &serde_json::Value) -> Self {
        let mut writes = HashSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                if let Ok(m) = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    && matches!(
                        m,
                        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
                    )
                {
                    writes.insert((m, path.clone()));
                }
            }
        }
        Self(writes)
    }
}

pub async fn layer(
    State((state, writes)): State<(AppState, Arc<Writes>)>,
    req: Request,
    next: Next,
) -> Response {
    let is_write = req.extensions().get::<MatchedPath>().is_some_and(|p| {
        writes
            .0
            .contains(&(req.method().clone(), p.as_str().to_owned()))
    });
    let key = req.headers().get("idempotency-key").cloned();
    let (Some(key), true) = (key, is_write) else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    let Some(token) = bearer(&parts).map(str::to_owned) else {
        // No caller to scope the key to: let authentication answer.
        return next.run(Request::from_parts(parts, body)).await;
    };
    // The key is checked before anything else about the request, this header included: a caller
    // without a valid key learns 401, never what else is wrong.
    match keys::authenticate(&state.cx.db, &token, state.bootstrap_hash.as_deref()).await {
        Ok(Some(caller)) => {
            parts.extensions.insert(Caller(caller));
        }
        Ok(None) => return next.run(Request::from_parts(parts, body)).await,
        Err(e) => return ApiError::from(e).into_response(),
    }
    let key = match key.to_str() {
        Ok(k) if IDEMPOTENCY_KEY.check(k).is_ok() => k.to_owned(),
        _ => {
            return ApiError::bad_request(
                "invalid_idempotency_key",
                "`Idempotency-Key` must be 1 to 255 printable ASCII characters.",
            )
            .into_response();
        }
    };
    let token = token.as_str();
    let owner = hash_key(token);
    let bytes = match to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return too_large().into_response(),
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str());
    h.update([0]);
    h.update(parts.uri.path());
    h.update([0]);
    h.update(&bytes);
    let request_hash = hex::encode(h.finalize());
    let now = state.clock.now().millis();

    match idempotency::claim(&state.cx.db, &owner, &key, &request_hash, now).await {
        Ok(Claim::Claimed) => {}
        Ok(Claim::InFlight { .. }) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "A request with this Idempotency-Key is still running; retry when it has finished.",
            )
            .into_response();
        }
        Ok(Claim::Done {
            request_hash: first,
            status,
            response,
        }) => {
            if first != request_hash {
                return ApiError::new(StatusCode::CONFLICT, "idempotency_key_reused", "This Idempotency-Key was used for another request; use a new key for a new request.").into_response();
            }
            let mut res = Response::new(Body::from(response));
            *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return res;
        }
        Err(e) => return ApiError::from(e).into_response(),
    }

    let res = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = res.status();
    if status.is_server_error() || status == StatusCode::UNAUTHORIZED {
        if let Err(e) = idempotency::release(&state.cx.db, &owner, &key).await {
            tracing::error!(error = %e, "could not release an idempotency key");
        }
        return res;
    }
    let (parts, body) = res.into_parts();
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "could not buffer a response");
            let _ = idempotency::release(&state.cx.db, &owner, &key).await;
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "The gateway failed to answer; try again.",
            )
            .into_response();
        }
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if let Err(e) = idempotency::complete(&state.cx.db, &owner, &key, status.as_u16(), &text).await
    {
        tracing::error!(error = %e, "could not store an idempotent answer");
    }
    Response::from_parts(parts, Body::from(bytes))
}
