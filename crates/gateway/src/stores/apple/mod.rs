//! The App Store adapter ([`AppStore`]): the verbs of every store, done with Apple's means.
//!
//! - [`verifier`]: verifiers of Apple's signed data per app (pinned roots, bundle id, environment),
//!   and a verified transaction turned into facts (the mapping itself is
//!   `gateway_core::apple::facts`);
//! - [`api`]: the App Store Server API client (transaction info and history, subscription statuses,
//!   refund and notification history, consumption information), with its bearer token and retries;
//! - [`receipts`]: legacy `verifyReceipt` receipts.

pub mod api;
pub mod receipts;
pub mod verifier;

use gateway_core::{
    Timestamp,
    apple::{AppleEnvironment, VerifyError, facts::notification_events, models::JwsTransaction},
    text,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use verifier::{Verifiers, transaction_facts};

use self::api::{
    AppStoreApi, ConsumptionRequest, DeliveryStatus, NotificationHistoryRequest,
    NotificationHistoryResponse,
};
use super::{
    Names, Notice, Owed, Page, Problem, Proof, Proven, RestoreProof, Standing, StoreError,
    StoreResult, Transaction,
};
use crate::model::{App, AppStoreConfig, Secret};

pub const NAMES: Names = Names {
    title: "App Store",
    client: "app_store.client",
    restore: "app_store.restore",
    notification: "app_store.notification",
    order_token: "appAccountToken",
    cursor: "app_store.notification_history",
    refund: "app_store.refund",
};

/// The outbox type of an owed consumption answer.
pub const CONSUMPTION: &str = "store.app_store.consumption";

/// The most transactions one restore may carry.
pub const MAX_RESTORE: usize = 200;

/// How far back Apple keeps notification history (180 days), said as a sentence says it, and what
/// an app lacks to read it.
pub const HISTORY: (i64, &str, &str) = (
    180 * 86_400_000,
    "Apple's 180 days of history",
    "This app has no App Store Server API key (`issuer_id`, `key_id`, `private_key_pem`).",
);

/// The App Store adapter: per-app verifiers and the App Store Server API client.
#[derive(Debug)]
pub struct AppStore {
    pub verifiers: Verifiers,
    pub api: AppStoreApi,
}

/// Apple's envelope of a notification. Other fields are ignored, as Apple may add some.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    #[serde(rename = "signedPayload")]
    signed_payload: String,
}

/// What the answer to one consumption request needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConsumptionAnswer {
    transaction_id: String,
    /// The purchase lineage.
    original_transaction_id: String,
    quantity: u32,
    environment: String,
}

/// Apple's signed data refused.
fn refused(e: VerifyError) -> StoreError {
    StoreError::new(
        Problem::Refused,
        e.code(),
        format!("The signed transaction was refused: {e}."),
    )
}

/// Checks an app's `app_store` settings beyond what their types hold: the lengths and characters of
/// every field, then what ties fields together.
pub fn check_settings(a: &AppStoreConfig) -> StoreResult<()> {
    let field = |f: &str| format!("app_store.{f}");
    super::text(
        &text::STORE_ID,
        "invalid_app_store",
        &field("bundle_id"),
        Some(&a.bundle_id),
    )?;
    super::text(
        &text::STORE_ID,
        "invalid_app_store",
        &field("issuer_id"),
        a.issuer_id.as_deref(),
    )?;
    super::text(
        &text::STORE_ID,
        "invalid_app_store",
        &field("key_id"),
        a.key_id.as_deref(),
    )?;
    super::text(
        &text::PRIVATE_KEY_PEM,
        "invalid_app_store",
        &field("private_key_pem"),
        a.private_key_pem.as_ref().map(Secret::expose),
    )?;
    for cert in a.root_certificates_pem.iter().flatten() {
        super::text(
            &text::CERTIFICATE_PEM,
            "invalid_app_store",
            &field("root_certificates_pem"),
            Some(cert),
        )?;
    }
    super::text(
        &text::SECRET_TEXT,
        "invalid_app_store",
        &field("shared_secret"),
        a.shared_secret.as_ref().map(Secret::expose),
    )?;
    super::check_url(&field("api_base_url"), a.api_base_url.as_deref())?;
    super::check_url(
        &field("verify_receipt_url"),
        a.verify_receipt_url.as_deref(),
    )?;
    super::check_url(
        &field("verify_receipt_sandbox_url"),
        a.verify_receipt_sandbox_url.as_deref(),
    )?;
    if a.environment == crate::model::AppleEnvironment::Production && a.app_apple_id.is_none() {
        return Err(StoreError::new(
            Problem::Malformed,
            "invalid_app_store",
            "A Production `app_store` needs `app_apple_id` (the app's Apple ID in App Store Connect): Apple's notifications are checked against it.",
        ));
    }
    Ok(())
}

