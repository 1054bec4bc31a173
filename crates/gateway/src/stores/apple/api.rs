//! The App Store Server API client: an ES256 bearer token per request (kid, iss, aud, bid), the base
//! URL per app and environment, and Apple's error and rate-limit rules. Apple's own libraries never
//! retry; the gateway does, because a purchase waits on the answer: 429 waits as `Retry-After` says,
//! 5xx and Apple's retryable codes back off with jitter, a bounded number of times.
//!
//! Every call goes through one `AppStoreApi::send`. Signed fields (`signedTransactions`,
//! `signedRenewalInfo`, `signedPayload` ...) come back as the JWS text Apple sent, unverified: the
//! caller verifies them with its app's `SignedDataVerifier`. Paged lists (transaction history, refund
//! history, notification history) have a one-page call and an `_all` call that follows the pages.

use std::{collections::HashSet, time::Duration};

use gateway_core::apple::AppleEnvironment;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    backoff::{Backoff, Jitter},
    model::App,
    stores::{
        call,
        error::{Problem, StoreError, StoreResult},
    },
};

/// Apple's production and sandbox hosts.
pub const PRODUCTION_URL: &str = "https://api.storekit.apple.com";
pub const SANDBOX_URL: &str = "https://api.storekit-sandbox.apple.com";

/// The longest wait between attempts: a client is waiting on the answer.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// How long a bearer token is valid: Apple refuses more than an hour; five minutes is what its
/// libraries use.
const TOKEN_LIFETIME_SECS: u64 = 300;
/// The most pages the `_all` calls read for one customer. Apple pages hold up to 20 items, so this is
/// 2000 transactions or refunds: more than any real customer has, and few enough that a server that
/// keeps answering `hasMore` cannot keep the gateway busy for long.
pub const MAX_CUSTOMER_PAGES: usize = 100;

/// Apple's error codes that mean "try again".
const RETRYABLE: [i64; 4] = [4_040_002, 4_040_004, 4_040_006, 5_000_001];

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
    exp: u64,
    aud: &'static str,
    bid: &'a str,
}

#[derive(Deserialize)]
struct AppleError {
    #[serde(rename = "errorCode")]
    error_code: Option<i64>,
    #[serde(rename = "errorMessage")]
    error_message: Option<String>,
}

#[derive(Deserialize)]
struct TransactionInfo {
    #[serde(rename = "signedTransactionInfo")]
    signed_transaction_info: String,
}

/// The order of a transaction history, by the date Apple last changed each transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Order {
    /// Oldest first (Apple's default).
    Ascending,
    Descending,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Ascending => "ASCENDING",
            Order::Descending => "DESCENDING",
        }
    }
}

/// A product type filter of the transaction history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProductType {
    AutoRenewable,
    NonRenewable,
    Consumable,
    NonConsumable,
}

impl ProductType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProductType::AutoRenewable => "AUTO_RENEWABLE",
            ProductType::NonRenewable => "NON_RENEWABLE",
            ProductType::Consumable => "CONSUMABLE",
            ProductType::NonConsumable => "NON_CONSUMABLE",
        }
    }
}

/// Who owns a purchase: the buyer, or a family member through Family Sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InAppOwnershipType {
    Purchased,
    FamilyShared,
}

impl InAppOwnershipType {
    pub fn as_str(self) -> &'static str {
        match self {
            InAppOwnershipType::Purchased => "PURCHASED",
            InAppOwnershipType::FamilyShared => "FAMILY_SHARED",
        }
    }
}

/// The filters of Get Transaction History. A page after the first must repeat the first page's
/// filters, so the `_all` call sends the same request with each `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransactionHistoryRequest {
    /// Unix milliseconds; a transaction is included when `purchaseDate >= start_date`.
    pub start_date: Option<i64>,
    /// Unix milliseconds; a transaction is included when `purchaseDate < end_date`.
    pub end_date: Option<i64>,
    pub product_ids: Vec<String>,
    pub product_types: Vec<ProductType>,
    pub sort: Option<Order>,
    pub subscription_group_identifiers: Vec<String>,
    pub in_app_ownership_type: Option<InAppOwnershipType>,
    /// `Some(true)`: only refunded or revoked transactions; `Some(false)`: only the others.
    pub revoked: Option<bool>,
}

impl TransactionHistoryRequest {
    /// The query string pairs, in the order Apple's libraries write them; list filters repeat the key.
    fn query(&self, revision: Option<&str>) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(r) = revision {
            q.push(("revision", r.to_owned()));
        }
        if let Some(d) = self.start_date {
            q.push(("startDate", d.to_string()));
        }
        if let Some(d) = self.end_date {
            q.push(("endDate", d.to_string()));
        }
        q.extend(self.product_ids.iter().map(|p| ("productId", p.clone())));
        q.extend(
            self.product_types
                .iter()
                .map(|t| ("productType", t.as_str().to_owned())),
        );
        if let Some(s) = self.sort {
            q.push(("sort", s.as_str().to_owned()));
        }
        q.extend(
            self.subscription_group_identifiers
                .iter()
                .map(|g| ("subscriptionGroupIdentifier", g.clone())),
        );
        if let Some(o) = self.in_app_ownership_type {
            q.push(("inAppOwnershipType", o.as_str().to_owned()));
        }
        if let Some(r) = self.revoked {
            q.push(("revoked", r.to_string()));
        }
        q
    }
}

