//! What Stripe's events state, as the core's facts about one purchase. A one-time payment's lineage
//! is its PaymentIntent (`pi_…`), which its charge, refunds and disputes name; a subscription's is
//! the Subscription (`sub_…`), which its invoices name. Stripe's events carry snapshots, delivered
//! at least once and in any order, so each fact is keyed by what it states and the object's own ids:
//! the same snapshot again adds nothing.
//!
//! | event | facts |
//! | --- | --- |
//! | `checkout.session.completed`, `payment_status` `paid` or `no_payment_required` | purchased |
//! | `checkout.session.completed`, `unpaid` (a delayed payment method) | pending |
//! | `checkout.session.async_payment_succeeded` | purchased |
//! | `checkout.session.async_payment_failed` | pending, then revoked (never paid) |
//! | `charge.refunded` with `refunded` (the whole charge) | refunded |
//! | `refund.failed` | refund reversed (a refund that failed gives access back) |
//! | `charge.dispute.created` (funds withdrawn) | refunded |
//! | `charge.dispute.closed`: `won` / `lost` | refund reversed / refunded |
//! | `customer.subscription.*`: `incomplete` / `incomplete_expired` | pending / pending, revoked |
//! | ... `trialing`, `active` | purchased, paid until the period's end, auto-renew unless `cancel_at_period_end` |
//! | ... `past_due`, `unpaid` | purchased, billing retry |
//! | ... `canceled`, `paused` | purchased, expired |
//! | `invoice.paid` | renewed to the end of the period it pays for |
//! | `invoice.payment_failed` | billing retry |
//!
//! A partial refund of a charge (`refunded` false) is a refund only for a product whose
//! `partial_refund` policy is `revoke` ([`partial_refund`]); access stays otherwise. A Checkout
//! Session of a subscription states nothing: the subscription's own events do.

use super::models::{Charge, CheckoutSession, Dispute, Invoice, Refund, Subscription};
use crate::{EventKind, StoreEvent, Timestamp};

/// What an event states about one purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stated {
    /// The PaymentIntent of a one-time payment, or the Subscription.
    pub lineage: String,
    pub subscription: bool,
    pub events: Vec<StoreEvent>,
}

fn event(key: String, at: Timestamp, kind: EventKind) -> StoreEvent {
    StoreEvent {
        dedupe_key: key,
        occurred_at: at,
        kind,
    }
}

fn secs(t: i64) -> Timestamp {
    Timestamp::from_millis(t.saturating_mul(1000))
}

fn one_time(lineage: &str, events: Vec<StoreEvent>) -> Option<Stated> {
    Some(Stated {
        lineage: lineage.to_owned(),
        subscription: false,
        events,
    })
}

/// A Checkout Session event (`checkout.session.*`), at `at` (the event's `created`).
pub fn session_facts(kind: &str, s: &CheckoutSession, at: Timestamp) -> Option<Stated> {
    if s.mode != "payment" {
        return None;
    }
    let pi = s.payment_intent.id()?;
    let key = |what: &str| format!("stripe:{pi}:{what}");
    let paid = || {
        event(
            key("paid"),
            at,
            EventKind::Purchased {
                expires_at: None,
                quantity: 1,
            },
        )
    };
    let pending = || event(key("pending"), at, EventKind::Pending);
    let events = match kind {
        "checkout.session.completed" => match s.payment_status.as_str() {
            "paid" | "no_payment_required" => vec![paid()],
            _ => vec![pending()],
        },
        "checkout.session.async_payment_succeeded" => vec![paid()],
        "checkout.session.async_payment_failed" => vec![
            pending(),
            event(key("payment_failed"), at, EventKind::Revoked),
        ],
        _ => return None,
    };
    one_time(pi, events)
}

