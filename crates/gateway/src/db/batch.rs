//! Set-wise statements for group commit: one statement reads or writes the rows of every decision of a
//! batch, so a batch of a hundred decisions costs about twenty statements and one commit, not two
//! thousand statements and a hundred commits.
//!
//! Rows are keyed by app as well, because one batch may hold inputs of several apps. Every multi-row
//! write is sorted by its key first: two gateway instances that write overlapping batches then take
//! their row locks in the same order and cannot deadlock each other.

use std::collections::{BTreeMap, HashMap, HashSet};

use gateway_core::{
    Currency, CustomerFacts, CustomerState, ManualFact, Product, PurchaseFacts, Settled,
    StoreEvent, Timestamp,
    decide::{Catalog, EntitlementView, PurchaseView},
    ids::Store,
    ledger::{LedgerSource, customer_account},
};
use sqlx::{AnyConnection, Row, any::AnyRow};

use super::{DbError, DbResult, customers::CustomerRow, json_col, parsed_col};

/// A bound value of a multi-row statement.
#[derive(Debug, Clone)]
pub enum Val {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val::Text(s.to_owned())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Self {
        Val::Text(s)
    }
}
impl From<i64> for Val {
    fn from(n: i64) -> Self {
        Val::Int(n)
    }
}
impl From<Option<i64>> for Val {
    fn from(n: Option<i64>) -> Self {
        Val::OptInt(n)
    }
}
impl From<Option<String>> for Val {
    fn from(s: Option<String>) -> Self {
        Val::OptText(s)
    }
}

/// Parameters per statement, under both SQLite's (32,766) and PostgreSQL's (65,535) limits.
const MAX_PARAMS: usize = 30_000;

/// Bytes of bound values per statement. A PostgreSQL message larger than one TCP segment (64 KiB on
/// loopback) has its tail held back by Nagle's algorithm until the server's delayed ACK, 40 ms later:
/// sqlx 0.9.0 does not set `TCP_NODELAY` (launchbadge/sqlx#4335, fixed upstream after 0.9.0). Keeping
/// each statement's data under one segment avoids the stall.
const MAX_BYTES: usize = 12 * 1024;

impl Val {
    fn size(&self) -> usize {
        match self {
            Val::Text(s) | Val::OptText(Some(s)) => s.len() + 4,
            _ => 12,
        }
    }
}

