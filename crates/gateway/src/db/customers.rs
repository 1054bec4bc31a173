//! Customers and what is recorded about them: the customer row (version, audit head), purchases and
//! their store events, manual facts, and the derived entitlement and purchase views. The decision
//! pipeline reads facts and recorded state here and writes the new state back, all on the caller's
//! transaction.

use std::collections::BTreeMap;

use gateway_core::{
    AppId, AppUserId, CustomerFacts, CustomerState, ManualFact, PurchaseFacts, StoreEvent,
    Timestamp,
    decide::{EntitlementView, PurchaseView},
    ids::Store,
};
use sqlx::{AnyConnection, Row};

use super::{Db, DbError, DbResult, json_col, ledger};

/// The customer row as a decision holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRow {
    pub version: i64,
    pub audit_seq: i64,
    pub audit_head: String,
    /// The customer's outbox counter: each event takes the next number, which is its delivery order.
    pub event_seq: i64,
    /// When the clock alone next changes the customer's state, as last recorded.
    pub next_change_at: Option<Timestamp>,
}

/// Creates the customer if needed and takes its write lock for the rest of the transaction: the
/// upsert is a write, so on PostgreSQL it locks the row until commit and on SQLite it takes the
/// database's write lock before anything is read (no read-then-upgrade deadlock).
pub async fn lock(
    conn: &mut AnyConnection,
    app: &AppId,
    id: &AppUserId,
    now: Timestamp,
) -> DbResult<CustomerRow> {
    let row = sqlx::query(
        "INSERT INTO customers (app_id, id, version, audit_seq, audit_head, event_seq, created_at, updated_at) \
         VALUES ($1, $2, 0, 0, $3, 0, $4, $4) \
         ON CONFLICT (app_id, id) DO UPDATE SET version = customers.version \
         RETURNING version, audit_seq, audit_head, event_seq, next_change_at",
    )
    .bind(app.as_str())
    .bind(id.as_str())
    .bind(gateway_core::audit::GENESIS)
    .bind(now.millis())
    .fetch_one(&mut *conn)
    .await?;
    Ok(CustomerRow {
        version: row.try_get("version")?,
        audit_seq: row.try_get("audit_seq")?,
        audit_head: row.try_get("audit_head")?,
        event_seq: row.try_get("event_seq")?,
        next_change_at: row
            .try_get::<Option<i64>, _>("next_change_at")?
            .map(Timestamp::from_millis),
    })
}

/// Writes the customer row after a decision.
pub async fn save_row(
    conn: &mut AnyConnection,
    app: &AppId,
    id: &AppUserId,
    row: &CustomerRow,
    next_change_at: Option<Timestamp>,
    now: Timestamp,
) -> DbResult<()> {
    sqlx::query(
        "UPDATE customers SET version = $1, audit_seq = $2, audit_head = $3, next_change_at = $4, \
         updated_at = $5, event_seq = $8 WHERE app_id = $6 AND id = $7",
    )
    .bind(row.version)
    .bind(row.audit_seq)
    .bind(&row.audit_head)
    .bind(next_change_at.map(Timestamp::millis))
    .bind(now.millis())
    .bind(app.as_str())
    .bind(id.as_str())
    .bind(row.event_seq)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// True when a manual fact with this id is recorded.
pub async fn manual_fact_exists(db: &Db, app: &AppId, id: &str) -> DbResult<bool> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM manual_facts WHERE app_id = $1 AND id = $2")
            .bind(app.as_str())
            .bind(id)
            .fetch_one(db.reader())
            .await?;
    Ok(n > 0)
}

/// When the clock alone next changes a customer's recorded state, if ever; `None` for a customer
/// never seen too.
pub async fn next_change_at(db: &Db, app: &AppId, id: &AppUserId) -> DbResult<Option<Timestamp>> {
    let next: Option<Option<i64>> =
        sqlx::query_scalar("SELECT next_change_at FROM customers WHERE app_id = $1 AND id = $2")
            .bind(app.as_str())
            .bind(id.as_str())
            .fetch_optional(db.reader())
            .await?;
    Ok(next.flatten().map(Timestamp::from_millis))
}

