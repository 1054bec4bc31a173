//! Many decisions in one transaction (group commit). Each decision is still the one of DESIGN.md
//! invariant 2 (its raw input, facts, views, ledger legs, audit row and outbox rows commit together),
//! but a batch of them shares the statements and the commit:
//!
//! 1. resolve what notifications name: their products, and who holds their lineages;
//! 2. keep every raw input (a replay is found here, by its dedupe key);
//! 3. lock the customers to decide, sorted, so overlapping batches of two instances cannot deadlock;
//! 4. add the new facts: manual facts, purchase lineages, store events (and adopt orphan facts);
//! 5. read every fact and recorded state of those customers, and the catalog they need;
//! 6. derive and diff each customer (the pure core), then write all the changes, set-wise.
//!
//! Two inputs for one customer or one lineage never share a batch; the committer keeps the second
//! for the next one. A step that finds a conflict it cannot settle alone (a lineage another
//! transaction created meanwhile) fails the batch, and the committer runs its inputs one by one.

use std::collections::{BTreeMap, HashMap, HashSet};

use gateway_core::{
    AppId, AppUserId, CustomerState, Effect, ManualAction, PurchaseFacts, Settled, StoreEvent,
    Timestamp,
    audit::{AuditContent, chain_hash},
    decide::{derive, diff},
    ids::Store,
    ledger::legs,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::AnyConnection;

use super::{
    ServiceError, ServiceResult,
    decision::{Input, Outcome, event_payload, outbound_payload},
};
use crate::{
    db::{
        self,
        batch::{self, CustomerKey, EventRow, InboundRow, LineageKey, Orphan, Val},
        customers::CustomerRow,
    },
    stores::{Owed, Remark, Transaction},
};

/// One input for the committer.
#[derive(Debug, Clone)]
pub enum Work {
    /// An input for a known customer.
    Decide {
        app: AppId,
        customer: AppUserId,
        input: Box<Input>,
        now: Timestamp,
    },
    /// A verified store notification about a transaction; its customer is resolved in the batch.
    Notification(Box<Notification>),
    /// A raw input with nothing to decide (a TEST notification, say): kept, deduped.
    Record(Box<Recorded>),
}

/// A raw input to keep without a decision.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub app: AppId,
    pub source: &'static str,
    pub dedupe_key: String,
    pub raw: String,
    pub now: Timestamp,
}

/// What a verified store notification brings.
#[derive(Debug, Clone)]
pub struct Notification {
    pub app: AppId,
    /// The store's notification source (`app_store.notification`), the dedupe namespace of `id`.
    pub source: &'static str,
    /// The store's id of the notification.
    pub id: String,
    pub raw: String,
    pub cause: String,
    pub transaction: Transaction,
    /// Facts the notification states beyond its transaction's own fields.
    pub events: Vec<StoreEvent>,
    /// Store actions the notification asks of the gateway (the answer to a consumption request):
    /// outbox rows written in the transaction that keeps the notification, so no crash parts them.
    pub owed: Vec<Owed>,
    /// What it says beyond its facts, for the timeline and the operator.
    pub remark: Option<Remark>,
    /// Set when this is a notification held for an unmapped SKU, decided again: the inbound row that
    /// keeps it (no new one is written).
    pub held_as: Option<String>,
    pub now: Timestamp,
}

/// What is kept of a verified notification held for a SKU the catalog did not map: enough to decide
/// it once the SKU is mapped, without verifying it again (its raw body stays in `inbound`). The
/// transaction is kept as its store wrote it, and read back by the store its row names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub uuid: String,
    pub cause: String,
    pub transaction: serde_json::Value,
    pub events: Vec<StoreEvent>,
    /// The store actions owed once it grants (an acknowledgement, a finish).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owed: Vec<HeldAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remark: Option<Remark>,
}

/// A store action owed on a grant, as a held notification keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldAction {
    pub id: String,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub on_grant: String,
}

impl Notification {
    /// The notification as held for an unmapped SKU.
    fn held(&self) -> ServiceResult<Held> {
        Ok(Held {
            uuid: self.id.clone(),
            cause: self.cause.clone(),
            transaction: self.transaction.to_json().map_err(db::DbError::from)?,
            events: self.events.clone(),
            owed: self
                .owed
                .iter()
                .filter_map(|o| {
                    Some(HeldAction {
                        id: o.id.clone(),
                        event_type: o.event_type.to_owned(),
                        payload: o.payload.clone(),
                        on_grant: o.on_grant.clone()?,
                    })
                })
                .collect(),
            remark: self.remark.clone(),
        })
    }

    /// A held notification of `store`, to decide again now that its SKU is mapped.
    pub fn from_held(
        app: AppId,
        (store, source): (Store, &'static str),
        inbound_id: String,
        held: Held,
        now: Timestamp,
    ) -> ServiceResult<Self> {
        Ok(Notification {
            app,
            source,
            id: held.uuid,
            raw: String::new(),
            cause: held.cause,
            transaction: Transaction::from_json(store, held.transaction)
                .map_err(db::DbError::from)?,
            events: held.events,
            // Each as the stores name it; one of a type no store performs any more is dropped.
            owed: held
                .owed
                .into_iter()
                .filter_map(|o| {
                    let event_type = crate::stores::ACTION_TYPES
                        .into_iter()
                        .find(|t| *t == o.event_type)?;
                    Some(Owed {
                        id: o.id,
                        event_type,
                        payload: o.payload,
                        on_grant: Some(o.on_grant),
                    })
                })
                .collect(),
            remark: held.remark,
            held_as: Some(inbound_id),
            now,
        })
    }

    fn lineage(&self) -> String {
        self.transaction.lineage()
    }
}

impl Work {
    /// What this input must not share a batch with: its customer and its lineages.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Work::Decide {
                app,
                customer,
                input,
                ..
            } => {
                let mut keys = vec![format!("c\u{1}{app}\u{1}{customer}")];
                for p in &input.purchases {
                    keys.push(format!(
                        "l\u{1}{app}\u{1}{}\u{1}{}",
                        p.store.as_str(),
                        p.store_transaction_id
                    ));
                }
                keys
            }
            Work::Notification(n) => vec![format!(
                "l\u{1}{}\u{1}{}\u{1}{}",
                n.app,
                n.transaction.store().as_str(),
                n.lineage()
            )],
            Work::Record(_) => Vec::new(),
        }
    }

    pub fn source(&self) -> &'static str {
        match self {
            Work::Decide { input, .. } => input.source,
            Work::Notification(n) => n.source,
            Work::Record(r) => r.source,
        }
    }
}

