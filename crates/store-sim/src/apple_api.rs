//! A fake App Store Server API: it checks the bearer token as Apple does (ES256 with the app's API key,
//! `aud` `appstoreconnect-v1`, the key id, the issuer, the bundle) and serves what its state holds,
//! signed by the simulator's chain, in Apple's response and error shapes.
//!
//! The simulator knows no Apple accounts. A transaction belongs to the account named when it was put
//! ([`AppStoreServer::put_account_transaction`]), or else to its lineage (`originalTransactionId`):
//! transaction history, subscription statuses and refund history answer for the account of the id
//! asked about. Refunds are the account's transactions that carry a `revocationDate`. Paged answers
//! hold [`AppStoreServer::set_page_size`] items (Apple's 20 by default), so tests can make paging real.
//! What depends on the time (a subscription's status, the 180 days notification history reaches back)
//! uses the system clock, as Apple's servers do, unless [`AppStoreServer::set_clock`] gives another.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    SimClock,
    apple::{AppleChain, SimError},
};

/// Apple's page size for transaction, refund and notification history.
const APPLE_PAGE_SIZE: usize = 20;
/// How far back Get Notification History reaches: 180 days, in milliseconds.
const HISTORY_REACH_MS: i64 = 180 * 86_400_000;
/// How long the simulator waits for the notification URL to answer a TEST notification.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// An App Store Connect API key, as Apple issues it (a `.p8`) with its ids.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub issuer_id: String,
    pub key_id: String,
    /// The PKCS#8 PEM an operator pastes into `app_store.private_key_pem`.
    pub private_key_pem: String,
    public_key_pem: String,
}

impl ApiKey {
    pub fn generate(issuer_id: &str, key_id: &str) -> Result<Self, SimError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Ok(Self {
            issuer_id: issuer_id.to_owned(),
            key_id: key_id.to_owned(),
            private_key_pem: key.serialize_pem(),
            public_key_pem: key.public_key_pem(),
        })
    }
}

/// A payload that is not a compact JWS with a JSON payload.
#[derive(Debug, thiserror::Error)]
#[error("not a compact JWS with a JSON payload")]
pub struct NotJws;

/// Why a notification was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no App Store Server Notifications URL is set")]
    NoUrl,
    #[error(transparent)]
    NotJws(#[from] NotJws),
}

/// How one send of a notification went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The HTTP status the notification URL answered, if it answered.
    pub http_status: Option<u16>,
    /// Apple's `sendAttemptResult`: `SUCCESS`, `UNSUCCESSFUL_HTTP_RESPONSE_CODE`, `NO_RESPONSE`, ...
    pub send_attempt_result: &'static str,
    /// The body of the answer, if there was one (Apple ignores it; people reading along do not).
    pub body: Option<String>,
}

/// A Send Consumption Information request the server accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumptionRecord {
    /// 1 for the deprecated `/inApps/v1/...` form, 2 for `/inApps/v2/...`.
    pub version: u8,
    pub transaction_id: String,
    pub body: Value,
}

/// A legacy receipt: its environment, the bundle it names, its `in_app` rows.
type StoredReceipt = (String, String, Vec<Value>);

/// A transaction the server holds.
struct Stored {
    payload: Value,
    account: String,
    /// Insertion order, to break ties between equal dates.
    seq: u64,
}

/// A notification the server sent, or was told it sent.
struct Sent {
    signed_payload: String,
    signed_date: i64,
    notification_type: String,
    subtype: Option<String>,
    /// `transactionId` and `originalTransactionId` of the notification's transaction.
    transaction_ids: Vec<String>,
    /// (Unix ms, `sendAttemptResult`).
    attempts: Vec<(i64, String)>,
    test_token: Option<String>,
}

/// What the server is set to, apart from its data.
struct Settings {
    page_size: usize,
    environment: String,
    app_apple_id: Option<i64>,
    notification_url: Option<String>,
    broken_paging: bool,
}

/// The simulated server's state.
pub struct AppStoreServer {
    chain: Arc<AppleChain>,
    key: ApiKey,
    bundle_id: String,
    transactions: Mutex<HashMap<String, Stored>>,
    next_seq: AtomicU64,
    /// Renewal infos (JWSRenewalInfoDecodedPayload) by `originalTransactionId`.
    renewals: Mutex<HashMap<String, Value>>,
    notifications: Mutex<Vec<Sent>>,
    consumption: Mutex<Vec<ConsumptionRecord>>,
    settings: Mutex<Settings>,
    /// Answers to give before the real one, to exercise retries: (status, Retry-After header).
    faults: Mutex<Vec<(u16, Option<String>)>>,
    /// Calls to let through before the injected faults apply.
    faults_after: Mutex<u64>,
    calls: Mutex<u64>,
    /// Legacy receipts by their base64 text: (environment, receipt bundle id, in_app rows).
    receipts: Mutex<HashMap<String, StoredReceipt>>,
    shared_secret: Mutex<Option<String>>,
    http: reqwest::Client,
    clock: Mutex<SimClock>,
}

impl std::fmt::Debug for AppStoreServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppStoreServer")
            .field("bundle_id", &self.bundle_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    bid: String,
}

/// Locks a mutex, taking the data even if a panicking holder poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An error answer in Apple's shape: the status, and `{"errorCode", "errorMessage"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AppleError {
    status: StatusCode,
    code: i64,
    message: &'static str,
}

impl IntoResponse for AppleError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"errorCode": self.code, "errorMessage": self.message})),
        )
            .into_response()
    }
}

/// What the handlers answer: a response, or Apple's error.
type Answer = Result<Response, AppleError>;

fn bad_request(code: i64, message: &'static str) -> AppleError {
    AppleError {
        status: StatusCode::BAD_REQUEST,
        code,
        message,
    }
}

fn not_found(code: i64, message: &'static str) -> AppleError {
    AppleError {
        status: StatusCode::NOT_FOUND,
        code,
        message,
    }
}

