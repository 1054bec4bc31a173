//! A purchase's state is a pure function of the set of facts about it: sort by the store's time and the
//! fixed tie-break, drop duplicates by dedupe key, fold. Arrival order never enters, which is what makes
//! invariants 3 (idempotence) and 4 (order does not matter) true by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    catalog::{Product, ProductKind, Terms},
    facts::{EventKind, StoreEvent},
    ids::{ProductId, Store},
    time::Timestamp,
};

/// The lifecycle state of a purchase, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PurchaseStatus {
    Pending,
    Active,
    Expired,
    Refunded,
    Revoked,
    Rejected,
}

impl PurchaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseStatus::Pending => "pending",
            PurchaseStatus::Active => "active",
            PurchaseStatus::Expired => "expired",
            PurchaseStatus::Refunded => "refunded",
            PurchaseStatus::Revoked => "revoked",
            PurchaseStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => PurchaseStatus::Pending,
            "active" => PurchaseStatus::Active,
            "expired" => PurchaseStatus::Expired,
            "refunded" => PurchaseStatus::Refunded,
            "revoked" => PurchaseStatus::Revoked,
            "rejected" => PurchaseStatus::Rejected,
            _ => return None,
        })
    }
}

/// A purchase lineage and every fact known about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseFacts {
    /// The gateway's id for the lineage.
    pub id: String,
    pub store: Store,
    pub product_id: ProductId,
    /// The store's id for the lineage (Apple `originalTransactionId`, Play `purchaseToken`, ...).
    pub store_transaction_id: String,
    pub environment: Option<String>,
    /// What it was sold with, fixed at first record; `None` means "the catalog's current terms".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<Terms>,
    /// What every fact of the lineage leaves to the fold, when the caller keeps it: `events` then
    /// needs to hold only the facts from `settled.renewed` on (more do no harm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<Settled>,
    pub events: Vec<StoreEvent>,
}

impl PurchaseFacts {
    /// When these facts say the lineage was on `product_id`: the time of their latest purchase or
    /// renewal, the facts a store states a product with. A subscription moved to another product of
    /// its group (an upgrade at once, a downgrade at its renewal) follows the product stated latest;
    /// facts with no purchase or renewal state no product.
    pub fn stated_at(&self) -> Option<Timestamp> {
        self.events
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::Purchased { .. } | EventKind::Renewed { .. }
                )
            })
            .map(|e| e.occurred_at)
            .max()
    }

    /// Adds the facts of `other`, about the same lineage: the product and its terms are those
    /// stated latest, whichever of the two states them.
    pub fn merge(&mut self, other: PurchaseFacts) {
        if other.stated_at() > self.stated_at() {
            self.product_id = other.product_id;
            self.terms = other.terms;
        }
        self.events.extend(other.events);
    }
}

/// A fact's place in the fold: the store's time, then a fixed rank of its kind, then its dedupe key.
pub type OrderKey = (Timestamp, u8, String);

/// What the facts of a purchase leave to its fold whatever else is known: the aggregates no later
/// fact resets (the first purchase, the latest paid period; the expiry, the quantity and the
/// auto-renew setting of the last facts that state them) and the order key of the latest renewal.
/// A renewal resets all the rest (grace period, billing retry, expiry, refund, revocation), so the
/// fold from this summary over the facts since that renewal equals the fold over every fact: a
/// decision reads a bounded number of facts however many times a subscription renewed.
///
/// Absorbing facts is order-free and idempotent (minimums, maximums, the value of the fact with the
/// greatest order key), so a summary kept across decisions stays exact when facts arrive late.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub bought: bool,
    pub pending: bool,
    pub purchased_at: Option<Timestamp>,
    pub paid_since: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// The order key of the paid fact `expires_at` is from: the latest that states an expiry (an
    /// upgrade to a shorter period ends sooner than the period it replaced). Absent in summaries
    /// kept before it was, whose `expires_at` was the furthest expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_key: Option<OrderKey>,
    pub quantity: Option<(OrderKey, u32)>,
    pub auto_renew: Option<(OrderKey, bool)>,
    /// The partial refunds, by dedupe key: where each is ordered, and the units it gave back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partial_refunds: BTreeMap<String, (OrderKey, u32)>,
    /// The latest refund reversal: it gives back every partial refund ordered before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversed: Option<OrderKey>,
    /// The latest renewal: every fact ordered after it must be folded in full.
    pub renewed: Option<OrderKey>,
}

