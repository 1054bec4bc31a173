//! Delivery: after commit, each outbox event goes to every endpoint that wants it, a customer's events
//! in order, retried with exponential back-off and jitter for [`RETRY_WINDOW`], then dead-lettered:
//! a `gateway_deliveries_dead_total` count and an error log line `delivery dead-lettered` for alerts.
//!
//! A step dispatches new outbox events into deliveries, leases the due ones, sends them concurrently
//! and records the outcomes. Leases live in the database (see [`crate::db::deliveries`]), so several
//! instances share the work and a delivery whose instance died is sent again when its lease ends.
//! A receiver dedupes by `webhook-id`, which is the same on every attempt.

use std::{collections::HashMap, sync::Arc, time::Duration};

use gateway_core::{Clock, Timestamp};
use tokio::task::JoinSet;

use super::Outcome;
use crate::{
    backoff::{Backoff, Jitter},
    db::{
        Db,
        deliveries::{self, Claimed, Outcome as Attempt},
        endpoints::{self, Endpoint, STORE_KIND},
    },
    service::{
        openedx, store_actions,
        webhooks::{self, Retry},
    },
    stores::Stores,
};

/// Outbox events fanned out per step.
pub const DISPATCH_BATCH: i64 = 500;

/// Deliveries sent per step, concurrently; their outcomes are recorded in one transaction.
pub const SEND_BATCH: i64 = 128;

/// How long a claim holds: far longer than one attempt may take ([`webhooks::SEND_TIMEOUT`]).
pub const LEASE: Duration = Duration::from_secs(60);

/// How long a delivery is retried before it is dead-lettered.
pub const RETRY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The first retry's delay; each next one doubles, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_secs(5);
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// The delays between attempts: from 5 s, doubling up to an hour, anywhere from half to the whole
/// delay so that the deliveries that failed together do not retry together.
const RETRIES: Backoff = Backoff {
    first: FIRST_DELAY,
    doublings: 16,
    cap: MAX_DELAY,
    jitter: Jitter::Half,
};

/// The delay before the attempt after `attempts` failed ones.
pub fn retry_delay(attempts: i64) -> Duration {
    RETRIES.delay(attempts.clamp(1, 20) as u32)
}

/// What performing a delivery needs beyond the database.
#[derive(Clone)]
pub struct Senders {
    /// Posts webhooks and calls LMSes (no redirects).
    pub http: reqwest::Client,
    /// The Open edX connector's tokens and course modes.
    pub lms: Arc<openedx::Caches>,
    /// Perform the actions owed to stores.
    pub stores: Arc<Stores>,
}

/// One step: dispatch, claim, send, record.
pub async fn step(db: &Db, clock: &Arc<dyn Clock>, senders: &Senders) -> Outcome {
    let now = clock.now();
    let dispatched = match deliveries::dispatch(db, now, DISPATCH_BATCH).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "deliveries: could not dispatch outbox events");
            return Outcome::Failed;
        }
    };
    let lease_until = now.plus_millis(LEASE.as_millis() as i64);
    let claimed = match deliveries::claim(db, now, lease_until, SEND_BATCH).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "deliveries: could not claim due deliveries");
            return Outcome::Failed;
        }
    };
    let sent = claimed.len();
    if sent > 0 {
        let (outcomes, notes) = send_all(db, senders, now, claimed).await;
        if let Err(e) = deliveries::finish(db, clock.now(), &outcomes, &notes).await {
            // The leases run out and the deliveries are sent again: at least once, never lost.
            tracing::error!(error = %e, "deliveries: could not record attempts");
            return Outcome::Failed;
        }
    }
    if dispatched as i64 >= DISPATCH_BATCH || sent as i64 >= SEND_BATCH {
        Outcome::Full(dispatched + sent)
    } else {
        Outcome::Partial(dispatched + sent)
    }
}

