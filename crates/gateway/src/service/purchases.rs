//! Submitting a purchase: the app hands over what the store gave it; the gateway verifies it with the
//! store's own means, maps it to the catalog and the customer, and decides. A client's word changes
//! nothing until the store said the same (invariant 1): only verified data becomes facts.

use gateway_core::{AppUserId, Timestamp, decide::PurchaseView, ids::Store};
use serde::Serialize;
use sha2::Digest;

use super::{Context, Kind, ServiceError, ServiceResult, customers, decision};
use crate::db::customers as recorded;
use crate::{
    db::{self, orders, products},
    model::{App, TransferPolicy},
    stores::{Proof, RestoreProof},
};

/// What an app submits.
#[derive(Debug, Clone)]
pub struct Submission {
    pub store: Store,
    /// The order this purchase completes, if the app started one.
    pub order_id: Option<String>,
    /// The product the app believes it sold; checked against what the store signed.
    pub product_id: Option<gateway_core::ProductId>,
    /// What the store gave the app.
    pub proof: Proof,
    /// The store's signed statement of the customer's account (StoreKit's AppTransaction), with or
    /// without a purchase: the account is kept as this customer's.
    pub signed_app_transaction: Option<String>,
}

/// The answer to a submission.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    /// `granted`, `pending` or `rejected`; `identified` for an AppTransaction with no purchase.
    pub status: &'static str,
    /// Why a purchase was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the app should finish the StoreKit transaction now: the decision is recorded durably.
    pub finish_transaction: bool,
    /// The purchase submitted; none when only an AppTransaction was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purchase: Option<PurchaseView>,
    /// The Apple Account a submitted AppTransaction is of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_transaction_id: Option<String>,
    pub customer: customers::Snapshot,
}

/// Verifies and decides on a submitted store purchase for `customer`.
pub async fn submit(
    cx: &Context,
    app: &App,
    customer: &AppUserId,
    submission: Submission,
    actor: &str,
    now: Timestamp,
) -> ServiceResult<Submitted> {
    let db = &cx.db;
    let store = submission.store;
    let adapter = cx.adapter(store)?;
    let account = match &submission.signed_app_transaction {
        Some(signed) => Some(adapter.identify(app, signed, now)?),
        None => None,
    };
    if let Some(account) = &account
        && submission.proof.is_empty()
    {
        orders::keep_account_sighting(db, &app.id, customer, (store.as_str(), account), now)
            .await?;
        return Ok(Submitted {
            status: "identified",
            reason: None,
            finish_transaction: false,
            purchase: None,
            app_transaction_id: Some(account.clone()),
            customer: customers::snapshot(cx, &app.id, customer, now).await?,
        });
    }
    adapter.check(&submission.proof)?;
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
    // The product the app names (its id in the catalog, or the store's id for it) tells a store
    // that reads subscriptions apart which to ask for.
    let named = match &submission.product_id {
        Some(id) => products::by_id_or_sku(db, &app.id, store.as_str(), id.as_str()).await?,
        None => None,
    };
    let mut proof = submission.proof;
    proof.subscription = named
        .as_ref()
        .map(|p| p.kind == gateway_core::ProductKind::Subscription);
    proof.store_sku = named.as_ref().and_then(|p| p.store_skus.for_store(store));
    // What the store says: one verified transaction, or every transaction of a listing.
    let proven = adapter.verify_submission(app, proof, now).await?;
    let names = adapter.names();
    let mut all_facts = Vec::new();
    let mut lineage: Option<String> = None;
    let mut label = String::new();
    for t in &proven.transactions {
        let sku = t.sku();
        let Some(product) = products::by_sku(db, &app.id, store.as_str(), sku).await? else {
            // A listing holds every purchase of the app; only those the catalog sells count.
            if proven.listing {
                continue;
            }
            return Err(ServiceError::new(
                Kind::Unprocessable,
                "unknown_product",
                format!(
                    "No product of this app has the {} product id {sku:?}.",
                    names.title
                ),
            ));
        };
        if lineage.is_none()
            && let Some(expected) = &submission.product_id
            && *expected != product.id
            && expected.as_str() != sku
        {
            return Err(ServiceError::conflict(
                "product_mismatch",
                format!(
                    "The store signed a purchase of {}, not of {expected}.",
                    product.id
                ),
            ));
        }
        if let Some(token) = t.order_token()
            && let Some(order) = orders::by_app_account_token(db, &app.id, token).await?
            && order.customer_id != *customer
        {
            return Err(ServiceError::conflict(
                "transaction_of_another_customer",
                format!(
                    "This transaction's {} was issued to another customer.",
                    names.order_token
                ),
            ));
        }
        // A lineage another customer holds is refused by the decision itself, under the lineage's
        // lock (`purchase_of_another_customer`): a check here would cost a read and could race.
        let facts = t.facts(db::new_id("pur"), &product)?;
        // The subscription it replaces ends as it starts, when this customer holds it.
        if let Some(old) = t.replaced_facts(&product)
            && recorded::purchase_owner(db, &app.id, store, &old.store_transaction_id)
                .await?
                .is_some_and(|o| o == customer.as_str())
        {
            all_facts.push(old);
        }
        if lineage.is_none() {
            lineage = Some(facts.store_transaction_id.clone());
            label = format!("{} ({sku})", t.id());
        }
        match all_facts
            .iter_mut()
            .find(|f: &&mut gateway_core::PurchaseFacts| {
                f.store_transaction_id == facts.store_transaction_id
            }) {
            Some(f) => f.merge(facts),
            None => all_facts.push(facts),
        }
    }
    let Some(lineage) = lineage else {
        return Err(ServiceError::new(
            Kind::Unprocessable,
            "unknown_product",
            "No transaction of the receipt is for a product of this app.",
        ));
    };
    // The account an AppTransaction names, else the one the transactions carry.
    let account = account.or_else(|| {
        proven
            .transactions
            .iter()
            .find_map(|t| t.account().map(str::to_owned))
    });
    let (raw, what, owed) = (proven.raw, proven.what, proven.owed);
    let digest = hex::encode(sha2::Sha256::digest(raw.as_bytes()));
    let input = decision::Input {
        source: names.client,
        dedupe_key: format!("{what}:{}", &digest[..32]),
        raw,
        cause: format!("The app submitted {} {what} {label}.", names.title),
        actor: actor.to_owned(),
        manual: Vec::new(),
        request_key: None,
        purchases: all_facts,
        transfer: false,
        remark: None,
        owed,
    };
    decision::apply(cx, &app.id, customer, input, now).await?;
    // Beside a purchase, the account is kept once the purchase was taken.
    if let Some(account) = &account {
        orders::keep_account_sighting(db, &app.id, customer, (store.as_str(), account), now)
            .await?;
    }

    let snapshot = customers::snapshot(cx, &app.id, customer, now).await?;
    let purchase = snapshot
        .purchases
        .iter()
        .find(|p| p.store == store && p.store_transaction_id == lineage)
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
        purchase: Some(purchase),
        app_transaction_id: account,
        customer: snapshot,
    })
}

