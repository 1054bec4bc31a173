//! `/v1/apps/{app}/customers/{app_user_id}`: snapshot, offerings, timeline, orders, manual grants and
//! revokes, spending.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
};
use gateway_core::{Currency, ProductId, Timestamp};
use serde::{Deserialize, Serialize};

use super::{
    Access, AppState, app_for, app_for_customer, app_for_open_read,
    auth::Caller,
    catalog::ProductList,
    error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorBody},
    parse_entitlement, parse_product, parse_user,
};
use crate::{
    db::audit::AuditRow,
    model::Scope,
    service::customers::{self, Snapshot, Spent},
};

/// A customer's timeline, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timeline {
    pub events: Vec<AuditRow>,
}

/// A started order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderAnswer {
    pub order_id: String,
    /// Pass to StoreKit as `appAccountToken`.
    pub app_account_token: String,
    /// Pass to Play Billing as `obfuscatedAccountId`: stable per customer, not reversible.
    pub obfuscated_account_id: String,
    pub items: Vec<ProductId>,
    pub country: Option<String>,
    pub created_at: Timestamp,
}

/// A long poll: hold the answer until the snapshot's version passes `after_version`, for at most
/// `wait` seconds.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// Seconds to hold the answer when `after_version` is given.
    #[param(minimum = 0, maximum = 50)]
    wait: Option<u64>,
    /// The version the caller has; the answer comes as soon as the snapshot is newer.
    after_version: Option<i64>,
}

/// The request's `Idempotency-Key`, if any.
fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

const READ: &[Scope] = &[Scope::Customers, Scope::Read];
const WRITE: &[Scope] = &[Scope::Customers];

/// The customer snapshot.
#[utoipa::path(get, path = "/v1/apps/{app}/customers/{app_user_id}", tag = "customers", params(("app" = gateway_core::AppId, Path), ("app_user_id" = gateway_core::AppUserId, Path), PollQuery, ("X-Customer-Token" = Option<String>, Header, description = "The customer's JWT, for publishable keys of apps with `customer_auth.mode: jwt`")),
    responses((status = 200, description = "The snapshot; a customer never seen has version 0", body = Snapshot)))]
pub async fn get_customer(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    ApiQuery(poll): ApiQuery<PollQuery>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let (found, credentials) = app_for_open_read(&s, &caller, &app, &user, &headers, READ).await?;
    let app = found.id.clone();
    // Checked whether or not it is used, as the document states it.
    if poll.wait.is_some_and(|w| w > customers::MAX_WAIT.as_secs()) {
        return Err(ApiError::bad_request(
            "invalid_wait",
            format!(
                "`wait` is at most {} seconds.",
                customers::MAX_WAIT.as_secs()
            ),
        ));
    }
    let snap = match (poll.wait, poll.after_version) {
        (Some(wait), Some(after)) => {
            let wait = std::time::Duration::from_secs(wait);
            tokio::select! {
                snap = customers::snapshot_after(&s.cx, &app, &user, after, wait, s.clock.as_ref(), &credentials) => snap?,
                // The server is stopping: answer with what there is now.
                _ = s.shutdown.cancelled() => customers::snapshot(&s.cx, &app, &user, s.clock.now()).await?,
            }
        }
        _ => customers::snapshot(&s.cx, &app, &user, s.clock.now()).await?,
    };
    Ok(ApiJson(snap))
}

/// The active products this customer may buy now, with their store SKUs.
#[utoipa::path(get, path = "/v1/apps/{app}/customers/{app_user_id}/offerings", tag = "customers", params(("app" = gateway_core::AppId, Path), ("app_user_id" = gateway_core::AppUserId, Path)), responses((status = 200, body = ProductList)))]
pub async fn offerings(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let found = app_for_customer(&s, &caller, &app, &user, &headers, READ).await?;
    let app = found.id.clone();
    let products = customers::offerings(&s.cx, &app, &user, s.clock.now()).await?;
    Ok(ApiJson(ProductList { products }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// At most this many rows (100 by default).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Only rows before this `seq`: the last `seq` of the previous page.
    before: Option<i64>,
}

/// The customer's audit trail, newest first; page with `before` = the last `seq` seen.
#[utoipa::path(get, path = "/v1/apps/{app}/customers/{app_user_id}/timeline", tag = "customers", params(("app" = gateway_core::AppId, Path), ("app_user_id" = gateway_core::AppUserId, Path), TimelineQuery),
    responses((status = 200, body = Timeline)))]
