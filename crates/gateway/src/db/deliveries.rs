//! `deliveries`: one row per outbox event per endpoint that wants it, with its attempts.
//!
//! - **Dispatch** turns undispatched outbox rows into deliveries and marks them dispatched, in one
//!   transaction, so an event is fanned out exactly once whatever the number of instances.
//! - **Claim** leases the deliveries that are due. Only the head of a customer's queue at an endpoint
//!   is ever due: a delivery waits while an earlier one of the same customer and endpoint is not
//!   delivered (pending or dead), or while an earlier event of the customer is not dispatched yet. So
//!   a customer's events reach each endpoint in order, one at a time.
//! - **Finish** records each attempt's outcome. A lease that ran out (the instance died mid-delivery)
//!   makes the delivery due again.
//!
//! On PostgreSQL the claims of several instances skip each other's rows (`FOR UPDATE SKIP LOCKED`);
//! SQLite has one writer, so its claims are serial.

use std::collections::{BTreeSet, HashMap};

use gateway_core::{AppId, AppUserId, Timestamp};
use serde::Serialize;
use sqlx::{Row, any::AnyRow};

use super::{
    Db, DbResult, Dialect,
    batch::{Val, many},
    endpoints::{self, Endpoint},
    new_id,
};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not delivered yet; retried until the retry window closes.
    Pending,
    Delivered,
    /// Given up after the retry window; waits for a retry by hand, and holds the customer's later
    /// events to this endpoint back until then.
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Status::Pending,
            "delivered" => Status::Delivered,
            "dead" => Status::Dead,
            _ => return None,
        })
    }
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: String,
    /// The outbox event: the `webhook-id` of every attempt.
    pub event_id: String,
    pub event_type: String,
    pub customer_id: String,
    pub customer_seq: i64,
    pub status: Status,
    pub attempts: i64,
    /// When the next attempt is due (pending deliveries).
    #[schema(value_type = Option<String>)]
    pub next_attempt_at: Option<Timestamp>,
    #[schema(value_type = Option<String>)]
    pub first_attempt_at: Option<Timestamp>,
    #[schema(value_type = Option<String>)]
    pub last_attempt_at: Option<Timestamp>,
    /// The receiver's HTTP status on the last attempt, when it answered.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    #[schema(value_type = Option<String>)]
    pub delivered_at: Option<Timestamp>,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
}

const COLUMNS: &str = "id, endpoint_id, event_id, event_type, customer_id, customer_seq, status, \
     attempts, next_attempt_at, first_attempt_at, last_attempt_at, last_status, last_error, \
     delivered_at, created_at";

fn ts(row: &AnyRow, col: &str) -> DbResult<Option<Timestamp>> {
    Ok(row
        .try_get::<Option<i64>, _>(col)?
        .map(Timestamp::from_millis))
}

