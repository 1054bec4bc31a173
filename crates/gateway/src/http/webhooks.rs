//! `/v1/apps/{app}/webhook_endpoints` and `/v1/apps/{app}/deliveries`: where events go, and how each
//! delivery went.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use gateway_core::{AppUserId, ResourceId};
use serde::{Deserialize, Serialize};

use super::{
    Access, AppState, app_for,
    auth::Caller,
    error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorBody, json_body},
    parse_id,
};
use crate::{
    db::deliveries::{self, Delivery, Filter, Status},
    model::Scope,
    service::webhooks::{self, EndpointPatch, EndpointView, NewEndpoint, Rotation},
};

const READ: &[Scope] = &[Scope::Admin, Scope::Read];
const WRITE: &[Scope] = &[Scope::Admin];

/// An app's endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointView>,
}

/// Creates a webhook endpoint. Its signing secret is in `new_secret`, this once.
#[utoipa::path(post, path = "/v1/apps/{app}/webhook_endpoints", tag = "fulfilment", params(("app" = gateway_core::AppId, Path)), request_body = NewEndpoint,
    responses((status = 201, body = EndpointView)))]
pub async fn create_endpoint(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(body): ApiJson<NewEndpoint>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    let view = webhooks::create(&s.cx.db, &app, body, s.clock.now()).await?;
    Ok((StatusCode::CREATED, ApiJson(view)))
}

/// Lists an app's endpoints.
#[utoipa::path(get, path = "/v1/apps/{app}/webhook_endpoints", tag = "fulfilment", params(("app" = gateway_core::AppId, Path)),
    responses((status = 200, body = EndpointList)))]
pub async fn list_endpoints(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Scopes(READ)).await?.id;
    let endpoints = crate::db::endpoints::list(&s.cx.db, &app)
        .await?
        .iter()
        .map(|e| webhooks::view(e, None))
        .collect();
    Ok(ApiJson(EndpointList { endpoints }))
}

/// Reads an endpoint (never its secrets).
#[utoipa::path(get, path = "/v1/apps/{app}/webhook_endpoints/{endpoint_id}", tag = "fulfilment", params(("app" = gateway_core::AppId, Path), ("endpoint_id" = gateway_core::ResourceId, Path)),
    responses((status = 200, body = EndpointView), (status = 404, description = "`endpoint_not_found`", body = ErrorBody)))]
pub async fn get_endpoint(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "endpoint_id")?;
    let app = app_for(&s, &caller, &app, Access::Scopes(READ)).await?.id;
    let id = id.as_str();
    Ok(ApiJson(webhooks::view(
        &webhooks::get(&s.cx.db, &app, id).await?,
        None,
    )))
}

/// Changes an endpoint's URL, event filter, description, or pauses it (`active: false`).
#[utoipa::path(patch, path = "/v1/apps/{app}/webhook_endpoints/{endpoint_id}", tag = "fulfilment", params(("app" = gateway_core::AppId, Path), ("endpoint_id" = gateway_core::ResourceId, Path)), request_body = EndpointPatch,
    responses((status = 200, body = EndpointView)))]
pub async fn patch_endpoint(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    ApiJson(patch): ApiJson<EndpointPatch>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "endpoint_id")?;
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    Ok(ApiJson(
        webhooks::update(&s.cx.db, &app, id.as_str(), patch, s.clock.now()).await?,
    ))
}

/// Rotates the signing secret: the new one is in `new_secret`, this once; the old ones keep signing
/// beside it for `overlap_seconds`.
#[utoipa::path(post, path = "/v1/apps/{app}/webhook_endpoints/{endpoint_id}/rotate_secret", tag = "fulfilment", params(("app" = gateway_core::AppId, Path), ("endpoint_id" = gateway_core::ResourceId, Path)), request_body(content = Option<Rotation>, description = "Optional: no body rotates with the defaults"),
    responses((status = 200, body = EndpointView), (status = 409, description = "`not_a_webhook`: only webhook endpoints have signing secrets", body = ErrorBody)))]
pub async fn rotate_secret(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "endpoint_id")?;
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    // The body is optional: no body (or `null`) rotates with the defaults; anything else must be
    // JSON (whitespace alone is not).
    let rotation: Rotation = if body.is_empty() {
        Rotation::default()
    } else {
        json_body::<Option<Rotation>>(&body)?.unwrap_or_default()
    };
    Ok(ApiJson(
        webhooks::rotate(&s.cx.db, &app, id.as_str(), rotation, s.clock.now()).await?,
    ))
}

