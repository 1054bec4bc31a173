//! Storage. All SQL lives under this module, written once for both back ends through sqlx's `Any`
//! driver: `$n` placeholders, `ON CONFLICT`, `RETURNING`, times as BIGINT unix milliseconds, ids and JSON
//! as TEXT. The few statements that differ go through [`Dialect`].
//!
//! SQLite is the embedded default: one file in WAL mode, `synchronous=FULL` so that a commit is on disk
//! before anything is acknowledged. Its writers are funnelled through a one-connection pool, so they
//! queue in process instead of failing with `SQLITE_BUSY`. PostgreSQL is the production store; there the
//! read and write pools are the same and row locks order writers per customer.
//!
//! Every transaction begins through [`Db::begin`] (or [`begin_on`]) and ends through [`commit`] or
//! [`rollback`], never through sqlx's own: see [`begin_on`] for why.

pub mod apps;
pub mod audit;
pub mod batch;
pub mod changes;
pub mod cursors;
pub mod customers;
pub mod deliveries;
pub mod endpoints;
pub mod idempotency;
pub mod keys;
pub mod ledger;
pub mod orders;
pub mod outbox;
pub mod pacing;
pub mod products;
pub mod signing_keys;
pub mod unmapped;

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    Any, AnyPool, Row, Transaction,
    any::{AnyPoolOptions, AnyRow},
    migrate::Migrator,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a SQLite connection waits for the file lock before giving up. Only other processes (the
/// CLI next to a running server) contend for it; in-process writers queue on the write pool.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

/// Connections in the read pool. Two cores; reads are short; PostgreSQL's default limit is 100 and
/// several gateway instances may share it.
const MAX_CONNECTIONS: u32 = 16;

/// Which back end a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Picks the back end from a database URL, or says why it cannot.
    pub fn from_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else {
            Err(DbError::BadUrl)
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}

/// A storage failure. Constraint violations that a caller can cause are mapped to their own variants
/// by the functions that expect them; everything else is the gateway's fault.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the database URL must start with sqlite: or postgres://")]
    BadUrl,
    #[error("could not create the database folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl DbError {
    /// True when the error is a unique or primary key violation.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlx(sqlx::Error::Database(e)) => e.is_unique_violation(),
            _ => false,
        }
    }
}

impl From<serde_json::Error> for DbError {
    fn from(e: serde_json::Error) -> Self {
        DbError::Corrupt(e.to_string())
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// The database handle: a read pool and a write pool (the same pool on PostgreSQL).
#[derive(Debug, Clone)]
pub struct Db {
    pub dialect: Dialect,
    read: AnyPool,
    write: AnyPool,
    changes: std::sync::Arc<changes::Changes>,
    apps: std::sync::Arc<apps::Cache>,
    keys: std::sync::Arc<keys::Liveness>,
}

impl Db {
    /// Connects, creating a SQLite file and its folder when they do not exist yet.
    pub async fn connect(url: &str) -> DbResult<Self> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        match dialect {
            Dialect::Sqlite => {
                let url = prepare_sqlite_url(url)?;
                let read = sqlite_pool(&url, MAX_CONNECTIONS).await?;
                let write = sqlite_pool(&url, 1).await?;
                Ok(Db {
                    dialect,
                    read,
                    write,
                    changes: Default::default(),
                    apps: Default::default(),
                    keys: Default::default(),
                })
            }
            Dialect::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                Ok(Db {
                    dialect,
                    read: pool.clone(),
                    write: pool,
                    changes: Default::default(),
                    apps: Default::default(),
                    keys: Default::default(),
                })
            }
        }
    }

