//! One transaction per decision (DESIGN.md invariant 2). An input's raw record, its new facts, the
//! recorded state, the ledger entries, the audit row and the outbox rows commit together or not at all:
//!
//! 1. lock the customer (the first statement is a write, so writers for one customer queue here);
//! 2. keep the raw input, deduped by its key;
//! 3. add the new facts (a fact seen before is a no-op);
//! 4. derive the new state from all facts, diff it against what was recorded;
//! 5. write the new state, the effects and one audit row; bump the version if anything changed.

use gateway_core::{
    AppId, AppUserId, CustomerState, Effect, EntitlementId, ManualAction, ManualFact, ProductId,
    PurchaseFacts, Timestamp,
    decide::{Catalog, derive, diff},
};
use serde_json::json;
use sqlx::AnyConnection;

use super::{ServiceError, ServiceResult};
use crate::db::{Db, audit, customers, inbound, ledger, outbox, products};

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
    pub effects: Vec<Effect>,
    pub version: i64,
    pub state: CustomerState,
}

/// Decides on `input` for `customer` in one transaction.
pub async fn apply(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
    input: Input,
    now: Timestamp,
) -> ServiceResult<Outcome> {
    let mut tx = db.writer().begin().await?;
    let mut row = customers::lock(&mut tx, app, customer, now).await?;

    let raw = inbound::Raw {
        source: input.source,
        dedupe_key: &input.dedupe_key,
        customer: Some(customer.as_str()),
        body: &input.raw,
    };
    let inserted = inbound::insert(&mut tx, app, raw, now).await?;
    let fresh_input = inserted.is_some();
    let inbound_id = inserted.unwrap_or_default();

    let mut new_facts = Vec::new();
    if fresh_input {
        for fact in &input.manual {
            if customers::insert_manual_fact(&mut tx, app, customer, fact, &input.actor).await? {
                new_facts.push(json!({"manual": fact}));
            }
        }
        for p in &input.purchases {
            let (purchase_id, owner) =
                customers::ensure_purchase(&mut tx, app, customer, p, now).await?;
            if owner != customer.as_str() {
                return Err(ServiceError::conflict(
                    "purchase_of_another_customer",
                    "This store purchase belongs to another customer.",
                ));
            }
            let adopted = customers::adopt_orphans(
                &mut tx,
                app,
                p.store,
                &p.store_transaction_id,
                &purchase_id,
                now,
            )
            .await?;
            if adopted > 0 {
                new_facts
                    .push(json!({"purchase_id": purchase_id, "adopted_earlier_facts": adopted}));
            }
            for e in &p.events {
                if customers::insert_store_event(
                    &mut tx,
                    app,
                    &purchase_id,
                    e,
                    Some(&inbound_id),
                    now,
                )
                .await?
                {
                    new_facts.push(json!({"purchase_id": purchase_id, "event": e}));
                }
            }
        }
    }
    let reevaluate = input.source == "clock";
    if new_facts.is_empty() && !reevaluate {
        // A replay: nothing is written, not even the customer row.
        tx.rollback().await?;
        let state = CustomerState::default();
        return Ok(Outcome {
            duplicate: true,
            effects: Vec::new(),
            version: row.version,
            state,
        });
    }

    let (before, after, effects) = decide_locked(&mut tx, app, customer, now).await?;
    if reevaluate && effects.is_empty() && before == after {
        // Nothing was due after all; move the customer's next check on so no job comes back for it.
        customers::save_row(
            &mut tx,
            app,
            customer,
            &row,
            after.next_change_after(now),
            now,
        )
        .await?;
        tx.commit().await?;
        return Ok(Outcome {
            duplicate: true,
            effects,
            version: row.version,
            state: after,
        });
    }
    let detail = json!({
        "source": input.source,
        "actor": input.actor,
        "inbound_id": inbound_id,
        "facts": new_facts,
    });
    let settlement = Settlement {
        source: input.source,
        cause: &input.cause,
        detail,
    };
    let changed = settle(
        &mut tx,
        app,
        customer,
        &mut row,
        (&before, &after, &effects),
        settlement,
        now,
    )
    .await?;
    tx.commit().await?;
    if changed {
        db.changes().publish(app, customer);
    }
    metrics::counter!("gateway_decisions_total", "source" => input.source).increment(1);
    Ok(Outcome {
        duplicate: false,
        effects,
        version: row.version,
        state: after,
    })
}

/// Why a settled change happened, for the audit row.
struct Settlement<'a> {
    source: &'a str,
    cause: &'a str,
    /// Detail of the input; the effects and the new version are added to it.
    detail: serde_json::Value,
}

