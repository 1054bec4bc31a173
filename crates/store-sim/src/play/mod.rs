//! Google Play, simulated: the OAuth token endpoint service accounts call, the Play Developer API
//! (Android Publisher v3) with state, Real-time developer notifications pushed as Pub/Sub pushes,
//! and a control surface that acts as the customer and as Google. Wire formats follow
//! `shared/docs/store-formats.md` part G, its corrections in `store-deltas.md` part G, and the
//! androidpublisher v3 discovery document (rev 20261026) for paths, field names and enum values.
//!
//! One [`PlaySim`] holds everything (clones of its `Arc` share it); each part keeps its state and
//! what it does without HTTP in its folder's `mod.rs`, its HTTP surface in `http.rs` beside it:
//!
//! - `auth/`: service accounts ([`ServiceAccount`], a key file exactly like Google's, RSA 2048
//!   keys from aws-lc-rs) and `POST /token`, the JWT-bearer grant checked as Google checks it.
//! - `books.rs`: the purchases, subscriptions, orders and voided purchases, their transitions, and
//!   their renderings in Google's JSON (`ProductPurchaseV2`, `ProductPurchase`,
//!   `SubscriptionPurchaseV2`, `Order`, `VoidedPurchase`). No HTTP.
//! - `api/`: the Play Developer API under `/androidpublisher/v3/applications/{packageName}/...`:
//!   bearer-token and package checks, injected faults, the call log, Google's error envelope.
//! - `push/`: the Pub/Sub push sender ([`PushSettings`]): DeveloperNotification in a push request,
//!   authenticated with a Google-signed OIDC token (or a `?token=`), deliveries recorded, forgeries
//!   for tests; and the simulator's "Google" JWKS at `GET /oauth2/v3/certs`.
//! - `store/`: the actions ([`Action`]: buy, subscribe, renew, refund, ...), each changing the books
//!   and pushing the matching RTDN, the 3-day auto-refund of unacknowledged purchases, and the
//!   `/sim/play` control surface.
//! - `tests.rs`: unit tests of private helpers; the rest is tested over HTTP from
//!   `crates/store-sim/tests/play.rs`.
//!
//! All time comes from the [`SimClock`] given to [`PlaySim::new`].
//!
//! A gateway test sets it up like this (serve first, so key files point at the simulator):
//!
//! ```no_run
//! # async fn setup() -> Result<(), Box<dyn std::error::Error>> {
//! use store_sim::{SimClock, play::{Buy, PlaySim, PushSettings, Subscribe}};
//!
//! let play = PlaySim::new(SimClock::system())?;
//! let base = play.serve().await?; // the API root; the token endpoint is {base}/token
//! play.add_package("com.acme.app");
//! let account = play.create_service_account("acme-project")?;
//! play.grant(&account, "com.acme.app")?;
//! let key_file = account.key_file_json(); // for the gateway's settings
//! play.set_push(
//!     "com.acme.app",
//!     PushSettings::oidc(
//!         "http://127.0.0.1:8080/v1/apps/acme/notifications/play_store",
//!         "rtdn-push@acme-project.iam.gserviceaccount.com",
//!     ),
//! )?;
//! let bought = play.buy(Buy::new("com.acme.app", "coins_100")).await?;
//! let token = bought.purchase_token.unwrap_or_default();
//! let subscribed = play.subscribe(Subscribe::new("com.acme.app", "premium", "monthly")).await?;
//! # let _ = (base, key_file, token, subscribed);
//! # Ok(())
//! # }
//! ```

mod api;
mod auth;
mod books;
mod push;
mod store;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::Router;
use time::{OffsetDateTime, macros::format_description};
use tokio::{net::TcpListener, task::JoinHandle};

pub use self::{
    api::{Acknowledgement, ApiCall, ProductKind, RefundReview},
    auth::{GOOGLE_TOKEN_URI, SCOPE, ServiceAccount},
    books::{CancelledBy, VoidedReason, VoidedSource},
    push::{Delivery, Forge, PushAuth, PushMode, PushSettings},
    store::{Action, Buy, Outcome, Refund, Subscribe},
};
use crate::SimClock;
pub use crate::apple::store::Period;

