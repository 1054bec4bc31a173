//! Store adapters: one folder per store, each of the same shape. A store's adapter
//!
//! - holds its client, which does all its I/O (the store's API, its credentials, retries with
//!   [`crate::backoff`]);
//! - turns what the store signed or answered into the core's facts, through pure functions that live
//!   in `gateway_core` where they need no I/O;
//! - and performs the store actions the gateway owes it, from the outbox.
//!
//! Generic code reaches a store only through an [`Adapter`], whose verbs every store has: check and
//! verify what a client submitted, verify a notification, poll for what notifications missed, perform
//! a store action, refund a purchase for an operator. What they answer is store-neutral: a verified [`Transaction`] the service maps to
//! the catalog and to a customer, a [`Notice`] the batch decides, a [`Page`] of notices. Adapters
//! answer with their own [`StoreError`], which the service maps to the API's errors once.
//!
//! - [`apple`]: the App Store (Apple's signed data, the App Store Server API, legacy receipts);
//! - [`play`]: Google Play (the Play Developer API with its service account, Real-time developer
//!   notifications over Pub/Sub push, voided purchases).
//!
//! A new store goes in `stores/<store>/` (its client, its adapter in `mod.rs`), gets a variant of
//! [`Transaction`] and of [`Adapter`], and a field of [`Stores`]; its pure mapping goes in
//! `gateway_core::<store>`, its simulator in `store-sim/src/<store>/`.

pub mod apple;
mod call;
pub mod error;
pub mod play;
pub mod revenuecat;
pub mod stripe;

use gateway_core::{
    Product, PurchaseFacts, StoreEvent, Timestamp, apple::models::JwsTransaction, ids::Store,
    text::TextRule,
};

pub use error::{Problem, StoreError, StoreResult};

use crate::model::App;

/// The adapters of every store the gateway takes, with their clients and caches. Cheap to share.
#[derive(Debug)]
pub struct Stores {
    pub apple: apple::AppStore,
    pub play: play::PlayStore,
    pub stripe: stripe::StripeStore,
    pub revenuecat: revenuecat::RevenueCatStore,
}

impl Stores {
    /// The adapters, their clients on `http`, on the gateway's `clock` where a store checks the time
    /// of what the gateway signs.
    pub fn new(http: reqwest::Client, clock: std::sync::Arc<dyn gateway_core::Clock>) -> Self {
        Stores {
            apple: apple::AppStore::new(http.clone()),
            stripe: stripe::StripeStore::new(http.clone()),
            revenuecat: revenuecat::RevenueCatStore,
            play: play::PlayStore::new(http, clock),
        }
    }

    /// The adapter of `store`, when the gateway takes it.
    pub fn adapter(&self, store: Store) -> Option<Adapter<'_>> {
        match store {
            Store::AppStore => Some(Adapter::AppStore(&self.apple)),
            Store::PlayStore => Some(Adapter::Play(&self.play)),
            Store::Stripe => Some(Adapter::Stripe(&self.stripe)),
            Store::RevenueCat => Some(Adapter::RevenueCat(&self.revenuecat)),
            Store::Manual => None,
        }
    }

    /// Every adapter.
    pub fn all(&self) -> [Adapter<'_>; 4] {
        [
            Adapter::AppStore(&self.apple),
            Adapter::Play(&self.play),
            Adapter::Stripe(&self.stripe),
            Adapter::RevenueCat(&self.revenuecat),
        ]
    }
}

/// The outbox types of the actions stores are owed.
pub const ACTION_TYPES: [&str; 4] = [
    apple::CONSUMPTION,
    apple::FINISH,
    play::ACKNOWLEDGE,
    play::REFUND_REVIEW,
];

