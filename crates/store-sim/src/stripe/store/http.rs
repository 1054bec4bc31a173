//! The simulated Stripe's control surface under `/sim/stripe`, JSON in and out (errors are
//! `{"error": {"code", "message"}}` with a 4xx), and the hosted checkout page:
//!
//! - setup: `GET /sim/stripe/account` (secret key, API version, endpoints), `POST .../prices`,
//!   `POST .../webhook-endpoints` `{url}` → `{url, secret}`, `POST .../webhook-endpoints/roll`
//!   `{url}` → `{url, secret}`, `POST .../push-mode` `{"push": "send" | "skip" | {"forge":
//!   "wrong_secret" | "stale_timestamp" | "no_signature"}}`, `GET|POST .../clock`.
//! - actions, each answering an [`Outcome`]: `pay` `{session, async}`, `settle-async`
//!   `{session, succeeded}`, `expire` `{session}`, `refund` `{payment, amount?}`, `fail-refund`
//!   `{refund}`, `dispute` `{charge}`, `close-dispute` `{dispute, won}`, `renew` and
//!   `fail-renewal` `{subscription}`, `cancel` `{subscription, at_period_end}`, `thin-event`
//!   `{related_object}`, `resend` `{event, forge?}` (answers the deliveries), `tick` (expires the
//!   sessions time has passed; answers `{outcomes}`).
//! - reads: `GET .../deliveries`, `GET .../objects/{id}`.
//! - `GET /checkout/{id}`: a plain HTML page naming the product and amount, with "Pay" (POST
//!   `/checkout/{id}/pay`), "Pay later (bank transfer)" (`?async=true`) and a cancel link;
//!   paying answers 303 to `success_url` with `{CHECKOUT_SESSION_ID}` replaced, as Stripe does.

use std::sync::Arc;

use crate::control::{self, ControlError};
use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::json;

use super::{Outcome, PayMode};
use crate::stripe::{API_VERSION, Forge, Interval, Price, PushMode, StripeError, StripeSim, lock};

impl ControlError for StripeError {
    fn unfit(message: String) -> Self {
        StripeError::invalid(message)
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NoSuch { .. } => (StatusCode::NOT_FOUND, "resource_missing"),
            Self::Invalid { code, .. } => {
                (StatusCode::BAD_REQUEST, code.unwrap_or("invalid_request"))
            }
            Self::InvalidState(_) => (StatusCode::CONFLICT, "invalid_state"),
            Self::UnknownEndpoint(_) => (StatusCode::NOT_FOUND, "unknown_endpoint"),
        }
    }
}

impl IntoResponse for StripeError {
    fn into_response(self) -> Response {
        control::answer(&self)
    }
}

/// What the control handlers answer.
type Answer = Result<Response, StripeError>;

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StripeError> {
    control::body(bytes)
}

fn ok<T: serde::Serialize>(value: T) -> Answer {
    control::ok(value)
}

fn outcome(o: Outcome) -> Answer {
    ok(o)
}

/// An amount in a currency's smallest unit, as people read it (`$12.34`, `12.34 EUR`).
pub(in crate::stripe) fn money(amount: i64, currency: &str) -> String {
    let number = format!(
        "{}{}.{:02}",
        if amount < 0 { "-" } else { "" },
        amount.abs() / 100,
        amount.abs() % 100
    );
    if currency.eq_ignore_ascii_case("usd") {
        format!("${number}")
    } else {
        format!("{number} {}", currency.to_uppercase())
    }
}

impl StripeSim {
    /// The control surface and the hosted checkout page (see this module's routes).
    pub(in crate::stripe) fn control_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/sim/stripe/account", get(account))
            .route("/sim/stripe/prices", post(add_price))
            .route("/sim/stripe/webhook-endpoints", post(add_endpoint))
            .route("/sim/stripe/webhook-endpoints/roll", post(roll_secret))
            .route("/sim/stripe/push-mode", post(push_mode))
            .route("/sim/stripe/pay", post(pay))
            .route("/sim/stripe/settle-async", post(settle_async))
            .route("/sim/stripe/expire", post(expire))
            .route("/sim/stripe/refund", post(refund))
            .route("/sim/stripe/fail-refund", post(fail_refund))
            .route("/sim/stripe/dispute", post(dispute))
            .route("/sim/stripe/close-dispute", post(close_dispute))
            .route("/sim/stripe/renew", post(renew))
            .route("/sim/stripe/fail-renewal", post(fail_renewal))
            .route("/sim/stripe/cancel", post(cancel))
            .route("/sim/stripe/thin-event", post(thin_event))
            .route("/sim/stripe/tick", post(tick))
            .route("/sim/stripe/resend", post(resend))
            .route("/sim/stripe/deliveries", get(deliveries))
            .route("/sim/stripe/objects/{id}", get(object))
            .route("/sim/stripe/clock", get(clock).post(set_clock))
            .route("/checkout/{id}", get(checkout_page))
            .route("/checkout/{id}/pay", post(checkout_pay))
            .with_state(self.clone())
    }
}