/// What went wrong with a control action or a setting. Nothing changes when an action fails.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    #[error("there is no package {0:?} in the simulated Play Console")]
    UnknownPackage(String),
    #[error("there is no purchase token {0:?} in the simulated Google Play")]
    UnknownToken(String),
    #[error("there is no order {0:?} in the simulated Google Play")]
    UnknownOrder(String),
    #[error("there is no service account {0:?}")]
    UnknownAccount(String),
    #[error("no push was sent with message id {0:?}")]
    UnknownMessage(String),
    #[error("purchase {0:?} is not a subscription")]
    NotASubscription(String),
    #[error("purchase {0:?} is not a one-time product purchase")]
    NotAOneTimePurchase(String),
    #[error("cannot {action} purchase {token:?}: it is {state}")]
    InvalidState {
        token: String,
        action: &'static str,
        state: &'static str,
    },
    #[error("package {0:?} has no push settings, so there is nowhere to push")]
    NoPushSettings(String),
    #[error("{0}")]
    Invalid(String),
    #[error("key generation or signing failed: {0}")]
    Key(String),
}

/// An app in the simulated Play Console: who may call the API for it and where its RTDNs go.
#[derive(Default)]
struct Package {
    /// Service accounts (`client_email`) with access to the package.
    grants: HashSet<String>,
    push: Option<PushSettings>,
}

/// The simulated Google Play. Build it with [`PlaySim::new`], serve it with [`PlaySim::serve`].
pub struct PlaySim {
    clock: Mutex<SimClock>,
    /// The base URL it is served at, once served: key files' `token_uri` point there.
    base_url: Mutex<Option<String>>,
    packages: Mutex<HashMap<String, Package>>,
    auth: auth::Auth,
    books: Mutex<books::Books>,
    api: api::ApiState,
    push: push::Pushes,
    /// Pushes sent in the background (after an API call changed something), for [`PlaySim::settle`].
    background: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for PlaySim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaySim")
            .field("base_url", &*lock(&self.base_url))
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, taking the data even if a panicking holder poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `ms` as Google writes a google-datetime: RFC 3339 in UTC with milliseconds,
/// `2014-10-02T15:01:23.045Z`.
fn rfc3339(ms: i64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// `n` random bytes (from v4 UUIDs, as the rest of the simulator draws randomness).
fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out.truncate(n);
    out
}

/// A random number below `n`.
fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n.max(1))) as u64
}

impl PlaySim {
    /// A simulated Google Play with no packages and no service accounts, reading the time from
    /// `clock`. It makes its "Google" OIDC signing key (RSA 2048) here.
    pub fn new(clock: SimClock) -> Result<Arc<Self>, PlayError> {
        Ok(Arc::new(Self {
            clock: Mutex::new(clock),
            base_url: Mutex::new(None),
            packages: Mutex::new(HashMap::new()),
            auth: auth::Auth::default(),
            books: Mutex::new(books::Books::new()),
            api: api::ApiState::default(),
            push: push::Pushes::new()?,
            background: Mutex::new(Vec::new()),
        }))
    }

    /// Makes the simulator read the time from `clock`.
    pub fn set_clock(&self, clock: SimClock) {
        *lock(&self.clock) = clock;
    }

    /// The simulator's clock; set or move it to move its time.
    pub fn clock(&self) -> SimClock {
        lock(&self.clock).clone()
    }

    /// Now, by the simulator's clock, in Unix ms.
    fn now(&self) -> i64 {
        lock(&self.clock).now_ms()
    }

    /// The base URL the simulator is served at, once served. The API root and the token endpoint
    /// (`{base}/token`) are there.
    pub fn base_url(&self) -> Option<String> {
        lock(&self.base_url).clone()
    }

    /// Tells the simulator where it is reachable when it is served some other way than
    /// [`PlaySim::serve`] (behind a proxy, say), so new key files point at the right `token_uri`.
    pub fn set_base_url(&self, url: &str) {
        *lock(&self.base_url) = Some(url.trim_end_matches('/').to_owned());
    }

    /// Adds an app to the simulated Play Console (nothing changes if it is there already).
    pub fn add_package(&self, package: &str) {
        lock(&self.packages).entry(package.to_owned()).or_default();
    }

