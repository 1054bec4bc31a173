//! What a store adapter answers when it cannot: the adapter's own error, which the service maps to the
//! API's errors in one place (`impl From<StoreError> for ServiceError`). An adapter names what went
//! wrong in the store's terms; the status a caller sees follows from the [`Problem`].

/// Why a store adapter could not do what it was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub problem: Problem,
    /// A stable, machine-readable code (`store_unavailable`, `transaction_not_found`, ...).
    pub code: &'static str,
    /// A sentence for the caller. It never holds a secret (a key, a token, a shared secret).
    pub message: String,
    /// What the store answered, for the caller to read (its status and error code, say).
    pub details: Option<serde_json::Value>,
}

/// What kind of failure it was, which decides who may fix it and whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// What the caller sent cannot be what the store issued (a malformed id or receipt).
    Malformed,
    /// The store does not know what the caller named.
    NotFound,
    /// The store refused it, or what it signed or answered cannot be used.
    Refused,
    /// The app's settings for the store are missing, or the store refuses them (a key, a secret).
    NotConfigured,
    /// The store holds it in another state or environment than the call needs.
    Conflict,
    /// The store failed, throttled or could not be reached: worth retrying later.
    Unavailable,
    /// What the store sent does not prove it came from the store (a push without its token).
    Unauthenticated,
}

impl StoreError {
    pub fn new(problem: Problem, code: &'static str, message: impl Into<String>) -> Self {
        StoreError {
            problem,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The app's settings for the store are missing or unusable.
    pub fn not_configured(message: impl Into<String>) -> Self {
        Self::new(Problem::NotConfigured, "store_not_configured", message)
    }

    /// The store could not answer.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Problem::Unavailable, "store_unavailable", message)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
