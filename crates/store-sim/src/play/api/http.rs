//! The Play Developer API's HTTP surface: the router, the call log, the admission every call goes
//! through (bearer token, package, injected faults, Google's time-driven changes), request parsing
//! and the handlers. The records and errors are in `mod.rs`, the purchases in the books.

use std::{collections::HashSet, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

use super::{Acknowledgement, ApiCall, GoogleError, ProductKind, RefundReview};
use crate::play::{
    PlaySim,
    auth::Denied,
    books::{
        self, CancelledBy, DAY_MS, OneTimeState, OrderState, SubState, VoidedReason, VoidedSource,
    },
    lock,
    push::Rtdn,
    store::Change,
};

/// How far back `voidedpurchases.list` reaches: 30 days.
const VOIDED_REACH_MS: i64 = 30 * DAY_MS;
/// `voidedpurchases.list`'s default and largest page.
const VOIDED_MAX_RESULTS: usize = 1000;
/// The most order ids one `orders:batchGet` takes.
const BATCH_GET_MAX: usize = 1000;

impl IntoResponse for GoogleError {
    fn into_response(self) -> Response {
        let error = *self.0;
        let mut detail = Map::new();
        detail.insert(
            "message".into(),
            error.detail.unwrap_or(error.message.as_str()).into(),
        );
        detail.insert("domain".into(), error.domain.into());
        detail.insert("reason".into(), error.reason.into());
        if let Some((location, kind)) = error.location {
            detail.insert("location".into(), location.into());
            detail.insert("locationType".into(), kind.into());
        }
        let body = json!({"error": {"code": error.code, "message": error.message,
            "errors": [detail], "status": error.status}});
        let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, Json(body)).into_response();
        if let Some(r) = error
            .retry_after
            .and_then(|r| HeaderValue::from_str(&r).ok())
        {
            res.headers_mut().insert(header::RETRY_AFTER, r);
        }
        res
    }
}

/// What the handlers answer: a response, or Google's error.
type Answer = Result<Response, GoogleError>;

/// `/androidpublisher/v3/applications/{packageName}/<rest>`.
fn route(rest: &str) -> String {
    format!("/androidpublisher/v3/applications/{{package}}/{rest}")
}

impl PlaySim {
    pub(in crate::play) fn api_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                &route("purchases/productsv2/tokens/{token}"),
                get(product_v2),
            )
            .route(
                &route("purchases/products/{product}/tokens/{token}"),
                get(product_v1).post(product_method),
            )
            .route(
                &route("purchases/subscriptions/{subscription}/tokens/{token}"),
                axum::routing::post(subscription_method),
            )
            .route(
                &route("purchases/subscriptionsv2/tokens/{token}"),
                get(subscription_v2).post(subscription_v2_method),
            )
            .route(&route("purchases/voidedpurchases"), get(voided_purchases))
            .route(&route("orders:batchGet"), get(orders_batch_get))
            .route(&route("orders/{order}"), get(order).post(order_method))
            .layer(middleware::from_fn_with_state(self.clone(), log_call))
            .with_state(self.clone())
    }

    /// Records one API call with the status it was answered.
    fn log(&self, method: &str, path: &str, query: Option<&str>, status: u16) {
        lock(&self.api.calls).push(ApiCall {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            status,
            at_ms: self.now(),
        });
    }

    /// Checks a call's bearer token and package and applies injected faults, as Google does
    /// (authentication first); then lets Google's time-driven changes happen (their RTDNs go out
    /// in the background).
    fn admit(self: &Arc<Self>, headers: &HeaderMap, package: &str) -> Result<(), GoogleError> {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let issued = self
            .auth
            .authenticate(authorization, self.now())
            .map_err(|denied| match denied {
                Denied::Missing => GoogleError::login_required(),
                Denied::Invalid => GoogleError::invalid_credentials(),
                Denied::Scope => GoogleError::insufficient_scopes(),
            })?;
        if !self.package_exists(package) {
            return Err(GoogleError::application_not_found());
        }
        if !self.has_grant(package, &issued.client_email) {
            return Err(GoogleError::permission_denied());
        }
        if let Some(fault) = self.take_fault() {
            return Err(fault);
        }
        let changes = self.sweep();
        self.spawn_push(changes);
        Ok(())
    }
}