impl Settled {
    /// Adds one fact.
    pub fn absorb(&mut self, e: &StoreEvent) {
        let at = e.occurred_at;
        let key = || {
            let (t, rank, k) = e.order_key();
            (t, rank, k.to_owned())
        };
        let later =
            |held: Option<&OrderKey>| held.is_none_or(|k| (k.0, k.1, k.2.as_str()) < e.order_key());
        match &e.kind {
            EventKind::Pending => self.pending = true,
            EventKind::Purchased {
                expires_at,
                quantity,
            } => {
                self.paid(at);
                if let Some(until) = expires_at
                    && later(self.expires_key.as_ref())
                {
                    self.expires(key(), *until);
                }
                if later(self.quantity.as_ref().map(|(k, _)| k)) {
                    self.quantity = Some((key(), (*quantity).clamp(1, MAX_QUANTITY)));
                }
            }
            EventKind::Renewed { expires_at } => {
                self.paid(at);
                if later(self.expires_key.as_ref()) {
                    self.expires(key(), *expires_at);
                }
                if later(self.renewed.as_ref()) {
                    self.renewed = Some(key());
                }
            }
            EventKind::AutoRenewChanged { enabled } => {
                if later(self.auto_renew.as_ref().map(|(k, _)| k)) {
                    self.auto_renew = Some((key(), *enabled));
                }
            }
            EventKind::PartlyRefunded { quantity } => {
                self.partial_refunds.insert(
                    e.dedupe_key.clone(),
                    (key(), (*quantity).clamp(1, MAX_QUANTITY)),
                );
            }
            EventKind::RefundReversed => {
                if later(self.reversed.as_ref()) {
                    self.reversed = Some(key());
                }
            }
            EventKind::BillingRetry
            | EventKind::GracePeriod { .. }
            | EventKind::Expired
            | EventKind::Refunded
            | EventKind::Revoked => {}
        }
    }

    fn paid(&mut self, at: Timestamp) {
        self.bought = true;
        self.purchased_at = Some(self.purchased_at.map_or(at, |p| p.min(at)));
        self.paid_since = Some(self.paid_since.map_or(at, |p| p.max(at)));
    }

    /// The expiry of the latest paid fact that states one. A summary kept before the key was
    /// keeps its furthest expiry against the first fact it meets.
    fn expires(&mut self, key: OrderKey, until: Timestamp) {
        self.expires_at = match self.expires_key {
            None => max_opt(self.expires_at, Some(until)),
            Some(_) => Some(until),
        };
        self.expires_key = Some(key);
    }

    /// The units the partial refunds gave back and no reversal after them gave again.
    pub fn refunded_units(&self) -> u32 {
        self.partial_refunds
            .values()
            .filter(|(k, _)| self.reversed.as_ref().is_none_or(|r| k > r))
            .fold(0_u32, |a, (_, q)| a.saturating_add(*q))
    }

    /// The store time from which facts must be read to fold from this summary: its latest renewal's.
    pub fn read_from(&self) -> Option<Timestamp> {
        self.renewed.as_ref().map(|k| k.0)
    }
}

/// What the fold of a purchase's facts yields at an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseState {
    pub status: PurchaseStatus,
    pub purchased_at: Option<Timestamp>,
    /// The latest paid period's start (purchase or renewal): a manual revoke before it no longer holds.
    pub paid_since: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub auto_renew: Option<bool>,
    /// Set while a billing grace period keeps access open past `expires_at`.
    pub grace_until: Option<Timestamp>,
    /// Billing failed since the last paid period and the store is retrying.
    pub billing_retry: bool,
    /// The units bought at once.
    pub quantity: u32,
    /// Of those, the units the store gave the money back for (partial refunds).
    #[serde(default)]
    pub refunded_units: u32,
}

impl PurchaseState {
    /// The units the customer keeps: those bought less those refunded.
    pub fn kept_units(&self) -> u32 {
        self.quantity.saturating_sub(self.refunded_units)
    }

    /// True while the grace period, not the paid period, is what keeps access open.
    pub fn in_grace(&self, now: Timestamp) -> bool {
        self.status == PurchaseStatus::Active
            && self.expires_at.is_some_and(|e| e <= now)
            && self.grace_until.is_some_and(|g| g > now)
    }
}