/// One page of Get Transaction History (v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryResponse {
    /// The token for the next page, and, on the last page, for later changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_apple_id: Option<i64>,
    /// Apple's environment name, kept raw (`Sandbox`, `Production`, or one this code does not know).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// JWS transactions, unverified.
    #[serde(default)]
    pub signed_transactions: Vec<String>,
}

/// The status of an auto-renewable subscription, as Get All Subscription Statuses reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    Active,
    Expired,
    BillingRetry,
    BillingGracePeriod,
    Revoked,
}

impl SubscriptionStatus {
    /// Apple's number for the status (1 to 5).
    pub fn code(self) -> i64 {
        match self {
            SubscriptionStatus::Active => 1,
            SubscriptionStatus::Expired => 2,
            SubscriptionStatus::BillingRetry => 3,
            SubscriptionStatus::BillingGracePeriod => 4,
            SubscriptionStatus::Revoked => 5,
        }
    }

    /// The status of Apple's number; `None` for a number this code does not know.
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => SubscriptionStatus::Active,
            2 => SubscriptionStatus::Expired,
            3 => SubscriptionStatus::BillingRetry,
            4 => SubscriptionStatus::BillingGracePeriod,
            5 => SubscriptionStatus::Revoked,
            _ => return None,
        })
    }
}

/// Get All Subscription Statuses: every subscription of the customer, by subscription group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_apple_id: Option<i64>,
    #[serde(default)]
    pub data: Vec<SubscriptionGroupStatus>,
}

/// The subscriptions of one subscription group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionGroupStatus {
    pub subscription_group_identifier: String,
    #[serde(default)]
    pub last_transactions: Vec<LastTransaction>,
}

/// The latest transaction and renewal info of one subscription (one `originalTransactionId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastTransaction {
    /// Apple's number, kept raw; see [`LastTransaction::status`].
    #[serde(rename = "status")]
    pub raw_status: i64,
    pub original_transaction_id: String,
    /// JWS, unverified.
    pub signed_transaction_info: String,
    /// JWS, unverified.
    pub signed_renewal_info: String,
}

impl LastTransaction {
    /// The status, or `None` for a number this code does not know.
    pub fn status(&self) -> Option<SubscriptionStatus> {
        SubscriptionStatus::from_code(self.raw_status)
    }
}

/// One page of Get Refund History (v2): refunded or revoked transactions, oldest refund first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundHistoryResponse {
    /// JWS transactions, unverified.
    #[serde(default)]
    pub signed_transactions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default)]
    pub has_more: bool,
}

/// The body of Get Notification History. `transaction_id` and `notification_type` exclude each
/// other; a `notification_subtype` needs its `notification_type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationHistoryRequest {
    /// Unix milliseconds, at most 180 days ago.
    pub start_date: i64,
    /// Unix milliseconds, after `start_date`.
    pub end_date: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_subtype: Option<String>,
    /// Any transaction id of the customer: limits the history to that customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// Only notifications that have not reached the server yet (or are still being retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_failures: Option<bool>,
}

/// One page of Get Notification History.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationHistoryResponse {
    #[serde(default)]
    pub notification_history: Vec<NotificationHistoryItem>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination_token: Option<String>,
}

/// A notification Apple sent (or tried to), with its send attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationHistoryItem {
    /// The notification's JWS, unverified.
    pub signed_payload: String,
    #[serde(default)]
    pub send_attempts: Vec<SendAttempt>,
}

/// One attempt of Apple to deliver a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendAttempt {
    /// Unix milliseconds.
    pub attempt_date: i64,
    /// `SUCCESS`, `TIMED_OUT`, `NO_RESPONSE`, `UNSUCCESSFUL_HTTP_RESPONSE_CODE` ..., kept raw.
    pub send_attempt_result: String,
}

/// Get Test Notification Status: the TEST notification and Apple's attempts to deliver it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestNotificationStatus {
    pub signed_payload: String,
    #[serde(default)]
    pub send_attempts: Vec<SendAttempt>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestNotificationToken {
    test_notification_token: String,
}

/// Whether the app delivered the purchase, for Send Consumption Information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryStatus {
    Delivered,
    UndeliveredQualityIssue,
    UndeliveredWrongItem,
    UndeliveredServerOutage,
    UndeliveredOther,
}

