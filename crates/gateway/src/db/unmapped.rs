//! `unmapped_inputs`: verified store inputs about SKUs the catalog did not map when they came, held
//! until it does (written and deleted by the decision batches, see `db::batch`).

use sqlx::Row;

use super::{Db, DbResult};

/// A held input whose SKU the catalog maps now.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub app: String,
    pub inbound_id: String,
    pub store: String,
    pub body: String,
}

/// Up to `limit` held inputs whose SKU is mapped now, of one app or of all, oldest first.
pub async fn mapped(db: &Db, app: Option<&str>, limit: i64) -> DbResult<Vec<Mapped>> {
    let rows = sqlx::query(
        "SELECT u.app_id, u.inbound_id, u.store, u.body FROM unmapped_inputs u \
         JOIN product_skus s ON s.app_id = u.app_id AND s.store = u.store AND s.sku = u.sku \
         WHERE ($1 IS NULL OR u.app_id = $1) ORDER BY u.held_at, u.inbound_id LIMIT $2",
    )
    .bind(app)
    .bind(limit)
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Mapped {
                app: r.try_get("app_id")?,
                inbound_id: r.try_get("inbound_id")?,
                store: r.try_get("store")?,
                body: r.try_get("body")?,
            })
        })
        .collect()
}

/// How many inputs are held for SKUs the catalog does not map.
pub async fn count(db: &Db) -> DbResult<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM unmapped_inputs")
        .fetch_one(db.reader())
        .await?)
}