fn transaction_not_found() -> AppleError {
    not_found(4040010, "Transaction id not found.")
}

/// Apple's answer when something fails on its side (here: signing).
const INTERNAL: AppleError = AppleError {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    code: 5000000,
    message: "An unknown error occurred.",
};

/// The decoded payload of a compact JWS, unverified.
fn jws_payload(jws: &str) -> Result<Value, NotJws> {
    let mut parts = jws.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(NotJws);
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| NotJws)?;
    serde_json::from_slice(&bytes).map_err(|_| NotJws)
}

/// A date of a transaction payload, in Unix ms.
fn date(payload: &Value, field: &str) -> Option<i64> {
    payload[field].as_i64()
}

/// A page of `items` from the position `token` names: the items, whether there are more, and the
/// token of the next page. Tokens are `sim-<position>`; anything else is refused.
fn page<T: Clone>(
    items: &[T],
    token: Option<&str>,
    size: usize,
    broken: bool,
) -> Option<(Vec<T>, bool, String)> {
    let start = match token {
        None => 0,
        Some(t) => t.strip_prefix("sim-")?.parse::<usize>().ok()?,
    };
    let end = start.saturating_add(size).min(items.len());
    let chunk = items.get(start.min(items.len())..end).unwrap_or_default();
    let more = broken || end < items.len();
    // A broken server: always more, always a new token.
    let next = if broken {
        start.saturating_add(size)
    } else {
        end
    };
    Some((chunk.to_vec(), more, format!("sim-{next}")))
}

/// The `type` a JWS transaction has for a `productType` filter value.
fn jws_type(product_type: &str) -> Option<&'static str> {
    Some(match product_type {
        "AUTO_RENEWABLE" => "Auto-Renewable Subscription",
        "NON_RENEWABLE" => "Non-Renewing Subscription",
        "CONSUMABLE" => "Consumable",
        "NON_CONSUMABLE" => "Non-Consumable",
        _ => return None,
    })
}

/// The filters of Get Transaction History, read from its query string.
#[derive(Default)]
struct HistoryQuery {
    revision: Option<String>,
    start: Option<i64>,
    end: Option<i64>,
    product_ids: Vec<String>,
    types: Vec<&'static str>,
    descending: bool,
    groups: Vec<String>,
    ownership: Option<String>,
    revoked: Option<bool>,
}

impl HistoryQuery {
    /// Reads the query as Apple does, with Apple's error for each bad value.
    fn parse(pairs: &[(String, String)]) -> Result<Self, AppleError> {
        let mut q = HistoryQuery::default();
        for (k, v) in pairs {
            match k.as_str() {
                "revision" => q.revision = Some(v.clone()),
                "startDate" => {
                    q.start = Some(
                        v.parse()
                            .map_err(|_| bad_request(4000015, "Invalid start date."))?,
                    );
                }
                "endDate" => {
                    q.end = Some(
                        v.parse()
                            .map_err(|_| bad_request(4000016, "Invalid end date."))?,
                    );
                }
                "productId" => q.product_ids.push(v.clone()),
                "productType" => q.types.push(
                    jws_type(v).ok_or_else(|| bad_request(4000022, "Invalid product type."))?,
                ),
                "sort" => {
                    q.descending = match v.as_str() {
                        "ASCENDING" => false,
                        "DESCENDING" => true,
                        _ => return Err(bad_request(4000021, "Invalid sort.")),
                    }
                }
                "subscriptionGroupIdentifier" => q.groups.push(v.clone()),
                "inAppOwnershipType" => match v.as_str() {
                    "PURCHASED" | "FAMILY_SHARED" => q.ownership = Some(v.clone()),
                    _ => return Err(bad_request(4000026, "Invalid in-app ownership type.")),
                },
                "revoked" => {
                    q.revoked = Some(match v.to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad_request(4000030, "Invalid revoked.")),
                    });
                }
                _ => {}
            }
        }
        if let (Some(s), Some(e)) = (q.start, q.end)
            && s > e
        {
            return Err(bad_request(
                4000013,
                "Invalid request. The start date is later than the end date.",
            ));
        }
        Ok(q)
    }

    fn matches(&self, t: &Value) -> bool {
        let purchased = date(t, "purchaseDate").unwrap_or_default();
        self.start.is_none_or(|s| purchased >= s)
            && self.end.is_none_or(|e| purchased < e)
            && (self.product_ids.is_empty()
                || self.product_ids.iter().any(|p| t["productId"] == *p))
            && (self.types.is_empty() || self.types.iter().any(|ty| t["type"] == *ty))
            && (self.groups.is_empty()
                || self
                    .groups
                    .iter()
                    .any(|g| t["subscriptionGroupIdentifier"] == *g))
            && self
                .ownership
                .as_ref()
                .is_none_or(|o| t["inAppOwnershipType"] == *o)
            && self
                .revoked
                .is_none_or(|r| r == t.get("revocationDate").is_some_and(|d| !d.is_null()))
    }
}

impl AppStoreServer {
    pub fn new(chain: Arc<AppleChain>, key: ApiKey, bundle_id: &str) -> Arc<Self> {
        Arc::new(Self {
            chain,
            key,
            bundle_id: bundle_id.to_owned(),
            transactions: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(0),
            renewals: Mutex::new(HashMap::new()),
            notifications: Mutex::new(Vec::new()),
            consumption: Mutex::new(Vec::new()),
            settings: Mutex::new(Settings {
                page_size: APPLE_PAGE_SIZE,
                environment: "Sandbox".into(),
                app_apple_id: None,
                notification_url: None,
                broken_paging: false,
            }),
            faults: Mutex::new(Vec::new()),
            faults_after: Mutex::new(0),
            calls: Mutex::new(0),
            receipts: Mutex::new(HashMap::new()),
            shared_secret: Mutex::new(None),
            http: reqwest::Client::new(),
            clock: Mutex::new(SimClock::system()),
        })
    }