/// What became of an input.
#[derive(Debug, Clone)]
pub enum Done {
    /// Decided for a customer (possibly a replay that changed nothing).
    Decided {
        app: AppId,
        customer: AppUserId,
        outcome: Outcome,
    },
    /// Kept until a customer holds its lineage.
    Held,
    /// Kept; nothing to decide (no transaction, or a product the catalog does not know).
    Recorded,
    /// Seen before.
    Duplicate,
}

/// A batch's answer for one input.
#[derive(Debug)]
pub enum Step {
    Reply(ServiceResult<Done>),
    /// Meets another input of the batch on the same customer: run it in the next batch.
    Defer,
}

/// One decision to make inside the batch.
struct Plan {
    job: usize,
    app: AppId,
    customer: AppUserId,
    input: Input,
    now: Timestamp,
    inbound_id: String,
    /// A store notification: its raw body is kept even when it brings no new fact, since its type
    /// (a consumption request, a renewal preference) may matter beyond the facts.
    keep_raw: bool,
    /// The purchase id of each of `input.purchases`, found or new.
    purchase_ids: Vec<String>,
    new_facts: Vec<serde_json::Value>,
    /// Lineages this decision takes from the customers who hold them.
    moves: Vec<Move>,
    /// The inbound row of a held input decided again (none is written for it).
    held_as: Option<String>,
}

/// A lineage a decision takes from the customer who holds it (a restore under the `transfer`
/// policy). It moves in the decision's own transaction, under the lineage's lock, and both customers
/// are decided there: a store notification about the lineage comes wholly before or wholly after.
#[derive(Debug, Clone)]
struct Move {
    from: AppUserId,
    store: Store,
    lineage: String,
}

impl Plan {
    fn key(&self) -> CustomerKey {
        (self.app.to_string(), self.customer.to_string())
    }

    fn reevaluate(&self) -> bool {
        self.input.source == "clock"
    }