/// The answer for a path the simulator does not have (the whole router's fallback): Google's
/// envelope under `/androidpublisher/`, logged as an API call; a bare 404 elsewhere.
pub(in crate::play) async fn fallback(sim: Arc<PlaySim>, req: Request) -> Response {
    let status = StatusCode::NOT_FOUND.as_u16();
    if req.uri().path().starts_with("/androidpublisher/") {
        sim.log(
            req.method().as_str(),
            req.uri().path(),
            req.uri().query(),
            status,
        );
        return GoogleError::not_found().into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

async fn log_call(State(sim): State<Arc<PlaySim>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let res = next.run(req).await;
    sim.log(&method, &path, query.as_deref(), res.status().as_u16());
    res
}

/// Splits `{token}:{method}` (custom methods ride on the last path segment).
fn custom_method(segment: &str) -> Result<(&str, &str), GoogleError> {
    segment
        .rsplit_once(':')
        .filter(|(token, _)| !token.is_empty())
        .ok_or_else(GoogleError::not_found)
}

/// A JSON request body; an empty body is `{}`.
fn json_body(bytes: &[u8]) -> Result<Value, GoogleError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| GoogleError::bad_request("Invalid JSON payload received."))
}

fn optional_string(body: &Value, field: &str) -> Result<Option<String>, GoogleError> {
    match &body[field] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(GoogleError::bad_request(&format!(
            "Invalid value at '{field}': expected a string."
        ))),
    }
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

async fn product_v2(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path((package, token)): Path<(String, String)>,
) -> Answer {
    sim.admit(&headers, &package)?;
    if lock(&sim.api.v1_only).contains(&token) {
        return Err(GoogleError::invalid_token());
    }
    let books = lock(&sim.books);
    let p = books
        .one_time
        .get(&token)
        .filter(|p| p.package == package)
        .ok_or_else(GoogleError::invalid_token)?;
    Ok(Json(p.v2_json()).into_response())
}

async fn product_v1(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path((package, product, token)): Path<(String, String, String)>,
) -> Answer {
    sim.admit(&headers, &package)?;
    let books = lock(&sim.books);
    let p = books
        .one_time
        .get(&token)
        .filter(|p| p.package == package && p.product_id == product)
        .ok_or_else(GoogleError::invalid_token)?;
    Ok(Json(p.v1_json()).into_response())
}

