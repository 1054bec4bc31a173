//! Store notifications: no API key; each is verified by the store's own means.

use axum::{
    body::Bytes,
    extract::{Path, State},
    response::IntoResponse,
};

use super::{
    Access, AppState, app_for,
    auth::Caller,
    error::{ApiJson, ApiResult, ErrorBody},
    parse_app,
};
use gateway_core::ids::Store;

use crate::{
    model::Scope,
    service::{apps, notifications, recovery},
    stores::Delivery,
};

/// App Store Server Notifications V2. Answered 200 once the raw body is durable; a verified duplicate
/// is answered 200 and changes nothing; a forged or malformed one gets a 4xx and is not stored.
#[utoipa::path(post, path = "/v1/apps/{app}/notifications/app_store", tag = "notifications", security(()), params(("app" = gateway_core::AppId, Path)),
    request_body(content = crate::stores::apple::Envelope, description = "App Store Server Notifications V2: `{\"signedPayload\": \"<JWS>\"}`"),
    responses((status = 200, body = notifications::Received),
              (status = 409, description = "`store_not_configured`: the app has no `app_store` settings", body = ErrorBody),
              (status = 422, description = "The signed data was refused (`invalid_signature`, `untrusted_certificate_chain`, `wrong_app`, `malformed_signed_data`, ...) and not stored", body = ErrorBody)))]
pub async fn app_store(
    State(s): State<AppState>,
    Path(app): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    take(&s, &app, Store::AppStore, delivery(&body, &headers, None)).await
}

/// Takes a notification for `store` of the app named `app`: verified by its adapter, answered once
/// durable, counted and logged.
async fn take(
    s: &AppState,
    app: &str,
    store: Store,
    delivery: Delivery<'_>,
) -> ApiResult<ApiJson<notifications::Received>> {
    let app = apps::get(&s.cx.db, &parse_app(app)?).await?;
    let received = notifications::receive(&s.cx, &app, store, delivery, s.clock.now()).await?;
    metrics::counter!("gateway_notifications_total", "store" => store.as_str(), "status" => received.status).increment(1);
    tracing::info!(app = %app.id, store = store.as_str(), notification = %received.notification_uuid, status = received.status, "store notification");
    Ok(ApiJson(received))
}

/// A window of the store's notification history to read again.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// Start of the window (RFC 3339); at most 180 days ago.
    pub start: gateway_core::Timestamp,
    /// End of the window (RFC 3339); now when absent.
    #[serde(default)]
    pub end: Option<gateway_core::Timestamp>,
}

/// Reads Apple's Notification History for a window and takes every notification the gateway missed
/// (after an outage, say); those it has are duplicates and change nothing. The recovery job does the
/// same every 15 minutes from where it last stopped.
#[utoipa::path(post, path = "/v1/apps/{app}/notifications/app_store/recover", tag = "notifications", params(("app" = gateway_core::AppId, Path)),
    request_body = RecoverRequest,
    responses((status = 200, body = recovery::Recovered),
              (status = 409, description = "`store_not_configured`: the app has no App Store Server API key", body = ErrorBody),
              (status = 422, description = "`invalid_window` (`start` is not before `end` within the 180 days Apple keeps), or the App Store refused the request", body = ErrorBody),
              (status = 503, description = "The App Store did not answer", body = ErrorBody)))]
pub async fn recover_app_store(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(req): ApiJson<RecoverRequest>,
) -> ApiResult<impl IntoResponse> {
    recover(&s, &caller, &app, req, Store::AppStore).await
}

/// Reads `store`'s history for the window of `req`, as a caller with `purchases` asked.
async fn recover(
    s: &AppState,
    caller: &Caller,
    app: &str,
    req: RecoverRequest,
    store: Store,
) -> ApiResult<ApiJson<recovery::Recovered>> {
    let app = app_for(s, caller, app, Access::Scopes(&[Scope::Purchases])).await?;
    let now = s.clock.now();
    let adapter = s.cx.adapter(store)?;
    let window = (req.start, req.end.unwrap_or(now));
    let recovered = recovery::recover(&s.cx, adapter, &app, window, now).await?;
    Ok(ApiJson(recovered))
}

/// A notification as it arrived: its body, and what may authenticate it (each store's adapter
/// reads its own: Apple's payload signs itself, Play's push carries a bearer token or `?token=`,
/// Stripe a `Stripe-Signature`, RevenueCat a shared `Authorization` value).
fn delivery<'a>(
    body: &'a [u8],
    headers: &'a axum::http::HeaderMap,
    query_token: Option<&'a str>,
) -> Delivery<'a> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = header("authorization");
    Delivery {
        body,
        bearer: authorization.and_then(|v| v.strip_prefix("Bearer ")),
        query_token,
        signature: header("stripe-signature"),
        authorization,
    }
}

/// The `?token=` a push endpoint URL may carry.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct PushQuery {
    /// The app's `play_store.push_token`, when pushes are not authenticated by OIDC tokens.
    #[serde(default)]
    token: Option<String>,
}

