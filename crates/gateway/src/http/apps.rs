//! `/v1/apps`: apps and their keys.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use serde::{Deserialize, Serialize};

use super::{
    Access, AppState, app_for,
    auth::Caller,
    error::{ApiError, ApiJson, ApiResult, ErrorBody},
    parse_id,
};
use crate::{
    db::{self, keys::KeyInfo},
    model::{KeyKind, Scope},
    service::{
        apps::{self, AppPatch, AppView, NewApp},
        keys,
    },
};

/// Creates an app (admin key).
#[utoipa::path(post, path = "/v1/apps", tag = "apps", request_body = NewApp,
    responses((status = 201, description = "The app; secrets are shown as `<name>_set: true`", body = AppView),
              (status = 409, description = "`app_exists`", body = ErrorBody), (status = 422, description = "`invalid_play_store`: `service_account_json` is not a Google service account key file", body = ErrorBody)))]
pub async fn create_app(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewApp>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    let app = apps::create(&s.cx.db, body, s.clock.now()).await?;
    tracing::info!(app = %app.id, "app created");
    Ok((StatusCode::CREATED, ApiJson(apps::public_view(&app))))
}

/// Reads an app.
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps", params(("app" = gateway_core::AppId, Path)),
    responses((status = 200, body = AppView), (status = 404, description = "`app_not_found`", body = ErrorBody)))]
pub async fn get_app(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<impl IntoResponse> {
    const ANY: &[Scope] = &[
        Scope::Catalog,
        Scope::Customers,
        Scope::Purchases,
        Scope::Refunds,
        Scope::Read,
    ];
    let app = app_for(&s, &caller, &app, Access::Scopes(ANY)).await?;
    Ok(ApiJson(apps::public_view(&app)))
}

/// Changes an app's settings (admin key). A field present replaces the stored one (`null` removes a
/// store); a secret not restated is kept.
#[utoipa::path(patch, path = "/v1/apps/{app}", tag = "apps", params(("app" = gateway_core::AppId, Path)), request_body = AppPatch,
    responses((status = 200, body = AppView), (status = 409, description = "`invalid_stripe` or `invalid_revenuecat`: a required secret is neither in the patch nor stored", body = ErrorBody), (status = 422, description = "`invalid_play_store`: `service_account_json` is not a Google service account key file", body = ErrorBody)))]
pub async fn patch_app(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(body): ApiJson<AppPatch>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Admin).await?.id;
    Ok(ApiJson(apps::public_view(
        &apps::update(&s.cx.db, &app, body, s.clock.now()).await?,
    )))
}

/// The body of `POST /v1/apps/{app}/keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    kind: KeyKind,
    /// For secret keys: one or more of catalog, customers, purchases, refunds, read.
    #[serde(default)]
    scopes: Vec<Scope>,
}

/// A new key: the only time the key itself is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewKeyAnswer {
    id: String,
    key: String,
    kind: KeyKind,
    scopes: Vec<Scope>,
}

/// An app's keys.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    keys: Vec<KeyInfo>,
}

/// Creates a key of an app (admin key). The key is in this answer only.
#[utoipa::path(post, path = "/v1/apps/{app}/keys", tag = "apps", params(("app" = gateway_core::AppId, Path)), request_body = NewKeyBody,
    responses((status = 201, body = NewKeyAnswer), (status = 400, description = "`invalid_scope`", body = ErrorBody)))]
pub async fn create_key(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Admin).await?.id;
    let new = keys::create(&s.cx.db, Some(&app), body.kind, body.scopes, s.clock.now()).await?;
    tracing::info!(app = %app, key_id = %new.key.id, "key created");
    let answer = NewKeyAnswer {
        id: new.key.id,
        key: new.secret,
        kind: new.key.kind,
        scopes: new.key.scopes,
    };
    Ok((StatusCode::CREATED, ApiJson(answer)))
}

/// Lists an app's keys (never the keys themselves).
#[utoipa::path(get, path = "/v1/apps/{app}/keys", tag = "apps", params(("app" = gateway_core::AppId, Path)), responses((status = 200, body = KeyList)))]
pub async fn list_keys(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Admin).await?.id;
    Ok(ApiJson(KeyList {
        keys: db::keys::list_for_app(&s.cx.db, &app).await?,
    }))
}

/// Revokes a key of an app at once.
#[utoipa::path(delete, path = "/v1/apps/{app}/keys/{key_id}", tag = "apps", params(("app" = gateway_core::AppId, Path), ("key_id" = gateway_core::ResourceId, Path)),
    responses((status = 204, description = "Revoked"), (status = 404, description = "`key_not_found`", body = ErrorBody)))]
pub async fn revoke_key(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, key_id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let key_id = parse_id(&key_id, "key_id")?.to_string();
    let app = app_for(&s, &caller, &app, Access::Admin).await?.id;
    if db::keys::revoke(&s.cx.db, &app, &key_id, s.clock.now()).await? {
        tracing::info!(app = %app, key_id = %key_id, "key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "This app has no live key with that id.",
        ))
    }
}

/// Every app.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppList {
    apps: Vec<AppView>,
}

/// Lists every app (admin key).
#[utoipa::path(get, path = "/v1/apps", tag = "apps", responses((status = 200, body = AppList), (status = 403, description = "Not an admin key", body = ErrorBody)))]
pub async fn list_apps(State(s): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    let apps = db::apps::list(&s.cx.db)
        .await?
        .iter()
        .map(apps::public_view)
        .collect();
    Ok(ApiJson(AppList { apps }))
}

/// A key of any app, or an admin key (`app_id` null).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnyKey {
    app_id: Option<String>,
    #[serde(flatten)]
    key: KeyInfo,
}

/// Every key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AllKeys {
    keys: Vec<AnyKey>,
}

/// Lists every key, admin keys included (admin key); never the keys themselves.
#[utoipa::path(get, path = "/v1/keys", tag = "apps", responses((status = 200, body = AllKeys), (status = 403, description = "Not an admin key", body = ErrorBody)))]
pub async fn list_all_keys(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    let keys = db::keys::list_all(&s.cx.db)
        .await?
        .into_iter()
        .map(|(app_id, key)| AnyKey { app_id, key })
        .collect();
    Ok(ApiJson(AllKeys { keys }))
}

/// Revokes any key at once, admin keys included (admin key). The bootstrap key is configuration, not
/// a stored key: remove it from the configuration instead.
#[utoipa::path(delete, path = "/v1/keys/{key_id}", tag = "apps", params(("key_id" = gateway_core::ResourceId, Path)),
    responses((status = 204, description = "Revoked"), (status = 404, description = "`key_not_found`", body = ErrorBody)))]
pub async fn revoke_any_key(
    State(s): State<AppState>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    let key_id = parse_id(&key_id, "key_id")?.to_string();
    if db::keys::revoke_any(&s.cx.db, &key_id, s.clock.now()).await? {
        tracing::info!(key_id = %key_id, "key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "There is no live key with that id.",
        ))
    }
}