/// Writes a decided change for one locked customer, inside the caller's transaction: the new views,
/// the ledger and outbox rows, the audit row (and a `balance.negative` row per negative balance), the
/// new version and the next time the clock alone changes the customer. Returns whether the snapshot
/// changed.
async fn settle(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
    row: &mut customers::CustomerRow,
    (before, after, effects): (&CustomerState, &CustomerState, &[Effect]),
    settlement: Settlement<'_>,
    now: Timestamp,
) -> ServiceResult<bool> {
    customers::save_state(conn, app, customer, before, after, now).await?;
    let changed = before != after || !effects.is_empty();
    if changed {
        row.version += 1;
    }
    record_effects(conn, app, customer, row, effects, now).await?;
    let mut detail = settlement.detail;
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("effects".into(), json!(effects));
        obj.insert("version".into(), json!(row.version));
    }
    let entry = audit::Entry {
        at: now,
        kind: settlement.source,
        cause: settlement.cause,
        detail: &detail,
    };
    audit::append(conn, app, customer, row, entry).await?;
    for e in effects {
        if let Effect::BalanceNegative { currency, balance } = e {
            let detail = json!({"currency": currency, "balance": balance});
            let cause = format!("A clawback left the {currency} balance at {balance}.");
            let entry = audit::Entry {
                at: now,
                kind: "balance.negative",
                cause: &cause,
                detail: &detail,
            };
            audit::append(conn, app, customer, row, entry).await?;
        }
    }
    customers::save_row(conn, app, customer, row, after.next_change_after(now), now).await?;
    Ok(changed)
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
    let mut tx = db.writer().begin().await?;
    // Locks in a fixed order, so two opposite transfers cannot deadlock.
    let (first, second) = if from <= to { (from, to) } else { (to, from) };
    let row_first = customers::lock(&mut tx, app, first, now).await?;
    let row_second = customers::lock(&mut tx, app, second, now).await?;
    let (mut row_from, mut row_to) = if first == from {
        (row_first, row_second)
    } else {
        (row_second, row_first)
    };
    let moved = customers::move_purchase(&mut tx, app, store, lineage, (from, to), now).await?;
    if !moved {
        tx.rollback().await?;
        return Ok(false);
    }
    for (customer, row, cause) in [
        (
            from,
            &mut row_from,
            format!("Store purchase {lineage} moved to another customer who restored it."),
        ),
        (
            to,
            &mut row_to,
            format!("Store purchase {lineage} restored from another customer."),
        ),
    ] {
        let (before, after, effects) = decide_locked(&mut tx, app, customer, now).await?;
        let detail = json!({"source": "transfer", "lineage": lineage, "from": from, "to": to});
        let settlement = Settlement {
            source: "app_store.transfer",
            cause: &cause,
            detail,
        };
        settle(
            &mut tx,
            app,
            customer,
            row,
            (&before, &after, &effects),
            settlement,
            now,
        )
        .await?;
    }
    tx.commit().await?;
    db.changes().publish(app, from);
    db.changes().publish(app, to);
    metrics::counter!("gateway_transfers_total").increment(1);
    Ok(true)
}

/// Derives the customer's state from every recorded fact and diffs it against the recorded state.
async fn decide_locked(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
    now: Timestamp,
) -> ServiceResult<(CustomerState, CustomerState, Vec<Effect>)> {
    let facts = customers::load_facts(conn, app, customer).await?;
    let mut product_ids: Vec<ProductId> = facts
        .purchases
        .iter()
        .map(|p| p.product_id.clone())
        .collect();
    let mut entitlement_ids: Vec<EntitlementId> = Vec::new();
    for m in &facts.manual {
        match &m.action {
            ManualAction::GrantProduct { product_id, .. } => product_ids.push(product_id.clone()),
            ManualAction::GrantEntitlement { entitlement_id, .. }
            | ManualAction::Revoke { entitlement_id } => {
                entitlement_ids.push(entitlement_id.clone());
            }
        }
    }
    let catalog: Catalog =
        products::catalog_subset(conn, app, &product_ids, &entitlement_ids).await?;
    let before = customers::load_state(conn, app, customer).await?;
    let balances = ledger::balances(conn, app, customer).await?;
    let after = derive(&facts, &catalog, now);
    let effects = diff(&before, &after, &balances);
    Ok((before, after, effects))
}

/// Writes ledger entries and outbox rows for `effects`.
async fn record_effects(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
    row: &mut customers::CustomerRow,
    effects: &[Effect],
    now: Timestamp,
) -> ServiceResult<()> {
    for e in effects {
        if let Effect::LedgerEntry {
            source,
            currency,
            amount,
        } = e
        {
            let reason = if *amount > 0 { "credit" } else { "clawback" };
            ledger::record(
                conn,
                app,
                customer,
                currency,
                source,
                *amount,
                Some(reason),
                now,
            )
            .await?;
        }
    }
    for e in effects {
        if let Some(event_type) = e.outbound_event() {
            let payload = outbound_payload(app, customer, event_type, e, now);
            outbox::insert(conn, app, customer, row, event_type, &payload, now).await?;
        }
    }
    Ok(())
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
