//! One transaction per decision (DESIGN.md invariant 2). An input's raw record, its new facts, the
//! recorded state, the ledger entries, the audit row and the outbox rows commit together or not at
//! all. Decisions are made by the committer ([`super::committer`]), many to a transaction
//! ([`super::batch`]); this module is what callers use.

use gateway_core::{AppId, AppUserId, CustomerState, Effect, ManualFact, PurchaseFacts, Timestamp};
use serde_json::json;

use super::{
    Context, ServiceError, ServiceResult,
    batch::{Done, Work},
};

/// An input to decide on.
#[derive(Debug, Clone)]
pub struct Input {
    /// Where it came from: `api.grant`, `api.revoke`, `app_store`, `clock`, ...
    pub source: &'static str,
    /// Dedupe key of the raw input within its source.
    pub dedupe_key: String,
    /// The raw payload, kept as received.
    pub raw: String,
    /// A sentence for the timeline.
    pub cause: String,
    /// Who acted (an API key id, a store).
    pub actor: String,
    pub manual: Vec<ManualFact>,
    /// The digest of the caller and `Idempotency-Key` that made the manual facts, if any: one key
    /// makes one fact, whatever is sent with it later.
    pub request_key: Option<String>,
    pub purchases: Vec<PurchaseFacts>,
    /// Lineages of `purchases` that another customer holds move to this one, and that customer is
    /// decided in the same transaction (a restore under the `transfer` policy); without it such an
    /// input is refused as `purchase_of_another_customer`.
    pub transfer: bool,
    /// Store actions owed once this decision grants a purchase of `purchases` (a Play
    /// acknowledgement): written in the decision's transaction only when the purchase of the lineage
    /// each names ends active, so a purchase refused by a rule is never acknowledged.
    pub owed: Vec<crate::stores::Owed>,
    /// What the input says beyond its facts: written to the timeline once, and sent on as an
    /// outbound event when it names one.
    pub remark: Option<crate::stores::Remark>,
}

/// What a decision did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Nothing new: the input or every fact in it was seen before.
    pub duplicate: bool,
    /// The customer's snapshot changed (its version grew).
    pub changed: bool,
    pub effects: Vec<Effect>,
    pub version: i64,
    pub state: CustomerState,
    /// The customers who lost a lineage to this decision and whose snapshot changed.
    pub moved_from: Vec<AppUserId>,
}

/// Decides on `input` for `customer`: one decision of a group-committed batch, answered once the
/// batch is durable.
pub async fn apply(
    cx: &Context,
    app: &AppId,
    customer: &AppUserId,
    input: Input,
    now: Timestamp,
) -> ServiceResult<Outcome> {
    let work = Work::Decide {
        app: app.clone(),
        customer: customer.clone(),
        input: Box::new(input),
        now,
    };
    match cx.committer().submit(work).await? {
        Done::Decided { outcome, .. } => Ok(outcome),
        other => Err(ServiceError::Internal(crate::db::DbError::Corrupt(
            format!("a decision for a known customer ended as {other:?}"),
        ))),
    }
}

/// An outbound event body, shaped as Standard Webhooks suggests: `type`, `timestamp`, `data`.
pub fn outbound_payload(
    app: &AppId,
    customer: &AppUserId,
    event_type: &str,
    effect: &Effect,
    now: Timestamp,
) -> serde_json::Value {
    let mut data = serde_json::to_value(effect).unwrap_or_default();
    if let Some(obj) = data.as_object_mut() {
        obj.remove("type");
    }
    event_payload(app, customer, event_type, data, now)
}

/// An outbound event body of `data` (an object), with the app and the customer added to it.
pub fn event_payload(
    app: &AppId,
    customer: &AppUserId,
    event_type: &str,
    mut data: serde_json::Value,
    now: Timestamp,
) -> serde_json::Value {
    if let Some(obj) = data.as_object_mut() {
        obj.insert("app_id".into(), json!(app));
        obj.insert("app_user_id".into(), json!(customer));
    }
    json!({"type": event_type, "timestamp": now, "data": data})
}

/// Re-derives a customer whose recorded state the clock may have overtaken (an `expires_at` passed),
/// writing the expiry effects. Changes nothing when nothing is due.
pub async fn reevaluate(
    cx: &Context,
    app: &AppId,
    customer: &AppUserId,
    now: Timestamp,
) -> ServiceResult<Outcome> {
    let input = Input {
        source: "clock",
        dedupe_key: format!("clock:{}:{}", customer, now.millis()),
        raw: json!({"now": now}).to_string(),
        cause: "Time passed an expiry date.".into(),
        actor: "clock".into(),
        manual: Vec::new(),
        request_key: None,
        purchases: Vec::new(),
        transfer: false,
        remark: None,
        owed: Vec::new(),
    };
    apply(cx, app, customer, input, now).await
}