/// True when the app can call the App Store Server API.
pub fn can_poll(app: &App) -> bool {
    app.settings
        .app_store
        .as_ref()
        .is_some_and(|c| c.issuer_id.is_some() && c.key_id.is_some() && c.private_key_pem.is_some())
}

impl AppStore {
    pub fn new(http: reqwest::Client) -> Self {
        AppStore {
            verifiers: Verifiers::default(),
            api: AppStoreApi::new(http),
        }
    }

    pub fn check(&self, proof: &Proof) -> StoreResult<()> {
        if proof.purchase_token.is_some() || proof.checkout_session_id.is_some() {
            return Err(StoreError::new(
                Problem::Malformed,
                "field_not_for_store",
                "`purchase_token` and `checkout_session_id` belong to Google Play and Stripe, not the App Store.",
            ));
        }
        super::text(
            &text::SIGNED_DATA,
            "invalid_signed_transaction",
            "signed_transaction",
            proof.signed_transaction.as_deref(),
        )?;
        super::text(
            &text::TRANSACTION_ID,
            "invalid_transaction_id",
            "transaction_id",
            proof.transaction_id.as_deref(),
        )?;
        super::text(
            &text::RECEIPT,
            "invalid_receipt_data",
            "receipt_data",
            proof.receipt_data.as_deref(),
        )
    }

    /// The transactions of a legacy receipt Apple verified, of the app's environment.
    async fn receipt(
        &self,
        app: &App,
        environment: AppleEnvironment,
        receipt: &str,
    ) -> StoreResult<Vec<Transaction>> {
        let verified = receipts::verify(self.api.http(), app, receipt).await?;
        if verified.environment != environment {
            return Err(StoreError::new(
                Problem::Refused,
                "wrong_environment",
                format!(
                    "The receipt is from the {} environment; this app accepts {}.",
                    verified.environment.as_str(),
                    environment.as_str()
                ),
            ));
        }
        Ok(verified
            .transactions
            .into_iter()
            .map(Transaction::AppStore)
            .collect())
    }

    /// One verified transaction (signed, or looked up by its id), or every transaction of a legacy
    /// receipt.
    pub async fn verify_submission(
        &self,
        app: &App,
        proof: Proof,
        now: Timestamp,
    ) -> StoreResult<Proven> {
        let verifier = self.verifiers.for_app(app)?;
        let verify = |jws: &str| {
            verifier
                .verify_transaction(jws, now)
                .map(Transaction::AppStore)
                .map_err(refused)
        };
        let proven = |transactions, raw, what| Proven {
            transactions,
            raw,
            what,
            listing: what == "receipt",
            owed: Vec::new(),
        };
        match (
            proof.signed_transaction,
            proof.transaction_id,
            proof.receipt_data,
        ) {
            (Some(jws), None, None) => Ok(proven(vec![verify(&jws)?], jws, "transaction")),
            // Only an id: the gateway asks Apple for the transaction, then verifies it as any other.
            (None, Some(id), None) => {
                let jws = self
                    .api
                    .transaction_info(app, verifier.environment(), &id)
                    .await?;
                Ok(proven(vec![verify(&jws)?], jws, "transaction"))
            }
            (None, None, Some(receipt)) => {
                let transactions = self.receipt(app, verifier.environment(), &receipt).await?;
                Ok(proven(transactions, receipt, "receipt"))
            }
            (None, None, None) => Err(StoreError::new(
                Problem::Malformed,
                "signed_transaction_required",
                "Send the StoreKit 2 `signed_transaction` (its jwsRepresentation), its `transaction_id`, or a legacy `receipt_data`.",
            )),
            // One purchase, one proof: a body with two could name two purchases, and picking one
            // would silently drop the other.
            _ => Err(StoreError::new(
                Problem::Malformed,
                "one_proof_only",
                "Send exactly one of `signed_transaction`, `transaction_id` and `receipt_data`.",
            )),
        }
    }

