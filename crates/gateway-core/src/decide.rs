//! A customer's state is a function of their facts, the catalog and the clock; effects are the difference
//! between the state the gateway last recorded and the state the facts imply now. Because effects come
//! from a diff of derived states, a replayed fact adds nothing and a late fact produces exactly the
//! correction it implies (DESIGN.md, "The shape of the core").

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    catalog::{Product, ProductKind},
    facts::{ManualAction, ManualFact},
    ids::{Currency, EntitlementId, ProductId, Store},
    ledger::LedgerSource,
    purchase::{PurchaseFacts, PurchaseStatus, fold_from},
    time::Timestamp,
};

/// Everything known about one customer that decides their state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerFacts {
    pub purchases: Vec<PurchaseFacts>,
    pub manual: Vec<ManualFact>,
}

/// The catalog as the core reads it.
pub type Catalog = BTreeMap<ProductId, Product>;

/// The status of an entitlement, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EntitlementStatus {
    Active,
    GracePeriod,
    BillingRetry,
    Pending,
    Refunded,
    Revoked,
    Expired,
}

impl EntitlementStatus {
    /// Whether this status gives access. A grace period does: the store keeps the customer in.
    pub fn has_access(self) -> bool {
        matches!(
            self,
            EntitlementStatus::Active | EntitlementStatus::GracePeriod
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EntitlementStatus::Active => "active",
            EntitlementStatus::GracePeriod => "grace_period",
            EntitlementStatus::BillingRetry => "billing_retry",
            EntitlementStatus::Pending => "pending",
            EntitlementStatus::Refunded => "refunded",
            EntitlementStatus::Revoked => "revoked",
            EntitlementStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => EntitlementStatus::Active,
            "grace_period" => EntitlementStatus::GracePeriod,
            "billing_retry" => EntitlementStatus::BillingRetry,
            "pending" => EntitlementStatus::Pending,
            "refunded" => EntitlementStatus::Refunded,
            "revoked" => EntitlementStatus::Revoked,
            "expired" => EntitlementStatus::Expired,
            _ => return None,
        })
    }
}

/// A purchase as the snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PurchaseView {
    pub id: String,
    pub store: Store,
    pub product_id: ProductId,
    pub store_transaction_id: String,
    pub status: PurchaseStatus,
    pub purchased_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub environment: Option<String>,
    pub auto_renew: Option<bool>,
    /// The end of a billing grace period that keeps access open past `expires_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_until: Option<Timestamp>,
}

/// An entitlement as the snapshot shows it, with what grants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntitlementView {
    pub id: EntitlementId,
    pub attributes: BTreeMap<String, serde_json::Value>,
    pub status: EntitlementStatus,
    pub product_id: Option<ProductId>,
    pub store: Option<Store>,
    pub purchase_id: Option<String>,
    pub granted_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
}

/// A customer's derived state. The ledger part holds, per source, the net amount the facts say that
/// source should have credited; spends are not derived and are not part of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerState {
    pub purchases: BTreeMap<String, PurchaseView>,
    pub entitlements: BTreeMap<EntitlementId, EntitlementView>,
    pub ledger: BTreeMap<(LedgerSource, Currency), i64>,
}

impl CustomerState {
    /// The next instant at which the clock alone changes this state (an `expires_at` or the end of a
    /// grace period): the expiry job re-evaluates the customer then.
    pub fn next_change_after(&self, now: Timestamp) -> Option<Timestamp> {
        self.entitlements
            .values()
            .filter(|e| e.status.has_access() || e.status == EntitlementStatus::Pending)
            .filter_map(|e| e.expires_at)
            .chain(
                self.purchases
                    .values()
                    .flat_map(|p| [p.expires_at, p.grace_until])
                    .flatten(),
            )
            .filter(|t| *t > now)
            .min()
    }
}

/// What the core decides should happen. The service writes each into the same transaction as the new
/// state: entitlement and purchase rows, ledger entries, audit and outbox rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    EntitlementGranted {
        entitlement: EntitlementView,
    },
    EntitlementRenewed {
        entitlement: EntitlementView,
        previous_expires_at: Option<Timestamp>,
    },
    EntitlementRevoked {
        entitlement: EntitlementView,
    },
    EntitlementExpired {
        entitlement: EntitlementView,
    },
    /// A change that keeps access as it was (active -> grace period, pending -> refunded, ...).
    EntitlementUpdated {
        entitlement: EntitlementView,
        previous: Option<EntitlementStatus>,
    },
    PurchasePending {
        purchase: PurchaseView,
    },
    PurchaseRefunded {
        purchase: PurchaseView,
    },
    PurchaseUpdated {
        purchase: PurchaseView,
        previous: Option<PurchaseStatus>,
    },
    /// A ledger movement for one source: positive credits the customer, negative claws back.
    LedgerEntry {
        source: LedgerSource,
        currency: Currency,
        amount: i64,
    },
    BalanceChanged {
        currency: Currency,
        previous: i64,
        balance: i64,
    },
    /// A clawback left the balance below zero.
    BalanceNegative {
        currency: Currency,
        balance: i64,
    },
}

