//! `orders`: the server-side start of a purchase, which issues the tokens that tie a store purchase back
//! to the customer (`appAccountToken` for Apple, `obfuscatedAccountId` for Play).

use gateway_core::{AppId, AppUserId, ProductId, Timestamp};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Db, DbResult, json_col};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub app_id: AppId,
    pub customer_id: AppUserId,
    pub app_account_token: String,
    pub obfuscated_account_id: String,
    pub items: Vec<ProductId>,
    pub country: Option<String>,
    pub status: String,
    pub created_at: Timestamp,
}

pub async fn insert(db: &Db, order: &Order) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO orders (id, app_id, customer_id, app_account_token, obfuscated_account_id, items, country, \
         status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&order.id)
    .bind(order.app_id.as_str())
    .bind(order.customer_id.as_str())
    .bind(&order.app_account_token)
    .bind(&order.obfuscated_account_id)
    .bind(serde_json::to_string(&order.items)?)
    .bind(order.country.as_deref())
    .bind(&order.status)
    .bind(order.created_at.millis())
    .execute(db.writer())
    .await?;
    Ok(())
}

/// An order of an app by its id.
pub async fn by_id(db: &Db, app: &AppId, id: &str) -> DbResult<Option<Order>> {
    let row = sqlx::query(
        "SELECT id, app_id, customer_id, app_account_token, obfuscated_account_id, items, country, status, created_at \
         FROM orders WHERE app_id = $1 AND id = $2",
    )
    .bind(app.as_str())
    .bind(id)
    .fetch_optional(db.reader())
    .await?;
    row.map(|r| from_row(&r)).transpose()
}

fn from_row(r: &sqlx::any::AnyRow) -> DbResult<Order> {
    Ok(Order {
        id: r.try_get("id")?,
        app_id: super::parsed_col(r, "app_id")?,
        customer_id: super::parsed_col(r, "customer_id")?,
        app_account_token: r.try_get("app_account_token")?,
        obfuscated_account_id: r.try_get("obfuscated_account_id")?,
        items: json_col(r, "items")?,
        country: r.try_get("country")?,
        status: r.try_get("status")?,
        created_at: Timestamp::from_millis(r.try_get("created_at")?),
    })
}

/// An order of `app` that issued `token`, as its appAccountToken or its obfuscatedAccountId.
pub async fn by_app_account_token(db: &Db, app: &AppId, token: &str) -> DbResult<Option<Order>> {
    let row = sqlx::query(
        "SELECT id, app_id, customer_id, app_account_token, obfuscated_account_id, items, country, status, created_at \
         FROM orders WHERE app_id = $1 AND (app_account_token = $2 OR obfuscated_account_id = $2) \
         ORDER BY created_at LIMIT 1",
    )
    .bind(app.as_str())
    .bind(token.to_ascii_lowercase())
    .fetch_optional(db.reader())
    .await?;
    row.map(|r| {
        Ok(Order {
            id: r.try_get("id")?,
            app_id: super::parsed_col(&r, "app_id")?,
            customer_id: super::parsed_col(&r, "customer_id")?,
            app_account_token: r.try_get("app_account_token")?,
            obfuscated_account_id: r.try_get("obfuscated_account_id")?,
            items: json_col(&r, "items")?,
            country: r.try_get("country")?,
            status: r.try_get("status")?,
            created_at: Timestamp::from_millis(r.try_get("created_at")?),
        })
    })
    .transpose()
}

/// A customer's account at `store` (a Stripe customer), if one was made.
pub async fn store_account(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
    store: &str,
) -> DbResult<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT account_id FROM store_accounts WHERE app_id = $1 AND customer_id = $2 AND store = $3",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(store)
    .fetch_optional(db.reader())
    .await?)
}

/// Keeps a customer's account at `store`; the first kept stays when two checkouts raced. Answers
/// the one kept.
pub async fn keep_store_account(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
    (store, account): (&str, &str),
    now: Timestamp,
) -> DbResult<String> {
    sqlx::query(
        "INSERT INTO store_accounts (app_id, customer_id, store, account_id, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app_id, customer_id, store) DO NOTHING",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(store)
    .bind(account)
    .bind(now.millis())
    .execute(db.writer())
    .await?;
    Ok(sqlx::query_scalar(
        "SELECT account_id FROM store_accounts WHERE app_id = $1 AND customer_id = $2 AND store = $3",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(store)
    .fetch_one(db.writer())
    .await?)
}

/// Keeps that `customer` was seen with the store account `account` (an Apple `appTransactionId`);
/// a later sighting by another customer takes the account over.
pub async fn keep_account_sighting(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
    (store, account): (&str, &str),
    now: Timestamp,
) -> DbResult<()> {
    let mut conn = db.writer().acquire().await?;
    let row = (
        app.to_string(),
        store.to_owned(),
        account.to_owned(),
        customer.to_string(),
    );
    super::batch::keep_sightings(&mut conn, &[row], now).await
}

/// The customer the store account `account` was last seen with, if any.
pub async fn account_holder(
    db: &Db,
    app: &AppId,
    (store, account): (&str, &str),
) -> DbResult<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT customer_id FROM account_sightings WHERE app_id = $1 AND store = $2 AND account_id = $3",
    )
    .bind(app.as_str())
    .bind(store)
    .bind(account)
    .fetch_optional(db.reader())
    .await?)
}

/// The store account `customer` was last seen with, if any.
pub async fn account_of(
    db: &Db,
    app: &AppId,
    customer: &AppUserId,
    store: &str,
) -> DbResult<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT account_id FROM account_sightings WHERE app_id = $1 AND customer_id = $2 AND store = $3 \
         ORDER BY seen_at DESC LIMIT 1",
    )
    .bind(app.as_str())
    .bind(customer.as_str())
    .bind(store)
    .fetch_optional(db.reader())
    .await?)
}