    /// Every customer this plan changes: its own, and those it takes lineages from.
    fn customers(&self) -> Vec<CustomerKey> {
        let mut keys = vec![self.key()];
        for m in &self.moves {
            let k = (self.app.to_string(), m.from.to_string());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    }

    /// The customers this plan takes lineages from, each once.
    fn losers(&self) -> Vec<AppUserId> {
        let mut out: Vec<AppUserId> = Vec::new();
        for m in &self.moves {
            if !out.contains(&m.from) {
                out.push(m.from.clone());
            }
        }
        out
    }
}

/// Runs `works` in the caller's transaction; an `Err` means the batch must be rolled back.
pub async fn run(conn: &mut AnyConnection, works: &[Work]) -> ServiceResult<Vec<Step>> {
    let mut steps: Vec<Option<Step>> = works.iter().map(|_| None).collect();
    let now = now_of(works);

    // 1. Resolve: who holds each lineage, which product each notification names, whose order issued
    // each appAccountToken.
    let mut lineages: Vec<LineageKey> = Vec::new();
    let mut skus: BTreeMap<&str, Vec<AppScoped>> = BTreeMap::new();
    let mut tokens = Vec::new();
    for w in works {
        match w {
            Work::Decide { app, input, .. } => {
                for p in &input.purchases {
                    lineages.push(lineage_key(app, p.store, &p.store_transaction_id));
                }
            }
            Work::Notification(n) => {
                let store = n.transaction.store();
                lineages.push(lineage_key(&n.app, store, &n.lineage()));
                if let Some(linked) = n.transaction.linked_lineage() {
                    lineages.push(lineage_key(&n.app, store, linked));
                }
                skus.entry(store.as_str())
                    .or_default()
                    .push((n.app.to_string(), n.transaction.sku().to_owned()));
                if let Some(token) = n.transaction.order_token() {
                    tokens.push((n.app.to_string(), token.to_owned()));
                }
            }
            Work::Record(_) => {}
        }
    }
    batch::lock_lineages(conn, &lineages).await?;
    let owners = batch::owners(conn, &lineages).await?;
    let mut products = HashMap::new();
    for (store, skus) in &skus {
        for ((app, sku), product) in batch::products_by_sku(conn, store, skus).await? {
            products.insert((*store, app, sku), product);
        }
    }
    let by_token = if tokens.is_empty() {
        HashMap::new()
    } else {
        batch::order_customers(conn, &tokens).await?
    };

    let mut plans: Vec<Plan> = Vec::new();
    let mut holds: Vec<(usize, InboundRow, PurchaseFacts)> = Vec::new();
    let mut records: Vec<(usize, InboundRow)> = Vec::new();
    let mut unmapped: Vec<(usize, InboundRow, &Notification)> = Vec::new();
    let mut claimed: HashSet<CustomerKey> = HashSet::new();
    for (i, w) in works.iter().enumerate() {
        let keep_raw = matches!(w, Work::Notification(_));
        let (app, customer, input, now) = match w {
            Work::Decide {
                app,
                customer,
                input,
                now,
            } => (app.clone(), customer.clone(), (**input).clone(), *now),
            Work::Record(r) => {
                let row = InboundRow::new(&r.app, (r.source, &r.dedupe_key), None, &r.raw, r.now);
                records.push((i, row));
                continue;
            }
            Work::Notification(n) => {
                let raw_row = || {
                    let mut row = InboundRow::new(&n.app, (n.source, &n.id), None, &n.raw, n.now);
                    if let Some(id) = &n.held_as {
                        row.id = id.clone();
                    }
                    row
                };
                let store = n.transaction.store();
                let sku = n.transaction.sku();
                let Some(product) =
                    products.get(&(store.as_str(), n.app.to_string(), sku.to_owned()))
                else {
                    if n.held_as.is_some() {
                        // Decided again, but its SKU is unmapped again: it stays held.
                        steps[i] = Some(Step::Reply(Ok(Done::Held)));
                        continue;
                    }
                    tracing::warn!(app = %n.app, store = store.as_str(), sku = %sku, notification = %n.id, "notification for a product the catalog does not know; held until it does");
                    unmapped.push((i, raw_row(), n));
                    continue;
                };
                let mut facts = match n.transaction.facts(db::new_id("pur"), product) {
                    Ok(f) => f,
                    Err(e) => {
                        steps[i] = Some(Step::Reply(Err(e.into())));
                        continue;
                    }
                };
                facts.events.extend(n.events.iter().cloned());
                let lineage = lineage_key(&n.app, facts.store, &facts.store_transaction_id);
                let linked = n
                    .transaction
                    .linked_lineage()
                    .and_then(|l| owners.get(&lineage_key(&n.app, store, l)))
                    .map(|o| o.customer.clone());
                let owner = owners
                    .get(&lineage)
                    .map(|o| o.customer.clone())
                    .or_else(|| {
                        n.transaction.order_token().and_then(|t| {
                            by_token
                                .get(&(n.app.to_string(), t.to_ascii_lowercase()))
                                .cloned()
                        })
                    })
                    .or_else(|| linked.clone())
                    .or_else(|| n.transaction.named_customer().map(str::to_owned));
                let Some(owner) = owner else {
                    holds.push((i, raw_row(), facts));
                    continue;
                };
                let customer: AppUserId = owner.parse().map_err(|_| {
                    ServiceError::Internal(db::DbError::Corrupt(format!("customer id {owner:?}")))
                })?;
                let mut purchases = vec![facts];
                // The subscription it replaces ends as it starts, when the same customer holds it.
                if linked.as_deref() == Some(owner.as_str())
                    && let Some(old) = n.transaction.replaced_facts(product)
                {
                    purchases.push(old);
                }
                let input = Input {
                    source: n.source,
                    dedupe_key: n.id.clone(),
                    raw: n.raw.clone(),
                    cause: n.cause.clone(),
                    actor: store.as_str().into(),
                    manual: Vec::new(),
                    request_key: None,
                    purchases,
                    transfer: false,
                    remark: n.remark.clone(),
                    owed: n
                        .owed
                        .iter()
                        .filter(|o| o.on_grant.is_some())
                        .cloned()
                        .collect(),
                };
                (n.app.clone(), customer, input, n.now)
            }
        };
        let key = (app.to_string(), customer.to_string());
        // One lineage never belongs to two customers: one another customer holds is refused, or
        // taken from them when the input says so.
        let mut moves = Vec::new();
        let mut refused = false;
        for p in &input.purchases {
            let Some(o) = owners
                .get(&lineage_key(&app, p.store, &p.store_transaction_id))
                .filter(|o| o.customer != customer.as_str())
            else {
                continue;
            };
            if !input.transfer {
                refused = true;
                break;
            }
            let from: AppUserId = o.customer.parse().map_err(|_| {
                ServiceError::Internal(db::DbError::Corrupt(format!(
                    "customer id {:?}",
                    o.customer
                )))
            })?;
            moves.push(Move {
                from,
                store: p.store,
                lineage: p.store_transaction_id.clone(),
            });
        }
        let losers: Vec<CustomerKey> = moves
            .iter()
            .map(|m| (app.to_string(), m.from.to_string()))
            .collect();
        if claimed.contains(&key) || losers.iter().any(|k| claimed.contains(k)) {
            steps[i] = Some(Step::Defer);
            continue;
        }
        if refused {
            steps[i] = Some(Step::Reply(Err(ServiceError::conflict(
                "purchase_of_another_customer",
                "This store purchase belongs to another customer.",
            ))));
            continue;
        }
        claimed.insert(key);
        claimed.extend(losers);
        plans.push(Plan {
            job: i,
            app,
            customer,
            input,
            now,
            inbound_id: String::new(),
            keep_raw,
            purchase_ids: Vec::new(),
            new_facts: Vec::new(),
            moves,
            held_as: match w {
                Work::Notification(n) => n.held_as.clone(),
                _ => None,
            },
        });
    }

    // 2. Keep every raw input; a replay is not inserted.
    let mut raw_rows: Vec<InboundRow> = Vec::new();
    for p in &mut plans {
        let mut row = InboundRow::new(
            &p.app,
            (p.input.source, &p.input.dedupe_key),
            Some(p.customer.to_string()),
            &p.input.raw,
            p.now,
        );
        if let Some(id) = &p.held_as {
            row.id = id.clone();
        }
        p.inbound_id = row.id.clone();
        raw_rows.push(row);
    }
    raw_rows.extend(holds.iter().map(|h| h.1.clone()));
    raw_rows.extend(records.iter().map(|r| r.1.clone()));
    raw_rows.extend(unmapped.iter().map(|u| u.1.clone()));
    // A held input decided again keeps its inbound row: it counts as new, and is no longer held.
    let rerun: Vec<(String, String)> = works
        .iter()
        .filter_map(|w| match w {
            Work::Notification(n) => n.held_as.clone().map(|id| (n.app.to_string(), id)),
            _ => None,
        })
        .collect();
    raw_rows.retain(|r| !rerun.iter().any(|(a, id)| *a == r.app && *id == r.id));
    let mut fresh = batch::insert_inbound(conn, &raw_rows).await?;
    if !rerun.is_empty() {
        // Those this batch goes on to decide (not deferred, refused or still unmapped).
        let decided: Vec<(String, String)> = works
            .iter()
            .enumerate()
            .filter(|(i, _)| steps[*i].is_none())
            .filter_map(|(_, w)| match w {
                Work::Notification(n) => n.held_as.clone().map(|id| (n.app.to_string(), id)),
                _ => None,
            })
            .collect();
        if !decided.is_empty() {
            batch::delete_unmapped(conn, &decided).await?;
        }
        fresh.extend(rerun.into_iter().map(|(_, id)| id));
    }
    let mut held = Vec::new();
    for (i, row, n) in &unmapped {
        if fresh.contains(&row.id) {
            let store = n.transaction.store().as_str();
            metrics::counter!("gateway_inputs_held_unmapped_total", "store" => store).increment(1);
            held.push(batch::UnmappedRow {
                app: row.app.clone(),
                inbound_id: row.id.clone(),
                store,
                sku: n.transaction.sku().to_owned(),
                body: serde_json::to_string(&n.held()?).map_err(db::DbError::from)?,
                at: n.now,
            });
            steps[*i] = Some(Step::Reply(Ok(Done::Held)));
        } else {
            steps[*i] = Some(Step::Reply(Ok(Done::Duplicate)));
        }
    }
    if !held.is_empty() {
        batch::insert_unmapped(conn, &held).await?;
    }
    // Store actions owed by the inputs, with the raw inputs that ask for them; a repeat of an input
    // adds any its first sight did not owe (an answer the app was set to give since).
    let owed = owed_actions(works, &owners);
    if !owed.is_empty() {
        batch::insert_actions(conn, &owed).await?;
    }
    for (i, row) in &records {
        let done = if fresh.contains(&row.id) {
            Done::Recorded
        } else {
            Done::Duplicate
        };
        steps[*i] = Some(Step::Reply(Ok(done)));
    }
    let mut orphans = Vec::new();
    for (i, row, facts) in &holds {
        if fresh.contains(&row.id) {
            let lineage = (
                row.app.clone(),
                facts.store.as_str().to_owned(),
                facts.store_transaction_id.clone(),
            );
            orphans.extend(facts.events.iter().map(|e| Orphan {
                lineage: lineage.clone(),
                event: e.clone(),
                inbound_id: Some(row.id.clone()),
            }));
            steps[*i] = Some(Step::Reply(Ok(Done::Held)));
        } else {
            steps[*i] = Some(Step::Reply(Ok(Done::Duplicate)));
        }
    }
    if !orphans.is_empty() {
        batch::insert_orphans(conn, &orphans, now).await?;
    }
    let (live, replays): (Vec<Plan>, Vec<Plan>) = plans
        .into_iter()
        .partition(|p| fresh.contains(&p.inbound_id) || p.reevaluate() || !p.moves.is_empty());
    for p in replays {
        steps[p.job] = Some(Step::Reply(Ok(replay(&p, 0))));
    }
    let mut plans = live;
    if plans.is_empty() {
        return Ok(finish(steps));
    }

    // 3. Lock the customers, those who lose a lineage too.
    let keys: Vec<CustomerKey> = plans.iter().flat_map(Plan::customers).collect();
    let mut rows = batch::lock_customers(conn, &keys, now).await?;

    // 4. New facts: manual facts, lineages, store events (with the orphan facts of each lineage).
    let manual: Vec<batch::ManualRow> = plans
        .iter()
        .flat_map(|p| {
            p.input.manual.iter().map(|m| batch::ManualRow {
                app: p.app.to_string(),
                customer: p.customer.to_string(),
                fact: m,
                actor: p.input.actor.clone(),
                request_key: p.input.request_key.clone(),
            })
        })
        .collect();
    let new_manual = if manual.is_empty() {
        HashSet::new()
    } else {
        batch::insert_manual(conn, &manual).await?
    };
    let left_out: Vec<(String, String)> = manual
        .iter()
        .map(|m| (m.app.clone(), m.fact.id.clone()))
        .filter(|k| !new_manual.contains(k))
        .collect();
    if !left_out.is_empty() {
        let known = batch::manual_known(conn, &left_out).await?;
        if left_out.iter().any(|k| !known.contains(k)) {
            // Left out though not recorded: its request key made another fact meanwhile (two
            // requests with one key, at once). Deciding one by one refuses the later one alone.
            return Err(super::customers::key_reused());
        }
    }
    for p in &mut plans {
        for m in &p.moves {
            let moved = db::customers::move_purchase(
                conn,
                &p.app,
                m.store,
                &m.lineage,
                (&m.from, &p.customer),
                now,
            )
            .await?;
            if !moved {
                // Under the lineage's lock its owner cannot change; fail the batch rather than guess.
                return Err(ServiceError::Internal(db::DbError::Corrupt(format!(
                    "store purchase {} was not held by {}",
                    m.lineage, m.from
                ))));
            }
            let purchase_id = owners
                .get(&lineage_key(&p.app, m.store, &m.lineage))
                .map(|o| o.purchase_id.clone());
            p.new_facts
                .push(json!({"purchase_id": purchase_id, "moved_from": m.from}));
        }
    }
    let mut to_create = Vec::new();
    for p in &mut plans {
        for m in &p.input.manual {
            if new_manual.contains(&(p.app.to_string(), m.id.clone())) {
                p.new_facts.push(json!({ "manual": m }));
            }
        }
        for f in &p.input.purchases {
            let key = lineage_key(&p.app, f.store, &f.store_transaction_id);
            match owners.get(&key) {
                Some(o) => p.purchase_ids.push(o.purchase_id.clone()),
                None => {
                    p.purchase_ids.push(f.id.clone());
                    to_create.push((p.app.to_string(), p.customer.to_string(), f));
                }
            }
        }
    }
    if !to_create.is_empty() {
        let created = batch::insert_purchases(conn, &to_create, now).await?;
        if let Some((_, _, f)) = to_create.iter().find(|(_, _, f)| !created.contains(&f.id)) {
            // Another transaction recorded this lineage after step 1: decide again, one by one.
            return Err(ServiceError::conflict(
                "lineage_raced",
                format!(
                    "Store purchase {} was recorded by another writer meanwhile.",
                    f.store_transaction_id
                ),
            ));
        }
    }
    // A recorded lineage follows the product its facts state latest: a subscription upgraded at
    // once, or downgraded at its renewal, moves to the new product's entitlements in this decision.
    let stated: Vec<batch::StatedProduct> = plans
        .iter()
        .flat_map(|p| {
            p.input
                .purchases
                .iter()
                .zip(&p.purchase_ids)
                .filter(|(f, _)| {
                    owners.contains_key(&lineage_key(&p.app, f.store, &f.store_transaction_id))
                })
                .map(|(f, id)| batch::StatedProduct {
                    purchase_id: id,
                    app: p.app.as_str(),
                    facts: f,
                })
        })
        .collect();
    let changed = batch::follow_products(conn, &stated).await?;
    for c in changed {
        if let Some(p) = plans
            .iter_mut()
            .find(|p| p.purchase_ids.contains(&c.purchase_id))
        {
            p.new_facts.push(
                json!({"purchase_id": c.purchase_id, "product": {"from": c.from, "to": c.to}}),
            );
        }
    }
    let plan_lineages: Vec<LineageKey> = plans
        .iter()
        .flat_map(|p| {
            p.input
                .purchases
                .iter()
                .map(|f| lineage_key(&p.app, f.store, &f.store_transaction_id))
        })
        .collect();
    let adopted = if plan_lineages.is_empty() {
        Vec::new()
    } else {
        batch::take_orphans(conn, &plan_lineages).await?
    };
    // Each event row is tagged with its plan, its purchase, and whether it is an adopted orphan.
    // Orphans come first, so an event both held and brought again counts as adopted.
    let mut event_rows: Vec<EventRow> = Vec::new();
    let mut tags: Vec<(usize, &str, bool)> = Vec::new();
    for (pi, p) in plans.iter().enumerate() {
        for (f, pid) in p.input.purchases.iter().zip(&p.purchase_ids) {
            let key = lineage_key(&p.app, f.store, &f.store_transaction_id);
            for o in adopted.iter().filter(|o| o.lineage == key) {
                event_rows.push(EventRow {
                    app: p.app.as_str(),
                    purchase_id: pid,
                    event: &o.event,
                    inbound_id: o.inbound_id.as_deref(),
                });
                tags.push((pi, pid, true));
            }
            for e in &f.events {
                event_rows.push(EventRow {
                    app: p.app.as_str(),
                    purchase_id: pid,
                    event: e,
                    inbound_id: Some(&p.inbound_id),
                });
                tags.push((pi, pid, false));
            }
        }
    }
    let new_events = if event_rows.is_empty() {
        HashSet::new()
    } else {
        batch::insert_events(conn, &event_rows, now).await?
    };
    // The facts this batch added, by purchase: the load below reads a purchase's facts only from its
    // latest renewal on, and one that arrived late may be older.
    let mut added: HashMap<&str, Vec<StoreEvent>> = HashMap::new();
    for row in &event_rows {
        if new_events.contains(&(row.app.to_owned(), row.event.dedupe_key.clone())) {
            added
                .entry(row.purchase_id)
                .or_default()
                .push(row.event.clone());
        }
    }
    let added: HashMap<String, Vec<StoreEvent>> =
        added.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let mut adopted_counts: BTreeMap<(usize, String), usize> = BTreeMap::new();
    let mut fact_notes: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut counted: HashSet<(&str, &str)> = HashSet::new();
    for (row, &(pi, pid, orphan)) in event_rows.iter().zip(&tags) {
        let key = (row.app, row.event.dedupe_key.as_str());
        if !counted.insert(key) || !new_events.contains(&(key.0.to_owned(), key.1.to_owned())) {
            continue;
        }
        if orphan {
            *adopted_counts.entry((pi, pid.to_owned())).or_default() += 1;
        } else {
            fact_notes.push((pi, json!({"purchase_id": pid, "event": row.event})));
        }
    }
    // The timeline lists adopted facts first, as they are older than the input that found them.
    for ((pi, pid), n) in adopted_counts {
        plans[pi]
            .new_facts
            .push(json!({"purchase_id": pid, "adopted_earlier_facts": n}));
    }
    for (pi, note) in fact_notes {
        plans[pi].new_facts.push(note);
    }
    // What a new input says beyond its facts is written once, with the outbound event it names.
    for p in &mut plans {
        if let Some(r) = &p.input.remark
            && fresh.contains(&p.inbound_id)
        {
            p.new_facts.push(json!({ "remark": r.what }));
        }
    }

    let (live, replays): (Vec<Plan>, Vec<Plan>) = plans
        .into_iter()
        .partition(|p| !p.new_facts.is_empty() || p.reevaluate());
    let forget: Vec<String> = replays
        .iter()
        .filter(|p| !p.keep_raw)
        .map(|p| p.inbound_id.clone())
        .collect();
    if !forget.is_empty() {
        batch::delete_inbound(conn, &forget).await?;
    }
    let (kept, replays): (Vec<Plan>, Vec<Plan>) = replays.into_iter().partition(|p| p.keep_raw);
    for p in kept {
        steps[p.job] = Some(Step::Reply(Ok(Done::Recorded)));
    }
    for p in replays {
        let version = rows.get(&p.key()).map(|r| r.version).unwrap_or_default();
        steps[p.job] = Some(Step::Reply(Ok(replay(&p, version))));
    }
    let plans = live;
    if plans.is_empty() {
        return Ok(finish(steps));
    }

    // 5. Read what the decisions need.
    let keys: Vec<CustomerKey> = plans.iter().flat_map(Plan::customers).collect();
    let mut loaded = batch::load(conn, &keys).await?;
    settle_facts(conn, &mut loaded, &added).await?;
    let (products, entitlements) = catalog_needs(loaded.iter());
    let catalogs = batch::catalogs(conn, &products, &entitlements).await?;

    // 6. Decide each customer and write every change.
    let mut writes = Writes::default();
    let mut granted: Vec<Vec<Val>> = Vec::new();
    // The buyer's store account a decided notification's transaction names (Apple's
    // `appTransactionId`) is kept as the customer's.
    let sightings: Vec<(String, String, String, String)> = plans
        .iter()
        .filter_map(|p| {
            let Work::Notification(n) = &works[p.job] else {
                return None;
            };
            let store = p.input.purchases.first()?.store;
            let account = n.transaction.account()?.to_owned();
            Some((
                p.app.to_string(),
                store.as_str().to_owned(),
                account,
                p.customer.to_string(),
            ))
        })
        .collect();
    for p in plans {
        let key = p.key();
        let empty = gateway_core::decide::Catalog::new();
        let catalog = catalogs.get(key.0.as_str()).unwrap_or(&empty);
        // Those who lost a lineage to this decision: their revokes and clawbacks, in the same commit.
        let mut moved_from = Vec::new();
        for loser in p.losers() {
            let lkey = (p.app.to_string(), loser.to_string());
            let l = loaded.remove(&lkey).unwrap_or_default();
            let after = derive(&l.facts, catalog, p.now);
            let effects = diff(&l.state, &after, &l.balances);
            let mut row = rows.remove(&lkey).ok_or_else(|| {
                ServiceError::Internal(db::DbError::Corrupt(format!(
                    "customer {loser} was not locked"
                )))
            })?;
            let lineages: Vec<&str> = p
                .moves
                .iter()
                .filter(|m| m.from == loser)
                .map(|m| m.lineage.as_str())
                .collect();
            let cause = format!(
                "Store purchase {} moved to another customer who restored it.",
                lineages.join(", ")
            );
            let detail = json!({"source": "transfer", "lineages": lineages, "to": p.customer,
                "inbound_id": p.inbound_id});
            let settlement = Settlement {
                source: "transfer",
                cause: &cause,
                detail,
                announce: None,
            };
            let changed = writes.settle(
                (&p.app, &loser),
                &mut row,
                (&l.state, &after, &effects),
                settlement,
                p.now,
            )?;
            metrics::counter!("gateway_transfers_total").increment(lineages.len() as u64);
            if changed {
                moved_from.push(loser);
            }
        }
        let l = loaded.remove(&key).unwrap_or_default();
        let after = derive(&l.facts, catalog, p.now);
        let effects = diff(&l.state, &after, &l.balances);
        let mut row = rows.remove(&key).ok_or_else(|| {
            ServiceError::Internal(db::DbError::Corrupt(format!(
                "customer {} was not locked",
                p.customer
            )))
        })?;
        if p.reevaluate() && effects.is_empty() && l.state == after {
            // Nothing was due after all; move the customer's next check on so no job comes back.
            writes.customer(
                &p.app,
                &p.customer,
                &row,
                after.next_change_after(p.now),
                p.now,
            );
            steps[p.job] = Some(Step::Reply(Ok(Done::Decided {
                app: p.app,
                customer: p.customer,
                outcome: Outcome {
                    duplicate: true,
                    changed: false,
                    effects,
                    version: row.version,
                    state: after,
                    moved_from: Vec::new(),
                },
            })));
            continue;
        }
        let detail = json!({
            "source": p.input.source,
            "actor": p.input.actor,
            "inbound_id": p.inbound_id,
            "facts": p.new_facts,
        });
        let changed = writes.settle(
            (&p.app, &p.customer),
            &mut row,
            (&l.state, &after, &effects),
            Settlement {
                source: p.input.source,
                cause: &p.input.cause,
                detail,
                // What a new input's remark sends on.
                announce: p
                    .input
                    .remark
                    .as_ref()
                    .filter(|_| fresh.contains(&p.inbound_id))
                    .and_then(|r| Some((r.event.as_deref()?, r.detail.clone()))),
            },
            p.now,
        )?;
        metrics::counter!("gateway_decisions_total", "source" => p.input.source).increment(1);
        granted.extend(owed_on_grant(&p, &after));
        steps[p.job] = Some(Step::Reply(Ok(Done::Decided {
            app: p.app,
            customer: p.customer,
            outcome: Outcome {
                duplicate: false,
                changed,
                effects,
                version: row.version,
                state: after,
                moved_from,
            },
        })));
    }
    writes.flush(conn, now).await?;
    if !sightings.is_empty() {
        batch::keep_sightings(conn, &sightings, now).await?;
    }
    if !granted.is_empty() {
        batch::insert_actions(conn, &granted).await?;
    }
    Ok(finish(steps))
}

/// The outbox rows of the store actions `p` owes on a grant, for each purchase the decision leaves
/// active (`after`): an acknowledgement follows the grant, in its transaction.
fn owed_on_grant(p: &Plan, after: &CustomerState) -> Vec<Vec<Val>> {
    let mut rows = Vec::new();
    for o in &p.input.owed {
        let Some(lineage) = &o.on_grant else {
            continue;
        };
        let granted = p
            .input
            .purchases
            .iter()
            .zip(&p.purchase_ids)
            .filter(|(f, _)| &f.store_transaction_id == lineage)
            .any(|(_, pid)| {
                after
                    .purchases
                    .get(pid)
                    .is_some_and(|v| v.status == gateway_core::PurchaseStatus::Active)
            });
        if granted {
            rows.push(vec![
                o.id.clone().into(),
                p.app.to_string().into(),
                p.customer.to_string().into(),
                0i64.into(),
                o.event_type.into(),
                o.payload.to_string().into(),
                p.now.millis().into(),
            ]);
        }
    }
    rows
}

/// The outbox rows of the store actions `works` owe, each with the purchase's owner (empty while
/// there is none).
fn owed_actions(works: &[Work], owners: &HashMap<LineageKey, batch::Owned>) -> Vec<Vec<Val>> {
    let mut rows = Vec::new();
    for w in works {
        let Work::Notification(n) = w else {
            continue;
        };
        let owner = owners
            .get(&lineage_key(&n.app, n.transaction.store(), &n.lineage()))
            .map(|o| o.customer.clone())
            .unwrap_or_default();
        for o in n.owed.iter().filter(|o| o.on_grant.is_none()) {
            rows.push(vec![
                o.id.clone().into(),
                n.app.to_string().into(),
                owner.clone().into(),
                0i64.into(),
                o.event_type.into(),
                o.payload.to_string().into(),
                n.now.millis().into(),
            ]);
        }
    }
    rows
}

/// Completes each loaded purchase with the facts this batch added (`added`, by purchase id), and
/// keeps the summary of its facts up to date for the next decision: a purchase that got facts, or had
/// no summary yet (all its facts were read), gets one.
async fn settle_facts(
    conn: &mut AnyConnection,
    loaded: &mut HashMap<CustomerKey, batch::Loaded>,
    added: &HashMap<String, Vec<StoreEvent>>,
) -> ServiceResult<()> {
    let mut summaries = Vec::new();
    for l in loaded.values_mut() {
        for p in &mut l.facts.purchases {
            let new = added.get(&p.id);
            for e in new.into_iter().flatten() {
                if !p.events.iter().any(|k| k.dedupe_key == e.dedupe_key) {
                    p.events.push(e.clone());
                }
            }
            if new.is_none() && p.settled.is_some() {
                continue;
            }
            let mut settled = p.settled.clone().unwrap_or_default();
            for e in &p.events {
                settled.absorb(e);
            }
            if p.settled.as_ref() != Some(&settled) {
                summaries.push((p.id.clone(), settled));
            }
        }
    }
    if !summaries.is_empty() {
        let rows: Vec<(&str, &Settled)> = summaries.iter().map(|(i, s)| (i.as_str(), s)).collect();
        batch::save_settled(conn, &rows).await?;
    }
    Ok(())
}

/// The answer for an input that brought nothing new; `version` is the customer's, when it was read.
fn replay(p: &Plan, version: i64) -> Done {
    Done::Decided {
        app: p.app.clone(),
        customer: p.customer.clone(),
        outcome: Outcome {
            duplicate: true,
            changed: false,
            effects: Vec::new(),
            version,
            state: CustomerState::default(),
            moved_from: Vec::new(),
        },
    }
}

fn finish(steps: Vec<Option<Step>>) -> Vec<Step> {
    steps
        .into_iter()
        .map(|s| {
            s.unwrap_or_else(|| {
                Step::Reply(Err(ServiceError::Internal(db::DbError::Corrupt(
                    "an input of the batch got no answer".into(),
                ))))
            })
        })
        .collect()
}

/// The batch's write time (rows of one decision carry that decision's own time where it matters).
fn now_of(works: &[Work]) -> Timestamp {
    works
        .iter()
        .map(|w| match w {
            Work::Decide { now, .. } => *now,
            Work::Notification(n) => n.now,
            Work::Record(r) => r.now,
        })
        .max()
        .unwrap_or(Timestamp::from_millis(0))
}

pub(crate) fn lineage_key(app: &AppId, store: Store, lineage: &str) -> LineageKey {
    (
        app.to_string(),
        store.as_str().to_owned(),
        lineage.to_owned(),
    )
}

/// An id within an app: `(app, id)`.
pub(crate) type AppScoped = (String, String);

/// The products and entitlements whose definitions the decisions of `loaded` read.
pub(crate) fn catalog_needs<'a>(
    loaded: impl Iterator<Item = (&'a CustomerKey, &'a batch::Loaded)>,
) -> (Vec<AppScoped>, Vec<AppScoped>) {
    let mut products = Vec::new();
    let mut entitlements = Vec::new();
    for ((app, _), l) in loaded {
        for p in &l.facts.purchases {
            products.push((app.clone(), p.product_id.to_string()));
        }
        for m in &l.facts.manual {
            match &m.action {
                ManualAction::GrantProduct { product_id, .. } => {
                    products.push((app.clone(), product_id.to_string()));
                }
                ManualAction::GrantEntitlement { entitlement_id, .. }
                | ManualAction::Revoke { entitlement_id } => {
                    entitlements.push((app.clone(), entitlement_id.to_string()));
                }
            }
        }
    }
    (products, entitlements)
}