impl Effect {
    /// The outbound event type a downstream receives, if any.
    pub fn outbound_event(&self) -> Option<&'static str> {
        Some(match self {
            Effect::EntitlementGranted { .. } => "entitlement.granted",
            Effect::EntitlementRenewed { .. } => "entitlement.renewed",
            Effect::EntitlementRevoked { .. } => "entitlement.revoked",
            Effect::EntitlementExpired { .. } => "entitlement.expired",
            Effect::PurchasePending { .. } => "purchase.pending",
            Effect::PurchaseRefunded { .. } => "purchase.refunded",
            Effect::BalanceChanged { .. } => "balance.changed",
            Effect::EntitlementUpdated { .. }
            | Effect::PurchaseUpdated { .. }
            | Effect::LedgerEntry { .. }
            | Effect::BalanceNegative { .. } => return None,
        })
    }

    /// The audit name of the effect.
    pub fn audit_name(&self) -> &'static str {
        match self {
            Effect::EntitlementUpdated { .. } => "entitlement.updated",
            Effect::PurchaseUpdated { .. } => "purchase.updated",
            Effect::LedgerEntry { .. } => "ledger.entry",
            Effect::BalanceNegative { .. } => "balance.negative",
            other => other.outbound_event().unwrap_or("effect"),
        }
    }
}

/// One way an entitlement may be held, before the best one is chosen.
struct Candidate {
    status: EntitlementStatus,
    expires_at: Option<Timestamp>,
    granted_at: Option<Timestamp>,
    product_id: Option<ProductId>,
    store: Option<Store>,
    purchase_id: Option<String>,
    attributes: BTreeMap<String, serde_json::Value>,
}

impl Candidate {
    /// Lower sorts first: access before no access, the later end first, then a stable id. Manual grants
    /// have no purchase id: the earliest grant, then the product, break their ties, so the choice never
    /// depends on the order the facts were loaded in (invariant 4).
    fn rank(
        &self,
    ) -> (
        u8,
        std::cmp::Reverse<i64>,
        Option<&str>,
        Option<Timestamp>,
        Option<&ProductId>,
    ) {
        let class = match self.status {
            EntitlementStatus::Active => 0,
            EntitlementStatus::GracePeriod => 1,
            EntitlementStatus::BillingRetry => 2,
            EntitlementStatus::Pending => 3,
            EntitlementStatus::Refunded => 4,
            EntitlementStatus::Revoked => 5,
            EntitlementStatus::Expired => 6,
        };
        let end = self.expires_at.map_or(i64::MAX, Timestamp::millis);
        (
            class,
            std::cmp::Reverse(end),
            self.purchase_id.as_deref(),
            self.granted_at,
            self.product_id.as_ref(),
        )
    }

    fn into_view(self, id: EntitlementId) -> EntitlementView {
        EntitlementView {
            id,
            attributes: self.attributes,
            status: self.status,
            product_id: self.product_id,
            store: self.store,
            purchase_id: self.purchase_id,
            granted_at: self.granted_at,
            expires_at: self.expires_at,
        }
    }
}

fn attributes_for(
    catalog: &Catalog,
    product: Option<&Product>,
    id: &EntitlementId,
) -> BTreeMap<String, serde_json::Value> {
    product
        .into_iter()
        .chain(catalog.values())
        .flat_map(|p| p.entitlements.iter())
        .find(|e| &e.id == id)
        .map(|e| e.attributes.clone())
        .unwrap_or_default()
}

