//! `signing_keys`: the ES256 keys that sign entitlement tokens, shared by every instance.

use gateway_core::Timestamp;
use sqlx::Row;

use super::{Db, DbResult};

/// A stored key.
#[derive(Clone)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    /// Base64 PKCS#8.
    pub private_key: String,
    pub public_jwk: serde_json::Value,
    pub created_at: Timestamp,
    pub retires_at: Option<Timestamp>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("private_key", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("retires_at", &self.retires_at)
            .finish()
    }
}

/// Every key not retired at `now`, newest first.
pub async fn live(db: &Db, now: Timestamp) -> DbResult<Vec<StoredKey>> {
    let rows = sqlx::query(
        "SELECT kid, alg, private_key, public_jwk, created_at, retires_at FROM signing_keys \
         WHERE retires_at IS NULL OR retires_at > $1 ORDER BY created_at DESC, kid DESC",
    )
    .bind(now.millis())
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredKey {
                kid: r.try_get("kid")?,
                alg: r.try_get("alg")?,
                private_key: r.try_get("private_key")?,
                public_jwk: super::json_col(r, "public_jwk")?,
                created_at: Timestamp::from_millis(r.try_get("created_at")?),
                retires_at: r
                    .try_get::<Option<i64>, _>("retires_at")?
                    .map(Timestamp::from_millis),
            })
        })
        .collect()
}

/// Adds a key; with `retire_others_at`, every key not retired yet retires then (a rotation). One
/// transaction, so a reader sees both changes or neither.
pub async fn add(db: &Db, key: &StoredKey, retire_others_at: Option<Timestamp>) -> DbResult<()> {
    let mut tx = db.begin(super::Begin::Write).await?;
    if let Some(at) = retire_others_at {
        sqlx::query(
            "UPDATE signing_keys SET retires_at = $1 WHERE retires_at IS NULL OR retires_at > $1",
        )
        .bind(at.millis())
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, private_key, public_jwk, created_at, retires_at) \
         VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(&key.kid)
    .bind(&key.alg)
    .bind(&key.private_key)
    .bind(serde_json::to_string(&key.public_jwk)?)
    .bind(key.created_at.millis())
    .execute(&mut *tx)
    .await?;
    super::commit(tx).await?;
    Ok(())
}