/// `purchases.products.acknowledge` and `.consume`.
async fn product_method(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path((package, product, segment)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let (token, method) = custom_method(&segment)?;
    if !matches!(method, "acknowledge" | "consume") {
        return Err(GoogleError::not_found());
    }
    sim.admit(&headers, &package)?;
    let body = json_body(&bytes)?;
    let now = sim.now();
    let mut books = lock(&sim.books);
    let p = books
        .one_time
        .get_mut(token)
        .filter(|p| p.package == package && p.product_id == product)
        .ok_or_else(GoogleError::invalid_token)?;
    if p.state != OneTimeState::Purchased {
        return Err(GoogleError::invalid_purchase_state());
    }
    if method == "consume" {
        if p.consumed {
            return Err(GoogleError::invalid_purchase_state());
        }
        // Consuming a purchase acknowledges it too.
        p.consumed = true;
        p.acknowledged = true;
        return Ok(no_content());
    }
    if p.acknowledged {
        return Err(GoogleError::invalid_purchase_state());
    }
    let payload = optional_string(&body, "developerPayload")?;
    p.acknowledged = true;
    p.developer_payload.clone_from(&payload);
    lock(&sim.api.acknowledgements).push(Acknowledgement {
        purchase_token: token.to_owned(),
        kind: ProductKind::OneTime,
        developer_payload: payload,
        obfuscated_account_id: None,
        obfuscated_profile_id: None,
        at_ms: now,
    });
    Ok(no_content())
}

/// `purchases.subscriptions.acknowledge` (`subscriptionId` is no longer required to match, as
/// Google says since 2025-05-21); `:cancel` and `:defer` are deprecated and not simulated.
async fn subscription_method(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path((package, _subscription, segment)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let (token, method) = custom_method(&segment)?;
    match method {
        "acknowledge" => {}
        "cancel" | "defer" => {
            return Err(GoogleError::unimplemented(&format!(
                "purchases.subscriptions.{method}"
            )));
        }
        _ => return Err(GoogleError::not_found()),
    }
    sim.admit(&headers, &package)?;
    let body = json_body(&bytes)?;
    let payload = optional_string(&body, "developerPayload")?;
    let ids = &body["externalAccountIds"];
    if !ids.is_null() && !ids.is_object() {
        return Err(GoogleError::bad_request(
            "Invalid value at 'externalAccountIds': expected an object.",
        ));
    }
    let account = optional_string(ids, "obfuscatedAccountId")?;
    let profile = optional_string(ids, "obfuscatedProfileId")?;
    let now = sim.now();
    let mut books = lock(&sim.books);
    let s = books
        .subs
        .get_mut(token)
        .filter(|s| s.package == package)
        .ok_or_else(GoogleError::invalid_token)?;
    if s.gone(now) {
        return Err(GoogleError::subscription_gone());
    }
    if s.acknowledged
        || matches!(
            s.state,
            SubState::Pending | SubState::PendingPurchaseCanceled | SubState::Expired
        )
    {
        return Err(GoogleError::invalid_purchase_state());
    }
    s.acknowledged = true;
    s.developer_payload.clone_from(&payload);
    // Google drops the out-of-app context once the purchase is acknowledged.
    s.out_of_app = None;
    if account.is_some() {
        s.account_id.clone_from(&account);
    }
    if profile.is_some() {
        s.profile_id.clone_from(&profile);
    }
    s.version += 1;
    lock(&sim.api.acknowledgements).push(Acknowledgement {
        purchase_token: token.to_owned(),
        kind: ProductKind::Subscription,
        developer_payload: payload,
        obfuscated_account_id: account,
        obfuscated_profile_id: profile,
        at_ms: now,
    });
    Ok(no_content())
}

async fn subscription_v2(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path((package, token)): Path<(String, String)>,
) -> Answer {
    sim.admit(&headers, &package)?;
    let now = sim.now();
    let books = lock(&sim.books);
    let s = books
        .subs
        .get(&token)
        .filter(|s| s.package == package)
        .ok_or_else(GoogleError::invalid_token)?;
    if s.gone(now) {
        return Err(GoogleError::subscription_gone());
    }
    Ok(Json(s.v2_json()).into_response())
}

/// `purchases.subscriptionsv2.revoke`; `:cancel` and `:defer` are not simulated.
async fn subscription_v2_method(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path((package, segment)): Path<(String, String)>,
    bytes: Bytes,
) -> Answer {
    let (token, method) = custom_method(&segment)?;
    match method {
        "revoke" => {}
        "cancel" | "defer" => {
            return Err(GoogleError::unimplemented(&format!(
                "purchases.subscriptionsv2.{method}"
            )));
        }
        _ => return Err(GoogleError::not_found()),
    }
    sim.admit(&headers, &package)?;
    let body = json_body(&bytes)?;
    let context = &body["revocationContext"];
    let kinds: Vec<&str> = ["fullRefund", "proratedRefund", "itemBasedRefund"]
        .into_iter()
        .filter(|k| context[*k].is_object())
        .collect();
    if kinds.len() != 1 {
        return Err(GoogleError::bad_request(
            "revocationContext must set exactly one of fullRefund, proratedRefund or itemBasedRefund.",
        ));
    }
    let now = sim.now();
    let change = {
        let mut books = lock(&sim.books);
        let s = books
            .subs
            .get(token)
            .filter(|s| s.package == package)
            .ok_or_else(GoogleError::invalid_token)?;
        if s.gone(now) {
            return Err(GoogleError::subscription_gone());
        }
        if kinds[0] == "itemBasedRefund"
            && context["itemBasedRefund"]["productId"].as_str() != Some(s.product_id.as_str())
        {
            return Err(GoogleError::bad_request(
                "itemBasedRefund.productId does not name an item of the subscription.",
            ));
        }
        if !matches!(
            s.state,
            SubState::Active
                | SubState::Canceled
                | SubState::InGracePeriod
                | SubState::OnHold
                | SubState::Paused
        ) {
            return Err(GoogleError::invalid_purchase_state());
        }
        let order_id = books
            .void_subscription(
                token,
                VoidedSource::Developer,
                VoidedReason::Other,
                CancelledBy::Developer,
                now,
            )
            .map_err(|_| GoogleError::invalid_purchase_state())?;
        let rtdn = Rtdn::Subscription {
            notification_type: 12,
            token: token.to_owned(),
        };
        Change::new(&package, Some(rtdn), token, Some(order_id))
    };
    sim.spawn_push(vec![change]);
    Ok(Json(json!({})).into_response())
}

/// The window and position a `voidedpurchases.list` page token carries.
struct VoidedCursor {
    start: i64,
    end: i64,
    offset: usize,
}

impl VoidedCursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}:{}", self.start, self.end, self.offset))
    }

    fn decode(token: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let mut parts = text.split(':');
        let cursor = Self {
            start: parts.next()?.parse().ok()?,
            end: parts.next()?.parse().ok()?,
            offset: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(cursor)
    }
}