/// Derives a customer's state at `now` from their facts and the catalog.
pub fn derive(facts: &CustomerFacts, catalog: &Catalog, now: Timestamp) -> CustomerState {
    let mut state = CustomerState::default();
    let mut candidates: BTreeMap<EntitlementId, Vec<Candidate>> = BTreeMap::new();

    // A manual revoke holds against every grant that started before it.
    let mut revoked_at: BTreeMap<&EntitlementId, Timestamp> = BTreeMap::new();
    for m in dedupe_manual(&facts.manual) {
        if let ManualAction::Revoke { entitlement_id } = &m.action {
            let at = revoked_at.entry(entitlement_id).or_insert(m.at);
            *at = (*at).max(m.at);
        }
    }
    let overridden = |id: &EntitlementId, since: Option<Timestamp>| {
        revoked_at
            .get(id)
            .is_some_and(|r| since.is_none_or(|s| s <= *r))
    };

    for p in &facts.purchases {
        let product = catalog.get(&p.product_id);
        let terms = p.terms.clone().or_else(|| product.map(Product::terms));
        let s = fold_from(
            p.settled.as_ref(),
            &p.events,
            product.map(|p| p.kind),
            terms.as_ref(),
            now,
        );
        state.purchases.insert(
            p.id.clone(),
            PurchaseView {
                id: p.id.clone(),
                store: p.store,
                product_id: p.product_id.clone(),
                store_transaction_id: p.store_transaction_id.clone(),
                status: s.status,
                purchased_at: s.purchased_at,
                expires_at: s.expires_at,
                environment: p.environment.clone(),
                auto_renew: s.auto_renew,
                grace_until: s.grace_until,
            },
        );
        let Some(product) = product else { continue };
        if let Some(c) = terms.as_ref().and_then(|t| t.consumable.as_ref()) {
            let credited =
                if s.status == PurchaseStatus::Active || s.status == PurchaseStatus::Expired {
                    c.amount.saturating_mul(i64::from(s.kept_units()))
                } else {
                    0
                };
            state.ledger.insert(
                (LedgerSource::Purchase(p.id.clone()), c.currency.clone()),
                credited,
            );
        }
        let base = match s.status {
            PurchaseStatus::Active if s.in_grace(now) => EntitlementStatus::GracePeriod,
            PurchaseStatus::Active => EntitlementStatus::Active,
            PurchaseStatus::Pending => EntitlementStatus::Pending,
            PurchaseStatus::Expired
                if s.billing_retry && product.kind == ProductKind::Subscription =>
            {
                EntitlementStatus::BillingRetry
            }
            PurchaseStatus::Expired => EntitlementStatus::Expired,
            PurchaseStatus::Refunded => EntitlementStatus::Refunded,
            PurchaseStatus::Revoked | PurchaseStatus::Rejected => EntitlementStatus::Revoked,
        };
        for spec in &product.entitlements {
            let status = if base.has_access() && overridden(&spec.id, s.paid_since) {
                EntitlementStatus::Revoked
            } else {
                base
            };
            candidates
                .entry(spec.id.clone())
                .or_default()
                .push(Candidate {
                    status,
                    expires_at: s.expires_at,
                    granted_at: s.purchased_at,
                    product_id: Some(p.product_id.clone()),
                    store: Some(p.store),
                    purchase_id: Some(p.id.clone()),
                    attributes: spec.attributes.clone(),
                });
        }
    }

    for m in dedupe_manual(&facts.manual) {
        let (ids, product, expires_at): (Vec<EntitlementId>, Option<&Product>, Option<Timestamp>) =
            match &m.action {
                ManualAction::Revoke { .. } => continue,
                ManualAction::GrantEntitlement {
                    entitlement_id,
                    expires_at,
                } => (vec![entitlement_id.clone()], None, *expires_at),
                ManualAction::GrantProduct {
                    product_id,
                    expires_at,
                    terms,
                } => {
                    let Some(product) = catalog.get(product_id) else {
                        continue;
                    };
                    let terms = terms.clone().unwrap_or_else(|| product.terms());
                    if let Some(c) = &terms.consumable {
                        state.ledger.insert(
                            (LedgerSource::Grant(m.id.clone()), c.currency.clone()),
                            c.amount,
                        );
                    }
                    let end = expires_at.or_else(|| terms.expiry(m.at));
                    (
                        product.entitlements.iter().map(|e| e.id.clone()).collect(),
                        Some(product),
                        end,
                    )
                }
            };
        for id in ids {
            let status = if overridden(&id, Some(m.at)) {
                EntitlementStatus::Revoked
            } else if expires_at.is_some_and(|e| e <= now) {
                EntitlementStatus::Expired
            } else {
                EntitlementStatus::Active
            };
            let attributes = attributes_for(catalog, product, &id);
            candidates.entry(id).or_default().push(Candidate {
                status,
                expires_at,
                granted_at: Some(m.at),
                product_id: product.map(|p| p.id.clone()),
                store: Some(Store::Manual),
                purchase_id: None,
                attributes,
            });
        }
    }

    for (id, mut list) in candidates {
        list.sort_by(|a, b| a.rank().cmp(&b.rank()));
        if let Some(best) = list.into_iter().next() {
            state.entitlements.insert(id.clone(), best.into_view(id));
        }
    }
    // An entitlement revoked by hand with nothing else behind it still shows as revoked.
    for (id, at) in revoked_at {
        state
            .entitlements
            .entry(id.clone())
            .or_insert_with(|| EntitlementView {
                id: id.clone(),
                attributes: attributes_for(catalog, None, id),
                status: EntitlementStatus::Revoked,
                product_id: None,
                store: Some(Store::Manual),
                purchase_id: None,
                granted_at: None,
                expires_at: Some(at).filter(|_| false),
            });
    }
    state
}