/// Sorts and dedupes facts into the order they are folded in.
pub fn ordered(events: &[StoreEvent]) -> Vec<&StoreEvent> {
    let mut sorted: Vec<&StoreEvent> = events.iter().collect();
    sorted.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let mut seen = std::collections::HashSet::new();
    sorted.retain(|e| seen.insert(e.dedupe_key.as_str()));
    sorted
}

/// The largest quantity one purchase counts: stores sell at most a handful at once; the cap keeps a
/// forged or broken quantity from overflowing a balance.
pub const MAX_QUANTITY: u32 = 1_000;

/// Folds the facts of one purchase of `product` into its state at `now`, with the product's current
/// terms.
///
/// `product` may be `None` when the catalog no longer knows the product; the store's own dates are
/// then all there is.
pub fn fold(events: &[StoreEvent], product: Option<&Product>, now: Timestamp) -> PurchaseState {
    let terms = product.map(Product::terms);
    fold_with_terms(events, product.map(|p| p.kind), terms.as_ref(), now)
}

/// Folds the facts of one purchase of a product of `kind` sold with `terms` into its state at `now`.
pub fn fold_with_terms(
    events: &[StoreEvent],
    kind: Option<ProductKind>,
    terms: Option<&Terms>,
    now: Timestamp,
) -> PurchaseState {
    let mut bought = false;
    let mut pending = false;
    let mut refunded = false;
    let mut revoked = false;
    let mut expired = false;
    let mut state = PurchaseState {
        status: PurchaseStatus::Pending,
        purchased_at: None,
        paid_since: None,
        expires_at: None,
        auto_renew: None,
        grace_until: None,
        billing_retry: false,
        quantity: 1,
        refunded_units: 0,
    };
    for e in ordered(events) {
        let at = e.occurred_at;
        match &e.kind {
            EventKind::Pending => pending = true,
            EventKind::Purchased {
                expires_at,
                quantity,
            } => {
                bought = true;
                state.purchased_at = Some(state.purchased_at.map_or(at, |p| p.min(at)));
                state.paid_since = Some(state.paid_since.map_or(at, |p| p.max(at)));
                // The latest paid fact that states an expiry has the last word.
                if expires_at.is_some() {
                    state.expires_at = *expires_at;
                }
                state.quantity = (*quantity).clamp(1, MAX_QUANTITY);
            }
            EventKind::Renewed { expires_at } => {
                bought = true;
                state.purchased_at.get_or_insert(at);
                state.paid_since = Some(state.paid_since.map_or(at, |p| p.max(at)));
                state.expires_at = Some(*expires_at);
                // A new paid period ends every trouble of the one before it.
                state.grace_until = None;
                state.billing_retry = false;
                expired = false;
                refunded = false;
                revoked = false;
            }
            EventKind::AutoRenewChanged { enabled } => state.auto_renew = Some(*enabled),
            EventKind::BillingRetry => state.billing_retry = true,
            EventKind::GracePeriod { until } => {
                state.grace_until = max_opt(state.grace_until, Some(*until));
                state.billing_retry = true;
            }
            // The store says the subscription is over: billing retries, if any, are over too.
            EventKind::Expired => {
                expired = true;
                state.billing_retry = false;
            }
            EventKind::Refunded => refunded = true,
            EventKind::PartlyRefunded { quantity } => {
                state.refunded_units = state
                    .refunded_units
                    .saturating_add((*quantity).clamp(1, MAX_QUANTITY));
            }
            // A reversal gives back what the refunds before it took, whole or in part.
            EventKind::RefundReversed => {
                refunded = false;
                state.refunded_units = 0;
            }
            EventKind::Revoked => revoked = true,
        }
    }

    let flags = Flags {
        bought,
        pending,
        expired,
        refunded,
        revoked,
    };
    settle_status(&mut state, flags, kind, terms, now);
    state
}