async fn send_all(
    db: &Db,
    senders: &Senders,
    now: Timestamp,
    claimed: Vec<Claimed>,
) -> (Vec<(String, Attempt)>, Vec<deliveries::Note>) {
    let mut by_id: HashMap<String, Option<Arc<Endpoint>>> = HashMap::new();
    for c in &claimed {
        if !by_id.contains_key(&c.endpoint_id) {
            let found = endpoint_by_id(db, &c.endpoint_id).await;
            by_id.insert(c.endpoint_id.clone(), found.map(Arc::new));
        }
    }
    let (claimed, mut outcomes) = pace(db, &by_id, now, claimed).await;
    let mut tasks = JoinSet::new();
    for c in claimed {
        let endpoint = by_id.get(&c.endpoint_id).cloned().flatten();
        let senders = senders.clone();
        let db = db.clone();
        tasks.spawn(async move {
            let (sent, enrollment) = match endpoint.as_deref() {
                Some(e) if e.kind == "openedx" => {
                    match openedx::Lms::new(&senders.http, &senders.lms, e) {
                        Some(lms) => {
                            let answered = lms.deliver(&c.payload).await;
                            (answered.sent, answered.enrollment)
                        }
                        None => (
                            webhooks::Sent::failed(
                                None,
                                "the endpoint's Open edX settings cannot be read",
                            ),
                            None,
                        ),
                    }
                }
                Some(e) if e.kind == STORE_KIND => (
                    store_actions::perform(
                        &db,
                        &senders.stores,
                        &c.app_id,
                        (&c.event_type, &c.payload),
                    )
                    .await,
                    None,
                ),
                Some(e) => (
                    webhooks::send(&senders.http, e, &c.event_id, &c.payload, now).await,
                    None,
                ),
                None => (
                    webhooks::Sent::failed(None, "the endpoint no longer exists"),
                    None,
                ),
            };
            (c, endpoint, sent, enrollment)
        });
    }
    let mut notes = Vec::new();
    let mut holds: HashMap<String, Timestamp> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let Ok((c, endpoint, sent, enrollment)) = done else {
            // A panicked send: its lease runs out and it is tried again.
            continue;
        };
        let throttled = match sent.retry {
            Retry::After(wait) => {
                let until = now.plus_millis(wait.as_millis() as i64);
                let held = holds.entry(c.endpoint_id.clone()).or_insert(until);
                *held = (*held).max(until);
                true
            }
            _ => false,
        };
        let attempt = judge(&c, endpoint.as_deref(), sent, now);
        // A throttled call is only waiting: it is not a failure of the learner's enrollment.
        if !throttled && let Some(note) = enrollment.and_then(|e| lms_answer(&c, &e, &attempt)) {
            notes.push(note);
        }
        outcomes.push((c.id.clone(), attempt));
    }
    for (endpoint_id, until) in holds {
        let Some(Some(e)) = by_id.get(&endpoint_id) else {
            continue;
        };
        let Some(settings) = openedx::Settings::of(e) else {
            continue;
        };
        // The LMS asked for quiet: every instance's calls of the endpoint wait until then.
        if let Err(err) = openedx::hold(db, e, &settings, until).await {
            tracing::error!(error = %err, endpoint_id, "deliveries: could not hold an endpoint's calls back");
        }
    }
    (outcomes, notes)
}

/// Gives the claimed deliveries that call an Open edX LMS a call slot of their endpoint's pace. Those
/// whose slot has come are returned to be sent; the others are deferred to their slots.
async fn pace(
    db: &Db,
    by_id: &HashMap<String, Option<Arc<Endpoint>>>,
    now: Timestamp,
    mut claimed: Vec<Claimed>,
) -> (Vec<Claimed>, Vec<(String, Attempt)>) {
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    let paced: HashMap<&str, (&Endpoint, openedx::Settings)> = by_id
        .values()
        .flatten()
        .filter(|e| e.kind == "openedx")
        .filter_map(|e| Some((e.id.as_str(), (e.as_ref(), openedx::Settings::of(e)?))))
        .collect();
    // Per endpoint: the deliveries that call it, with the calls each takes. A delivery deferred to a
    // slot is sent in it.
    let mut wanting: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (i, c) in claimed.iter().enumerate() {
        let Some((e, settings)) = paced.get(c.endpoint_id.as_str()) else {
            continue;
        };
        if c.slot_at.is_some() {
            continue;
        }
        let body = serde_json::from_str(&c.payload).unwrap_or_default();
        if let Some(call) = openedx::enrollment_for(settings, &body) {
            wanting
                .entry(e.id.as_str())
                .or_default()
                .push((i, call.calls()));
        }
    }
    let mut later: HashMap<usize, Timestamp> = HashMap::new();
    for (endpoint_id, waiting) in wanting {
        let (e, settings) = &paced[endpoint_id];
        let calls = waiting.iter().map(|(_, n)| n).sum();
        match openedx::slots(db, e, settings, now, calls).await {
            Ok(slots) => {
                // Each delivery goes in the slot of its first call.
                let mut first = 0;
                for (i, n) in waiting {
                    if slots[first] > now {
                        later.insert(i, slots[first]);
                    }
                    first += n;
                }
            }
            Err(err) => {
                tracing::error!(error = %err, endpoint_id, "deliveries: could not pace an endpoint's calls");
                for (i, _) in waiting {
                    later.insert(i, now.plus_millis(PACE_UNKNOWN.as_millis() as i64));
                }
            }
        }
    }
    if later.is_empty() {
        return (claimed, Vec::new());
    }
    let mut send = Vec::with_capacity(claimed.len() - later.len());
    let mut deferred = Vec::with_capacity(later.len());
    for (i, c) in claimed.into_iter().enumerate() {
        match later.get(&i) {
            Some(at) => deferred.push((c.id, Attempt::Deferred { at: *at })),
            None => send.push(c),
        }
    }
    metrics::counter!("gateway_deliveries_paced_total").increment(deferred.len() as u64);
    (send, deferred)
}