/// `charge.refunded`: the whole charge refunded is a refund of its payment.
pub fn charge_facts(c: &Charge, at: Timestamp) -> Option<Stated> {
    let pi = c.payment_intent.id()?;
    if !c.refunded {
        return None;
    }
    let e = event(format!("stripe:{}:refunded", c.id), at, EventKind::Refunded);
    one_time(pi, vec![e])
}

/// A refund of part of a charge: the refund its product's `partial_refund: revoke` policy makes of
/// it, keyed by how much was refunded.
pub fn partial_refund(c: &Charge, at: Timestamp) -> Option<StoreEvent> {
    if c.refunded || c.amount_refunded <= 0 {
        return None;
    }
    Some(event(
        format!("stripe:{}:partly_refunded:{}", c.id, c.amount_refunded),
        at,
        EventKind::Refunded,
    ))
}

/// `refund.failed`: the money stays with the customer's merchant, so access comes back.
pub fn refund_facts(kind: &str, r: &Refund, at: Timestamp) -> Option<Stated> {
    let pi = r.payment_intent.id()?;
    if kind != "refund.failed" && r.status != "failed" {
        return None;
    }
    let e = event(
        format!("stripe:{}:failed", r.id),
        at,
        EventKind::RefundReversed,
    );
    one_time(pi, vec![e])
}

/// `charge.dispute.*`: a dispute withdraws the funds (a chargeback); won, they come back.
pub fn dispute_facts(kind: &str, d: &Dispute, at: Timestamp) -> Option<Stated> {
    let pi = d.payment_intent.id()?;
    let key = |what: &str| format!("stripe:{}:{what}", d.id);
    let events = match (kind, d.status.as_str()) {
        // An inquiry (`warning_*`) withdraws nothing.
        (_, s) if s.starts_with("warning_") || s == "prevented" => return None,
        ("charge.dispute.created", _) => vec![event(key("opened"), at, EventKind::Refunded)],
        ("charge.dispute.closed", "won") => vec![
            event(key("opened"), secs(d.created), EventKind::Refunded),
            event(key("won"), at, EventKind::RefundReversed),
        ],
        ("charge.dispute.closed", "lost") => vec![
            event(key("opened"), secs(d.created), EventKind::Refunded),
            event(key("lost"), at, EventKind::Refunded),
        ],
        _ => return None,
    };
    one_time(pi, events)
}

/// A subscription's snapshot (`customer.subscription.*`), by the module's table.
pub fn subscription_facts(s: &Subscription, at: Timestamp) -> Stated {
    let key = |what: String| format!("stripe:{}:{what}", s.id);
    let mut events = Vec::new();
    let end = s.period_end();
    let started = secs(s.start_date.unwrap_or(s.created));
    match s.status.as_str() {
        "incomplete" => events.push(event(key("pending".into()), at, EventKind::Pending)),
        "incomplete_expired" => {
            events.push(event(key("pending".into()), at, EventKind::Pending));
            events.push(event(
                key("incomplete_expired".into()),
                at,
                EventKind::Revoked,
            ));
        }
        status => {
            let expires_at = end.map(secs);
            events.push(event(
                key("purchased".into()),
                started,
                EventKind::Purchased {
                    expires_at,
                    quantity: 1,
                },
            ));
            let end = end.unwrap_or(0);
            match status {
                "trialing" | "active" => {
                    if let Some(expires_at) = expires_at {
                        events.push(event(
                            key(format!("paid:{end}")),
                            at,
                            EventKind::Renewed { expires_at },
                        ));
                    }
                    let enabled = !s.cancel_at_period_end;
                    events.push(event(
                        key(format!("auto_renew:{enabled}:{end}")),
                        at,
                        EventKind::AutoRenewChanged { enabled },
                    ));
                }
                "past_due" | "unpaid" => {
                    events.push(event(
                        key(format!("retry:{end}")),
                        at,
                        EventKind::BillingRetry,
                    ));
                }
                _ => {
                    // `canceled` (or `paused`): over, when it ended.
                    let ended = s.ended_at.map_or(at, secs);
                    events.push(event(
                        key(format!("{status}:{end}")),
                        ended,
                        EventKind::Expired,
                    ));
                }
            }
        }
    }
    Stated {
        lineage: s.id.clone(),
        subscription: true,
        events,
    }
}