fn from_row(row: &AnyRow) -> DbResult<Delivery> {
    let status: String = row.try_get("status")?;
    let status = Status::parse(&status)
        .ok_or_else(|| super::DbError::Corrupt(format!("delivery status {status:?}")))?;
    Ok(Delivery {
        id: row.try_get("id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        customer_id: row.try_get("customer_id")?,
        customer_seq: row.try_get("customer_seq")?,
        status,
        attempts: row.try_get("attempts")?,
        next_attempt_at: if status == Status::Pending {
            ts(row, "next_attempt_at")?
        } else {
            None
        },
        first_attempt_at: ts(row, "first_attempt_at")?,
        last_attempt_at: ts(row, "last_attempt_at")?,
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        delivered_at: ts(row, "delivered_at")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
    })
}

/// Fans up to `limit` undispatched outbox events out to the endpoints that want them. Returns how
/// many events were dispatched.
pub async fn dispatch(db: &Db, now: Timestamp, limit: i64) -> DbResult<usize> {
    let mut tx = db.begin(super::Begin::WriteLocked).await?;
    let lock = match db.dialect {
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let events = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, app_id, customer_id, customer_seq, event_type FROM outbox \
         WHERE dispatched_at IS NULL ORDER BY created_at, id LIMIT $1{lock}"
    )))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if events.is_empty() {
        super::commit(tx).await?;
        return Ok(0);
    }
    let apps: BTreeSet<String> = events
        .iter()
        .map(|r| r.try_get::<String, _>("app_id"))
        .collect::<Result<_, _>>()?;
    let mut by_app: HashMap<String, Vec<Endpoint>> = HashMap::new();
    for app in apps {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM webhook_endpoints WHERE app_id = $1 AND active <> 0 ORDER BY id",
            endpoints::COLUMNS
        )))
        .bind(&app)
        .fetch_all(&mut *tx)
        .await?;
        let list = rows
            .iter()
            .map(endpoints::from_row)
            .collect::<DbResult<_>>()?;
        by_app.insert(app, list);
    }
    let mut deliveries = Vec::new();
    let mut store_endpoints = BTreeSet::new();
    let mut dispatched = Vec::with_capacity(events.len());
    for e in &events {
        let (id, app, customer, seq, event_type): (String, String, String, i64, String) = (
            e.try_get("id")?,
            e.try_get("app_id")?,
            e.try_get("customer_id")?,
            e.try_get("customer_seq")?,
            e.try_get("event_type")?,
        );
        let mut targets: Vec<String> = by_app
            .get(&app)
            .into_iter()
            .flatten()
            .filter(|endpoint| endpoint.wants(&event_type))
            .map(|endpoint| endpoint.id.clone())
            .collect();
        if event_type.starts_with(endpoints::STORE_ACTION_PREFIX) {
            let endpoint = endpoints::store_endpoint_id(&app);
            store_endpoints.insert((app.clone(), endpoint.clone()));
            targets.push(endpoint);
        }
        for endpoint in targets {
            deliveries.push(vec![
                Val::from(new_id("dlv")),
                app.clone().into(),
                endpoint.into(),
                id.clone().into(),
                customer.clone().into(),
                Val::Int(seq),
                event_type.clone().into(),
                Val::Int(now.millis()),
            ]);
        }
        dispatched.push(vec![Val::from(id)]);
    }
    // The apps' built-in store endpoints, made on first use.
    for (app, id) in store_endpoints {
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, app_id, kind, url, description, events, secrets, config, \
             active, created_at, updated_at) VALUES ($1, $2, 'store', '', 'Actions owed to the stores', \
             '[]', '[]', '{}', 1, $3, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(&app)
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
    }
    // Sorted by (endpoint, event) so two instances' inserts take their locks in one order.
    deliveries.sort_by(|a, b| (key(&a[2]), key(&a[3])).cmp(&(key(&b[2]), key(&b[3]))));
    many(
        &mut tx,
        "INSERT INTO deliveries (id, app_id, endpoint_id, event_id, customer_id, customer_seq, \
         event_type, status, attempts, next_attempt_at, created_at, updated_at) \
         SELECT column1, column2, column3, column4, column5, column6, column7, 'pending', 0, column8, \
         column8, column8 FROM (VALUES {values}) AS v WHERE true",
        "ON CONFLICT (endpoint_id, event_id) DO NOTHING",
        &deliveries,
    )
    .await?;
    dispatched.sort_by(|a, b| key(&a[0]).cmp(key(&b[0])));
    let mut marked = Vec::with_capacity(dispatched.len());
    for d in dispatched {
        let mut row = vec![Val::Int(now.millis())];
        row.extend(d);
        marked.push(row);
    }
    many(
        &mut tx,
        "UPDATE outbox SET dispatched_at = v.column1 FROM (VALUES {values}) AS v",
        "WHERE outbox.id = v.column2",
        &marked,
    )
    .await?;
    super::commit(tx).await?;
    Ok(events.len())
}

fn key(v: &Val) -> &str {
    match v {
        Val::Text(s) => s,
        _ => "",
    }
}

/// A leased delivery, with what sending it needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub app_id: String,
    pub customer_id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    pub attempts: i64,
    pub first_attempt_at: Timestamp,
    /// The call slot it was deferred to, when it was paced: it is sent in it without asking again.
    pub slot_at: Option<Timestamp>,
    /// The event body exactly as stored: the bytes every attempt sends and signs.
    pub payload: String,
}