/// How long a delivery waits when its endpoint's pace cannot be read.
const PACE_UNKNOWN: Duration = Duration::from_secs(5);

/// What the LMS answered, for the customer's timeline: every success, and a failure on the first
/// attempt and on the last, so that a long outage does not flood it.
fn lms_answer(
    c: &Claimed,
    enrollment: &openedx::Enrollment,
    attempt: &Attempt,
) -> Option<deliveries::Note> {
    let (ok, status, error) = match attempt {
        Attempt::Delivered { status } => (true, *status, None),
        Attempt::Retry { status, error, .. } if c.attempts == 1 => (false, *status, Some(error)),
        Attempt::Dead { status, error } => (false, *status, Some(error)),
        Attempt::Retry { .. } | Attempt::Deferred { .. } => return None,
    };
    let what = enrollment.describe();
    let cause = match error {
        None => format!("Open edX {what}"),
        Some(e) => format!("Open edX did not take the call that {what}: {e}"),
    };
    let detail = serde_json::json!({
        "endpoint_id": c.endpoint_id, "delivery_id": c.id, "event_id": c.event_id,
        "user": enrollment.user, "course_id": enrollment.course_id, "mode": enrollment.mode,
        "is_active": enrollment.is_active, "ok": ok, "http_status": status, "attempt": c.attempts,
    });
    Some(deliveries::Note {
        app: c.app_id.parse().ok()?,
        customer: c.customer_id.parse().ok()?,
        kind: if ok {
            openedx::LMS_TOOK
        } else {
            openedx::LMS_REFUSED
        },
        cause,
        detail,
    })
}

/// What an attempt's result means for the delivery.
fn judge(
    c: &Claimed,
    endpoint: Option<&Endpoint>,
    sent: webhooks::Sent,
    now: Timestamp,
) -> Attempt {
    let retry = sent.retry;
    let status = sent.status.map(i64::from);
    let Some(error) = sent.error else {
        metrics::counter!("gateway_deliveries_total", "outcome" => "delivered").increment(1);
        return Attempt::Delivered { status };
    };
    let window_ends = c
        .first_attempt_at
        .plus_millis(RETRY_WINDOW.as_millis() as i64);
    if now >= window_ends || retry == Retry::Never {
        let app = endpoint.map(|e| e.app_id.to_string()).unwrap_or_default();
        metrics::counter!("gateway_deliveries_dead_total", "app" => app.clone()).increment(1);
        metrics::counter!("gateway_deliveries_total", "outcome" => "dead").increment(1);
        tracing::error!(
            delivery_id = %c.id,
            endpoint_id = %c.endpoint_id,
            event_id = %c.event_id,
            app_id = %app,
            attempts = c.attempts,
            error = %error,
            "delivery dead-lettered"
        );
        return Attempt::Dead { status, error };
    }
    metrics::counter!("gateway_deliveries_total", "outcome" => "retry").increment(1);
    tracing::warn!(delivery_id = %c.id, endpoint_id = %c.endpoint_id, attempts = c.attempts, error = %error, "delivery failed; will retry");
    let delay = match retry {
        Retry::After(wait) => wait,
        _ => retry_delay(c.attempts),
    };
    Attempt::Retry {
        status,
        error,
        next_attempt_at: now.plus_millis(delay.as_millis() as i64),
    }
}

async fn endpoint_by_id(db: &Db, id: &str) -> Option<Endpoint> {
    match endpoints::by_id(db, id).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, endpoint_id = id, "deliveries: could not read an endpoint");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_to_the_cap_with_jitter() {
        for _ in 0..100 {
            let first = retry_delay(1);
            assert!(
                first >= FIRST_DELAY / 2 && first <= FIRST_DELAY,
                "{first:?}"
            );
            let fourth = retry_delay(4);
            assert!(fourth >= Duration::from_secs(20) && fourth <= Duration::from_secs(40));
            let late = retry_delay(40);
            assert!(late >= MAX_DELAY / 2 && late <= MAX_DELAY, "{late:?}");
        }
    }

    /// The schedule keeps trying for the whole window: about 30 attempts over 24 hours.
    #[test]
    fn the_schedule_spans_the_window() {
        let mut elapsed = Duration::ZERO;
        let mut attempts = 1;
        while elapsed < RETRY_WINDOW {
            elapsed += retry_delay(attempts);
            attempts += 1;
        }
        assert!((25..=60).contains(&attempts), "{attempts} attempts");
    }
}