/// [`fold_with_terms`] from a summary of the facts (see [`Settled`]), as decisions fold: `events`
/// must hold at least every fact ordered from the summary's latest renewal on. The aggregates come
/// from the summary with `events` absorbed; the troubles of the current paid period from the facts
/// since its renewal, in order. `fold_with_terms` stays the plain fold it is checked against.
pub fn fold_from(
    settled: Option<&Settled>,
    events: &[StoreEvent],
    kind: Option<ProductKind>,
    terms: Option<&Terms>,
    now: Timestamp,
) -> PurchaseState {
    let mut sum = settled.cloned().unwrap_or_default();
    let mut refunded = false;
    let mut revoked = false;
    let mut expired = false;
    let mut grace_until = None;
    let mut billing_retry = false;
    for e in ordered(events) {
        sum.absorb(e);
        match &e.kind {
            EventKind::Renewed { .. } => {
                grace_until = None;
                billing_retry = false;
                expired = false;
                refunded = false;
                revoked = false;
            }
            EventKind::BillingRetry => billing_retry = true,
            EventKind::GracePeriod { until } => {
                grace_until = max_opt(grace_until, Some(*until));
                billing_retry = true;
            }
            EventKind::Expired => {
                expired = true;
                billing_retry = false;
            }
            EventKind::Refunded => refunded = true,
            EventKind::RefundReversed => refunded = false,
            EventKind::Revoked => revoked = true,
            EventKind::Pending
            | EventKind::Purchased { .. }
            | EventKind::PartlyRefunded { .. }
            | EventKind::AutoRenewChanged { .. } => {}
        }
    }
    let refunded_units = sum.refunded_units();
    let mut state = PurchaseState {
        status: PurchaseStatus::Pending,
        purchased_at: sum.purchased_at,
        paid_since: sum.paid_since,
        expires_at: sum.expires_at,
        auto_renew: sum.auto_renew.map(|(_, v)| v),
        grace_until,
        billing_retry,
        quantity: sum.quantity.map_or(1, |(_, q)| q),
        refunded_units,
    };
    let flags = Flags {
        bought: sum.bought,
        pending: sum.pending,
        expired,
        refunded,
        revoked,
    };
    settle_status(&mut state, flags, kind, terms, now);
    state
}

/// The flags of a fold that pick its status.
struct Flags {
    bought: bool,
    pending: bool,
    expired: bool,
    refunded: bool,
    revoked: bool,
}

/// The expiry the terms give and the status at `now`, once the facts are folded.
fn settle_status(
    state: &mut PurchaseState,
    f: Flags,
    kind: Option<ProductKind>,
    terms: Option<&Terms>,
    now: Timestamp,
) {
    if let (Some(terms), Some(purchased_at)) = (terms, state.purchased_at)
        && kind != Some(ProductKind::Subscription)
        && state.expires_at.is_none()
    {
        state.expires_at = terms.expiry(purchased_at);
    }
    state.status = if f.revoked {
        PurchaseStatus::Revoked
    } else if f.refunded || (f.bought && state.refunded_units >= state.quantity) {
        PurchaseStatus::Refunded
    } else if !f.bought {
        if f.pending || !f.expired {
            PurchaseStatus::Pending
        } else {
            PurchaseStatus::Expired
        }
    } else if f.expired {
        PurchaseStatus::Expired
    } else {
        match state.expires_at {
            Some(end) if end <= now && state.grace_until.is_none_or(|g| g <= now) => {
                PurchaseStatus::Expired
            }
            _ => PurchaseStatus::Active,
        }
    };
}

