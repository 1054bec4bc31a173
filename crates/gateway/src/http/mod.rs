//! The HTTP API (`/v1`), health and metrics, and the OpenAPI document describing it. Handlers are thin:
//! extract, call one `service` function, map the result.

pub mod apps;
pub mod auth;
pub mod catalog;
pub mod customers;
pub mod doc;
pub mod error;
pub mod idempotency;
pub mod notifications;
pub mod ops;
pub mod pay;
pub mod purchases;
pub mod webhooks;

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit, middleware};
use gateway_core::{AppId, AppUserId, Clock, EntitlementId, ProductId, ResourceId};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use self::error::ApiError;
use crate::config::Config;

/// How long one request may run before it is answered 408: long enough for a store call with retries,
/// short enough that a stuck request does not hold a connection for ever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Storage, the committer and the token keys that the use cases share.
    pub cx: crate::service::Context,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    pub metrics: PrometheusHandle,
    /// SHA-256 of the bootstrap admin key, when one is configured.
    pub bootstrap_hash: Option<String>,
    /// Customer JWT keys of the apps that use them.
    pub jwks: Arc<crate::service::customer_auth::JwksCache>,
    /// The client that delivers outbound events (no redirects).
    pub outbound: reqwest::Client,
    /// Open edX access tokens, reused until they expire.
    pub lms: Arc<crate::service::openedx::Caches>,
    /// Cancelled when the server begins to stop: long polls answer and event streams end, so a
    /// graceful shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Purchase Gateway",
        description = "Verifies App Store, Google Play and Stripe purchases, grants access, and keeps it in step with refunds, renewals and expirations. Errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(gateway_core::ResourceId)),
    security(("api_key" = [])),
    tags(
        (name = "apps", description = "Apps (tenants) and their keys"),
        (name = "catalog", description = "Products, their store SKUs and entitlements"),
        (name = "customers", description = "Customer snapshots, orders, manual grants and balances"),
        (name = "notifications", description = "Store notifications, verified by each store's own means"),
        (name = "fulfilment", description = "Webhook endpoints and the deliveries of outbound events"),
        (name = "service", description = "Health, readiness, metrics")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("sk_... or pk_... key"))
                    .build(),
            ),
        );
    }
}

/// The API router with its OpenAPI document.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(apps::create_app, apps::list_apps))
        .routes(routes!(apps::list_all_keys))
        .routes(routes!(apps::revoke_any_key))
        .routes(routes!(apps::get_app, apps::patch_app))
        .routes(routes!(apps::create_key, apps::list_keys))
        .routes(routes!(apps::revoke_key))
        .routes(routes!(catalog::list_products))
        .routes(routes!(
            catalog::put_product,
            catalog::get_product,
            catalog::delete_product
        ))
        .routes(routes!(catalog::import_products))
        .routes(routes!(catalog::export_products))
        .routes(routes!(customers::get_customer))
        .routes(routes!(customers::events))
        .routes(routes!(customers::offerings))
        .routes(routes!(customers::timeline))
        .routes(routes!(customers::create_order))
        .routes(routes!(customers::grant))
        .routes(routes!(customers::revoke))
        .routes(routes!(customers::spend))
        .routes(routes!(purchases::submit))
        .routes(routes!(purchases::restore))
        .routes(routes!(purchases::refund))
        .routes(routes!(purchases::checkout))
        .routes(routes!(purchases::offer_signature))
        .routes(routes!(notifications::app_store))
        .routes(routes!(notifications::recover_app_store))
        .routes(routes!(notifications::play_store))
        .routes(routes!(notifications::recover_play_store))
        .routes(routes!(notifications::stripe))
        .routes(routes!(notifications::recover_stripe))
        .routes(routes!(notifications::revenuecat))
        .routes(routes!(webhooks::create_endpoint, webhooks::list_endpoints))
        .routes(routes!(webhooks::get_endpoint, webhooks::patch_endpoint))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::get_delivery))
        .routes(routes!(webhooks::retry_delivery))
        .routes(routes!(webhooks::jwks))
        .routes(routes!(webhooks::rotate_signing_key))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .split_for_parts()
}