    /// StoreKit's `Transaction.currentEntitlements`, or a legacy receipt.
    pub async fn verify_restore(
        &self,
        app: &App,
        proof: &RestoreProof,
        now: Timestamp,
    ) -> StoreResult<Vec<Transaction>> {
        let limit = (MAX_RESTORE, "too_many_transactions", "transactions");
        super::restore_items(&proof.signed_transactions, limit, |jws| {
            super::text(
                &text::SIGNED_DATA,
                "invalid_signed_transaction",
                "signed_transactions",
                Some(jws),
            )
        })?;
        super::text(
            &text::RECEIPT,
            "invalid_receipt_data",
            "receipt_data",
            proof.receipt_data.as_deref(),
        )?;
        if proof.signed_transactions.is_empty() && proof.receipt_data.is_none() {
            return Err(StoreError::new(
                Problem::Malformed,
                "nothing_to_restore",
                "Send `signed_transactions` or a `receipt_data` to restore.",
            ));
        }
        let verifier = self.verifiers.for_app(app)?;
        let mut transactions = Vec::new();
        for jws in &proof.signed_transactions {
            let t = verifier.verify_transaction(jws, now).map_err(refused)?;
            transactions.push(Transaction::AppStore(t));
        }
        if let Some(receipt) = &proof.receipt_data {
            transactions.extend(self.receipt(app, verifier.environment(), receipt).await?);
        }
        if transactions.is_empty() {
            return Err(StoreError::new(
                Problem::Refused,
                "nothing_to_restore",
                "The receipt holds no transactions to restore.",
            ));
        }
        Ok(transactions)
    }

    /// An App Store Server Notification V2, verified with its transaction and renewal info.
    pub fn verify_notification(
        &self,
        app: &App,
        body: &[u8],
        now: Timestamp,
    ) -> StoreResult<Notice> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(|_| {
            StoreError::new(
                Problem::Malformed,
                "malformed_notification",
                "The body is not an App Store Server Notification V2 (`{\"signedPayload\": ...}`).",
            )
        })?;
        super::text(
            &text::SIGNED_DATA,
            "malformed_notification",
            "signedPayload",
            Some(&envelope.signed_payload),
        )?;
        let verifier = self.verifiers.for_app(app)?;
        let n = verifier
            .verify_notification(&envelope.signed_payload, now)
            .map_err(refused)?;
        let data = n.data.as_ref();
        let transaction = match data.and_then(|d| d.signed_transaction_info.as_deref()) {
            Some(jws) => Some(verifier.verify_transaction(jws, now).map_err(refused)?),
            None => None,
        };
        let renewal = match data.and_then(|d| d.signed_renewal_info.as_deref()) {
            Some(jws) => Some(verifier.verify_renewal_info(jws, now).map_err(refused)?),
            None => None,
        };
        // The answer to a consumption request is owed once the notification is kept: an outbox
        // action in the same transaction, sent by the delivery worker and retried like any delivery.
        let answers = app
            .settings
            .app_store
            .as_ref()
            .is_some_and(|c| c.answer_consumption_requests);
        let owed: Vec<_> = match &transaction {
            Some(t) if answers && n.notification_type == "CONSUMPTION_REQUEST" => {
                consumption_answer(&n.notification_uuid, t, verifier.environment())
                    .into_iter()
                    .collect()
            }
            _ => Vec::new(),
        };
        let subtype = n
            .subtype
            .as_deref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let cause = match &transaction {
            Some(t) => format!(
                "App Store notification {}{subtype} for transaction {}{}.",
                n.notification_type,
                t.transaction_id.as_deref().unwrap_or("?"),
                revocation_text(t)
            ),
            None => format!("App Store notification {}{subtype}.", n.notification_type),
        };
        let events = match &transaction {
            Some(t) => notification_events(&n, t, renewal.as_ref()),
            None => Vec::new(),
        };
        Ok(Notice {
            store: gateway_core::ids::Store::AppStore,
            id: n.notification_uuid.clone(),
            raw: String::from_utf8_lossy(body).into_owned(),
            cause,
            transaction: transaction.map(Transaction::AppStore),
            events,
            owed,
            transfer: None,
        })
    }

    /// Checks that the app's App Store settings can verify what Apple signs.
    pub fn check_app(&self, app: &App) -> StoreResult<()> {
        self.verifiers.for_app(app).map(drop)
    }

    /// A page of Apple's Notification History, each notification verified as a delivered one is.
    pub async fn poll(
        &self,
        app: &App,
        (start, end): (Timestamp, Timestamp),
        token: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<Page> {
        let env = self.verifiers.for_app(app)?.environment();
        let request = NotificationHistoryRequest {
            start_date: start.millis(),
            end_date: end.millis(),
            notification_type: None,
            notification_subtype: None,
            transaction_id: None,
            only_failures: None,
        };
        let page = self
            .api
            .notification_history(app, env, token, &request)
            .await?;
        let next = next_token(&page);
        let notices = page
            .notification_history
            .iter()
            .map(|item| {
                let body = json!({ "signedPayload": item.signed_payload }).to_string();
                self.verify_notification(app, body.as_bytes(), now)
            })
            .collect();
        Ok(Page { notices, next })
    }

    /// The purchase a consumption answer is about.
    pub fn action_subject(
        &self,
        event_type: &str,
        payload: &serde_json::Value,
    ) -> StoreResult<(String, u32)> {
        let answer = consumption(event_type, payload)?;
        Ok((answer.original_transaction_id, answer.quantity))
    }

    /// Sends the consumption information owed to a CONSUMPTION_REQUEST, from what the gateway knows
    /// now.
    pub async fn perform(
        &self,
        app: &App,
        event_type: &str,
        payload: &serde_json::Value,
        standing: Standing,
    ) -> StoreResult<u16> {
        let answer = consumption(event_type, payload)?;
        let env = match answer.environment.as_str() {
            "Production" => AppleEnvironment::Production,
            _ => AppleEnvironment::Sandbox,
        };
        let request = ConsumptionRequest {
            customer_consented: true,
            sample_content_provided: false,
            delivery_status: if standing.delivered {
                DeliveryStatus::Delivered
            } else {
                DeliveryStatus::UndeliveredOther
            },
            consumption_percentage: standing.consumed,
            refund_preference: None,
        };
        let outcome = self
            .api
            .send_consumption_information(app, env, &answer.transaction_id, &request)
            .await;
        let label = if outcome.is_ok() { "sent" } else { "failed" };
        metrics::counter!("gateway_consumption_answers_total", "outcome" => label).increment(1);
        match outcome {
            Ok(()) => {
                tracing::info!(app = %app.id, transaction = %answer.transaction_id, delivery = ?request.delivery_status, "answered a consumption request");
                Ok(202)
            }
            Err(e) => Err(StoreError::new(
                e.problem,
                e.code,
                format!("Apple did not take the consumption information: {e}"),
            )),
        }
    }
}