/// The outcome the app prefers for a refund request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundPreference {
    Decline,
    GrantFull,
    GrantProrated,
}

/// Send Consumption Information (v2), the answer to a CONSUMPTION_REQUEST notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumptionRequest {
    /// Apple refuses anything but `true` (error 4000035).
    pub customer_consented: bool,
    pub sample_content_provided: bool,
    pub delivery_status: DeliveryStatus,
    /// How much of the purchase the customer consumed, in milli-percent (0 to 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumption_percentage: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_preference: Option<RefundPreference>,
}

/// The deprecated v1 body of Send Consumption Information: Apple's numbered ranges, sent as numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumptionRequestV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_consented: Option<bool>,
    /// 0 undeclared, 1 not consumed, 2 partially, 3 fully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumption_status: Option<u8>,
    /// 0 undeclared, 1 Apple, 2 not Apple.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_content_provided: Option<bool>,
    /// 0 delivered and working, 1 quality issue, 2 wrong item, 3 server outage, 4 currency change,
    /// 5 other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_status: Option<u8>,
    /// The purchase's app account token (a UUID), or an empty string when it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_account_token: Option<String>,
    /// 0 to 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_tenure: Option<u8>,
    /// 0 to 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub play_time: Option<u8>,
    /// 0 to 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_dollars_refunded: Option<u8>,
    /// 0 to 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_dollars_purchased: Option<u8>,
    /// 0 to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_status: Option<u8>,
    /// 0 undeclared, 1 grant full, 2 grant prorated, 3 no preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_preference: Option<u8>,
}

/// A page that may point to the next one.
trait Page {
    /// The token of the next page; `None` on the last page.
    fn next_token(&self) -> StoreResult<Option<&str>>;
}

fn token_of(has_more: bool, token: Option<&str>) -> StoreResult<Option<&str>> {
    match (has_more, token) {
        (false, _) => Ok(None),
        (true, Some(t)) if !t.is_empty() => Ok(Some(t)),
        (true, _) => Err(StoreError::unavailable(
            "The App Store Server API said there is more but gave no token for the next page.",
        )),
    }
}

impl Page for HistoryResponse {
    fn next_token(&self) -> StoreResult<Option<&str>> {
        token_of(self.has_more, self.revision.as_deref())
    }
}

impl Page for RefundHistoryResponse {
    fn next_token(&self) -> StoreResult<Option<&str>> {
        token_of(self.has_more, self.revision.as_deref())
    }
}

impl Page for NotificationHistoryResponse {
    fn next_token(&self) -> StoreResult<Option<&str>> {
        token_of(self.has_more, self.pagination_token.as_deref())
    }
}

/// Reads pages, each with the token the previous one gave, until one says there is no more. Stops with
/// an error after `max_pages` pages, or when a token comes back a second time (a loop).
async fn follow<'a, P: Page>(
    max_pages: usize,
    mut page: impl FnMut(Option<String>) -> PageFuture<'a, P>,
) -> StoreResult<Vec<P>> {
    let mut pages = Vec::new();
    let mut seen = HashSet::new();
    let mut token = None;
    loop {
        let p = page(token.take()).await?;
        let next = p.next_token()?.map(str::to_owned);
        pages.push(p);
        let Some(next) = next else {
            return Ok(pages);
        };
        if pages.len() >= max_pages || !seen.insert(next.clone()) {
            tracing::warn!(
                pages = pages.len(),
                "App Store Server API kept answering hasMore; paging stopped"
            );
            return Err(StoreError::new(
                Problem::Unavailable,
                "store_paging_runaway",
                format!(
                    "The App Store Server API kept saying there is more after {} pages; paging stopped.",
                    pages.len()
                ),
            ));
        }
        token = Some(next);
    }
}

/// One page's request in flight. Boxed and `Send`, so that callers running in spawned tasks (the
/// recovery job) can hold it across the await.
type PageFuture<'a, P> =
    std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<P>> + Send + 'a>>;

/// One request to the App Store Server API, before its bearer token.
struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

impl Call {
    fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
        }
    }

    fn query(mut self, query: Vec<(&'static str, String)>) -> Self {
        self.query = query;
        self
    }

    fn json(mut self, body: &impl Serialize) -> StoreResult<Self> {
        let bytes = serde_json::to_vec(body).map_err(|_| {
            StoreError::new(
                Problem::Malformed,
                "invalid_store_request",
                "The request for the App Store Server API could not be written as JSON.",
            )
        })?;
        self.body = Some(bytes);
        Ok(self)
    }
}

/// The client; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppStoreApi {
    http: reqwest::Client,
}

/// Checks an id that goes into a URL path: a transaction id is ASCII letters and digits.
fn transaction_id(id: &str) -> StoreResult<&str> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(StoreError::new(
            Problem::Malformed,
            "invalid_transaction_id",
            "`transaction_id` is the digits of an App Store transaction id.",
        ));
    }
    Ok(id)
}