/// One store's adapter: the verbs every store has, dispatched to it.
#[derive(Debug, Clone, Copy)]
pub enum Adapter<'a> {
    AppStore(&'a apple::AppStore),
    Play(&'a play::PlayStore),
    Stripe(&'a stripe::StripeStore),
    RevenueCat(&'a revenuecat::RevenueCatStore),
}

/// What an app submits as proof of a purchase, as it arrived; each store reads its own fields and
/// refuses the others'.
#[derive(Debug, Clone, Default)]
pub struct Proof {
    pub signed_transaction: Option<String>,
    pub transaction_id: Option<String>,
    pub receipt_data: Option<String>,
    pub purchase_token: Option<String>,
    pub checkout_session_id: Option<String>,
    /// Whether the purchase is of a subscription, when the catalog knows from the product the app
    /// named (a store that reads subscriptions apart asks the right API first).
    pub subscription: Option<bool>,
    /// The store's id of the product the app named, when the catalog knows it (a store with an
    /// older read by product id falls back to it).
    pub store_sku: Option<String>,
}

impl Proof {
    /// Whether it names no purchase at all (an app that only says who its customer is).
    pub fn is_empty(&self) -> bool {
        self.signed_transaction.is_none()
            && self.transaction_id.is_none()
            && self.receipt_data.is_none()
            && self.purchase_token.is_none()
            && self.checkout_session_id.is_none()
    }
}

/// What an app submits to restore its purchases (a new device, a new install).
#[derive(Debug, Clone, Default)]
pub struct RestoreProof {
    pub signed_transactions: Vec<String>,
    pub receipt_data: Option<String>,
    pub purchase_tokens: Vec<String>,
}

/// A notification as it arrived: its body, and what authenticates it besides.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub body: &'a [u8],
    /// The `Authorization: Bearer` token, if any.
    pub bearer: Option<&'a str>,
    /// The `token` query parameter, if any.
    pub query_token: Option<&'a str>,
    /// The `Stripe-Signature` header, if any.
    pub signature: Option<&'a str>,
    /// The whole `Authorization` header, if any (RevenueCat's shared secret).
    pub authorization: Option<&'a str>,
}

/// What a submission proved: the transactions the store vouches for, and the raw proof to keep.
#[derive(Debug, Clone)]
pub struct Proven {
    pub transactions: Vec<Transaction>,
    pub raw: String,
    /// What the proof was (`transaction`, `receipt`, `purchase`), for the dedupe key and the timeline.
    pub what: &'static str,
    /// A listing of every purchase of the app (a receipt): only those the catalog sells count, and
    /// one it does not is skipped rather than refused.
    pub listing: bool,
    /// Store actions owed once the purchase is granted (an acknowledgement).
    pub owed: Vec<Owed>,
}

/// One transaction as its store stated it, verified.
#[derive(Debug, Clone, PartialEq)]
pub enum Transaction {
    AppStore(JwsTransaction),
    Play(play::PlayPurchase),
    Stripe(stripe::StripePurchase),
    /// A purchase of another store, relayed by RevenueCat.
    RevenueCat(revenuecat::RelayedPurchase),
}

impl Transaction {
    pub fn store(&self) -> Store {
        match self {
            Transaction::AppStore(_) => Store::AppStore,
            Transaction::Play(_) => Store::PlayStore,
            Transaction::Stripe(_) => Store::Stripe,
            Transaction::RevenueCat(r) => r.store,
        }
    }

    /// The store's product id (the SKU the catalog maps).
    pub fn sku(&self) -> &str {
        match self {
            Transaction::AppStore(t) => t.product_id.as_deref().unwrap_or_default(),
            Transaction::Play(p) => p.sku(),
            Transaction::Stripe(s) => &s.price,
            Transaction::RevenueCat(r) => &r.sku,
        }
    }

    /// The purchase lineage the transaction belongs to.
    pub fn lineage(&self) -> String {
        match self {
            Transaction::AppStore(t) => t
                .original_transaction_id
                .clone()
                .or_else(|| t.transaction_id.clone())
                .unwrap_or_default(),
            Transaction::Play(p) => p.token.clone(),
            Transaction::Stripe(s) => s.lineage.clone(),
            Transaction::RevenueCat(r) => r.lineage.clone(),
        }
    }

    /// The token an order issued and the app passed to the store, which binds the purchase to the
    /// order's customer.
    pub fn order_token(&self) -> Option<&str> {
        match self {
            Transaction::AppStore(t) => t.app_account_token.as_deref(),
            Transaction::Play(p) => p.order_token(),
            Transaction::Stripe(s) => s.order.as_deref(),
            Transaction::RevenueCat(_) => None,
        }
    }

    /// The buyer's account at the store, when the store names one per buyer and app (Apple's
    /// `appTransactionId`): a notification about the account reaches the customer last seen with it.
    pub fn account(&self) -> Option<&str> {
        match self {
            Transaction::AppStore(t) => t.app_transaction_id.as_deref(),
            _ => None,
        }
    }

    /// The customer the store names outright (RevenueCat's `app_user_id`), taken on its word when
    /// nothing the gateway issued names one.
    pub fn named_customer(&self) -> Option<&str> {
        match self {
            Transaction::RevenueCat(r) => Some(&r.customer),
            _ => None,
        }
    }

    /// The lineage this one carries on from, for the same customer: the subscription an upgrade or
    /// a downgrade replaced, the expired one a resubscription bought outside the app renews, or the
    /// temporary grant a purchase relayed by RevenueCat succeeds.
    pub fn linked_lineage(&self) -> Option<&str> {
        match self {
            Transaction::AppStore(_) | Transaction::Stripe(_) => None,
            Transaction::Play(p) => p.linked_token(),
            Transaction::RevenueCat(r) => r.succeeds.as_ref().map(|(l, _)| l.as_str()),
        }
    }

    /// The facts that end the lineage this one replaces (see [`Transaction::linked_lineage`]), as
    /// `product`'s purchase: it ends when this one starts, so access has no gap and no overlap.
    pub fn replaced_facts(&self, product: &Product) -> Option<PurchaseFacts> {
        match self {
            Transaction::AppStore(_) | Transaction::Stripe(_) => None,
            Transaction::Play(p) => p.replaced_facts(product),
            Transaction::RevenueCat(r) => r.replaced_facts(product),
        }
    }

    /// The store's id of this transaction, for the timeline.
    pub fn id(&self) -> &str {
        match self {
            Transaction::AppStore(t) => t.transaction_id.as_deref().unwrap_or("?"),
            Transaction::Play(p) => p.id(),
            Transaction::Stripe(s) => &s.lineage,
            Transaction::RevenueCat(r) => &r.lineage,
        }
    }

    /// The facts the transaction states about its lineage, as `product` of the catalog.
    pub fn facts(&self, purchase_id: String, product: &Product) -> StoreResult<PurchaseFacts> {
        match self {
            Transaction::AppStore(t) => apple::transaction_facts(t, purchase_id, product),
            Transaction::Play(p) => p.facts(purchase_id, product),
            Transaction::Stripe(s) => Ok(s.facts(purchase_id, product)),
            Transaction::RevenueCat(r) => Ok(r.facts(purchase_id, product)),
        }
    }

    /// The transaction as its store wrote it, to keep.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            Transaction::AppStore(t) => serde_json::to_value(t),
            Transaction::Play(p) => serde_json::to_value(p),
            Transaction::Stripe(s) => serde_json::to_value(s),
            Transaction::RevenueCat(r) => serde_json::to_value(r),
        }
    }

    /// A transaction kept by [`Transaction::to_json`].
    pub fn from_json(store: Store, value: serde_json::Value) -> serde_json::Result<Self> {
        // A relayed purchase is kept under its store's name, and says it is relayed.
        if value.get("via").and_then(|v| v.as_str()) == Some(revenuecat::VIA) {
            return Ok(Transaction::RevenueCat(serde_json::from_value(value)?));
        }
        match store {
            Store::AppStore => Ok(Transaction::AppStore(serde_json::from_value(value)?)),
            Store::PlayStore => Ok(Transaction::Play(serde_json::from_value(value)?)),
            Store::Stripe => Ok(Transaction::Stripe(serde_json::from_value(value)?)),
            other => Err(serde::de::Error::custom(format!(
                "no transaction of {} is kept",
                other.as_str()
            ))),
        }
    }
}