    /// Records a transaction (its JWSTransactionDecodedPayload) for the API to serve, in the account
    /// of its lineage (`originalTransactionId`). A transaction with the same `transactionId` is
    /// replaced: put it again with a `revocationDate` to refund it.
    pub fn put_transaction(&self, payload: Value) {
        let account = payload["originalTransactionId"]
            .as_str()
            .or_else(|| payload["transactionId"].as_str())
            .unwrap_or_default()
            .to_owned();
        self.put_account_transaction(&account, payload);
    }

    /// Records a transaction in a named Apple account, so that one customer's history spans several
    /// lineages (a subscription and a few purchases, say).
    pub fn put_account_transaction(&self, account: &str, payload: Value) {
        let id = payload["transactionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.transactions).insert(
            id,
            Stored {
                payload,
                account: account.to_owned(),
                seq,
            },
        );
    }

    /// Records a subscription's renewal info (JWSRenewalInfoDecodedPayload), keyed by its
    /// `originalTransactionId`, for Get All Subscription Statuses. Without one, the server makes one
    /// up from the latest transaction.
    pub fn put_renewal_info(&self, payload: Value) {
        let id = payload["originalTransactionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        lock(&self.renewals).insert(id, payload);
    }

    /// Records a notification as sent and delivered (one SUCCESS attempt at its `signedDate`), for Get
    /// Notification History. `signed_payload` is the JWS, not the `{"signedPayload": ...}` body.
    pub fn record_notification(&self, signed_payload: &str) -> Result<(), NotJws> {
        let payload = jws_payload(signed_payload)?;
        let at = date(&payload, "signedDate").unwrap_or_else(|| self.now());
        self.record_notification_with(signed_payload, &[(at, "SUCCESS")])
    }

    /// Records a notification with its send attempts: (Unix ms, `sendAttemptResult`) such as
    /// `NO_RESPONSE` or `UNSUCCESSFUL_HTTP_RESPONSE_CODE`.
    pub fn record_notification_with(
        &self,
        signed_payload: &str,
        attempts: &[(i64, &str)],
    ) -> Result<(), NotJws> {
        let payload = jws_payload(signed_payload)?;
        let mut transaction_ids = Vec::new();
        if let Some(t) = payload["data"]["signedTransactionInfo"].as_str() {
            let t = jws_payload(t)?;
            for field in ["transactionId", "originalTransactionId"] {
                if let Some(id) = t[field].as_str() {
                    transaction_ids.push(id.to_owned());
                }
            }
        }
        lock(&self.notifications).push(Sent {
            signed_payload: signed_payload.to_owned(),
            signed_date: date(&payload, "signedDate").unwrap_or_else(|| self.now()),
            notification_type: payload["notificationType"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            subtype: payload["subtype"].as_str().map(str::to_owned),
            transaction_ids,
            attempts: attempts
                .iter()
                .map(|(at, result)| (*at, (*result).to_owned()))
                .collect(),
            test_token: None,
        });
        Ok(())
    }

    /// Makes the server read the time from `clock` (the system clock unless set).
    pub fn set_clock(&self, clock: SimClock) {
        *lock(&self.clock) = clock;
    }

    /// Now, by the server's clock, in Unix ms.
    fn now(&self) -> i64 {
        lock(&self.clock).now_ms()
    }

    /// The chain the server signs with.
    pub fn chain(&self) -> &Arc<AppleChain> {
        &self.chain
    }

    /// The app's bundle id.
    pub fn bundle_id(&self) -> &str {
        &self.bundle_id
    }

    /// The environment the server answers for.
    pub fn environment(&self) -> String {
        lock(&self.settings).environment.clone()
    }

    /// The app's Apple id, when set.
    pub fn app_apple_id(&self) -> Option<i64> {
        lock(&self.settings).app_apple_id
    }

    /// The App Store Server Notifications URL, when set.
    pub fn notification_url(&self) -> Option<String> {
        lock(&self.settings).notification_url.clone()
    }

    /// The Send Consumption Information requests the server accepted, oldest first.
    pub fn consumption_requests(&self) -> Vec<ConsumptionRecord> {
        lock(&self.consumption).clone()
    }

    /// How many items a page of transaction, refund or notification history holds (Apple: 20).
    pub fn set_page_size(&self, size: usize) {
        lock(&self.settings).page_size = size.max(1);
    }

    /// The environment the server answers for (`Sandbox` unless set).
    pub fn set_environment(&self, environment: &str) {
        lock(&self.settings).environment = environment.to_owned();
    }

    /// The app's Apple id, which answers and notifications then carry.
    pub fn set_app_apple_id(&self, id: i64) {
        lock(&self.settings).app_apple_id = Some(id);
    }

    /// The App Store Server Notifications URL App Store Connect has for the app. Without one, Request
    /// a Test Notification fails as Apple's does (404, 4040007).
    pub fn set_notification_url(&self, url: &str) {
        lock(&self.settings).notification_url = Some(url.to_owned());
    }

    /// Makes paged answers always say there is more, with a new token each time, as a broken server
    /// might; clients must stop on their own.
    pub fn set_broken_paging(&self, broken: bool) {
        lock(&self.settings).broken_paging = broken;
    }

    /// Makes the next calls fail with these answers first (429 with a Retry-After, 500, ...).
    pub fn fail_next(&self, faults: Vec<(u16, Option<String>)>) {
        self.fail_after(0, faults);
    }

    /// Lets `calls` more calls through, then fails the next ones with these answers.
    pub fn fail_after(&self, calls: u64, faults: Vec<(u16, Option<String>)>) {
        *lock(&self.faults_after) = calls;
        *lock(&self.faults) = faults;
    }

    /// Records a legacy receipt for `verifyReceipt`: its environment (`Production` or `Sandbox`), the
    /// bundle it names, and its transactions in Apple's string-valued `in_app` shape.
    pub fn put_receipt(
        &self,
        receipt_data: &str,
        environment: &str,
        bundle_id: &str,
        in_app: Vec<Value>,
    ) {
        lock(&self.receipts).insert(
            receipt_data.to_owned(),
            (environment.to_owned(), bundle_id.to_owned(), in_app),
        );
    }

    /// The app's shared secret that `verifyReceipt` requires as `password`.
    pub fn set_shared_secret(&self, secret: &str) {
        *lock(&self.shared_secret) = Some(secret.to_owned());
    }

    /// How many requests reached the server.
    pub fn calls(&self) -> u64 {
        *lock(&self.calls)
    }

    /// The API's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/inApps/v1/transactions/{id}", get(transaction_info))
            .route("/inApps/v2/history/{id}", get(transaction_history))
            .route("/inApps/v1/subscriptions/{id}", get(subscription_statuses))
            .route("/inApps/v2/refund/lookup/{id}", get(refund_history))
            .route(
                "/inApps/v1/notifications/history",
                post(notification_history),
            )
            .route("/inApps/v1/notifications/test", post(request_test))
            .route("/inApps/v1/notifications/test/{token}", get(test_status))
            .route(
                "/inApps/v1/transactions/consumption/{id}",
                put(consumption_v1),
            )
            .route(
                "/inApps/v2/transactions/consumption/{id}",
                put(consumption_v2),
            )
            .route("/verifyReceipt", post(verify_receipt_production))
            .route("/sandbox/verifyReceipt", post(verify_receipt_sandbox))
            .with_state(self.clone())
    }

    /// Counts the call, then checks its bearer token and the injected faults; `None` lets it through.
    fn admit(&self, headers: &HeaderMap) -> Option<Response> {
        *lock(&self.calls) += 1;
        self.refuse(headers).or_else(|| self.fault())
    }

    /// Checks a request's bearer token as Apple does; `None` when it passes.
    fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = token.is_some_and(|t| {
            let Ok(header) = jsonwebtoken::decode_header(t) else {
                return false;
            };
            let Ok(key) = DecodingKey::from_ec_pem(self.key.public_key_pem.as_bytes()) else {
                return false;
            };
            let mut v = Validation::new(Algorithm::ES256);
            v.set_audience(&["appstoreconnect-v1"]);
            v.set_issuer(&[&self.key.issuer_id]);
            header.kid.as_deref() == Some(self.key.key_id.as_str())
                && jsonwebtoken::decode::<Claims>(t, &key, &v).is_ok_and(|d| {
                    d.claims.bid == self.bundle_id && d.claims.iss == self.key.issuer_id
                })
        });
        // Apple answers a bad token with a bare 401.
        (!ok).then(|| StatusCode::UNAUTHORIZED.into_response())
    }

