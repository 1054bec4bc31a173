//! `/v1/apps`: apps and their keys.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    Access, AppState, app_for,
    auth::Caller,
    error::{ApiJson, ApiResult},
};
use crate::{
    db,
    model::{KeyKind, Scope},
    service::{apps, keys},
};

/// Creates an app (admin key).
#[utoipa::path(post, path = "/v1/apps", tag = "apps", request_body(content = serde_json::Value, description = "`{id, name, app_store?, play_store?, stripe?, revenuecat?, customer_auth?, embargoed_countries?, transfer_policy?}`"),
    responses((status = 201, description = "The app; secrets are shown as `<name>_set: true`", body = serde_json::Value), (status = 409, description = "`app_exists`")))]
pub async fn create_app(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<apps::NewApp>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    let app = apps::create(&s.db, body, s.clock.now()).await?;
    tracing::info!(app = %app.id, "app created");
    Ok((StatusCode::CREATED, ApiJson(apps::public_view(&app))))
}

/// Reads an app.
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps", params(("app" = String, Path)), responses((status = 200, body = serde_json::Value), (status = 404, description = "`app_not_found`")))]
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

/// Changes an app's settings (admin key). A field present replaces the stored one; a secret not restated
/// is kept.
#[utoipa::path(patch, path = "/v1/apps/{app}", tag = "apps", params(("app" = String, Path)), request_body = serde_json::Value, responses((status = 200, body = serde_json::Value)))]
pub async fn patch_app(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(body): ApiJson<apps::AppPatch>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Admin).await?.id;
    Ok(ApiJson(apps::public_view(
        &apps::update(&s.db, &app, body, s.clock.now()).await?,
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    kind: KeyKind,
    #[serde(default)]
    scopes: Vec<Scope>,
}

/// Creates a key of an app (admin key). The key is in this answer only.
#[utoipa::path(post, path = "/v1/apps/{app}/keys", tag = "apps", params(("app" = String, Path)),
    request_body(content = serde_json::Value, description = "`{kind: \"publishable\" | \"secret\", scopes: [\"catalog\", \"customers\", \"purchases\", \"refunds\", \"read\"]}`"),
    responses((status = 201, description = "`{id, key, kind, scopes}`", body = serde_json::Value)))]
pub async fn create_key(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Admin).await?.id;
    let new = keys::create(&s.db, Some(&app), body.kind, body.scopes, s.clock.now()).await?;
    tracing::info!(app = %app, key_id = %new.key.id, "key created");
    Ok((
        StatusCode::CREATED,
        ApiJson(
            json!({"id": new.key.id, "key": new.secret, "kind": new.key.kind, "scopes": new.key.scopes}),
        ),
    ))
}

/// Lists an app's keys (never the keys themselves).
#[utoipa::path(get, path = "/v1/apps/{app}/keys", tag = "apps", params(("app" = String, Path)), responses((status = 200, body = serde_json::Value)))]
pub async fn list_keys(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Admin).await?.id;
    Ok(ApiJson(
        json!({"keys": db::keys::list_for_app(&s.db, &app).await?}),
    ))
}

/// Revokes a key of an app at once.
#[utoipa::path(delete, path = "/v1/apps/{app}/keys/{key_id}", tag = "apps", params(("app" = String, Path), ("key_id" = String, Path)), responses((status = 204), (status = 404, description = "`key_not_found`")))]
pub async fn revoke_key(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, key_id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Admin).await?.id;
    if db::keys::revoke(&s.db, &app, &key_id, s.clock.now()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(super::error::ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "This app has no live key with that id.",
        ))
    }
}