    /// Applies every migration not applied yet.
    pub async fn migrate(&self) -> DbResult<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.write).await?;
        Ok(())
    }

    /// The pool for reads.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// The pool for writes and read-modify-write transactions.
    pub fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// Begins a transaction of kind `how` (see [`Begin`]), safely even if the caller is cancelled.
    pub async fn begin(&self, how: Begin) -> DbResult<Transaction<'static, Any>> {
        let (pool, statement) = match (how, self.dialect) {
            (Begin::Write, _) => (&self.write, None),
            (Begin::WriteLocked, Dialect::Sqlite) => (&self.write, Some("BEGIN IMMEDIATE")),
            (Begin::WriteLocked, Dialect::Postgres) => (&self.write, None),
            (Begin::Snapshot, Dialect::Sqlite) => (&self.read, None),
            // In the BEGIN itself: a `SET TRANSACTION` after it is one more round trip, and fails
            // outright on a connection that is (wrongly) already inside a transaction.
            (Begin::Snapshot, Dialect::Postgres) => (
                &self.read,
                Some("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
            ),
        };
        begin_on(pool, statement).await
    }

    /// Change signals for long polls: writers publish after commit, waiters subscribe.
    pub fn changes(&self) -> &changes::Changes {
        &self.changes
    }

    /// Apps read recently (see [`apps::Cache`]).
    pub(crate) fn app_cache(&self) -> &apps::Cache {
        &self.apps
    }

    /// What this process knows of API keys' liveness (see [`keys::Liveness`]).
    pub fn key_liveness(&self) -> &keys::Liveness {
        &self.keys
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// What a transaction is for, which picks its pool and its `BEGIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// A read-modify-write transaction on the write pool.
    Write,
    /// As `Write`, but on SQLite the write lock is taken at `BEGIN` (`BEGIN IMMEDIATE`), so a writer
    /// in another process makes it wait rather than fail later on a stale snapshot. PostgreSQL
    /// orders writers by row locks and needs nothing more.
    WriteLocked,
    /// Several reads that must see one state, on the read pool: `REPEATABLE READ, READ ONLY` on
    /// PostgreSQL (SQLite's transactions already read one snapshot).
    Snapshot,
}

/// Begins a transaction on `pool`, with `statement` instead of a plain `BEGIN` when given.
///
/// The `BEGIN` round trip runs in a task of its own, so it completes even when the caller's future is
/// dropped half-way (a client that goes away, a timeout, a `select!`). sqlx 0.9.0 (launchbadge/sqlx
/// #4393) raises a PostgreSQL connection's transaction depth only once the reply to `BEGIN` is read;
/// a future dropped while that reply is in flight leaves the server inside a transaction that sqlx
/// does not know of, no rollback is queued, and the pool hands the connection on: its next user's
/// statements run inside that stray transaction (never committed, or committed by a stranger) and
/// its own `BEGIN` warns "there is already a transaction in progress". Here an abandoned begin
/// finishes in its task, whose `Transaction` is then dropped, which queues the `ROLLBACK` before the
/// connection goes back to the pool. Statements inside a transaction need no such care: their
/// `Transaction` has its depth raised and rolls back when dropped.
pub async fn begin_on(
    pool: &AnyPool,
    statement: Option<&'static str>,
) -> DbResult<Transaction<'static, Any>> {
    let pool = pool.clone();
    to_completion(async move {
        match statement {
            Some(statement) => pool.begin_with(statement).await,
            None => pool.begin().await,
        }
    })
    .await
}

/// Commits `tx` in a task of its own, as [`begin_on`] begins: a caller dropped while the COMMIT is in
/// flight would otherwise make sqlx queue a ROLLBACK behind it (harmless, but PostgreSQL then warns
/// "there is no transaction in progress" in the log). Once sent, a commit is seen through.
pub async fn commit(tx: Transaction<'static, Any>) -> DbResult<()> {
    to_completion(tx.commit()).await
}

/// Rolls `tx` back in a task of its own, for the same reason as [`commit`].
pub async fn rollback(tx: Transaction<'static, Any>) -> DbResult<()> {
    to_completion(tx.rollback()).await
}

async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'static,
) -> DbResult<T> {
    match tokio::spawn(work).await {
        Ok(done) => Ok(done?),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime itself is stopping.
        Err(_) => Err(DbError::Sqlx(sqlx::Error::PoolClosed)),
    }
}

/// Makes sure a SQLite file's folder exists and that the URL creates the file (`mode=rwc`).
fn prepare_sqlite_url(url: &str) -> DbResult<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| DbError::Folder {
            path: parent.display().to_string(),
            source,
        })?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

async fn sqlite_pool(url: &str, max: u32) -> DbResult<AnyPool> {
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                for pragma in [
                    "PRAGMA journal_mode = WAL".to_owned(),
                    // FULL: a commit is durable before the gateway answers 2xx (invariant 6).
                    "PRAGMA synchronous = FULL".to_owned(),
                    format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"),
                    "PRAGMA foreign_keys = ON".to_owned(),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(pragma))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// Reads a TEXT column holding JSON.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> DbResult<T> {
    let raw: String = row.try_get(col)?;
    Ok(serde_json::from_str(&raw)?)
}

/// Parses a TEXT column through `FromStr`, calling a bad value corruption.
pub(crate) fn parsed_col<T: FromStr>(row: &AnyRow, col: &str) -> DbResult<T>
where
    T::Err: std::fmt::Display,
{
    let raw: String = row.try_get(col)?;
    raw.parse()
        .map_err(|e: T::Err| DbError::Corrupt(format!("{col} = {raw:?}: {e}")))
}

/// A new random id with a readable prefix (`pur_...`), time-ordered (UUID v7) so indexes stay compact.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