fn dedupe_manual(facts: &[ManualFact]) -> impl Iterator<Item = &ManualFact> {
    let mut seen = BTreeSet::new();
    facts.iter().filter(move |m| seen.insert(m.id.as_str()))
}

/// The effects that take a customer from `before` (what was recorded) to `after` (what the facts imply
/// now). `balances` are the customer's recorded balances, spends included.
pub fn diff(
    before: &CustomerState,
    after: &CustomerState,
    balances: &BTreeMap<Currency, i64>,
) -> Vec<Effect> {
    let mut effects = Vec::new();

    for (id, p) in &after.purchases {
        let previous = before.purchases.get(id);
        if previous == Some(p) {
            continue;
        }
        let was = previous.map(|v| v.status);
        if was == Some(p.status) {
            effects.push(Effect::PurchaseUpdated {
                purchase: p.clone(),
                previous: was,
            });
            continue;
        }
        effects.push(match p.status {
            PurchaseStatus::Pending => Effect::PurchasePending {
                purchase: p.clone(),
            },
            PurchaseStatus::Refunded => Effect::PurchaseRefunded {
                purchase: p.clone(),
            },
            _ => Effect::PurchaseUpdated {
                purchase: p.clone(),
                previous: was,
            },
        });
    }

    let ids: BTreeSet<&EntitlementId> = before
        .entitlements
        .keys()
        .chain(after.entitlements.keys())
        .collect();
    for id in ids {
        let old = before.entitlements.get(id);
        let new = after.entitlements.get(id);
        if old == new {
            continue;
        }
        let had = old.is_some_and(|e| e.status.has_access());
        let has = new.is_some_and(|e| e.status.has_access());
        let effect = match (old, new) {
            // Nothing grants it any more (the catalog changed what a product grants): a holder loses it.
            (Some(o), None) if had => Effect::EntitlementRevoked {
                entitlement: EntitlementView {
                    status: EntitlementStatus::Revoked,
                    ..o.clone()
                },
            },
            (_, None) => continue,
            (_, Some(n)) if !had && has => Effect::EntitlementGranted {
                entitlement: n.clone(),
            },
            (_, Some(n)) if had && !has => match n.status {
                EntitlementStatus::Expired | EntitlementStatus::BillingRetry => {
                    Effect::EntitlementExpired {
                        entitlement: n.clone(),
                    }
                }
                _ => Effect::EntitlementRevoked {
                    entitlement: n.clone(),
                },
            },
            (Some(o), Some(n)) if had && has && later(n.expires_at, o.expires_at) => {
                Effect::EntitlementRenewed {
                    entitlement: n.clone(),
                    previous_expires_at: o.expires_at,
                }
            }
            (o, Some(n)) => Effect::EntitlementUpdated {
                entitlement: n.clone(),
                previous: o.map(|o| o.status),
            },
        };
        effects.push(effect);
    }

    let mut moved: BTreeMap<Currency, i64> = BTreeMap::new();
    let keys: BTreeSet<&(LedgerSource, Currency)> =
        before.ledger.keys().chain(after.ledger.keys()).collect();
    for key in keys {
        // Saturating: amounts are capped far below overflow, but a corrupt row must not panic.
        let delta = after
            .ledger
            .get(key)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.ledger.get(key).copied().unwrap_or(0));
        if delta != 0 {
            let (source, currency) = key.clone();
            let total = moved.entry(currency.clone()).or_default();
            *total = total.saturating_add(delta);
            effects.push(Effect::LedgerEntry {
                source,
                currency,
                amount: delta,
            });
        }
    }
    for (currency, delta) in moved {
        if delta == 0 {
            continue;
        }
        let previous = balances.get(&currency).copied().unwrap_or(0);
        let balance = previous.saturating_add(delta);
        effects.push(Effect::BalanceChanged {
            currency: currency.clone(),
            previous,
            balance,
        });
        if delta < 0 && balance < 0 {
            effects.push(Effect::BalanceNegative { currency, balance });
        }
    }
    effects
}

/// `a` is a later end than `b`; no end at all is the latest.
fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}