/// `purchases.voidedpurchases.list`: voids recorded in `[startTime, endTime]` (by when Google
/// recorded them; the window a page token carries when one is given), one-time purchases only
/// unless `type=1`, quantity-based partial refunds only with
/// `includeQuantityBasedPartialRefund=true`, oldest first, `maxResults` a page.
async fn voided_purchases(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path(package): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Answer {
    sim.admit(&headers, &package)?;
    let invalid = |name: &str| GoogleError::bad_request(&format!("Invalid value for {name}."));
    let (mut start, mut end, mut max, mut token) = (None, None, VOIDED_MAX_RESULTS, None);
    let (mut with_subscriptions, mut with_partial) = (false, false);
    for (k, v) in &pairs {
        match k.as_str() {
            "startTime" => start = Some(v.parse::<i64>().map_err(|_| invalid("startTime"))?),
            "endTime" => end = Some(v.parse::<i64>().map_err(|_| invalid("endTime"))?),
            "maxResults" => {
                let n: usize = v.parse().map_err(|_| invalid("maxResults"))?;
                max = n.clamp(1, VOIDED_MAX_RESULTS);
            }
            "token" => token = Some(v.clone()),
            "type" => {
                with_subscriptions = match v.as_str() {
                    "0" => false,
                    "1" => true,
                    _ => return Err(invalid("type")),
                }
            }
            "includeQuantityBasedPartialRefund" => {
                with_partial = match v.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid("includeQuantityBasedPartialRefund")),
                }
            }
            _ => {}
        }
    }
    let now = sim.now();
    let cursor = match token {
        Some(t) => VoidedCursor::decode(&t).ok_or_else(|| invalid("token"))?,
        None => {
            // Google reaches back 30 days and not past now; a window outside is clamped.
            let start = start
                .unwrap_or(now - VOIDED_REACH_MS)
                .max(now - VOIDED_REACH_MS);
            let end = end.unwrap_or(now).min(now);
            if start > end {
                return Err(GoogleError::bad_request(
                    "startTime must not be later than endTime.",
                ));
            }
            VoidedCursor {
                start,
                end,
                offset: 0,
            }
        }
    };
    let items: Vec<Value> = lock(&sim.books)
        .voids
        .iter()
        .filter(|v| {
            v.package == package
                && (cursor.start..=cursor.end).contains(&v.recorded_ms)
                && (with_subscriptions || !v.subscription)
                && (with_partial || v.quantity.is_none())
        })
        .map(books::Void::json)
        .collect();
    let from = cursor.offset.min(items.len());
    let to = from.saturating_add(max).min(items.len());
    let page = &items[from..to];
    let mut body = Map::new();
    if !page.is_empty() {
        body.insert("voidedPurchases".into(), page.to_vec().into());
    }
    body.insert(
        "pageInfo".into(),
        json!({"totalResults": items.len(), "resultPerPage": page.len(), "startIndex": from}),
    );
    if to < items.len() {
        let next = VoidedCursor {
            offset: to,
            ..cursor
        };
        body.insert(
            "tokenPagination".into(),
            json!({"nextPageToken": next.encode()}),
        );
    }
    Ok(Json(Value::Object(body)).into_response())
}