/// Which deliveries to list. Ids are checked as ids before they reach the database.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// `pending`, `delivered` or `dead`.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    endpoint_id: Option<ResourceId>,
    app_user_id: Option<AppUserId>,
    /// Only deliveries older than this delivery id (the last of the previous page).
    before: Option<ResourceId>,
    /// At most this many (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// Lists an app's deliveries, newest first.
#[utoipa::path(get, path = "/v1/apps/{app}/deliveries", tag = "fulfilment", params(("app" = gateway_core::AppId, Path), DeliveryQuery),
    responses((status = 200, body = DeliveryList)))]
pub async fn list_deliveries(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> ApiResult<impl IntoResponse> {
    let app = app_for(&s, &caller, &app, Access::Scopes(READ)).await?.id;
    let status = q
        .status
        .as_deref()
        .map(|st| {
            Status::parse(st).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_status",
                    format!("`status` is pending, delivered or dead, not {st:?}."),
                )
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "`limit` is between 1 and 500.",
        ));
    }
    let filter = Filter {
        status,
        endpoint_id: q.endpoint_id.map(|id| id.to_string()),
        customer_id: q.app_user_id.map(|id| id.to_string()),
        before: q.before.map(|id| id.to_string()),
        limit,
    };
    Ok(ApiJson(DeliveryList {
        deliveries: deliveries::list(&s.cx.db, &app, &filter).await?,
    }))
}

fn delivery_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "delivery_not_found",
        format!("There is no delivery {id:?} in this app."),
    )
}

/// Reads a delivery.
#[utoipa::path(get, path = "/v1/apps/{app}/deliveries/{delivery_id}", tag = "fulfilment", params(("app" = gateway_core::AppId, Path), ("delivery_id" = gateway_core::ResourceId, Path)),
    responses((status = 200, body = Delivery), (status = 404, description = "`delivery_not_found`", body = ErrorBody)))]
pub async fn get_delivery(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "delivery_id")?.to_string();
    let app = app_for(&s, &caller, &app, Access::Scopes(READ)).await?.id;
    let found = deliveries::get(&s.cx.db, &app, &id)
        .await?
        .ok_or_else(|| delivery_not_found(&id))?;
    Ok(ApiJson(found))
}

/// Sends a dead (or pending) delivery again now, with a fresh retry window.
#[utoipa::path(post, path = "/v1/apps/{app}/deliveries/{delivery_id}/retry", tag = "fulfilment", params(("app" = gateway_core::AppId, Path), ("delivery_id" = gateway_core::ResourceId, Path)),
    responses((status = 200, body = Delivery), (status = 404, description = "`delivery_not_found`", body = ErrorBody), (status = 409, description = "`delivery_delivered`", body = ErrorBody)))]
pub async fn retry_delivery(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "delivery_id")?.to_string();
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    let found = deliveries::get(&s.cx.db, &app, &id)
        .await?
        .ok_or_else(|| delivery_not_found(&id))?;
    if found.status == Status::Delivered {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "delivery_delivered",
            "This delivery was delivered; only pending or dead deliveries are retried.",
        ));
    }
    deliveries::retry(&s.cx.db, &app, &id, s.clock.now()).await?;
    s.cx.db.changes().outbox_signal().notify_one();
    let found = deliveries::get(&s.cx.db, &app, &id)
        .await?
        .ok_or_else(|| delivery_not_found(&id))?;
    Ok(ApiJson(found))
}

/// The keys that verify entitlement tokens (a JWK Set): the signing key and, during a rotation, the
/// keys it replaces.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "fulfilment", security(()), responses((status = 200, description = "A JWK Set")))]
pub async fn jwks(State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    let set = crate::service::tokens::jwks(&s.cx, s.clock.now()).await?;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        ApiJson(set),
    ))
}

/// The new key's id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rotated {
    pub kid: String,
}

/// Rotates the entitlement-token signing key (admin key): the new key signs from now on; the old
/// ones stay published for `overlap_seconds`.
#[utoipa::path(post, path = "/v1/signing_keys/rotate", tag = "fulfilment", request_body = crate::service::tokens::Rotation,
    responses((status = 200, body = Rotated)))]
pub async fn rotate_signing_key(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<crate::service::tokens::Rotation>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    let kid = crate::service::tokens::rotate(&s.cx, body, s.clock.now()).await?;
    Ok(ApiJson(Rotated { kid }))
}
