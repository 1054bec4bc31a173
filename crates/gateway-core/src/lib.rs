//! The pure heart of Purchase Gateway. Nothing here performs I/O: no database, no network, no clock
//! reads (time is an argument), so every rule can be unit-tested, property-tested and benchmarked alone.
//!
//! - [`ids`]: parsed identifiers (apps, products, entitlements, customers, currencies).
//! - [`text`]: the length and characters of every other text field, for checks and the document.
//! - [`time`]: [`Timestamp`](time::Timestamp) and the [`Clock`](time::Clock) seam.
//! - [`duration`]: ISO 8601 durations (`P30D`) for time-boxed products.
//! - [`catalog`]: products, their kinds, store SKUs, entitlements and consumable amounts.
//! - [`facts`]: normalized store events and manual actions, the only inputs of the core.
//! - [`purchase`]: a purchase's state as a fold over its facts, in the store's own time order.
//! - [`decide`]: a customer's derived state, and effects as the difference of two states.
//! - [`ledger`]: double-entry rules for consumable balances.
//! - [`apple`]: Apple-signed data (JWS with an x5c chain) and its payloads.
//! - [`audit`]: the hash chain that makes tampering with the audit log visible.

pub mod apple;
pub mod audit;
pub mod catalog;
pub mod decide;
pub mod duration;
pub mod facts;
pub mod ids;
pub mod ledger;
pub mod play;
pub mod purchase;
pub mod revenuecat;
pub mod stripe;
pub mod text;
pub mod time;

pub use catalog::{ConsumableSpec, EntitlementSpec, Product, ProductKind, StoreSkus, Terms};
pub use decide::{CustomerFacts, CustomerState, Effect, EntitlementStatus, EntitlementView};
pub use facts::{EventKind, ManualAction, ManualFact, StoreEvent};
pub use ids::{AppId, AppUserId, Currency, EntitlementId, IdError, ProductId, ResourceId, Store};
pub use purchase::{PurchaseFacts, PurchaseState, PurchaseStatus, Settled};
pub use time::{Clock, FixedClock, SystemClock, Timestamp};