/// Restores a customer's purchases of `store` (for the App Store, StoreKit's
/// `Transaction.currentEntitlements` or a legacy receipt). A purchase another customer holds moves to
/// this one under the app's `transfer` policy (the stores' own behaviour), or stays where it is under
/// `keep`; one store purchase never gives access to two customers at once.
pub async fn restore(
    cx: &Context,
    app: &App,
    customer: &AppUserId,
    (store, proof): (Store, RestoreProof),
    actor: &str,
    now: Timestamp,
) -> ServiceResult<customers::Snapshot> {
    let db = &cx.db;
    let adapter = cx.adapter(store)?;
    let transactions = adapter.verify_restore(app, &proof, now).await?;
    let names = adapter.names();
    let mut raw = serde_json::json!({"signed_transactions": proof.signed_transactions, "receipt_data": proof.receipt_data});
    if !proof.purchase_tokens.is_empty() {
        raw["purchase_tokens"] = serde_json::json!(proof.purchase_tokens);
    }
    let raw = raw.to_string();
    let mut all_facts: Vec<gateway_core::PurchaseFacts> = Vec::new();
    for t in &transactions {
        let Some(product) = products::by_sku(db, &app.id, store.as_str(), t.sku()).await? else {
            continue;
        };
        if let Some(token) = t.order_token()
            && let Some(order) = orders::by_app_account_token(db, &app.id, token).await?
            && order.customer_id != *customer
        {
            // Bought by another customer of this app, by their own order: not this customer's to restore.
            continue;
        }
        let facts = t.facts(db::new_id("pur"), &product)?;
        // Under `transfer`, a lineage another customer holds moves in the decision itself, under the
        // lineage's lock; under `keep` it is left out.
        if app.settings.transfer_policy == TransferPolicy::Keep
            && let Some(owner) =
                recorded::purchase_owner(db, &app.id, store, &facts.store_transaction_id).await?
            && owner != customer.as_str()
        {
            continue;
        }
        match all_facts
            .iter_mut()
            .find(|f| f.store_transaction_id == facts.store_transaction_id)
        {
            Some(f) => f.merge(facts),
            None => all_facts.push(facts),
        }
    }
    if !all_facts.is_empty() {
        let digest = hex::encode(sha2::Sha256::digest(raw.as_bytes()));
        let input = decision::Input {
            source: names.restore,
            dedupe_key: format!("restore:{customer}:{}", &digest[..32]),
            raw,
            cause: format!(
                "The app restored {} {} purchase(s).",
                all_facts.len(),
                names.title
            ),
            actor: actor.to_owned(),
            manual: Vec::new(),
            request_key: None,
            purchases: all_facts,
            transfer: app.settings.transfer_policy == TransferPolicy::Transfer,
            remark: None,
            owed: Vec::new(),
        };
        decision::apply(cx, &app.id, customer, input, now).await?;
        // The device's Apple Account, as its restored transactions name it.
        if let Some(account) = transactions.iter().find_map(|t| t.account()) {
            orders::keep_account_sighting(db, &app.id, customer, (store.as_str(), account), now)
                .await?;
        }
    }
    customers::snapshot(cx, &app.id, customer, now).await
}