/// Why a settled change happened, for the audit row.
pub(crate) struct Settlement<'a> {
    pub source: &'a str,
    pub cause: &'a str,
    /// Detail of the input; the effects and the new version are added to it.
    pub detail: serde_json::Value,
    /// An outbound event of its own to send, beside the effects' (a store's remark): its type, and
    /// the fields its payload's `data` adds to the app and customer.
    pub announce: Option<(&'a str, serde_json::Value)>,
}

/// The writes of decided changes, gathered across customers and written set-wise.
#[derive(Default)]
pub(crate) struct Writes {
    purchase_views: Vec<(String, gateway_core::decide::PurchaseView)>,
    gone: Vec<(String, String, String)>,
    entitlements: Vec<(String, String, gateway_core::decide::EntitlementView)>,
    ledger: Vec<Vec<Val>>,
    outbox: Vec<Vec<Val>>,
    audit: Vec<Vec<Val>>,
    customers: Vec<batch::CustomerSave>,
}

impl Writes {
    /// A customer row to write back.
    pub fn customer(
        &mut self,
        app: &AppId,
        customer: &AppUserId,
        row: &CustomerRow,
        next: Option<Timestamp>,
        now: Timestamp,
    ) {
        self.customers.push(batch::CustomerSave {
            app: app.to_string(),
            customer: customer.to_string(),
            row: row.clone(),
            next,
            now,
        });
    }