/// The OpenAPI document, as served.
pub fn openapi() -> serde_json::Value {
    doc::document(&api().1)
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let (api, doc) = api();
    let doc = Arc::new(doc::document(&doc));
    let writes = Arc::new(idempotency::Writes::of(&doc));
    api.route("/pay/{app}/return", axum::routing::get(pay::return_page))
        .route("/pay/{app}/status", axum::routing::get(pay::status))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "There is no such route.",
            )
        })
        // The first layer is the innermost. The body limit is enforced where bodies are read (extractors
        // and the idempotency layer), so its 413 speaks the error shape.
        .layer(DefaultBodyLimit::max(idempotency::BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            (state.clone(), writes),
            idempotency::layer,
        ))
        .layer(middleware::from_fn(ops::track))
        .layer(middleware::from_fn(error::shape_errors))
        // A panic is a bug; the caller still gets the error shape, and the process lives on.
        .layer(CatchPanicLayer::custom(error::panic_answer))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Who may call a handler on an app.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// Admin keys only.
    Admin,
    /// An admin key, or a secret key of the app with one of these scopes.
    Scopes(&'static [crate::model::Scope]),
    /// As `Scopes`, or the app's publishable key (acting for a customer).
    ScopesOrPublishable(&'static [crate::model::Scope]),
}

/// Parses the app of the path, checks that the caller may act on it, and loads it (404 when there is
/// no such app). Permission is checked before existence, so a key of another app learns nothing.
pub async fn app_for(
    state: &AppState,
    caller: &auth::Caller,
    raw: &str,
    access: Access,
) -> Result<crate::model::App, ApiError> {
    let id = parse_app(raw)?;
    match access {
        Access::Admin => caller.require_admin()?,
        Access::Scopes(scopes) => caller.require(&id, scopes)?,
        Access::ScopesOrPublishable(scopes) => caller.require_or_publishable(&id, scopes)?,
    }
    Ok(crate::service::apps::get(&state.cx.db, &id).await?)
}

/// [`app_for`] for a call made for one customer: an admin or scoped secret key, or the app's
/// publishable key, which must also carry that customer's JWT when the app authenticates customers.
pub async fn app_for_customer(
    state: &AppState,
    caller: &auth::Caller,
    raw: &str,
    customer: &AppUserId,
    headers: &axum::http::HeaderMap,
    scopes: &'static [crate::model::Scope],
) -> Result<crate::model::App, ApiError> {
    Ok(
        app_for_open_read(state, caller, raw, customer, headers, scopes)
            .await?
            .0,
    )
}

/// [`app_for_customer`] for a read that stays open (a long poll, an event stream): also what it was
/// let in with, which it checks again while it waits, so a revoked key or an expired customer token
/// ends it.
pub async fn app_for_open_read(
    state: &AppState,
    caller: &auth::Caller,
    raw: &str,
    customer: &AppUserId,
    headers: &axum::http::HeaderMap,
    scopes: &'static [crate::model::Scope],
) -> Result<(crate::model::App, crate::service::keys::Credentials), ApiError> {
    let app = app_for(state, caller, raw, Access::ScopesOrPublishable(scopes)).await?;
    let token_expires_at = auth::customer_access(state, caller, &app, customer, headers).await?;
    let credentials = crate::service::keys::Credentials {
        key_id: caller.id().to_owned(),
        token_expires_at,
    };
    Ok((app, credentials))
}

/// Parses a path segment, or answers 400 naming it.
pub fn parse_app(raw: &str) -> Result<AppId, ApiError> {
    AppId::parse(raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_app_id",
            format!("The app id in the path is not valid: {e}."),
        )
    })
}

/// Parses an id the gateway made (a key's, an endpoint's, a delivery's), or answers 400 naming it.
pub fn parse_id(raw: &str, name: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(raw)
        .map_err(|e| ApiError::bad_request("invalid_id", format!("`{name}` is not valid: {e}.")))
}

pub fn parse_user(raw: &str) -> Result<AppUserId, ApiError> {
    AppUserId::parse(raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_app_user_id",
            format!("The app_user_id in the path is not valid: {e}."),
        )
    })
}

pub fn parse_product(raw: &str) -> Result<ProductId, ApiError> {
    ProductId::parse(raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_product_id",
            format!("The product id is not valid: {e}."),
        )
    })
}

pub fn parse_entitlement(raw: &str) -> Result<EntitlementId, ApiError> {
    EntitlementId::parse(raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_entitlement_id",
            format!("The entitlement id is not valid: {e}."),
        )
    })
}
