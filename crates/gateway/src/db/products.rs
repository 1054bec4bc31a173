//! The catalog tables: `products` (the definition as JSON plus the columns queries need),
//! `product_skus` (one store SKU names one product of an app) and `product_entitlements`.

use gateway_core::{AppId, EntitlementId, Product, ProductId, Timestamp};
use sqlx::AnyConnection;

use super::{Db, DbError, DbResult, json_col};

/// Why a product could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveProductError {
    #[error("the {store} SKU {sku:?} already belongs to product {owner}")]
    SkuTaken {
        store: &'static str,
        sku: String,
        owner: String,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for SaveProductError {
    fn from(e: sqlx::Error) -> Self {
        SaveProductError::Db(e.into())
    }
}

/// The store SKUs that name `p`. A Play subscription is named by product and base plan together
/// (`premium:monthly`), so that two base plans of one Play product can be two products here.
fn skus(p: &Product) -> Vec<(&'static str, String)> {
    let s = &p.store_skus;
    let play = s.play_store.as_ref().map(|sku| match &s.play_base_plan {
        Some(plan) => format!("{sku}:{plan}"),
        None => sku.clone(),
    });
    [
        ("app_store", s.app_store.clone()),
        ("play_store", play),
        ("stripe", s.stripe_price.clone()),
    ]
    .into_iter()
    .filter_map(|(store, sku)| sku.map(|sku| (store, sku)))
    .collect()
}

/// True when two definitions of a product grant differently. Terms (credits, time boxes) are not
/// compared: a purchase keeps the terms it was sold with.
fn grants_differ(a: &Product, b: &Product) -> bool {
    a.kind != b.kind || a.entitlements != b.entitlements
}

/// Inserts or replaces a product, with its SKU and entitlement indexes, on `conn` (inside the caller's
/// transaction). Returns true when the product is new.
///
/// The product row is written first: on PostgreSQL its lock orders concurrent writers of one product.
/// SKUs are claimed with `ON CONFLICT DO NOTHING`, so a SKU raced for by two products is refused
/// cleanly (`SkuTaken`) instead of failing the transaction.
pub async fn upsert(
    conn: &mut AnyConnection,
    app: &AppId,
    product: &Product,
    now: Timestamp,
) -> Result<bool, SaveProductError> {
    let definition = serde_json::to_string(product).map_err(DbError::from)?;
    let existing: Option<String> =
        sqlx::query_scalar("SELECT definition FROM products WHERE app_id = $1 AND id = $2")
            .bind(app.as_str())
            .bind(product.id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    sqlx::query(
        "INSERT INTO products (app_id, id, kind, definition, active, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) \
         ON CONFLICT (app_id, id) DO UPDATE SET kind = excluded.kind, definition = excluded.definition, \
         active = excluded.active, updated_at = excluded.updated_at",
    )
    .bind(app.as_str())
    .bind(product.id.as_str())
    .bind(product.kind.as_str())
    .bind(definition)
    .bind(i64::from(product.active))
    .bind(now.millis())
    .execute(&mut *conn)
    .await?;
    let previous: Option<Product> = existing
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(DbError::from)?;

    for sql in [
        "DELETE FROM product_skus WHERE app_id = $1 AND product_id = $2",
        "DELETE FROM product_entitlements WHERE app_id = $1 AND product_id = $2",
    ] {
        sqlx::query(sql)
            .bind(app.as_str())
            .bind(product.id.as_str())
            .execute(&mut *conn)
            .await?;
    }
    for (store, sku) in skus(product) {
        let claimed = sqlx::query(
            "INSERT INTO product_skus (app_id, store, sku, product_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app_id, store, sku) DO NOTHING",
        )
        .bind(app.as_str())
        .bind(store)
        .bind(&sku)
        .bind(product.id.as_str())
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT product_id FROM product_skus WHERE app_id = $1 AND store = $2 AND sku = $3",
            )
            .bind(app.as_str())
            .bind(store)
            .bind(&sku)
            .fetch_optional(&mut *conn)
            .await?;
            let owner = owner.unwrap_or_else(|| "another product".to_owned());
            return Err(SaveProductError::SkuTaken { store, sku, owner });
        }
    }
    for e in &product.entitlements {
        sqlx::query(
            "INSERT INTO product_entitlements (app_id, entitlement_id, product_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(app.as_str())
        .bind(e.id.as_str())
        .bind(product.id.as_str())
        .execute(&mut *conn)
        .await?;
    }
    // What a product grants decides its holders' state: a change re-derives them (see the expiry job).
    if let Some(old) = previous.as_ref().filter(|old| grants_differ(old, product)) {
        let ids: Vec<_> = old
            .entitlements
            .iter()
            .chain(&product.entitlements)
            .map(|e| e.id.clone())
            .collect();
        super::customers::mark_product_holders_due(conn, app, &product.id, &ids, now).await?;
    }
    Ok(previous.is_none())
}

pub async fn get(db: &Db, app: &AppId, id: &ProductId) -> DbResult<Option<Product>> {
    let row = sqlx::query("SELECT definition FROM products WHERE app_id = $1 AND id = $2")
        .bind(app.as_str())
        .bind(id.as_str())
        .fetch_optional(db.reader())
        .await?;
    row.as_ref().map(|r| json_col(r, "definition")).transpose()
}

/// All products of an app, ordered by id; only active ones when `active_only`.
pub async fn list(db: &Db, app: &AppId, active_only: bool) -> DbResult<Vec<Product>> {
    let rows = sqlx::query(
        "SELECT definition FROM products WHERE app_id = $1 AND (active = 1 OR $2 = 0) ORDER BY id",
    )
    .bind(app.as_str())
    .bind(i64::from(active_only))
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(|r| json_col(r, "definition")).collect()
}

/// Marks a product inactive; its history stays. False when there is no such product.
pub async fn deactivate(db: &Db, app: &AppId, id: &ProductId, now: Timestamp) -> DbResult<bool> {
    let mut tx = db.begin(super::Begin::Write).await?;
    let row = sqlx::query("SELECT definition FROM products WHERE app_id = $1 AND id = $2")
        .bind(app.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else { return Ok(false) };
    let mut product: Product = json_col(&row, "definition")?;
    product.active = false;
    sqlx::query("UPDATE products SET active = 0, definition = $1, updated_at = $2 WHERE app_id = $3 AND id = $4")
        .bind(serde_json::to_string(&product)?)
        .bind(now.millis())
        .bind(app.as_str())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    super::commit(tx).await?;
    Ok(true)
}

/// The product a store SKU names, if any.
/// The product an app names by the catalog's id or by `store`'s id for it.
pub async fn by_id_or_sku(
    db: &Db,
    app: &AppId,
    store: &str,
    name: &str,
) -> DbResult<Option<Product>> {
    if let Ok(id) = name.parse::<ProductId>()
        && let Some(p) = get(db, app, &id).await?
    {
        return Ok(Some(p));
    }
    by_sku(db, app, store, name).await
}

pub async fn by_sku(db: &Db, app: &AppId, store: &str, sku: &str) -> DbResult<Option<Product>> {
    let row = sqlx::query(
        "SELECT p.definition FROM product_skus s JOIN products p ON p.app_id = s.app_id AND p.id = s.product_id \
         WHERE s.app_id = $1 AND s.store = $2 AND s.sku = $3",
    )
    .bind(app.as_str())
    .bind(store)
    .bind(sku)
    .fetch_optional(db.reader())
    .await?;
    row.as_ref().map(|r| json_col(r, "definition")).transpose()
}

/// True when some product of the app grants `entitlement`.
pub async fn entitlement_known(
    db: &Db,
    app: &AppId,
    entitlement: &EntitlementId,
) -> DbResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM product_entitlements WHERE app_id = $1 AND entitlement_id = $2",
    )
    .bind(app.as_str())
    .bind(entitlement.as_str())
    .fetch_one(db.reader())
    .await?;
    Ok(n > 0)
}