    /// Gathers a decided change for one locked customer: the new views, the ledger and outbox rows,
    /// the audit row (and a `balance.negative` row per negative balance), the new version and the next
    /// time the clock alone changes the customer. Returns whether the snapshot changed.
    pub fn settle(
        &mut self,
        (app, customer): (&AppId, &AppUserId),
        row: &mut CustomerRow,
        (before, after, effects): (&CustomerState, &CustomerState, &[Effect]),
        settlement: Settlement<'_>,
        now: Timestamp,
    ) -> ServiceResult<bool> {
        let (a, c) = (app.to_string(), customer.to_string());
        for (pid, view) in &after.purchases {
            if before.purchases.get(pid) != Some(view) {
                self.purchase_views.push((a.clone(), view.clone()));
            }
        }
        // An entitlement nothing grants any more leaves the snapshot (its revoke was an effect).
        for eid in before
            .entitlements
            .keys()
            .filter(|e| !after.entitlements.contains_key(*e))
        {
            self.gone.push((a.clone(), c.clone(), eid.to_string()));
        }
        for (eid, view) in &after.entitlements {
            if before.entitlements.get(eid) != Some(view) {
                self.entitlements.push((a.clone(), c.clone(), view.clone()));
            }
        }
        let changed = before != after || !effects.is_empty();
        if changed {
            row.version += 1;
        }
        for e in effects {
            if let Effect::LedgerEntry {
                source,
                currency,
                amount,
            } = e
            {
                let reason = if *amount > 0 { "credit" } else { "clawback" };
                let txn = db::new_id("ltx");
                for leg in legs(customer, currency, source, *amount) {
                    self.ledger.push(vec![
                        db::new_id("led").into(),
                        txn.clone().into(),
                        a.clone().into(),
                        c.clone().into(),
                        leg.account.into(),
                        currency.as_str().into(),
                        leg.amount.into(),
                        source.kind().into(),
                        source.id().to_owned().into(),
                        Some(reason.to_owned()).into(),
                        now.millis().into(),
                    ]);
                }
            }
        }
        let announced = settlement.announce.map(|(event_type, data)| {
            (
                event_type,
                event_payload(app, customer, event_type, data, now),
            )
        });
        let own = effects
            .iter()
            .filter_map(|e| {
                let event_type = e.outbound_event()?;
                Some((
                    event_type,
                    outbound_payload(app, customer, event_type, e, now),
                ))
            })
            .chain(announced);
        for (event_type, payload) in own {
            row.event_seq += 1;
            self.outbox.push(vec![
                db::new_id("evt").into(),
                a.clone().into(),
                c.clone().into(),
                row.event_seq.into(),
                event_type.into(),
                serde_json::to_string(&payload)
                    .map_err(db::DbError::from)?
                    .into(),
                now.millis().into(),
            ]);
        }
        let mut detail = settlement.detail;
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("effects".into(), json!(effects));
            obj.insert("version".into(), json!(row.version));
        }
        self.audit_row(
            (&a, &c),
            row,
            now,
            settlement.source,
            settlement.cause,
            &detail,
        )?;
        for e in effects {
            if let Effect::BalanceNegative { currency, balance } = e {
                let detail = json!({"currency": currency, "balance": balance});
                let cause = format!("A clawback left the {currency} balance at {balance}.");
                self.audit_row((&a, &c), row, now, "balance.negative", &cause, &detail)?;
            }
        }
        self.customer(app, customer, row, after.next_change_after(now), now);
        Ok(changed)
    }

    /// Appends a row to the customer's audit chain and advances `row` (seq and head) to it.
    fn audit_row(
        &mut self,
        (app, customer): (&str, &str),
        row: &mut CustomerRow,
        at: Timestamp,
        kind: &str,
        cause: &str,
        detail: &serde_json::Value,
    ) -> ServiceResult<()> {
        let seq = row.audit_seq + 1;
        let detail_json = serde_json::to_string(detail).map_err(db::DbError::from)?;
        let content = AuditContent {
            seq,
            at_millis: at.millis(),
            kind,
            cause,
            detail_json: &detail_json,
        };
        let hash = chain_hash(&row.audit_head, content);
        self.audit.push(vec![
            app.into(),
            customer.into(),
            seq.into(),
            at.millis().into(),
            kind.into(),
            cause.into(),
            detail_json.into(),
            row.audit_head.clone().into(),
            hash.clone().into(),
        ]);
        row.audit_seq = seq;
        row.audit_head = hash;
        Ok(())
    }

    /// Writes everything gathered, a statement per table.
    pub async fn flush(self, conn: &mut AnyConnection, now: Timestamp) -> ServiceResult<()> {
        if !self.purchase_views.is_empty() {
            let views: Vec<_> = self
                .purchase_views
                .iter()
                .map(|(a, v)| (a.clone(), v))
                .collect();
            batch::save_purchase_views(conn, &views, now).await?;
        }
        if !self.gone.is_empty() {
            batch::delete_entitlements(conn, &self.gone).await?;
        }
        if !self.entitlements.is_empty() {
            let views: Vec<_> = self
                .entitlements
                .iter()
                .map(|(a, c, v)| (a.clone(), c.clone(), v))
                .collect();
            batch::save_entitlements(conn, &views, now).await?;
        }
        for (table, rows) in [
            (batch::LEDGER, &self.ledger),
            (batch::OUTBOX, &self.outbox),
            (batch::AUDIT, &self.audit),
        ] {
            if !rows.is_empty() {
                batch::append(conn, table, rows).await?;
            }
        }
        if !self.customers.is_empty() {
            batch::save_customers(conn, &self.customers).await?;
        }
        Ok(())
    }
}