pub async fn timeline(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<TimelineQuery>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let app = app_for(&s, &caller, &app, Access::Scopes(READ)).await?.id;
    let rows = customers::timeline(&s.cx.db, &app, &user, q.before, q.limit.unwrap_or(100)).await?;
    Ok(ApiJson(Timeline { events: rows }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    product_ids: Vec<String>,
    #[serde(default)]
    country: Option<String>,
}

/// Starts an order and issues `app_account_token` (Apple) and `obfuscated_account_id` (Play).
#[utoipa::path(post, path = "/v1/apps/{app}/customers/{app_user_id}/orders", tag = "customers", params(("app" = gateway_core::AppId, Path), ("app_user_id" = gateway_core::AppUserId, Path)), request_body = OrderBody,
    responses((status = 201, body = OrderAnswer), (status = 403, description = "`embargoed`", body = ErrorBody), (status = 404, description = "`product_not_found`", body = ErrorBody), (status = 409, description = "`country_required` (the app has an embargo) or `product_inactive`", body = ErrorBody)))]
pub async fn create_order(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OrderBody>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let app = app_for_customer(
        &s,
        &caller,
        &app,
        &user,
        &headers,
        &[Scope::Customers, Scope::Purchases],
    )
    .await?;
    let ids = body
        .product_ids
        .iter()
        .map(|p| parse_product(p))
        .collect::<Result<Vec<_>, _>>()?;
    let order =
        customers::create_order(&s.cx.db, &app, &user, ids, body.country, s.clock.now()).await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(OrderAnswer {
            order_id: order.id,
            app_account_token: order.app_account_token,
            obfuscated_account_id: order.obfuscated_account_id,
            items: order.items,
            country: order.country,
            created_at: order.created_at,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    #[serde(default)]
    entitlement_id: Option<String>,
    #[serde(default)]
    product_id: Option<String>,
    reason: String,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

/// Grants an entitlement or a product by hand, with a reason.
#[utoipa::path(post, path = "/v1/apps/{app}/customers/{app_user_id}/grants", tag = "customers", params(("app" = gateway_core::AppId, Path), ("app_user_id" = gateway_core::AppUserId, Path)), request_body = GrantBody,
    responses((status = 201, description = "The snapshot after the grant", body = Snapshot), (status = 404, description = "`product_not_found`", body = ErrorBody), (status = 422, description = "`invalid_expires_at`: `expires_at` is not in the future", body = ErrorBody)))]
pub async fn grant(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<GrantBody>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    let target = match (body.entitlement_id, body.product_id) {
        (Some(e), None) => customers::GrantTarget::Entitlement(parse_entitlement(&e)?),
        (None, Some(p)) => customers::GrantTarget::Product(parse_product(&p)?),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_grant",
                "Name exactly one of `entitlement_id` and `product_id`.",
            ));
        }
    };
    let grant = customers::Grant {
        target,
        reason: body.reason,
        expires_at: body.expires_at,
        idempotency_key: idempotency_key(&headers),
    };
    let snap = customers::grant(&s.cx, &app, &user, grant, caller.id(), s.clock.now()).await?;
    Ok((StatusCode::CREATED, ApiJson(snap)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: String,
}

/// Revokes an entitlement by hand, with a reason.
#[utoipa::path(delete, path = "/v1/apps/{app}/customers/{app_user_id}/grants/{entitlement_id}", tag = "customers",
    params(("app" = gateway_core::AppId, Path), ("app_user_id" = gateway_core::AppUserId, Path), ("entitlement_id" = gateway_core::EntitlementId, Path)), request_body = ReasonBody,
    responses((status = 200, description = "The snapshot after the revoke", body = Snapshot), (status = 404, description = "`entitlement_not_found`", body = ErrorBody)))]