/// Splits `rows` into runs that stay under the statement limits (the byte limit only on PostgreSQL).
fn chunks(rows: &[Vec<Val>], max_bytes: usize) -> Vec<&[Vec<Val>]> {
    let mut out = Vec::new();
    let (mut start, mut params, mut bytes) = (0, 0, 0);
    for (i, row) in rows.iter().enumerate() {
        let size: usize = row.iter().map(Val::size).sum();
        if i > start && (params + row.len() > MAX_PARAMS || bytes + size > max_bytes) {
            out.push(&rows[start..i]);
            (start, params, bytes) = (i, 0, 0);
        }
        params += row.len();
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// Runs `head VALUES (...), (...) tail` over `rows` (each of the same width), in chunks that stay
/// under the statement limits, and returns every row the statements answered. `{values}` in `head`
/// marks where the list goes when it is not at the end.
pub(crate) async fn many(
    conn: &mut AnyConnection,
    head: &str,
    tail: &str,
    rows: &[Vec<Val>],
) -> DbResult<Vec<AnyRow>> {
    let Some(width) = rows.first().map(Vec::len) else {
        return Ok(Vec::new());
    };
    let postgres = conn.backend_name() == "PostgreSQL";
    let max_bytes = if postgres { MAX_BYTES } else { usize::MAX };
    let mut out = Vec::new();
    for chunk in chunks(rows, max_bytes) {
        let mut values = String::with_capacity(chunk.len() * width * 5);
        let mut n = 0;
        for (i, row) in chunk.iter().enumerate() {
            if i > 0 {
                values.push_str(", ");
            }
            values.push('(');
            for j in 0..row.len() {
                if j > 0 {
                    values.push_str(", ");
                }
                // SQLite looks a numbered parameter up by name, a walk of the list per parameter
                // (quadratic in a long VALUES list); plain `?` binds in order. PostgreSQL needs `$n`.
                n += 1;
                if postgres {
                    values.push('$');
                    values.push_str(&n.to_string());
                } else {
                    values.push('?');
                }
            }
            values.push(')');
        }
        let sql = if head.contains("{values}") {
            format!("{} {tail}", head.replace("{values}", &values))
        } else {
            format!("{head} {values} {tail}")
        };
        #[cfg(test)]
        tests::record(&sql);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for v in chunk.iter().flatten() {
            q = match v {
                Val::Text(s) => q.bind(s.clone()),
                Val::OptText(s) => q.bind(s.clone()),
                Val::Int(n) => q.bind(*n),
                Val::OptInt(n) => q.bind(*n),
            };
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// Serializes, across transactions and instances, every batch that touches one of `lineages`
/// (PostgreSQL transaction-scoped advisory locks, taken in sorted order; SQLite has one writer and
/// needs none). Without it, a notification that finds no owner for its lineage could be held as an
/// orphan while another transaction creates the lineage and has already looked for orphans: the
/// held fact would wait for the next input on that lineage. With it, the second of the two sees the
/// first's commit.
pub async fn lock_lineages(conn: &mut AnyConnection, lineages: &[LineageKey]) -> DbResult<()> {
    if conn.backend_name() != "PostgreSQL" || lineages.is_empty() {
        return Ok(());
    }
    let vals: Vec<Vec<Val>> = sorted_unique(lineages)
        .into_iter()
        .map(|(a, s, l)| vec![format!("{a}\u{1}{s}\u{1}{l}").into()])
        .collect();
    many(
        conn,
        "SELECT COUNT(*) AS n FROM (SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM \
         (SELECT column1 AS k FROM (VALUES {values}) AS v ORDER BY column1) AS sorted) AS locked",
        "",
        &vals,
    )
    .await?;
    Ok(())
}

/// (app, customer).
pub type CustomerKey = (String, String);
/// (app, store, lineage).
pub type LineageKey = (String, String, String);

/// A recorded lineage: its purchase id and owner.
#[derive(Debug, Clone)]
pub struct Owned {
    pub purchase_id: String,
    pub customer: String,
}

/// Who holds each of `lineages`, for those that are recorded.
pub async fn owners(
    conn: &mut AnyConnection,
    lineages: &[LineageKey],
) -> DbResult<HashMap<LineageKey, Owned>> {
    let rows = key_rows(lineages);
    let found = many(
        conn,
        "SELECT id, app_id, store, store_transaction_id, customer_id FROM purchases \
         WHERE (app_id, store, store_transaction_id) IN (VALUES {values})",
        "",
        &rows,
    )
    .await?;
    found
        .iter()
        .map(|r| {
            Ok((
                (
                    r.try_get("app_id")?,
                    r.try_get("store")?,
                    r.try_get("store_transaction_id")?,
                ),
                Owned {
                    purchase_id: r.try_get("id")?,
                    customer: r.try_get("customer_id")?,
                },
            ))
        })
        .collect()
}

/// The products that `(app, sku)` pairs of `store` name.
pub async fn products_by_sku(
    conn: &mut AnyConnection,
    store: &str,
    skus: &[(String, String)],
) -> DbResult<HashMap<(String, String), Product>> {
    let rows: Vec<Vec<Val>> = sorted_unique(skus)
        .into_iter()
        .map(|(a, s)| vec![a.into(), store.into(), s.into()])
        .collect();
    let found = many(
        conn,
        "SELECT s.app_id, s.sku, p.definition FROM product_skus s \
         JOIN products p ON p.app_id = s.app_id AND p.id = s.product_id \
         WHERE (s.app_id, s.store, s.sku) IN (VALUES {values})",
        "",
        &rows,
    )
    .await?;
    found
        .iter()
        .map(|r| {
            Ok((
                (r.try_get("app_id")?, r.try_get("sku")?),
                json_col(r, "definition")?,
            ))
        })
        .collect()
}

/// The customers whose orders issued `(app, token)` pairs (tokens compared lower-cased).
pub async fn order_customers(
    conn: &mut AnyConnection,
    tokens: &[(String, String)],
) -> DbResult<HashMap<(String, String), String>> {
    let lowered: Vec<(String, String)> = tokens
        .iter()
        .map(|(a, t)| (a.clone(), t.to_ascii_lowercase()))
        .collect();
    let rows = key_rows(&lowered);
    let mut out = HashMap::new();
    // An order issues both: Apple's appAccountToken and Play's obfuscatedAccountId.
    for column in ["app_account_token", "obfuscated_account_id"] {
        let found = many(
            conn,
            &format!(
                "SELECT app_id, {column} AS token, customer_id FROM orders \
                 WHERE (app_id, {column}) IN (VALUES {{values}})"
            ),
            "",
            &rows,
        )
        .await?;
        for r in &found {
            out.insert(
                (r.try_get("app_id")?, r.try_get("token")?),
                r.try_get("customer_id")?,
            );
        }
    }
    Ok(out)
}

/// A raw input to keep.
#[derive(Debug, Clone)]
pub struct InboundRow {
    pub id: String,
    pub app: String,
    pub source: String,
    pub dedupe_key: String,
    pub customer: Option<String>,
    pub raw: String,
    pub at: Timestamp,
}

impl InboundRow {
    /// A row with a new id.
    pub fn new(
        app: &gateway_core::AppId,
        (source, dedupe_key): (&str, &str),
        customer: Option<String>,
        raw: &str,
        at: Timestamp,
    ) -> Self {
        InboundRow {
            id: super::new_id("inb"),
            app: app.to_string(),
            source: source.to_owned(),
            dedupe_key: dedupe_key.to_owned(),
            customer,
            raw: raw.to_owned(),
            at,
        }
    }
}

/// Keeps the raw inputs not kept before; returns the ids of those that are new.
pub async fn insert_inbound(
    conn: &mut AnyConnection,
    rows: &[InboundRow],
) -> DbResult<HashSet<String>> {
    let mut sorted: Vec<&InboundRow> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.app, &a.source, &a.dedupe_key).cmp(&(&b.app, &b.source, &b.dedupe_key))
    });
    let vals: Vec<Vec<Val>> = sorted
        .into_iter()
        .map(|r| {
            vec![
                r.id.clone().into(),
                r.app.clone().into(),
                r.source.clone().into(),
                r.dedupe_key.clone().into(),
                r.customer.clone().into(),
                r.raw.clone().into(),
                r.at.millis().into(),
            ]
        })
        .collect();
    let done = many(
        conn,
        "INSERT INTO inbound (id, app_id, source, dedupe_key, customer_id, raw, received_at) VALUES",
        "ON CONFLICT (app_id, source, dedupe_key) DO NOTHING RETURNING id",
        &vals,
    )
    .await?;
    done.iter().map(|r| Ok(r.try_get("id")?)).collect()
}

/// Forgets raw inputs that turned out to hold nothing new (every fact in them was kept before, with
/// the raw body that first brought it).
pub async fn delete_inbound(conn: &mut AnyConnection, ids: &[String]) -> DbResult<()> {
    let vals = key_rows(ids);
    many(
        conn,
        "DELETE FROM inbound WHERE id IN (VALUES {values})",
        "",
        &vals,
    )
    .await?;
    Ok(())
}

/// Creates the customers not seen before and locks every one of them for the rest of the transaction
/// (on PostgreSQL the upsert takes the row lock; on SQLite the first write takes the database's).
pub async fn lock_customers(
    conn: &mut AnyConnection,
    keys: &[CustomerKey],
    now: Timestamp,
) -> DbResult<HashMap<CustomerKey, CustomerRow>> {
    let vals: Vec<Vec<Val>> = sorted_unique(keys)
        .into_iter()
        .map(|(a, c)| {
            vec![
                a.into(),
                c.into(),
                gateway_core::audit::GENESIS.into(),
                now.millis().into(),
            ]
        })
        .collect();
    let rows = many(
        conn,
        "INSERT INTO customers (app_id, id, audit_head, created_at, version, audit_seq, event_seq, updated_at) \
         SELECT column1, column2, column3, column4, 0, 0, 0, column4 FROM (VALUES {values}) AS v WHERE true",
        "ON CONFLICT (app_id, id) DO UPDATE SET version = customers.version \
         RETURNING app_id, id, version, audit_seq, audit_head, event_seq, next_change_at",
        &vals,
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                (row.try_get("app_id")?, row.try_get("id")?),
                CustomerRow {
                    version: row.try_get("version")?,
                    audit_seq: row.try_get("audit_seq")?,
                    audit_head: row.try_get("audit_head")?,
                    event_seq: row.try_get("event_seq")?,
                    next_change_at: row
                        .try_get::<Option<i64>, _>("next_change_at")?
                        .map(Timestamp::from_millis),
                },
            ))
        })
        .collect()
}

