//! `ledger_entries`: two legs per transaction (see `gateway_core::ledger`). A balance is the sum of the
//! customer account's legs; a source's position is the sum of its customer legs.

use std::collections::BTreeMap;

use gateway_core::{
    AppId, AppUserId, Currency, Timestamp,
    ledger::{LedgerSource, customer_account, legs},
};
use sqlx::{AnyConnection, Row};

use super::{DbError, DbResult, new_id, parsed_col};

/// Records one movement of `amount` (positive: to the customer) as a balanced pair of legs. Returns
/// the transaction id.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
    currency: &Currency,
    source: &LedgerSource,
    amount: i64,
    reason: Option<&str>,
    now: Timestamp,
) -> DbResult<String> {
    let txn = new_id("ltx");
    for leg in legs(customer, currency, source, amount) {
        sqlx::query(
            "INSERT INTO ledger_entries (id, txn_id, app_id, customer_id, account, currency, amount, \
             source_kind, source_id, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(new_id("led"))
        .bind(&txn)
        .bind(app.as_str())
        .bind(customer.as_str())
        .bind(&leg.account)
        .bind(currency.as_str())
        .bind(leg.amount)
        .bind(source.kind())
        .bind(source.id())
        .bind(reason)
        .bind(now.millis())
        .execute(&mut *conn)
        .await?;
    }
    Ok(txn)
}

/// The customer's balance per currency.
pub async fn balances(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
) -> DbResult<BTreeMap<Currency, i64>> {
    let prefix = format!("customer:{customer}:");
    let rows = sqlx::query(
        "SELECT currency, account, CAST(SUM(amount) AS BIGINT) AS total FROM ledger_entries \
         WHERE app_id = $1 AND customer_id = $2 GROUP BY currency, account",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut out = BTreeMap::new();
    for row in &rows {
        let account: String = row.try_get("account")?;
        if !account.starts_with(&prefix) {
            continue;
        }
        let currency: Currency = parsed_col(row, "currency")?;
        out.insert(currency, row.try_get::<i64, _>("total")?);
    }
    Ok(out)
}

/// The net position of every purchase and grant source of the customer.
pub async fn derived_positions(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
) -> DbResult<BTreeMap<(LedgerSource, Currency), i64>> {
    let rows = sqlx::query(
        "SELECT source_kind, source_id, currency, account, CAST(SUM(amount) AS BIGINT) AS total FROM ledger_entries \
         WHERE app_id = $1 AND customer_id = $2 AND source_kind IN ('purchase', 'grant') \
         GROUP BY source_kind, source_id, currency, account",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut out = BTreeMap::new();
    for row in &rows {
        let currency: Currency = parsed_col(row, "currency")?;
        let account: String = row.try_get("account")?;
        if account != customer_account(customer, &currency) {
            continue;
        }
        let kind: String = row.try_get("source_kind")?;
        let source = LedgerSource::from_parts(&kind, row.try_get("source_id")?)
            .ok_or_else(|| DbError::Corrupt(format!("ledger source kind {kind:?}")))?;
        out.insert((source, currency), row.try_get::<i64, _>("total")?);
    }
    Ok(out)
}

/// The customer-side amount already spent under `key`, if a spend with that key exists.
pub async fn spend_by_key(
    conn: &mut AnyConnection,
    app: &AppId,
    customer: &AppUserId,
    key: &str,
) -> DbResult<Option<(String, Currency, i64)>> {
    let row = sqlx::query(
        "SELECT txn_id, currency, amount, account FROM ledger_entries WHERE app_id = $1 AND customer_id = $2 \
         AND source_kind = 'spend' AND source_id = $3 AND account LIKE 'customer:%'",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some((
        row.try_get("txn_id")?,
        parsed_col(&row, "currency")?,
        row.try_get("amount")?,
    )))
}
