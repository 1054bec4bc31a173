//! The Stripe API under `/v1`, as Stripe serves it: `Authorization: Bearer sk_test_...` (or the
//! key as HTTP Basic user) on every call, form bodies, `Idempotency-Key` on POSTs (the same key
//! and parameters replay the stored answer with `Idempotent-Replayed: true`; other parameters are
//! a 400 `idempotency_error`), `Stripe-Version` echoed (the pinned version when the request names
//! none), a `Request-Id` on every answer, and Stripe's error envelope
//! `{"error": {"type", "code", "message", "param", "doc_url"}}`.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Map, Value, json};

use super::{Stored, parse_form};
use crate::stripe::{API_VERSION, StripeError, StripeSim, lock, new_id, webhooks};

/// Stripe's error envelope for `e`.
pub(in crate::stripe) fn envelope(e: &StripeError) -> Value {
    let (code, param) = match e {
        StripeError::NoSuch { param, .. } => (Some("resource_missing"), param.clone()),
        StripeError::Invalid { code, param, .. } => (*code, param.clone()),
        StripeError::InvalidState(_) | StripeError::UnknownEndpoint(_) => (None, None),
    };
    let mut error = Map::new();
    error.insert("type".into(), "invalid_request_error".into());
    if let Some(code) = code {
        error.insert("code".into(), code.into());
        error.insert(
            "doc_url".into(),
            format!(
                "https://stripe.com/docs/error-codes/{}",
                code.replace('_', "-")
            )
            .into(),
        );
    }
    error.insert("message".into(), e.to_string().into());
    if let Some(param) = param {
        error.insert("param".into(), param.into());
    }
    json!({ "error": error })
}

/// The status of a Stripe error answer: 404 for a missing object named by the path, 400
/// otherwise.
fn status_of(e: &StripeError) -> StatusCode {
    match e {
        StripeError::NoSuch { param: None, .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn refuse(e: &StripeError) -> Response {
    (status_of(e), Json(envelope(e))).into_response()
}

/// 401 with Stripe's words for a missing or wrong key.
fn unauthorized(given: Option<&str>) -> Response {
    let message = match given {
        None | Some("") => "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.".to_owned(),
        // Stripe shows the key's first 8 and last 4 characters, starring the rest.
        Some(key) if key.len() > 12 && key.is_ascii() => format!(
            "Invalid API Key provided: {}{}{}",
            &key[..8],
            "*".repeat(key.len() - 12),
            &key[key.len() - 4..]
        ),
        Some(_) => "Invalid API Key provided: ****".to_owned(),
    };
    let mut res = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response();
    res.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Bearer realm=\"Stripe\""),
    );
    res
}

/// The key a request presents: `Bearer <key>`, or `Basic base64(<key>:)` as curl's `-u` sends.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    if let Some(key) = value.strip_prefix("Bearer ") {
        return Some(key.trim().to_owned());
    }
    let decoded = STANDARD.decode(value.strip_prefix("Basic ")?.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or_default().to_owned())
}

/// Checks the key, and stamps `Stripe-Version` and `Request-Id` on the answer.
async fn guard(State(sim): State<Arc<StripeSim>>, req: Request, next: Next) -> Response {
    let version = req
        .headers()
        .get("stripe-version")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(API_VERSION)
        .to_owned();
    let key = presented_key(req.headers());
    let mut res = if key.as_deref() == Some(sim.secret_key.as_str()) {
        next.run(req).await
    } else {
        unauthorized(key.as_deref())
    };
    if let Ok(v) = HeaderValue::from_str(&version) {
        res.headers_mut().insert("stripe-version", v);
    }
    if let Ok(v) = HeaderValue::from_str(&new_id("req")) {
        res.headers_mut().insert("request-id", v);
    }
    res
}