/// `invoice.paid` and `invoice.payment_failed` of a subscription.
pub fn invoice_facts(kind: &str, i: &Invoice, at: Timestamp) -> Option<Stated> {
    let sub = i.subscription_id()?;
    let key = |what: &str| format!("stripe:{sub}:{what}:{}", i.id);
    let e = match kind {
        "invoice.paid" => event(
            key("invoice_paid"),
            at,
            EventKind::Renewed {
                expires_at: secs(i.period_end()?),
            },
        ),
        "invoice.payment_failed" => event(key("invoice_failed"), at, EventKind::BillingRetry),
        _ => return None,
    };
    Some(Stated {
        lineage: sub.to_owned(),
        subscription: true,
        events: vec![e],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ProductKind, PurchaseStatus,
        purchase::fold_with_terms,
        stripe::models::{Expandable, Invoice},
    };

    fn at(s: i64) -> Timestamp {
        secs(s)
    }

    fn status(events: &[StoreEvent], kind: ProductKind, now: i64) -> PurchaseStatus {
        fold_with_terms(events, Some(kind), None, at(now)).status
    }

    fn session(payment_status: &str) -> CheckoutSession {
        CheckoutSession {
            id: "cs_test_1".into(),
            mode: "payment".into(),
            payment_status: payment_status.into(),
            payment_intent: Expandable(Some("pi_1".into())),
            ..CheckoutSession::default()
        }
    }

    #[test]
    fn a_checkout_grants_when_paid_and_waits_for_a_delayed_payment() {
        let done = session_facts("checkout.session.completed", &session("paid"), at(10)).unwrap();
        assert_eq!(done.lineage, "pi_1");
        assert_eq!(
            status(&done.events, ProductKind::NonConsumable, 20),
            PurchaseStatus::Active
        );
        let trial = session_facts(
            "checkout.session.completed",
            &session("no_payment_required"),
            at(10),
        );
        assert_eq!(
            trial.unwrap().events,
            done.events,
            "a free checkout is fulfilled too"
        );

        let mut events = session_facts("checkout.session.completed", &session("unpaid"), at(10))
            .unwrap()
            .events;
        assert_eq!(
            status(&events, ProductKind::NonConsumable, 20),
            PurchaseStatus::Pending
        );
        let failed = session_facts(
            "checkout.session.async_payment_failed",
            &session("unpaid"),
            at(30),
        );
        let mut lost = events.clone();
        lost.extend(failed.unwrap().events);
        assert_eq!(
            status(&lost, ProductKind::NonConsumable, 40),
            PurchaseStatus::Revoked
        );
        events.extend(
            session_facts(
                "checkout.session.async_payment_succeeded",
                &session("paid"),
                at(30),
            )
            .unwrap()
            .events,
        );
        assert_eq!(
            status(&events, ProductKind::NonConsumable, 40),
            PurchaseStatus::Active
        );
        assert_eq!(
            session_facts("checkout.session.expired", &session("unpaid"), at(30)),
            None
        );
    }

    #[test]
    fn refunds_and_disputes_end_access_and_a_failed_refund_or_a_won_dispute_restores_it() {
        let paid = session_facts("checkout.session.completed", &session("paid"), at(10)).unwrap();
        let charge = Charge {
            id: "ch_1".into(),
            amount: 4999,
            amount_refunded: 1000,
            payment_intent: Expandable(Some("pi_1".into())),
            ..Charge::default()
        };
        assert_eq!(
            charge_facts(&charge, at(20)),
            None,
            "a partial refund keeps access"
        );
        let whole = Charge {
            amount_refunded: 4999,
            refunded: true,
            ..charge
        };
        let mut events = paid.events.clone();
        events.extend(charge_facts(&whole, at(20)).unwrap().events);
        assert_eq!(
            status(&events, ProductKind::NonConsumable, 30),
            PurchaseStatus::Refunded
        );
        let failed = Refund {
            id: "re_1".into(),
            status: "failed".into(),
            payment_intent: Expandable(Some("pi_1".into())),
            ..Refund::default()
        };
        events.extend(
            refund_facts("refund.failed", &failed, at(25))
                .unwrap()
                .events,
        );
        assert_eq!(
            status(&events, ProductKind::NonConsumable, 30),
            PurchaseStatus::Active
        );

        let dispute = |status: &str| Dispute {
            id: "dp_1".into(),
            status: status.into(),
            created: 40,
            payment_intent: Expandable(Some("pi_1".into())),
            ..Dispute::default()
        };
        let mut disputed = paid.events.clone();
        disputed.extend(
            dispute_facts("charge.dispute.created", &dispute("needs_response"), at(40))
                .unwrap()
                .events,
        );
        assert_eq!(
            status(&disputed, ProductKind::NonConsumable, 45),
            PurchaseStatus::Refunded
        );
        let mut won = disputed.clone();
        won.extend(
            dispute_facts("charge.dispute.closed", &dispute("won"), at(50))
                .unwrap()
                .events,
        );
        assert_eq!(
            status(&won, ProductKind::NonConsumable, 55),
            PurchaseStatus::Active
        );
        let mut lost = disputed;
        lost.extend(
            dispute_facts("charge.dispute.closed", &dispute("lost"), at(50))
                .unwrap()
                .events,
        );
        assert_eq!(
            status(&lost, ProductKind::NonConsumable, 55),
            PurchaseStatus::Refunded
        );
        assert_eq!(
            dispute_facts(
                "charge.dispute.created",
                &dispute("warning_needs_response"),
                at(40)
            ),
            None,
            "an inquiry withdraws nothing"
        );
    }

    #[test]
    fn a_subscription_follows_its_snapshots_and_invoices() {
        let sub: Subscription = serde_json::from_value(serde_json::json!({
            "id": "sub_1", "object": "subscription", "status": "active", "start_date": 100,
            "created": 100, "cancel_at_period_end": false, "metadata": {"order_token": "x"},
            "items": {"object": "list", "data": [{"price": {"id": "price_m"},
                "current_period_start": 100, "current_period_end": 1000}]}
        }))
        .unwrap();
        assert_eq!(sub.price(), Some("price_m"));
        let s = subscription_facts(&sub, at(100));
        assert!(s.subscription);
        assert_eq!(
            status(&s.events, ProductKind::Subscription, 500),
            PurchaseStatus::Active
        );
        assert_eq!(
            status(&s.events, ProductKind::Subscription, 1001),
            PurchaseStatus::Expired
        );

        let invoice: Invoice = serde_json::from_value(serde_json::json!({
            "id": "in_2", "object": "invoice", "status": "paid", "billing_reason": "subscription_cycle",
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_1", "metadata": {}}},
            "lines": {"object": "list", "data": [{"period": {"start": 1000, "end": 2000}}]}
        }))
        .unwrap();
        let mut events = s.events.clone();
        events.extend(
            invoice_facts("invoice.paid", &invoice, at(1000))
                .unwrap()
                .events,
        );
        assert_eq!(
            status(&events, ProductKind::Subscription, 1500),
            PurchaseStatus::Active
        );

        let canceled = Subscription {
            status: "canceled".into(),
            ended_at: Some(1200),
            ..sub.clone()
        };
        events.extend(subscription_facts(&canceled, at(1200)).events);
        assert_eq!(
            status(&events, ProductKind::Subscription, 1300),
            PurchaseStatus::Expired
        );
    }
}
