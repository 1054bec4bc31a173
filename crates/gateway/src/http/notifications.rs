//! Store notifications: no API key; each is verified by the store's own means.

use axum::{
    body::Bytes,
    extract::{Path, State},
    response::IntoResponse,
};

use super::{
    AppState,
    error::{ApiJson, ApiResult, ErrorBody},
    parse_app,
};
use crate::service::{apps, notifications};

/// App Store Server Notifications V2. Answered 200 once the raw body is durable; a verified duplicate
/// is answered 200 and changes nothing; a forged or malformed one gets a 4xx and is not stored.
#[utoipa::path(post, path = "/v1/apps/{app}/notifications/app_store", tag = "notifications", security(()), params(("app" = String, Path)),
    request_body(content = String, content_type = "application/json", description = "`{\"signedPayload\": \"<JWS>\"}`"),
    responses((status = 200, body = notifications::Received), (status = "4XX", description = "Refused and not stored", body = ErrorBody)))]
pub async fn app_store(
    State(s): State<AppState>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let app = apps::get(&s.db, &parse_app(&app)?).await?;
    let received =
        notifications::receive_apple(&s.db, (&s.apple, &s.apple_api), &app, &body, s.clock.now())
            .await?;
    metrics::counter!("gateway_notifications_total", "store" => "app_store", "status" => received.status).increment(1);
    tracing::info!(app = %app.id, notification = %received.notification_uuid, status = received.status, "App Store notification");
    Ok(ApiJson(received))
}
