//! The `apps` table, and a short-lived cache of its rows: every notification and API call names its
//! app, and reading the same row for each of thousands of calls a second is waste.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use gateway_core::{AppId, Timestamp};
use sqlx::{Row, any::AnyRow};

use super::{Db, DbError, DbResult, json_col, parsed_col};
use crate::model::App;

fn from_row(row: &AnyRow) -> DbResult<App> {
    Ok(App {
        id: parsed_col(row, "id")?,
        name: row.try_get("name")?,
        settings: json_col(row, "config")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
    })
}

/// Why an app could not be created.
#[derive(Debug, thiserror::Error)]
pub enum InsertAppError {
    #[error("an app with this id exists")]
    Exists,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How long a read app is reused. A change made through this process is seen at once; one made
/// through another instance, within this time.
const CACHE_TTL: Duration = Duration::from_secs(1);

/// Apps read recently, by id.
#[derive(Debug, Default)]
pub struct Cache {
    entries: Mutex<HashMap<String, (Instant, App)>>,
}

impl Cache {
    fn get(&self, id: &AppId) -> Option<App> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(id.as_str())
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, app)| app.clone())
    }

    fn put(&self, app: &App) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        }
        entries.insert(app.id.to_string(), (Instant::now(), app.clone()));
    }

    fn forget(&self, id: &AppId) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(id.as_str());
    }
}

pub async fn insert(db: &Db, app: &App) -> Result<(), InsertAppError> {
    db.app_cache().forget(&app.id);
    let config = serde_json::to_string(&app.settings).map_err(DbError::from)?;
    let result = sqlx::query(
        "INSERT INTO apps (id, name, config, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(app.id.as_str())
    .bind(&app.name)
    .bind(config)
    .bind(app.created_at.millis())
    .bind(app.updated_at.millis())
    .execute(db.writer())
    .await
    .map_err(DbError::from);
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.is_unique_violation() => Err(InsertAppError::Exists),
        Err(e) => Err(e.into()),
    }
}

pub async fn get(db: &Db, id: &AppId) -> DbResult<Option<App>> {
    if let Some(app) = db.app_cache().get(id) {
        return Ok(Some(app));
    }
    let row =
        sqlx::query("SELECT id, name, config, created_at, updated_at FROM apps WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(db.reader())
            .await?;
    let app = row.as_ref().map(from_row).transpose()?;
    if let Some(app) = &app {
        db.app_cache().put(app);
    }
    Ok(app)
}

pub async fn list(db: &Db) -> DbResult<Vec<App>> {
    let rows = sqlx::query("SELECT id, name, config, created_at, updated_at FROM apps ORDER BY id")
        .fetch_all(db.reader())
        .await?;
    rows.iter().map(from_row).collect()
}

pub async fn update(db: &Db, app: &App) -> DbResult<()> {
    let config = serde_json::to_string(&app.settings)?;
    sqlx::query("UPDATE apps SET name = $1, config = $2, updated_at = $3 WHERE id = $4")
        .bind(&app.name)
        .bind(config)
        .bind(app.updated_at.millis())
        .bind(app.id.as_str())
        .execute(db.writer())
        .await?;
    db.app_cache().forget(&app.id);
    Ok(())
}
