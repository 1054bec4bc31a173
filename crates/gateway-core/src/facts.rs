//! The inputs of the core: verified, normalized facts. A store adapter turns an Apple notification, a
//! Play purchase or a Stripe event into [`StoreEvent`]s about one purchase; an operator's grant or revoke
//! is a [`ManualFact`] about one customer. Each carries its own dedupe key and the time the store (or
//! the operator) says it happened, which is what orders them, never the time of arrival.

use serde::{Deserialize, Serialize};

use crate::{
    catalog::Terms,
    ids::{EntitlementId, ProductId},
    time::Timestamp,
};

/// What a store said happened to a purchase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// Payment is not complete yet (Play's pending purchases, deferred Ask to Buy).
    Pending,
    /// Paid. `expires_at` for subscriptions; `quantity` for consumables bought several at once.
    Purchased {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Timestamp>,
        #[serde(default = "one")]
        quantity: u32,
    },
    /// A subscription paid for another period.
    Renewed { expires_at: Timestamp },
    /// The store gave the money back (refund or chargeback).
    Refunded,
    /// The store gave back the money for `quantity` of the units bought at once (Play's
    /// quantity-based partial refund). The purchase stands with that many fewer units; refunds that
    /// cover every unit make it refunded.
    PartlyRefunded { quantity: u32 },
    /// A refund was undone; access comes back.
    RefundReversed,
    /// Access withdrawn without a refund to this customer (family sharing ended, voided by the store).
    Revoked,
    /// The store says the subscription has ended.
    Expired,
    /// Billing failed but the store keeps access open until `until`.
    GracePeriod { until: Timestamp },
    /// Billing failed; the store keeps trying, without access.
    BillingRetry,
    /// The customer turned auto-renewal on or off.
    AutoRenewChanged { enabled: bool },
}

fn one() -> u32 {
    1
}

impl EventKind {
    /// The fixed tie-break between facts with the same store time: the natural life order, so that a
    /// refund and its reversal in the same millisecond end reversed, and a purchase precedes its refund.
    pub fn rank(&self) -> u8 {
        match self {
            EventKind::Pending => 0,
            EventKind::Purchased { .. } => 1,
            EventKind::Renewed { .. } => 2,
            EventKind::AutoRenewChanged { .. } => 3,
            EventKind::BillingRetry => 4,
            EventKind::GracePeriod { .. } => 5,
            EventKind::Expired => 6,
            EventKind::Refunded => 7,
            EventKind::RefundReversed => 8,
            EventKind::Revoked => 9,
            EventKind::PartlyRefunded { .. } => 10,
        }
    }

    /// The name used in the audit log and the timeline.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Pending => "pending",
            EventKind::Purchased { .. } => "purchased",
            EventKind::Renewed { .. } => "renewed",
            EventKind::Refunded => "refunded",
            EventKind::PartlyRefunded { .. } => "partly_refunded",
            EventKind::RefundReversed => "refund_reversed",
            EventKind::Revoked => "revoked",
            EventKind::Expired => "expired",
            EventKind::GracePeriod { .. } => "grace_period",
            EventKind::BillingRetry => "billing_retry",
            EventKind::AutoRenewChanged { .. } => "auto_renew_changed",
        }
    }
}

/// One verified fact about one purchase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoreEvent {
    /// Unique per fact (an Apple `notificationUUID` or transaction id plus state, a Play message id, a
    /// Stripe `event.id`): a second fact with the same key is the same fact.
    pub dedupe_key: String,
    /// When the store says it happened.
    pub occurred_at: Timestamp,
    pub kind: EventKind,
}

impl StoreEvent {
    /// The total order in which facts are folded: store time, then life order, then the dedupe key.
    pub fn order_key(&self) -> (Timestamp, u8, &str) {
        (self.occurred_at, self.kind.rank(), &self.dedupe_key)
    }
}

/// What an operator did by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ManualAction {
    /// Give one entitlement, optionally until `expires_at`.
    GrantEntitlement {
        entitlement_id: EntitlementId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Timestamp>,
    },
    /// Give what a product gives: its entitlements and, for a consumable, its credit.
    GrantProduct {
        product_id: ProductId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Timestamp>,
        /// The product's terms when granted (its credit, its time box); `None`: the current ones.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        terms: Option<Terms>,
    },
    /// Take an entitlement away, whatever granted it, until a later grant or purchase.
    Revoke { entitlement_id: EntitlementId },
}

/// An operator's action on one customer, with the reason they gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualFact {
    pub id: String,
    pub at: Timestamp,
    pub action: ManualAction,
    pub reason: String,
}