impl AppStoreApi {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// The HTTP client, shared with the other App Store calls (legacy receipts).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET /inApps/v1/transactions/{transactionId}`: the signed transaction, unverified.
    pub async fn transaction_info(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
    ) -> StoreResult<String> {
        let id = self::transaction_id(transaction_id)?;
        let call = Call::new(Method::GET, format!("/inApps/v1/transactions/{id}"));
        let info: TransactionInfo = self.fetch(app, env, &call, "a transaction").await?;
        Ok(info.signed_transaction_info)
    }

    /// `GET /inApps/v2/history/{transactionId}`: one page of the customer's transactions. Pass the
    /// previous page's `revision` (and the same `request`) for the next page.
    pub async fn transaction_history(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
        revision: Option<&str>,
        request: &TransactionHistoryRequest,
    ) -> StoreResult<HistoryResponse> {
        let id = self::transaction_id(transaction_id)?;
        let call = Call::new(Method::GET, format!("/inApps/v2/history/{id}"))
            .query(request.query(revision));
        self.fetch(app, env, &call, "a transaction history").await
    }

    /// Every page of [`AppStoreApi::transaction_history`] from the first, as one answer: the last
    /// page's `revision` (keep it to ask later for what changed since) and all the transactions.
    pub async fn transaction_history_all(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
        request: &TransactionHistoryRequest,
    ) -> StoreResult<HistoryResponse> {
        let pages = follow(MAX_CUSTOMER_PAGES, |revision: Option<String>| {
            Box::pin(async move {
                self.transaction_history(app, env, transaction_id, revision.as_deref(), request)
                    .await
            })
        })
        .await?;
        let mut all = Vec::new();
        let mut last = None;
        for mut page in pages {
            all.append(&mut page.signed_transactions);
            last = Some(page);
        }
        // `follow` returns at least one page.
        let mut last =
            last.ok_or_else(|| StoreError::unavailable("The App Store Server API gave no page."))?;
        last.signed_transactions = all;
        Ok(last)
    }

    /// `GET /inApps/v1/subscriptions/{transactionId}`: the customer's subscriptions, by group, with
    /// their latest signed transaction and renewal info. An empty `statuses` asks for all.
    pub async fn subscription_statuses(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
        statuses: &[SubscriptionStatus],
    ) -> StoreResult<StatusResponse> {
        let id = self::transaction_id(transaction_id)?;
        let query = statuses
            .iter()
            .map(|s| ("status", s.code().to_string()))
            .collect();
        let call = Call::new(Method::GET, format!("/inApps/v1/subscriptions/{id}")).query(query);
        self.fetch(app, env, &call, "subscription statuses").await
    }

    /// `GET /inApps/v2/refund/lookup/{transactionId}`: one page of the customer's refunded
    /// transactions, oldest refund first.
    pub async fn refund_history(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
        revision: Option<&str>,
    ) -> StoreResult<RefundHistoryResponse> {
        let id = self::transaction_id(transaction_id)?;
        let query = revision
            .map(|r| vec![("revision", r.to_owned())])
            .unwrap_or_default();
        let call = Call::new(Method::GET, format!("/inApps/v2/refund/lookup/{id}")).query(query);
        self.fetch(app, env, &call, "a refund history").await
    }

    /// Every page of [`AppStoreApi::refund_history`], as one answer with the last page's `revision`.
    pub async fn refund_history_all(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
    ) -> StoreResult<RefundHistoryResponse> {
        let pages = follow(MAX_CUSTOMER_PAGES, |revision: Option<String>| {
            Box::pin(async move {
                self.refund_history(app, env, transaction_id, revision.as_deref())
                    .await
            })
        })
        .await?;
        let mut all = RefundHistoryResponse {
            signed_transactions: Vec::new(),
            revision: None,
            has_more: false,
        };
        for page in pages {
            all.signed_transactions.extend(page.signed_transactions);
            all.revision = page.revision;
        }
        Ok(all)
    }

    /// `POST /inApps/v1/notifications/history`: one page of the notifications Apple sent the app.
    /// Pass the previous page's `pagination_token` (and the same `request`) for the next page.
    pub async fn notification_history(
        &self,
        app: &App,
        env: AppleEnvironment,
        pagination_token: Option<&str>,
        request: &NotificationHistoryRequest,
    ) -> StoreResult<NotificationHistoryResponse> {
        if request.transaction_id.is_some() && request.notification_type.is_some() {
            return Err(StoreError::new(
                Problem::Malformed,
                "invalid_notification_filter",
                "Filter the notification history by `transaction_id` or by `notification_type`, not both.",
            ));
        }
        if request.notification_subtype.is_some() && request.notification_type.is_none() {
            return Err(StoreError::new(
                Problem::Malformed,
                "invalid_notification_filter",
                "A `notification_subtype` filter needs its `notification_type`.",
            ));
        }
        if let Some(id) = &request.transaction_id {
            self::transaction_id(id)?;
        }
        let query = pagination_token
            .map(|t| vec![("paginationToken", t.to_owned())])
            .unwrap_or_default();
        let call = Call::new(Method::POST, "/inApps/v1/notifications/history".into())
            .query(query)
            .json(request)?;
        self.fetch(app, env, &call, "a notification history").await
    }