impl StripeSim {
    /// The Stripe API routes (behind the key check) and the hosted checkout page.
    pub(in crate::stripe) fn api_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/customers", post(create_customer))
            .route("/v1/customers/{id}", get(get_object))
            .route("/v1/checkout/sessions", post(create_session))
            .route("/v1/checkout/sessions/{id}", get(get_object))
            .route("/v1/payment_intents/{id}", get(get_object))
            .route("/v1/charges/{id}", get(get_object))
            .route("/v1/refunds", post(create_refund))
            .route("/v1/refunds/{id}", get(get_object))
            .route("/v1/disputes/{id}", get(get_object))
            .route(
                "/v1/subscriptions/{id}",
                get(get_object).delete(cancel_subscription),
            )
            .route("/v1/invoices/{id}", get(get_object))
            .route("/v1/prices/{id}", get(get_price))
            .route("/v1/invoice_payments", get(list_invoice_payments))
            .route("/v1/events", get(webhooks::http::list_events))
            .route("/v1/events/{id}", get(webhooks::http::get_event))
            .route_layer(middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self.clone())
    }
}

/// Answers a POST through its idempotency key: the stored answer for a key seen with the same
/// route and parameters, a 400 `idempotency_error` for one seen with others, a 409
/// `idempotency_error` while the first request with the key still runs, else `run`'s answer (kept
/// under the key unless it is a server error).
async fn idempotent(
    sim: &StripeSim,
    headers: &HeaderMap,
    route: &str,
    params: &Value,
    run: impl Future<Output = Result<Value, StripeError>>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(key) = key else {
        return match run.await {
            Ok(v) => Json(v).into_response(),
            Err(e) => refuse(&e),
        };
    };
    let now = sim.now();
    {
        let mut stored = lock(&sim.api.idempotency);
        stored.retain(|_, s| now - s.at < super::IDEMPOTENCY_SECONDS);
        if let Some(s) = stored.get(&key) {
            let refusal = |status: StatusCode, message: String| {
                let e = StripeError::Invalid {
                    message,
                    code: None,
                    param: None,
                };
                let mut body = envelope(&e);
                body["error"]["type"] = "idempotency_error".into();
                (status, Json(body)).into_response()
            };
            if s.route != route || s.params != *params {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                    ),
                );
            }
            let Some((status, body)) = &s.answer else {
                return refusal(
                    StatusCode::CONFLICT,
                    "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through). Please try again later.".into(),
                );
            };
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let mut res = (status, Json(body.clone())).into_response();
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            if let Ok(v) = HeaderValue::from_str(&key) {
                res.headers_mut().insert("idempotency-key", v);
            }
            return res;
        }
        // Marked as running, so a second request with the key does not run it again meanwhile.
        stored.insert(
            key.clone(),
            Stored {
                route: route.to_owned(),
                params: params.clone(),
                answer: None,
                at: now,
            },
        );
    }
    let (status, body) = match run.await {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => (status_of(&e), envelope(&e)),
    };
    {
        let mut stored = lock(&sim.api.idempotency);
        if status.is_server_error() {
            stored.remove(&key);
        } else if let Some(s) = stored.get_mut(&key) {
            s.answer = Some((status.as_u16(), body.clone()));
        }
    }
    let mut res = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&key) {
        res.headers_mut().insert("idempotency-key", v);
    }
    res
}

async fn create_customer(
    State(sim): State<Arc<StripeSim>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let params = match parse_form(&bytes) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let run = async { sim.create_customer(&params) };
    idempotent(&sim, &headers, "POST /v1/customers", &params, run).await
}

async fn create_session(
    State(sim): State<Arc<StripeSim>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let params = match parse_form(&bytes) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let run = async { sim.create_session(&params) };
    idempotent(&sim, &headers, "POST /v1/checkout/sessions", &params, run).await
}

