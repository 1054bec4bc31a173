//! Store adapters: one module per store. Each verifies what the store signed, fetches current truth,
//! and turns the store's words into the core's facts; the pure models and verification live in
//! `gateway_core`, the I/O here. The App Store is the one store built so far:
//!
//! - [`apple`]: verifiers of Apple's signed data per app (pinned roots, bundle id, environment) and
//!   a verified transaction turned into facts;
//! - [`apple_api`]: the App Store Server API client (transaction info and history, subscription
//!   statuses, refund and notification history, consumption information), with its bearer token
//!   and retries;
//! - [`apple_receipts`]: legacy `verifyReceipt` receipts.

pub mod apple;
pub mod apple_api;
pub mod apple_receipts;
pub mod error;

pub use error::{Problem, StoreError, StoreResult};
