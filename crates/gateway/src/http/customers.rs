//! `/v1/apps/{app}/customers/{app_user_id}`: snapshot, offerings, timeline, orders, manual grants and
//! revokes, spending.

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
};
use gateway_core::{Currency, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Access, AppState, app_for,
    auth::{Caller, customer_access},
    error::{ApiError, ApiJson, ApiResult},
    parse_entitlement, parse_product, parse_user,
};
use crate::{model::Scope, service::customers};

const READ: &[Scope] = &[Scope::Customers, Scope::Read];
const WRITE: &[Scope] = &[Scope::Customers];

fn snapshot_json(s: customers::Snapshot) -> Value {
    json!({
        "app_user_id": s.app_user_id,
        "version": s.version,
        "entitlements": s.entitlements,
        "purchases": s.purchases,
        "balances": s.balances,
        // Signed entitlement tokens come with the fulfilment work; until then the field is null.
        "entitlement_token": null,
    })
}

/// The customer snapshot.
#[utoipa::path(get, path = "/v1/apps/{app}/customers/{app_user_id}", tag = "customers", params(("app" = String, Path), ("app_user_id" = String, Path)),
    responses((status = 200, description = "`{app_user_id, version, entitlements, purchases, balances, entitlement_token}`; a customer never seen has version 0", body = serde_json::Value)))]
pub async fn get_customer(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let found = app_for(&s, &caller, &app, Access::ScopesOrPublishable(READ)).await?;
    customer_access(&s, &caller, &found, &user, &headers).await?;
    let app = found.id.clone();
    Ok(ApiJson(snapshot_json(
        customers::snapshot(&s.db, &app, &user, s.clock.now()).await?,
    )))
}

/// The active products this customer may buy now, with their store SKUs.
#[utoipa::path(get, path = "/v1/apps/{app}/customers/{app_user_id}/offerings", tag = "customers", params(("app" = String, Path), ("app_user_id" = String, Path)), responses((status = 200, description = "`{products: [...]}`", body = serde_json::Value)))]
pub async fn offerings(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let found = app_for(&s, &caller, &app, Access::ScopesOrPublishable(READ)).await?;
    customer_access(&s, &caller, &found, &user, &headers).await?;
    let app = found.id.clone();
    let products = customers::offerings(&s.db, &app, &user, s.clock.now()).await?;
    Ok(ApiJson(json!({ "products": products })))
}

#[derive(Debug, Deserialize)]
pub struct TimelineQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

/// The customer's audit trail, newest first; page with `before` = the last `seq` seen.
#[utoipa::path(get, path = "/v1/apps/{app}/customers/{app_user_id}/timeline", tag = "customers",
    params(("app" = String, Path), ("app_user_id" = String, Path), ("limit" = Option<i64>, Query), ("before" = Option<i64>, Query)),
    responses((status = 200, description = "`{events: [{seq, at, kind, cause, detail, hash}]}`", body = serde_json::Value)))]
pub async fn timeline(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    Query(q): Query<TimelineQuery>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let app = app_for(&s, &caller, &app, Access::Scopes(READ)).await?.id;
    let rows = customers::timeline(&s.db, &app, &user, q.before, q.limit.unwrap_or(100)).await?;
    Ok(ApiJson(json!({ "events": rows })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    product_ids: Vec<String>,
    #[serde(default)]
    country: Option<String>,
}

/// Starts an order and issues `app_account_token` (Apple) and `obfuscated_account_id` (Play).
#[utoipa::path(post, path = "/v1/apps/{app}/customers/{app_user_id}/orders", tag = "customers", params(("app" = String, Path), ("app_user_id" = String, Path)),
    request_body(content = serde_json::Value, description = "`{product_ids, country?}`"),
    responses((status = 201, description = "`{order_id, app_account_token, obfuscated_account_id, items}`", body = serde_json::Value), (status = 403, description = "`embargoed`")))]
pub async fn create_order(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OrderBody>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let app = app_for(
        &s,
        &caller,
        &app,
        Access::ScopesOrPublishable(&[Scope::Customers, Scope::Purchases]),
    )
    .await?;
    customer_access(&s, &caller, &app, &user, &headers).await?;
    let ids = body
        .product_ids
        .iter()
        .map(|p| parse_product(p))
        .collect::<Result<Vec<_>, _>>()?;
    let order =
        customers::create_order(&s.db, &app, &user, ids, body.country, s.clock.now()).await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(json!({
            "order_id": order.id,
            "app_account_token": order.app_account_token,
            "obfuscated_account_id": order.obfuscated_account_id,
            "items": order.items,
            "country": order.country,
            "created_at": order.created_at,
        })),
    ))
}

#[derive(Debug, Deserialize)]
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
#[utoipa::path(post, path = "/v1/apps/{app}/customers/{app_user_id}/grants", tag = "customers", params(("app" = String, Path), ("app_user_id" = String, Path)),
    request_body(content = serde_json::Value, description = "`{entitlement_id or product_id, reason, expires_at?}`"), responses((status = 201, description = "The snapshot after the grant", body = serde_json::Value)))]
pub async fn grant(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
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
    };
    let snap = customers::grant(&s.db, &app, &user, grant, caller.id(), s.clock.now()).await?;
    Ok((StatusCode::CREATED, ApiJson(snapshot_json(snap))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: String,
}

/// Revokes an entitlement by hand, with a reason.
#[utoipa::path(delete, path = "/v1/apps/{app}/customers/{app_user_id}/grants/{entitlement_id}", tag = "customers",
    params(("app" = String, Path), ("app_user_id" = String, Path), ("entitlement_id" = String, Path)),
    request_body(content = serde_json::Value, description = "`{reason}`"), responses((status = 200, description = "The snapshot after the revoke", body = serde_json::Value), (status = 404, description = "`entitlement_not_found`")))]
pub async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user, ent)): Path<(String, String, String)>,
    ApiJson(body): ApiJson<ReasonBody>,
) -> ApiResult<impl IntoResponse> {
    let (user, ent) = (parse_user(&user)?, parse_entitlement(&ent)?);
    let app = app_for(&s, &caller, &app, Access::Scopes(WRITE)).await?.id;
    let snap = customers::revoke(
        &s.db,
        &app,
        &user,
        ent,
        &body.reason,
        caller.id(),
        s.clock.now(),
    )
    .await?;
    Ok(ApiJson(snapshot_json(snap)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendBody {
    amount: i64,
    reason: String,
}

/// Spends from a consumable balance; needs `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/apps/{app}/customers/{app_user_id}/balances/{currency}/spend", tag = "customers",
    params(("app" = String, Path), ("app_user_id" = String, Path), ("currency" = String, Path), ("Idempotency-Key" = String, Header)),
    request_body(content = serde_json::Value, description = "`{amount, reason}`"),
    responses((status = 200, description = "`{transaction_id, currency, amount, balance, version}`", body = serde_json::Value), (status = 409, description = "`insufficient_balance`")))]
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
        &s.db,
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