    /// Every page of [`AppStoreApi::notification_history`], at most `max_pages`, as one answer. An
    /// app's history can be long: choose `max_pages` for the time span asked (20 items a page).
    pub async fn notification_history_all(
        &self,
        app: &App,
        env: AppleEnvironment,
        request: &NotificationHistoryRequest,
        max_pages: usize,
    ) -> StoreResult<Vec<NotificationHistoryItem>> {
        let pages = follow(max_pages.max(1), |token: Option<String>| {
            Box::pin(async move {
                self.notification_history(app, env, token.as_deref(), request)
                    .await
            })
        })
        .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.notification_history)
            .collect())
    }

    /// `PUT /inApps/v2/transactions/consumption/{transactionId}`: the app's answer to a
    /// CONSUMPTION_REQUEST notification. Apple accepts with 202 and an empty body.
    pub async fn send_consumption_information(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
        request: &ConsumptionRequest,
    ) -> StoreResult<()> {
        let id = self::transaction_id(transaction_id)?;
        let call = Call::new(
            Method::PUT,
            format!("/inApps/v2/transactions/consumption/{id}"),
        )
        .json(request)?;
        self.send(app, env, &call).await.map(drop)
    }

    /// `POST /inApps/v1/transactions/{transactionId}/finish`: tells Apple the app delivered the
    /// transaction, as `Transaction.finish()` on the device does. No body either way.
    pub async fn finish_transaction(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
    ) -> StoreResult<()> {
        let id = self::transaction_id(transaction_id)?;
        let call = Call::new(Method::POST, format!("/inApps/v1/transactions/{id}/finish"));
        self.send(app, env, &call).await.map(drop)
    }

    /// `PUT /inApps/v1/transactions/consumption/{transactionId}`: the deprecated v1 form of
    /// [`AppStoreApi::send_consumption_information`], with Apple's numbered ranges.
    pub async fn send_consumption_data(
        &self,
        app: &App,
        env: AppleEnvironment,
        transaction_id: &str,
        request: &ConsumptionRequestV1,
    ) -> StoreResult<()> {
        let id = self::transaction_id(transaction_id)?;
        let call = Call::new(
            Method::PUT,
            format!("/inApps/v1/transactions/consumption/{id}"),
        )
        .json(request)?;
        self.send(app, env, &call).await.map(drop)
    }

    /// `POST /inApps/v1/notifications/test`: asks Apple to send a TEST notification to the app's
    /// notification URL; returns the token to ask how that went.
    pub async fn request_test_notification(
        &self,
        app: &App,
        env: AppleEnvironment,
    ) -> StoreResult<String> {
        let call = Call::new(Method::POST, "/inApps/v1/notifications/test".into());
        let answer: TestNotificationToken = self
            .fetch(app, env, &call, "a test notification token")
            .await?;
        Ok(answer.test_notification_token)
    }

    /// `GET /inApps/v1/notifications/test/{token}`: the TEST notification and how its delivery went.
    pub async fn test_notification_status(
        &self,
        app: &App,
        env: AppleEnvironment,
        token: &str,
    ) -> StoreResult<TestNotificationStatus> {
        if token.is_empty()
            || token.len() > 128
            || !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(StoreError::new(
                Problem::Malformed,
                "invalid_test_notification_token",
                "A test notification token is the text Apple returned for the request.",
            ));
        }
        let call = Call::new(
            Method::GET,
            format!("/inApps/v1/notifications/test/{token}"),
        );
        self.fetch(app, env, &call, "a test notification status")
            .await
    }

    fn base_url(app: &App, env: AppleEnvironment) -> StoreResult<String> {
        let config =
            app.settings.app_store.as_ref().ok_or_else(|| {
                StoreError::not_configured("This app has no `app_store` settings.")
            })?;
        Ok(config.api_base_url.clone().unwrap_or_else(|| {
            match env {
                AppleEnvironment::Production => PRODUCTION_URL,
                AppleEnvironment::Sandbox => SANDBOX_URL,
            }
            .to_owned()
        }))
    }

    fn bearer(app: &App) -> StoreResult<String> {
        let config =
            app.settings.app_store.as_ref().ok_or_else(|| {
                StoreError::not_configured("This app has no `app_store` settings.")
            })?;
        let (Some(issuer), Some(key_id), Some(pem)) =
            (&config.issuer_id, &config.key_id, &config.private_key_pem)
        else {
            return Err(StoreError::not_configured(
                "The App Store Server API needs the app's `app_store.issuer_id`, `key_id` and `private_key_pem`.",
            ));
        };
        let key = EncodingKey::from_ec_pem(pem.expose().as_bytes()).map_err(|_| {
            StoreError::not_configured(
                "The app's `app_store.private_key_pem` is not an ES256 (.p8) key.",
            )
        })?;
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key_id.clone());
        header.typ = Some("JWT".into());
        let claims = Claims {
            iss: issuer,
            iat,
            exp: iat + TOKEN_LIFETIME_SECS,
            aud: "appstoreconnect-v1",
            bid: &config.bundle_id,
        };
        jsonwebtoken::encode(&header, &claims, &key).map_err(|_| {
            StoreError::not_configured("The App Store Server API token could not be signed.")
        })
    }

    /// [`AppStoreApi::send`], then the answer read as `T`; `what` names it in the error.
    async fn fetch<T: DeserializeOwned>(
        &self,
        app: &App,
        env: AppleEnvironment,
        call: &Call,
        what: &str,
    ) -> StoreResult<T> {
        let body = self.send(app, env, call).await?;
        serde_json::from_str(&body).map_err(|e| {
            tracing::warn!(error = %e, path = %call.path, "App Store Server API answer not understood");
            StoreError::unavailable(format!(
                "The App Store Server API answered with something that is not {what}."
            ))
        })
    }

    /// Sends `call` with a fresh bearer token, retrying as the module says; returns the body of a
    /// 2xx answer (empty for Apple's 202s).
    async fn send(&self, app: &App, env: AppleEnvironment, call: &Call) -> StoreResult<String> {
        let url = format!(
            "{}{}",
            Self::base_url(app, env)?.trim_end_matches('/'),
            call.path
        );
        let build = || {
            let mut request = self
                .http
                .request(call.method.clone(), &url)
                .bearer_auth(Self::bearer(app)?)
                .header("accept", "application/json");
            if !call.query.is_empty() {
                request = request.query(&call.query);
            }
            if let Some(body) = &call.body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            Ok(request)
        };
        let judge = |status: u16, body: &str, retry_after: Option<&str>| {
            let code = serde_json::from_str::<AppleError>(body)
                .ok()
                .and_then(|e| e.error_code);
            let after = retry_after.and_then(|v| v.trim().parse::<u64>().ok());
            call::Verdict {
                retryable: status == 429
                    || status >= 500
                    || code.is_some_and(|c| RETRYABLE.contains(&c)),
                wait: match (status, after) {
                    (429, Some(after)) => Some(retry_after_wait(after)),
                    _ => None,
                },
            }
        };
        let unreachable = || {
            StoreError::unavailable("The App Store Server API does not answer; try again later.")
        };
        match call::send(&POLICY, build, judge, unreachable).await? {
            Ok(body) => Ok(body),
            Err(refused) => {
                let apple: Option<AppleError> = serde_json::from_str(&refused.body).ok();
                let code = apple.as_ref().and_then(|e| e.error_code);
                let message = apple.and_then(|e| e.error_message).unwrap_or_default();
                Err(refusal(refused.status, code, &message, refused.retryable))
            }
        }
    }
}

