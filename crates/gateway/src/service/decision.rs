//! One transaction per decision (DESIGN.md invariant 2). An input's raw record, its new facts, the
//! recorded state, the ledger entries, the audit row and the outbox rows commit together or not at
//! all. Decisions are made by the committer ([`super::committer`]), many to a transaction
//! ([`super::batch`]); this module is what callers use.

use gateway_core::{
    AppId, AppUserId, CustomerState, Effect, ManualFact, PurchaseFacts, Timestamp,
    decide::{derive, diff},
};
use serde_json::json;

use super::{
    ServiceError, ServiceResult,
    batch::{Done, Settlement, Work, Writes, catalog_needs},
};
use crate::db::{Db, batch, customers};

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
    pub purchases: Vec<PurchaseFacts>,
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
}

/// Decides on `input` for `customer`: one decision of a group-committed batch, answered once the
/// batch is durable.
pub async fn apply(
    db: &Db,
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
    match db.committer().submit(work).await? {
        Done::Decided { outcome, .. } => Ok(outcome),
        other => Err(ServiceError::Internal(crate::db::DbError::Corrupt(
            format!("a decision for a known customer ended as {other:?}"),
        ))),
    }
}

/// Moves a store purchase lineage from one customer to another (a restore under the `transfer`
/// policy), re-deciding both in one transaction: the one who loses it gets its revokes (and
/// clawbacks), the one who gains it its grants. Nothing happens when `from` no longer holds it.
pub async fn transfer(
    db: &Db,
    app: &AppId,
    store: gateway_core::ids::Store,
    lineage: &str,
    (from, to): (&AppUserId, &AppUserId),
    now: Timestamp,
) -> ServiceResult<bool> {
    let mut tx = db.begin(crate::db::Begin::Write).await?;
    let keys = [
        (app.to_string(), from.to_string()),
        (app.to_string(), to.to_string()),
    ];
    // Locked sorted, as batches lock, so a transfer and a batch cannot deadlock.
    let mut rows = batch::lock_customers(&mut tx, &keys, now).await?;
    let moved = customers::move_purchase(&mut tx, app, store, lineage, (from, to), now).await?;
    if !moved {
        crate::db::rollback(tx).await?;
        return Ok(false);
    }
    let mut loaded = batch::load(&mut tx, &keys).await?;
    let (products, entitlements) = catalog_needs(loaded.iter());
    let catalogs = batch::catalogs(&mut tx, &products, &entitlements).await?;
    let catalog = catalogs.get(app.as_str()).cloned().unwrap_or_default();
    let mut writes = Writes::default();
    for (customer, cause) in [
        (
            from,
            format!("Store purchase {lineage} moved to another customer who restored it."),
        ),
        (
            to,
            format!("Store purchase {lineage} restored from another customer."),
        ),
    ] {
        let key = (app.to_string(), customer.to_string());
        let l = loaded.remove(&key).unwrap_or_default();
        let mut row = rows.remove(&key).ok_or_else(|| {
            ServiceError::Internal(crate::db::DbError::Corrupt(format!(
                "customer {customer} was not locked"
            )))
        })?;
        let after = derive(&l.facts, &catalog, now);
        let effects = diff(&l.state, &after, &l.balances);
        let detail = json!({"source": "transfer", "lineage": lineage, "from": from, "to": to});
        let settlement = Settlement {
            source: "app_store.transfer",
            cause: &cause,
            detail,
        };
        writes.settle(
            (app, customer),
            &mut row,
            (&l.state, &after, &effects),
            settlement,
            now,
        )?;
    }
    writes.flush(&mut tx, now).await?;
    crate::db::changes::announce(
        &mut tx,
        &[
            (app.to_string(), from.to_string()),
            (app.to_string(), to.to_string()),
        ],
    )
    .await?;
    crate::db::commit(tx).await?;
    db.changes().publish(app, from);
    db.changes().publish(app, to);
    metrics::counter!("gateway_transfers_total").increment(1);
    Ok(true)
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
        obj.insert("app_id".into(), json!(app));
        obj.insert("app_user_id".into(), json!(customer));
    }
    json!({"type": event_type, "timestamp": now, "data": data})
}

/// Re-derives a customer whose recorded state the clock may have overtaken (an `expires_at` passed),
/// writing the expiry effects. Changes nothing when nothing is due.
pub async fn reevaluate(
    db: &Db,
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
        purchases: Vec::new(),
    };
    apply(db, app, customer, input, now).await
}

/// True when the recorded state of a customer may be stale because the clock passed its next change.
pub async fn due(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
    now: Timestamp,
) -> ServiceResult<bool> {
    let next = customers::next_change_at(db, app, customer).await?;
    Ok(next.is_some_and(|t| t <= now))
}
