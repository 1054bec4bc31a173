//! `store_cursors`: how far a recovery job has read a store's history, per app; `store_history_runs`:
//! the run under way (its window, the page to read next), who holds it and when it is due.

use gateway_core::{AppId, Timestamp};
use sqlx::Row;

use super::{Db, DbResult};

/// The cursor `name` of `app`, if it was ever set.
pub async fn get(db: &Db, app: &AppId, name: &str) -> DbResult<Option<Timestamp>> {
    let value: Option<i64> =
        sqlx::query_scalar("SELECT value FROM store_cursors WHERE app_id = $1 AND name = $2")
            .bind(app.as_str())
            .bind(name)
            .fetch_optional(db.reader())
            .await?;
    Ok(value.map(Timestamp::from_millis))
}

/// Moves the cursor `name` of `app` forward to `to` (never back, should two instances race), on the
/// caller's transaction.
async fn advance(
    conn: &mut sqlx::AnyConnection,
    (app, name): (&AppId, &str),
    to: Timestamp,
    now: Timestamp,
) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO store_cursors (app_id, name, value, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (app_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
         WHERE store_cursors.value < excluded.value",
    )
    .bind(app.as_str())
    .bind(name)
    .bind(to.millis())
    .bind(now.millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// A run through a store's history that an instance has claimed (see `store_history_runs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The window being read, when a run is under way; `None` for a run to start.
    pub window: Option<(Timestamp, Timestamp)>,
    /// Where in the window to go on: the store's token for the next page.
    pub page_token: Option<String>,
    /// Failures in a row so far.
    pub failures: i64,
}

/// Claims the run `name` of `app` for `owner` until `until`, if it is due at `now` and no other
/// instance holds it. `None`: not due, or another instance is reading.
pub async fn claim_run(
    db: &Db,
    (app, name): (&AppId, &str),
    owner: &str,
    now: Timestamp,
    until: Timestamp,
) -> DbResult<Option<Run>> {
    sqlx::query(
        "INSERT INTO store_history_runs (app_id, name, due_at, failures) VALUES ($1, $2, 0, 0) \
         ON CONFLICT (app_id, name) DO NOTHING",
    )
    .bind(app.as_str())
    .bind(name)
    .execute(db.writer())
    .await?;
    // One statement: of two instances claiming at once, the second finds the lease taken.
    let row = sqlx::query(
        "UPDATE store_history_runs SET lease_owner = $1, leased_until = $2 \
         WHERE app_id = $3 AND name = $4 AND due_at <= $5 AND (leased_until IS NULL OR leased_until <= $5) \
         RETURNING run_start, run_end, page_token, failures",
    )
    .bind(owner)
    .bind(until.millis())
    .bind(app.as_str())
    .bind(name)
    .bind(now.millis())
    .fetch_optional(db.writer())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let start: Option<i64> = row.try_get("run_start")?;
    let end: Option<i64> = row.try_get("run_end")?;
    Ok(Some(Run {
        window: start
            .zip(end)
            .map(|(s, e)| (Timestamp::from_millis(s), Timestamp::from_millis(e))),
        page_token: row.try_get("page_token")?,
        failures: row.try_get::<i64, _>("failures")?,
    }))
}

/// Records a committed page of `owner`'s run: the window and the token of the next page, with the
/// lease extended to `until`. False when the lease was lost (another instance took the run over).
pub async fn save_page(
    db: &Db,
    (app, name): (&AppId, &str),
    owner: &str,
    (window, next): ((Timestamp, Timestamp), Option<&str>),
    until: Timestamp,
) -> DbResult<bool> {
    let done = sqlx::query(
        "UPDATE store_history_runs SET run_start = $1, run_end = $2, page_token = $3, leased_until = $4, failures = 0 \
         WHERE app_id = $5 AND name = $6 AND lease_owner = $7",
    )
    .bind(window.0.millis())
    .bind(window.1.millis())
    .bind(next)
    .bind(until.millis())
    .bind(app.as_str())
    .bind(name)
    .bind(owner)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends `owner`'s hold on the run. A finished run (`finished`: its window's end) moves the cursor
/// there and forgets the window; a paused one keeps its place. Either way it is due again at `due`.
pub async fn release_run(
    db: &Db,
    (app, name): (&AppId, &str),
    owner: &str,
    finished: Option<Timestamp>,
    (due, now): (Timestamp, Timestamp),
) -> DbResult<()> {
    let mut tx = db.begin(super::Begin::Write).await?;
    if let Some(end) = finished {
        sqlx::query(
            "UPDATE store_history_runs SET run_start = NULL, run_end = NULL, page_token = NULL \
             WHERE app_id = $1 AND name = $2 AND lease_owner = $3",
        )
        .bind(app.as_str())
        .bind(name)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        advance(&mut tx, (app, name), end, now).await?;
    }
    sqlx::query(
        "UPDATE store_history_runs SET lease_owner = NULL, leased_until = NULL, due_at = $1, failures = 0 \
         WHERE app_id = $2 AND name = $3 AND lease_owner = $4",
    )
    .bind(due.millis())
    .bind(app.as_str())
    .bind(name)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    super::commit(tx).await?;
    Ok(())
}

/// Records a failed step of `owner`'s run: it is due again at `due` (a back-off), and after
/// `forget_after` failures in a row its page token is dropped, so the window is read again from its
/// start (a store's token may have expired; what was taken already is deduplicated).
pub async fn fail_run(
    db: &Db,
    (app, name): (&AppId, &str),
    owner: &str,
    due: Timestamp,
    forget_after: i64,
) -> DbResult<i64> {
    let failures: Option<i64> = sqlx::query_scalar(
        "UPDATE store_history_runs SET lease_owner = NULL, leased_until = NULL, due_at = $1, \
         failures = failures + 1, \
         page_token = CASE WHEN failures + 1 >= $2 THEN NULL ELSE page_token END \
         WHERE app_id = $3 AND name = $4 AND lease_owner = $5 RETURNING failures",
    )
    .bind(due.millis())
    .bind(forget_after)
    .bind(app.as_str())
    .bind(name)
    .bind(owner)
    .fetch_optional(db.writer())
    .await?;
    Ok(failures.unwrap_or_default())
}
