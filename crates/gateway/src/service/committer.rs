//! The committer: the one writer of decisions in a process. Callers hand it inputs and wait; it runs
//! every input that is waiting as one batch in one transaction ([`super::batch`]), answers each
//! caller only after the commit is durable, and wakes the long polls of the customers that changed.
//!
//! While one batch commits, the next one gathers, so batches grow with the load on their own: one
//! input alone commits at once, and a thousand concurrent ones share a few fsyncs (group commit).
//! Inputs that meet on a customer or a lineage go to different batches, in arrival order. When a
//! batch fails, its inputs run again one by one, so one input's failure is its own.

use std::collections::{HashSet, VecDeque};

use tokio::sync::{mpsc, oneshot};

use super::{
    ServiceError, ServiceResult,
    batch::{self, Done, Step, Work},
};
use crate::db::{Db, DbError};

/// The most inputs in one batch.
const MAX_BATCH: usize = 256;
/// Inputs that may wait for the committer before callers queue on the channel.
const QUEUE: usize = 8_192;
/// Under load, how long a batch may wait for the inputs its callers are about to send: the callers of
/// the last batch were just answered, and most send their next input within a millisecond or two.
/// Without the wait, batches alternate between one input and all the others, and each costs the same
/// round trips. A lone caller never waits: the wait applies only after a batch of several.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);
/// Committers per process on PostgreSQL, where batches on several connections overlap their round
/// trips; SQLite has one writer.
const POSTGRES_COMMITTERS: usize = 2;

struct Pending {
    work: Work,
    reply: oneshot::Sender<ServiceResult<Done>>,
}

/// The handle callers submit to; cheap to clone.
#[derive(Debug, Clone)]
pub struct Committer {
    /// One queue per committer task; an input goes to the one its first key hashes to, so inputs
    /// about one lineage (or one customer without lineages) meet in one committer, in order.
    queues: Vec<mpsc::Sender<Pending>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("work", &self.work).finish()
    }
}

impl Committer {
    /// Starts the committer's task on `db`'s write pool. The task ends when every handle is gone.
    pub fn start(db: Db) -> Self {
        let tasks = match db.dialect {
            crate::db::Dialect::Sqlite => 1,
            crate::db::Dialect::Postgres => POSTGRES_COMMITTERS,
        };
        let queues = (0..tasks)
            .map(|_| {
                let (queue, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run(db.clone(), rx));
                queue
            })
            .collect();
        Committer { queues }
    }

