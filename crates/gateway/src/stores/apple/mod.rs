//! The App Store adapter.
//!
//! - [`verifier`]: verifiers of Apple's signed data per app (pinned roots, bundle id, environment),
//!   and a verified transaction turned into facts (the mapping itself is
//!   `gateway_core::apple::facts`);
//! - [`api`]: the App Store Server API client (transaction info and history, subscription statuses,
//!   refund and notification history, consumption information), with its bearer token and retries;
//! - [`receipts`]: legacy `verifyReceipt` receipts.

pub mod api;
pub mod receipts;
pub mod verifier;

pub use verifier::{Verifiers, transaction_facts};