    /// Gives a service account access to a package's purchases and orders (the Play Console's
    /// "View financial data" and "Manage orders" permissions).
    pub fn grant(&self, account: &ServiceAccount, package: &str) -> Result<(), PlayError> {
        self.auth.account_exists(&account.client_email)?;
        let mut packages = lock(&self.packages);
        let entry = packages
            .get_mut(package)
            .ok_or_else(|| PlayError::UnknownPackage(package.to_owned()))?;
        entry.grants.insert(account.client_email.clone());
        Ok(())
    }

    /// Takes a service account's access to a package away.
    pub fn revoke_grant(&self, account: &ServiceAccount, package: &str) {
        if let Some(p) = lock(&self.packages).get_mut(package) {
            p.grants.remove(&account.client_email);
        }
    }

    /// Where (and how) the package's RTDNs are pushed: its Pub/Sub push subscription.
    pub fn set_push(&self, package: &str, settings: PushSettings) -> Result<(), PlayError> {
        let mut packages = lock(&self.packages);
        let entry = packages
            .get_mut(package)
            .ok_or_else(|| PlayError::UnknownPackage(package.to_owned()))?;
        entry.push = Some(settings);
        Ok(())
    }

    /// Stops pushing the package's RTDNs anywhere.
    pub fn clear_push(&self, package: &str) {
        if let Some(p) = lock(&self.packages).get_mut(package) {
            p.push = None;
        }
    }

    /// The packages in the simulated Play Console, sorted.
    pub fn packages(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.packages).keys().cloned().collect();
        names.sort();
        names
    }

    fn package_exists(&self, package: &str) -> bool {
        lock(&self.packages).contains_key(package)
    }

    fn check_package(&self, package: &str) -> Result<(), PlayError> {
        if self.package_exists(package) {
            Ok(())
        } else {
            Err(PlayError::UnknownPackage(package.to_owned()))
        }
    }

    fn push_settings(&self, package: &str) -> Option<PushSettings> {
        lock(&self.packages)
            .get(package)
            .and_then(|p| p.push.clone())
    }

    fn has_grant(&self, package: &str, client_email: &str) -> bool {
        lock(&self.packages)
            .get(package)
            .is_some_and(|p| p.grants.contains(client_email))
    }

    /// Every route: the token endpoint, the Play Developer API, the JWKS and the `/sim/play`
    /// control surface.
    pub fn router(self: &Arc<Self>) -> Router {
        let sim = self.clone();
        Router::new()
            .merge(self.auth_router())
            .merge(self.api_router())
            .merge(self.push_router())
            .merge(self.control_router())
            .fallback(move |req: axum::extract::Request| api::fallback(sim.clone(), req))
    }

    /// Serves the simulator on a free port of 127.0.0.1 and answers its base URL (`http://...`,
    /// no trailing slash): the API root, with the token endpoint at `{base}/token`.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<String> {
        self.serve_on(TcpListener::bind("127.0.0.1:0").await?).await
    }

    /// Serves the simulator on a bound listener and answers its base URL.
    pub async fn serve_on(self: &Arc<Self>, listener: TcpListener) -> std::io::Result<String> {
        let url = format!("http://{}", listener.local_addr()?);
        self.set_base_url(&url);
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(url)
    }

    /// Waits for the pushes the simulator sent in the background (those an API call such as
    /// `subscriptionsv2.revoke` caused, or the auto-refunds a call noticed) to be delivered.
    pub async fn settle(&self) {
        loop {
            let pending: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.background));
            if pending.is_empty() {
                return;
            }
            for handle in pending {
                let _ = handle.await;
            }
        }
    }

    /// Runs `push` in the background, kept for [`PlaySim::settle`].
    fn spawn_push(self: &Arc<Self>, changes: Vec<store::Change>) {
        if changes.is_empty() {
            return;
        }
        let sim = self.clone();
        let handle = tokio::spawn(async move {
            for change in changes {
                let _ = sim.announce(change, None).await;
            }
        });
        let mut background = lock(&self.background);
        background.retain(|h| !h.is_finished());
        background.push(handle);
    }
}