async fn order(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path((package, order_id)): Path<(String, String)>,
) -> Answer {
    sim.admit(&headers, &package)?;
    let books = lock(&sim.books);
    let order = books
        .orders
        .get(&order_id)
        .filter(|o| o.package == package)
        .ok_or_else(|| GoogleError::order_not_found(&order_id))?;
    Ok(Json(order.json()).into_response())
}

/// `orders.batchget`: 1 to 1000 distinct ids; one unknown id fails the whole call.
async fn orders_batch_get(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path(package): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Answer {
    sim.admit(&headers, &package)?;
    let ids: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "orderIds")
        .map(|(_, v)| v.as_str())
        .collect();
    if ids.is_empty() || ids.len() > BATCH_GET_MAX {
        return Err(GoogleError::bad_request(
            "orderIds must name between 1 and 1000 orders.",
        ));
    }
    if ids.iter().collect::<HashSet<_>>().len() != ids.len() {
        return Err(GoogleError::bad_request("The order IDs must be distinct."));
    }
    let books = lock(&sim.books);
    let mut orders = Vec::with_capacity(ids.len());
    for id in ids {
        let order = books
            .orders
            .get(id)
            .filter(|o| o.package == package)
            .ok_or_else(|| GoogleError::order_not_found(id))?;
        orders.push(order.json());
    }
    Ok(Json(json!({"orders": orders})).into_response())
}

