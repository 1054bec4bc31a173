//! The store simulator. It signs and serves exactly as the stores do, so that integration tests, the
//! `demo` command and the benchmarks drive the gateway through its real verification paths; nothing
//! in the gateway knows it is talking to a simulator except its configured base URLs and pinned roots.
//!
//! One folder per store:
//!
//! - [`apple`] (`src/apple/`): the App Store.
//!   - [`apple::chain`]: a certificate chain shaped like Apple's (root, WWDR-like intermediate with
//!     Apple's intermediate marker OID, signing leaf with Apple's leaf marker OID) and a JWS signer
//!     that writes signed data exactly as the App Store does.
//!   - [`apple::api`]: a fake App Store Server API that checks the bearer token as Apple does.
//!   - [`apple::store`]: a simulated App Store on top of the fake API: buy, renew, fail to renew,
//!     refund, reverse a refund, revoke and expire, each kept in the API's state and sent to the
//!     gateway as the matching App Store Server Notification; and its HTTP control surface.
//! - [`openedx`] (`src/openedx/`): a stand-in Open edX LMS (OAuth2 client credentials and the
//!   Enrollment API).
//! - [`play`] (`src/play/`): Google Play: service accounts and the OAuth token endpoint, the Play
//!   Developer API with state (one-time purchases, subscriptions, orders, voided purchases), Real-time
//!   developer notifications pushed as authenticated Pub/Sub pushes, and the `/sim/play` control
//!   surface ([`play::PlaySim`]).
//! - [`stripe`] (`src/stripe/`): Stripe: one test-mode account and its secret key, the `/v1` API
//!   (customers, Checkout Sessions, payment intents, charges, refunds, disputes, subscriptions,
//!   invoices, the events list) with idempotency keys and Stripe's errors, events signed and
//!   POSTed to webhook endpoints as Stripe does (secret rotation, forgeries, thin events), a hosted
//!   checkout page, and the `/sim/stripe` control surface ([`stripe::StripeSim`]).
//! - [`control`]: what the stores' control surfaces share (error answers, JSON bodies).
//! - [`SimClock`] (this file): the simulator's time, which tests can set and move.
//!
//! A store's simulator goes in `src/<store>/`, its state apart from its HTTP surface: the state and
//! what it does without HTTP in the folder's `mod.rs`; the router, handlers, request parsing and
//! error answers in `http.rs` beside it, a child module, so the handlers reach the state's private
//! fields without widening them. A store with several parts gives each a folder of that shape
//! (`src/apple/api/`, `src/apple/store/`; a part with no HTTP, such as `src/apple/chain.rs`, is one
//! file) and keeps a map of them in `src/<store>/mod.rs`. Tests
//! that need only the public API go in `crates/store-sim/tests/` (`<store>.rs`,
//! `<store>_<part>.rs`); a test that needs private items stays in the crate, in a `tests.rs` beside
//! the code it tests (`#[cfg(test)] mod tests;`).

pub mod apple;
pub mod control;
pub mod openedx;
pub mod play;
pub mod stripe;

use std::sync::{Arc, Mutex};

/// Where a [`SimClock`] reads the time.
#[derive(Clone)]
enum Source {
    System,
    Fixed(i64),
    Custom(Arc<dyn Fn() -> i64 + Send + Sync>),
}

/// The simulator's time in Unix milliseconds: the system clock unless set. Clones share one time, so
/// the simulated App Store and its API agree on `now` however a test moves it.
#[derive(Clone)]
pub struct SimClock(Arc<Mutex<Source>>);

impl std::fmt::Debug for SimClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SimClock").field(&self.now_ms()).finish()
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::system()
    }
}

impl SimClock {
    /// The system clock, as the stores' servers use.
    pub fn system() -> Self {
        Self(Arc::new(Mutex::new(Source::System)))
    }

    /// A clock standing at `ms` until set or moved.
    pub fn fixed(ms: i64) -> Self {
        Self(Arc::new(Mutex::new(Source::Fixed(ms))))
    }

    /// A clock that reads another one (a test's gateway clock, say), so one move moves both.
    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(Mutex::new(Source::Custom(Arc::new(now)))))
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let source = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match source {
            Source::System => system_ms(),
            Source::Fixed(ms) => ms,
            Source::Custom(now) => now(),
        }
    }

    /// Stops the clock at `ms`.
    pub fn set(&self, ms: i64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Source::Fixed(ms);
    }

    /// Moves the clock `ms` forward (or back, when negative) and stops it there.
    pub fn advance(&self, ms: i64) {
        let now = self.now_ms();
        self.set(now.saturating_add(ms));
    }
}

fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
