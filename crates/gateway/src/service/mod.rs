//! Use cases: each public function is one thing a caller can ask of the gateway, built from storage
//! (`db`), the pure core and the store adapters (`stores`), which they reach through their
//! [`Context`]. Handlers call exactly one of these. Generic code here names no store: it asks the
//! adapter of the store an input came from.
//!
//! Decisions go through one path: a use case verifies its input and hands it to [`decision::apply`]
//! (or, for store notifications, to the [`committer`] directly); the committer runs waiting inputs as
//! one [`batch`] in one transaction. Around it: [`purchases`] (submissions and restores),
//! [`notifications`] (store notifications, and inputs held for unmapped SKUs), [`recovery`] (the
//! stores' notification histories), [`customers`] (snapshots, grants, revokes, spends,
//! long polls), [`webhooks`], [`openedx`] and [`store_actions`] (what the delivery worker sends),
//! [`tokens`] (entitlement tokens), [`apps`], [`catalog`], [`keys`] and [`customer_auth`].

pub mod apps;
pub mod batch;
pub mod catalog;
pub mod checkout;
pub mod committer;
pub mod customer_auth;
pub mod customers;
pub mod decision;
pub mod keys;
pub mod notifications;
pub mod offers;
pub mod openedx;
pub mod purchases;
pub mod recovery;
pub mod store_actions;
pub mod tokens;
pub mod webhooks;

use std::sync::{Arc, OnceLock};

use gateway_core::text::{TextError, TextRule};

use gateway_core::ids::Store;

use crate::{
    db::{Db, DbError},
    stores::{Adapter, Stores},
};

/// What the use cases of one process share: the storage, the store adapters, the decision
/// [`committer`] (started on the first decision, on the runtime that makes it) and the
/// entitlement-token keys read recently. Cheap to clone; the committer stops when the last clone is
/// gone.
#[derive(Debug, Clone)]
pub struct Context {
    pub db: Db,
    pub stores: Arc<Stores>,
    committer: Arc<OnceLock<committer::Committer>>,
    token_keys: Arc<tokens::KeyCache>,
}

impl Context {
    /// A context whose store clients call out through `http`, on the gateway's `clock`.
    pub fn new(db: Db, http: reqwest::Client, clock: Arc<dyn gateway_core::Clock>) -> Self {
        Context {
            db,
            stores: Arc::new(Stores::new(http, clock)),
            committer: Default::default(),
            token_keys: Default::default(),
        }
    }

    /// The adapter of `store`, or why the gateway cannot take it.
    pub fn adapter(&self, store: Store) -> ServiceResult<Adapter<'_>> {
        self.stores.adapter(store).ok_or_else(|| {
            ServiceError::bad_request(
                "store_not_supported",
                format!(
                    "Purchases from {} are not taken yet; `app_store` and `play_store` are.",
                    store.as_str()
                ),
            )
        })
    }

    /// The decision committer (group commit) of this process.
    pub fn committer(&self) -> &committer::Committer {
        self.committer
            .get_or_init(|| committer::Committer::start(self.db.clone()))
    }

    /// The entitlement-token keys read recently.
    pub(crate) fn token_keys(&self) -> &tokens::KeyCache {
        &self.token_keys
    }
}

/// The HTTP status class of a caller's mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    Unprocessable,
    /// A store the gateway depends on failed or throttled; the caller may retry.
    Unavailable,
}

/// What a use case can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller's mistake: nothing was changed.
    #[error("{message}")]
    Client {
        kind: Kind,
        code: &'static str,
        message: String,
        details: Option<serde_json::Value>,
    },
    /// The gateway's own fault.
    #[error(transparent)]
    Internal(#[from] DbError),
}

impl ServiceError {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Client {
            kind,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, code, message)
    }

    pub fn with_details(mut self, value: serde_json::Value) -> Self {
        if let ServiceError::Client { details, .. } = &mut self {
            *details = Some(value);
        }
        self
    }
}

/// A store's failure as the API answers it: the one place a store adapter's error becomes a status.
impl From<crate::stores::StoreError> for ServiceError {
    fn from(e: crate::stores::StoreError) -> Self {
        use crate::stores::Problem;
        let kind = match e.problem {
            Problem::Malformed => Kind::BadRequest,
            Problem::NotFound => Kind::NotFound,
            Problem::Refused => Kind::Unprocessable,
            Problem::NotConfigured | Problem::Conflict => Kind::Conflict,
            Problem::Unavailable => Kind::Unavailable,
            Problem::Unauthenticated => Kind::Unauthorized,
        };
        ServiceError::Client {
            kind,
            code: e.code,
            message: e.message,
            details: e.details,
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        ServiceError::Internal(e.into())
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Checks text against its rule, refusing it with `code` and a sentence naming `field`.
pub fn text(rule: &TextRule, code: &'static str, field: &str, value: &str) -> ServiceResult<()> {
    opt_text(rule, code, field, Some(value))
}

/// [`text`] for a value that may be absent.
pub fn opt_text(
    rule: &TextRule,
    code: &'static str,
    field: &str,
    value: Option<&str>,
) -> ServiceResult<()> {
    // One rule check and one sentence for every field, a store's or the API's: a malformed value is
    // a 400 with the field named.
    Ok(crate::stores::text(rule, code, field, value)?)
}

/// Checks a free-text reason an operator must give.
pub fn reason(value: &str) -> ServiceResult<String> {
    match gateway_core::text::REASON.check(value) {
        Ok(()) => Ok(value.trim().to_owned()),
        Err(TextError::TooLong { .. }) => Err(ServiceError::bad_request(
            "reason_too_long",
            "A `reason` may be at most 1000 characters.",
        )),
        Err(TextError::Control(_)) => Err(ServiceError::bad_request(
            "invalid_reason",
            "A `reason` may not contain control characters.",
        )),
        Err(_) => Err(ServiceError::bad_request(
            "reason_required",
            "Give a `reason`: it is kept in the customer's audit log.",
        )),
    }
}
