//! RevenueCat as an upstream provider: its webhook at `POST /v1/apps/{app}/notifications/revenuecat`,
//! authenticated by the `Authorization` header value the operator set in RevenueCat's dashboard
//! (compared whole, in constant time: RevenueCat signs nothing). Each event becomes facts by
//! [`gateway_core::revenuecat`] about a purchase RevenueCat relays from its store; what RevenueCat
//! says is taken on its word, the customer included (its `app_user_id`).

use gateway_core::{
    EventKind, Product, PurchaseFacts, StoreEvent, Timestamp,
    ids::Store,
    revenuecat::{self, GrantRef, Webhook},
};
use serde::{Deserialize, Serialize};

use super::{Delivery, Names, Notice, Problem, StoreError, StoreResult, Transaction};
use crate::model::App;

pub const NAMES: Names = Names {
    title: "RevenueCat",
    client: "revenuecat.client",
    restore: "revenuecat.restore",
    notification: "revenuecat.notification",
    order_token: "app_user_id",
    cursor: "revenuecat.events",
    refund: "revenuecat.refund",
};

/// A purchase RevenueCat relays: its lineage, the store it was made in and that store's SKU, and
/// the customer RevenueCat names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedPurchase {
    /// Marks the kept JSON as RevenueCat's (its `store` is another's).
    pub via: String,
    pub lineage: String,
    pub store: Store,
    pub sku: String,
    pub customer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The temporary grant the event may concern, not yet looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantRef>,
    /// The customer's running grant this purchase succeeds (found by [`GrantRef::FollowUp`]): its
    /// lineage and when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeds: Option<(String, Timestamp)>,
}

/// The `via` of a relayed purchase.
pub const VIA: &str = "revenuecat";

impl RelayedPurchase {
    pub fn facts(&self, purchase_id: String, product: &Product) -> PurchaseFacts {
        PurchaseFacts {
            id: purchase_id,
            store: self.store,
            product_id: product.id.clone(),
            store_transaction_id: self.lineage.clone(),
            environment: self.environment.clone(),
            terms: Some(product.terms()),
            settled: None,
            events: Vec::new(),
        }
    }

    /// The facts that end the grant this purchase succeeds, as `product`'s purchase (the grant's
    /// record keeps its own product): it ends as the purchase starts, so access has no gap.
    pub fn replaced_facts(&self, product: &Product) -> Option<PurchaseFacts> {
        let (grant, at) = self.succeeds.as_ref()?;
        Some(PurchaseFacts {
            id: String::new(),
            store: self.store,
            product_id: product.id.clone(),
            store_transaction_id: grant.clone(),
            environment: None,
            terms: Some(product.terms()),
            settled: None,
            events: vec![StoreEvent {
                dedupe_key: format!("{grant}:succeeded_by:{}", self.lineage),
                occurred_at: *at,
                kind: EventKind::Expired,
            }],
        })
    }
}

/// The RevenueCat adapter: webhooks only.
#[derive(Debug, Default)]
pub struct RevenueCatStore;

impl RevenueCatStore {
    pub fn verify_notification(
        &self,
        app: &App,
        delivery: Delivery<'_>,
        _now: Timestamp,
    ) -> StoreResult<Notice> {
        let expected = app
            .settings
            .revenuecat
            .as_ref()
            .and_then(|r| r.webhook_authorization.as_ref())
            .ok_or_else(|| {
                StoreError::not_configured(
                    "This app has no `revenuecat.webhook_authorization`; it takes no RevenueCat events.",
                )
            })?;
        let given = delivery.authorization.unwrap_or_default();
        if aws_lc_rs::constant_time::verify_slices_are_equal(
            given.as_bytes(),
            expected.expose().as_bytes(),
        )
        .is_err()
        {
            return Err(StoreError::new(
                Problem::Unauthenticated,
                "invalid_authorization",
                "The Authorization header is not the one this app set for RevenueCat.",
            ));
        }
        let hook: Webhook = serde_json::from_slice(delivery.body).map_err(|_| {
            StoreError::new(
                Problem::Malformed,
                "malformed_notification",
                "The body is not a RevenueCat webhook (`{\"api_version\", \"event\": {\"id\", \"type\", ...}}`).",
            )
        })?;
        let e = hook.event;
        super::text(
            &gateway_core::text::STORE_ID,
            "malformed_notification",
            "event.id",
            Some(&e.id),
        )?;
        let cause = format!("RevenueCat event {} ({}).", e.kind, e.id);
        if e.kind == "TRANSFER" {
            let from = e.transferred_from.clone().unwrap_or_default();
            let to = e.transferred_to.as_ref().and_then(|t| t.first()).cloned();
            let Some(to) = to.filter(|t| gateway_core::AppUserId::parse(t).is_ok()) else {
                return Err(StoreError::new(
                    Problem::Refused,
                    "invalid_app_user_id",
                    "A TRANSFER names no customer this gateway takes in `transferred_to`.",
                ));
            };
            return Ok(Notice {
                store: Store::RevenueCat,
                id: e.id,
                raw: String::from_utf8_lossy(delivery.body).into_owned(),
                cause,
                transaction: None,
                events: Vec::new(),
                owed: Vec::new(),
                transfer: Some(super::Transfer {
                    from: from
                        .into_iter()
                        .filter(|f| gateway_core::AppUserId::parse(f).is_ok())
                        .collect(),
                    to,
                    lineage_prefix: revenuecat::LINEAGE_PREFIX,
                }),
                remark: None,
                account: None,
            });
        }
        let stated = revenuecat::facts(&e);
        if let Some(s) = &stated
            && gateway_core::AppUserId::parse(&s.customer).is_err()
        {
            return Err(StoreError::new(
                Problem::Refused,
                "invalid_app_user_id",
                "The event's `app_user_id` is not a customer id this gateway takes (1 to 255 printable characters without spaces, '/', '?', '#' or '%').",
            ));
        }
        let (transaction, events) = match stated {
            Some(s) => (
                Some(Transaction::RevenueCat(RelayedPurchase {
                    via: VIA.into(),
                    lineage: s.lineage,
                    store: s.store,
                    sku: s.sku,
                    customer: s.customer,
                    grant: s.grant,
                    succeeds: None,
                    environment: e.environment.as_deref().map(|env| {
                        if env == "SANDBOX" {
                            "Sandbox"
                        } else {
                            "Production"
                        }
                        .to_owned()
                    }),
                })),
                s.events,
            ),
            None => (None, Vec::new()),
        };
        Ok(Notice {
            store: Store::RevenueCat,
            id: e.id,
            raw: String::from_utf8_lossy(delivery.body).into_owned(),
            cause,
            transaction,
            events,
            owed: Vec::new(),
            transfer: None,
            remark: None,
            account: None,
        })
    }
}
