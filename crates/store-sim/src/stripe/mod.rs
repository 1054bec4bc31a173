//! Stripe, simulated: one test-mode account with its secret key, the parts of the Stripe API a
//! purchase server calls (customers, Checkout Sessions and what paying one makes: PaymentIntents,
//! Charges, Refunds, Disputes, Subscriptions, Invoices, and the Events list), webhook endpoints
//! that receive signed events exactly as Stripe signs them, a hosted checkout page, and a control
//! surface that acts as the customer and as Stripe. Wire formats follow `shared/docs/store-formats.md`
//! part S, its corrections in `store-deltas.md` part S, and Stripe's own example objects
//! (Stripe's `fixtures3.json` (kept in `tests/vectors/stripe/`)), at API version [`API_VERSION`].
//!
//! One [`StripeSim`] holds everything (clones of its `Arc` share it); each part keeps its state and
//! what it does without HTTP in its folder's `mod.rs`, its HTTP surface in `http.rs` beside it:
//!
//! - `books.rs`: the objects (customers, sessions, payment intents, charges, refunds, disputes,
//!   subscriptions, invoices) as Stripe renders them, kept as their JSON. No HTTP.
//! - `api/`: the Stripe API under `/v1`: bearer-key checks, form bodies in bracket notation,
//!   idempotency keys, `Stripe-Version`, Stripe's error envelope; and the events list.
//! - `webhooks/`: the events ([`API_VERSION`] envelopes), webhook endpoints and their secrets
//!   (with rotation), the `Stripe-Signature` signer ([`signature`]), deliveries and forgeries, and
//!   thin (`v2.core.event`) events.
//! - `store/`: the actions ([`PayMode`], [`Outcome`]: pay, settle, expire, refund, dispute, renew,
//!   cancel ...), each changing the books and sending the events Stripe sends, in its order; the
//!   `/sim/stripe` control surface and the hosted checkout page at `/checkout/{id}`.
//! - `tests.rs`: unit tests of private helpers (the signature test vector); the rest is tested over
//!   HTTP from `crates/store-sim/tests/stripe.rs`.
//!
//! All time comes from the [`SimClock`] given to [`StripeSim::new`].
//!
//! ```no_run
//! # async fn setup() -> Result<(), Box<dyn std::error::Error>> {
//! use store_sim::{SimClock, stripe::{Interval, Price, StripeSim}};
//!
//! let stripe = StripeSim::new(SimClock::system())?;
//! let base = stripe.serve().await?; // the API root: {base}/v1/...
//! let key = stripe.secret_key(); // sk_test_...
//! stripe.add_price(Price::recurring("price_monthly", 999, "usd", "Premium", Interval::Month, 1));
//! let whsec = stripe.add_webhook_endpoint("http://127.0.0.1:8080/v1/apps/acme/notifications/stripe");
//! # let _ = (base, key, whsec);
//! # Ok(())
//! # }
//! ```

mod api;
mod books;
mod store;
#[cfg(test)]
mod tests;
mod webhooks;

use std::sync::{Arc, Mutex};

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use self::{
    store::{Emitted, Outcome, PayMode},
    webhooks::{Delivery, Forge, PushMode, signature, signature_header},
};
use crate::SimClock;

/// The API version the simulated account is pinned to; events carry it as `api_version`.
pub const API_VERSION: &str = "2026-07-29.dahlia";

/// What went wrong with an action, a setting or an API call. Nothing changes when one fails.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// No object of that kind with that id (`kind` as Stripe names it: `price`, `customer`,
    /// `checkout.session`, ...).
    #[error("No such {kind}: '{id}'")]
    NoSuch {
        kind: &'static str,
        id: String,
        /// The request parameter that named it, when there was one.
        param: Option<String>,
    },
    /// The request is not one Stripe takes (`code` as Stripe gives it, when it gives one).
    #[error("{message}")]
    Invalid {
        message: String,
        code: Option<&'static str>,
        param: Option<String>,
    },
    /// The object is not in a state that allows the action.
    #[error("{0}")]
    InvalidState(String),
    #[error("there is no webhook endpoint at {0:?}")]
    UnknownEndpoint(String),
}

impl StripeError {
    fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
            code: None,
            param: None,
        }
    }

    fn invalid_param(message: impl Into<String>, param: &str) -> Self {
        Self::Invalid {
            message: message.into(),
            code: None,
            param: Some(param.to_owned()),
        }
    }

    fn no_such(kind: &'static str, id: &str) -> Self {
        Self::NoSuch {
            kind,
            id: id.to_owned(),
            param: None,
        }
    }
}

/// A price's billing interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Day,
    Week,
    Month,
    Year,
}

impl Interval {
    /// The name Stripe writes (`recurring.interval`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

impl std::str::FromStr for Interval {
    type Err = StripeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "day" => Ok(Self::Day),
            "week" => Ok(Self::Week),
            "month" => Ok(Self::Month),
            "year" => Ok(Self::Year),
            other => Err(StripeError::invalid(format!(
                "Invalid interval: must be one of day, week, month or year (not {other:?})"
            ))),
        }
    }
}