/// Moves a purchase lineage from one customer to another; false when `from` does not hold it.
pub async fn move_purchase(
    conn: &mut AnyConnection,
    app: &AppId,
    store: Store,
    lineage: &str,
    (from, to): (&AppUserId, &AppUserId),
    now: Timestamp,
) -> DbResult<bool> {
    let moved = sqlx::query(
        "UPDATE purchases SET customer_id = $1, updated_at = $2 \
         WHERE app_id = $3 AND store = $4 AND store_transaction_id = $5 AND customer_id = $6",
    )
    .bind(to.as_str())
    .bind(now.millis())
    .bind(app.as_str())
    .bind(store.as_str())
    .bind(lineage)
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Adds a manual fact; false when its id was recorded before (a replay).
pub async fn insert_manual_fact(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
    fact: &ManualFact,
    actor: &str,
) -> DbResult<bool> {
    let done = sqlx::query(
        "INSERT INTO manual_facts (app_id, id, customer_id, at, body, reason, actor, product_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (app_id, id) DO NOTHING",
    )
    .bind(app.as_str())
    .bind(&fact.id)
    .bind(customer.as_str())
    .bind(fact.at.millis())
    .bind(serde_json::to_string(&fact.action)?)
    .bind(&fact.reason)
    .bind(actor)
    .bind(match &fact.action {
        gateway_core::ManualAction::GrantProduct { product_id, .. } => {
            Some(product_id.as_str().to_owned())
        }
        _ => None,
    })
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Adds a store event to a purchase; false when its dedupe key was recorded before.
pub async fn insert_store_event(
    conn: &mut AnyConnection,
    app: &AppId,
    purchase_id: &str,
    event: &StoreEvent,
    inbound_id: Option<&str>,
    now: Timestamp,
) -> DbResult<bool> {
    let done = sqlx::query(
        "INSERT INTO store_events (app_id, dedupe_key, purchase_id, occurred_at, kind, body, inbound_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (app_id, dedupe_key) DO NOTHING",
    )
    .bind(app.as_str())
    .bind(&event.dedupe_key)
    .bind(purchase_id)
    .bind(event.occurred_at.millis())
    .bind(event.kind.name())
    .bind(serde_json::to_string(&event.kind)?)
    .bind(inbound_id)
    .bind(now.millis())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every fact about a customer: their purchases with their store events, and their manual facts.
pub async fn load_facts(
    conn: &mut AnyConnection,
    app: &AppId,
    id: &AppUserId,
) -> DbResult<CustomerFacts> {
    let rows = sqlx::query(
        "SELECT p.id, p.store, p.product_id, p.store_transaction_id, p.environment, p.terms, \
                e.dedupe_key, e.occurred_at, e.body \
         FROM purchases p LEFT JOIN store_events e ON e.purchase_id = p.id \
         WHERE p.app_id = $1 AND p.customer_id = $2 ORDER BY p.id, e.occurred_at, e.dedupe_key",
    )
    .bind(app.as_str())
    .bind(id.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut purchases: Vec<PurchaseFacts> = Vec::new();
    for row in &rows {
        let pid: String = row.try_get("id")?;
        if purchases.last().is_none_or(|p| p.id != pid) {
            let store: String = row.try_get("store")?;
            purchases.push(PurchaseFacts {
                id: pid,
                store: Store::parse(&store)
                    .ok_or_else(|| DbError::Corrupt(format!("store {store:?}")))?,
                product_id: super::parsed_col(row, "product_id")?,
                store_transaction_id: row.try_get("store_transaction_id")?,
                environment: row.try_get("environment")?,
                terms: row
                    .try_get::<Option<String>, _>("terms")?
                    .map(|t| serde_json::from_str(&t))
                    .transpose()?,
                events: Vec::new(),
            });
        }
        let key: Option<String> = row.try_get("dedupe_key")?;
        if let (Some(key), Some(p)) = (key, purchases.last_mut()) {
            p.events.push(StoreEvent {
                dedupe_key: key,
                occurred_at: Timestamp::from_millis(row.try_get("occurred_at")?),
                kind: json_col(row, "body")?,
            });
        }
    }
    let rows = sqlx::query(
        "SELECT id, at, body, reason FROM manual_facts WHERE app_id = $1 AND customer_id = $2 ORDER BY at, id",
    )
    .bind(app.as_str())
    .bind(id.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let manual = rows
        .iter()
        .map(|row| {
            Ok(ManualFact {
                id: row.try_get("id")?,
                at: Timestamp::from_millis(row.try_get("at")?),
                action: json_col(row, "body")?,
                reason: row.try_get("reason")?,
            })
        })
        .collect::<DbResult<Vec<_>>>()?;
    Ok(CustomerFacts { purchases, manual })
}

/// The state last recorded for a customer: purchase and entitlement views, and the net ledger
/// position of every derived source.
pub async fn load_state(
    conn: &mut AnyConnection,
    app: &AppId,
    id: &AppUserId,
) -> DbResult<CustomerState> {
    let mut state = CustomerState::default();
    let rows = sqlx::query(
        "SELECT view FROM purchases WHERE app_id = $1 AND customer_id = $2 AND view IS NOT NULL",
    )
    .bind(app.as_str())
    .bind(id.as_str())
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        let v: PurchaseView = json_col(row, "view")?;
        state.purchases.insert(v.id.clone(), v);
    }
    let rows = sqlx::query("SELECT view FROM entitlements WHERE app_id = $1 AND customer_id = $2")
        .bind(app.as_str())
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        let v: EntitlementView = json_col(row, "view")?;
        state.entitlements.insert(v.id.clone(), v);
    }
    state.ledger = ledger::derived_positions(conn, app, id).await?;
    Ok(state)
}

/// Writes the purchase and entitlement views that changed between `before` and `after`.
pub async fn save_state(
    conn: &mut AnyConnection,
    app: &AppId,
    id: &AppUserId,
    before: &CustomerState,
    after: &CustomerState,
    now: Timestamp,
) -> DbResult<()> {
    for (pid, view) in &after.purchases {
        if before.purchases.get(pid) == Some(view) {
            continue;
        }
        sqlx::query(
            "UPDATE purchases SET status = $1, expires_at = $2, view = $3, updated_at = $4 WHERE id = $5 AND app_id = $6",
        )
        .bind(view.status.as_str())
        .bind(view.expires_at.map(Timestamp::millis))
        .bind(serde_json::to_string(view)?)
        .bind(now.millis())
        .bind(pid)
        .bind(app.as_str())
        .execute(&mut *conn)
        .await?;
    }
    // An entitlement nothing grants any more leaves the snapshot (its revoke was an effect).
    for eid in before
        .entitlements
        .keys()
        .filter(|e| !after.entitlements.contains_key(*e))
    {
        sqlx::query("DELETE FROM entitlements WHERE app_id = $1 AND customer_id = $2 AND id = $3")
            .bind(app.as_str())
            .bind(id.as_str())
            .bind(eid.as_str())
            .execute(&mut *conn)
            .await?;
    }
    for (eid, view) in &after.entitlements {
        if before.entitlements.get(eid) == Some(view) {
            continue;
        }
        sqlx::query(
            "INSERT INTO entitlements (app_id, customer_id, id, status, expires_at, view, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (app_id, customer_id, id) DO UPDATE SET status = excluded.status, \
             expires_at = excluded.expires_at, view = excluded.view, updated_at = excluded.updated_at",
        )
        .bind(app.as_str())
        .bind(id.as_str())
        .bind(eid.as_str())
        .bind(view.status.as_str())
        .bind(view.expires_at.map(Timestamp::millis))
        .bind(serde_json::to_string(view)?)
        .bind(now.millis())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A purchase lineage: finds it by its store id or creates it for `customer`. Returns its id and the
/// customer it belongs to.
pub async fn ensure_purchase(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
    facts: &PurchaseFacts,
    now: Timestamp,
) -> DbResult<(String, String)> {
    sqlx::query(
        "INSERT INTO purchases (id, app_id, customer_id, store, store_transaction_id, product_id, environment, \
         status, created_at, updated_at, terms) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8, $9) \
         ON CONFLICT (app_id, store, store_transaction_id) DO NOTHING",
    )
    .bind(&facts.id)
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(facts.store.as_str())
    .bind(&facts.store_transaction_id)
    .bind(facts.product_id.as_str())
    .bind(facts.environment.as_deref())
    .bind(now.millis())
    .bind(facts.terms.as_ref().map(serde_json::to_string).transpose()?)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query("SELECT id, customer_id FROM purchases WHERE app_id = $1 AND store = $2 AND store_transaction_id = $3")
        .bind(app.as_str())
        .bind(facts.store.as_str())
        .bind(&facts.store_transaction_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok((row.try_get("id")?, row.try_get("customer_id")?))
}

/// Marks for re-evaluation now every customer whose state `product` can change: holders of its
/// purchases or manual grants, and holders of any of `entitlements`. The expiry job re-derives them.
pub async fn mark_product_holders_due(
    conn: &mut AnyConnection,
    app: &AppId,
    product: &gateway_core::ProductId,
    entitlements: &[gateway_core::EntitlementId],
    now: Timestamp,
) -> DbResult<()> {
    const DUE: &str = "UPDATE customers SET next_change_at = $3 WHERE app_id = $1 \
         AND (next_change_at IS NULL OR next_change_at > $3) AND id IN ";
    for sql in [
        format!("{DUE}(SELECT customer_id FROM purchases WHERE app_id = $1 AND product_id = $2)"),
        format!(
            "{DUE}(SELECT customer_id FROM manual_facts WHERE app_id = $1 AND product_id = $2)"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app.as_str())
            .bind(product.as_str())
            .bind(now.millis())
            .execute(&mut *conn)
            .await?;
    }
    for e in entitlements {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DUE}(SELECT customer_id FROM entitlements WHERE app_id = $1 AND id = $2)"
        )))
        .bind(app.as_str())
        .bind(e.as_str())
        .bind(now.millis())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The customer a store purchase lineage belongs to, if it is recorded.
pub async fn purchase_owner(
    db: &Db,
    app: &AppId,
    store: Store,
    lineage: &str,
) -> DbResult<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT customer_id FROM purchases WHERE app_id = $1 AND store = $2 AND store_transaction_id = $3",
    )
    .bind(app.as_str())
    .bind(store.as_str())
    .bind(lineage)
    .fetch_optional(db.reader())
    .await?)
}

/// Keeps facts about a lineage no customer holds yet.
pub async fn insert_orphan_events(
    conn: &mut AnyConnection,
    app: &AppId,
    facts: &PurchaseFacts,
    inbound_id: &str,
    now: Timestamp,
) -> DbResult<usize> {
    let mut added = 0;
    for e in &facts.events {
        let done = sqlx::query(
            "INSERT INTO orphan_events (app_id, store, lineage, dedupe_key, occurred_at, body, inbound_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (app_id, dedupe_key) DO NOTHING",
        )
        .bind(app.as_str())
        .bind(facts.store.as_str())
        .bind(&facts.store_transaction_id)
        .bind(&e.dedupe_key)
        .bind(e.occurred_at.millis())
        .bind(serde_json::to_string(&e.kind)?)
        .bind(inbound_id)
        .bind(now.millis())
        .execute(&mut *conn)
        .await?;
        added += done.rows_affected() as usize;
    }
    Ok(added)
}

/// Moves the orphan facts of a lineage onto its purchase; returns how many joined.
pub async fn adopt_orphans(
    conn: &mut AnyConnection,
    app: &AppId,
    store: Store,
    lineage: &str,
    purchase_id: &str,
    now: Timestamp,
) -> DbResult<usize> {
    let rows = sqlx::query(
        "SELECT dedupe_key, occurred_at, body, inbound_id FROM orphan_events WHERE app_id = $1 AND store = $2 AND lineage = $3",
    )
    .bind(app.as_str())
    .bind(store.as_str())
    .bind(lineage)
    .fetch_all(&mut *conn)
    .await?;
    let mut adopted = 0;
    for row in &rows {
        let event = StoreEvent {
            dedupe_key: row.try_get("dedupe_key")?,
            occurred_at: Timestamp::from_millis(row.try_get("occurred_at")?),
            kind: json_col(row, "body")?,
        };
        let inbound: Option<String> = row.try_get("inbound_id")?;
        if insert_store_event(conn, app, purchase_id, &event, inbound.as_deref(), now).await? {
            adopted += 1;
        }
    }
    if !rows.is_empty() {
        sqlx::query("DELETE FROM orphan_events WHERE app_id = $1 AND store = $2 AND lineage = $3")
            .bind(app.as_str())
            .bind(store.as_str())
            .bind(lineage)
            .execute(&mut *conn)
            .await?;
    }
    Ok(adopted)
}

/// What a snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub version: i64,
    pub purchases: Vec<PurchaseView>,
    pub entitlements: Vec<EntitlementView>,
    pub balances: BTreeMap<gateway_core::Currency, i64>,
}

/// Reads a customer's recorded state in one consistent read; `None` for a customer never seen.
pub async fn recorded(db: &Db, app: &AppId, id: &AppUserId) -> DbResult<Option<Recorded>> {
    let mut tx = db.reader().begin().await?;
    if db.dialect == super::Dialect::Postgres {
        // Version, views and balances from one snapshot, not three (SQLite's reads already are).
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
    }
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM customers WHERE app_id = $1 AND id = $2")
            .bind(app.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(version) = version else {
        return Ok(None);
    };
    let state = load_state(&mut tx, app, id).await?;
    let balances = ledger::balances(&mut tx, app, id).await?;
    tx.commit().await?;
    let mut purchases: Vec<PurchaseView> = state.purchases.into_values().collect();
    purchases.sort_by(|a, b| {
        b.purchased_at
            .cmp(&a.purchased_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(Some(Recorded {
        version,
        purchases,
        entitlements: state.entitlements.into_values().collect(),
        balances,
    }))
}