/// Leases up to `limit` due deliveries until `lease_until`, counting an attempt on each.
pub async fn claim(
    db: &Db,
    now: Timestamp,
    lease_until: Timestamp,
    limit: i64,
) -> DbResult<Vec<Claimed>> {
    let lock = match db.dialect {
        Dialect::Postgres => " FOR UPDATE OF d SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE deliveries SET lease_until = $1, attempts = attempts + 1, \
         first_attempt_at = COALESCE(first_attempt_at, $2), last_attempt_at = $2, updated_at = $2 \
         WHERE id IN (SELECT d.id FROM deliveries d \
           WHERE d.status = 'pending' AND d.next_attempt_at <= $2 \
           AND (d.lease_until IS NULL OR d.lease_until <= $2) \
           AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.endpoint_id = d.endpoint_id \
             AND e.customer_id = d.customer_id AND e.status <> 'delivered' \
             AND e.customer_seq < d.customer_seq) \
           AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.app_id = d.app_id \
             AND o.customer_id = d.customer_id AND o.dispatched_at IS NULL \
             AND o.customer_seq < d.customer_seq) \
           ORDER BY d.next_attempt_at, d.id LIMIT $3{lock}) \
         RETURNING id, app_id, customer_id, endpoint_id, event_id, event_type, attempts, \
           first_attempt_at, slot_at"
    )))
    .bind(lease_until.millis())
    .bind(now.millis())
    .bind(limit)
    .fetch_all(db.writer())
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut claimed = Vec::with_capacity(rows.len());
    for r in &rows {
        claimed.push(Claimed {
            id: r.try_get("id")?,
            app_id: r.try_get("app_id")?,
            customer_id: r.try_get("customer_id")?,
            endpoint_id: r.try_get("endpoint_id")?,
            event_id: r.try_get("event_id")?,
            event_type: r.try_get("event_type")?,
            attempts: r.try_get("attempts")?,
            first_attempt_at: Timestamp::from_millis(r.try_get("first_attempt_at")?),
            slot_at: r
                .try_get::<Option<i64>, _>("slot_at")?
                .map(Timestamp::from_millis),
            payload: String::new(),
        });
    }
    let ids: Vec<Vec<Val>> = claimed
        .iter()
        .map(|c| vec![Val::from(c.event_id.clone())])
        .collect();
    let mut conn = db.reader().acquire().await?;
    let payloads: HashMap<String, String> = many(
        &mut conn,
        "SELECT id, payload FROM outbox WHERE id IN (VALUES {values})",
        "",
        &ids,
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("id")?, r.try_get("payload")?)))
    .collect::<DbResult<_>>()?;
    for c in &mut claimed {
        c.payload = payloads.get(&c.event_id).cloned().unwrap_or_default();
    }
    Ok(claimed)
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered {
        status: Option<i64>,
    },
    /// Failed; tried again at `next_attempt_at`.
    Retry {
        status: Option<i64>,
        error: String,
        next_attempt_at: Timestamp,
    },
    /// Failed for the last time.
    Dead {
        status: Option<i64>,
        error: String,
    },
    /// Not attempted: the receiver's pace gave it the call slot `at`, when it is due again. The
    /// claim's attempt is taken back.
    Deferred {
        at: Timestamp,
    },
}

/// A row for a customer's timeline that an attempt produced (what an LMS answered).
#[derive(Debug, Clone)]
pub struct Note {
    pub app: AppId,
    pub customer: AppUserId,
    pub kind: &'static str,
    pub cause: String,
    pub detail: serde_json::Value,
}

