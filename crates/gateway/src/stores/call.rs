//! One call to a store's API, retried: the plumbing every store client shares. A client builds the
//! request afresh for each attempt (with a fresh bearer token), says which answers are worth another
//! attempt and how long to wait before it, and maps a final refusal to its own error; this module
//! sends, waits and logs.

use std::time::Duration;

use crate::{backoff::Backoff, stores::StoreResult};

/// How a store's API is called.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// The API's name, for logs and errors (`App Store Server API`).
    pub service: &'static str,
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// The waits between attempts, when the answer names none.
    pub backoff: Backoff,
    /// One request's limit.
    pub timeout: Duration,
}

/// A final non-2xx answer, for the client to map.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: u16,
    pub body: String,
    /// The answer was worth retrying, but the attempts ran out.
    pub retryable: bool,
}

/// What a client says of an answer that is not a 2xx.
pub(crate) struct Verdict {
    pub retryable: bool,
    /// How long to wait before the next attempt; the policy's back-off when `None`.
    pub wait: Option<Duration>,
}

/// Sends the request `build` makes, again while `judge` finds the answer worth retrying and attempts
/// remain. Returns the body of a 2xx answer; a network failure after the last attempt is
/// `unreachable`, a final refusal goes to the client as a [`Refusal`].
pub(crate) async fn send(
    policy: &Policy,
    mut build: impl FnMut() -> StoreResult<reqwest::RequestBuilder>,
    judge: impl Fn(u16, &str, Option<&str>) -> Verdict,
    unreachable: impl Fn() -> crate::stores::StoreError,
) -> StoreResult<Result<String, Refusal>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let request = build()?.timeout(policy.timeout);
        let res = match request.send().await {
            Ok(r) => r,
            Err(e) if attempt < policy.attempts => {
                tracing::warn!(error = %e, attempt, service = policy.service, "store API unreachable; retrying");
                tokio::time::sleep(policy.backoff.delay(attempt)).await;
                continue;
            }
            Err(_) => return Err(unreachable()),
        };
        let status = res.status();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = res.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(Ok(text));
        }
        let verdict = judge(status.as_u16(), &text, retry_after.as_deref());
        if verdict.retryable && attempt < policy.attempts {
            let wait = verdict
                .wait
                .unwrap_or_else(|| policy.backoff.delay(attempt));
            tracing::warn!(
                status = status.as_u16(),
                attempt,
                wait_ms = wait.as_millis() as u64,
                service = policy.service,
                "store API asked to retry"
            );
            tokio::time::sleep(wait).await;
            continue;
        }
        return Ok(Err(Refusal {
            status: status.as_u16(),
            body: text,
            retryable: verdict.retryable,
        }));
    }
}
