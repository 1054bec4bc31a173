//! The `api_keys` table. Only a SHA-256 of each key is stored: keys are 256 random bits, so a fast hash
//! is enough (there is nothing to brute-force), and a lookup is one index probe.
//!
//! [`Liveness`] answers "is this key still live?" for reads that stay open (long polls, event
//! streams) without a query per question: a revocation through this process is known at once, one
//! through another instance on PostgreSQL arrives by NOTIFY, and anything else (the CLI next to a
//! SQLite server, a gap in listening) is found by re-reading a key at most every [`LIVE_RECHECK`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use gateway_core::{AppId, Timestamp};
use sqlx::{Row, any::AnyRow};
use tokio::sync::watch;

use super::{Begin, Db, DbError, DbResult, json_col};
use crate::model::{ApiKey, KeyKind, Scope};

/// How often a key that open reads rely on is read again, at most (one query per key and instance,
/// however many reads it has open): the longest a revocation that no NOTIFY announced (the CLI on
/// SQLite, a gap in listening) takes to end them.
pub const LIVE_RECHECK: Duration = Duration::from_secs(5);

/// What this process knows of keys' liveness, and a signal raised on each revocation it hears of.
#[derive(Debug)]
pub struct Liveness {
    /// Key id -> (when last read, live then). A revoked key stays revoked: such an entry is final.
    known: Mutex<HashMap<String, (Instant, bool)>>,
    revoked: watch::Sender<u64>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            known: Mutex::new(HashMap::new()),
            revoked: watch::Sender::new(0),
        }
    }
}

impl Liveness {
    /// A signal that changes each time this process learns of a revocation.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revoked.subscribe()
    }

    /// Records that key `id` is revoked, and raises the signal.
    pub fn revoked(&self, id: &str) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(id.to_owned(), (Instant::now(), false));
        drop(known);
        self.revoked.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What is known of `id` and when it was read, if that was within [`LIVE_RECHECK`]; otherwise
    /// `None`, and the caller reads it (meanwhile other callers keep the old answer rather than read
    /// it too).
    fn cached(&self, id: &str) -> Option<(bool, Instant)> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, live)) = known.get_mut(id) {
            if !*live || at.elapsed() < LIVE_RECHECK {
                return Some((*live, *at));
            }
            *at = Instant::now();
            return None;
        }
        if known.len() > 10_000 {
            known.retain(|_, (at, _)| at.elapsed() < LIVE_RECHECK * 100);
        }
        None
    }

    /// Records what a read of key `id` found, and when.
    fn record(&self, id: &str, live: bool) -> Instant {
        if !live {
            self.revoked(id);
        } else {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            known.insert(id.to_owned(), (Instant::now(), true));
        }
        Instant::now()
    }
}

/// Whether the stored key `id` is live, and when that was read (at most [`LIVE_RECHECK`] ago): the
/// answer is good until then plus [`LIVE_RECHECK`].
pub async fn is_live(db: &Db, id: &str) -> DbResult<(bool, Instant)> {
    if let Some(known) = db.key_liveness().cached(id) {
        return Ok(known);
    }
    let revoked: Option<Option<i64>> =
        sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(db.reader())
            .await?;
    let live = matches!(revoked, Some(None));
    Ok((live, db.key_liveness().record(id, live)))
}

/// A key row as listed (never with the key itself).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub kind: KeyKind,
    pub scopes: Vec<Scope>,
    pub prefix: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

pub async fn insert(
    db: &Db,
    key: &ApiKey,
    key_hash: &str,
    prefix: &str,
    now: Timestamp,
) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, app_id, kind, scopes, key_hash, prefix, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&key.id)
    .bind(key.app_id.as_ref().map(|a| a.as_str().to_owned()))
    .bind(key.kind.as_str())
    .bind(serde_json::to_string(&key.scopes)?)
    .bind(key_hash)
    .bind(prefix)
    .bind(now.millis())
    .execute(db.writer())
    .await?;
    Ok(())
}

/// The live key whose hash is `key_hash`.
pub async fn find_by_hash(db: &Db, key_hash: &str) -> DbResult<Option<ApiKey>> {
    let row = sqlx::query(
        "SELECT id, app_id, kind, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(key_hash)
    .fetch_optional(db.reader())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let app: Option<String> = row.try_get("app_id")?;
    Ok(Some(ApiKey {
        id: row.try_get("id")?,
        app_id: app
            .map(AppId::parse)
            .transpose()
            .map_err(|e| DbError::Corrupt(e.to_string()))?,
        kind: kind_col(&row)?,
        scopes: json_col(&row, "scopes")?,
    }))
}

/// A listed key from its row (`id, kind, scopes, prefix, created_at, revoked_at`).
fn key_info(row: &AnyRow) -> DbResult<KeyInfo> {
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    Ok(KeyInfo {
        id: row.try_get("id")?,
        kind: kind_col(row)?,
        scopes: json_col(row, "scopes")?,
        prefix: row.try_get("prefix")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        revoked_at: revoked.map(Timestamp::from_millis),
    })
}

fn kind_col(row: &AnyRow) -> DbResult<KeyKind> {
    let kind: String = row.try_get("kind")?;
    match kind.as_str() {
        "secret" => Ok(KeyKind::Secret),
        "publishable" => Ok(KeyKind::Publishable),
        other => Err(DbError::Corrupt(format!("key kind {other:?}"))),
    }
}

pub async fn list_for_app(db: &Db, app: &AppId) -> DbResult<Vec<KeyInfo>> {
    let rows = sqlx::query(
        "SELECT id, kind, scopes, prefix, created_at, revoked_at FROM api_keys \
         WHERE app_id = $1 ORDER BY created_at, id",
    )
    .bind(app.as_str())
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(key_info).collect()
}

/// Every key (admin keys and every app's), never with the key itself.
pub async fn list_all(db: &Db) -> DbResult<Vec<(Option<String>, KeyInfo)>> {
    let rows = sqlx::query(
        "SELECT id, app_id, kind, scopes, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
    )
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("app_id")?, key_info(row)?)))
        .collect()
}

/// Revokes any key by id (admin keys included); false when there is no such live key.
pub async fn revoke_any(db: &Db, id: &str, now: Timestamp) -> DbResult<bool> {
    revoke_where(db, None, id, now).await
}

/// Revokes a key of an app; false when there is no such live key.
pub async fn revoke(db: &Db, app: &AppId, id: &str, now: Timestamp) -> DbResult<bool> {
    revoke_where(db, Some(app), id, now).await
}

/// Revokes key `id` (of `app`, when given), and tells the reads it holds open: those of this process
/// at once, those of other instances on PostgreSQL by a NOTIFY sent at commit.
async fn revoke_where(db: &Db, app: Option<&AppId>, id: &str, now: Timestamp) -> DbResult<bool> {
    let mut tx = db.begin(Begin::Write).await?;
    let update = sqlx::query(match app {
        Some(_) => {
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND app_id = $3"
        }
        None => "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
    })
    .bind(now.millis())
    .bind(id);
    let update = match app {
        Some(app) => update.bind(app.as_str()),
        None => update,
    };
    let done = update.execute(&mut *tx).await?;
    if done.rows_affected() != 1 {
        super::rollback(tx).await?;
        return Ok(false);
    }
    super::changes::announce_revoked(&mut tx, id).await?;
    super::commit(tx).await?;
    db.key_liveness().revoked(id);
    Ok(true)
}
