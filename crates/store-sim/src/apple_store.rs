//! A simulated App Store: the customer-side and Apple-side actions (buy, renew, fail to renew,
//! refund, reverse a refund, Family Sharing revoke, expire) on state it owns, kept in step with the
//! fake App Store Server API ([`AppStoreServer`]) so that Get Transaction Info, transaction history,
//! subscription statuses and refund lookup agree with what was done, and each sent to the gateway as
//! the App Store Server Notification V2 Apple sends for it: POSTed once (the sandbox does not retry)
//! to the server's notification URL, and recorded in its notification history with the send result.
//!
//! Payloads use Apple's field names and types (JWSTransactionDecodedPayload,
//! JWSRenewalInfoDecodedPayload, ResponseBodyV2DecodedPayload); times are Unix milliseconds from a
//! [`SimClock`] the caller can set, which the store also gives the fake API so both see one `now`.
//!
//! [`AppleStore::router`] is the HTTP control surface under `/sim/apple`, JSON in and out, used by
//! `purchase-gateway sim apple ...`.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use time::{Month, OffsetDateTime};

use crate::{
    SimClock,
    apple::{AppleChain, Notification, SimError},
    apple_api::{AppStoreServer, SendError},
};

/// The storefront every simulated purchase is made in (Apple's three-letter code and its id).
const STOREFRONT: (&str, &str) = ("USA", "143441");
/// The currency of simulated prices.
const CURRENCY: &str = "USD";
/// The price of a purchase that names none, in milli-units (9.99).
const DEFAULT_PRICE: i64 = 9_990;
/// The largest quantity one purchase may have, as StoreKit caps it.
const MAX_QUANTITY: u32 = 10;
/// Where transaction ids start: Apple-shaped 16-digit numbers. A random offset is added, so two
/// stores of one test run do not hand out the same ids.
const FIRST_TRANSACTION_ID: u64 = 2_000_000_000_000_000;
/// Where `webOrderLineItemId`s start (14 digits, like Apple's), plus a random offset.
const FIRST_WEB_ORDER_ID: u64 = 20_000_000_000_000;

/// What went wrong with an action. Nothing changes when an action fails.
#[derive(Debug, thiserror::Error)]
pub enum AppleStoreError {
    #[error("there is no transaction {0:?} in the simulated App Store")]
    UnknownTransaction(String),
    #[error("transaction {0:?} is not an auto-renewable subscription")]
    NotASubscription(String),
    #[error("transaction {0:?} is already refunded or revoked")]
    AlreadyRevoked(String),
    #[error("transaction {0:?} has no refund to reverse")]
    NotRefunded(String),
    #[error("the subscription {0:?} has already expired")]
    AlreadyExpired(String),
    #[error("the subscription {0:?} is refunded or revoked and does not renew")]
    Revoked(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the simulated App Store has no notification URL to send to; set it on the App Store Server API first"
    )]
    NoNotificationUrl,
    #[error("signing failed: {0}")]
    Sign(#[from] SimError),
}

impl AppleStoreError {
    /// The HTTP status and machine-readable code the control surface answers with.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UnknownTransaction(_) => (StatusCode::NOT_FOUND, "unknown_transaction"),
            Self::NotASubscription(_) => (StatusCode::CONFLICT, "not_a_subscription"),
            Self::AlreadyRevoked(_) => (StatusCode::CONFLICT, "already_revoked"),
            Self::NotRefunded(_) => (StatusCode::CONFLICT, "not_refunded"),
            Self::AlreadyExpired(_) => (StatusCode::CONFLICT, "already_expired"),
            Self::Revoked(_) => (StatusCode::CONFLICT, "revoked"),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::NoNotificationUrl => (StatusCode::CONFLICT, "no_notification_url"),
            Self::Sign(_) => (StatusCode::INTERNAL_SERVER_ERROR, "signing_failed"),
        }
    }
}

impl IntoResponse for AppleStoreError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        (
            status,
            Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response()
    }
}

/// A period as the App Store sells subscriptions: `P1W`, `P1M`, `P3M`, `P1Y`, `P3D`, and for quick
/// tests `PT5M`, `PT1H`, `PT30S` (ISO 8601, one unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    count: u32,
    unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// `P1M`, the period of a subscription that names none.
    pub const ONE_MONTH: Period = Period {
        count: 1,
        unit: Unit::Month,
    };

    /// The instant one period after `ms` (Unix ms). Months and years are calendar ones: a month
    /// from 31 January is the last day of February, as Apple renews.
    pub fn after(self, ms: i64) -> i64 {
        let count = i64::from(self.count);
        let fixed = |unit_ms: i64| ms.saturating_add(count.saturating_mul(unit_ms));
        match self.unit {
            Unit::Second => fixed(1_000),
            Unit::Minute => fixed(60_000),
            Unit::Hour => fixed(3_600_000),
            Unit::Day => fixed(86_400_000),
            Unit::Week => fixed(7 * 86_400_000),
            Unit::Month => add_months(ms, count),
            Unit::Year => add_months(ms, count.saturating_mul(12)),
        }
    }
}

/// `ms` plus `months` calendar months, the day clamped to the new month's length.
fn add_months(ms: i64, months: i64) -> i64 {
    let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms;
    };
    let index = i64::from(at.year()) * 12 + i64::from(u8::from(at.month())) - 1 + months;
    let (Ok(year), Ok(month)) = (
        i32::try_from(index.div_euclid(12)),
        Month::try_from((index.rem_euclid(12) + 1) as u8),
    ) else {
        return ms;
    };
    let day = at.day().min(month.length(year));
    at.replace_day(1)
        .and_then(|d| d.replace_year(year))
        .and_then(|d| d.replace_month(month))
        .and_then(|d| d.replace_day(day))
        .map_or(ms, |d| (d.unix_timestamp_nanos() / 1_000_000) as i64)
}

impl FromStr for Period {
    type Err = AppleStoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            AppleStoreError::Invalid(format!(
                "{s:?} is not a subscription period such as P1W, P1M, P3M, P1Y or PT5M"
            ))
        };
        let rest = s.strip_prefix('P').ok_or_else(bad)?;
        let (rest, timed) = match rest.strip_prefix('T') {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let unit_char = rest.chars().last().ok_or_else(bad)?;
        let count: u32 = rest[..rest.len() - unit_char.len_utf8()]
            .parse()
            .map_err(|_| bad())?;
        let unit = match (timed, unit_char) {
            (true, 'S') => Unit::Second,
            (true, 'M') => Unit::Minute,
            (true, 'H') => Unit::Hour,
            (false, 'D') => Unit::Day,
            (false, 'W') => Unit::Week,
            (false, 'M') => Unit::Month,
            (false, 'Y') => Unit::Year,
            _ => return Err(bad()),
        };
        if count == 0 || count > 1_000 {
            return Err(bad());
        }
        Ok(Period { count, unit })
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (timed, unit) = match self.unit {
            Unit::Second => ("T", 'S'),
            Unit::Minute => ("T", 'M'),
            Unit::Hour => ("T", 'H'),
            Unit::Day => ("", 'D'),
            Unit::Week => ("", 'W'),
            Unit::Month => ("", 'M'),
            Unit::Year => ("", 'Y'),
        };
        write!(f, "P{timed}{}{unit}", self.count)
    }
}

/// The kind of an in-app product, as App Store Connect defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductKind {
    Consumable,
    NonConsumable,
    NonRenewing,
    AutoRenewable(Period),
}