    fn fault(&self) -> Option<Response> {
        let mut faults = lock(&self.faults);
        let mut after = lock(&self.faults_after);
        if *after > 0 && !faults.is_empty() {
            *after -= 1;
            return None;
        }
        if faults.is_empty() {
            return None;
        }
        let (status, retry_after) = faults.remove(0);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = if status == StatusCode::TOO_MANY_REQUESTS {
            json!({"errorCode": 4290000, "errorMessage": "Rate limit exceeded."})
        } else {
            json!({"errorCode": 5000000, "errorMessage": "An unknown error occurred."})
        };
        let mut res = (status, Json(body)).into_response();
        if let Some(r) = retry_after.and_then(|r| r.parse().ok()) {
            res.headers_mut().insert("retry-after", r);
        }
        Some(res)
    }

    /// The account a transaction id (or original transaction id) belongs to, as Apple finds a
    /// customer from any of their transactions. A malformed id is Apple's 4000006, an unknown one
    /// its 4040010.
    fn account_of(&self, id: &str) -> Result<String, AppleError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad_request(4000006, "Invalid transaction id."));
        }
        let transactions = lock(&self.transactions);
        transactions
            .get(id)
            .or_else(|| {
                transactions
                    .values()
                    .find(|s| s.payload["originalTransactionId"] == id)
            })
            .map(|s| s.account.clone())
            .ok_or_else(transaction_not_found)
    }

    /// The account's transactions, with their insertion order.
    fn account_transactions(&self, account: &str) -> Vec<(Value, u64)> {
        lock(&self.transactions)
            .values()
            .filter(|s| s.account == account)
            .map(|s| (s.payload.clone(), s.seq))
            .collect()
    }

    fn sign(&self, payload: &Value) -> Result<String, AppleError> {
        self.chain.sign(payload).map_err(|_| INTERNAL)
    }

    fn sign_all(&self, payloads: &[Value]) -> Result<Vec<String>, AppleError> {
        payloads.iter().map(|p| self.sign(p)).collect()
    }

    /// `bundleId`, `appAppleId` (when set) and `environment`, as the history and status answers carry them.
    fn app_fields(&self) -> serde_json::Map<String, Value> {
        let settings = lock(&self.settings);
        let mut m = serde_json::Map::new();
        m.insert("bundleId".into(), self.bundle_id.clone().into());
        if let Some(id) = settings.app_apple_id {
            m.insert("appAppleId".into(), id.into());
        }
        m.insert("environment".into(), settings.environment.clone().into());
        m
    }

    /// The page size and whether paging is broken.
    fn paging(&self) -> (usize, bool) {
        let s = lock(&self.settings);
        (s.page_size, s.broken_paging)
    }

    /// The status of a subscription from its latest transaction and renewal info: 5 revoked, 4 in
    /// billing grace, 3 in billing retry, 1 active, 2 expired.
    pub(crate) fn subscription_status(latest: &Value, renewal: Option<&Value>, now: i64) -> i64 {
        if latest.get("revocationDate").is_some_and(|d| !d.is_null()) {
            return 5;
        }
        if let Some(r) = renewal
            && r["isInBillingRetryPeriod"] == true
        {
            return if date(r, "gracePeriodExpiresDate").is_some_and(|g| g > now) {
                4
            } else {
                3
            };
        }
        if date(latest, "expiresDate").is_some_and(|e| e > now) {
            1
        } else {
            2
        }
    }
}