async fn account(State(sim): State<Arc<StripeSim>>) -> Answer {
    ok(
        json!({"secret_key": sim.secret_key(), "api_version": API_VERSION,
        "webhook_endpoints": sim.webhook_endpoints()}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecurringBody {
    interval: Interval,
    #[serde(default = "one")]
    interval_count: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    id: String,
    unit_amount: i64,
    currency: String,
    recurring: Option<RecurringBody>,
    product_name: String,
}

async fn add_price(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: PriceBody = body(&bytes)?;
    let price = Price {
        id: b.id,
        unit_amount: b.unit_amount,
        currency: b.currency.to_lowercase(),
        recurring: b.recurring.map(|r| (r.interval, r.interval_count.max(1))),
        product_name: b.product_name,
    };
    sim.add_price(price.clone());
    ok(price)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlBody {
    url: String,
}

async fn add_endpoint(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: UrlBody = body(&bytes)?;
    let secret = sim.add_webhook_endpoint(&b.url);
    ok(json!({"url": b.url, "secret": secret}))
}

async fn roll_secret(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: UrlBody = body(&bytes)?;
    let secret = sim.roll_webhook_secret(&b.url)?;
    ok(json!({"url": b.url, "secret": secret}))
}

/// `"push"`: `"send"`, `"skip"` or `{"forge": "wrong_secret" | "stale_timestamp" | "no_signature"}`.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PushBody {
    Send,
    Skip,
    Forge(Forge),
}

impl From<PushBody> for PushMode {
    fn from(b: PushBody) -> Self {
        match b {
            PushBody::Send => Self::Send,
            PushBody::Skip => Self::Skip,
            PushBody::Forge(f) => Self::Forge(f),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushModeBody {
    push: PushBody,
}

async fn push_mode(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: PushModeBody = body(&bytes)?;
    sim.set_push_mode(b.push.into());
    ok(json!({}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayBody {
    session: String,
    #[serde(default, rename = "async")]
    later: bool,
}

async fn pay(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: PayBody = body(&bytes)?;
    let mode = if b.later {
        PayMode::Async
    } else {
        PayMode::Now
    };
    outcome(sim.pay(&b.session, mode).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    session: String,
    succeeded: bool,
}

async fn settle_async(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: SettleBody = body(&bytes)?;
    outcome(sim.settle_async(&b.session, b.succeeded).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    session: String,
}

async fn expire(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: SessionBody = body(&bytes)?;
    outcome(sim.expire(&b.session).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    /// A PaymentIntent (`pi_...`) or a Charge (`ch_...`).
    payment: String,
    amount: Option<i64>,
}

async fn refund(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: RefundBody = body(&bytes)?;
    outcome(sim.refund(&b.payment, b.amount).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailRefundBody {
    refund: String,
}

async fn fail_refund(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: FailRefundBody = body(&bytes)?;
    outcome(sim.fail_refund(&b.refund).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisputeBody {
    charge: String,
}

async fn dispute(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: DisputeBody = body(&bytes)?;
    outcome(sim.dispute(&b.charge).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseDisputeBody {
    dispute: String,
    won: bool,
}

async fn close_dispute(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: CloseDisputeBody = body(&bytes)?;
    outcome(sim.close_dispute(&b.dispute, b.won).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionBody {
    subscription: String,
}

async fn renew(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: SubscriptionBody = body(&bytes)?;
    outcome(sim.renew(&b.subscription).await?)
}

async fn fail_renewal(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: SubscriptionBody = body(&bytes)?;
    outcome(sim.fail_renewal(&b.subscription).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    subscription: String,
    #[serde(default)]
    at_period_end: bool,
}

async fn cancel(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: CancelBody = body(&bytes)?;
    outcome(sim.cancel(&b.subscription, b.at_period_end).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThinBody {
    related_object: String,
}

async fn thin_event(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: ThinBody = body(&bytes)?;
    outcome(sim.thin_event(&b.related_object).await?)
}

/// Expires the sessions time has passed; answers an [`Outcome`] per expiry.
async fn tick(State(sim): State<Arc<StripeSim>>) -> Answer {
    ok(json!({"outcomes": sim.tick().await}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendBody {
    event: String,
    forge: Option<Forge>,
}

async fn resend(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: ResendBody = body(&bytes)?;
    let mode = b.forge.map_or(PushMode::Send, PushMode::Forge);
    ok(json!({"deliveries": sim.resend_with(&b.event, mode).await?}))
}

async fn deliveries(State(sim): State<Arc<StripeSim>>) -> Answer {
    ok(json!({"deliveries": sim.deliveries()}))
}

async fn object(State(sim): State<Arc<StripeSim>>, Path(id): Path<String>) -> Answer {
    let found = sim.object(&id).ok_or(StripeError::NoSuch {
        kind: "object",
        id,
        param: None,
    })?;
    ok(found)
}

async fn clock(State(sim): State<Arc<StripeSim>>) -> Answer {
    ok(json!({"now_ms": sim.clock().now_ms()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    /// Stops the clock here (Unix ms).
    now_ms: Option<i64>,
    /// Moves it this far (ms).
    advance_ms: Option<i64>,
}

async fn set_clock(State(sim): State<Arc<StripeSim>>, bytes: Bytes) -> Answer {
    let b: ClockBody = body(&bytes)?;
    let clock = sim.clock();
    if let Some(at) = b.now_ms {
        clock.set(at);
    }
    if let Some(by) = b.advance_ms {
        clock.advance(by);
    }
    ok(json!({"now_ms": clock.now_ms()}))
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

fn page(title: &str, inner: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
<style>body{{font-family:sans-serif;max-width:28em;margin:3em auto}}button{{font-size:1em;margin:.3em 0;padding:.5em 1em}}</style>\
</head><body>{inner}</body></html>\n",
        escape(title)
    )
}

fn plain(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(page("Checkout", &format!("<p>{}</p>", escape(message)))),
    )
        .into_response()
}

async fn checkout_page(State(sim): State<Arc<StripeSim>>, Path(id): Path<String>) -> Response {
    let (session, product) = {
        let books = lock(&sim.books);
        let Ok(session) = books.get("checkout.session", &id).cloned() else {
            return plain(StatusCode::NOT_FOUND, "There is no such checkout session.");
        };
        let product = books
            .sessions
            .get(&id)
            .and_then(|i| books.prices.get(&i.price))
            .map(|p| (p.price.product_name.clone(), p.price.recurring))
            .unwrap_or_default();
        (session, product)
    };
    if session["status"] != "open" {
        return plain(
            StatusCode::CONFLICT,
            "This checkout session is no longer active.",
        );
    }
    let amount = money(
        session["amount_total"].as_i64().unwrap_or_default(),
        session["currency"].as_str().unwrap_or_default(),
    );
    let per = product
        .1
        .map(|(interval, count)| {
            if count == 1 {
                format!(" per {}", interval.as_str())
            } else {
                format!(" every {count} {}s", interval.as_str())
            }
        })
        .unwrap_or_default();
    let later = if session["mode"] == "payment" {
        format!(
            "<form method=\"post\" action=\"/checkout/{id}/pay?async=true\"><button type=\"submit\">Pay later (bank transfer)</button></form>"
        )
    } else {
        String::new()
    };
    let cancel = session["cancel_url"]
        .as_str()
        .map(|u| format!("<p><a href=\"{}\">Cancel</a></p>", escape(u)))
        .unwrap_or_default();
    let inner = format!(
        "<h1>{}</h1><p class=\"amount\">{}{}</p>\
<form method=\"post\" action=\"/checkout/{id}/pay\"><button type=\"submit\">Pay</button></form>{later}{cancel}\
<p><small>Simulated Stripe Checkout (test mode)</small></p>",
        escape(&product.0),
        escape(&amount),
        escape(&per),
    );
    Html(page(&format!("Pay {}", product.0), &inner)).into_response()
}

#[derive(Deserialize)]
struct PayQuery {
    #[serde(default, rename = "async")]
    later: bool,
}

async fn checkout_pay(
    State(sim): State<Arc<StripeSim>>,
    Path(id): Path<String>,
    Query(q): Query<PayQuery>,
) -> Response {
    let mode = if q.later {
        PayMode::Async
    } else {
        PayMode::Now
    };
    if let Err(e) = sim.pay(&id, mode).await {
        let status = e.status_and_code().0;
        return plain(status, &e.to_string());
    }
    let success = sim
        .object(&id)
        .and_then(|s| s["success_url"].as_str().map(str::to_owned));
    match success {
        Some(url) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, url.replace("{CHECKOUT_SESSION_ID}", &id))],
        )
            .into_response(),
        None => plain(StatusCode::OK, "Payment complete. You can close this page."),
    }
}