impl ProductKind {
    /// Reads a kind as the control surface names it (`consumable`, `non-consumable`,
    /// `non-renewing`, `auto-renewable`); subscriptions take `period` (a month when absent).
    pub fn parse(kind: &str, period: Option<&str>) -> Result<Self, AppleStoreError> {
        let kind = match kind {
            "consumable" => ProductKind::Consumable,
            "non-consumable" => ProductKind::NonConsumable,
            "non-renewing" => ProductKind::NonRenewing,
            "auto-renewable" => {
                let period = period.map_or(Ok(Period::ONE_MONTH), str::parse)?;
                return Ok(ProductKind::AutoRenewable(period));
            }
            other => {
                return Err(AppleStoreError::Invalid(format!(
                    "{other:?} is not a product kind: use consumable, non-consumable, non-renewing or auto-renewable"
                )));
            }
        };
        if period.is_some() {
            return Err(AppleStoreError::Invalid(
                "only auto-renewable subscriptions have a period".into(),
            ));
        }
        Ok(kind)
    }

    /// The `type` of its transactions.
    fn jws_type(self) -> &'static str {
        match self {
            ProductKind::Consumable => "Consumable",
            ProductKind::NonConsumable => "Non-Consumable",
            ProductKind::NonRenewing => "Non-Renewing Subscription",
            ProductKind::AutoRenewable(_) => "Auto-Renewable Subscription",
        }
    }
}

/// Why Apple refunded a transaction (`revocationReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationReason {
    /// 0: another reason, such as the customer's request.
    #[default]
    Other,
    /// 1: the customer reported an issue in the app.
    AppIssue,
}

impl RevocationReason {
    fn code(self) -> i64 {
        match self {
            RevocationReason::Other => 0,
            RevocationReason::AppIssue => 1,
        }
    }
}

/// Why a subscription expired: the EXPIRED subtype, and the renewal info's `expirationIntent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpirySubtype {
    /// The customer turned auto-renew off.
    #[default]
    Voluntary,
    /// Billing retry ended without a successful charge.
    BillingRetry,
    /// The customer did not consent to a price increase.
    PriceIncrease,
    /// The product was not for sale at renewal.
    ProductNotForSale,
}

impl ExpirySubtype {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpirySubtype::Voluntary => "VOLUNTARY",
            ExpirySubtype::BillingRetry => "BILLING_RETRY",
            ExpirySubtype::PriceIncrease => "PRICE_INCREASE",
            ExpirySubtype::ProductNotForSale => "PRODUCT_NOT_FOR_SALE",
        }
    }

    fn expiration_intent(self) -> i64 {
        match self {
            ExpirySubtype::Voluntary => 1,
            ExpirySubtype::BillingRetry => 2,
            ExpirySubtype::PriceIncrease => 3,
            ExpirySubtype::ProductNotForSale => 4,
        }
    }
}

impl FromStr for ExpirySubtype {
    type Err = AppleStoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "VOLUNTARY" => ExpirySubtype::Voluntary,
            "BILLING_RETRY" => ExpirySubtype::BillingRetry,
            "PRICE_INCREASE" => ExpirySubtype::PriceIncrease,
            "PRODUCT_NOT_FOR_SALE" => ExpirySubtype::ProductNotForSale,
            other => {
                return Err(AppleStoreError::Invalid(format!(
                    "{other:?} is not an EXPIRED subtype: use VOLUNTARY, BILLING_RETRY, PRICE_INCREASE or PRODUCT_NOT_FOR_SALE"
                )));
            }
        })
    }
}

/// A purchase with every option; [`AppleStore::buy`] is the common case.
#[derive(Debug, Clone)]
pub struct Purchase<'a> {
    pub sku: &'a str,
    pub kind: ProductKind,
    /// The UUID the app passed to StoreKit (`appAccountToken`), naming its customer.
    pub app_account_token: Option<&'a str>,
    /// Consumables only; 1 otherwise.
    pub quantity: u32,
    /// A family member's copy (`inAppOwnershipType: FAMILY_SHARED`).
    pub family_shared: bool,
    /// Milli-units of USD; 9990 when `None`.
    pub price: Option<i64>,
}

impl<'a> Purchase<'a> {
    pub fn new(sku: &'a str, kind: ProductKind) -> Self {
        Self {
            sku,
            kind,
            app_account_token: None,
            quantity: 1,
            family_shared: false,
            price: None,
        }
    }
}

/// What an action did: the transaction it concerned (as Apple signed it into the notification), the
/// notification sent, and how the gateway answered it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub transaction_id: String,
    pub original_transaction_id: String,
    pub notification_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtype: Option<&'static str>,
    pub notification_uuid: String,
    /// The gateway's HTTP status; `None` when it did not answer.
    pub http_status: Option<u16>,
    /// Apple's `sendAttemptResult` for the one attempt, as the notification history lists it.
    pub send_attempt_result: &'static str,
    /// The gateway's answer body: JSON when it is JSON, else the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_answer: Option<Value>,
    /// The JWSTransactionDecodedPayload sent.
    pub transaction: Value,
    /// The JWSRenewalInfoDecodedPayload sent, for subscriptions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<Value>,
}

/// One purchase lineage (`originalTransactionId`).
struct Lineage {
    kind: ProductKind,
    /// Its transactions' ids, oldest first; never empty.
    transactions: Vec<String>,
    /// The JWSRenewalInfoDecodedPayload, for subscriptions.
    renewal: Option<Value>,
    /// Why the subscription expired, while it is expired.
    expired: Option<ExpirySubtype>,
}

#[derive(Default)]
struct Books {
    /// JWSTransactionDecodedPayloads by `transactionId`.
    transactions: HashMap<String, Value>,
    /// Lineages by `originalTransactionId`.
    lineages: HashMap<String, Lineage>,
}

impl Books {
    /// The lineage id of a transaction id or original transaction id.
    fn lineage_of(&self, id: &str) -> Result<String, AppleStoreError> {
        if self.lineages.contains_key(id) {
            return Ok(id.to_owned());
        }
        self.transactions
            .get(id)
            .and_then(|t| t["originalTransactionId"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| AppleStoreError::UnknownTransaction(id.to_owned()))
    }

    fn transaction(&self, id: &str) -> Result<Value, AppleStoreError> {
        self.transactions
            .get(id)
            .cloned()
            .ok_or_else(|| AppleStoreError::UnknownTransaction(id.to_owned()))
    }

    /// A subscription lineage and its latest transaction, for the actions only subscriptions have.
    fn subscription(&self, id: &str) -> Result<(String, Period, Value), AppleStoreError> {
        let lineage_id = self.lineage_of(id)?;
        let lineage = self
            .lineages
            .get(&lineage_id)
            .ok_or_else(|| AppleStoreError::UnknownTransaction(id.to_owned()))?;
        let ProductKind::AutoRenewable(period) = lineage.kind else {
            return Err(AppleStoreError::NotASubscription(id.to_owned()));
        };
        let latest = lineage
            .transactions
            .last()
            .ok_or_else(|| AppleStoreError::UnknownTransaction(id.to_owned()))?;
        Ok((lineage_id, period, self.transaction(latest)?))
    }
}

/// What an action decided, to be sent once the books are closed.
struct Change {
    notification_type: &'static str,
    subtype: Option<&'static str>,
    transaction: Value,
    renewal: Option<Value>,
    status: Option<i64>,
}

/// A simulated App Store for one app (the fake API's bundle and environment).
pub struct AppleStore {
    server: Arc<AppStoreServer>,
    clock: SimClock,
    books: Mutex<Books>,
    next_transaction: AtomicU64,
    next_web_order: AtomicU64,
}

impl fmt::Debug for AppleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppleStore")
            .field("bundle_id", &self.server.bundle_id())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_revoked(t: &Value) -> bool {
    t.get("revocationDate").is_some_and(|d| !d.is_null())
}

/// Removes fields from a payload object.
fn remove(payload: &mut Value, fields: &[&str]) {
    if let Some(o) = payload.as_object_mut() {
        for f in fields {
            o.remove(*f);
        }
    }
}

/// A random offset for the first ids, so stores of one test run do not share ids.
fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n)) as u64
}