/// Adds manual facts; returns `(app, id)` of those not recorded before.
pub async fn insert_manual(
    conn: &mut AnyConnection,
    rows: &[ManualRow<'_>],
) -> DbResult<HashSet<(String, String)>> {
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_by(|a, b| (&a.app, &a.fact.id).cmp(&(&b.app, &b.fact.id)));
    let mut vals = Vec::with_capacity(rows.len());
    for ManualRow {
        app,
        customer,
        fact,
        actor,
        request_key,
    } in sorted
    {
        let product = match &fact.action {
            gateway_core::ManualAction::GrantProduct { product_id, .. } => {
                Some(product_id.as_str().to_owned())
            }
            _ => None,
        };
        vals.push(vec![
            app.clone().into(),
            fact.id.clone().into(),
            customer.clone().into(),
            fact.at.millis().into(),
            serde_json::to_string(&fact.action)?.into(),
            fact.reason.clone().into(),
            actor.clone().into(),
            product.into(),
            request_key.clone().into(),
        ]);
    }
    // No conflict target: a fact already recorded (by id) and a request key that made another fact
    // are both left out of the answer; the caller tells them apart.
    let done = many(
        conn,
        "INSERT INTO manual_facts (app_id, id, customer_id, at, body, reason, actor, product_id, request_key) VALUES",
        "ON CONFLICT DO NOTHING RETURNING app_id, id",
        &vals,
    )
    .await?;
    done.iter()
        .map(|r| Ok((r.try_get("app_id")?, r.try_get("id")?)))
        .collect()
}

/// Adds store actions to the outbox (rows of `id, app_id, customer_id, customer_seq, event_type,
/// payload, created_at`), each once: an id already there is left as it is.
pub async fn insert_actions(conn: &mut AnyConnection, rows: &[Vec<Val>]) -> DbResult<()> {
    many(
        conn,
        "INSERT INTO outbox (id, app_id, customer_id, customer_seq, event_type, payload, created_at) VALUES",
        "ON CONFLICT (id) DO NOTHING",
        rows,
    )
    .await?;
    Ok(())
}

/// A verified input held until its SKU is mapped.
#[derive(Debug)]
pub struct UnmappedRow {
    pub app: String,
    pub inbound_id: String,
    pub store: &'static str,
    pub sku: String,
    pub body: String,
    pub at: Timestamp,
}

/// Holds inputs for SKUs the catalog does not map yet.
pub async fn insert_unmapped(conn: &mut AnyConnection, rows: &[UnmappedRow]) -> DbResult<()> {
    let vals: Vec<Vec<Val>> = rows
        .iter()
        .map(|r| {
            vec![
                r.app.clone().into(),
                r.inbound_id.clone().into(),
                r.store.into(),
                r.sku.clone().into(),
                r.body.clone().into(),
                r.at.millis().into(),
            ]
        })
        .collect();
    many(
        conn,
        "INSERT INTO unmapped_inputs (app_id, inbound_id, store, sku, body, held_at) VALUES",
        "ON CONFLICT (app_id, inbound_id) DO NOTHING",
        &vals,
    )
    .await?;
    Ok(())
}

/// Forgets held inputs (`(app, inbound_id)`) that were decided.
pub async fn delete_unmapped(conn: &mut AnyConnection, ids: &[(String, String)]) -> DbResult<()> {
    let vals: Vec<Vec<Val>> = ids
        .iter()
        .map(|(a, i)| vec![a.clone().into(), i.clone().into()])
        .collect();
    many(
        conn,
        "DELETE FROM unmapped_inputs WHERE (app_id, inbound_id) IN (VALUES {values})",
        "",
        &vals,
    )
    .await?;
    Ok(())
}

/// A manual fact to record, with who made it and the request key that made it.
#[derive(Debug)]
pub struct ManualRow<'a> {
    pub app: String,
    pub customer: String,
    pub fact: &'a ManualFact,
    pub actor: String,
    pub request_key: Option<String>,
}

