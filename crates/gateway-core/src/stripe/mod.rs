//! Stripe: what Stripe's webhooks and API send, what its `Stripe-Signature` proves, and what its
//! events state as the core's facts. Pure: the gateway's Stripe adapter calls the API, then these.
//!
//! - [`models`]: the event envelope (and thin events), Checkout Sessions, PaymentIntents, charges,
//!   refunds, disputes, subscriptions and invoices, field for field (API version
//!   [`models::API_VERSION`]).
//! - [`signature`]: the `Stripe-Signature` header, checked as Stripe's libraries check it.
//! - [`facts`]: each event the gateway takes, as facts about one purchase.

pub mod facts;
pub mod models;
pub mod signature;