/// An 8-digit `subscriptionGroupIdentifier`, the same for every purchase of one SKU (FNV-1a).
fn subscription_group(sku: &str) -> String {
    let hash = sku.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (20_000_000 + hash % 10_000_000).to_string()
}

impl AppleStore {
    /// A store on top of `server`, whose clock it sets to `clock` so the two agree on `now`.
    pub fn new(server: Arc<AppStoreServer>, clock: SimClock) -> Arc<Self> {
        server.set_clock(clock.clone());
        Arc::new(Self {
            server,
            clock,
            books: Mutex::new(Books::default()),
            next_transaction: AtomicU64::new(FIRST_TRANSACTION_ID + random_below(1 << 40)),
            next_web_order: AtomicU64::new(FIRST_WEB_ORDER_ID + random_below(1 << 40)),
        })
    }

    /// The fake App Store Server API the store keeps in step.
    pub fn server(&self) -> &Arc<AppStoreServer> {
        &self.server
    }

    /// The store's clock; set or move it to move the store's time.
    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    fn chain(&self) -> &AppleChain {
        self.server.chain()
    }

    fn new_transaction_id(&self) -> String {
        self.next_transaction
            .fetch_add(1, Ordering::Relaxed)
            .to_string()
    }

    fn new_web_order_id(&self) -> String {
        self.next_web_order
            .fetch_add(1, Ordering::Relaxed)
            .to_string()
    }

    /// A transaction's JWSTransactionDecodedPayload as it stands now.
    pub fn transaction(&self, transaction_id: &str) -> Result<Value, AppleStoreError> {
        lock(&self.books).transaction(transaction_id)
    }

    /// A transaction signed as StoreKit hands it to the app, for the app to post to the gateway.
    pub fn signed_transaction(&self, transaction_id: &str) -> Result<String, AppleStoreError> {
        Ok(self.chain().sign(&self.transaction(transaction_id)?)?)
    }

    /// A subscription's JWSRenewalInfoDecodedPayload as it stands now, by any of its transaction ids.
    pub fn renewal_info(&self, id: &str) -> Result<Value, AppleStoreError> {
        let books = lock(&self.books);
        let lineage = books.lineage_of(id)?;
        books
            .lineages
            .get(&lineage)
            .and_then(|l| l.renewal.clone())
            .ok_or_else(|| AppleStoreError::NotASubscription(id.to_owned()))
    }

    /// The customer buys a product: ONE_TIME_CHARGE for a one-time product, SUBSCRIBED/INITIAL_BUY
    /// for a subscription.
    pub async fn buy(
        &self,
        sku: &str,
        kind: ProductKind,
        app_account_token: Option<&str>,
    ) -> Result<Outcome, AppleStoreError> {
        self.buy_with(&Purchase {
            app_account_token,
            ..Purchase::new(sku, kind)
        })
        .await
    }

    /// [`AppleStore::buy`] with every option.
    pub async fn buy_with(&self, p: &Purchase<'_>) -> Result<Outcome, AppleStoreError> {
        self.check_url()?;
        if p.sku.trim().is_empty() {
            return Err(AppleStoreError::Invalid(
                "a purchase needs a product id (sku)".into(),
            ));
        }
        if let Some(token) = p.app_account_token
            && uuid::Uuid::parse_str(token).is_err()
        {
            return Err(AppleStoreError::Invalid(format!(
                "appAccountToken {token:?} is not a UUID, and StoreKit takes only UUIDs"
            )));
        }
        if p.quantity == 0
            || p.quantity > MAX_QUANTITY
            || (p.quantity > 1 && p.kind != ProductKind::Consumable)
        {
            return Err(AppleStoreError::Invalid(format!(
                "a quantity of {} is not possible: consumables take 1 to {MAX_QUANTITY}, other products 1",
                p.quantity
            )));
        }
        if p.price.is_some_and(|price| price < 0) {
            return Err(AppleStoreError::Invalid(
                "a price cannot be negative".into(),
            ));
        }
        let now = self.clock.now_ms();
        let id = self.new_transaction_id();
        let environment = self.server.environment();
        let price = p.price.unwrap_or(DEFAULT_PRICE);
        let mut t = json!({
            "transactionId": id, "originalTransactionId": id, "bundleId": self.server.bundle_id(),
            "productId": p.sku, "purchaseDate": now, "originalPurchaseDate": now, "quantity": p.quantity,
            "type": p.kind.jws_type(),
            "inAppOwnershipType": if p.family_shared { "FAMILY_SHARED" } else { "PURCHASED" },
            "signedDate": now, "environment": environment, "transactionReason": "PURCHASE",
            "storefront": STOREFRONT.0, "storefrontId": STOREFRONT.1, "price": price, "currency": CURRENCY,
        });
        if let Some(token) = p.app_account_token {
            t["appAccountToken"] = token.into();
        }
        let mut renewal = None;
        if let ProductKind::AutoRenewable(period) = p.kind {
            let expires = period.after(now);
            t["webOrderLineItemId"] = self.new_web_order_id().into();
            t["subscriptionGroupIdentifier"] = subscription_group(p.sku).into();
            t["expiresDate"] = expires.into();
            let mut r = json!({
                "originalTransactionId": id, "autoRenewProductId": p.sku, "productId": p.sku,
                "autoRenewStatus": 1, "isInBillingRetryPeriod": false, "priceIncreaseStatus": 0,
                "signedDate": now, "environment": environment, "recentSubscriptionStartDate": now,
                "renewalDate": expires, "renewalPrice": price, "currency": CURRENCY,
            });
            if let Some(token) = p.app_account_token {
                r["appAccountToken"] = token.into();
            }
            renewal = Some(r);
        }
        let change = {
            let mut books = lock(&self.books);
            books.transactions.insert(id.clone(), t.clone());
            books.lineages.insert(
                id.clone(),
                Lineage {
                    kind: p.kind,
                    transactions: vec![id.clone()],
                    renewal: renewal.clone(),
                    expired: None,
                },
            );
            self.keep(&t, renewal.as_ref());
            let (kind, subtype) = match p.kind {
                ProductKind::AutoRenewable(_) => ("SUBSCRIBED", Some("INITIAL_BUY")),
                _ => ("ONE_TIME_CHARGE", None),
            };
            self.change(kind, subtype, t, renewal, now)
        };
        self.send(change).await
    }

