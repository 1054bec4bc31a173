//! Change signals: after a commit changes a customer's snapshot, the writer publishes it here, and the
//! long polls and event streams waiting on that customer, and the delivery worker, wake at once.
//!
//! Across instances: on PostgreSQL a committing transaction announces the customers it changed (and
//! the keys it revoked) on [`CHANNEL`] with one `NOTIFY`, delivered only if it commits, and every
//! instance's [`listen`] task wakes its own waiters from it (and all of them after a gap in what it
//! heard). On SQLite one process writes. Waiters still re-read the database at an interval, as a
//! safety net.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use gateway_core::{AppId, AppUserId};
use tokio::sync::Notify;

/// Waiters by (app, customer), and the delivery worker's wake-up.
#[derive(Debug, Default)]
pub struct Changes {
    waiters: Mutex<HashMap<(String, String), Weak<Notify>>>,
    outbox: Arc<Notify>,
}

impl Changes {
    /// The signal for one customer; keep it while waiting.
    pub fn subscribe(&self, app: &AppId, customer: &AppUserId) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the signals nobody holds any more, so the map stays as small as the waiting set.
        waiters.retain(|_, w| w.strong_count() > 0);
        let key = (app.to_string(), customer.to_string());
        if let Some(n) = waiters.get(&key).and_then(Weak::upgrade) {
            return n;
        }
        let n = Arc::new(Notify::new());
        waiters.insert(key, Arc::downgrade(&n));
        n
    }

    /// The signal given after every commit that changed a customer, and so may have written outbox
    /// events: the delivery worker waits on it between its ticks.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox.clone()
    }

    /// Wakes every waiter and the delivery worker: after a gap in what this instance heard.
    pub fn wake_all(&self) {
        self.outbox.notify_one();
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for n in waiters.values().filter_map(Weak::upgrade) {
            n.notify_waiters();
        }
    }

    /// Wakes every waiter on a customer, and the delivery worker.
    pub fn publish(&self, app: &AppId, customer: &AppUserId) {
        self.outbox.notify_one();
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = waiters
            .get(&(app.to_string(), customer.to_string()))
            .and_then(Weak::upgrade)
        {
            n.notify_waiters();
        }
    }
}

/// The PostgreSQL channel on which a commit names the customers it changed.
pub const CHANNEL: &str = "purchase_gateway_changes";

/// Within a transaction on PostgreSQL: tells every instance, at commit, that `customers` changed
/// (`NOTIFY` is delivered only if the transaction commits). Nothing on SQLite, where one process
/// writes.
pub async fn announce(
    conn: &mut sqlx::AnyConnection,
    customers: &[(String, String)],
) -> super::DbResult<()> {
    if conn.backend_name() != "PostgreSQL" || customers.is_empty() {
        return Ok(());
    }
    // One notification per transaction (or per 7,000 bytes of names): each is parsed by every
    // listening instance, and their number, not their size, is what costs.
    let mut payloads: Vec<Vec<super::batch::Val>> = Vec::new();
    let mut current: Vec<&(String, String)> = Vec::new();
    let mut size = 0;
    for c in customers {
        let len = c.0.len() + c.1.len() + 8;
        if size + len > NOTIFY_PAYLOAD_BYTES && !current.is_empty() {
            payloads.push(vec![serde_json::json!(current).to_string().into()]);
            current.clear();
            size = 0;
        }
        current.push(c);
        size += len;
    }
    payloads.push(vec![serde_json::json!(current).to_string().into()]);
    super::batch::many(
        conn,
        &format!("SELECT pg_notify('{CHANNEL}', column1) FROM (VALUES {{values}}) AS v"),
        "",
        &payloads,
    )
    .await?;
    Ok(())
}

/// Within a transaction on PostgreSQL: tells every instance, at commit, that API key `id` is revoked,
/// so the long polls and event streams it holds open end at once (see [`super::keys::Liveness`]).
/// Nothing on SQLite.
pub async fn announce_revoked(conn: &mut sqlx::AnyConnection, id: &str) -> super::DbResult<()> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    let payload = serde_json::to_string(&Announcement::Revoked { revoked_key: id })?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_notify('{CHANNEL}', $1)"
    )))
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a notification on [`CHANNEL`] says: the customers a commit changed, or a revoked key.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Announcement<S> {
    Changed(Vec<(S, S)>),
    Revoked { revoked_key: S },
}

/// Under PostgreSQL's 8,000-byte limit on a notification's payload.
const NOTIFY_PAYLOAD_BYTES: usize = 7000;

/// Listens on PostgreSQL for the changes other instances commit and wakes this instance's waiters
/// (long polls, event streams, the delivery worker), until `shutdown`. A lost connection is made
/// again; what was announced meanwhile is found by the waiters' own periodic re-reads.
pub async fn listen(db: super::Db, url: String, shutdown: tokio_util::sync::CancellationToken) {
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, failures, "changes: cannot connect to listen; retrying");
                let pause = crate::backoff::STEP.delay(failures);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "changes: LISTEN failed; retrying");
            tokio::time::sleep(crate::backoff::STEP.delay(1)).await;
            continue;
        }
        failures = 0;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) => match serde_json::from_str::<Announcement<String>>(n.payload()) {
                    Ok(Announcement::Changed(changed)) => {
                        for (app, customer) in changed {
                            if let (Ok(app), Ok(customer)) = (app.parse(), customer.parse()) {
                                db.changes().publish(&app, &customer);
                            }
                        }
                    }
                    Ok(Announcement::Revoked { revoked_key }) => {
                        db.key_liveness().revoked(&revoked_key)
                    }
                    Err(_) => continue,
                },
                // The connection was lost and is made again: anything may have changed meanwhile.
                Ok(None) => db.changes().wake_all(),
                Err(e) => {
                    tracing::warn!(error = %e, "changes: listening failed; reconnecting");
                    db.changes().wake_all();
                    break;
                }
            }
        }
    }
}
