//! Store adapters: one module per store. Each verifies what the store signed, fetches current truth,
//! and turns the store's words into the core's facts; the pure models and verification live in
//! `gateway_core`, the I/O here.

pub mod apple;
pub mod apple_api;
pub mod apple_receipts;