async fn transaction_info(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    let payload = lock(&s.transactions).get(&id).map(|t| t.payload.clone());
    let payload = payload.ok_or_else(transaction_not_found)?;
    let jws = s.sign(&payload)?;
    Ok(Json(json!({"signedTransactionInfo": jws})).into_response())
}

/// Get Transaction History v2: the account's transactions, filtered, by `signedDate`, paged.
async fn transaction_history(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    let query = HistoryQuery::parse(&pairs)?;
    let account = s.account_of(&id)?;
    let mut items: Vec<(Value, u64)> = s
        .account_transactions(&account)
        .into_iter()
        .filter(|(t, _)| query.matches(t))
        .collect();
    // Apple orders by when it last changed a transaction: its `signedDate` here.
    items.sort_by_key(|(t, seq)| {
        (
            date(t, "signedDate")
                .or_else(|| date(t, "purchaseDate"))
                .unwrap_or_default(),
            *seq,
        )
    });
    if query.descending {
        items.reverse();
    }
    let items: Vec<Value> = items.into_iter().map(|(t, _)| t).collect();
    let (size, broken) = s.paging();
    let Some((chunk, more, revision)) = page(&items, query.revision.as_deref(), size, broken)
    else {
        return Err(bad_request(4000005, "Invalid request revision."));
    };
    let signed = s.sign_all(&chunk)?;
    let mut body = s.app_fields();
    body.insert("revision".into(), revision.into());
    body.insert("hasMore".into(), more.into());
    body.insert("signedTransactions".into(), signed.into());
    Ok(Json(Value::Object(body)).into_response())
}

/// Get All Subscription Statuses: per subscription group, the latest transaction of each of the
/// account's subscriptions, with its renewal info and status.
async fn subscription_statuses(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    let mut wanted = HashSet::new();
    for (k, v) in &pairs {
        if k == "status" {
            match v.parse::<i64>() {
                Ok(n @ 1..=5) => {
                    wanted.insert(n);
                }
                _ => return Err(bad_request(4000031, "Invalid status.")),
            }
        }
    }
    let account = s.account_of(&id)?;
    // group -> lineage -> (latest transaction, its order)
    let mut groups: BTreeMap<String, BTreeMap<String, (Value, u64)>> = BTreeMap::new();
    for (t, seq) in s.account_transactions(&account) {
        let (Some(group), Some(lineage)) = (
            t["subscriptionGroupIdentifier"].as_str(),
            t["originalTransactionId"].as_str(),
        ) else {
            continue;
        };
        if t["type"] != "Auto-Renewable Subscription" {
            continue;
        }
        let slot = groups
            .entry(group.to_owned())
            .or_default()
            .entry(lineage.to_owned());
        let key = |t: &Value, seq: u64| (date(t, "purchaseDate").unwrap_or_default(), seq);
        match slot {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((t, seq));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if key(&t, seq) > key(&o.get().0, o.get().1) {
                    o.insert((t, seq));
                }
            }
        }
    }
    let now = s.now();
    let environment = lock(&s.settings).environment.clone();
    let renewals = lock(&s.renewals).clone();
    let mut data = Vec::new();
    for (group, lineages) in groups {
        let mut last = Vec::new();
        for (lineage, (latest, _)) in lineages {
            let renewal = renewals.get(&lineage).cloned();
            let status = AppStoreServer::subscription_status(&latest, renewal.as_ref(), now);
            if !wanted.is_empty() && !wanted.contains(&status) {
                continue;
            }
            let renewal = renewal.unwrap_or_else(|| {
                let mut r = json!({
                    "originalTransactionId": lineage, "productId": latest["productId"],
                    "autoRenewProductId": latest["productId"], "autoRenewStatus": i64::from(status == 1),
                    "signedDate": now, "environment": environment,
                });
                if let Some(e) = date(&latest, "expiresDate") {
                    r["renewalDate"] = e.into();
                }
                r
            });
            let transaction = s.sign(&latest)?;
            let renewal = s.sign(&renewal)?;
            last.push(json!({"status": status, "originalTransactionId": lineage,
                "signedTransactionInfo": transaction, "signedRenewalInfo": renewal}));
        }
        if !last.is_empty() {
            data.push(json!({"subscriptionGroupIdentifier": group, "lastTransactions": last}));
        }
    }
    let mut body = s.app_fields();
    body.insert("data".into(), data.into());
    Ok(Json(Value::Object(body)).into_response())
}

#[derive(Deserialize)]
struct RevisionQuery {
    revision: Option<String>,
}

