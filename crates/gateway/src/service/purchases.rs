//! Submitting a purchase: the app hands over what the store gave it; the gateway verifies it with the
//! store's own means, maps it to the catalog and the customer, and decides. A client's word changes
//! nothing until the store said the same (invariant 1): only verified data becomes facts.

use gateway_core::{
    AppUserId, Timestamp, apple::VerifyError, decide::PurchaseView, ids::Store, text,
};
use serde::Serialize;
use sha2::Digest;

use super::{Context, Kind, ServiceError, ServiceResult, customers, decision};
use crate::db::customers as recorded;
use crate::{
    db::{self, orders, products},
    model::{App, TransferPolicy},
    stores::apple::{self, Verifiers, api::AppStoreApi, receipts as apple_receipts},
};

/// What an app submits.
#[derive(Debug, Clone)]
pub struct Submission {
    pub store: Store,
    /// The order this purchase completes, if the app started one.
    pub order_id: Option<String>,
    /// The product the app believes it sold; checked against what the store signed.
    pub product_id: Option<gateway_core::ProductId>,
    pub signed_transaction: Option<String>,
    pub transaction_id: Option<String>,
    pub receipt_data: Option<String>,
    /// Google Play and Stripe inputs: refused for the App Store.
    pub purchase_token: Option<String>,
    pub checkout_session_id: Option<String>,
}

/// The answer to a submission.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    /// `granted`, `pending` or `rejected`.
    pub status: &'static str,
    /// Why a purchase was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the app should finish the StoreKit transaction now: the decision is recorded durably.
    pub finish_transaction: bool,
    pub purchase: PurchaseView,
    pub customer: customers::Snapshot,
}

impl From<VerifyError> for ServiceError {
    fn from(e: VerifyError) -> Self {
        ServiceError::new(
            Kind::Unprocessable,
            e.code(),
            format!("The signed transaction was refused: {e}."),
        )
    }
}

/// Verifies and decides on a submitted store purchase for `customer`.
/// What the App Store adapter needs.
#[derive(Debug, Clone, Copy)]
pub struct AppleStore<'a> {
    pub verifiers: &'a Verifiers,
    pub api: &'a AppStoreApi,
}

