//! Google Play: what Play's Developer API and its Real-time developer notifications send, and what it
//! states as the core's facts. Pure: the gateway's Play adapter calls the API, then these.
//!
//! - [`models`]: one-time and subscription purchases, voided purchases, Pub/Sub pushes and
//!   developer notifications, field for field.
//! - [`facts`]: a purchase's current state as facts, by the table in its docs.

pub mod facts;
pub mod models;