/// Get Refund History v2: the account's refunded or revoked transactions, oldest refund first, paged.
async fn refund_history(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<RevisionQuery>,
) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    let account = s.account_of(&id)?;
    let mut refunds: Vec<(Value, u64)> = s
        .account_transactions(&account)
        .into_iter()
        .filter(|(t, _)| date(t, "revocationDate").is_some())
        .collect();
    refunds.sort_by_key(|(t, seq)| (date(t, "revocationDate").unwrap_or_default(), *seq));
    let refunds: Vec<Value> = refunds.into_iter().map(|(t, _)| t).collect();
    let (size, broken) = s.paging();
    let Some((chunk, more, revision)) = page(&refunds, query.revision.as_deref(), size, broken)
    else {
        return Err(bad_request(4000005, "Invalid request revision."));
    };
    let signed = s.sign_all(&chunk)?;
    Ok(
        Json(json!({"signedTransactions": signed, "revision": revision, "hasMore": more}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaginationQuery {
    pagination_token: Option<String>,
}

/// Get Notification History: the notifications sent in a time span, filtered, oldest first, paged.
async fn notification_history(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Query(query): Query<PaginationQuery>,
    body: Bytes,
) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return Err(bad_request(4000000, "Invalid request."));
    };
    let Some(start) = request["startDate"].as_i64() else {
        return Err(bad_request(4000015, "Invalid start date."));
    };
    let Some(end) = request["endDate"].as_i64() else {
        return Err(bad_request(4000016, "Invalid end date."));
    };
    if start > end {
        return Err(bad_request(
            4000013,
            "Invalid request. The start date is later than the end date.",
        ));
    }
    if start < s.now() - HISTORY_REACH_MS {
        return Err(bad_request(
            4000012,
            "Invalid request. The start date is too far in the past.",
        ));
    }
    let kind = request.get("notificationType").filter(|v| !v.is_null());
    let subtype = request.get("notificationSubtype").filter(|v| !v.is_null());
    let transaction = request.get("transactionId").filter(|v| !v.is_null());
    if kind.is_some() && transaction.is_some() {
        return Err(bad_request(
            4000019,
            "Invalid request. Include either the transactionId or the notificationType, not both.",
        ));
    }
    if kind.is_some_and(|k| !k.is_string()) || (subtype.is_some() && kind.is_none()) {
        return Err(bad_request(4000018, "Invalid notification type."));
    }
    // A customer filter matches every transaction of the customer's account.
    let customer: Option<HashSet<String>> = match transaction {
        None => None,
        Some(t) => {
            let Some(id) = t.as_str() else {
                return Err(bad_request(4000006, "Invalid transaction id."));
            };
            let mut ids = HashSet::from([id.to_owned()]);
            if let Ok(account) = s.account_of(id) {
                for (t, _) in s.account_transactions(&account) {
                    for field in ["transactionId", "originalTransactionId"] {
                        if let Some(i) = t[field].as_str() {
                            ids.insert(i.to_owned());
                        }
                    }
                }
            }
            Some(ids)
        }
    };
    let only_failures = request["onlyFailures"] == true;
    let mut items: Vec<(i64, usize, Value)> = lock(&s.notifications)
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.signed_date >= start
                && n.signed_date < end
                && kind.is_none_or(|k| *k == n.notification_type)
                && subtype.is_none_or(|st| n.subtype.as_deref() == st.as_str())
                && customer
                    .as_ref()
                    .is_none_or(|ids| n.transaction_ids.iter().any(|i| ids.contains(i)))
                && (!only_failures || n.attempts.last().is_none_or(|(_, r)| r != "SUCCESS"))
        })
        .map(|(i, n)| {
            let attempts: Vec<Value> = n
                .attempts
                .iter()
                .map(|(at, r)| json!({"attemptDate": at, "sendAttemptResult": r}))
                .collect();
            (
                n.signed_date,
                i,
                json!({"signedPayload": n.signed_payload, "sendAttempts": attempts}),
            )
        })
        .collect();
    items.sort_by_key(|(at, i, _)| (*at, *i));
    let items: Vec<Value> = items.into_iter().map(|(_, _, v)| v).collect();
    let (size, broken) = s.paging();
    let Some((chunk, more, token)) = page(&items, query.pagination_token.as_deref(), size, broken)
    else {
        return Err(bad_request(4000014, "Invalid pagination token."));
    };
    let mut body = json!({"notificationHistory": chunk, "hasMore": more});
    if more {
        body["paginationToken"] = token.into();
    }
    Ok(Json(body).into_response())
}

/// Request a Test Notification: signs a TEST notification, keeps it for history and status, and
/// sends it to the notification URL in the background, as Apple does.
async fn request_test(State(s): State<Arc<AppStoreServer>>, headers: HeaderMap) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    let (url, environment, app_apple_id) = {
        let settings = lock(&s.settings);
        (
            settings.notification_url.clone(),
            settings.environment.clone(),
            settings.app_apple_id,
        )
    };
    let Some(url) = url else {
        return Err(not_found(4040007, "Server notification URL not found."));
    };
    let token = uuid::Uuid::new_v4().to_string();
    let now = s.now();
    // A TEST notification's `data` has only the app's bundle, Apple id and environment.
    let mut data = json!({"bundleId": s.bundle_id, "environment": environment});
    if let Some(id) = app_apple_id {
        data["appAppleId"] = id.into();
    }
    let payload = json!({
        "notificationType": "TEST",
        "notificationUUID": uuid::Uuid::new_v4().to_string(),
        "version": "2.0",
        "signedDate": now,
        "data": data,
    });
    let signed = s.sign(&payload)?;
    lock(&s.notifications).push(Sent {
        signed_payload: signed.clone(),
        signed_date: now,
        notification_type: "TEST".into(),
        subtype: None,
        transaction_ids: Vec::new(),
        attempts: Vec::new(),
        test_token: Some(token.clone()),
    });
    let server = s.clone();
    let sent_token = token.clone();
    tokio::spawn(async move {
        let result = server.deliver(&url, &signed).await.send_attempt_result;
        let at = server.now();
        let mut notifications = lock(&server.notifications);
        if let Some(n) = notifications
            .iter_mut()
            .find(|n| n.test_token.as_deref() == Some(sent_token.as_str()))
        {
            n.attempts.push((at, result.to_owned()));
        }
    });
    Ok(Json(json!({"testNotificationToken": token})).into_response())
}