    /// Apple renews a subscription: a new transaction in the lineage (`transactionReason:
    /// RENEWAL`) whose period starts when the last one ends, or now if that is past; DID_RENEW,
    /// with subtype BILLING_RECOVERY after a failed renewal. An expired subscription the customer
    /// buys again is SUBSCRIBED/RESUBSCRIBE instead.
    pub async fn renew(&self, original_transaction_id: &str) -> Result<Outcome, AppleStoreError> {
        self.check_url()?;
        let now = self.clock.now_ms();
        let change = {
            let mut books = lock(&self.books);
            let (lineage_id, period, latest) = books.subscription(original_transaction_id)?;
            if is_revoked(&latest) {
                return Err(AppleStoreError::Revoked(original_transaction_id.to_owned()));
            }
            let lineage = books
                .lineages
                .get(&lineage_id)
                .ok_or_else(|| AppleStoreError::UnknownTransaction(lineage_id.clone()))?;
            let mut renewal = lineage.renewal.clone().unwrap_or_else(|| json!({}));
            let in_retry = renewal["isInBillingRetryPeriod"] == true;
            let (kind, subtype, reason) = match lineage.expired {
                Some(ExpirySubtype::BillingRetry) => {
                    ("DID_RENEW", Some("BILLING_RECOVERY"), "RENEWAL")
                }
                Some(_) => ("SUBSCRIBED", Some("RESUBSCRIBE"), "PURCHASE"),
                None if in_retry => ("DID_RENEW", Some("BILLING_RECOVERY"), "RENEWAL"),
                None => ("DID_RENEW", None, "RENEWAL"),
            };
            let start = latest["expiresDate"].as_i64().unwrap_or(now).max(now);
            let expires = period.after(start);
            let id = self.new_transaction_id();
            let mut t = latest;
            remove(
                &mut t,
                &[
                    "revocationDate",
                    "revocationReason",
                    "revocationType",
                    "revocationPercentage",
                    "isUpgraded",
                ],
            );
            t["transactionId"] = id.clone().into();
            t["webOrderLineItemId"] = self.new_web_order_id().into();
            t["purchaseDate"] = start.into();
            t["expiresDate"] = expires.into();
            t["signedDate"] = now.into();
            t["transactionReason"] = reason.into();
            renewal["autoRenewStatus"] = 1.into();
            renewal["isInBillingRetryPeriod"] = false.into();
            renewal["renewalDate"] = expires.into();
            renewal["signedDate"] = now.into();
            if subtype == Some("RESUBSCRIBE") {
                renewal["recentSubscriptionStartDate"] = start.into();
            }
            remove(
                &mut renewal,
                &["expirationIntent", "gracePeriodExpiresDate"],
            );
            books.transactions.insert(id.clone(), t.clone());
            if let Some(lineage) = books.lineages.get_mut(&lineage_id) {
                lineage.transactions.push(id);
                lineage.renewal = Some(renewal.clone());
                lineage.expired = None;
            }
            self.keep(&t, Some(&renewal));
            self.change(kind, subtype, t, Some(renewal), now)
        };
        self.send(change).await
    }

    /// Apple fails to charge for a renewal: DID_FAIL_TO_RENEW. With a grace period, subtype
    /// GRACE_PERIOD and `gracePeriodExpiresDate` = the end of the paid period plus `grace_period`;
    /// without, no subtype (billing retry only). Either way `isInBillingRetryPeriod: true`.
    pub async fn fail_to_renew(
        &self,
        original_transaction_id: &str,
        grace_period: Option<Duration>,
    ) -> Result<Outcome, AppleStoreError> {
        self.check_url()?;
        let grace_ms = grace_period
            .map(|g| {
                i64::try_from(g.as_millis())
                    .map_err(|_| AppleStoreError::Invalid("the grace period is too long".into()))
            })
            .transpose()?;
        let now = self.clock.now_ms();
        let change = {
            let mut books = lock(&self.books);
            let (lineage_id, _, latest) = books.subscription(original_transaction_id)?;
            if is_revoked(&latest) {
                return Err(AppleStoreError::Revoked(original_transaction_id.to_owned()));
            }
            let lineage = books
                .lineages
                .get_mut(&lineage_id)
                .ok_or_else(|| AppleStoreError::UnknownTransaction(lineage_id.clone()))?;
            if lineage.expired.is_some() {
                return Err(AppleStoreError::AlreadyExpired(
                    original_transaction_id.to_owned(),
                ));
            }
            let expires = latest["expiresDate"].as_i64().unwrap_or(now);
            let mut renewal = lineage.renewal.clone().unwrap_or_else(|| json!({}));
            renewal["isInBillingRetryPeriod"] = true.into();
            renewal["expirationIntent"] = 2.into();
            renewal["autoRenewStatus"] = 1.into();
            renewal["renewalDate"] = expires.into();
            renewal["signedDate"] = now.into();
            match grace_ms {
                Some(g) => renewal["gracePeriodExpiresDate"] = expires.saturating_add(g).into(),
                None => remove(&mut renewal, &["gracePeriodExpiresDate"]),
            }
            lineage.renewal = Some(renewal.clone());
            self.keep(&latest, Some(&renewal));
            let mut sent = latest;
            sent["signedDate"] = now.into();
            let subtype = grace_ms.map(|_| "GRACE_PERIOD");
            self.change("DID_FAIL_TO_RENEW", subtype, sent, Some(renewal), now)
        };
        self.send(change).await
    }

    /// Apple refunds a transaction: `revocationDate` now, `revocationReason`, `revocationType:
    /// REFUND_FULL`; REFUND.
    pub async fn refund(
        &self,
        transaction_id: &str,
        reason: RevocationReason,
    ) -> Result<Outcome, AppleStoreError> {
        self.check_url()?;
        let now = self.clock.now_ms();
        let change = {
            let mut books = lock(&self.books);
            let mut t = books.transaction(transaction_id)?;
            if is_revoked(&t) {
                return Err(AppleStoreError::AlreadyRevoked(transaction_id.to_owned()));
            }
            t["revocationDate"] = now.into();
            t["revocationReason"] = reason.code().into();
            t["revocationType"] = "REFUND_FULL".into();
            t["signedDate"] = now.into();
            self.replace(&mut books, t, "REFUND", now)?
        };
        self.send(change).await
    }

    /// Apple reverses a refund (after a dispute, say): the revocation fields are gone;
    /// REFUND_REVERSED.
    pub async fn reverse_refund(&self, transaction_id: &str) -> Result<Outcome, AppleStoreError> {
        self.check_url()?;
        let now = self.clock.now_ms();
        let change = {
            let mut books = lock(&self.books);
            let mut t = books.transaction(transaction_id)?;
            if !is_revoked(&t) || t["revocationType"] == "FAMILY_REVOKE" {
                return Err(AppleStoreError::NotRefunded(transaction_id.to_owned()));
            }
            remove(
                &mut t,
                &[
                    "revocationDate",
                    "revocationReason",
                    "revocationType",
                    "revocationPercentage",
                ],
            );
            t["signedDate"] = now.into();
            self.replace(&mut books, t, "REFUND_REVERSED", now)?
        };
        self.send(change).await
    }

    /// Family Sharing ends for a purchase a family member had: the lineage becomes the member's
    /// shared copy (`inAppOwnershipType: FAMILY_SHARED`) and the transaction is revoked
    /// (`revocationType: FAMILY_REVOKE`, `revocationReason: 0`); REVOKE.
    pub async fn revoke(&self, transaction_id: &str) -> Result<Outcome, AppleStoreError> {
        self.check_url()?;
        let now = self.clock.now_ms();
        let change = {
            let mut books = lock(&self.books);
            let mut t = books.transaction(transaction_id)?;
            if is_revoked(&t) {
                return Err(AppleStoreError::AlreadyRevoked(transaction_id.to_owned()));
            }
            let lineage_id = books.lineage_of(transaction_id)?;
            let siblings = books
                .lineages
                .get(&lineage_id)
                .map(|l| l.transactions.clone())
                .unwrap_or_default();
            for sibling in siblings.iter().filter(|s| *s != transaction_id) {
                if let Some(other) = books.transactions.get_mut(sibling) {
                    other["inAppOwnershipType"] = "FAMILY_SHARED".into();
                    self.server.put_transaction(other.clone());
                }
            }
            t["inAppOwnershipType"] = "FAMILY_SHARED".into();
            t["revocationDate"] = now.into();
            t["revocationReason"] = 0.into();
            t["revocationType"] = "FAMILY_REVOKE".into();
            t["signedDate"] = now.into();
            self.replace(&mut books, t, "REVOKE", now)?
        };
        self.send(change).await
    }

