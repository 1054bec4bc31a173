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
//!
//! This file holds the server's state and what it does without HTTP: the data tests and the
//! simulated App Store put in, notifications recorded and sent, subscription statuses, paging and
//! `verifyReceipt`'s answers. `http.rs` is its HTTP surface: the router, Apple's bearer-token check
//! and injected faults, request parsing, Apple's error answers and the handlers. `tests.rs` tests
//! private helpers of both; the rest is tested from `crates/store-sim/tests/` and the gateway's
//! integration tests.

mod http;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};

use crate::{
    SimClock,
    apple::chain::{AppleChain, SimError},
};

/// Apple's page size for transaction, refund and notification history.
const APPLE_PAGE_SIZE: usize = 20;
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
    /// The transaction ids Finish Transaction was called for, in order (repeats kept).
    finished: Mutex<Vec<String>>,
    /// AppTransactions by `appTransactionId`, each with the account it belongs to.
    app_transactions: Mutex<HashMap<String, (String, Value)>>,
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

/// Locks a mutex, taking the data even if a panicking holder poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
            finished: Mutex::new(Vec::new()),
            app_transactions: Mutex::new(HashMap::new()),
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

    /// Records an Apple Account's AppTransaction, served by Get App Transaction Info for its
    /// `appTransactionId` or any transaction of `account`.
    pub fn put_app_transaction(&self, account: &str, payload: Value) {
        let id = payload["appTransactionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        lock(&self.app_transactions).insert(id, (account.to_owned(), payload));
    }

    /// The AppTransaction of an `appTransactionId`, or of the account of any transaction id.
    fn app_transaction_of(&self, id: &str) -> Option<Value> {
        let all = lock(&self.app_transactions);
        if let Some((_, t)) = all.get(id) {
            return Some(t.clone());
        }
        let account = lock(&self.transactions)
            .get(id)
            .map(|s| s.account.clone())?;
        all.values()
            .find(|(a, _)| *a == account)
            .map(|(_, t)| t.clone())
    }

    /// Sets `appAccountToken` on every transaction of a lineage (Set App Account Token): `Err`
    /// with Apple's error code when the id is unknown (4040010), not an original transaction id
    /// (4000187) or a family member's (4000185).
    fn set_app_account_token(&self, original: &str, token: &str) -> Result<(), i64> {
        let mut all = lock(&self.transactions);
        let Some(first) = all.get(original) else {
            return Err(4_040_010);
        };
        if first.payload["originalTransactionId"].as_str() != Some(original) {
            return Err(4_000_187);
        }
        if first.payload["inAppOwnershipType"] == "FAMILY_SHARED" {
            return Err(4_000_185);
        }
        for s in all
            .values_mut()
            .filter(|s| s.payload["originalTransactionId"].as_str() == Some(original))
        {
            s.payload["appAccountToken"] = token.into();
        }
        Ok(())
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

    /// The transaction ids Finish Transaction was called for, oldest first (a repeat appears again).
    pub fn finished(&self) -> Vec<String> {
        lock(&self.finished).clone()
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

    /// The account's transactions, with their insertion order.
    fn account_transactions(&self, account: &str) -> Vec<(Value, u64)> {
        lock(&self.transactions)
            .values()
            .filter(|s| s.account == account)
            .map(|s| (s.payload.clone(), s.seq))
            .collect()
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