impl AppStoreServer {
    /// POSTs `{"signedPayload": ...}` to `url` and names the outcome as Apple's `sendAttemptResult`.
    async fn deliver(&self, url: &str, signed_payload: &str) -> Delivery {
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(json!({"signedPayload": signed_payload}).to_string())
            .timeout(SEND_TIMEOUT)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let result = if e.is_timeout() {
                    "TIMED_OUT"
                } else if e.is_connect() {
                    "NO_RESPONSE"
                } else {
                    "OTHER"
                };
                return Delivery {
                    http_status: None,
                    send_attempt_result: result,
                    body: None,
                };
            }
        };
        let status = response.status().as_u16();
        let result = if (200..=206).contains(&status) {
            "SUCCESS"
        } else {
            "UNSUCCESSFUL_HTTP_RESPONSE_CODE"
        };
        Delivery {
            http_status: Some(status),
            send_attempt_result: result,
            body: response.text().await.ok(),
        }
    }

    /// Sends a notification to the notification URL once, as Apple's sandbox does (no retries), and
    /// records it for Get Notification History with that attempt. `signed_payload` is the JWS.
    pub async fn send_notification(&self, signed_payload: &str) -> Result<Delivery, SendError> {
        let url = self.notification_url().ok_or(SendError::NoUrl)?;
        jws_payload(signed_payload)?;
        let delivery = self.deliver(&url, signed_payload).await;
        self.record_notification_with(
            signed_payload,
            &[(self.now(), delivery.send_attempt_result)],
        )?;
        Ok(delivery)
    }
}

/// Get Test Notification Status: the TEST notification and its send attempts so far.
async fn test_status(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    if token.is_empty()
        || !token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(bad_request(4000020, "Invalid test notification token."));
    }
    let notifications = lock(&s.notifications);
    let Some(n) = notifications
        .iter()
        .find(|n| n.test_token.as_deref() == Some(token.as_str()))
    else {
        return Err(not_found(4040008, "Test notification not found."));
    };
    let attempts: Vec<Value> = n
        .attempts
        .iter()
        .map(|(at, r)| json!({"attemptDate": at, "sendAttemptResult": r}))
        .collect();
    Ok(Json(json!({"signedPayload": n.signed_payload, "sendAttempts": attempts})).into_response())
}

/// Checks that `body[field]` is an integer in `range`.
fn in_range(body: &Value, field: &str, range: std::ops::RangeInclusive<i64>) -> bool {
    body[field].as_i64().is_some_and(|n| range.contains(&n))
}

/// Checks a v2 ConsumptionRequest as Apple does; `Ok` when it passes.
fn check_consumption_v2(body: &Value) -> Result<(), AppleError> {
    if body["customerConsented"] != true {
        return Err(bad_request(4000035, "Invalid customer consented."));
    }
    if !body["sampleContentProvided"].is_boolean() {
        return Err(bad_request(4000041, "Invalid sample content provided."));
    }
    let delivery = [
        "DELIVERED",
        "UNDELIVERED_QUALITY_ISSUE",
        "UNDELIVERED_WRONG_ITEM",
        "UNDELIVERED_SERVER_OUTAGE",
        "UNDELIVERED_OTHER",
    ];
    if !body["deliveryStatus"]
        .as_str()
        .is_some_and(|d| delivery.contains(&d))
    {
        return Err(bad_request(4000036, "Invalid delivery status."));
    }
    let percentage = &body["consumptionPercentage"];
    if !percentage.is_null() && !in_range(body, "consumptionPercentage", 0..=100_000) {
        return Err(bad_request(4000000, "Invalid consumption percentage."));
    }
    let preference = &body["refundPreference"];
    if !preference.is_null()
        && !preference
            .as_str()
            .is_some_and(|p| ["DECLINE", "GRANT_FULL", "GRANT_PRORATED"].contains(&p))
    {
        return Err(bad_request(4000000, "Invalid refund preference."));
    }
    Ok(())
}

/// Checks a v1 ConsumptionRequest as Apple does; `Ok` when it passes.
fn check_consumption_v1(body: &Value) -> Result<(), AppleError> {
    if body["customerConsented"] != true {
        return Err(bad_request(4000035, "Invalid customer consented."));
    }
    let ranges: [(&str, i64, i64, &str); 9] = [
        (
            "consumptionStatus",
            3,
            4000034,
            "Invalid consumption status.",
        ),
        ("platform", 2, 4000039, "Invalid platform."),
        ("deliveryStatus", 5, 4000036, "Invalid delivery status."),
        ("accountTenure", 7, 4000032, "Invalid account tenure."),
        ("playTime", 7, 4000040, "Invalid play time."),
        (
            "lifetimeDollarsRefunded",
            7,
            4000038,
            "Invalid lifetime dollars refunded.",
        ),
        (
            "lifetimeDollarsPurchased",
            7,
            4000037,
            "Invalid lifetime dollars purchased.",
        ),
        ("userStatus", 4, 4000042, "Invalid user status."),
        ("refundPreference", 3, 4000000, "Invalid refund preference."),
    ];
    for (field, max, code, message) in ranges {
        let optional = field == "refundPreference" && body[field].is_null();
        if !optional && !in_range(body, field, 0..=max) {
            return Err(bad_request(code, message));
        }
    }
    if !body["sampleContentProvided"].is_boolean() {
        return Err(bad_request(4000041, "Invalid sample content provided."));
    }
    let token_ok = body["appAccountToken"]
        .as_str()
        .is_some_and(|t| t.is_empty() || uuid::Uuid::parse_str(t).is_ok());
    if !token_ok {
        return Err(bad_request(4000033, "Invalid app account token."));
    }
    Ok(())
}

async fn consumption_v1(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    consumption(&s, &headers, 1, &id, &body)
}

async fn consumption_v2(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    consumption(&s, &headers, 2, &id, &body)
}

/// Send Consumption Information: checks the body, keeps it, and answers 202 with no body, as Apple does.
fn consumption(
    s: &AppStoreServer,
    headers: &HeaderMap,
    version: u8,
    id: &str,
    body: &[u8],
) -> Answer {
    if let Some(refused) = s.admit(headers) {
        return Ok(refused);
    }
    s.account_of(id)?;
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return Err(bad_request(4000000, "Invalid request."));
    };
    if version == 1 {
        check_consumption_v1(&body)?;
    } else {
        check_consumption_v2(&body)?;
    }
    lock(&s.consumption).push(ConsumptionRecord {
        version,
        transaction_id: id.to_owned(),
        body,
    });
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn verify_receipt_production(
    State(s): State<Arc<AppStoreServer>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    Json(s.verify_receipt("Production", &body))
}