/// Of `ids` (`(app, id)`), those recorded as manual facts.
pub async fn manual_known(
    conn: &mut AnyConnection,
    ids: &[(String, String)],
) -> DbResult<HashSet<(String, String)>> {
    let vals: Vec<Vec<Val>> = ids
        .iter()
        .map(|(a, i)| vec![a.clone().into(), i.clone().into()])
        .collect();
    let rows = many(
        conn,
        "SELECT app_id, id FROM manual_facts WHERE (app_id, id) IN (VALUES {values})",
        "",
        &vals,
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("app_id")?, r.try_get("id")?)))
        .collect()
}

/// Creates purchase lineages; returns the ids of those created (a lineage another transaction created
/// first is not among them).
pub async fn insert_purchases(
    conn: &mut AnyConnection,
    rows: &[(String, String, &PurchaseFacts)],
    now: Timestamp,
) -> DbResult<HashSet<String>> {
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.0, a.2.store.as_str(), &a.2.store_transaction_id).cmp(&(
            &b.0,
            b.2.store.as_str(),
            &b.2.store_transaction_id,
        ))
    });
    let mut vals = Vec::with_capacity(rows.len());
    for (app, customer, p) in sorted {
        vals.push(vec![
            p.id.clone().into(),
            app.clone().into(),
            customer.clone().into(),
            p.store.as_str().into(),
            p.store_transaction_id.clone().into(),
            p.product_id.as_str().into(),
            p.environment.clone().into(),
            now.millis().into(),
            p.terms
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?
                .into(),
            p.stated_at().map(Timestamp::millis).into(),
        ]);
    }
    let done = many(
        conn,
        "INSERT INTO purchases (id, app_id, customer_id, store, store_transaction_id, product_id, environment, \
         created_at, terms, product_at, status, updated_at) \
         SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9, column10, \
         'pending', column8 \
         FROM (VALUES {values}) AS v WHERE true",
        "ON CONFLICT (app_id, store, store_transaction_id) DO NOTHING RETURNING id",
        &vals,
    )
    .await?;
    done.iter().map(|r| Ok(r.try_get("id")?)).collect()
}

/// A product a recorded purchase was stated to be on: the purchase's id and app, the product and
/// its terms, and when the store stated it.
pub struct StatedProduct<'a> {
    pub purchase_id: &'a str,
    pub app: &'a str,
    pub facts: &'a PurchaseFacts,
}

/// A purchase whose product changed: its id, and the products before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductChange {
    pub purchase_id: String,
    pub from: String,
    pub to: String,
}

/// Moves each purchase to the product its facts state, when they state it later than any fact
/// before them (an upgrade, or a downgrade at renewal); a renewal on the same product moves the
/// time on too. Facts older than that change nothing, so the purchase ends on the product stated
/// latest whatever order the facts arrive in. Answers the purchases whose product changed.
pub async fn follow_products(
    conn: &mut AnyConnection,
    stated: &[StatedProduct<'_>],
) -> DbResult<Vec<ProductChange>> {
    let mut sorted: Vec<&StatedProduct> = stated
        .iter()
        .filter(|s| s.facts.stated_at().is_some())
        .collect();
    if sorted.is_empty() {
        return Ok(Vec::new());
    }
    // One row per purchase: the product stated latest.
    sorted.sort_by(|a, b| {
        (a.app, a.purchase_id, b.facts.stated_at()).cmp(&(
            b.app,
            b.purchase_id,
            a.facts.stated_at(),
        ))
    });
    sorted.dedup_by(|a, b| (a.app, a.purchase_id) == (b.app, b.purchase_id));
    let mut vals = Vec::with_capacity(sorted.len());
    for s in &sorted {
        let at = s.facts.stated_at().map(Timestamp::millis);
        vals.push(vec![
            s.purchase_id.into(),
            s.app.into(),
            s.facts.product_id.as_str().into(),
            s.facts
                .terms
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?
                .into(),
            at.into(),
        ]);
    }
    let before = many(
        conn,
        "SELECT p.id, p.product_id FROM purchases p JOIN (VALUES {values}) AS v \
         ON p.id = v.column1 AND p.app_id = v.column2",
        "WHERE p.product_at IS NULL OR p.product_at < v.column5",
        &vals,
    )
    .await?;
    if before.is_empty() {
        return Ok(Vec::new());
    }
    let from: HashMap<String, String> = before
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("product_id")?)))
        .collect::<DbResult<_>>()?;
    let moving: Vec<Vec<Val>> = sorted
        .iter()
        .zip(vals)
        .filter(|(s, _)| from.contains_key(s.purchase_id))
        .map(|(_, v)| v)
        .collect();
    many(
        conn,
        "UPDATE purchases SET product_id = v.column3, terms = v.column4, product_at = v.column5 \
         FROM (VALUES {values}) AS v",
        "WHERE purchases.id = v.column1 AND purchases.app_id = v.column2",
        &moving,
    )
    .await?;
    let changes: Vec<ProductChange> = sorted
        .iter()
        .filter_map(|s| {
            let from = from.get(s.purchase_id)?;
            (*from != s.facts.product_id.as_str()).then(|| ProductChange {
                purchase_id: s.purchase_id.to_owned(),
                from: from.clone(),
                to: s.facts.product_id.to_string(),
            })
        })
        .collect();
    Ok(changes)
}

