//! The App Store, simulated. Each part keeps its state and what it does without HTTP apart from its
//! HTTP surface (`http.rs` in its folder):
//!
//! - [`chain`] (`chain.rs`): a certificate chain shaped like Apple's and a JWS signer that writes
//!   signed data (transactions, renewal infos, App Store Server Notifications V2) as the App Store
//!   does. No HTTP.
//! - [`api`] (`api/`): a fake App Store Server API ([`api::AppStoreServer`]): its state in
//!   `api/mod.rs`, its router, bearer-token check, handlers and Apple's error answers in
//!   `api/http.rs`, unit tests of private helpers in `api/tests.rs`.
//! - [`store`] (`store/`): a simulated App Store ([`store::AppleStore`]) that acts as Apple on top of
//!   the fake API and notifies the gateway: its state machine in `store/mod.rs`, its `/sim/apple`
//!   control surface in `store/http.rs`, tests that look into its books in `store/tests.rs`.
//!
//! Tests that need only the public API are in `crates/store-sim/tests/` (`apple_chain.rs`,
//! `apple_store.rs`).

pub mod api;
pub mod chain;
pub mod store;