    /// Decides on `work`; answers once its batch is committed.
    pub async fn submit(&self, work: Work) -> ServiceResult<Done> {
        let (reply, answer) = oneshot::channel();
        let queue = match self.queues.as_slice() {
            [one] => one,
            many => {
                use std::hash::{Hash, Hasher};
                let keys = work.keys();
                let key = keys.iter().find(|k| k.starts_with('l')).or(keys.first());
                let mut h = std::hash::DefaultHasher::new();
                key.hash(&mut h);
                &many[(h.finish() as usize) % many.len()]
            }
        };
        queue
            .send(Pending { work, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ServiceError {
    ServiceError::Internal(DbError::Corrupt("the decision committer stopped".into()))
}

async fn run(db: Db, mut rx: mpsc::Receiver<Pending>) {
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut last_batch = 0;
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(p) => waiting.push_back(p),
                None => return,
            }
        }
        if last_batch > 1 {
            let deadline = tokio::time::Instant::now() + LINGER;
            while waiting.len() < last_batch.min(MAX_BATCH) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => waiting.push_back(p),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        while waiting.len() < MAX_BATCH * 4 {
            match rx.try_recv() {
                Ok(p) => waiting.push_back(p),
                Err(_) => break,
            }
        }
        let batch = take_batch(&mut waiting);
        let (works, replies): (Vec<Work>, Vec<_>) =
            batch.into_iter().map(|p| (p.work, p.reply)).unzip();
        last_batch = works.len();
        metrics::histogram!("gateway_commit_batch_size").record(works.len() as f64);
        // A panic in a batch answers its callers with an error instead of stopping the committer.
        let steps = match tokio::spawn(execute(db.clone(), works.clone())).await {
            Ok(steps) => steps,
            Err(e) => {
                tracing::error!(error = %e, "a decision batch panicked");
                works.iter().map(|_| Step::Reply(Err(stopped()))).collect()
            }
        };
        let announces =
            |r: &Option<crate::stores::Remark>| r.as_ref().is_some_and(|r| r.event.is_some());
        let owes = works.iter().any(|w| match w {
            Work::Notification(n) => !n.owed.is_empty() || announces(&n.remark),
            Work::Decide { input, .. } => announces(&input.remark),
            Work::Record(_) => false,
        });
        if owes {
            // A store action, or an event a store's remark sends on, may have been written without
            // any customer changing.
            db.changes().outbox_signal().notify_one();
        }
        let mut deferred = Vec::new();
        for ((work, reply), step) in works.into_iter().zip(replies).zip(steps) {
            match step {
                Step::Defer => deferred.push(Pending { work, reply }),
                Step::Reply(result) => {
                    if let Ok(Done::Decided {
                        app,
                        customer,
                        outcome,
                    }) = &result
                        && outcome.changed
                    {
                        db.changes().publish(app, customer);
                        for other in &outcome.moved_from {
                            db.changes().publish(app, other);
                        }
                    }
                    let _ = reply.send(result);
                }
            }
        }
        for p in deferred.into_iter().rev() {
            waiting.push_front(p);
        }
    }
}

/// Takes the inputs of the next batch out of `waiting`, in order, skipping (and keeping for later)
/// any that meets an earlier one on a customer or a lineage.
fn take_batch(waiting: &mut VecDeque<Pending>) -> Vec<Pending> {
    let mut taken = Vec::new();
    let mut keys: HashSet<String> = HashSet::new();
    let mut kept = VecDeque::new();
    let mut blocked: HashSet<String> = HashSet::new();
    while let Some(p) = waiting.pop_front() {
        if taken.len() >= MAX_BATCH {
            kept.push_back(p);
            continue;
        }
        let mine = p.work.keys();
        // An input also waits behind an earlier input that had to wait, so a customer's inputs keep
        // their order.
        if mine.iter().any(|k| keys.contains(k) || blocked.contains(k)) {
            blocked.extend(mine);
            kept.push_back(p);
            continue;
        }
        keys.extend(mine);
        taken.push(p);
    }
    *waiting = kept;
    taken
}

/// Runs one batch in one transaction; on failure, each input alone.
async fn execute(db: Db, works: Vec<Work>) -> Vec<Step> {
    match attempt(&db, &works).await {
        Ok(steps) => steps,
        Err(e) if works.len() == 1 => vec![Step::Reply(Err(e))],
        Err(e) => {
            tracing::warn!(error = %e, inputs = works.len(), "a decision batch failed; deciding its inputs one by one");
            let mut steps = Vec::with_capacity(works.len());
            for w in works {
                let one = std::slice::from_ref(&w);
                steps.push(match attempt(&db, one).await {
                    Ok(mut s) => s.pop().unwrap_or(Step::Reply(Err(stopped()))),
                    Err(e) => Step::Reply(Err(e)),
                });
            }
            steps
        }
    }
}

async fn attempt(db: &Db, works: &[Work]) -> ServiceResult<Vec<Step>> {
    let started = std::time::Instant::now();
    // A batch reads before it writes. On SQLite it takes the write lock first (`IMMEDIATE`), so a
    // writer in another process (the CLI, a second instance) makes it wait, not fail on a stale
    // snapshot; PostgreSQL orders writers by row and advisory locks.
    let mut tx = db.begin(crate::db::Begin::WriteLocked).await?;
    let steps = batch::run(&mut tx, works).await?;
    let changed: Vec<(String, String)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Reply(Ok(Done::Decided {
                app,
                customer,
                outcome,
            })) if outcome.changed => Some(
                std::iter::once(customer)
                    .chain(&outcome.moved_from)
                    .map(|c| (app.to_string(), c.to_string())),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    crate::db::changes::announce(&mut tx, &changed).await?;
    let decided = started.elapsed();
    crate::db::commit(tx).await?;
    metrics::histogram!("gateway_commit_decide_seconds").record(decided.as_secs_f64());
    metrics::histogram!("gateway_commit_seconds").record(started.elapsed().as_secs_f64());
    Ok(steps)
}