/// A store notification, verified.
#[derive(Debug, Clone)]
pub struct Notice {
    pub store: Store,
    /// The store's id of the notification: its dedupe key.
    pub id: String,
    /// The body as it arrived.
    pub raw: String,
    /// A sentence for the timeline.
    pub cause: String,
    /// The transaction it is about; none for a test notification, say.
    pub transaction: Option<Transaction>,
    /// Facts it states beyond its transaction's own fields.
    pub events: Vec<StoreEvent>,
    /// Store actions it asks of the gateway (the answer to a consumption request).
    pub owed: Vec<Owed>,
    /// Purchases the provider moved from some customers to another (RevenueCat's `TRANSFER`).
    pub transfer: Option<Transfer>,
    /// What it says beyond its facts, for the customer's timeline and the operator.
    pub remark: Option<Remark>,
    /// The store account it is about when it names no transaction (Apple's `appTransactionId` in
    /// a `RESCIND_CONSENT`): its customer is the one that account was last seen with.
    pub account: Option<String>,
}

/// The outbound event sent when a store says a customer's consent was withdrawn (Apple's
/// `RESCIND_CONSENT`): the operator ends the customer's sessions and deletes what consent covered.
pub const CONSENT_RESCINDED: &str = "customer.consent_rescinded";

/// A notification that matters though it may state no new fact (a declined refund, a price
/// increase, a downgrade chosen for the next period, consent withdrawn): written once to the
/// customer's timeline and, with `event`, sent on to the operator as an outbound event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Remark {
    /// The store's name for it: `REFUND_DECLINED`, `PRICE_INCREASE/PENDING`.
    pub what: String,
    /// The outbound event type to send on (`customer.consent_rescinded`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The fields the outbound event's `data` carries beside the app and the customer.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// A provider's move of the purchases it relays from some customers to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub from: Vec<String>,
    pub to: String,
    /// The lineages it relays begin so (`rc:`): only those move.
    pub lineage_prefix: &'static str,
}

