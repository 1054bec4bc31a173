//! The catalog: what an operator sells. A product maps to store SKUs and grants entitlements; a
//! consumable credits an amount of a currency; time-boxed products carry a duration or an end date.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    duration::IsoDuration,
    ids::{Currency, EntitlementId, ProductId, Store},
    time::Timestamp,
};

/// The four kinds of product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ProductKind {
    /// Bought once, kept (a course seat).
    NonConsumable,
    /// Bought to be used up: credits `amount` units of a currency to the customer's balance.
    Consumable,
    /// Auto-renewing: access until the store's `expires_at`.
    Subscription,
    /// Access for a fixed time (`access_duration` or `expires_at`), never renewed by the store.
    NonRenewing,
}

impl ProductKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProductKind::NonConsumable => "non_consumable",
            ProductKind::Consumable => "consumable",
            ProductKind::Subscription => "subscription",
            ProductKind::NonRenewing => "non_renewing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "non_consumable" => ProductKind::NonConsumable,
            "consumable" => ProductKind::Consumable,
            "subscription" => ProductKind::Subscription,
            "non_renewing" => ProductKind::NonRenewing,
            _ => return None,
        })
    }
}

/// The store-side ids of a product.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoreSkus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub play_store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub play_base_plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_price: Option<String>,
}

impl StoreSkus {
    /// The product's id in `store`, if it is sold there.
    pub fn for_store(&self, store: Store) -> Option<String> {
        match store {
            Store::AppStore => self.app_store.clone(),
            Store::PlayStore => self.play_store.clone(),
            Store::Stripe => self.stripe_price.clone(),
            Store::RevenueCat | Store::Manual => None,
        }
    }
}

/// An entitlement a product grants, with the attributes a downstream needs (for Open edX: `course_id`
/// and `mode`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntitlementSpec {
    pub id: EntitlementId,
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// What one purchase of a consumable credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsumableSpec {
    pub currency: Currency,
    pub amount: i64,
}

/// The largest amount one consumable purchase may credit: far above any real pack, and small enough
/// that no sum of credits can overflow a 64-bit balance.
pub const MAX_CONSUMABLE_AMOUNT: i64 = 1_000_000_000_000;

/// What a purchase was sold with, fixed when the purchase is first recorded: a later edit of the
/// catalog changes what is sold from then on, never what was already bought (its credit or its end).
/// What a product grants (its entitlements) is not part of it: renaming an entitlement moves holders.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Terms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumable: Option<ConsumableSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_duration: Option<IsoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl Terms {
    /// When access bought at `purchased_at` ends, for terms that set an end.
    pub fn expiry(&self, purchased_at: Timestamp) -> Option<Timestamp> {
        match (self.access_duration, self.expires_at) {
            (Some(d), _) => Some(d.after(purchased_at)),
            (None, Some(at)) => Some(at),
            (None, None) => None,
        }
    }
}

/// What a refund of part of a payment does to what the payment bought (a web payment refunded in
/// part, say): nothing (`keep`, the default), or it ends as a whole refund does (`revoke`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PartialRefund {
    #[default]
    Keep,
    Revoke,
}

impl PartialRefund {
    pub fn as_str(self) -> &'static str {
        match self {
            PartialRefund::Keep => "keep",
            PartialRefund::Revoke => "revoke",
        }
    }
}

/// A product of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Product {
    pub id: ProductId,
    pub kind: ProductKind,
    pub store_skus: StoreSkus,
    pub entitlements: Vec<EntitlementSpec>,
    pub consumable: Option<ConsumableSpec>,
    pub access_duration: Option<IsoDuration>,
    pub expires_at: Option<Timestamp>,
    pub active: bool,
    /// What a partial refund of its payment does.
    #[serde(default)]
    pub partial_refund: PartialRefund,
}

/// A rule of the catalog that a product breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    #[error("a consumable product needs `consumable: {{currency, amount}}`")]
    ConsumableMissing,
    #[error("only a consumable product may have `consumable`")]
    ConsumableNotAllowed,
    #[error("`consumable.amount` must be a positive whole number")]
    AmountNotPositive,
    #[error("`consumable.amount` may be at most {MAX_CONSUMABLE_AMOUNT}")]
    AmountTooLarge,
    #[error(
        "a subscription's period comes from the store: `access_duration` and `expires_at` are not allowed"
    )]
    SubscriptionTimeBox,
    #[error("a non_renewing product needs `access_duration` or `expires_at`")]
    NonRenewingWithoutEnd,
    #[error("give `access_duration` or `expires_at`, not both")]
    BothEnds,
    #[error("a {0} product must grant at least one entitlement")]
    NoEntitlements(&'static str),
    #[error("entitlement {0} is listed twice")]
    DuplicateEntitlement(String),
    #[error("`access_duration` {0}")]
    Duration(crate::duration::DurationError),
    #[error("`store_skus.{field}` {error}")]
    Sku {
        field: &'static str,
        error: crate::text::TextError,
    },
}