/// The error for a final non-2xx answer. Codes a caller can act on get their own error; any other
/// refusal keeps Apple's status, code and message in `details`.
fn refusal(status: u16, code: Option<i64>, message: &str, retryable: bool) -> StoreError {
    match (status, code) {
        (401, _) => StoreError::not_configured(
            "Apple refused the app's App Store Server API credentials (issuer_id, key_id, private_key_pem, bundle_id).",
        ),
        (404, Some(4_040_010 | 4_040_005)) => StoreError::new(
            Problem::NotFound,
            "transaction_not_found",
            "The App Store knows no transaction with this id.",
        ),
        (_, Some(4_000_006 | 4_000_008)) => StoreError::new(
            Problem::Malformed,
            "invalid_transaction_id",
            "The App Store says this is not a valid transaction id.",
        ),
        (404, Some(4_040_007)) => StoreError::not_configured(
            "App Store Connect has no App Store Server Notifications URL for this app.",
        ),
        (404, Some(4_040_008)) => StoreError::new(
            Problem::NotFound,
            "test_notification_not_found",
            "The App Store knows no test notification with this token.",
        ),
        (429, _) => StoreError::new(
            Problem::Unavailable,
            "store_rate_limited",
            "The App Store Server API is rate-limiting this app; try again later.",
        ),
        (s, _) if s >= 500 || retryable => {
            StoreError::unavailable("The App Store Server API failed; try again later.")
        }
        (s, code) => StoreError::new(
            Problem::Refused,
            "store_refused",
            format!(
                "The App Store Server API refused the request ({s}, error {}): {message}",
                code.unwrap_or_default()
            ),
        )
        .with_details(serde_json::json!({
            "http_status": s,
            "apple_error_code": code,
            "apple_error_message": message,
        })),
    }
}