/// A store action owed by an input, written to the outbox (type `store.*`) once per `id`.
#[derive(Debug, Clone)]
pub struct Owed {
    pub id: String,
    pub event_type: &'static str,
    pub payload: serde_json::Value,
    /// Owed only once a decision grants the purchase of this lineage (an acknowledgement); owed at
    /// once when `None` (the answer to a consumption request).
    pub on_grant: Option<String>,
}

/// A page of what a store's history holds, verified one by one: one that fails is counted, not fatal.
#[derive(Debug)]
pub struct Page {
    pub notices: Vec<StoreResult<Notice>>,
    /// The next page's token; `None` at the window's end. An error when the store's paging cannot
    /// go on, which fails the read once this page is taken.
    pub next: StoreResult<Option<String>>,
}

/// What the gateway knows of a purchase when a store asks (a consumption request, a refund review).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    /// A customer holds it and it was granted; for a course sold through an Open edX connector,
    /// the LMS enrolled the learner too.
    pub delivered: bool,
    /// It was not delivered because the LMS was down (its last answer a 5xx, or none).
    pub outage: bool,
    /// For a consumable, how much of its credit is spent, in thousandths of a percent.
    pub consumed: Option<u32>,
    /// The product is a consumable.
    pub consumable: bool,
    /// The product is an auto-renewable subscription.
    pub subscription: bool,
}

/// The names a store's inputs go by.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// The store, as a sentence says it (`App Store`).
    pub title: &'static str,
    /// The source of a client's submission (`app_store.client`).
    pub client: &'static str,
    /// The source of a restore.
    pub restore: &'static str,
    /// The source of a notification, and its dedupe namespace.
    pub notification: &'static str,
    /// What the store calls the token an order issues (`appAccountToken`).
    pub order_token: &'static str,
    /// The cursor of the poll for missed notifications.
    pub cursor: &'static str,
    /// The source of a refund an operator asked the store for.
    pub refund: &'static str,
}

/// A purchase an operator asks its store to refund and revoke.
#[derive(Debug, Clone, Copy)]
pub struct RefundOrder<'a> {
    /// The purchase's lineage (its `store_transaction_id`).
    pub lineage: &'a str,
    /// The store's id of its product.
    pub sku: Option<&'a str>,
    pub subscription: bool,
    /// Refund only what is left of the paid period (subscriptions), not all of it.
    pub prorated: bool,
}

impl<'a> Adapter<'a> {
    pub fn store(self) -> Store {
        match self {
            Adapter::AppStore(_) => Store::AppStore,
            Adapter::Play(_) => Store::PlayStore,
            Adapter::Stripe(_) => Store::Stripe,
            Adapter::RevenueCat(_) => Store::RevenueCat,
        }
    }

