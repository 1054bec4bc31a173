//! Actions the gateway owes a store: answers and acknowledgements that must follow a committed
//! decision and must not be lost. Each is an outbox row (`store.*`), written in the transaction that keeps the
//! input asking for it, and performed by the delivery worker through the app's built-in store endpoint:
//! retried with back-off, dead-lettered, listed under `/v1/apps/{app}/deliveries` and retried by hand
//! like any delivery.
//!
//! - `store.app_store.consumption`: the answer to a CONSUMPTION_REQUEST (Send Consumption
//!   Information), computed when it is sent, from the state then.
//!
//! Google Play's acknowledge and consume calls go through the same path.

use gateway_core::{
    AppUserId,
    apple::{AppleEnvironment, models::JwsTransaction},
    ids::Store,
};
use serde::{Deserialize, Serialize};

use super::{ServiceResult, batch::Owed, webhooks::Sent};
use crate::{
    db::{Db, customers},
    model::App,
    stores::apple::api::{AppStoreApi, ConsumptionRequest, DeliveryStatus},
};

/// The outbox type of an owed consumption answer.
pub const APP_STORE_CONSUMPTION: &str = "store.app_store.consumption";

/// What the answer to one consumption request needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConsumptionAnswer {
    transaction_id: String,
    /// The purchase lineage.
    original_transaction_id: String,
    quantity: u32,
    environment: String,
}

/// The answer owed to a CONSUMPTION_REQUEST (notification `uuid`), once per request; `None` for a
/// notification without a transaction id.
pub fn consumption_answer(uuid: &str, t: &JwsTransaction, env: AppleEnvironment) -> Option<Owed> {
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
        event_type: APP_STORE_CONSUMPTION,
        payload: serde_json::to_value(&answer).unwrap_or_default(),
    })
}

/// Performs one owed action; `Sent` says how it went, as for a webhook.
pub async fn perform(db: &Db, api: &AppStoreApi, app_id: &str, body: &str) -> Sent {
    let failed = |error: String| Sent::failed(None, error);
    let Ok(event) = serde_json::from_str::<serde_json::Value>(body) else {
        return failed("the action's body is not JSON".into());
    };
    let Ok(app_id) = app_id.parse() else {
        return failed(format!("{app_id:?} is not an app id"));
    };
    let app = match super::apps::get(db, &app_id).await {
        Ok(a) => a,
        Err(e) => return failed(format!("the app cannot be read: {e}")),
    };
    let Ok(answer) = serde_json::from_value::<ConsumptionAnswer>(event) else {
        return failed("the action is not a consumption answer".into());
    };
    let env = match answer.environment.as_str() {
        "Production" => AppleEnvironment::Production,
        _ => AppleEnvironment::Sandbox,
    };
    let request = match consumption_of(db, &app, &answer).await {
        Ok(r) => r,
        Err(e) => return failed(format!("the purchase cannot be read: {e}")),
    };
    let outcome = api
        .send_consumption_information(&app, env, &answer.transaction_id, &request)
        .await;
    let label = if outcome.is_ok() { "sent" } else { "failed" };
    metrics::counter!("gateway_consumption_answers_total", "outcome" => label).increment(1);
    match outcome {
        Ok(()) => {
            tracing::info!(app = %app.id, transaction = %answer.transaction_id, delivery = ?request.delivery_status, "answered a consumption request");
            Sent::delivered(Some(202))
        }
        Err(e) => failed(format!(
            "Apple did not take the consumption information: {e}"
        )),
    }
}

/// What the gateway knows of the purchase: delivered when a customer holds it and it was granted,
/// and for a consumable how much of its credit is spent.
async fn consumption_of(
    db: &Db,
    app: &App,
    answer: &ConsumptionAnswer,
) -> ServiceResult<ConsumptionRequest> {
    let lineage = &answer.original_transaction_id;
    let owner = customers::purchase_owner(db, &app.id, Store::AppStore, lineage).await?;
    let mut request = ConsumptionRequest {
        customer_consented: true,
        sample_content_provided: false,
        delivery_status: DeliveryStatus::UndeliveredOther,
        consumption_percentage: None,
        refund_preference: None,
    };
    let Some(Ok(customer)) = owner.map(|o| o.parse::<AppUserId>()) else {
        return Ok(request);
    };
    let Some(rec) = customers::recorded(db, &app.id, &customer).await? else {
        return Ok(request);
    };
    let Some(purchase) = rec
        .purchases
        .iter()
        .find(|p| &p.store_transaction_id == lineage)
    else {
        return Ok(request);
    };
    if purchase.status != gateway_core::PurchaseStatus::Pending {
        request.delivery_status = DeliveryStatus::Delivered;
    }
    let product = crate::db::products::get(db, &app.id, &purchase.product_id).await?;
    if let Some(spec) = product.and_then(|p| p.consumable) {
        let credited = spec.amount.saturating_mul(i64::from(answer.quantity));
        let balance = rec.balances.get(&spec.currency).copied().unwrap_or(0);
        // The balance left is counted toward this purchase first, so the figure errs toward less
        // consumed: what even the whole balance no longer covers of this credit was used.
        let left = balance.clamp(0, credited);
        let used = credited - left;
        if credited > 0 {
            request.consumption_percentage = Some(((used * 100_000) / credited) as u32);
        }
    }
    Ok(request)
}