    /// A subscription expires: EXPIRED with `subtype`; the renewal info has `autoRenewStatus: 0`,
    /// the matching `expirationIntent` and no billing retry. Apple sends it when the paid period
    /// ends; asked earlier, the store ends the period now (the latest transaction's `expiresDate`
    /// becomes now), so the API's statuses agree with the notification.
    pub async fn expire(
        &self,
        original_transaction_id: &str,
        subtype: ExpirySubtype,
    ) -> Result<Outcome, AppleStoreError> {
        self.check_url()?;
        let now = self.clock.now_ms();
        let change = {
            let mut books = lock(&self.books);
            let (lineage_id, _, mut latest) = books.subscription(original_transaction_id)?;
            let latest_id = latest["transactionId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let lineage = books
                .lineages
                .get_mut(&lineage_id)
                .ok_or_else(|| AppleStoreError::UnknownTransaction(lineage_id.clone()))?;
            if lineage.expired.is_some() {
                return Err(AppleStoreError::AlreadyExpired(
                    original_transaction_id.to_owned(),
                ));
            }
            let mut renewal = lineage.renewal.clone().unwrap_or_else(|| json!({}));
            renewal["autoRenewStatus"] = 0.into();
            renewal["expirationIntent"] = subtype.expiration_intent().into();
            renewal["isInBillingRetryPeriod"] = false.into();
            renewal["signedDate"] = now.into();
            remove(&mut renewal, &["gracePeriodExpiresDate"]);
            lineage.renewal = Some(renewal.clone());
            lineage.expired = Some(subtype);
            if latest["expiresDate"].as_i64().is_none_or(|e| e > now) {
                latest["expiresDate"] = now.into();
                latest["signedDate"] = now.into();
                books.transactions.insert(latest_id, latest.clone());
            }
            self.keep(&latest, Some(&renewal));
            let mut sent = latest;
            sent["signedDate"] = now.into();
            self.change("EXPIRED", Some(subtype.as_str()), sent, Some(renewal), now)
        };
        self.send(change).await
    }

    /// Fails early, before anything changes, when there is nowhere to send notifications.
    fn check_url(&self) -> Result<(), AppleStoreError> {
        self.server
            .notification_url()
            .map(|_| ())
            .ok_or(AppleStoreError::NoNotificationUrl)
    }

    /// Hands the fake API the new state of a transaction and its lineage's renewal info.
    fn keep(&self, transaction: &Value, renewal: Option<&Value>) {
        self.server.put_transaction(transaction.clone());
        if let Some(r) = renewal {
            self.server.put_renewal_info(r.clone());
        }
    }

    /// Stores a changed transaction, hands it to the fake API, and says how to announce it: with
    /// its lineage's renewal info and status (that of the latest transaction) for a subscription.
    fn replace(
        &self,
        books: &mut Books,
        t: Value,
        notification_type: &'static str,
        now: i64,
    ) -> Result<Change, AppleStoreError> {
        let id = t["transactionId"].as_str().unwrap_or_default().to_owned();
        books.transactions.insert(id.clone(), t.clone());
        let lineage = books.lineages.get(&books.lineage_of(&id)?);
        let renewal = lineage
            .filter(|l| matches!(l.kind, ProductKind::AutoRenewable(_)))
            .and_then(|l| l.renewal.clone());
        let latest = lineage
            .and_then(|l| l.transactions.last())
            .and_then(|latest| books.transactions.get(latest));
        let status = renewal
            .as_ref()
            .zip(latest)
            .map(|(r, latest)| AppStoreServer::subscription_status(latest, Some(r), now));
        self.keep(&t, renewal.as_ref());
        Ok(Change {
            notification_type,
            subtype: None,
            transaction: t,
            renewal,
            status,
        })
    }

    /// A notification to send about `transaction`; subscriptions carry their renewal info and
    /// status.
    fn change(
        &self,
        notification_type: &'static str,
        subtype: Option<&'static str>,
        transaction: Value,
        renewal: Option<Value>,
        now: i64,
    ) -> Change {
        let status = renewal
            .as_ref()
            .map(|r| AppStoreServer::subscription_status(&transaction, Some(r), now));
        Change {
            notification_type,
            subtype,
            transaction,
            renewal,
            status,
        }
    }

    /// Signs the notification, sends it to the gateway once and records it in the API's history.
    async fn send(&self, change: Change) -> Result<Outcome, AppleStoreError> {
        let now = self.clock.now_ms();
        let uuid = uuid::Uuid::new_v4().to_string();
        let environment = self.server.environment();
        let signed_transaction = self.chain().sign(&change.transaction)?;
        let signed_renewal = change
            .renewal
            .as_ref()
            .map(|r| self.chain().sign(r))
            .transpose()?;
        let body = self.chain().notification(&Notification {
            notification_type: change.notification_type,
            subtype: change.subtype,
            uuid: &uuid,
            signed_date: now,
            bundle_id: self.server.bundle_id(),
            app_apple_id: self.server.app_apple_id(),
            environment: &environment,
            signed_transaction: Some(signed_transaction),
            signed_renewal,
            status: change.status,
        })?;
        let signed_payload = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|b| b["signedPayload"].as_str().map(str::to_owned))
            .ok_or(AppleStoreError::Sign(SimError::Sign))?;
        let delivery = self
            .server
            .send_notification(&signed_payload)
            .await
            .map_err(|e| match e {
                SendError::NoUrl => AppleStoreError::NoNotificationUrl,
                SendError::NotJws(_) => AppleStoreError::Sign(SimError::Sign),
            })?;
        let text = |field: &str| {
            change.transaction[field]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Outcome {
            transaction_id: text("transactionId"),
            original_transaction_id: text("originalTransactionId"),
            notification_type: change.notification_type,
            subtype: change.subtype,
            notification_uuid: uuid,
            http_status: delivery.http_status,
            send_attempt_result: delivery.send_attempt_result,
            gateway_answer: delivery
                .body
                .filter(|b| !b.is_empty())
                .map(|b| serde_json::from_str(&b).unwrap_or(Value::String(b))),
            transaction: change.transaction,
            renewal_info: change.renewal,
        })
    }

    /// The control surface: `POST /sim/apple/{buy, renew, fail-to-renew, refund, reverse-refund,
    /// revoke, expire}`, `GET /sim/apple/transactions/{id}` (the decoded payload),
    /// `GET /sim/apple/transactions/{id}/signed` and `GET|POST /sim/apple/clock`. Errors are
    /// `{"error": {"code", "message"}}` with a 4xx for a bad request or an unknown id.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/sim/apple/buy", post(buy))
            .route("/sim/apple/renew", post(renew))
            .route("/sim/apple/fail-to-renew", post(fail_to_renew))
            .route("/sim/apple/refund", post(refund))
            .route("/sim/apple/reverse-refund", post(reverse_refund))
            .route("/sim/apple/revoke", post(revoke))
            .route("/sim/apple/expire", post(expire))
            .route("/sim/apple/transactions/{id}", get(transaction))
            .route("/sim/apple/transactions/{id}/signed", get(signed))
            .route("/sim/apple/clock", get(clock).post(set_clock))
            .with_state(self.clone())
    }
}

/// What the control handlers answer.
type Answer = Result<Response, AppleStoreError>;