    pub fn names(self) -> &'static Names {
        match self {
            Adapter::AppStore(_) => &apple::NAMES,
            Adapter::Play(_) => &play::NAMES,
            Adapter::Stripe(_) => &stripe::NAMES,
            Adapter::RevenueCat(_) => &revenuecat::NAMES,
        }
    }

    /// Asks the store to refund a purchase and end its access; answers the purchase as the store
    /// states it afterwards.
    pub async fn refund(
        self,
        app: &App,
        order: RefundOrder<'_>,
        now: Timestamp,
    ) -> StoreResult<Transaction> {
        match self {
            Adapter::AppStore(_) => Err(StoreError::new(
                Problem::Conflict,
                "store_cannot_refund",
                "Apple refunds App Store purchases only at the customer's request (reportaproblem.apple.com); the gateway cannot refund one.",
            )),
            Adapter::Play(p) => p.refund(app, order, now).await,
            Adapter::Stripe(s) => s.refund(app, order, now).await,
            Adapter::RevenueCat(_) => Err(relayed_only()),
        }
    }

    /// Checks the form of a submitted proof, before anything is read.
    pub fn check(self, proof: &Proof) -> StoreResult<()> {
        match self {
            Adapter::AppStore(a) => a.check(proof),
            Adapter::Play(p) => p.check(proof),
            Adapter::Stripe(s) => s.check(proof),
            Adapter::RevenueCat(_) => Err(relayed_only()),
        }
    }

    /// The store account a signed account statement is of (Apple's AppTransaction:
    /// `appTransactionId`); stores with no such statement refuse it.
    pub fn identify(self, app: &App, signed: &str, now: Timestamp) -> StoreResult<String> {
        match self {
            Adapter::AppStore(a) => a.identify(app, signed, now),
            _ => Err(StoreError::new(
                Problem::Malformed,
                "field_not_for_store",
                "`signed_app_transaction` belongs to the App Store.",
            )),
        }
    }

    /// Verifies a submitted proof with the store.
    pub async fn verify_submission(
        self,
        app: &App,
        proof: Proof,
        now: Timestamp,
    ) -> StoreResult<Proven> {
        match self {
            Adapter::AppStore(a) => a.verify_submission(app, proof, now).await,
            Adapter::Play(p) => p.verify_submission(app, proof, now).await,
            Adapter::Stripe(s) => s.verify_submission(app, proof).await,
            Adapter::RevenueCat(_) => Err(relayed_only()),
        }
    }

    /// Verifies what an app restores; the transactions of every purchase it names.
    pub async fn verify_restore(
        self,
        app: &App,
        proof: &RestoreProof,
        now: Timestamp,
    ) -> StoreResult<Vec<Transaction>> {
        match self {
            Adapter::AppStore(a) => a.verify_restore(app, proof, now).await,
            Adapter::Play(p) => p.verify_restore(app, proof, now).await,
            Adapter::Stripe(_) | Adapter::RevenueCat(_) => Err(StoreError::new(
                Problem::Malformed,
                "store_not_restorable",
                "Stripe purchases are not restored: the gateway learns them from Stripe's events.",
            )),
        }
    }

    /// Verifies a notification body by the store's own means.
    pub async fn verify_notification(
        self,
        app: &App,
        delivery: Delivery<'_>,
        now: Timestamp,
    ) -> StoreResult<Notice> {
        match self {
            Adapter::AppStore(a) => a.verify_notification(app, delivery.body, now),
            Adapter::Play(p) => p.verify_notification(app, delivery, now).await,
            Adapter::Stripe(s) => s.verify_notification(app, delivery, now).await,
            Adapter::RevenueCat(r) => r.verify_notification(app, delivery, now),
        }
    }

    /// True when the app is set up for the store's history to be read.
    pub fn can_poll(self, app: &App) -> bool {
        match self {
            Adapter::AppStore(_) => apple::can_poll(app),
            Adapter::Play(_) => play::can_poll(app),
            Adapter::Stripe(_) => stripe::can_poll(app),
            Adapter::RevenueCat(_) => false,
        }
    }

    /// How often the app's history is read when the app says (the recovery job's default otherwise).
    pub fn poll_interval_ms(self, app: &App) -> Option<i64> {
        match self {
            Adapter::AppStore(_) | Adapter::Stripe(_) | Adapter::RevenueCat(_) => None,
            Adapter::Play(_) => play::poll_interval_ms(app),
        }
    }

    /// The window the store's history can be read for, from `start` (or why not): within how far
    /// back the store keeps it, and not past now.
    pub fn poll_window(
        self,
        app: &App,
        (start, end): (Timestamp, Timestamp),
        now: Timestamp,
    ) -> StoreResult<(Timestamp, Timestamp)> {
        let (keeps_ms, keeps, no_key) = match self {
            Adapter::AppStore(_) => apple::HISTORY,
            Adapter::Play(_) => play::HISTORY,
            Adapter::Stripe(_) => stripe::HISTORY,
            Adapter::RevenueCat(_) => (
                0,
                "nothing: RevenueCat keeps no history to read",
                "RevenueCat's events are not read back: it retries its own deliveries.",
            ),
        };
        if !self.can_poll(app) {
            return Err(StoreError::not_configured(no_key));
        }
        let start = start.max(now.plus_millis(-keeps_ms));
        let end = end.min(now);
        if start >= end {
            // Two times, each of the right shape, that do not make a window: more than a schema
            // states.
            return Err(StoreError::new(
                Problem::Refused,
                "invalid_window",
                format!("`start` must be before `end`, and within {keeps}."),
            ));
        }
        if let Adapter::AppStore(a) = self {
            a.check_app(app)?;
        }
        Ok((start, end))
    }

    /// Reads the page at `token` of the store's history for `window`.
    pub async fn poll(
        self,
        app: &App,
        window: (Timestamp, Timestamp),
        token: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<Page> {
        match self {
            Adapter::AppStore(a) => a.poll(app, window, token, now).await,
            Adapter::Play(p) => p.poll(app, window, token, now).await,
            Adapter::Stripe(s) => s.poll(app, window, token).await,
            Adapter::RevenueCat(_) => Err(relayed_only()),
        }
    }

    /// The purchase an owed action is about: its lineage and quantity, whose [`Standing`] the action
    /// needs.
    pub fn action_subject(
        self,
        event_type: &str,
        payload: &serde_json::Value,
    ) -> StoreResult<(String, u32)> {
        match self {
            Adapter::AppStore(a) => a.action_subject(event_type, payload),
            Adapter::Play(p) => p.action_subject(event_type, payload),
            Adapter::Stripe(_) | Adapter::RevenueCat(_) => Err(no_action()),
        }
    }

    /// Performs an owed action; the store's HTTP status when it took it.
    pub async fn perform(
        self,
        app: &App,
        event_type: &str,
        payload: &serde_json::Value,
        standing: Standing,
    ) -> StoreResult<u16> {
        match self {
            Adapter::AppStore(a) => a.perform(app, event_type, payload, standing).await,
            Adapter::Play(p) => p.perform(app, event_type, payload, standing).await,
            Adapter::Stripe(_) | Adapter::RevenueCat(_) => Err(no_action()),
        }
    }

    /// The adapter an owed action's type (`store.<store>.<verb>`) belongs to.
    pub fn of_action(stores: &'a Stores, event_type: &str) -> Option<Self> {
        let store = event_type.strip_prefix("store.")?.split('.').next()?;
        stores.adapter(Store::parse(store)?)
    }
}

