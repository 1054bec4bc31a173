//! Customers and what is recorded about them: the customer row (version, audit head), purchases and
//! their store events, manual facts, and the derived entitlement and purchase views. The decision
//! pipeline reads facts and recorded state here and writes the new state back, all on the caller's
//! transaction.

use std::collections::BTreeMap;

use gateway_core::{
    AppId, AppUserId, CustomerState, Timestamp,
    decide::{EntitlementView, PurchaseView},
    ids::Store,
};
use sqlx::{AnyConnection, Row};

use super::{Db, DbResult, Dialect, json_col, ledger};

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

/// The id of the manual fact that the request key `request_key` made, if any.
pub async fn manual_fact_by_request_key(
    db: &Db,
    app: &AppId,
    request_key: &str,
) -> DbResult<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM manual_facts WHERE app_id = $1 AND request_key = $2")
            .bind(app.as_str())
            .bind(request_key)
            .fetch_optional(db.reader())
            .await?,
    )
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

/// The lineages of `customer`'s purchases that begin with `prefix` (a provider's temporary grants,
/// say): one narrow read, for a question most customers answer with none.
pub async fn lineages_with_prefix(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
    prefix: &str,
) -> DbResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT store_transaction_id FROM purchases WHERE app_id = $1 AND customer_id = $2 \
         AND substr(store_transaction_id, 1, CAST($3 AS INTEGER)) = $4",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(prefix.chars().count() as i64)
    .bind(prefix)
    .fetch_all(db.reader())
    .await?)
}

/// A recorded purchase: whose it is and what the store calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseRow {
    pub customer_id: String,
    pub store: String,
    pub store_transaction_id: String,
    pub product_id: String,
}

/// A purchase of `app` by its id.
pub async fn purchase_by_id(db: &Db, app: &AppId, id: &str) -> DbResult<Option<PurchaseRow>> {
    let row = sqlx::query(
        "SELECT customer_id, store, store_transaction_id, product_id FROM purchases WHERE app_id = $1 AND id = $2",
    )
    .bind(app.as_str())
    .bind(id)
    .fetch_optional(db.reader())
    .await?;
    row.map(|r| {
        Ok(PurchaseRow {
            customer_id: r.try_get("customer_id")?,
            store: r.try_get("store")?,
            store_transaction_id: r.try_get("store_transaction_id")?,
            product_id: r.try_get("product_id")?,
        })
    })
    .transpose()
}

/// What a snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub version: i64,
    /// When the clock alone next changes this state (an expiry), if ever.
    pub next_change_at: Option<Timestamp>,
    pub purchases: Vec<PurchaseView>,
    pub entitlements: Vec<EntitlementView>,
    pub balances: BTreeMap<gateway_core::Currency, i64>,
}

/// Reads a customer's recorded state in one consistent read; `None` for a customer never seen.
pub async fn recorded(db: &Db, app: &AppId, id: &AppUserId) -> DbResult<Option<Recorded>> {
    // Version, views and balances from one snapshot, not three.
    let mut tx = db.begin(super::Begin::Snapshot).await?;
    let row =
        sqlx::query("SELECT version, next_change_at FROM customers WHERE app_id = $1 AND id = $2")
            .bind(app.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let version: i64 = row.try_get("version")?;
    let next_change_at = row
        .try_get::<Option<i64>, _>("next_change_at")?
        .map(Timestamp::from_millis);
    let state = load_state(&mut tx, app, id).await?;
    let balances = ledger::balances(&mut tx, app, id).await?;
    super::commit(tx).await?;
    let mut purchases: Vec<PurchaseView> = state.purchases.into_values().collect();
    purchases.sort_by(|a, b| {
        b.purchased_at
            .cmp(&a.purchased_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(Some(Recorded {
        version,
        next_change_at,
        purchases,
        entitlements: state.entitlements.into_values().collect(),
        balances,
    }))
}

/// Claims up to `limit` customers whose next change has come (`next_change_at <= now`), oldest first,
/// by moving it to `lease_until`: another instance does not take them until then (PostgreSQL skips
/// rows another claim holds), and one whose re-evaluation fails comes back after the lease. Returns
/// `(app, customer)` of each.
pub async fn claim_due(
    db: &Db,
    now: Timestamp,
    lease_until: Timestamp,
    limit: i64,
) -> DbResult<Vec<(String, String)>> {
    let sql = match db.dialect {
        Dialect::Postgres => {
            "UPDATE customers SET next_change_at = $1 WHERE (app_id, id) IN (SELECT app_id, id FROM customers \
             WHERE next_change_at <= $2 ORDER BY next_change_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING app_id, id"
        }
        Dialect::Sqlite => {
            "UPDATE customers SET next_change_at = $1 WHERE (app_id, id) IN (SELECT app_id, id FROM customers \
             WHERE next_change_at <= $2 ORDER BY next_change_at LIMIT $3) RETURNING app_id, id"
        }
    };
    let rows = sqlx::query(sql)
        .bind(lease_until.millis())
        .bind(now.millis())
        .bind(limit)
        .fetch_all(db.writer())
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("app_id")?, r.try_get("id")?)))
        .collect()
}
