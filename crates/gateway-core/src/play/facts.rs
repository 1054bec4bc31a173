//! What Google Play states, as the core's facts. Play's API answers with the *current* state of a
//! purchase token, not its history, so each read becomes the facts that state implies, each keyed so
//! that reading the same state again adds nothing and a new state (another expiry, another order)
//! adds exactly its own facts. `at` is when Play stated it (a notification's `eventTimeMillis`, or the
//! time of the read), which orders the facts of a token among themselves.
//!
//! A subscription's state (`subscriptionState`, or HTTP 410 for a token Play no longer answers for):
//!
//! | Play | facts | access |
//! | --- | --- | --- |
//! | `PENDING` | pending | none |
//! | `PENDING_PURCHASE_CANCELED` | pending, then revoked | none, ever |
//! | `ACTIVE` | purchased (at `startTime`), paid until the latest `expiryTime`, auto-renew as the plan says | until expiry |
//! | `CANCELED` | as `ACTIVE`, auto-renew off | until expiry |
//! | `IN_GRACE_PERIOD` | purchased (paid until Play said so), grace period until `expiryTime` | until the grace ends |
//! | `ON_HOLD` | purchased, billing retry | none |
//! | `PAUSED` | purchased, expired (for the pause) | none, until a renewal resumes it |
//! | `EXPIRED` | purchased, expired | none |
//! | HTTP 410 | expired | none |
//!
//! A renewal (a later `expiryTime` in `ACTIVE` or `CANCELED`) ends the troubles of the period before
//! it, as the core's renewals do. A one-time product: `PENDING` is pending, `PURCHASED` is purchased
//! with its quantity, `CANCELLED` is refunded once paid (`purchaseCompletionTime`), and revoked
//! before (a pending purchase Play cancelled ends without access). A voided purchase is a refund of
//! its order, or of some of its units (a quantity-based partial refund).

use super::models::{ProductPurchaseV2, SubscriptionPurchaseV2, VoidedPurchase};
use crate::{EventKind, Product, PurchaseFacts, StoreEvent, Timestamp, ids::Store};

/// What a Play answer lacks, or holds in a shape Google does not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Play purchase {0}")]
pub struct Unreadable(pub String);

/// The purchase state of a one-time product.
fn product_state(p: &ProductPurchaseV2) -> &str {
    p.purchase_state_context
        .as_ref()
        .map_or("", |c| c.purchase_state.as_str())
}

fn time(field: &str, value: Option<&str>) -> Result<Option<Timestamp>, Unreadable> {
    value
        .map(|v| {
            Timestamp::parse_rfc3339(v)
                .map_err(|_| Unreadable(format!("has a `{field}` that is not an RFC 3339 time")))
        })
        .transpose()
}

fn environment(test: bool) -> Option<String> {
    Some(if test { "Sandbox" } else { "Production" }.to_owned())
}

fn event(key: String, at: Timestamp, kind: EventKind) -> StoreEvent {
    StoreEvent {
        dedupe_key: key,
        occurred_at: at,
        kind,
    }
}

/// The facts a one-time product purchase states about its token, as `product` of the catalog.
pub fn product_facts(
    p: &ProductPurchaseV2,
    token: &str,
    purchase_id: String,
    product: &Product,
    at: Timestamp,
) -> Result<PurchaseFacts, Unreadable> {
    let key = |what: &str| format!("play:{token}:{what}");
    let quantity = p
        .product_line_item
        .first()
        .and_then(|i| i.product_offer_details.as_ref())
        .and_then(|d| d.quantity)
        .unwrap_or(1)
        .max(1);
    let events = match product_state(p) {
        "PENDING" => vec![event(key("pending"), at, EventKind::Pending)],
        "PURCHASED" => {
            let paid = time(
                "purchaseCompletionTime",
                p.purchase_completion_time.as_deref(),
            )?;
            vec![event(
                key("purchased"),
                paid.unwrap_or(at),
                EventKind::Purchased {
                    expires_at: None,
                    quantity,
                },
            )]
        }
        // Cancelled after payment is a refund (Play voids the order too); cancelled before it, a
        // pending purchase that ends as nothing.
        "CANCELLED" if p.purchase_completion_time.is_some() => {
            vec![event(key("canceled"), at, EventKind::Refunded)]
        }
        "CANCELLED" => vec![event(key("canceled"), at, EventKind::Revoked)],
        other => {
            return Err(Unreadable(format!(
                "has the purchase state {other:?}, which Play does not write"
            )));
        }
    };
    Ok(PurchaseFacts {
        id: purchase_id,
        store: Store::PlayStore,
        product_id: product.id.clone(),
        store_transaction_id: token.to_owned(),
        environment: environment(p.test_purchase_context.is_some()),
        terms: Some(product.terms()),
        settled: None,
        events,
    })
}