/// The error for an owed action of a store that is owed none.
fn no_action() -> StoreError {
    StoreError::new(
        Problem::Malformed,
        "unknown_store_action",
        "This store is owed no store action.",
    )
}

/// The error for what only a store, not RevenueCat, does.
fn relayed_only() -> StoreError {
    StoreError::new(
        Problem::Conflict,
        "relayed_by_revenuecat",
        "RevenueCat relays purchases by its webhooks only: submit, restore and refund them with their store or in RevenueCat.",
    )
}

/// Checks an app's settings of every store that has an adapter.
pub fn check_settings(settings: &crate::model::AppSettings) -> StoreResult<()> {
    if let Some(a) = &settings.app_store {
        apple::check_settings(a)?;
    }
    if let Some(p) = &settings.play_store {
        play::check_settings(p)?;
    }
    Ok(())
}

/// Checks a URL setting.
pub(crate) fn check_url(field: &str, value: Option<&str>) -> StoreResult<()> {
    text(&gateway_core::text::URL_TEXT, "invalid_url", field, value)
}

/// An owed action's payload, when it is of `event_type` (`expected`); `what` names it in the error.
pub(crate) fn action<T: serde::de::DeserializeOwned>(
    (event_type, expected): (&str, &str),
    payload: &serde_json::Value,
    what: &str,
) -> StoreResult<T> {
    let not_ours = || {
        StoreError::new(
            Problem::Malformed,
            "unknown_store_action",
            format!("the action is not {what}"),
        )
    };
    if event_type != expected {
        return Err(not_ours());
    }
    T::deserialize(payload).map_err(|_| not_ours())
}

/// Checks the list a restore carries: at most `max` items (`code` and `what` name them when there
/// are more), each of the store's shape.
pub(crate) fn restore_items<T>(
    items: &[T],
    (max, code, what): (usize, &'static str, &str),
    each: impl Fn(&T) -> StoreResult<()>,
) -> StoreResult<()> {
    if items.len() > max {
        return Err(StoreError::new(
            Problem::Malformed,
            code,
            format!("A restore carries at most {max} {what}."),
        ));
    }
    items.iter().try_for_each(each)
}

/// Checks a field of what a client or store sent against its rule.
pub(crate) fn text(
    rule: &TextRule,
    code: &'static str,
    field: &str,
    value: Option<&str>,
) -> StoreResult<()> {
    match value {
        Some(v) => rule
            .check(v)
            .map_err(|e| StoreError::new(Problem::Malformed, code, format!("`{field}` {e}."))),
        None => Ok(()),
    }
}