pub async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user, ent)): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ReasonBody>,
) -> ApiResult<impl IntoResponse> {
    let (user, ent) = (parse_user(&user)?, parse_entitlement(&ent)?);
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    let revoke = customers::Revoke {
        entitlement_id: ent,
        reason: body.reason,
        idempotency_key: idempotency_key(&headers),
    };
    let snap = customers::revoke(&s.cx, &app, &user, revoke, caller.id(), s.clock.now()).await?;
    Ok(ApiJson(snap))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendBody {
    amount: i64,
    reason: String,
}

/// Spends from a consumable balance; needs `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/apps/{app}/customers/{app_user_id}/balances/{currency}/spend", tag = "customers",
    params(("app" = gateway_core::AppId, Path), ("app_user_id" = gateway_core::AppUserId, Path), ("currency" = gateway_core::Currency, Path), ("Idempotency-Key" = String, Header, description = "Required: a retry with the same key spends nothing more")),
    request_body = SpendBody,
    responses((status = 200, body = Spent), (status = 409, description = "`insufficient_balance`", body = ErrorBody)))]
pub async fn spend(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user, currency)): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SpendBody>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    let currency = Currency::parse(currency).map_err(|e| {
        ApiError::bad_request(
            "invalid_currency",
            format!("The currency in the path is not valid: {e}."),
        )
    })?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "idempotency_key_required",
                "A spend needs an `Idempotency-Key` header, so that a retry never spends twice.",
            )
        })?;
    let spent = customers::spend(
        &s.cx.db,
        &app,
        &user,
        currency,
        body.amount,
        &body.reason,
        key,
        caller.id(),
        s.clock.now(),
    )
    .await?;
    Ok(ApiJson(spent))
}

/// Where an event stream starts.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The version the caller has: the first event is the first newer snapshot. Without it (and
    /// without `Last-Event-ID`), the stream starts with the current snapshot.
    after_version: Option<i64>,
}

/// Server-sent events: an event `snapshot` (its `id` is the version) each time the customer's
/// snapshot changes, from the moment it is committed; comments keep the connection alive. A client
/// that reconnects with `Last-Event-ID` gets only what is newer. When the key is revoked or the
/// customer token expires, a last event `error` (the error body, code `key_revoked` or
/// `customer_token_expired`) ends the stream.
#[utoipa::path(get, path = "/v1/apps/{app}/customers/{app_user_id}/events", tag = "customers", params(("app" = gateway_core::AppId, Path), ("app_user_id" = gateway_core::AppUserId, Path), StreamQuery, ("X-Customer-Token" = Option<String>, Header, description = "The customer's JWT, for publishable keys of apps with `customer_auth.mode: jwt`")),
    responses((status = 200, description = "`text/event-stream` of `snapshot` events", content_type = "text/event-stream")))]
pub async fn events(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let user = parse_user(&user)?;
    let (found, credentials) = app_for_open_read(&s, &caller, &app, &user, &headers, READ).await?;
    let last_event = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = last_event.or(q.after_version).unwrap_or(-1);
    let stopping = s.shutdown.clone().cancelled_owned();
    let state = (s, found.id, user, credentials, after);
    let stream = futures_util::stream::unfold(Some(state), |state| async move {
        let (s, app, user, credentials, after) = state?;
        loop {
            let snap = customers::snapshot_after(
                &s.cx,
                &app,
                &user,
                after,
                customers::MAX_WAIT,
                s.clock.as_ref(),
                &credentials,
            )
            .await;
            match snap {
                Ok(snap) if snap.version > after => {
                    let version = snap.version;
                    let event = Event::default()
                        .event("snapshot")
                        .id(version.to_string())
                        .json_data(&snap)
                        .unwrap_or_else(|_| Event::default().event("error"));
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        Some((s, app, user, credentials, version)),
                    ));
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::info!(error = %e, "an event stream ends on an error");
                    // The last event says why, in the error shape (an internal error is logged
                    // and not told).
                    let body = ApiError::from(e).body();
                    let event = Event::default()
                        .event("error")
                        .json_data(&body)
                        .unwrap_or_else(|_| Event::default().event("error"));
                    return Some((Ok(event), None));
                }
            }
        }
    });
    // The stream ends when the server begins to stop; the client reconnects with Last-Event-ID.
    let stream = futures_util::StreamExt::take_until(stream, stopping);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))))
}