async fn verify_receipt_sandbox(
    State(s): State<Arc<AppStoreServer>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    Json(s.verify_receipt("Sandbox", &body))
}

impl AppStoreServer {
    /// `verifyReceipt` as Apple answers it: status codes, the 21007/21008 redirects, string values.
    fn verify_receipt(&self, host: &str, body: &Value) -> Value {
        *lock(&self.calls) += 1;
        let Some(data) = body["receipt-data"].as_str() else {
            return json!({"status": 21000});
        };
        let secret = lock(&self.shared_secret).clone();
        let Some((env, bundle, in_app)) = lock(&self.receipts).get(data).cloned() else {
            return json!({"status": 21003});
        };
        if env != host {
            return json!({"status": if env == "Sandbox" { 21007 } else { 21008 }});
        }
        if secret.is_some() && body["password"].as_str() != secret.as_deref() {
            return json!({"status": 21004});
        }
        json!({
            "status": 0,
            "environment": env,
            "receipt": {"receipt_type": if env == "Sandbox" { "ProductionSandbox" } else { "Production" }, "bundle_id": bundle, "in_app": in_app},
            "latest_receipt_info": in_app,
            "latest_receipt": data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_their_tokens_and_refuse_others() {
        let items: Vec<u32> = (0..5).collect();
        let (first, more, next) = page(&items, None, 2, false).unwrap();
        assert_eq!((first, more, next.as_str()), (vec![0, 1], true, "sim-2"));
        let (last, more, next) = page(&items, Some("sim-4"), 2, false).unwrap();
        assert_eq!((last, more, next.as_str()), (vec![4], false, "sim-5"));
        let (empty, more, _) = page(&items, Some("sim-9"), 2, false).unwrap();
        assert!(empty.is_empty() && !more);
        assert!(page(&items, Some("garbage"), 2, false).is_none());
        let (_, more, next) = page(&items, Some("sim-6"), 2, true).unwrap();
        assert!(more && next == "sim-8", "a broken server never ends");
    }

    #[test]
    fn history_filters_read_apples_query() {
        let pairs = |q: &[(&str, &str)]| -> Vec<(String, String)> {
            q.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let q = HistoryQuery::parse(&pairs(&[
            ("productType", "CONSUMABLE"),
            ("revoked", "False"),
            ("startDate", "10"),
        ]))
        .unwrap();
        let coin = json!({"type": "Consumable", "purchaseDate": 20});
        assert!(q.matches(&coin));
        assert!(!q.matches(&json!({"type": "Consumable", "purchaseDate": 5})));
        assert!(
            !q.matches(&json!({"type": "Consumable", "purchaseDate": 20, "revocationDate": 30}))
        );
        assert!(!q.matches(&json!({"type": "Non-Consumable", "purchaseDate": 20})));
        for bad in [
            ("sort", "UP"),
            ("productType", "GAME"),
            ("revoked", "maybe"),
            ("startDate", "x"),
        ] {
            assert!(HistoryQuery::parse(&pairs(&[bad])).is_err(), "{bad:?}");
        }
        assert!(HistoryQuery::parse(&pairs(&[("startDate", "5"), ("endDate", "4")])).is_err());
    }

    #[test]
    fn consumption_bodies_are_checked_as_apple_checks_them() {
        let v2 = json!({"customerConsented": true, "sampleContentProvided": false, "deliveryStatus": "DELIVERED", "consumptionPercentage": 50000, "refundPreference": "GRANT_FULL"});
        assert!(check_consumption_v2(&v2).is_ok());
        let mut no_consent = v2.clone();
        no_consent["customerConsented"] = false.into();
        assert!(check_consumption_v2(&no_consent).is_err());
        let mut too_much = v2.clone();
        too_much["consumptionPercentage"] = 100_001.into();
        assert!(check_consumption_v2(&too_much).is_err());
        let v1 = json!({"customerConsented": true, "consumptionStatus": 1, "platform": 2, "sampleContentProvided": false, "deliveryStatus": 3,
            "appAccountToken": "7389a31a-fb6d-4569-a2a6-db7d85d84813", "accountTenure": 4, "playTime": 5, "lifetimeDollarsRefunded": 6,
            "lifetimeDollarsPurchased": 7, "userStatus": 4, "refundPreference": 3});
        assert!(check_consumption_v1(&v1).is_ok());
        let mut bad_token = v1.clone();
        bad_token["appAccountToken"] = "not-a-uuid".into();
        assert!(check_consumption_v1(&bad_token).is_err());
        let mut bad_time = v1;
        bad_time["playTime"] = 8.into();
        assert!(check_consumption_v1(&bad_time).is_err());
    }

    #[test]
    fn subscription_status_follows_the_transaction_and_renewal() {
        let now = 1_000;
        let active = json!({"expiresDate": 2_000});
        assert_eq!(AppStoreServer::subscription_status(&active, None, now), 1);
        let expired = json!({"expiresDate": 500});
        assert_eq!(AppStoreServer::subscription_status(&expired, None, now), 2);
        let retry = json!({"isInBillingRetryPeriod": true});
        assert_eq!(
            AppStoreServer::subscription_status(&expired, Some(&retry), now),
            3
        );
        let grace = json!({"isInBillingRetryPeriod": true, "gracePeriodExpiresDate": 1_500});
        assert_eq!(
            AppStoreServer::subscription_status(&expired, Some(&grace), now),
            4
        );
        let refunded = json!({"expiresDate": 2_000, "revocationDate": 900});
        assert_eq!(AppStoreServer::subscription_status(&refunded, None, now), 5);
    }
}
