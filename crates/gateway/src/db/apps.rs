//! The `apps` table.

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

pub async fn insert(db: &Db, app: &App) -> Result<(), InsertAppError> {
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
    let row =
        sqlx::query("SELECT id, name, config, created_at, updated_at FROM apps WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(db.reader())
            .await?;
    row.as_ref().map(from_row).transpose()
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
    Ok(())
}