/// `POST /v1/refunds`: refunds a PaymentIntent or a Charge (`amount`, or all that is left), as
/// the `refund` action does, events included; the same `Idempotency-Key` replays the refund
/// instead of refunding again.
async fn create_refund(
    State(sim): State<Arc<StripeSim>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let params = match parse_form(&bytes) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let payment = params["payment_intent"]
        .as_str()
        .or_else(|| params["charge"].as_str())
        .unwrap_or_default()
        .to_owned();
    let amount = params["amount"]
        .as_str()
        .and_then(|a| a.parse::<i64>().ok());
    let run = async {
        let outcome = sim.refund(&payment, amount).await?;
        outcome
            .refund
            .as_deref()
            .and_then(|r| sim.object(r))
            .ok_or_else(|| StripeError::InvalidState("the refund was not recorded".into()))
    };
    idempotent(&sim, &headers, "POST /v1/refunds", &params, run).await
}

/// `DELETE /v1/subscriptions/{id}`: cancels the subscription now, as the `cancel` action does.
async fn cancel_subscription(
    State(sim): State<Arc<StripeSim>>,
    Path(id): Path<String>,
) -> Response {
    match sim.cancel(&id, false).await {
        Ok(_) => match sim.object(&id) {
            Some(sub) => Json(sub).into_response(),
            None => not_found("subscription", &id),
        },
        Err(e) => refuse(&e),
    }
}

/// `GET /v1/invoice_payments?payment[type]=payment_intent&payment[payment_intent]=pi_…`: the
/// payments of invoices, by the PaymentIntent that paid them (or `invoice=` for an invoice's).
async fn list_invoice_payments(
    State(sim): State<Arc<StripeSim>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let pi = q.get("payment[payment_intent]");
    let invoice = q.get("invoice");
    let mut data: Vec<Value> = lock(&sim.books)
        .objects
        .values()
        .filter(|o| o["object"] == "invoice_payment")
        .filter(|o| pi.is_none_or(|p| o["payment"]["payment_intent"] == p.as_str()))
        .filter(|o| invoice.is_none_or(|i| o["invoice"] == i.as_str()))
        .cloned()
        .collect();
    data.sort_by_key(|o| std::cmp::Reverse(o["created"].as_i64().unwrap_or_default()));
    Json(json!({"object": "list", "url": "/v1/invoice_payments", "has_more": false, "data": data}))
        .into_response()
}

/// The kind of object a `GET /v1/<collection>/{id}` serves.
fn kind_of(uri: &axum::http::Uri) -> &'static str {
    let path = uri.path();
    [
        ("/v1/customers/", "customer"),
        ("/v1/checkout/sessions/", "checkout.session"),
        ("/v1/payment_intents/", "payment_intent"),
        ("/v1/charges/", "charge"),
        ("/v1/refunds/", "refund"),
        ("/v1/disputes/", "dispute"),
        ("/v1/subscriptions/", "subscription"),
        ("/v1/invoices/", "invoice"),
    ]
    .into_iter()
    .find(|(prefix, _)| path.starts_with(prefix))
    .map_or("object", |(_, kind)| kind)
}

async fn get_object(
    State(sim): State<Arc<StripeSim>>,
    uri: axum::http::Uri,
    Path(id): Path<String>,
) -> Response {
    let kind = kind_of(&uri);
    let found = lock(&sim.books).get(kind, &id).cloned();
    match found {
        Ok(object) => Json(object).into_response(),
        Err(_) => not_found(kind, &id),
    }
}

async fn get_price(State(sim): State<Arc<StripeSim>>, Path(id): Path<String>) -> Response {
    let found = lock(&sim.books)
        .price(&id)
        .map(crate::stripe::books::price_json);
    match found {
        Ok(price) => Json(price).into_response(),
        Err(_) => not_found("price", &id),
    }
}

/// 404 `resource_missing` with `param: "id"`, as Stripe answers a GET of an unknown id.
pub(in crate::stripe) fn not_found(kind: &'static str, id: &str) -> Response {
    let e = StripeError::NoSuch {
        kind,
        id: id.to_owned(),
        param: Some("id".into()),
    };
    (StatusCode::NOT_FOUND, Json(envelope(&e))).into_response()
}

/// Stripe's answer to a path it does not serve.
pub(in crate::stripe) async fn unrecognized(req: Request) -> Response {
    let message = format!(
        "Unrecognized request URL ({}: {}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
        req.method(),
        req.uri().path()
    );
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}
