//! Store adapters: one folder per store. Each verifies what the store signed, fetches current truth,
//! and turns the store's words into the core's facts; the pure models, verification and mapping live
//! in `gateway_core`, the I/O here. Adapters answer with their own [`StoreError`], which the service
//! maps to the API's errors once. The App Store is the one store built so far:
//!
//! - [`apple`]: the App Store (verifiers of Apple's signed data, the App Store Server API client,
//!   legacy receipts).

pub mod apple;
pub mod error;

pub use error::{Problem, StoreError, StoreResult};