/// Reads a JSON body, answering a clear 400 (not axum's plain-text rejection) when it does not fit.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppleStoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AppleStoreError::Invalid(format!("the body does not fit this action: {e}")))
}

fn outcome(o: Outcome) -> Response {
    Json(o).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyBody {
    sku: String,
    kind: String,
    period: Option<String>,
    app_account_token: Option<String>,
    quantity: Option<u32>,
    #[serde(default)]
    family_shared: bool,
    price: Option<i64>,
}

async fn buy(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: BuyBody = body(&bytes)?;
    let kind = ProductKind::parse(&b.kind, b.period.as_deref())?;
    let purchase = Purchase {
        sku: &b.sku,
        kind,
        app_account_token: b.app_account_token.as_deref(),
        quantity: b.quantity.unwrap_or(1),
        family_shared: b.family_shared,
        price: b.price,
    };
    Ok(outcome(s.buy_with(&purchase).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineageBody {
    original_transaction_id: String,
}

async fn renew(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: LineageBody = body(&bytes)?;
    Ok(outcome(s.renew(&b.original_transaction_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    original_transaction_id: String,
    /// Apple offers 3, 16 or 28 days; any whole number of days is taken.
    grace_period_days: Option<u32>,
}

async fn fail_to_renew(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: FailBody = body(&bytes)?;
    let grace = b
        .grace_period_days
        .map(|d| Duration::from_secs(u64::from(d) * 86_400));
    Ok(outcome(
        s.fail_to_renew(&b.original_transaction_id, grace).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    transaction_id: String,
    /// Apple's `revocationReason`: 0 (another reason, the default) or 1 (an issue in the app).
    revocation_reason: Option<i64>,
}

async fn refund(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: RefundBody = body(&bytes)?;
    let reason = match b.revocation_reason {
        None | Some(0) => RevocationReason::Other,
        Some(1) => RevocationReason::AppIssue,
        Some(n) => {
            return Err(AppleStoreError::Invalid(format!(
                "revocation_reason {n} is not Apple's: 0 (another reason) or 1 (an issue in the app)"
            )));
        }
    };
    Ok(outcome(s.refund(&b.transaction_id, reason).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransactionBody {
    transaction_id: String,
}

async fn reverse_refund(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: TransactionBody = body(&bytes)?;
    Ok(outcome(s.reverse_refund(&b.transaction_id).await?))
}

async fn revoke(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: TransactionBody = body(&bytes)?;
    Ok(outcome(s.revoke(&b.transaction_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireBody {
    original_transaction_id: String,
    /// VOLUNTARY (the default), BILLING_RETRY, PRICE_INCREASE or PRODUCT_NOT_FOR_SALE.
    subtype: Option<String>,
}

async fn expire(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: ExpireBody = body(&bytes)?;
    let subtype = b
        .subtype
        .as_deref()
        .map_or(Ok(ExpirySubtype::Voluntary), str::parse)?;
    Ok(outcome(
        s.expire(&b.original_transaction_id, subtype).await?,
    ))
}

async fn transaction(State(s): State<Arc<AppleStore>>, Path(id): Path<String>) -> Answer {
    Ok(Json(s.transaction(&id)?).into_response())
}

async fn signed(State(s): State<Arc<AppleStore>>, Path(id): Path<String>) -> Answer {
    Ok(Json(json!({"signedTransactionInfo": s.signed_transaction(&id)?})).into_response())
}

async fn clock(State(s): State<Arc<AppleStore>>) -> Response {
    Json(json!({"now_ms": s.clock.now_ms()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    /// Stops the clock here (Unix ms).
    now_ms: Option<i64>,
    /// Then moves it this far.
    advance_ms: Option<i64>,
}

async fn set_clock(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: ClockBody = body(&bytes)?;
    if let Some(at) = b.now_ms {
        s.clock.set(at);
    }
    if let Some(by) = b.advance_ms {
        s.clock.advance(by);
    }
    Ok(Json(json!({"now_ms": s.clock.now_ms()})).into_response())
}

#[cfg(test)]
mod tests {
    use gateway_core::{
        Timestamp,
        apple::{AppleEnvironment, SignedDataVerifier, TrustedRoots},
    };

    use super::*;
    use crate::apple_api::ApiKey;

    /// 2026-11-22T10:00:00Z.
    const T0: i64 = 1_795_341_600_000;
    const DAY: i64 = 86_400_000;

    /// The payload of a compact JWS, unverified.
    fn payload(jws: &str) -> Value {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let part = jws.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    /// A store whose notifications land in `received`, answered `{"status": "decided"}`.
    struct Rig {
        store: Arc<AppleStore>,
        key: ApiKey,
        api: String,
        received: Arc<Mutex<Vec<Value>>>,
        http: reqwest::Client,
    }

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    }

    async fn rig() -> Rig {
        let chain = Arc::new(AppleChain::generate().unwrap());
        let key = ApiKey::generate("69a6de70-03db-47e3-e053-5b8c7c11a4d1", "2X9R4HXF34").unwrap();
        let server = AppStoreServer::new(chain, key.clone(), "edu.acme.app");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let gateway = Router::new().route(
            "/notify",
            post(move |Json(body): Json<Value>| {
                let sink = sink.clone();
                async move {
                    lock(&sink).push(body);
                    Json(json!({"status": "decided"}))
                }
            }),
        );
        let gateway = serve(gateway).await;
        server.set_notification_url(&format!("{gateway}/notify"));
        let store = AppleStore::new(server.clone(), SimClock::fixed(T0));
        let api = serve(server.router().merge(store.router())).await;
        Rig {
            store,
            key,
            api,
            received,
            http: reqwest::Client::new(),
        }
    }

    impl Rig {
        fn verifier(&self) -> SignedDataVerifier {
            SignedDataVerifier::new(
                TrustedRoots::from_pems(&[self.store.chain().root_pem()]).unwrap(),
                "edu.acme.app",
                AppleEnvironment::Sandbox,
                None,
            )
        }

        /// The last notification the gateway received, verified as the gateway verifies it:
        /// (payload, transaction, renewal info), each as JSON.
        fn last(&self) -> (Value, Value, Option<Value>) {
            let body = lock(&self.received).last().cloned().unwrap();
            let now = Timestamp::from_millis(self.store.clock().now_ms());
            let v = self.verifier();
            let jws = body["signedPayload"].as_str().unwrap();
            v.verify_notification(jws, now).unwrap();
            let n = payload(jws);
            let t = n["data"]["signedTransactionInfo"].as_str().unwrap();
            v.verify_transaction(t, now).unwrap();
            let r = n["data"]["signedRenewalInfo"].as_str().map(|r| {
                v.verify_renewal_info(r, now).unwrap();
                payload(r)
            });
            let t = payload(t);
            (n, t, r)
        }

        /// Calls the fake App Store Server API with a bearer token as Apple's libraries make it.
        async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.kid = Some(self.key.key_id.clone());
            let claims = json!({"iss": self.key.issuer_id, "aud": "appstoreconnect-v1", "bid": "edu.acme.app",
                "exp": SimClock::system().now_ms() / 1000 + 300});
            let key = jsonwebtoken::EncodingKey::from_ec_pem(self.key.private_key_pem.as_bytes())
                .unwrap();
            let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            let mut req = self
                .http
                .request(method, format!("{}{path}", self.api))
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let res = req.send().await.unwrap();
            assert!(res.status().is_success(), "{path}: {}", res.status());
            res.json().await.unwrap()
        }

        async fn control(&self, path: &str, body: Value) -> (u16, Value) {
            let res = self
                .http
                .post(format!("{}/sim/apple/{path}", self.api))
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json().await.unwrap())
        }
    }

    #[tokio::test]
    async fn a_purchase_is_notified_and_served_as_apple_does() {
        let rig = rig().await;
        let token = "7389a31a-fb6d-4569-a2a6-db7d85d84813";
        let done = rig
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(token))
            .await
            .unwrap();
        assert_eq!(
            (done.notification_type, done.subtype, done.http_status),
            ("ONE_TIME_CHARGE", None, Some(200))
        );
        assert_eq!(done.send_attempt_result, "SUCCESS");
        assert_eq!(done.gateway_answer, Some(json!({"status": "decided"})));
        assert_eq!(done.transaction_id, done.original_transaction_id);
        assert_eq!(done.transaction_id.len(), 16);
        let (n, t, r) = rig.last();
        assert_eq!(n["notificationType"], "ONE_TIME_CHARGE");
        assert!(n.get("subtype").is_none());
        assert_eq!(n["notificationUUID"], done.notification_uuid.as_str());
        assert_eq!(n["version"], "2.0");
        assert_eq!(n["signedDate"], T0);
        assert_eq!(n["data"]["bundleId"], "edu.acme.app");
        assert_eq!(n["data"]["environment"], "Sandbox");
        assert!(r.is_none(), "one-time purchases have no renewal info");
        assert_eq!(
            t,
            json!({"transactionId": done.transaction_id, "originalTransactionId": done.transaction_id,
                "bundleId": "edu.acme.app", "productId": "edu.acme.cs101", "purchaseDate": T0,
                "originalPurchaseDate": T0, "quantity": 1, "type": "Non-Consumable", "appAccountToken": token,
                "inAppOwnershipType": "PURCHASED", "signedDate": T0, "environment": "Sandbox",
                "transactionReason": "PURCHASE", "storefront": "USA", "storefrontId": "143441",
                "price": 9990, "currency": "USD"})
        );
        // The fake API serves the same transaction.
        let info = rig
            .api(
                reqwest::Method::GET,
                &format!("/inApps/v1/transactions/{}", done.transaction_id),
                None,
            )
            .await;
        let served = payload(info["signedTransactionInfo"].as_str().unwrap());
        assert_eq!(served, t);
        let signed = rig.store.signed_transaction(&done.transaction_id).unwrap();
        assert_eq!(payload(&signed), t);

        rig.store.clock().advance(DAY);
        let refunded = rig
            .store
            .refund(&done.transaction_id, RevocationReason::AppIssue)
            .await
            .unwrap();
        let (n, t, _) = rig.last();
        assert_eq!(n["notificationType"], "REFUND");
        assert_eq!(
            (
                &t["revocationDate"],
                &t["revocationReason"],
                &t["revocationType"]
            ),
            (&json!(T0 + DAY), &json!(1), &json!("REFUND_FULL"))
        );
        assert_eq!(refunded.transaction["revocationDate"], T0 + DAY);
        let refunds = rig
            .api(
                reqwest::Method::GET,
                &format!("/inApps/v2/refund/lookup/{}", done.transaction_id),
                None,
            )
            .await;
        assert_eq!(refunds["signedTransactions"].as_array().unwrap().len(), 1);
        assert!(matches!(
            rig.store
                .refund(&done.transaction_id, RevocationReason::Other)
                .await,
            Err(AppleStoreError::AlreadyRevoked(_))
        ));

        rig.store.clock().advance(DAY);
        rig.store
            .reverse_refund(&done.transaction_id)
            .await
            .unwrap();
        let (n, t, _) = rig.last();
        assert_eq!(n["notificationType"], "REFUND_REVERSED");
        assert!(t.get("revocationDate").is_none() && t.get("revocationReason").is_none());
        assert_eq!(t["signedDate"], T0 + 2 * DAY);
        let refunds = rig
            .api(
                reqwest::Method::GET,
                &format!("/inApps/v2/refund/lookup/{}", done.transaction_id),
                None,
            )
            .await;
        assert_eq!(refunds["signedTransactions"], json!([]));
        assert!(matches!(
            rig.store.reverse_refund(&done.transaction_id).await,
            Err(AppleStoreError::NotRefunded(_))
        ));

        rig.store.revoke(&done.transaction_id).await.unwrap();
        let (n, t, _) = rig.last();
        assert_eq!(n["notificationType"], "REVOKE");
        assert_eq!(
            (&t["inAppOwnershipType"], &t["revocationType"]),
            (&json!("FAMILY_SHARED"), &json!("FAMILY_REVOKE"))
        );

        // Every notification is in the API's history, with its one attempt.
        let history = rig
            .api(
                reqwest::Method::POST,
                "/inApps/v1/notifications/history",
                Some(json!({"startDate": T0 - DAY, "endDate": T0 + 10 * DAY})),
            )
            .await;
        let types: Vec<String> = history["notificationHistory"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                assert_eq!(h["sendAttempts"][0]["sendAttemptResult"], "SUCCESS");
                payload(h["signedPayload"].as_str().unwrap())["notificationType"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            types,
            ["ONE_TIME_CHARGE", "REFUND", "REFUND_REVERSED", "REVOKE"]
        );
    }

    #[tokio::test]
    async fn a_subscription_renews_fails_recovers_and_expires() {
        let rig = rig().await;
        let bought = rig
            .store
            .buy(
                "edu.acme.premium",
                ProductKind::AutoRenewable(Period::ONE_MONTH),
                None,
            )
            .await
            .unwrap();
        let lineage = bought.original_transaction_id.clone();
        let (n, t, r) = rig.last();
        assert_eq!(
            (&n["notificationType"], &n["subtype"], &n["data"]["status"]),
            (&json!("SUBSCRIBED"), &json!("INITIAL_BUY"), &json!(1))
        );
        // 2026-11-22 + one calendar month.
        let first_end = T0 + 30 * DAY;
        assert_eq!(t["expiresDate"], first_end);
        assert_eq!(t["type"], "Auto-Renewable Subscription");
        assert!(
            t["webOrderLineItemId"].is_string() && t["subscriptionGroupIdentifier"].is_string()
        );
        let r = r.unwrap();
        assert_eq!(
            (
                &r["autoRenewStatus"],
                &r["isInBillingRetryPeriod"],
                &r["renewalDate"]
            ),
            (&json!(1), &json!(false), &json!(first_end))
        );

        let renewed = rig.store.renew(&lineage).await.unwrap();
        let (n, t, _) = rig.last();
        assert_eq!(n["notificationType"], "DID_RENEW");
        assert!(n.get("subtype").is_none());
        assert_ne!(renewed.transaction_id, lineage);
        assert_eq!(t["originalTransactionId"], lineage.as_str());
        assert_eq!(t["transactionReason"], "RENEWAL");
        assert_eq!(t["purchaseDate"], first_end, "renewed when the period ends");
        let second_end = first_end + 31 * DAY;
        assert_eq!(t["expiresDate"], second_end);

        rig.store.clock().set(second_end + 1_000);
        rig.store
            .fail_to_renew(&lineage, Some(Duration::from_secs(16 * 86_400)))
            .await
            .unwrap();
        let (n, t, r) = rig.last();
        let r = r.unwrap();
        assert_eq!(
            (&n["notificationType"], &n["subtype"], &n["data"]["status"]),
            (
                &json!("DID_FAIL_TO_RENEW"),
                &json!("GRACE_PERIOD"),
                &json!(4)
            )
        );
        assert_eq!(t["transactionId"], renewed.transaction_id.as_str());
        assert_eq!(
            (
                &r["isInBillingRetryPeriod"],
                &r["gracePeriodExpiresDate"],
                &r["expirationIntent"]
            ),
            (&json!(true), &json!(second_end + 16 * DAY), &json!(2))
        );
        let statuses = rig
            .api(
                reqwest::Method::GET,
                &format!("/inApps/v1/subscriptions/{lineage}"),
                None,
            )
            .await;
        assert_eq!(statuses["data"][0]["lastTransactions"][0]["status"], 4);

        let recovered = rig.store.renew(&lineage).await.unwrap();
        assert_eq!(recovered.subtype, Some("BILLING_RECOVERY"));
        assert_eq!(
            recovered.transaction["purchaseDate"],
            second_end + 1_000,
            "a late renewal starts now"
        );
        let r = recovered.renewal_info.unwrap();
        assert!(r.get("gracePeriodExpiresDate").is_none());
        assert_eq!(r["isInBillingRetryPeriod"], false);

        rig.store.fail_to_renew(&lineage, None).await.unwrap();
        let (n, _, r) = rig.last();
        assert!(n.get("subtype").is_none());
        assert_eq!(n["data"]["status"], 3, "billing retry");
        assert!(r.unwrap().get("gracePeriodExpiresDate").is_none());

        rig.store
            .expire(&lineage, ExpirySubtype::BillingRetry)
            .await
            .unwrap();
        let (n, t, r) = rig.last();
        let r = r.unwrap();
        assert_eq!(
            (&n["notificationType"], &n["subtype"], &n["data"]["status"]),
            (&json!("EXPIRED"), &json!("BILLING_RETRY"), &json!(2))
        );
        assert_eq!(
            t["expiresDate"],
            second_end + 1_000,
            "expired early: the period ends now"
        );
        assert_eq!(
            (
                &r["autoRenewStatus"],
                &r["expirationIntent"],
                &r["isInBillingRetryPeriod"]
            ),
            (&json!(0), &json!(2), &json!(false))
        );
        let statuses = rig
            .api(
                reqwest::Method::GET,
                &format!("/inApps/v1/subscriptions/{lineage}"),
                None,
            )
            .await;
        assert_eq!(statuses["data"][0]["lastTransactions"][0]["status"], 2);
        assert!(matches!(
            rig.store.expire(&lineage, ExpirySubtype::Voluntary).await,
            Err(AppleStoreError::AlreadyExpired(_))
        ));
        let history = rig
            .api(
                reqwest::Method::GET,
                &format!("/inApps/v2/history/{lineage}"),
                None,
            )
            .await;
        assert_eq!(history["signedTransactions"].as_array().unwrap().len(), 3);
        let back = rig.store.renew(&lineage).await.unwrap();
        assert_eq!(
            (back.notification_type, back.subtype),
            ("DID_RENEW", Some("BILLING_RECOVERY"))
        );
    }

    #[tokio::test]
    async fn refused_actions_change_nothing_and_the_control_surface_says_why() {
        let rig = rig().await;
        let coins = rig
            .store
            .buy_with(&Purchase {
                quantity: 3,
                ..Purchase::new("edu.acme.coins", ProductKind::Consumable)
            })
            .await
            .unwrap();
        assert_eq!(coins.transaction["quantity"], 3);
        assert!(matches!(
            rig.store.renew(&coins.transaction_id).await,
            Err(AppleStoreError::NotASubscription(_))
        ));
        assert!(matches!(
            rig.store.refund("404", RevocationReason::Other).await,
            Err(AppleStoreError::UnknownTransaction(_))
        ));
        assert!(matches!(
            rig.store
                .buy("edu.acme.cs101", ProductKind::NonConsumable, Some("nope"))
                .await,
            Err(AppleStoreError::Invalid(_))
        ));
        assert_eq!(lock(&rig.received).len(), 1);

        let (status, body) = rig
            .control("refund", json!({"transaction_id": "404"}))
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (404, &json!("unknown_transaction"))
        );
        assert!(body["error"]["message"].as_str().unwrap().contains("404"));
        let (status, body) = rig
            .control("buy", json!({"sku": "x", "kind": "subscription"}))
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_request"))
        );
        let (status, _) = rig.control("renew", json!({"nope": 1})).await;
        assert_eq!(status, 400);
        let (status, body) = rig
            .control(
                "buy",
                json!({"sku": "edu.acme.premium", "kind": "auto-renewable", "period": "P1W"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["transaction"]["expiresDate"], T0 + 7 * DAY);
        assert_eq!(body["gateway_answer"]["status"], "decided");
        let (status, body) = rig
            .control(
                "expire",
                json!({"original_transaction_id": body["original_transaction_id"], "subtype": "VOLUNTARY"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["renewal_info"]["expirationIntent"], 1);
        let signed: Value = rig
            .http
            .get(format!(
                "{}/sim/apple/transactions/{}/signed",
                rig.api, coins.transaction_id
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(signed["signedTransactionInfo"].as_str().unwrap().len() > 100);
        let res = rig
            .http
            .get(format!("{}/sim/apple/transactions/9/signed", rig.api))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 404);

        // Nowhere to send: refused before anything changes.
        let bare = AppStoreServer::new(
            rig.store.server().chain().clone(),
            rig.key.clone(),
            "edu.acme.app",
        );
        let store = AppleStore::new(bare, SimClock::fixed(T0));
        assert!(matches!(
            store
                .buy("edu.acme.cs101", ProductKind::NonConsumable, None)
                .await,
            Err(AppleStoreError::NoNotificationUrl)
        ));
        assert!(lock(&store.books).transactions.is_empty());
    }

    #[tokio::test]
    async fn a_gateway_that_does_not_answer_is_recorded_as_apple_records_it() {
        let rig = rig().await;
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", closed.local_addr().unwrap());
        drop(closed);
        rig.store.server().set_notification_url(&url);
        let done = rig
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, None)
            .await
            .unwrap();
        assert_eq!(
            (done.http_status, done.send_attempt_result),
            (None, "NO_RESPONSE")
        );
        let history = rig
            .api(
                reqwest::Method::POST,
                "/inApps/v1/notifications/history",
                Some(json!({"startDate": T0 - DAY, "endDate": T0 + DAY, "onlyFailures": true})),
            )
            .await;
        assert_eq!(
            history["notificationHistory"][0]["sendAttempts"],
            json!([{"attemptDate": T0, "sendAttemptResult": "NO_RESPONSE"}])
        );
    }

    #[test]
    fn periods_read_iso_8601_and_add_calendar_months() {
        assert_eq!("P1M".parse::<Period>().unwrap(), Period::ONE_MONTH);
        for p in ["P1W", "P3M", "P1Y", "P3D", "PT5M", "PT1H", "PT30S"] {
            assert_eq!(p.parse::<Period>().unwrap().to_string(), p);
        }
        for bad in ["", "P", "1M", "P0M", "PM", "P1X", "PT1D", "P1.5M"] {
            assert!(bad.parse::<Period>().is_err(), "{bad:?}");
        }
        // 2027-01-31T00:00:00Z plus a month is the last day of February.
        let jan31 = 1_801_353_600_000;
        assert_eq!(Period::ONE_MONTH.after(jan31), jan31 + 28 * DAY);
        assert_eq!(
            "P1Y".parse::<Period>().unwrap().after(jan31),
            jan31 + 365 * DAY
        );
        assert_eq!("PT5M".parse::<Period>().unwrap().after(0), 300_000);
        assert!(ProductKind::parse("consumable", Some("P1M")).is_err());
        assert_eq!(
            ProductKind::parse("auto-renewable", None).unwrap(),
            ProductKind::AutoRenewable(Period::ONE_MONTH)
        );
    }
}