/// What an operator asks of a refund.
#[derive(Debug, Clone)]
pub struct RefundAsk {
    /// Why; kept in the customer's audit log.
    pub reason: String,
    /// Refund only what is left of a subscription's paid period.
    pub prorated: bool,
}

/// The answer to a refund.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefundDone {
    pub purchase: PurchaseView,
    pub customer: customers::Snapshot,
}

/// Asks a purchase's store to refund it and end its access, then decides on what the store says
/// afterwards, with the refund as a fact of the operator's. Nothing changes if the store refuses;
/// if the decision fails after the store refunded, the store's own notification of it still comes.
pub async fn refund(
    cx: &Context,
    app: &App,
    purchase_id: &str,
    ask: RefundAsk,
    actor: &str,
    now: Timestamp,
) -> ServiceResult<RefundDone> {
    let reason = super::reason(&ask.reason)?;
    let db = &cx.db;
    let not_found = || {
        ServiceError::not_found(
            "purchase_not_found",
            format!("There is no purchase {purchase_id:?} in this app."),
        )
    };
    let row = recorded::purchase_by_id(db, &app.id, purchase_id)
        .await?
        .ok_or_else(not_found)?;
    let customer: AppUserId = row.customer_id.parse().map_err(|_| not_found())?;
    let store = Store::parse(&row.store).ok_or_else(not_found)?;
    let adapter = cx.adapter(store)?;
    let snapshot = customers::snapshot(cx, &app.id, &customer, now).await?;
    let current = snapshot
        .purchases
        .iter()
        .find(|p| p.id == purchase_id)
        .ok_or_else(not_found)?;
    use gateway_core::PurchaseStatus as S;
    if matches!(current.status, S::Refunded | S::Revoked | S::Rejected) {
        return Err(ServiceError::conflict(
            "already_refunded",
            format!(
                "Purchase {purchase_id} is {} already; there is nothing to refund.",
                current.status.as_str()
            ),
        ));
    }
    let product = products::get(db, &app.id, &current.product_id)
        .await?
        .ok_or_else(|| {
            ServiceError::conflict(
                "product_not_found",
                format!(
                    "The catalog no longer has product {}; the store cannot be asked about it.",
                    current.product_id
                ),
            )
        })?;
    let sku = product.store_skus.for_store(store);
    let order = crate::stores::RefundOrder {
        lineage: &row.store_transaction_id,
        sku: sku.as_deref(),
        subscription: product.kind == gateway_core::ProductKind::Subscription,
        prorated: ask.prorated,
    };
    let transaction = adapter.refund(app, order, now).await?;
    let names = adapter.names();
    let mut facts = transaction.facts(purchase_id.to_owned(), &product)?;
    facts.events.push(gateway_core::StoreEvent {
        dedupe_key: format!("refund:{purchase_id}"),
        occurred_at: now,
        kind: gateway_core::EventKind::Refunded,
    });
    let input = decision::Input {
        source: names.refund,
        dedupe_key: format!("refund:{purchase_id}"),
        raw: serde_json::json!({"purchase_id": purchase_id, "reason": reason,
            "prorated": ask.prorated, "store_says": transaction.to_json().unwrap_or_default()})
        .to_string(),
        cause: format!(
            "Refunded at {} {} by an operator: {reason}",
            names.title,
            transaction.id()
        ),
        actor: actor.to_owned(),
        manual: Vec::new(),
        request_key: None,
        purchases: vec![facts],
        transfer: false,
        remark: None,
        owed: Vec::new(),
    };
    decision::apply(cx, &app.id, &customer, input, now).await?;
    let customer = customers::snapshot(cx, &app.id, &customer, now).await?;
    let purchase = customer
        .purchases
        .iter()
        .find(|p| p.id == purchase_id)
        .cloned()
        .ok_or_else(not_found)?;
    Ok(RefundDone { purchase, customer })
}