/// A price in the simulated account's catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// `price_...` (any id the test likes).
    pub id: String,
    /// In the currency's smallest unit (cents).
    pub unit_amount: i64,
    /// Lowercase ISO 4217, as Stripe writes it (`usd`).
    pub currency: String,
    /// The billing interval and how many intervals a period is; `None` for a one-time price.
    pub recurring: Option<(Interval, u32)>,
    /// The product's name, shown on the hosted checkout page.
    pub product_name: String,
}

impl Price {
    /// A one-time price.
    pub fn one_time(id: &str, unit_amount: i64, currency: &str, product_name: &str) -> Self {
        Self {
            id: id.to_owned(),
            unit_amount,
            currency: currency.to_owned(),
            recurring: None,
            product_name: product_name.to_owned(),
        }
    }

    /// A recurring price, billed every `count` `interval`s.
    pub fn recurring(
        id: &str,
        unit_amount: i64,
        currency: &str,
        product_name: &str,
        interval: Interval,
        count: u32,
    ) -> Self {
        Self {
            recurring: Some((interval, count.max(1))),
            ..Self::one_time(id, unit_amount, currency, product_name)
        }
    }
}

/// The simulated Stripe account. Build it with [`StripeSim::new`], serve it with
/// [`StripeSim::serve`].
pub struct StripeSim {
    clock: Mutex<SimClock>,
    secret_key: String,
    /// The base URL it is served at, once served: sessions' `url` point there.
    base_url: Mutex<Option<String>>,
    books: Mutex<books::Books>,
    api: api::ApiState,
    hooks: webhooks::Hooks,
}

impl std::fmt::Debug for StripeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeSim")
            .field("base_url", &*lock(&self.base_url))
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, taking the data even if a panicking holder poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` random letters and digits, as Stripe's ids and keys have (from v4 UUIDs, as the rest of
/// the simulator draws randomness).
fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in uuid::Uuid::new_v4().as_bytes() {
            // 248 = 4 * 62: dropping the bytes above it keeps the letters uniform.
            if *b < 248 && out.len() < n {
                out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
            }
        }
    }
    out
}

/// A new id with Stripe's prefix for its kind (`cus`, `pi`, `ch`, ...).
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_alnum(24))
}

impl StripeSim {
    /// A simulated Stripe account in test mode with a fresh secret key and nothing else, reading
    /// the time from `clock`.
    pub fn new(clock: SimClock) -> Result<Arc<Self>, StripeError> {
        Ok(Arc::new(Self {
            clock: Mutex::new(clock),
            secret_key: format!("sk_test_{}", random_alnum(32)),
            base_url: Mutex::new(None),
            books: Mutex::new(books::Books::default()),
            api: api::ApiState::default(),
            hooks: webhooks::Hooks::new(),
        }))
    }

    /// The account's secret key (`sk_test_...`), which the API wants as `Authorization: Bearer`.
    pub fn secret_key(&self) -> String {
        self.secret_key.clone()
    }

    /// Makes the simulator read the time from `clock`.
    pub fn set_clock(&self, clock: SimClock) {
        *lock(&self.clock) = clock;
    }

    /// The simulator's clock; set or move it to move its time.
    pub fn clock(&self) -> SimClock {
        lock(&self.clock).clone()
    }

    /// Now, by the simulator's clock, in Unix ms.
    fn now_ms(&self) -> i64 {
        lock(&self.clock).now_ms()
    }

    /// Now, by the simulator's clock, in Unix seconds (Stripe's times).
    fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// The base URL the simulator is served at, once served.
    pub fn base_url(&self) -> Option<String> {
        lock(&self.base_url).clone()
    }

    /// Tells the simulator where it is reachable when it is served some other way than
    /// [`StripeSim::serve`], so sessions' `url` point at the right hosted page.
    pub fn set_base_url(&self, url: &str) {
        *lock(&self.base_url) = Some(url.trim_end_matches('/').to_owned());
    }

    /// Adds a price to the catalogue (replacing one with the same id).
    pub fn add_price(&self, price: Price) {
        let now = self.now();
        lock(&self.books).add_price(price, now);
    }

    /// The price with this id, if the catalogue has it.
    pub fn price(&self, id: &str) -> Option<Price> {
        lock(&self.books).prices.get(id).map(|p| p.price.clone())
    }

    /// An object as `GET /v1/...` renders it, by id (any kind).
    pub fn object(&self, id: &str) -> Option<serde_json::Value> {
        lock(&self.books).objects.get(id).cloned()
    }

    /// Every route: the Stripe API, the hosted checkout page and the `/sim/stripe` control
    /// surface.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .merge(self.api_router())
            .merge(self.control_router())
            .fallback(api::http::unrecognized)
    }

    /// Serves the simulator on a free port of 127.0.0.1 and answers its base URL (`http://...`,
    /// no trailing slash): the API root.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<String> {
        self.serve_on(TcpListener::bind("127.0.0.1:0").await?).await
    }

    /// Serves the simulator on a bound listener and answers its base URL.
    pub async fn serve_on(self: &Arc<Self>, listener: TcpListener) -> std::io::Result<String> {
        let url = format!("http://{}", listener.local_addr()?);
        self.set_base_url(&url);
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(url)
    }
}