/// `orders.refund` and `orders.reviewrefund`.
async fn order_method(
    State(sim): State<Arc<PlaySim>>,
    headers: HeaderMap,
    Path((package, segment)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
    bytes: Bytes,
) -> Answer {
    let (order_id, method) = custom_method(&segment)?;
    if !matches!(method, "refund" | "reviewrefund") {
        return Err(GoogleError::not_found());
    }
    sim.admit(&headers, &package)?;
    let exists = lock(&sim.books)
        .orders
        .get(order_id)
        .is_some_and(|o| o.package == package);
    if !exists {
        return Err(GoogleError::order_not_found(order_id));
    }
    if method == "reviewrefund" {
        return review_refund(&sim, order_id, &bytes);
    }
    let revoke = pairs
        .iter()
        .any(|(k, v)| k == "revoke" && v.eq_ignore_ascii_case("true"));
    refund_order(&sim, &package, order_id, revoke)
}

/// `orders.refund`: without `revoke` the order is refunded and access stays (and nothing is
/// listed as voided); with it, the purchase is voided and revoked as by the developer.
fn refund_order(sim: &Arc<PlaySim>, package: &str, order_id: &str, revoke: bool) -> Answer {
    let now = sim.now();
    let change = {
        let mut books = lock(&sim.books);
        let Some(order) = books.orders.get_mut(order_id) else {
            return Err(GoogleError::order_not_found(order_id));
        };
        if !matches!(
            order.state,
            OrderState::Processed | OrderState::PartiallyRefunded
        ) {
            return Err(GoogleError::invalid_purchase_state());
        }
        if !revoke {
            order.state = OrderState::Refunded;
            order.last_event_ms = now;
            order.refund = Some((now, "OTHER", order.total_micros));
            return Ok(no_content());
        }
        let token = order.token.clone();
        if books.one_time.contains_key(&token) {
            let voided = books
                .void_one_time(
                    &token,
                    None,
                    VoidedSource::Developer,
                    VoidedReason::Other,
                    now,
                )
                .map_err(|_| GoogleError::invalid_purchase_state())?;
            Change::new(package, Some(voided.rtdn), &token, Some(voided.order_id))
        } else {
            let latest = books
                .subs
                .get(&token)
                .and_then(|s| s.orders.last().cloned());
            if latest.as_deref() != Some(order_id) {
                return Err(GoogleError::invalid_purchase_state());
            }
            let voided = books
                .void_subscription(
                    &token,
                    VoidedSource::Developer,
                    VoidedReason::Other,
                    CancelledBy::Developer,
                    now,
                )
                .map_err(|_| GoogleError::invalid_purchase_state())?;
            let rtdn = Rtdn::Voided {
                token: token.clone(),
                order_id: voided.clone(),
                product_type: 1,
                refund_type: 1,
            };
            Change::new(package, Some(rtdn), &token, Some(voided))
        }
    };
    sim.spawn_push(vec![change]);
    Ok(no_content())
}

/// `orders.reviewrefund` (`OrdersReviewRefundRequest`): Google records the first answer to a
/// pending refund review and ignores later ones, still answering OK.
fn review_refund(sim: &PlaySim, order_id: &str, bytes: &[u8]) -> Answer {
    let body = json_body(bytes)?;
    let Some(pending) = body["pendingRefundToken"]
        .as_str()
        .filter(|t| !t.is_empty())
    else {
        return Err(GoogleError::bad_request("pendingRefundToken is required."));
    };
    let Some(sample) = body["sampleContentProvided"].as_bool() else {
        return Err(GoogleError::bad_request(
            "sampleContentProvided is required.",
        ));
    };
    let preference = body["refundPreference"].as_str().unwrap_or_default();
    if !["DECLINE", "APPROVE", "NEUTRAL"].contains(&preference) {
        return Err(GoogleError::bad_request(
            "refundPreference is required: DECLINE, APPROVE or NEUTRAL.",
        ));
    }
    let percentage = match &body["consumptionPercentageMilliunits"] {
        Value::Null => None,
        v => match v.as_i64() {
            Some(n) if (0..=100_000).contains(&n) => Some(n),
            _ => {
                return Err(GoogleError::bad_request(
                    "consumptionPercentageMilliunits must be between 0 and 100000.",
                ));
            }
        },
    };
    match &body["consumptionUsageEvents"] {
        Value::Null => {}
        Value::Array(events) if events.len() <= 1000 => {}
        _ => {
            return Err(GoogleError::bad_request(
                "consumptionUsageEvents must be a list of at most 1000 events.",
            ));
        }
    }
    let expected = lock(&sim.books)
        .orders
        .get(order_id)
        .and_then(|o| o.pending_refund_token.clone());
    if expected.as_deref() != Some(pending) {
        return Err(GoogleError::bad_request(
            "The pending refund token is not valid for this order.",
        ));
    }
    let mut reviews = lock(&sim.api.reviews);
    if reviews.iter().any(|r| r.pending_refund_token == pending) {
        *lock(&sim.api.ignored_reviews) += 1;
    } else {
        reviews.push(RefundReview {
            order_id: order_id.to_owned(),
            pending_refund_token: pending.to_owned(),
            sample_content_provided: sample,
            refund_preference: preference.to_owned(),
            consumption_percentage_milliunits: percentage,
            body: body.clone(),
            at_ms: sim.now(),
        });
    }
    Ok(Json(json!({})).into_response())
}