/// Records the outcomes of attempts and the timeline rows they produced, in one transaction.
pub async fn finish(
    db: &Db,
    now: Timestamp,
    outcomes: &[(String, Outcome)],
    notes: &[Note],
) -> DbResult<()> {
    if outcomes.is_empty() && notes.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin(super::Begin::WriteLocked).await?;
    // Customers in sorted order, as every writer locks them.
    let mut sorted: Vec<&Note> = notes.iter().collect();
    sorted.sort_by(|a, b| {
        (a.app.as_str(), a.customer.as_str()).cmp(&(b.app.as_str(), b.customer.as_str()))
    });
    let mut i = 0;
    while i < sorted.len() {
        let (app, customer) = (&sorted[i].app, &sorted[i].customer);
        let mut row = super::customers::lock(&mut tx, app, customer, now).await?;
        while i < sorted.len() && sorted[i].app == *app && sorted[i].customer == *customer {
            let n = sorted[i];
            let entry = super::audit::Entry {
                at: now,
                kind: n.kind,
                cause: &n.cause,
                detail: &n.detail,
            };
            super::audit::append(&mut tx, app, customer, &mut row, entry).await?;
            i += 1;
        }
        super::customers::save_row(&mut tx, app, customer, &row, row.next_change_at, now).await?;
    }
    for (id, outcome) in outcomes {
        let (status, http, error, next, delivered) = match outcome {
            Outcome::Delivered { status } => (Status::Delivered, *status, None, None, Some(now)),
            Outcome::Retry {
                status,
                error,
                next_attempt_at,
            } => (
                Status::Pending,
                *status,
                Some(error.as_str()),
                Some(*next_attempt_at),
                None,
            ),
            Outcome::Dead { status, error } => {
                (Status::Dead, *status, Some(error.as_str()), None, None)
            }
            Outcome::Deferred { at } => {
                sqlx::query(
                    "UPDATE deliveries SET lease_until = NULL, attempts = attempts - 1, \
                     first_attempt_at = CASE WHEN attempts <= 1 THEN NULL ELSE first_attempt_at END, \
                     last_attempt_at = CASE WHEN attempts <= 1 THEN NULL ELSE last_attempt_at END, \
                     next_attempt_at = $1, slot_at = $1, updated_at = $2 WHERE id = $3",
                )
                .bind(at.millis())
                .bind(now.millis())
                .bind(id)
                .execute(&mut *tx)
                .await?;
                continue;
            }
        };
        sqlx::query(
            "UPDATE deliveries SET status = $1, lease_until = NULL, last_status = $2, last_error = $3, \
             next_attempt_at = COALESCE($4, next_attempt_at), delivered_at = $5, slot_at = NULL, \
             updated_at = $6 WHERE id = $7",
        )
        .bind(status.as_str())
        .bind(http)
        .bind(error)
        .bind(next.map(Timestamp::millis))
        .bind(delivered.map(Timestamp::millis))
        .bind(now.millis())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    super::commit(tx).await?;
    Ok(())
}

/// Which deliveries a listing shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<Status>,
    pub endpoint_id: Option<String>,
    pub customer_id: Option<String>,
    /// Only deliveries older than this one (paging).
    pub before: Option<String>,
    pub limit: i64,
}

/// An app's deliveries, newest first.
pub async fn list(db: &Db, app: &AppId, f: &Filter) -> DbResult<Vec<Delivery>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deliveries WHERE app_id = $1 \
         AND (CAST($2 AS TEXT) IS NULL OR status = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR endpoint_id = $3) \
         AND (CAST($4 AS TEXT) IS NULL OR customer_id = $4) AND (CAST($5 AS TEXT) IS NULL OR id < $5) \
         ORDER BY id DESC LIMIT $6"
    )))
    .bind(app.as_str())
    .bind(f.status.map(Status::as_str))
    .bind(f.endpoint_id.as_deref())
    .bind(f.customer_id.as_deref())
    .bind(f.before.as_deref())
    .bind(f.limit)
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(from_row).collect()
}

/// One delivery of an app.
pub async fn get(db: &Db, app: &AppId, id: &str) -> DbResult<Option<Delivery>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deliveries WHERE app_id = $1 AND id = $2"
    )))
    .bind(app.as_str())
    .bind(id)
    .fetch_optional(db.reader())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Makes a dead or pending delivery due now, with a fresh retry window. False when it is neither
/// (delivered, or no such delivery).
pub async fn retry(db: &Db, app: &AppId, id: &str, now: Timestamp) -> DbResult<bool> {
    let done = sqlx::query(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, first_attempt_at = NULL, \
         lease_until = NULL, slot_at = NULL, updated_at = $1 WHERE app_id = $2 AND id = $3 AND status <> 'delivered'",
    )
    .bind(now.millis())
    .bind(app.as_str())
    .bind(id)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Store actions (`store.*`) not delivered yet that were owed before `before`, by type: an
/// acknowledgement Play still waits for, say.
pub async fn overdue_store_actions(db: &Db, before: Timestamp) -> DbResult<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT event_type, COUNT(*) AS n FROM deliveries \
         WHERE status <> 'delivered' AND event_type LIKE 'store.%' AND created_at <= $1 \
         GROUP BY event_type",
    )
    .bind(before.millis())
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("event_type")?, r.try_get("n")?)))
        .collect()
}
