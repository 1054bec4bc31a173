//! `webhook_endpoints`: where an app's outbox events are delivered, each with its event filter and
//! signing secrets.

use gateway_core::{AppId, Timestamp};
use serde::{Deserialize, Serialize};
use sqlx::{Row, any::AnyRow};

use super::{Db, DbError, DbResult, json_col, parsed_col};

/// A signing secret (`whsec_<base64>`). During a rotation an endpoint has several; each delivery is
/// signed with every one not yet expired.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigningSecret {
    pub secret: String,
    pub created_at: Timestamp,
    /// When the secret stops signing (a rotated-out secret); `None` while it is current.
    pub expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningSecret")
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An endpoint as stored.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub app_id: AppId,
    /// `webhook` or `openedx`.
    pub kind: String,
    pub url: String,
    pub description: String,
    /// The event types delivered; empty: every one.
    pub events: Vec<String>,
    pub secrets: Vec<SigningSecret>,
    /// What the kind needs beyond the URL (JSON object).
    pub config: serde_json::Value,
    pub active: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Endpoint {
    /// Whether events of `event_type` go to this endpoint.
    pub fn wants(&self, event_type: &str) -> bool {
        if event_type.starts_with(STORE_ACTION_PREFIX) || self.kind == STORE_KIND {
            return false;
        }
        self.active && (self.events.is_empty() || self.events.iter().any(|e| e == event_type))
    }

    /// The secrets that sign at `now`.
    pub fn signing_secrets(&self, now: Timestamp) -> impl Iterator<Item = &SigningSecret> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at.is_none_or(|at| at > now))
    }
}

/// Outbox event types that are actions the gateway owes a store, not events for downstreams.
pub const STORE_ACTION_PREFIX: &str = "store.";

/// The kind of each app's built-in endpoint that performs store actions; never listed or changed
/// through the API, but its deliveries are shown like any other.
pub const STORE_KIND: &str = "store";

/// The id of `app`'s built-in store endpoint.
pub fn store_endpoint_id(app: &str) -> String {
    format!("store_{app}")
}

pub(crate) const COLUMNS: &str =
    "id, app_id, kind, url, description, events, secrets, config, active, created_at, updated_at";

pub(crate) fn from_row(row: &AnyRow) -> DbResult<Endpoint> {
    Ok(Endpoint {
        id: row.try_get("id")?,
        app_id: parsed_col(row, "app_id")?,
        kind: row.try_get("kind")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        events: json_col(row, "events")?,
        secrets: json_col(row, "secrets")?,
        config: json_col(row, "config")?,
        active: row.try_get::<i64, _>("active")? != 0,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
    })
}

/// Saves a new endpoint.
pub async fn insert(db: &Db, e: &Endpoint) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, app_id, kind, url, description, events, secrets, config, \
         active, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&e.id)
    .bind(e.app_id.as_str())
    .bind(&e.kind)
    .bind(&e.url)
    .bind(&e.description)
    .bind(serde_json::to_string(&e.events)?)
    .bind(serde_json::to_string(&e.secrets)?)
    .bind(serde_json::to_string(&e.config)?)
    .bind(i64::from(e.active))
    .bind(e.created_at.millis())
    .bind(e.updated_at.millis())
    .execute(db.writer())
    .await?;
    Ok(())
}

/// Saves every field of an existing endpoint but its id, app and creation time.
pub async fn update(db: &Db, e: &Endpoint) -> DbResult<()> {
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET kind = $1, url = $2, description = $3, events = $4, secrets = $5, \
         config = $6, active = $7, updated_at = $8 WHERE app_id = $9 AND id = $10",
    )
    .bind(&e.kind)
    .bind(&e.url)
    .bind(&e.description)
    .bind(serde_json::to_string(&e.events)?)
    .bind(serde_json::to_string(&e.secrets)?)
    .bind(serde_json::to_string(&e.config)?)
    .bind(i64::from(e.active))
    .bind(e.updated_at.millis())
    .bind(e.app_id.as_str())
    .bind(&e.id)
    .execute(db.writer())
    .await?;
    if done.rows_affected() == 0 {
        return Err(DbError::Corrupt(format!("endpoint {} vanished", e.id)));
    }
    Ok(())
}

/// One endpoint of an app, never its built-in store endpoint.
pub async fn get(db: &Db, app: &AppId, id: &str) -> DbResult<Option<Endpoint>> {
    Ok(by_id(db, id)
        .await?
        .filter(|e| e.app_id == *app && e.kind != STORE_KIND))
}

/// An endpoint by id alone (the delivery worker, which serves every app).
pub async fn by_id(db: &Db, id: &str) -> DbResult<Option<Endpoint>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db.reader())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// An app's endpoints, oldest first.
pub async fn list(db: &Db, app: &AppId) -> DbResult<Vec<Endpoint>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE app_id = $1 AND kind <> 'store' ORDER BY created_at, id"
    )))
    .bind(app.as_str())
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(from_row).collect()
}
