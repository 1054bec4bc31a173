//! Apple: signed data (JWS with an `x5c` chain to Apple's root) and the payloads Apple signs.
//!
//! - [`facts`]: a verified transaction, and a notification, as the core's facts.
//! - [`jws`]: the verifier, with the rules of Apple's own `SignedDataVerifier`.
//! - [`models`]: decoded transactions, renewal info and App Store Server Notifications V2.

pub mod facts;
pub mod jws;
pub mod models;

pub use jws::{AppleEnvironment, SignedDataVerifier, TrustedRoots, VerifyError};