/// Keeps that customers were seen with store accounts: `(app, store, account, customer)`; a later
/// sighting takes an account over (see [`super::orders::keep_account_sighting`]).
pub async fn keep_sightings(
    conn: &mut AnyConnection,
    rows: &[(String, String, String, String)],
    now: Timestamp,
) -> DbResult<()> {
    let mut sorted: Vec<&(String, String, String, String)> = rows.iter().collect();
    sorted.sort();
    // One row per account: PostgreSQL updates a row once per statement.
    sorted.dedup_by(|a, b| (&a.0, &a.1, &a.2) == (&b.0, &b.1, &b.2));
    let vals: Vec<Vec<Val>> = sorted
        .iter()
        .map(|(app, store, account, customer)| {
            vec![
                app.clone().into(),
                store.clone().into(),
                account.clone().into(),
                customer.clone().into(),
                now.millis().into(),
            ]
        })
        .collect();
    many(
        conn,
        "INSERT INTO account_sightings (app_id, store, account_id, customer_id, seen_at) VALUES",
        "ON CONFLICT (app_id, store, account_id) DO UPDATE \
         SET customer_id = excluded.customer_id, seen_at = excluded.seen_at \
         WHERE excluded.seen_at >= account_sightings.seen_at",
        &vals,
    )
    .await?;
    Ok(())
}

/// A fact held for a lineage no customer held when it arrived.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub lineage: LineageKey,
    pub event: StoreEvent,
    pub inbound_id: Option<String>,
}

/// Takes the orphan facts of `lineages` out of the holding table and returns them.
pub async fn take_orphans(
    conn: &mut AnyConnection,
    lineages: &[LineageKey],
) -> DbResult<Vec<Orphan>> {
    let vals = key_rows(lineages);
    let rows = many(
        conn,
        "DELETE FROM orphan_events WHERE (app_id, store, lineage) IN (VALUES {values})",
        "RETURNING app_id, store, lineage, dedupe_key, occurred_at, body, inbound_id",
        &vals,
    )
    .await?;
    let mut out: Vec<Orphan> = rows
        .iter()
        .map(|r| {
            Ok(Orphan {
                lineage: (
                    r.try_get("app_id")?,
                    r.try_get("store")?,
                    r.try_get("lineage")?,
                ),
                event: StoreEvent {
                    dedupe_key: r.try_get("dedupe_key")?,
                    occurred_at: Timestamp::from_millis(r.try_get("occurred_at")?),
                    kind: json_col(r, "body")?,
                },
                inbound_id: r.try_get("inbound_id")?,
            })
        })
        .collect::<DbResult<_>>()?;
    out.sort_by(|a, b| a.event.dedupe_key.cmp(&b.event.dedupe_key));
    Ok(out)
}

/// Keeps facts about lineages no customer holds yet; returns how many were new.
pub async fn insert_orphans(
    conn: &mut AnyConnection,
    rows: &[Orphan],
    now: Timestamp,
) -> DbResult<usize> {
    let mut sorted: Vec<&Orphan> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.lineage.0, &a.event.dedupe_key).cmp(&(&b.lineage.0, &b.event.dedupe_key))
    });
    let mut vals = Vec::with_capacity(rows.len());
    for o in sorted {
        vals.push(vec![
            o.lineage.0.clone().into(),
            o.lineage.1.clone().into(),
            o.lineage.2.clone().into(),
            o.event.dedupe_key.clone().into(),
            o.event.occurred_at.millis().into(),
            serde_json::to_string(&o.event.kind)?.into(),
            o.inbound_id.clone().into(),
            now.millis().into(),
        ]);
    }
    let done = many(
        conn,
        "INSERT INTO orphan_events (app_id, store, lineage, dedupe_key, occurred_at, body, inbound_id, created_at) VALUES",
        "ON CONFLICT (app_id, dedupe_key) DO NOTHING RETURNING dedupe_key",
        &vals,
    )
    .await?;
    Ok(done.len())
}

/// A store event to add to a purchase.
#[derive(Debug, Clone)]
pub struct EventRow<'a> {
    pub app: &'a str,
    pub purchase_id: &'a str,
    pub event: &'a StoreEvent,
    pub inbound_id: Option<&'a str>,
}

/// Adds store events; returns `(app, dedupe_key)` of those not recorded before.
pub async fn insert_events(
    conn: &mut AnyConnection,
    rows: &[EventRow<'_>],
    now: Timestamp,
) -> DbResult<HashSet<(String, String)>> {
    let mut sorted: Vec<&EventRow> = rows.iter().collect();
    sorted.sort_by(|a, b| (a.app, &a.event.dedupe_key).cmp(&(b.app, &b.event.dedupe_key)));
    // One event can reach a batch twice (a notification and an orphan copy of it): keep the first.
    sorted.dedup_by(|a, b| a.app == b.app && a.event.dedupe_key == b.event.dedupe_key);
    let mut vals = Vec::with_capacity(sorted.len());
    for r in sorted {
        vals.push(vec![
            r.app.into(),
            r.event.dedupe_key.clone().into(),
            r.purchase_id.into(),
            r.event.occurred_at.millis().into(),
            r.event.kind.name().into(),
            serde_json::to_string(&r.event.kind)?.into(),
            r.inbound_id.map(str::to_owned).into(),
            now.millis().into(),
        ]);
    }
    let done = many(
        conn,
        "INSERT INTO store_events (app_id, dedupe_key, purchase_id, occurred_at, kind, body, inbound_id, created_at) VALUES",
        "ON CONFLICT (app_id, dedupe_key) DO NOTHING RETURNING app_id, dedupe_key",
        &vals,
    )
    .await?;
    done.iter()
        .map(|r| Ok((r.try_get("app_id")?, r.try_get("dedupe_key")?)))
        .collect()
}

/// What a decision reads of a customer.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub facts: CustomerFacts,
    /// The recorded state (views and ledger positions).
    pub state: CustomerState,
    pub balances: BTreeMap<Currency, i64>,
}