/// The answer owed to a CONSUMPTION_REQUEST (notification `uuid`), once per request; `None` for a
/// notification without a transaction id.
fn consumption_answer(uuid: &str, t: &JwsTransaction, env: AppleEnvironment) -> Option<Owed> {
    let transaction_id = t.transaction_id.clone()?;
    let lineage = t
        .original_transaction_id
        .clone()
        .unwrap_or_else(|| transaction_id.clone());
    let answer = ConsumptionAnswer {
        transaction_id,
        original_transaction_id: lineage,
        quantity: t.quantity.unwrap_or(1).max(1),
        environment: env.as_str().into(),
    };
    Some(Owed {
        id: format!("act_apple_consumption_{uuid}"),
        event_type: CONSUMPTION,
        payload: serde_json::to_value(&answer).unwrap_or_default(),
        on_grant: None,
    })
}

fn consumption(event_type: &str, payload: &serde_json::Value) -> StoreResult<ConsumptionAnswer> {
    super::action((event_type, CONSUMPTION), payload, "a consumption answer")
}

/// The token of the page after `page`, if there is one. A page that says there is more but brings
/// nothing is a store paging without end: Apple's pages are never empty when more follow.
fn next_token(page: &NotificationHistoryResponse) -> StoreResult<Option<String>> {
    if !page.has_more {
        return Ok(None);
    }
    match &page.pagination_token {
        Some(t) if !page.notification_history.is_empty() => Ok(Some(t.clone())),
        _ => Err(StoreError::new(
            Problem::Unavailable,
            "store_paging_runaway",
            "The App Store Server API said there is more history but sent none; paging stopped.",
        )),
    }
}

/// How a revoked transaction was revoked, for the timeline: `" (REFUND_PRORATED, 33.333 %)"`.
fn revocation_text(t: &JwsTransaction) -> String {
    let Some(kind) = t
        .revocation_type
        .as_deref()
        .filter(|_| t.revocation_date.is_some())
    else {
        return String::new();
    };
    match t.revocation_percentage {
        Some(p) => format!(" ({kind}, {}.{:03} %)", p / 1000, p % 1000),
        None => format!(" ({kind})"),
    }
}
