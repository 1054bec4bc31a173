//! The fake App Store Server API's HTTP surface: its router, the bearer-token check and injected
//! faults every call goes through, request parsing, Apple's error answers and the handlers. The
//! state they read and change is in `mod.rs`.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppStoreServer, ConsumptionRecord, Sent, date, lock, page};

/// How far back Get Notification History reaches: 180 days, in milliseconds.
const HISTORY_REACH_MS: i64 = 180 * 86_400_000;

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    bid: String,
}

/// An error answer in Apple's shape: the status, and `{"errorCode", "errorMessage"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AppleError {
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
pub(super) struct HistoryQuery {
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
    pub(super) fn parse(pairs: &[(String, String)]) -> Result<Self, AppleError> {
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

    pub(super) fn matches(&self, t: &Value) -> bool {
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
            .route("/inApps/v1/transactions/{id}/finish", post(finish))
            .route(
                "/inApps/v1/transactions/appTransactions/{id}",
                get(app_transaction_info),
            )
            .route(
                "/inApps/v1/transactions/{id}/appAccountToken",
                put(set_app_account_token),
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
    /// The `type` of the transaction `id` (or of one of lineage `id`), empty when unknown.
    fn product_type_of(&self, id: &str) -> String {
        let transactions = lock(&self.transactions);
        stored(&transactions, id)
            .and_then(|s| s.payload["type"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    fn account_of(&self, id: &str) -> Result<String, AppleError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad_request(4000006, "Invalid transaction id."));
        }
        let transactions = lock(&self.transactions);
        stored(&transactions, id)
            .map(|s| s.account.clone())
            .ok_or_else(transaction_not_found)
    }

    fn sign(&self, payload: &Value) -> Result<String, AppleError> {
        self.chain.sign(payload).map_err(|_| INTERNAL)
    }

    fn sign_all(&self, payloads: &[Value]) -> Result<Vec<String>, AppleError> {
        payloads.iter().map(|p| self.sign(p)).collect()
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

/// The transaction `id`, or one whose lineage (`originalTransactionId`) is `id`.
fn stored<'a>(
    transactions: &'a std::collections::HashMap<String, super::Stored>,
    id: &str,
) -> Option<&'a super::Stored> {
    transactions.get(id).or_else(|| {
        transactions
            .values()
            .find(|s| s.payload["originalTransactionId"] == id)
    })
}

/// Checks that `body[field]` is an integer in `range`.
fn in_range(body: &Value, field: &str, range: std::ops::RangeInclusive<i64>) -> bool {
    body[field].as_i64().is_some_and(|n| range.contains(&n))
}

/// Checks a v2 ConsumptionRequest as Apple does, for a transaction of `product_type` (Apple's
/// `type`); `Ok` when it passes. An auto-renewable subscription's consumption is Apple's to work
/// out, so it takes no `consumptionPercentage`; a `GRANT_PRORATED` preference needs a share above 0.
pub(super) fn check_consumption_v2(body: &Value, product_type: &str) -> Result<(), AppleError> {
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
    if product_type == "Auto-Renewable Subscription" && !percentage.is_null() {
        return Err(bad_request(
            4000000,
            "Invalid request. consumptionPercentage is not allowed for an auto-renewable subscription.",
        ));
    }
    if preference == "GRANT_PRORATED" && percentage.as_i64().is_none_or(|p| p <= 0) {
        return Err(bad_request(
            4000000,
            "Invalid request. GRANT_PRORATED needs a consumptionPercentage above 0.",
        ));
    }
    Ok(())
}

/// Checks a v1 ConsumptionRequest as Apple does; `Ok` when it passes.
pub(super) fn check_consumption_v1(body: &Value) -> Result<(), AppleError> {
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

/// Finish Transaction: a transaction of the account, recorded as finished; 200 with no body.
async fn finish(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    s.account_of(&id)?;
    lock(&s.finished).push(id);
    Ok(StatusCode::OK.into_response())
}

/// Get App Transaction Info: the account's AppTransaction, signed.
async fn app_transaction_info(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    let payload = s
        .app_transaction_of(&id)
        .ok_or_else(|| not_found(4040019, "No AppTransaction exists for the customer."))?;
    let jws = s.sign(&payload)?;
    Ok(Json(json!({"signedAppTransactionInfo": jws})).into_response())
}

/// Set App Account Token: `{"appAccountToken": UUID}` on a lineage; 200 with no body.
async fn set_app_account_token(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    if let Some(refused) = s.admit(&headers) {
        return Ok(refused);
    }
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["appAccountToken"].as_str().map(str::to_owned))
        .filter(|t| uuid::Uuid::parse_str(t).is_ok())
        .ok_or_else(|| {
            bad_request(
                4000183,
                "Invalid request. The app account token field must be a valid UUID.",
            )
        })?;
    match s.set_app_account_token(&id, &token.to_lowercase()) {
        Ok(()) => Ok(StatusCode::OK.into_response()),
        Err(4_000_187) => Err(bad_request(
            4000187,
            "Invalid request. The transaction ID provided is not an original transaction ID.",
        )),
        Err(4_000_185) => Err(bad_request(
            4000185,
            "Invalid request. Family Sharing transactions aren't supported by this endpoint.",
        )),
        Err(_) => Err(transaction_not_found()),
    }
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
        check_consumption_v2(&body, &s.product_type_of(id))?;
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