/// Reads the facts and recorded state of `customers`, in four statements.
pub async fn load(
    conn: &mut AnyConnection,
    customers: &[CustomerKey],
) -> DbResult<HashMap<CustomerKey, Loaded>> {
    let keys = sorted_unique(customers);
    let vals = key_rows(&keys);
    let mut out: HashMap<CustomerKey, Loaded> =
        keys.into_iter().map(|k| (k, Loaded::default())).collect();

    // The key list is joined rather than tested with `IN`: with the ORDER BY, SQLite's planner
    // otherwise prefers an index on `app_id` alone and reads every purchase of the app.
    let rows = many(
        conn,
        "SELECT p.app_id, p.customer_id, p.id, p.store, p.product_id, p.store_transaction_id, p.environment, \
         p.terms, p.view, p.settled, e.dedupe_key, e.occurred_at, e.body \
         FROM (VALUES {values}) AS k \
         JOIN purchases p ON p.app_id = k.column1 AND p.customer_id = k.column2 \
         LEFT JOIN store_events e ON e.purchase_id = p.id \
           AND (p.settled_from IS NULL OR e.occurred_at >= p.settled_from)",
        "ORDER BY p.app_id, p.customer_id, p.id, e.occurred_at, e.dedupe_key",
        &vals,
    )
    .await?;
    for row in &rows {
        let key: CustomerKey = (row.try_get("app_id")?, row.try_get("customer_id")?);
        let Some(loaded) = out.get_mut(&key) else {
            continue;
        };
        let purchases = &mut loaded.facts.purchases;
        let pid: String = row.try_get("id")?;
        if purchases.last().is_none_or(|p| p.id != pid) {
            let store: String = row.try_get("store")?;
            purchases.push(PurchaseFacts {
                id: pid,
                store: Store::parse(&store)
                    .ok_or_else(|| DbError::Corrupt(format!("store {store:?}")))?,
                product_id: parsed_col(row, "product_id")?,
                store_transaction_id: row.try_get("store_transaction_id")?,
                environment: row.try_get("environment")?,
                terms: row
                    .try_get::<Option<String>, _>("terms")?
                    .map(|t| serde_json::from_str(&t))
                    .transpose()?,
                settled: row
                    .try_get::<Option<String>, _>("settled")?
                    .map(|t| serde_json::from_str(&t))
                    .transpose()?,
                events: Vec::new(),
            });
            if let Some(view) = row.try_get::<Option<String>, _>("view")? {
                let v: PurchaseView = serde_json::from_str(&view)?;
                loaded.state.purchases.insert(v.id.clone(), v);
            }
        }
        let dedupe: Option<String> = row.try_get("dedupe_key")?;
        if let (Some(dedupe_key), Some(p)) = (dedupe, purchases.last_mut()) {
            p.events.push(StoreEvent {
                dedupe_key,
                occurred_at: Timestamp::from_millis(row.try_get("occurred_at")?),
                kind: json_col(row, "body")?,
            });
        }
    }

    let rows = many(
        conn,
        "SELECT m.app_id, m.customer_id, m.id, m.at, m.body, m.reason FROM (VALUES {values}) AS k \
         JOIN manual_facts m ON m.app_id = k.column1 AND m.customer_id = k.column2",
        "ORDER BY m.app_id, m.customer_id, m.at, m.id",
        &vals,
    )
    .await?;
    for row in &rows {
        let key: CustomerKey = (row.try_get("app_id")?, row.try_get("customer_id")?);
        if let Some(loaded) = out.get_mut(&key) {
            loaded.facts.manual.push(ManualFact {
                id: row.try_get("id")?,
                at: Timestamp::from_millis(row.try_get("at")?),
                action: json_col(row, "body")?,
                reason: row.try_get("reason")?,
            });
        }
    }

    let rows = many(
        conn,
        "SELECT app_id, customer_id, view FROM entitlements WHERE (app_id, customer_id) IN (VALUES {values})",
        "",
        &vals,
    )
    .await?;
    for row in &rows {
        let key: CustomerKey = (row.try_get("app_id")?, row.try_get("customer_id")?);
        if let Some(loaded) = out.get_mut(&key) {
            let v: EntitlementView = json_col(row, "view")?;
            loaded.state.entitlements.insert(v.id.clone(), v);
        }
    }

    // Balances need every leg of the customer account; positions only those of purchases and grants,
    // so spends are summed as one source.
    let rows = many(
        conn,
        "SELECT app_id, customer_id, source_kind, \
         CASE WHEN source_kind IN ('purchase', 'grant') THEN source_id ELSE '' END AS source, \
         currency, account, CAST(SUM(amount) AS BIGINT) AS total FROM ledger_entries \
         WHERE (app_id, customer_id) IN (VALUES {values})",
        "GROUP BY app_id, customer_id, source_kind, \
         CASE WHEN source_kind IN ('purchase', 'grant') THEN source_id ELSE '' END, currency, account",
        &vals,
    )
    .await?;
    for row in &rows {
        let key: CustomerKey = (row.try_get("app_id")?, row.try_get("customer_id")?);
        let Some(loaded) = out.get_mut(&key) else {
            continue;
        };
        let Ok(customer) = key.1.parse::<gateway_core::AppUserId>() else {
            return Err(DbError::Corrupt(format!("customer id {:?}", key.1)));
        };
        let currency: Currency = parsed_col(row, "currency")?;
        let account: String = row.try_get("account")?;
        if account != customer_account(&customer, &currency) {
            continue;
        }
        let total: i64 = row.try_get("total")?;
        *loaded.balances.entry(currency.clone()).or_default() += total;
        let kind: String = row.try_get("source_kind")?;
        if kind == "purchase" || kind == "grant" {
            let source = LedgerSource::from_parts(&kind, row.try_get("source")?)
                .ok_or_else(|| DbError::Corrupt(format!("ledger source kind {kind:?}")))?;
            loaded.state.ledger.insert((source, currency), total);
        }
    }
    Ok(out)
}

