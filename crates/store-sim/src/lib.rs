//! The store simulator. It signs and serves exactly as the stores do, so that integration tests, the
//! `demo` command and the benchmarks drive the gateway through its real verification paths; nothing
//! in the gateway knows it is talking to a simulator except its configured base URLs and pinned roots.
//!
//! - [`apple`]: a certificate chain shaped like Apple's (root, WWDR-like intermediate with Apple's
//!   intermediate marker OID, signing leaf with Apple's leaf marker OID) and a JWS signer that writes
//!   signed data exactly as the App Store does.
//! - [`apple_api`]: a fake App Store Server API that checks the bearer token as Apple does.

pub mod apple;
pub mod apple_api;