pub async fn submit(
    cx: &Context,
    apple_store: AppleStore<'_>,
    app: &App,
    customer: &AppUserId,
    submission: Submission,
    actor: &str,
    now: Timestamp,
) -> ServiceResult<Submitted> {
    let db = &cx.db;
    if submission.store != Store::AppStore {
        return Err(ServiceError::bad_request(
            "store_not_supported",
            format!(
                "Purchases from {} are not taken yet; `app_store` is.",
                submission.store.as_str()
            ),
        ));
    }
    if submission.purchase_token.is_some() || submission.checkout_session_id.is_some() {
        return Err(ServiceError::bad_request(
            "field_not_for_store",
            "`purchase_token` and `checkout_session_id` belong to Google Play and Stripe, not the App Store.",
        ));
    }
    super::opt_text(
        &text::SIGNED_DATA,
        "invalid_signed_transaction",
        "signed_transaction",
        submission.signed_transaction.as_deref(),
    )?;
    super::opt_text(
        &text::TRANSACTION_ID,
        "invalid_transaction_id",
        "transaction_id",
        submission.transaction_id.as_deref(),
    )?;
    super::opt_text(
        &text::RECEIPT,
        "invalid_receipt_data",
        "receipt_data",
        submission.receipt_data.as_deref(),
    )?;
    if let Some(order_id) = &submission.order_id {
        let order = orders::by_id(db, &app.id, order_id).await?.ok_or_else(|| {
            ServiceError::not_found(
                "order_not_found",
                format!("There is no order {order_id:?} in this app."),
            )
        })?;
        if order.customer_id != *customer {
            return Err(ServiceError::conflict(
                "order_of_another_customer",
                "This order was started by another customer.",
            ));
        }
    }
    let verifier = apple_store.verifiers.for_app(app)?;
    // What the store says: one verified transaction, or every transaction of a legacy receipt.
    let (transactions, raw, what) = match (
        submission.signed_transaction,
        submission.transaction_id,
        submission.receipt_data,
    ) {
        (Some(jws), None, None) => (
            vec![verifier.verify_transaction(&jws, now)?],
            jws,
            "transaction",
        ),
        // Only an id: the gateway asks Apple for the transaction, then verifies it as any other.
        (None, Some(id), None) => {
            let jws = apple_store
                .api
                .transaction_info(app, verifier.environment(), &id)
                .await?;
            (
                vec![verifier.verify_transaction(&jws, now)?],
                jws,
                "transaction",
            )
        }
        (None, None, Some(receipt)) => {
            let verified = apple_receipts::verify(apple_store.api.http(), app, &receipt).await?;
            if verified.environment != verifier.environment() {
                return Err(ServiceError::new(
                    Kind::Unprocessable,
                    "wrong_environment",
                    format!(
                        "The receipt is from the {} environment; this app accepts {}.",
                        verified.environment.as_str(),
                        verifier.environment().as_str()
                    ),
                ));
            }
            (verified.transactions, receipt, "receipt")
        }
        (None, None, None) => {
            return Err(ServiceError::bad_request(
                "signed_transaction_required",
                "Send the StoreKit 2 `signed_transaction` (its jwsRepresentation), its `transaction_id`, or a legacy `receipt_data`.",
            ));
        }
        // One purchase, one proof: a body with two could name two purchases, and picking one would
        // silently drop the other.
        _ => {
            return Err(ServiceError::bad_request(
                "one_proof_only",
                "Send exactly one of `signed_transaction`, `transaction_id` and `receipt_data`.",
            ));
        }
    };

    let mut all_facts = Vec::new();
    let mut lineage: Option<String> = None;
    let mut label = String::new();
    for t in &transactions {
        let sku = t.product_id.clone().unwrap_or_default();
        let Some(product) = products::by_sku(db, &app.id, "app_store", &sku).await? else {
            // A receipt lists every purchase of the app; only those the catalog sells count.
            if what == "receipt" {
                continue;
            }
            return Err(ServiceError::new(
                Kind::Unprocessable,
                "unknown_product",
                format!("No product of this app has the App Store product id {sku:?}."),
            ));
        };
        if lineage.is_none()
            && let Some(expected) = &submission.product_id
            && *expected != product.id
        {
            return Err(ServiceError::conflict(
                "product_mismatch",
                format!(
                    "The store signed a purchase of {}, not of {expected}.",
                    product.id
                ),
            ));
        }
        if let Some(token) = t.app_account_token.as_deref()
            && let Some(order) = orders::by_app_account_token(db, &app.id, token).await?
            && order.customer_id != *customer
        {
            return Err(ServiceError::conflict(
                "transaction_of_another_customer",
                "This transaction's appAccountToken was issued to another customer.",
            ));
        }
        // A lineage another customer holds is refused by the decision itself, under the lineage's
        // lock (`purchase_of_another_customer`): a check here would cost a read and could race.
        let facts = apple::transaction_facts(t, db::new_id("pur"), &product)?;
        if lineage.is_none() {
            lineage = Some(facts.store_transaction_id.clone());
            label = format!("{} ({sku})", t.transaction_id.as_deref().unwrap_or("?"));
        }
        if !all_facts.iter().any(|f: &gateway_core::PurchaseFacts| {
            f.store_transaction_id == facts.store_transaction_id
        }) {
            all_facts.push(facts);
        } else if let Some(f) = all_facts
            .iter_mut()
            .find(|f| f.store_transaction_id == facts.store_transaction_id)
        {
            f.events.extend(facts.events);
        }
    }
    let Some(lineage) = lineage else {
        return Err(ServiceError::new(
            Kind::Unprocessable,
            "unknown_product",
            "No transaction of the receipt is for a product of this app.",
        ));
    };
    let digest = hex::encode(sha2::Sha256::digest(raw.as_bytes()));
    let input = decision::Input {
        source: "app_store.client",
        dedupe_key: format!("{what}:{}", &digest[..32]),
        raw,
        cause: format!("The app submitted App Store {what} {label}."),
        actor: actor.to_owned(),
        manual: Vec::new(),
        request_key: None,
        purchases: all_facts,
        transfer: false,
    };
    decision::apply(cx, &app.id, customer, input, now).await?;

    let snapshot = customers::snapshot(cx, &app.id, customer, now).await?;
    let purchase = snapshot
        .purchases
        .iter()
        .find(|p| p.store == Store::AppStore && p.store_transaction_id == lineage)
        .cloned()
        .ok_or_else(|| {
            ServiceError::Internal(db::DbError::Corrupt(format!(
                "purchase {lineage} was not recorded"
            )))
        })?;
    use gateway_core::PurchaseStatus as S;
    let (status, reason) = match purchase.status {
        S::Active => ("granted", None),
        S::Pending => ("pending", None),
        S::Refunded => (
            "rejected",
            Some("The store refunded this purchase.".to_owned()),
        ),
        S::Revoked => (
            "rejected",
            Some("The store revoked this purchase.".to_owned()),
        ),
        S::Expired => ("rejected", Some("This purchase has expired.".to_owned())),
        S::Rejected => (
            "rejected",
            Some("The gateway refused this purchase.".to_owned()),
        ),
    };
    Ok(Submitted {
        status,
        reason,
        finish_transaction: status != "pending",
        purchase,
        customer: snapshot,
    })
}