/// Apple's `Retry-After` is the UNIX time in milliseconds when to try again; a small number is taken
/// as seconds, as HTTP means it. Capped at [`MAX_WAIT`].
fn retry_after_wait(after: u64) -> Duration {
    let wait = if after > 1_000_000_000_000 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Duration::from_millis(after.saturating_sub(now))
    } else {
        Duration::from_secs(after)
    };
    wait.min(MAX_WAIT)
}

/// Four attempts (the first and three retries), 200 ms, 400 ms, 800 ms apart, up to 20% longer,
/// capped at [`MAX_WAIT`]: a client is waiting on the answer; 10 s per request.
const POLICY: call::Policy = call::Policy {
    service: "App Store Server API",
    attempts: 4,
    backoff: Backoff {
        first: Duration::from_millis(200),
        doublings: 8,
        cap: MAX_WAIT,
        jitter: Jitter::Above,
    },
    timeout: Duration::from_secs(10),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_apple_writes_it() {
        assert_eq!(retry_after_wait(2), Duration::from_secs(2));
        assert_eq!(retry_after_wait(60), MAX_WAIT);
        let soon = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 1_000;
        let wait = retry_after_wait(soon);
        assert!(
            wait <= Duration::from_millis(1_000) && wait >= Duration::from_millis(500),
            "{wait:?}"
        );
        let backoff = |attempt| POLICY.backoff.delay(attempt);
        assert!(backoff(1) >= Duration::from_millis(200) && backoff(10) <= MAX_WAIT);
    }

    /// Apple's own test vectors (app-store-server-library tests/resources/models) read as Apple's
    /// library reads them.
    #[test]
    fn apple_responses_are_read_field_for_field() {
        let history: HistoryResponse = serde_json::from_str(r#"{"revision": "revision_output", "hasMore": true, "bundleId": "com.example", "appAppleId": 323232, "environment": "LocalTesting", "signedTransactions": ["signed_transaction_value", "signed_transaction_value2"]}"#).unwrap();
        assert_eq!(history.revision.as_deref(), Some("revision_output"));
        assert!(history.has_more);
        assert_eq!(history.app_apple_id, Some(323232));
        assert_eq!(history.environment.as_deref(), Some("LocalTesting"));
        assert_eq!(history.signed_transactions.len(), 2);
        let odd: HistoryResponse = serde_json::from_str(r#"{"revision": "r", "hasMore": false, "environment": "LocalTestingxxx", "signedTransactions": []}"#).unwrap();
        assert_eq!(
            odd.environment.as_deref(),
            Some("LocalTestingxxx"),
            "kept raw"
        );
        assert!(
            serde_json::from_str::<HistoryResponse>(r#"{"hasMore": true, "appAppleId": "hi"}"#)
                .is_err(),
            "a malformed appAppleId is an error, as in Apple's library"
        );

        let statuses: StatusResponse = serde_json::from_str(r#"{"environment": "LocalTesting", "bundleId": "com.example", "appAppleId": 5454545, "data": [
            {"subscriptionGroupIdentifier": "sub_group_one", "lastTransactions": [
                {"status": 1, "originalTransactionId": "3749183", "signedTransactionInfo": "signed_transaction_one", "signedRenewalInfo": "signed_renewal_one"},
                {"status": 5, "originalTransactionId": "5314314134", "signedTransactionInfo": "signed_transaction_two", "signedRenewalInfo": "signed_renewal_two"}]},
            {"subscriptionGroupIdentifier": "sub_group_two", "lastTransactions": [
                {"status": 2, "originalTransactionId": "3413453", "signedTransactionInfo": "signed_transaction_three", "signedRenewalInfo": "signed_renewal_three"}]}]}"#).unwrap();
        assert_eq!(statuses.data.len(), 2);
        let first = &statuses.data[0].last_transactions;
        assert_eq!(first[1].status(), Some(SubscriptionStatus::Revoked));
        assert_eq!(first[1].original_transaction_id, "5314314134");
        assert_eq!(
            statuses.data[1].last_transactions[0].status(),
            Some(SubscriptionStatus::Expired)
        );

        let refunds: RefundHistoryResponse = serde_json::from_str(r#"{"signedTransactions": ["signed_transaction_one", "signed_transaction_two"], "revision": "revision_output", "hasMore": true}"#).unwrap();
        assert_eq!(refunds.next_token().unwrap(), Some("revision_output"));

        let notifications: NotificationHistoryResponse = serde_json::from_str(r#"{"paginationToken": "57715481-805a-4283-8499-1c19b5d6b20a", "hasMore": true, "notificationHistory": [
            {"sendAttempts": [{"attemptDate": 1698148900000, "sendAttemptResult": "NO_RESPONSE"}, {"attemptDate": 1698148950000, "sendAttemptResult": "SUCCESS"}], "signedPayload": "signed_payload_one"},
            {"sendAttempts": [{"attemptDate": 1698148800000, "sendAttemptResult": "CIRCULAR_REDIRECT"}], "signedPayload": "signed_payload_two"}]}"#).unwrap();
        assert_eq!(
            notifications.next_token().unwrap(),
            Some("57715481-805a-4283-8499-1c19b5d6b20a")
        );
        assert_eq!(
            notifications.notification_history[0].send_attempts[1],
            SendAttempt {
                attempt_date: 1698148950000,
                send_attempt_result: "SUCCESS".into()
            }
        );

        let status: TestNotificationStatus = serde_json::from_str(r#"{"signedPayload": "signed_payload", "sendAttempts": [{"attemptDate": 1698148900000, "sendAttemptResult": "NO_RESPONSE"}]}"#).unwrap();
        assert_eq!(status.send_attempts[0].send_attempt_result, "NO_RESPONSE");
        let broken = NotificationHistoryResponse {
            notification_history: vec![],
            has_more: true,
            pagination_token: None,
        };
        assert!(
            broken.next_token().is_err(),
            "more, but no token: an error, not a loop"
        );
    }

    /// The requests Apple's library writes in its tests, byte for byte in meaning.
    #[test]
    fn requests_are_written_as_apple_expects() {
        let request = TransactionHistoryRequest {
            start_date: Some(123455),
            end_date: Some(123456),
            product_ids: vec!["com.example.1".into(), "com.example.2".into()],
            product_types: vec![ProductType::Consumable, ProductType::AutoRenewable],
            sort: Some(Order::Ascending),
            subscription_group_identifiers: vec!["sub_group_id".into(), "sub_group_id_2".into()],
            in_app_ownership_type: Some(InAppOwnershipType::FamilyShared),
            revoked: Some(false),
        };
        let query = request.query(Some("revision_input"));
        assert_eq!(
            query,
            vec![
                ("revision", "revision_input".to_owned()),
                ("startDate", "123455".into()),
                ("endDate", "123456".into()),
                ("productId", "com.example.1".into()),
                ("productId", "com.example.2".into()),
                ("productType", "CONSUMABLE".into()),
                ("productType", "AUTO_RENEWABLE".into()),
                ("sort", "ASCENDING".into()),
                ("subscriptionGroupIdentifier", "sub_group_id".into()),
                ("subscriptionGroupIdentifier", "sub_group_id_2".into()),
                ("inAppOwnershipType", "FAMILY_SHARED".into()),
                ("revoked", "false".into()),
            ]
        );
        let consumption = ConsumptionRequest {
            customer_consented: true,
            sample_content_provided: false,
            delivery_status: DeliveryStatus::Delivered,
            consumption_percentage: Some(50000),
            refund_preference: Some(RefundPreference::GrantFull),
        };
        assert_eq!(
            serde_json::to_value(&consumption).unwrap(),
            serde_json::json!({"customerConsented": true, "sampleContentProvided": false, "deliveryStatus": "DELIVERED", "consumptionPercentage": 50000, "refundPreference": "GRANT_FULL"})
        );
        let v1 = ConsumptionRequestV1 {
            customer_consented: Some(true),
            consumption_status: Some(1),
            platform: Some(2),
            sample_content_provided: Some(false),
            delivery_status: Some(3),
            app_account_token: Some("7389a31a-fb6d-4569-a2a6-db7d85d84813".into()),
            account_tenure: Some(4),
            play_time: Some(5),
            lifetime_dollars_refunded: Some(6),
            lifetime_dollars_purchased: Some(7),
            user_status: Some(4),
            refund_preference: Some(3),
        };
        assert_eq!(
            serde_json::to_value(&v1).unwrap(),
            serde_json::json!({"customerConsented": true, "consumptionStatus": 1, "platform": 2, "sampleContentProvided": false, "deliveryStatus": 3,
                "appAccountToken": "7389a31a-fb6d-4569-a2a6-db7d85d84813", "accountTenure": 4, "playTime": 5, "lifetimeDollarsRefunded": 6,
                "lifetimeDollarsPurchased": 7, "userStatus": 4, "refundPreference": 3})
        );
        let history = NotificationHistoryRequest {
            start_date: 1698148900000,
            end_date: 1698148950000,
            notification_type: Some("SUBSCRIBED".into()),
            notification_subtype: Some("INITIAL_BUY".into()),
            transaction_id: Some("999733843".into()),
            only_failures: Some(true),
        };
        assert_eq!(
            serde_json::to_value(&history).unwrap(),
            serde_json::json!({"startDate": 1698148900000_i64, "endDate": 1698148950000_i64, "notificationType": "SUBSCRIBED", "notificationSubtype": "INITIAL_BUY", "transactionId": "999733843", "onlyFailures": true})
        );
    }
}
