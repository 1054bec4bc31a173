//! The App Store adapter ([`AppStore`]): the verbs of every store, done with Apple's means.
//!
//! - [`verifier`]: verifiers of Apple's signed data per app (pinned roots, bundle id, environment),
//!   and a verified transaction turned into facts (the mapping itself is
//!   `gateway_core::apple::facts`);
//! - [`api`]: the App Store Server API client (transaction info and history, subscription statuses,
//!   refund and notification history, consumption information), with its bearer token and retries;
//! - [`receipts`]: legacy `verifyReceipt` receipts.

pub mod api;
pub mod offers;
pub mod receipts;
pub mod verifier;

use gateway_core::{
    Timestamp,
    apple::{
        AppleEnvironment, VerifyError,
        facts::notification_events,
        models::{JwsTransaction, NotificationPayload},
    },
    text,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use verifier::{Verifiers, transaction_facts};

use self::api::{
    AppStoreApi, ConsumptionRequest, DeliveryStatus, NotificationHistoryRequest,
    NotificationHistoryResponse, RefundPreference,
};
use super::{
    Names, Notice, Owed, Page, Problem, Proof, Proven, Remark, RestoreProof, Standing, StoreError,
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

/// The outbox type of an owed Finish Transaction.
pub const FINISH: &str = "store.app_store.finish";

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

/// The transaction an owed action (a consumption answer, a finish) is about.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ActionSubject {
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

    /// The Apple Account a signed AppTransaction is of: its `appTransactionId`.
    pub fn identify(&self, app: &App, signed: &str, now: Timestamp) -> StoreResult<String> {
        super::text(
            &text::SIGNED_DATA,
            "invalid_signed_app_transaction",
            "signed_app_transaction",
            Some(signed),
        )?;
        let t = self
            .verifiers
            .for_app(app)?
            .verify_app_transaction(signed, now)
            .map_err(refused)?;
        t.app_transaction_id.ok_or_else(|| {
            StoreError::new(
                Problem::Refused,
                "no_app_transaction_id",
                "The AppTransaction has no `appTransactionId` (StoreKit adds it from iOS 18.4).",
            )
        })
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
        let finishes = finishes(app);
        let proven = |transactions: Vec<Transaction>, raw, what| Proven {
            owed: if finishes && what == "transaction" {
                transactions
                    .iter()
                    .filter_map(|t| match t {
                        Transaction::AppStore(t) => finish_owed(t, verifier.environment()),
                        _ => None,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            transactions,
            raw,
            what,
            listing: what == "receipt",
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
        let mut owed: Vec<_> = match &transaction {
            Some(t) if answers && n.notification_type == "CONSUMPTION_REQUEST" => {
                consumption_answer(&n.notification_uuid, t, verifier.environment())
                    .into_iter()
                    .collect()
            }
            _ => Vec::new(),
        };
        // A transaction the app may never have finished (it stopped before submitting) is finished
        // once a decision grants it.
        if finishes(app)
            && let Some(t) = &transaction
            && t.revocation_date.is_none()
        {
            owed.extend(finish_owed(t, verifier.environment()));
        }
        let subtype = n
            .subtype
            .as_deref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let cause = match &transaction {
            Some(t) => format!(
                "App Store notification {}{subtype} for transaction {}{}{}.",
                n.notification_type,
                t.transaction_id.as_deref().unwrap_or("?"),
                revocation_text(t),
                plan_text(t)
            ),
            None => match &n.external_purchase_token {
                Some(token) => {
                    let text = external_token_text(token);
                    tracing::info!(app = %app.id, notification = %n.notification_uuid, "App Store {}{subtype}{text}", n.notification_type);
                    format!(
                        "App Store notification {}{subtype}{text}.",
                        n.notification_type
                    )
                }
                None => format!("App Store notification {}{subtype}.", n.notification_type),
            },
        };
        let events = match &transaction {
            Some(t) => notification_events(&n, t, renewal.as_ref()),
            None => Vec::new(),
        };
        // Consent withdrawn names the Apple Account (its app transaction), not a purchase.
        let account = match n
            .app_data
            .as_ref()
            .and_then(|a| a.signed_app_transaction_info.as_deref())
        {
            Some(jws) => {
                verifier
                    .verify_app_transaction(jws, now)
                    .map_err(refused)?
                    .app_transaction_id
            }
            None => None,
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
            remark: remark(&n, account.as_deref()),
            account,
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
        let subject = subject(event_type, payload)?;
        Ok((subject.original_transaction_id, subject.quantity))
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
        let answer = subject(event_type, payload)?;
        let env = match answer.environment.as_str() {
            "Production" => AppleEnvironment::Production,
            _ => AppleEnvironment::Sandbox,
        };
        if event_type == FINISH {
            self.api
                .finish_transaction(app, env, &answer.transaction_id)
                .await?;
            tracing::info!(app = %app.id, transaction = %answer.transaction_id, "finished an App Store transaction");
            return Ok(200);
        }
        let request = ConsumptionRequest {
            customer_consented: true,
            sample_content_provided: false,
            delivery_status: match (standing.delivered, standing.outage) {
                (true, _) => DeliveryStatus::Delivered,
                (false, true) => DeliveryStatus::UndeliveredServerOutage,
                (false, false) => DeliveryStatus::UndeliveredOther,
            },
            // Apple works out an auto-renewable subscription's consumption itself.
            consumption_percentage: standing.consumed.filter(|_| !standing.subscription),
            refund_preference: None,
        };
        if let Err(rule) = v2_rules(&request, standing.subscription) {
            return Err(StoreError::new(
                Problem::Malformed,
                "consumption_answer_refused",
                format!("The consumption answer breaks Apple's rules and was not sent: {rule}."),
            ));
        }
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
    let answer = ActionSubject::of(t, env)?;
    Some(Owed {
        id: format!("act_apple_consumption_{uuid}"),
        event_type: CONSUMPTION,
        payload: serde_json::to_value(&answer).unwrap_or_default(),
        on_grant: None,
    })
}

impl ActionSubject {
    /// The subject for transaction `t`; `None` when it has no transaction id.
    fn of(t: &JwsTransaction, env: AppleEnvironment) -> Option<Self> {
        let transaction_id = t.transaction_id.clone()?;
        Some(ActionSubject {
            original_transaction_id: t
                .original_transaction_id
                .clone()
                .unwrap_or_else(|| transaction_id.clone()),
            transaction_id,
            quantity: t.quantity.unwrap_or(1).max(1),
            environment: env.as_str().into(),
        })
    }
}

/// Apple's rules for a v2 consumption answer (Send Consumption Information): a consumption answer
/// that breaks one is never sent. `deliveryStatus` is always there by its type.
fn v2_rules(r: &ConsumptionRequest, subscription: bool) -> Result<(), &'static str> {
    if !r.customer_consented {
        return Err("customerConsented must be true");
    }
    if subscription && r.consumption_percentage.is_some() {
        return Err("an auto-renewable subscription takes no consumptionPercentage");
    }
    if r.consumption_percentage.is_some_and(|p| p > 100_000) {
        return Err("consumptionPercentage is at most 100000");
    }
    if r.refund_preference == Some(RefundPreference::GrantProrated)
        && r.consumption_percentage.is_none_or(|p| p == 0)
    {
        return Err("GRANT_PRORATED needs a consumptionPercentage above 0");
    }
    Ok(())
}

/// Whether the app has the gateway finish its App Store transactions.
fn finishes(app: &App) -> bool {
    app.settings
        .app_store
        .as_ref()
        .is_some_and(|c| c.finish_transactions)
}

/// Finish Transaction for `t`, owed once a decision grants its lineage; one per transaction.
fn finish_owed(t: &JwsTransaction, env: AppleEnvironment) -> Option<Owed> {
    let subject = ActionSubject::of(t, env)?;
    Some(Owed {
        id: format!("act_apple_finish_{}", subject.transaction_id),
        event_type: FINISH,
        payload: serde_json::to_value(&subject).unwrap_or_default(),
        on_grant: Some(subject.original_transaction_id.clone()),
    })
}

/// The transaction an owed App Store action is about.
fn subject(event_type: &str, payload: &serde_json::Value) -> StoreResult<ActionSubject> {
    let expected = if event_type == FINISH {
        FINISH
    } else {
        CONSUMPTION
    };
    super::action((event_type, expected), payload, "an App Store action")
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

/// A commitment plan's billing, for the timeline: `" (MONTHLY plan, period 3 of 12)"`.
fn plan_text(t: &JwsTransaction) -> String {
    let Some(plan) = t.billing_plan_type.as_deref() else {
        return String::new();
    };
    let info = t.commitment_info.as_ref();
    let n = |k: &str| info.and_then(|i| i[k].as_i64());
    match (n("billingPeriodNumber"), n("totalBillingPeriods")) {
        (Some(p), Some(total)) => format!(" ({plan} plan, period {p} of {total})"),
        _ => format!(" ({plan} plan)"),
    }
}

/// An external purchase token as a cause names it: its id, type and expiry.
fn external_token_text(t: &gateway_core::apple::models::ExternalPurchaseToken) -> String {
    let id = t.external_purchase_id.as_deref().unwrap_or("?");
    let mut about = Vec::new();
    if let Some(kind) = &t.token_type {
        about.push(format!("{kind} token"));
    }
    if let Some(until) = t.token_expiration_date {
        about.push(format!(
            "expires {}",
            Timestamp::from_millis(until).to_rfc3339()
        ));
    }
    match about.is_empty() {
        true => format!(" for external purchase {id}"),
        false => format!(" for external purchase {id} ({})", about.join(", ")),
    }
}

/// What an App Store notification says beyond its facts, for the timeline: the customer's own
/// choices and Apple's answers that change no access now (a downgrade for the next period, an offer
/// redeemed, a price increase, a refund request and Apple's refusal of one), and consent withdrawn,
/// which the operator must act on (`customer.consent_rescinded`).
fn remark(n: &NotificationPayload, account: Option<&str>) -> Option<Remark> {
    let what = match &n.subtype {
        Some(s) => format!("{}/{s}", n.notification_type),
        None => n.notification_type.clone(),
    };
    let event = match n.notification_type.as_str() {
        "RESCIND_CONSENT" => Some(super::CONSENT_RESCINDED.to_owned()),
        "DID_CHANGE_RENEWAL_PREF"
        | "OFFER_REDEEMED"
        | "PRICE_INCREASE"
        | "REFUND_DECLINED"
        | "CONSUMPTION_REQUEST"
        | "EXTERNAL_PURCHASE_TOKEN" => None,
        _ => return None,
    };
    let detail = match &event {
        Some(_) => json!({"store": "app_store", "notification_uuid": n.notification_uuid,
            "app_transaction_id": account}),
        None => serde_json::Value::Null,
    };
    Some(Remark {
        what,
        event,
        detail,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumption_answer_that_breaks_apples_rules_is_refused() {
        let answer =
            |share: Option<u32>, preference: Option<RefundPreference>| ConsumptionRequest {
                customer_consented: true,
                sample_content_provided: false,
                delivery_status: DeliveryStatus::Delivered,
                consumption_percentage: share,
                refund_preference: preference,
            };
        assert!(v2_rules(&answer(Some(75_000), None), false).is_ok());
        assert!(v2_rules(&answer(None, None), true).is_ok());
        assert!(v2_rules(&answer(Some(75_000), None), true).is_err());
        assert!(v2_rules(&answer(Some(100_001), None), false).is_err());
        let prorated = Some(RefundPreference::GrantProrated);
        assert!(v2_rules(&answer(Some(1), prorated), false).is_ok());
        assert!(v2_rules(&answer(Some(0), prorated), false).is_err());
        assert!(v2_rules(&answer(None, prorated), false).is_err());
        let mut unconsented = answer(None, None);
        unconsented.customer_consented = false;
        assert!(v2_rules(&unconsented, false).is_err());
    }
}
