//! Actions the gateway owes a store: answers and acknowledgements that must follow a committed
//! decision and must not be lost. Each is an outbox row (`store.<store>.<verb>`), written in the
//! transaction that keeps the input asking for it, and performed by the delivery worker through the
//! app's built-in store endpoint: retried with back-off, dead-lettered, listed under
//! `/v1/apps/{app}/deliveries` and retried by hand like any delivery.
//!
//! The store's adapter reads its own action and performs it; what the gateway knows of the purchase
//! then (its [`Standing`]) is read here, when the action is sent, from the state then.
//!
//! - `store.app_store.consumption`: the answer to a CONSUMPTION_REQUEST (Send Consumption
//!   Information).
//! - `store.app_store.finish`: Finish Transaction, once a transaction's grant committed.

use gateway_core::{AppUserId, ids::Store};

use super::{ServiceResult, webhooks::Sent};
use crate::{
    db::{Db, customers},
    model::App,
    stores::{Adapter, Standing, Stores},
};

/// Performs one owed action of type `event_type`; `Sent` says how it went, as for a webhook.
pub async fn perform(
    db: &Db,
    stores: &Stores,
    app_id: &str,
    (event_type, body): (&str, &str),
) -> Sent {
    let failed = |error: String| Sent::failed(None, error);
    let Ok(action) = serde_json::from_str::<serde_json::Value>(body) else {
        return failed("the action's body is not JSON".into());
    };
    let Ok(app_id) = app_id.parse() else {
        return failed(format!("{app_id:?} is not an app id"));
    };
    let app = match super::apps::get(db, &app_id).await {
        Ok(a) => a,
        Err(e) => return failed(format!("the app cannot be read: {e}")),
    };
    let Some(adapter) = Adapter::of_action(stores, event_type) else {
        return failed(format!("no store performs {event_type:?}"));
    };
    let (lineage, quantity) = match adapter.action_subject(event_type, &action) {
        Ok(s) => s,
        Err(e) => return failed(e.message),
    };
    let standing = match standing(db, &app, adapter.store(), (&lineage, quantity)).await {
        Ok(s) => s,
        Err(e) => return failed(format!("the purchase cannot be read: {e}")),
    };
    match adapter.perform(&app, event_type, &action, standing).await {
        Ok(status) => Sent::delivered(Some(status)),
        Err(e) => failed(e.message),
    }
}

/// What the gateway knows of the purchase: delivered when a customer holds it and it was granted,
/// and for a consumable how much of its credit (`quantity` units) is spent.
async fn standing(
    db: &Db,
    app: &App,
    store: Store,
    (lineage, quantity): (&str, u32),
) -> ServiceResult<Standing> {
    let mut standing = Standing::default();
    let owner = customers::purchase_owner(db, &app.id, store, lineage).await?;
    let Some(Ok(customer)) = owner.map(|o| o.parse::<AppUserId>()) else {
        return Ok(standing);
    };
    let Some(rec) = customers::recorded(db, &app.id, &customer).await? else {
        return Ok(standing);
    };
    let Some(purchase) = rec
        .purchases
        .iter()
        .find(|p| p.store == store && p.store_transaction_id == lineage)
    else {
        return Ok(standing);
    };
    standing.delivered = purchase.status != gateway_core::PurchaseStatus::Pending;
    let product = crate::db::products::get(db, &app.id, &purchase.product_id).await?;
    if standing.delivered
        && let Some(p) = &product
    {
        (standing.delivered, standing.outage) = enrolled(db, app, &customer, p).await?;
    }
    standing.consumable = product.as_ref().is_some_and(|p| p.consumable.is_some());
    standing.subscription = product
        .as_ref()
        .is_some_and(|p| p.kind == gateway_core::ProductKind::Subscription);
    if let Some(spec) = product.and_then(|p| p.consumable) {
        let credited = spec.amount.saturating_mul(i64::from(quantity));
        let balance = rec.balances.get(&spec.currency).copied().unwrap_or(0);
        // The balance left is counted toward this purchase first, so the figure errs toward less
        // consumed: what even the whole balance no longer covers of this credit was used.
        let left = balance.clamp(0, credited);
        let used = credited - left;
        if credited > 0 {
            standing.consumed = Some(((used * 100_000) / credited) as u32);
        }
    }
    Ok(standing)
}

/// How many of a customer's latest LMS answers are read to find each course's.
const LMS_ANSWERS_READ: i64 = 200;

/// Whether the LMS enrolled the learner in every course `product` sells, when the app sells
/// courses through an active Open edX connector: each course's latest answer in the timeline is a
/// successful enrollment. Else (not yet enrolled, or refused) not delivered, and an outage when the
/// LMS's last answer was a 5xx or none. A product that sells no course, or an app with no
/// connector, counts as delivered.
async fn enrolled(
    db: &Db,
    app: &App,
    customer: &AppUserId,
    product: &gateway_core::Product,
) -> ServiceResult<(bool, bool)> {
    let courses: Vec<&str> = product
        .entitlements
        .iter()
        .filter_map(|e| e.attributes.get("course_id").and_then(|c| c.as_str()))
        .collect();
    if courses.is_empty() {
        return Ok((true, false));
    }
    let connected = crate::db::endpoints::list(db, &app.id)
        .await?
        .iter()
        .any(|e| e.active && e.kind == "openedx");
    if !connected {
        return Ok((true, false));
    }
    let answers = crate::db::audit::latest_of_kinds(
        db,
        &app.id,
        customer,
        [super::openedx::LMS_TOOK, super::openedx::LMS_REFUSED],
        LMS_ANSWERS_READ,
    )
    .await?;
    let mut outage = false;
    for course in courses {
        let latest = answers
            .iter()
            .find(|a| a.detail["course_id"].as_str() == Some(course));
        match latest {
            // A move to audit is what a revocation does under Upgrade-Lite: not this purchase's.
            Some(a)
                if a.detail["ok"] == true
                    && a.detail["is_active"] == true
                    && a.detail["mode"] != "audit" => {}
            Some(a) => {
                outage |= a.detail["http_status"].as_i64().is_none_or(|s| s >= 500);
                return Ok((false, outage));
            }
            None => return Ok((false, false)),
        }
    }
    Ok((true, false))
}
