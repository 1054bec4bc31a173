//! Background jobs. Each has one shape: while not cancelled, run one bounded batch; the outcome picks
//! the next sleep (a full batch: none; an empty one: idle; an error: back off); sleep cancellably. The
//! step function is public and returns its outcome, so tests drive it directly. Work is claimed in the
//! database, never in process memory, so any number of instances can run the same job.

pub mod deliveries;
pub mod expiry;
pub mod housekeeping;
pub mod recovery;

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What one step of a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did `n` items, a full batch: there may be more at once.
    Full(usize),
    /// It did `n` items, fewer than a batch: idle until the next tick.
    Partial(usize),
    /// It failed; try again after a back-off.
    Failed,
}

/// Runs `step` until `shutdown`, sleeping as the outcome says; `wake`, when given, ends an idle sleep
/// early, after lingering for its duration. Each step runs in a task of its own, so a panicking step counts as a failed one and the
/// loop goes on.
pub async fn run_loop<F, Fut>(
    name: &'static str,
    idle: Duration,
    wake: Option<(Arc<Notify>, Duration)>,
    shutdown: CancellationToken,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        let outcome = tokio::spawn(step()).await.unwrap_or_else(|_| {
            tracing::error!(job = name, "job step panicked");
            metrics::counter!("gateway_panics_total").increment(1);
            Outcome::Failed
        });
        let pause = match outcome {
            Outcome::Full(_) => {
                failures = 0;
                Duration::ZERO
            }
            Outcome::Partial(_) => {
                failures = 0;
                idle
            }
            Outcome::Failed => {
                failures = failures.saturating_add(1);
                let backoff = crate::backoff::STEP.delay(failures);
                tracing::warn!(
                    job = name,
                    failures,
                    backoff_ms = backoff.as_millis() as u64,
                    "job step failed; backing off"
                );
                backoff
            }
        };
        if pause.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        let woken = async {
            match (&wake, outcome) {
                (Some((w, linger)), Outcome::Partial(_)) => {
                    w.notified().await;
                    // Let the signals of a burst of commits gather into one step.
                    tokio::time::sleep(*linger).await;
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
            _ = woken => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn a_panicking_step_does_not_end_the_loop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        let (c, t) = (calls.clone(), token.clone());
        run_loop("test", Duration::from_millis(1), None, token, move || {
            let (c, t) = (c.clone(), t.clone());
            async move {
                match c.fetch_add(1, Ordering::SeqCst) {
                    0 => panic!("a bug in a step"),
                    _ => {
                        t.cancel();
                        Outcome::Partial(0)
                    }
                }
            }
        })
        .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the loop ran again after the panic"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let backoff = |failures| crate::backoff::STEP.delay(failures);
        assert!(backoff(1) <= Duration::from_millis(1200));
        assert!(backoff(3) >= Duration::from_millis(3600));
        assert!(backoff(30) <= Duration::from_secs(360));
    }
}
