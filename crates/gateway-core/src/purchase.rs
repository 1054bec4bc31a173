//! A purchase's state is a pure function of the set of facts about it: sort by the store's time and the
//! fixed tie-break, drop duplicates by dedupe key, fold. Arrival order never enters, which is what makes
//! invariants 3 (idempotence) and 4 (order does not matter) true by construction.

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
    pub events: Vec<StoreEvent>,
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
    pub quantity: u32,
}

impl PurchaseState {
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
                state.expires_at = max_opt(state.expires_at, *expires_at);
                state.quantity = (*quantity).clamp(1, MAX_QUANTITY);
            }
            EventKind::Renewed { expires_at } => {
                bought = true;
                state.purchased_at.get_or_insert(at);
                state.paid_since = Some(state.paid_since.map_or(at, |p| p.max(at)));
                state.expires_at = max_opt(state.expires_at, Some(*expires_at));
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
            EventKind::RefundReversed => refunded = false,
            EventKind::Revoked => revoked = true,
        }
    }

    if let (Some(terms), Some(purchased_at)) = (terms, state.purchased_at)
        && kind != Some(ProductKind::Subscription)
        && state.expires_at.is_none()
    {
        state.expires_at = terms.expiry(purchased_at);
    }

    state.status = if revoked {
        PurchaseStatus::Revoked
    } else if refunded {
        PurchaseStatus::Refunded
    } else if !bought {
        if pending || !expired {
            PurchaseStatus::Pending
        } else {
            PurchaseStatus::Expired
        }
    } else if expired {
        PurchaseStatus::Expired
    } else {
        match state.expires_at {
            Some(end) if end <= now && state.grace_until.is_none_or(|g| g <= now) => {
                PurchaseStatus::Expired
            }
            _ => PurchaseStatus::Active,
        }
    };
    state
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