/// The facts a subscription's current state states about its token (see the module's table).
pub fn subscription_facts(
    s: &SubscriptionPurchaseV2,
    token: &str,
    purchase_id: String,
    product: &Product,
    at: Timestamp,
) -> Result<PurchaseFacts, Unreadable> {
    let key = |what: &str| format!("play:{token}:{what}");
    let expiry = s
        .line_items
        .iter()
        .filter_map(|i| i.expiry_time.as_deref())
        .map(|t| time("expiryTime", Some(t)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .max();
    let started = time("startTime", s.start_time.as_deref())?;
    let auto_renew = s
        .line_items
        .iter()
        .filter_map(|i| i.auto_renewing_plan.as_ref()?.auto_renew_enabled)
        .reduce(|a, b| a || b);
    let state = s.subscription_state.as_str();
    let mut events = Vec::new();
    match state {
        "SUBSCRIPTION_STATE_PENDING" => events.push(event(key("pending"), at, EventKind::Pending)),
        "SUBSCRIPTION_STATE_PENDING_PURCHASE_CANCELED" => {
            events.push(event(key("pending"), at, EventKind::Pending));
            events.push(event(key("pending_canceled"), at, EventKind::Revoked));
        }
        "SUBSCRIPTION_STATE_ACTIVE"
        | "SUBSCRIPTION_STATE_CANCELED"
        | "SUBSCRIPTION_STATE_IN_GRACE_PERIOD"
        | "SUBSCRIPTION_STATE_ON_HOLD"
        | "SUBSCRIPTION_STATE_PAUSED"
        | "SUBSCRIPTION_STATE_EXPIRED" => {
            let Some(expiry) = expiry else {
                return Err(Unreadable(format!(
                    "is {state} but names no `lineItems[].expiryTime`"
                )));
            };
            let expiry_ms = expiry.millis();
            // In grace, Play's `expiryTime` is the end of the grace period; the paid period ended by
            // the time Play said so.
            let paid_until = if state == "SUBSCRIPTION_STATE_IN_GRACE_PERIOD" {
                expiry.min(at)
            } else {
                expiry
            };
            events.push(event(
                key("purchased"),
                started.unwrap_or(at),
                EventKind::Purchased {
                    expires_at: Some(paid_until),
                    quantity: 1,
                },
            ));
            match state {
                "SUBSCRIPTION_STATE_ACTIVE" | "SUBSCRIPTION_STATE_CANCELED" => {
                    events.push(event(
                        key(&format!("paid:{expiry_ms}")),
                        at,
                        EventKind::Renewed { expires_at: expiry },
                    ));
                    let enabled =
                        state == "SUBSCRIPTION_STATE_ACTIVE" && auto_renew.unwrap_or(true);
                    events.push(event(
                        key(&format!("auto_renew:{enabled}:{expiry_ms}")),
                        at,
                        EventKind::AutoRenewChanged { enabled },
                    ));
                }
                "SUBSCRIPTION_STATE_IN_GRACE_PERIOD" => events.push(event(
                    key(&format!("grace:{expiry_ms}")),
                    at,
                    EventKind::GracePeriod { until: expiry },
                )),
                "SUBSCRIPTION_STATE_ON_HOLD" => events.push(event(
                    key(&format!("on_hold:{expiry_ms}")),
                    at,
                    EventKind::BillingRetry,
                )),
                "SUBSCRIPTION_STATE_PAUSED" => events.push(event(
                    key(&format!("paused:{expiry_ms}")),
                    at,
                    EventKind::Expired,
                )),
                _ => events.push(event(
                    key(&format!("expired:{expiry_ms}")),
                    at,
                    EventKind::Expired,
                )),
            }
        }
        other => {
            return Err(Unreadable(format!(
                "has the subscription state {other:?}, which Play does not write"
            )));
        }
    }
    Ok(PurchaseFacts {
        id: purchase_id,
        store: Store::PlayStore,
        product_id: product.id.clone(),
        store_transaction_id: token.to_owned(),
        environment: environment(s.test_purchase.is_some()),
        terms: Some(product.terms()),
        settled: None,
        events,
    })
}

/// The facts of a token Play no longer answers for (HTTP 410): it has ended.
pub fn gone_facts(
    token: &str,
    purchase_id: String,
    product: &Product,
    at: Timestamp,
) -> PurchaseFacts {
    PurchaseFacts {
        id: purchase_id,
        store: Store::PlayStore,
        product_id: product.id.clone(),
        store_transaction_id: token.to_owned(),
        environment: None,
        terms: Some(product.terms()),
        settled: None,
        events: vec![event(format!("play:{token}:gone"), at, EventKind::Expired)],
    }
}

/// A voided purchase as a refund of its order, or, when it names a `voidedQuantity` (a
/// quantity-based partial refund; Google writes 0 for a full one), of that many of its units. A
/// partial refund is keyed by its order and time, so two partial refunds of one order are two facts
/// and the same one listed again is one.
pub fn voided_event(v: &VoidedPurchase, at: Timestamp) -> StoreEvent {
    let when = v
        .voided_time_millis
        .as_deref()
        .and_then(|ms| ms.parse::<i64>().ok())
        .map_or(at, Timestamp::from_millis);
    let order = v.order_id.as_deref().unwrap_or(&v.purchase_token);
    match v.voided_quantity {
        Some(quantity) if quantity > 0 => event(
            format!("play:void:{order}:{}:{quantity}", when.millis()),
            when,
            EventKind::PartlyRefunded { quantity },
        ),
        _ => event(format!("play:void:{order}"), when, EventKind::Refunded),
    }
}
