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
//!
//! This file is the state machine: the actions, the books they keep and the notifications they send.
//! `http.rs` is the control surface (router, handlers, body parsing, error answers); `tests.rs`
//! drives both and looks into the books. Periods and product kinds are tested from
//! `crates/store-sim/tests/apple_store.rs`.

mod http;
#[cfg(test)]
mod tests;

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

use serde::Serialize;
use serde_json::{Value, json};
use time::{Month, OffsetDateTime};

use crate::{
    SimClock,
    apple::{
        api::{AppStoreServer, SendError},
        chain::{AppleChain, Notification, SimError},
    },
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

    /// `P1Y`.
    pub const ONE_YEAR: Period = Period {
        count: 1,
        unit: Unit::Year,
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
    /// The Apple Account buying (the simulator's name for it): the transaction carries the
    /// account's `appTransactionId`, as StoreKit's do from iOS 18.4.
    pub account: Option<&'a str>,
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
            account: None,
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
    /// The family members' copies of this purchase (their lineages), for a purchaser's lineage.
    family: Vec<String>,
}

#[derive(Default)]
struct Books {
    /// JWSTransactionDecodedPayloads by `transactionId`.
    transactions: HashMap<String, Value>,
    /// Lineages by `originalTransactionId`.
    lineages: HashMap<String, Lineage>,
    /// The app's AppTransaction for each Apple Account, by the simulator's name for the account.
    accounts: HashMap<String, Value>,
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

impl Books {
    /// A subscription that is still running (neither revoked nor expired), its period and latest
    /// transaction, for the actions only such a subscription takes.
    fn running(&mut self, id: &str) -> Result<(&mut Lineage, Period, Value), AppleStoreError> {
        let (lineage_id, period, latest) = self.subscription(id)?;
        if is_revoked(&latest) {
            return Err(AppleStoreError::Revoked(id.to_owned()));
        }
        let lineage = self
            .lineages
            .get_mut(&lineage_id)
            .ok_or_else(|| AppleStoreError::UnknownTransaction(lineage_id.clone()))?;
        if lineage.expired.is_some() {
            return Err(AppleStoreError::AlreadyExpired(id.to_owned()));
        }
        Ok((lineage, period, latest))
    }
}

/// What an action decided, to be sent once the books are closed.
struct Change {
    notification_type: &'static str,
    subtype: Option<&'static str>,
    transaction: Value,
    renewal: Option<Value>,
    status: Option<i64>,
    /// For a notification about the app's Apple Account (`appData`): its AppTransaction, sent in
    /// place of `transaction`.
    app_transaction: Option<Value>,
    /// For EXTERNAL_PURCHASE_TOKEN: the token, sent in place of `transaction`.
    external_token: Option<Value>,
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
        if let Some(account) = p.account {
            t["appTransactionId"] = self.app_transaction(account)?["appTransactionId"].clone();
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
                    family: Vec::new(),
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
            // A downgrade (or crossgrade) chosen for the next period takes effect now.
            if let Some(next) = renewal["autoRenewProductId"].as_str() {
                t["productId"] = next.into();
                renewal["productId"] = next.into();
            }
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

    /// The customer moves a subscription to another product of its group. An upgrade takes effect
    /// at once: the latest transaction is marked `isUpgraded`, a new transaction of `sku` starts a
    /// new period now under the same `originalTransactionId`, and Apple sends
    /// DID_CHANGE_RENEWAL_PREF/UPGRADE with it. A downgrade takes effect at the next renewal: only
    /// the renewal info's `autoRenewProductId` changes now (DID_CHANGE_RENEWAL_PREF/DOWNGRADE with
    /// the current transaction), and [`AppleStore::renew`] then bills `sku`.
    pub async fn change_plan(
        &self,
        original_transaction_id: &str,
        sku: &str,
        upgrade: bool,
    ) -> Result<Outcome, AppleStoreError> {
        self.plan_change(original_transaction_id, sku, upgrade, None)
            .await
    }

    /// An upgrade to a product of the group with another period (a yearly plan upgraded to a
    /// higher monthly one takes effect at once, as Apple has it): the new period starts now.
    pub async fn change_plan_to(
        &self,
        original_transaction_id: &str,
        sku: &str,
        period: Option<Period>,
    ) -> Result<Outcome, AppleStoreError> {
        self.plan_change(original_transaction_id, sku, true, period)
            .await
    }

    async fn plan_change(
        &self,
        original_transaction_id: &str,
        sku: &str,
        upgrade: bool,
        new_period: Option<Period>,
    ) -> Result<Outcome, AppleStoreError> {
        self.check_url()?;
        if sku.trim().is_empty() {
            return Err(AppleStoreError::Invalid(
                "a plan change needs the product id (sku) to move to".into(),
            ));
        }
        let now = self.clock.now_ms();
        let change = {
            let mut books = lock(&self.books);
            let (lineage, period, latest) = books.running(original_transaction_id)?;
            let mut renewal = lineage.renewal.clone().unwrap_or_else(|| json!({}));
            let lineage_id = books.lineage_of(original_transaction_id)?;
            if latest["productId"].as_str() == Some(sku) {
                return Err(AppleStoreError::Invalid(format!(
                    "the subscription is already on {sku}"
                )));
            }
            renewal["autoRenewProductId"] = sku.into();
            renewal["signedDate"] = now.into();
            if upgrade {
                let mut old = latest.clone();
                old["isUpgraded"] = true.into();
                old["signedDate"] = now.into();
                let old_id = old["transactionId"].as_str().unwrap_or_default().to_owned();
                books.transactions.insert(old_id, old.clone());
                self.keep(&old, None);
                let id = self.new_transaction_id();
                let period = new_period.unwrap_or(period);
                let expires = period.after(now);
                let mut t = latest;
                remove(&mut t, &["isUpgraded", "offerType", "offerIdentifier"]);
                t["transactionId"] = id.clone().into();
                t["productId"] = sku.into();
                t["webOrderLineItemId"] = self.new_web_order_id().into();
                t["purchaseDate"] = now.into();
                t["expiresDate"] = expires.into();
                t["signedDate"] = now.into();
                t["transactionReason"] = "PURCHASE".into();
                renewal["productId"] = sku.into();
                renewal["renewalDate"] = expires.into();
                books.transactions.insert(id.clone(), t.clone());
                if let Some(lineage) = books.lineages.get_mut(&lineage_id) {
                    lineage.transactions.push(id);
                    lineage.renewal = Some(renewal.clone());
                    lineage.kind = ProductKind::AutoRenewable(period);
                }
                self.keep(&t, Some(&renewal));
                self.change(
                    "DID_CHANGE_RENEWAL_PREF",
                    Some("UPGRADE"),
                    t,
                    Some(renewal),
                    now,
                )
            } else {
                if let Some(lineage) = books.lineages.get_mut(&lineage_id) {
                    lineage.renewal = Some(renewal.clone());
                }
                self.keep(&latest, Some(&renewal));
                let mut sent = latest;
                sent["signedDate"] = now.into();
                self.change(
                    "DID_CHANGE_RENEWAL_PREF",
                    Some("DOWNGRADE"),
                    sent,
                    Some(renewal),
                    now,
                )
            }
        };
        self.send(change).await
    }

    /// The app's AppTransaction for an Apple Account (`account` is the simulator's name for it),
    /// made the first time the account opens the app: its `appTransactionId` is the account's,
    /// stable however often it is asked for.
    pub fn app_transaction(&self, account: &str) -> Result<Value, AppleStoreError> {
        if account.trim().is_empty() {
            return Err(AppleStoreError::Invalid(
                "an app transaction needs the name of an Apple Account".into(),
            ));
        }
        let mut books = lock(&self.books);
        if let Some(t) = books.accounts.get(account) {
            return Ok(t.clone());
        }
        let now = self.clock.now_ms();
        let mut t = json!({
            "receiptType": self.server.environment(), "bundleId": self.server.bundle_id(),
            "applicationVersion": "1", "versionExternalIdentifier": 0,
            "receiptCreationDate": now, "originalPurchaseDate": now, "originalApplicationVersion": "1",
            "deviceVerification": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                uuid::Uuid::new_v4().as_bytes(),
            ),
            "deviceVerificationNonce": uuid::Uuid::new_v4().to_string(),
            "appTransactionId": self.new_transaction_id(), "originalPlatform": "iOS",
        });
        if let Some(id) = self.server.app_apple_id() {
            t["appAppleId"] = id.into();
        }
        books.accounts.insert(account.to_owned(), t.clone());
        self.server.put_app_transaction(account, t.clone());
        Ok(t)
    }

    /// The AppTransaction of an Apple Account as StoreKit hands it to the app
    /// (`AppTransaction.shared`'s `jwsRepresentation`).
    pub fn signed_app_transaction(&self, account: &str) -> Result<String, AppleStoreError> {
        let t = self.app_transaction(account)?;
        Ok(self.chain().sign(&t)?)
    }

    /// A parent or guardian withdraws consent for the account's use of the app (Declared Age
    /// Range): RESCIND_CONSENT, with `appData` carrying the account's AppTransaction.
    pub async fn rescind_consent(&self, account: &str) -> Result<Outcome, AppleStoreError> {
        self.check_url()?;
        let app_transaction = lock(&self.books).accounts.get(account).cloned();
        let Some(app_transaction) = app_transaction else {
            return Err(AppleStoreError::Invalid(format!(
                "the Apple Account {account:?} never opened the app (ask for its app transaction first)"
            )));
        };
        self.send(Change {
            notification_type: "RESCIND_CONSENT",
            subtype: None,
            transaction: json!({}),
            renewal: None,
            status: None,
            app_transaction: Some(app_transaction),
            external_token: None,
        })
        .await
    }

    /// Apple tells the app about an External Purchase token (apps that link out to buy, under the
    /// External Purchase entitlements): EXTERNAL_PURCHASE_TOKEN with subtype CREATED, UNREPORTED or
    /// ACTIVE_TOKEN_REMINDER, and `tokenType` (ACQUISITION, SERVICES, IN_APP or LINK_OUT). The
    /// token's id starts `SANDBOX` outside production, as Apple's do.
    pub async fn external_purchase_token(
        &self,
        subtype: &str,
        token_type: &str,
    ) -> Result<Outcome, AppleStoreError> {
        const SUBTYPES: [&str; 3] = ["CREATED", "UNREPORTED", "ACTIVE_TOKEN_REMINDER"];
        const TYPES: [&str; 4] = ["ACQUISITION", "SERVICES", "IN_APP", "LINK_OUT"];
        self.check_url()?;
        let Some(subtype) = SUBTYPES.into_iter().find(|s| *s == subtype) else {
            return Err(AppleStoreError::Invalid(format!(
                "{subtype:?} is not an EXTERNAL_PURCHASE_TOKEN subtype: use {}",
                SUBTYPES.join(", ")
            )));
        };
        if !TYPES.contains(&token_type) {
            return Err(AppleStoreError::Invalid(format!(
                "{token_type:?} is not an external purchase token type: use {}",
                TYPES.join(", ")
            )));
        }
        let now = self.clock.now_ms();
        let prefix = if self.server.environment() == "Production" {
            ""
        } else {
            "SANDBOX_"
        };
        let mut token = json!({
            "externalPurchaseId": format!("{prefix}{}", uuid::Uuid::new_v4()),
            "tokenCreationDate": now, "bundleId": self.server.bundle_id(),
            "tokenType": token_type, "tokenExpirationDate": now + 30 * 86_400_000_i64,
        });
        if let Some(id) = self.server.app_apple_id() {
            token["appAppleId"] = id.into();
        }
        let mut change = self.change(
            "EXTERNAL_PURCHASE_TOKEN",
            Some(subtype),
            json!({}),
            None,
            now,
        );
        change.external_token = Some(token);
        self.send(change).await
    }

    /// Apple says something about a transaction that changes nothing in its books:
    /// CONSUMPTION_REQUEST (the customer asked for a refund), REFUND_DECLINED, OFFER_REDEEMED
    /// (subtypes INITIAL_BUY, RESUBSCRIBE, UPGRADE, DOWNGRADE) and PRICE_INCREASE (PENDING or
    /// ACCEPTED, auto-renewables only, which sets the renewal info's `priceIncreaseStatus`).
    pub async fn tell(
        &self,
        transaction_id: &str,
        notification_type: &str,
        subtype: Option<&str>,
    ) -> Result<Outcome, AppleStoreError> {
        const TOLD: [(&str, &[&str]); 4] = [
            ("CONSUMPTION_REQUEST", &[]),
            ("REFUND_DECLINED", &[]),
            (
                "OFFER_REDEEMED",
                &["INITIAL_BUY", "RESUBSCRIBE", "UPGRADE", "DOWNGRADE"],
            ),
            ("PRICE_INCREASE", &["PENDING", "ACCEPTED"]),
        ];
        self.check_url()?;
        let Some(&(kind, subtypes)) = TOLD.iter().find(|(k, _)| *k == notification_type) else {
            return Err(AppleStoreError::Invalid(format!(
                "{notification_type:?} is not a notification the simulator tells on its own: use CONSUMPTION_REQUEST, REFUND_DECLINED, OFFER_REDEEMED or PRICE_INCREASE"
            )));
        };
        let subtype = match (subtype, subtypes.is_empty()) {
            (None, true) => None,
            (Some(s), false) => Some(*subtypes.iter().find(|x| **x == s).ok_or_else(|| {
                AppleStoreError::Invalid(format!(
                    "{s:?} is not a subtype of {kind}: use {}",
                    subtypes.join(", ")
                ))
            })?),
            (Some(s), true) => {
                return Err(AppleStoreError::Invalid(format!(
                    "{kind} has no subtype, and {s:?} was given"
                )));
            }
            (None, false) => {
                return Err(AppleStoreError::Invalid(format!(
                    "{kind} needs a subtype: {}",
                    subtypes.join(", ")
                )));
            }
        };
        let now = self.clock.now_ms();
        let change = {
            let mut books = lock(&self.books);
            let lineage_id = books.lineage_of(transaction_id)?;
            let mut t = books.transaction(transaction_id)?;
            let lineage = books
                .lineages
                .get_mut(&lineage_id)
                .ok_or_else(|| AppleStoreError::UnknownTransaction(transaction_id.to_owned()))?;
            let subscription = matches!(lineage.kind, ProductKind::AutoRenewable(_));
            if matches!(kind, "PRICE_INCREASE" | "OFFER_REDEEMED") && !subscription {
                return Err(AppleStoreError::NotASubscription(transaction_id.to_owned()));
            }
            let mut renewal = lineage.renewal.clone();
            if kind == "PRICE_INCREASE"
                && let Some(r) = renewal.as_mut()
            {
                r["priceIncreaseStatus"] = i64::from(subtype == Some("ACCEPTED")).into();
                r["signedDate"] = now.into();
                lineage.renewal = Some(r.clone());
            }
            if let Some(r) = &renewal {
                self.server.put_renewal_info(r.clone());
            }
            t["signedDate"] = now.into();
            self.change(kind, subtype, t, renewal, now)
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
            let (lineage, _, latest) = books.running(original_transaction_id)?;
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
        self.refund_share(transaction_id, reason, None).await
    }

    /// Apple refunds a transaction in part when `share` is given (`revocationType:
    /// REFUND_PRORATED`, `revocationPercentage` in thousandths of a percent of the whole quantity,
    /// 1 to 99999), else whole (`REFUND_FULL`); REFUND.
    pub async fn refund_share(
        &self,
        transaction_id: &str,
        reason: RevocationReason,
        share: Option<i64>,
    ) -> Result<Outcome, AppleStoreError> {
        if let Some(share) = share
            && !(1..100_000).contains(&share)
        {
            return Err(AppleStoreError::Invalid(format!(
                "a prorated refund's share is 1 to 99999 thousandths of a percent, not {share}"
            )));
        }
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
            match share {
                Some(share) => {
                    t["revocationType"] = "REFUND_PRORATED".into();
                    t["revocationPercentage"] = share.into();
                }
                None => t["revocationType"] = "REFUND_FULL".into(),
            }
            t["signedDate"] = now.into();
            self.replace(&mut books, t, "REFUND", now)?
        };
        let outcome = self.send(change).await?;
        // The family's copies go with the purchaser's refund: each is revoked (REVOKE).
        let members = {
            let books = lock(&self.books);
            let lineage = books.lineage_of(transaction_id)?;
            books
                .lineages
                .get(&lineage)
                .map(|l| l.family.clone())
                .unwrap_or_default()
        };
        for member in members {
            if !is_revoked(&self.transaction(&member)?) {
                self.revoke(&member).await?;
            }
        }
        Ok(outcome)
    }

    /// The purchaser shares a purchase with a family member (Family Sharing): a copy of it of the
    /// member's own, a lineage with its own ids, `inAppOwnershipType: FAMILY_SHARED` and no
    /// `appAccountToken` (the purchaser's app set that). StoreKit hands it to the member's device;
    /// no notification is sent. Returns the copy's JWSTransactionDecodedPayload. The purchaser's
    /// refund revokes it.
    pub fn share_with_family(&self, transaction_id: &str) -> Result<Value, AppleStoreError> {
        let now = self.clock.now_ms();
        let mut books = lock(&self.books);
        let original = books.transaction(transaction_id)?;
        if is_revoked(&original) {
            return Err(AppleStoreError::AlreadyRevoked(transaction_id.to_owned()));
        }
        let lineage_id = books.lineage_of(transaction_id)?;
        let kind = books
            .lineages
            .get(&lineage_id)
            .map(|l| l.kind)
            .ok_or_else(|| AppleStoreError::UnknownTransaction(transaction_id.to_owned()))?;
        if kind == ProductKind::Consumable {
            return Err(AppleStoreError::Invalid(
                "consumables are not shared with a family".into(),
            ));
        }
        let id = self.new_transaction_id();
        let mut copy = original.clone();
        if let Some(o) = copy.as_object_mut() {
            o.remove("appAccountToken");
            // The member has an Apple Account of their own.
            o.remove("appTransactionId");
        }
        copy["transactionId"] = id.clone().into();
        copy["originalTransactionId"] = id.clone().into();
        copy["inAppOwnershipType"] = "FAMILY_SHARED".into();
        copy["purchaseDate"] = now.into();
        copy["originalPurchaseDate"] = now.into();
        copy["signedDate"] = now.into();
        books.transactions.insert(id.clone(), copy.clone());
        books.lineages.insert(
            id.clone(),
            Lineage {
                kind,
                transactions: vec![id.clone()],
                renewal: None,
                expired: None,
                family: Vec::new(),
            },
        );
        if let Some(l) = books.lineages.get_mut(&lineage_id) {
            l.family.push(id);
        }
        self.keep(&copy, None);
        Ok(copy)
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
            app_transaction: None,
            external_token: None,
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
            app_transaction: None,
            external_token: None,
        }
    }

    /// Signs the notification, sends it to the gateway once and records it in the API's history.
    async fn send(&self, change: Change) -> Result<Outcome, AppleStoreError> {
        let now = self.clock.now_ms();
        let uuid = uuid::Uuid::new_v4().to_string();
        let environment = self.server.environment();
        let signed_app_transaction = change
            .app_transaction
            .as_ref()
            .map(|a| self.chain().sign(a))
            .transpose()?;
        let signed_transaction = match (&signed_app_transaction, &change.external_token) {
            (None, None) => Some(self.chain().sign(&change.transaction)?),
            _ => None,
        };
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
            signed_transaction,
            signed_renewal,
            status: change.status,
            signed_app_transaction,
            external_purchase_token: change.external_token.clone(),
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
}
