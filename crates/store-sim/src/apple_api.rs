//! A fake App Store Server API: it checks the bearer token as Apple does (ES256 with the app's API key,
//! `aud` `appstoreconnect-v1`, the key id, the issuer, the bundle) and serves what its state holds,
//! signed by the simulator's chain, in Apple's response and error shapes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::apple::{AppleChain, SimError};

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

/// A legacy receipt: its environment, the bundle it names, its `in_app` rows.
type StoredReceipt = (String, String, Vec<Value>);

/// The simulated server's state.
pub struct AppStoreServer {
    chain: Arc<AppleChain>,
    key: ApiKey,
    bundle_id: String,
    transactions: Mutex<HashMap<String, Value>>,
    /// Answers to give before the real one, to exercise retries: (status, Retry-After header).
    faults: Mutex<Vec<(u16, Option<String>)>>,
    calls: Mutex<u64>,
    /// Legacy receipts by their base64 text: (environment, receipt bundle id, in_app rows).
    receipts: Mutex<HashMap<String, StoredReceipt>>,
    shared_secret: Mutex<Option<String>>,
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

impl AppStoreServer {
    pub fn new(chain: Arc<AppleChain>, key: ApiKey, bundle_id: &str) -> Arc<Self> {
        Arc::new(Self {
            chain,
            key,
            bundle_id: bundle_id.to_owned(),
            transactions: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
            calls: Mutex::new(0),
            receipts: Mutex::new(HashMap::new()),
            shared_secret: Mutex::new(None),
        })
    }

    /// Records a transaction (its JWSTransactionDecodedPayload) for the API to serve.
    pub fn put_transaction(&self, payload: Value) {
        let id = payload["transactionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.transactions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, payload);
    }

    /// Makes the next calls fail with these answers first (429 with a Retry-After, 500, ...).
    pub fn fail_next(&self, faults: Vec<(u16, Option<String>)>) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
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
        self.receipts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                receipt_data.to_owned(),
                (environment.to_owned(), bundle_id.to_owned(), in_app),
            );
    }

    /// The app's shared secret that `verifyReceipt` requires as `password`.
    pub fn set_shared_secret(&self, secret: &str) {
        *self.shared_secret.lock().unwrap_or_else(|e| e.into_inner()) = Some(secret.to_owned());
    }

    /// How many requests reached the server.
    pub fn calls(&self) -> u64 {
        *self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/inApps/v1/transactions/{id}", get(transaction_info))
            .route(
                "/verifyReceipt",
                axum::routing::post(verify_receipt_production),
            )
            .route(
                "/sandbox/verifyReceipt",
                axum::routing::post(verify_receipt_sandbox),
            )
            .with_state(self.clone())
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
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
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
}

async fn transaction_info(
    State(s): State<Arc<AppStoreServer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    *s.calls.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    if let Some(refused) = s.refuse(&headers) {
        return refused;
    }
    if let Some(fault) = s.fault() {
        return fault;
    }
    let payload = s
        .transactions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    match payload {
        Some(p) => match s.chain.sign(&p) {
            Ok(jws) => Json(json!({"signedTransactionInfo": jws})).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"errorCode": 4040010, "errorMessage": "Transaction id not found."})),
        )
            .into_response(),
    }
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
        *self.calls.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let Some(data) = body["receipt-data"].as_str() else {
            return json!({"status": 21000});
        };
        let secret = self
            .shared_secret
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some((env, bundle, in_app)) = self
            .receipts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(data)
            .cloned()
        else {
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