/// Google Play Real-time developer notifications, as Pub/Sub pushes them. Authenticated by the push
/// subscription's OIDC token (`Authorization: Bearer`, Google-signed, the app's `pubsub_audience` and
/// `pubsub_service_account`) or by the app's `push_token` as `?token=`. The gateway reads the purchase
/// the message names from Play (a message carries no state) and decides; it answers 200 once the raw
/// body is durable, and a duplicate `messageId` changes nothing.
#[utoipa::path(post, path = "/v1/apps/{app}/notifications/play_store", tag = "notifications", security(()),
    params(("app" = gateway_core::AppId, Path), PushQuery),
    request_body(content = Object, description = "A Pub/Sub push: `{\"message\": {\"data\": \"<base64 DeveloperNotification>\", \"messageId\": ...}, \"subscription\": ...}`"),
    responses((status = 200, body = notifications::Received),
              (status = 400, description = "`malformed_notification` or `invalid_purchase_token`", body = ErrorBody),
              (status = 401, description = "`push_unauthenticated`, `invalid_push_token` or `invalid_push_authentication`", body = ErrorBody),
              (status = 404, description = "`purchase_token_not_found`: Play knows no such purchase", body = ErrorBody),
              (status = 409, description = "`store_not_configured`: the app has no `play_store` settings", body = ErrorBody),
              (status = 422, description = "`wrong_app`: the notification is for another package", body = ErrorBody),
              (status = 503, description = "Play did not answer; Pub/Sub retries", body = ErrorBody)))]
pub async fn play_store(
    State(s): State<AppState>,
    Path(app): Path<String>,
    axum::extract::Query(query): axum::extract::Query<PushQuery>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let delivery = delivery(&body, &headers, query.token.as_deref());
    take(&s, &app, Store::PlayStore, delivery).await
}

/// Stripe webhook events. Authenticated by `Stripe-Signature` (HMAC-SHA256 with the app's
/// `stripe.webhook_secret`, or the previous one for a day after it changed; 300 s tolerance). A thin
/// event (`v2.core.event`) is read through the object it names. The gateway answers 200 once the
/// raw body is durable; a duplicate `event.id` changes nothing.
#[utoipa::path(post, path = "/v1/apps/{app}/notifications/stripe", tag = "notifications", security(()),
    params(("app" = gateway_core::AppId, Path)),
    request_body(content = Object, description = "A Stripe event (`object: \"event\"`) or thin event (`object: \"v2.core.event\"`), as Stripe sends it"),
    responses((status = 200, body = notifications::Received),
              (status = 400, description = "`malformed_notification`", body = ErrorBody),
              (status = 401, description = "`missing_signature`, `invalid_signature` or `stale_signature`", body = ErrorBody),
              (status = 404, description = "`stripe_object_not_found`: the object a thin event names is not in Stripe", body = ErrorBody),
              (status = 409, description = "`store_not_configured`: the app has no `stripe` settings", body = ErrorBody),
              (status = 503, description = "Stripe did not answer; Stripe retries", body = ErrorBody)))]
pub async fn stripe(
    State(s): State<AppState>,
    Path(app): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    take(&s, &app, Store::Stripe, delivery(&body, &headers, None)).await
}

/// RevenueCat webhook events, authenticated by the `Authorization` header value set in RevenueCat's
/// dashboard (the app's `revenuecat.webhook_authorization`, compared whole). What RevenueCat says is
/// taken on its word: the customer (`app_user_id`), the product (by the SKU of the event's `store`),
/// the dates. Answers 200 once the raw body is durable; a duplicate `event.id` changes nothing.
#[utoipa::path(post, path = "/v1/apps/{app}/notifications/revenuecat", tag = "notifications", security(()),
    params(("app" = gateway_core::AppId, Path)),
    request_body(content = Object, description = "`{\"api_version\": \"1.0\", \"event\": {\"id\", \"type\", \"app_user_id\", \"product_id\", \"store\", ...}}`"),
    responses((status = 200, body = notifications::Received),
              (status = 400, description = "`malformed_notification`", body = ErrorBody),
              (status = 401, description = "`invalid_authorization`", body = ErrorBody),
              (status = 409, description = "`store_not_configured`: the app has no `revenuecat` settings", body = ErrorBody)))]
pub async fn revenuecat(
    State(s): State<AppState>,
    Path(app): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    take(&s, &app, Store::RevenueCat, delivery(&body, &headers, None)).await
}

/// Reads Stripe's events for a window (within Stripe's 30 days) and takes every one the gateway
/// missed; the recovery job does the same every 15 minutes from where it last stopped.
#[utoipa::path(post, path = "/v1/apps/{app}/notifications/stripe/recover", tag = "notifications", params(("app" = gateway_core::AppId, Path)),
    request_body = RecoverRequest,
    responses((status = 200, body = recovery::Recovered),
              (status = 409, description = "`store_not_configured`: the app has no Stripe secret key", body = ErrorBody),
              (status = 422, description = "`invalid_window` (`start` is not before `end` within Stripe's 30 days), or Stripe refused the request", body = ErrorBody),
              (status = 503, description = "Stripe did not answer", body = ErrorBody)))]
pub async fn recover_stripe(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(req): ApiJson<RecoverRequest>,
) -> ApiResult<impl IntoResponse> {
    recover(&s, &caller, &app, req, Store::Stripe).await
}

/// Walks Play's voided purchases for a window (within Play's 30 days) and takes every refund and
/// chargeback the gateway missed; the recovery job does the same every 15 minutes from where it last
/// stopped.
#[utoipa::path(post, path = "/v1/apps/{app}/notifications/play_store/recover", tag = "notifications", params(("app" = gateway_core::AppId, Path)),
    request_body = RecoverRequest,
    responses((status = 200, body = recovery::Recovered),
              (status = 409, description = "`store_not_configured`: the app has no Play Developer API key", body = ErrorBody),
              (status = 422, description = "`invalid_window` (`start` is not before `end` within Play's 30 days), or Play refused the request", body = ErrorBody),
              (status = 503, description = "Play did not answer", body = ErrorBody)))]
pub async fn recover_play_store(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(req): ApiJson<RecoverRequest>,
) -> ApiResult<impl IntoResponse> {
    recover(&s, &caller, &app, req, Store::PlayStore).await
}