/// The catalog each app's decisions need: the products named, and every product that grants one of
/// the entitlements named (a manual revoke or entitlement grant is judged against them).
pub async fn catalogs(
    conn: &mut AnyConnection,
    products: &[(String, String)],
    entitlements: &[(String, String)],
) -> DbResult<HashMap<String, Catalog>> {
    let mut wanted: Vec<(String, String)> = products.to_vec();
    if !entitlements.is_empty() {
        let vals = key_rows(entitlements);
        let rows = many(
            conn,
            "SELECT app_id, product_id FROM product_entitlements WHERE (app_id, entitlement_id) IN (VALUES {values})",
            "",
            &vals,
        )
        .await?;
        for r in &rows {
            wanted.push((r.try_get("app_id")?, r.try_get("product_id")?));
        }
    }
    let vals = key_rows(&wanted);
    let rows = many(
        conn,
        "SELECT app_id, definition FROM products WHERE (app_id, id) IN (VALUES {values})",
        "",
        &vals,
    )
    .await?;
    let mut out: HashMap<String, Catalog> = HashMap::new();
    for r in &rows {
        let p: Product = json_col(r, "definition")?;
        out.entry(r.try_get("app_id")?)
            .or_default()
            .insert(p.id.clone(), p);
    }
    Ok(out)
}

/// New purchase views.
pub async fn save_purchase_views(
    conn: &mut AnyConnection,
    views: &[(String, &PurchaseView)],
    now: Timestamp,
) -> DbResult<()> {
    let mut sorted: Vec<_> = views.iter().collect();
    sorted.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    let mut vals = Vec::with_capacity(views.len());
    for (app, v) in sorted {
        vals.push(vec![
            v.id.clone().into(),
            app.clone().into(),
            v.status.as_str().into(),
            v.expires_at.map(Timestamp::millis).into(),
            serde_json::to_string(v)?.into(),
            now.millis().into(),
        ]);
    }
    many(
        conn,
        "UPDATE purchases SET status = v.column3, expires_at = v.column4, view = v.column5, \
         updated_at = v.column6 FROM (VALUES {values}) AS v",
        "WHERE purchases.id = v.column1 AND purchases.app_id = v.column2",
        &vals,
    )
    .await?;
    Ok(())
}

/// Keeps purchases' fact summaries: `(purchase id, summary)`; each is read from its latest renewal.
pub async fn save_settled(conn: &mut AnyConnection, rows: &[(&str, &Settled)]) -> DbResult<()> {
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut vals = Vec::with_capacity(rows.len());
    for (id, settled) in sorted {
        vals.push(vec![
            (*id).into(),
            serde_json::to_string(settled)?.into(),
            settled.read_from().map(Timestamp::millis).into(),
        ]);
    }
    many(
        conn,
        "UPDATE purchases SET settled = v.column2, settled_from = v.column3 FROM (VALUES {values}) AS v",
        "WHERE purchases.id = v.column1",
        &vals,
    )
    .await?;
    Ok(())
}

/// Removes entitlements nothing grants any more: `(app, customer, entitlement)`.
pub async fn delete_entitlements(
    conn: &mut AnyConnection,
    keys: &[(String, String, String)],
) -> DbResult<()> {
    let vals = key_rows(keys);
    many(
        conn,
        "DELETE FROM entitlements WHERE (app_id, customer_id, id) IN (VALUES {values})",
        "",
        &vals,
    )
    .await?;
    Ok(())
}

/// Writes entitlement views: `(app, customer, view)`.
pub async fn save_entitlements(
    conn: &mut AnyConnection,
    views: &[(String, String, &EntitlementView)],
    now: Timestamp,
) -> DbResult<()> {
    let mut sorted: Vec<_> = views.iter().collect();
    sorted.sort_by(|a, b| (&a.0, &a.1, &a.2.id).cmp(&(&b.0, &b.1, &b.2.id)));
    let mut vals = Vec::with_capacity(views.len());
    for (app, customer, v) in sorted {
        vals.push(vec![
            app.clone().into(),
            customer.clone().into(),
            v.id.as_str().into(),
            v.status.as_str().into(),
            v.expires_at.map(Timestamp::millis).into(),
            serde_json::to_string(v)?.into(),
            now.millis().into(),
        ]);
    }
    many(
        conn,
        "INSERT INTO entitlements (app_id, customer_id, id, status, expires_at, view, updated_at) VALUES",
        "ON CONFLICT (app_id, customer_id, id) DO UPDATE SET status = excluded.status, \
         expires_at = excluded.expires_at, view = excluded.view, updated_at = excluded.updated_at",
        &vals,
    )
    .await?;
    Ok(())
}