/// The most transactions one restore may carry.
pub const MAX_RESTORE: usize = 200;

/// Restores a customer's App Store purchases (StoreKit's `Transaction.currentEntitlements`, or a legacy
/// receipt). A purchase another customer holds moves to this one under the app's `transfer` policy (the
/// stores' own behaviour), or stays where it is under `keep`; one store purchase never gives access to
/// two customers at once.
pub async fn restore(
    cx: &Context,
    apple_store: AppleStore<'_>,
    app: &App,
    customer: &AppUserId,
    (signed_transactions, receipt_data): (Vec<String>, Option<String>),
    actor: &str,
    now: Timestamp,
) -> ServiceResult<customers::Snapshot> {
    let db = &cx.db;
    if signed_transactions.len() > MAX_RESTORE {
        return Err(ServiceError::bad_request(
            "too_many_transactions",
            format!("A restore carries at most {MAX_RESTORE} transactions."),
        ));
    }
    for jws in &signed_transactions {
        super::text(
            &text::SIGNED_DATA,
            "invalid_signed_transaction",
            "signed_transactions",
            jws,
        )?;
    }
    super::opt_text(
        &text::RECEIPT,
        "invalid_receipt_data",
        "receipt_data",
        receipt_data.as_deref(),
    )?;
    if signed_transactions.is_empty() && receipt_data.is_none() {
        return Err(ServiceError::bad_request(
            "nothing_to_restore",
            "Send `signed_transactions` or a `receipt_data` to restore.",
        ));
    }
    let verifier = apple_store.verifiers.for_app(app)?;
    let mut transactions = Vec::new();
    for jws in &signed_transactions {
        transactions.push(verifier.verify_transaction(jws, now)?);
    }
    if let Some(receipt) = &receipt_data {
        let verified = apple_receipts::verify(apple_store.api.http(), app, receipt).await?;
        if verified.environment != verifier.environment() {
            return Err(ServiceError::new(
                Kind::Unprocessable,
                "wrong_environment",
                "The receipt is from another environment than this app's.",
            ));
        }
        transactions.extend(verified.transactions);
    }
    if transactions.is_empty() {
        return Err(ServiceError::new(
            Kind::Unprocessable,
            "nothing_to_restore",
            "The receipt holds no transactions to restore.",
        ));
    }
    let raw = serde_json::json!({"signed_transactions": signed_transactions, "receipt_data": receipt_data}).to_string();
    let mut all_facts: Vec<gateway_core::PurchaseFacts> = Vec::new();
    for t in &transactions {
        let sku = t.product_id.clone().unwrap_or_default();
        let Some(product) = products::by_sku(db, &app.id, "app_store", &sku).await? else {
            continue;
        };
        if let Some(token) = t.app_account_token.as_deref()
            && let Some(order) = orders::by_app_account_token(db, &app.id, token).await?
            && order.customer_id != *customer
        {
            // Bought by another customer of this app, by their own order: not this customer's to restore.
            continue;
        }
        let facts = apple::transaction_facts(t, db::new_id("pur"), &product)?;
        // Under `transfer`, a lineage another customer holds moves in the decision itself, under the
        // lineage's lock; under `keep` it is left out.
        if app.settings.transfer_policy == TransferPolicy::Keep
            && let Some(owner) =
                recorded::purchase_owner(db, &app.id, Store::AppStore, &facts.store_transaction_id)
                    .await?
            && owner != customer.as_str()
        {
            continue;
        }
        match all_facts
            .iter_mut()
            .find(|f| f.store_transaction_id == facts.store_transaction_id)
        {
            Some(f) => f.events.extend(facts.events),
            None => all_facts.push(facts),
        }
    }
    if !all_facts.is_empty() {
        let digest = hex::encode(sha2::Sha256::digest(raw.as_bytes()));
        let input = decision::Input {
            source: "app_store.restore",
            dedupe_key: format!("restore:{customer}:{}", &digest[..32]),
            raw,
            cause: format!(
                "The app restored {} App Store purchase(s).",
                all_facts.len()
            ),
            actor: actor.to_owned(),
            manual: Vec::new(),
            request_key: None,
            purchases: all_facts,
            transfer: app.settings.transfer_policy == TransferPolicy::Transfer,
        };
        decision::apply(cx, &app.id, customer, input, now).await?;
    }
    customers::snapshot(cx, &app.id, customer, now).await
}