impl Product {
    /// Checks the rules that tie kind, consumable and time box together.
    pub fn validate(&self) -> Result<(), ProductError> {
        // SKUs are database keys (a SKU maps to one product): bounded like every store id.
        let skus = &self.store_skus;
        for (field, sku) in [
            ("app_store", &skus.app_store),
            ("play_store", &skus.play_store),
            ("play_base_plan", &skus.play_base_plan),
            ("stripe_price", &skus.stripe_price),
        ] {
            if let Some(sku) = sku {
                crate::text::STORE_ID
                    .check(sku)
                    .map_err(|error| ProductError::Sku { field, error })?;
            }
        }
        match (self.kind, &self.consumable) {
            (ProductKind::Consumable, None) => return Err(ProductError::ConsumableMissing),
            (ProductKind::Consumable, Some(c)) if c.amount <= 0 => {
                return Err(ProductError::AmountNotPositive);
            }
            (ProductKind::Consumable, Some(c)) if c.amount > MAX_CONSUMABLE_AMOUNT => {
                return Err(ProductError::AmountTooLarge);
            }
            (ProductKind::Consumable, Some(_)) => {}
            (_, Some(_)) => return Err(ProductError::ConsumableNotAllowed),
            (_, None) => {}
        }
        if let Some(d) = &self.access_duration {
            d.check_range().map_err(ProductError::Duration)?;
        }
        if self.access_duration.is_some() && self.expires_at.is_some() {
            return Err(ProductError::BothEnds);
        }
        match self.kind {
            ProductKind::Subscription
                if self.access_duration.is_some() || self.expires_at.is_some() =>
            {
                return Err(ProductError::SubscriptionTimeBox);
            }
            ProductKind::NonRenewing
                if self.access_duration.is_none() && self.expires_at.is_none() =>
            {
                return Err(ProductError::NonRenewingWithoutEnd);
            }
            _ => {}
        }
        if self.kind != ProductKind::Consumable && self.entitlements.is_empty() {
            return Err(ProductError::NoEntitlements(self.kind.as_str()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.entitlements {
            if !seen.insert(&e.id) {
                return Err(ProductError::DuplicateEntitlement(e.id.to_string()));
            }
        }
        Ok(())
    }

    /// When access bought at `purchased_at` ends, for products whose end the catalog sets.
    pub fn catalog_expiry(&self, purchased_at: Timestamp) -> Option<Timestamp> {
        self.terms().expiry(purchased_at)
    }

    /// What a purchase of this product is sold with now.
    pub fn terms(&self) -> Terms {
        Terms {
            consumable: self.consumable.clone(),
            access_duration: self.access_duration,
            expires_at: self.expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn course(id: &str) -> Product {
        Product {
            id: ProductId::parse(id).unwrap(),
            kind: ProductKind::NonConsumable,
            store_skus: StoreSkus::default(),
            entitlements: vec![EntitlementSpec {
                id: EntitlementId::parse(format!("ent-{id}")).unwrap(),
                attributes: BTreeMap::new(),
            }],
            consumable: None,
            access_duration: None,
            expires_at: None,
            active: true,
            partial_refund: Default::default(),
        }
    }

    #[test]
    fn rules_hold() {
        let mut p = course("cs101");
        assert_eq!(p.validate(), Ok(()));
        p.kind = ProductKind::Consumable;
        assert_eq!(p.validate(), Err(ProductError::ConsumableMissing));
        p.consumable = Some(ConsumableSpec {
            currency: Currency::parse("COINS").unwrap(),
            amount: 0,
        });
        assert_eq!(p.validate(), Err(ProductError::AmountNotPositive));
        p.kind = ProductKind::NonRenewing;
        assert_eq!(p.validate(), Err(ProductError::ConsumableNotAllowed));
        p.consumable = None;
        assert_eq!(p.validate(), Err(ProductError::NonRenewingWithoutEnd));
        p.access_duration = Some("P30D".parse().unwrap());
        assert_eq!(p.validate(), Ok(()));
        p.kind = ProductKind::Subscription;
        assert_eq!(p.validate(), Err(ProductError::SubscriptionTimeBox));
        p.access_duration = None;
        p.entitlements.clear();
        assert_eq!(
            p.validate(),
            Err(ProductError::NoEntitlements("subscription"))
        );
        p = course("cs101");
        p.store_skus.app_store = Some("s".repeat(5000));
        assert!(matches!(
            p.validate(),
            Err(ProductError::Sku {
                field: "app_store",
                ..
            })
        ));
        p.store_skus.app_store = Some("edu.acme\0cs101".into());
        assert!(matches!(
            p.validate(),
            Err(ProductError::Sku {
                field: "app_store",
                ..
            })
        ));
    }
}