/// Inserts prepared rows into `table (columns)`: ledger legs, outbox events and audit rows, which are
/// only ever appended.
pub async fn append(
    conn: &mut AnyConnection,
    table_and_columns: &str,
    rows: &[Vec<Val>],
) -> DbResult<()> {
    many(
        conn,
        &format!("INSERT INTO {table_and_columns} VALUES"),
        "",
        rows,
    )
    .await?;
    Ok(())
}

/// The ledger table and its columns, for [`append`].
pub const LEDGER: &str = "ledger_entries (id, txn_id, app_id, customer_id, account, currency, amount, \
     source_kind, source_id, reason, created_at)";
/// The outbox table and its columns, for [`append`].
pub const OUTBOX: &str =
    "outbox (id, app_id, customer_id, customer_seq, event_type, payload, created_at)";
/// The audit table and its columns, for [`append`].
pub const AUDIT: &str =
    "audit_log (app_id, customer_id, seq, at, kind, cause, detail, prev_hash, hash)";

/// A customer row to write back after its decision.
#[derive(Debug, Clone)]
pub struct CustomerSave {
    pub app: String,
    pub customer: String,
    pub row: CustomerRow,
    /// When the clock alone next changes the customer.
    pub next: Option<Timestamp>,
    pub now: Timestamp,
}

/// Writes customer rows after their decisions.
pub async fn save_customers(conn: &mut AnyConnection, rows: &[CustomerSave]) -> DbResult<()> {
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_by(|a, b| (&a.app, &a.customer).cmp(&(&b.app, &b.customer)));
    let vals: Vec<Vec<Val>> = sorted
        .into_iter()
        .map(
            |CustomerSave {
                 app,
                 customer,
                 row,
                 next,
                 now,
             }| {
                vec![
                    app.clone().into(),
                    customer.clone().into(),
                    row.version.into(),
                    row.audit_seq.into(),
                    row.audit_head.clone().into(),
                    row.event_seq.into(),
                    next.map(Timestamp::millis).into(),
                    now.millis().into(),
                ]
            },
        )
        .collect();
    many(
        conn,
        "UPDATE customers SET version = v.column3, audit_seq = v.column4, audit_head = v.column5, \
         event_seq = v.column6, next_change_at = v.column7, updated_at = v.column8 \
         FROM (VALUES {values}) AS v",
        "WHERE customers.app_id = v.column1 AND customers.id = v.column2",
        &vals,
    )
    .await?;
    Ok(())
}

/// A key whose parts are bound as text, one parameter each.
trait Key: Ord + Clone {
    fn vals(self) -> Vec<Val>;
}

impl Key for String {
    fn vals(self) -> Vec<Val> {
        vec![self.into()]
    }
}

impl Key for (String, String) {
    fn vals(self) -> Vec<Val> {
        vec![self.0.into(), self.1.into()]
    }
}

impl Key for (String, String, String) {
    fn vals(self) -> Vec<Val> {
        vec![self.0.into(), self.1.into(), self.2.into()]
    }
}

/// The rows of a `VALUES` list of keys: sorted (lock order) and without repeats.
fn key_rows<K: Key>(keys: &[K]) -> Vec<Vec<Val>> {
    sorted_unique(keys).into_iter().map(Key::vals).collect()
}

fn sorted_unique<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use sqlx::Row;

    use super::*;
    use crate::db::Db;

    /// Every statement `many` ran in this test binary.
    static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

    pub(super) fn record(sql: &str) {
        RAN.lock().unwrap().push(sql.to_owned());
    }

    fn keys2() -> Vec<CustomerKey> {
        vec![("a".into(), "c1".into()), ("a".into(), "c2".into())]
    }

    fn lineages2() -> Vec<LineageKey> {
        vec![
            ("a".into(), "app_store".into(), "1".into()),
            ("a".into(), "app_store".into(), "2".into()),
        ]
    }

    /// A batch's cost must not grow with the tables: every statement that looks rows up by a key
    /// list must search an index on the whole key, never scan a table or an index on `app_id` alone.
    /// SQLite plans without statistics, so the plans of an empty database are the plans of a full one.
    #[tokio::test]
    async fn batch_lookups_search_by_their_whole_key_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}/plans.db", dir.path().display()))
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let mut conn = db.writer().acquire().await.unwrap();
        let conn = conn.as_mut();
        owners(conn, &lineages2()).await.unwrap();
        take_orphans(conn, &lineages2()).await.unwrap();
        let skus = vec![("a".to_owned(), "s1".to_owned()), ("a".into(), "s2".into())];
        products_by_sku(conn, "app_store", &skus).await.unwrap();
        order_customers(conn, &skus).await.unwrap();
        load(conn, &keys2()).await.unwrap();
        catalogs(conn, &skus, &skus).await.unwrap();
        let ents = vec![
            ("a".to_owned(), "c1".to_owned(), "e".to_owned()),
            ("a".into(), "c2".into(), "e".into()),
        ];
        delete_entitlements(conn, &ents).await.unwrap();

        let ran: Vec<String> = RAN.lock().unwrap().clone();
        assert!(ran.len() >= 10, "the lookups went through `many`: {ran:?}");
        let mut bad = Vec::new();
        for sql in ran {
            let plan = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
            for row in plan {
                let detail: String = row.try_get("detail").unwrap();
                let scans_table = detail.starts_with("SCAN ")
                    && !["SCAN v", "SCAN k", "SCAN CONSTANT ROW"].contains(&detail.as_str())
                    && !detail.ends_with("VALUES CLAUSE");
                if scans_table || detail.ends_with("(app_id=?)") {
                    bad.push(format!("{detail}\n    in {sql}"));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "lookups that read more than their keys:\n{}",
            bad.join("\n")
        );
    }
}