fn max_opt(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, at: i64, kind: EventKind) -> StoreEvent {
        StoreEvent {
            dedupe_key: key.into(),
            occurred_at: Timestamp::from_millis(at),
            kind,
        }
    }

    fn bought(at: i64) -> StoreEvent {
        ev(
            "p",
            at,
            EventKind::Purchased {
                expires_at: None,
                quantity: 1,
            },
        )
    }

    #[test]
    fn merged_facts_keep_the_product_stated_latest_and_the_latest_expiry() {
        let facts = |product: &str, key: &str, at: i64, until: i64| PurchaseFacts {
            id: "pur".into(),
            store: Store::AppStore,
            product_id: ProductId::parse(product).unwrap(),
            store_transaction_id: "1".into(),
            environment: None,
            terms: None,
            settled: None,
            events: vec![ev(
                key,
                at,
                EventKind::Renewed {
                    expires_at: Timestamp::from_millis(until),
                },
            )],
        };
        // A yearly plan upgraded to a monthly one a month in, seen in either order.
        let (yearly, monthly) = (facts("year", "a", 0, 365), facts("month", "b", 30, 60));
        for (first, second) in [
            (yearly.clone(), monthly.clone()),
            (monthly.clone(), yearly.clone()),
        ] {
            let mut merged = first;
            merged.merge(second);
            assert_eq!(merged.product_id.as_str(), "month");
            assert_eq!(merged.stated_at(), Some(Timestamp::from_millis(30)));
            let state = fold(&merged.events, None, Timestamp::from_millis(40));
            assert_eq!(state.expires_at, Some(Timestamp::from_millis(60)));
            let mut settled = Settled::default();
            for e in merged.events.iter().rev() {
                settled.absorb(e);
            }
            assert_eq!(settled.expires_at, Some(Timestamp::from_millis(60)));
        }
    }

    #[test]
    fn an_expiry_ends_billing_retry() {
        let events = [
            bought(10),
            ev("retry", 20, EventKind::BillingRetry),
            ev("gone", 30, EventKind::Expired),
        ];
        let s = fold(&events, None, Timestamp::from_millis(40));
        assert_eq!(s.status, PurchaseStatus::Expired);
        assert!(!s.billing_retry, "retries ended with the expiry");
    }

    #[test]
    fn refund_before_purchase_still_ends_refunded() {
        let refund = ev("r", 20, EventKind::Refunded);
        let a = fold(
            &[refund.clone(), bought(10)],
            None,
            Timestamp::from_millis(30),
        );
        let b = fold(
            &[bought(10), refund.clone()],
            None,
            Timestamp::from_millis(30),
        );
        assert_eq!(a, b);
        assert_eq!(a.status, PurchaseStatus::Refunded);
        let only_refund = fold(&[refund], None, Timestamp::from_millis(30));
        assert_eq!(only_refund.status, PurchaseStatus::Refunded);
    }

    #[test]
    fn reversal_restores_and_duplicates_change_nothing() {
        let facts = [
            bought(10),
            ev("r", 20, EventKind::Refunded),
            ev("rr", 30, EventKind::RefundReversed),
            ev("r", 20, EventKind::Refunded),
        ];
        assert_eq!(
            fold(&facts, None, Timestamp::from_millis(40)).status,
            PurchaseStatus::Active
        );
    }

    #[test]
    fn subscription_expires_by_the_clock_and_renewal_extends() {
        let facts = [ev(
            "p",
            10,
            EventKind::Purchased {
                expires_at: Some(Timestamp::from_millis(100)),
                quantity: 1,
            },
        )];
        assert_eq!(
            fold(&facts, None, Timestamp::from_millis(99)).status,
            PurchaseStatus::Active
        );
        assert_eq!(
            fold(&facts, None, Timestamp::from_millis(100)).status,
            PurchaseStatus::Expired
        );
        let renewed = [
            facts[0].clone(),
            ev(
                "n",
                100,
                EventKind::Renewed {
                    expires_at: Timestamp::from_millis(200),
                },
            ),
        ];
        let s = fold(&renewed, None, Timestamp::from_millis(150));
        assert_eq!(
            (s.status, s.expires_at),
            (PurchaseStatus::Active, Some(Timestamp::from_millis(200)))
        );
    }

    #[test]
    fn grace_period_keeps_access_until_it_ends() {
        let facts = [
            ev(
                "p",
                10,
                EventKind::Purchased {
                    expires_at: Some(Timestamp::from_millis(100)),
                    quantity: 1,
                },
            ),
            ev(
                "g",
                100,
                EventKind::GracePeriod {
                    until: Timestamp::from_millis(150),
                },
            ),
        ];
        let s = fold(&facts, None, Timestamp::from_millis(120));
        assert_eq!(s.status, PurchaseStatus::Active);
        assert!(s.in_grace(Timestamp::from_millis(120)));
        let later = fold(&facts, None, Timestamp::from_millis(150));
        assert_eq!(later.status, PurchaseStatus::Expired);
        assert!(later.billing_retry);
    }

    #[test]
    fn pending_then_purchased_is_active_in_any_order() {
        let p = ev("pe", 5, EventKind::Pending);
        assert_eq!(
            fold(std::slice::from_ref(&p), None, Timestamp::from_millis(1)).status,
            PurchaseStatus::Pending
        );
        assert_eq!(
            fold(&[bought(10), p], None, Timestamp::from_millis(11)).status,
            PurchaseStatus::Active
        );
    }

    #[test]
    fn store_expiry_wins_over_a_later_end_date() {
        let facts = [
            ev(
                "p",
                10,
                EventKind::Purchased {
                    expires_at: Some(Timestamp::from_millis(1000)),
                    quantity: 1,
                },
            ),
            ev("x", 50, EventKind::Expired),
        ];
        assert_eq!(
            fold(&facts, None, Timestamp::from_millis(60)).status,
            PurchaseStatus::Expired
        );
    }
}
