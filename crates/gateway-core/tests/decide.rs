//! Concrete stories of the decision core: a customer's facts arrive one at a time, the core derives the
//! new state and diffs it against the one recorded before, exactly as the service does in one
//! transaction. Each test states the effects it expects, value for value.

use std::collections::BTreeMap;

use gateway_core::{
    ConsumableSpec, Currency, CustomerFacts, CustomerState, Effect, EntitlementId, EntitlementSpec,
    EntitlementStatus, EntitlementView, EventKind, ManualAction, ManualFact, Product, ProductId,
    ProductKind, PurchaseFacts, PurchaseStatus, Store, StoreEvent, StoreSkus, Timestamp,
    decide::{Catalog, PurchaseView, derive, diff},
    ledger::LedgerSource,
};
use serde_json::json;

// ---------------------------------------------------------------------------------------------------
// The catalog of the stories.

const COURSE: &str = "edu.acme.course.cs101";
const COURSE_KEY: &str = "course-v1:Acme+CS101+2026";
const COINS_100: &str = "edu.acme.coins.100";
const PLUS: &str = "edu.acme.plus.monthly";
const PASS: &str = "edu.acme.pass.30d";

fn pid(s: &str) -> ProductId {
    ProductId::parse(s).unwrap()
}

fn eid(s: &str) -> EntitlementId {
    EntitlementId::parse(s).unwrap()
}

fn coins() -> Currency {
    Currency::parse("COINS").unwrap()
}

fn product(id: &str, kind: ProductKind, entitlements: Vec<EntitlementSpec>) -> Product {
    Product {
        id: pid(id),
        kind,
        store_skus: StoreSkus::default(),
        entitlements,
        consumable: None,
        access_duration: None,
        expires_at: None,
        active: true,
        partial_refund: Default::default(),
    }
}

fn plain(id: &str) -> EntitlementSpec {
    EntitlementSpec {
        id: eid(id),
        attributes: BTreeMap::new(),
    }
}

fn course_attributes() -> BTreeMap<String, serde_json::Value> {
    BTreeMap::from([
        ("course_id".to_owned(), json!(COURSE_KEY)),
        ("mode".to_owned(), json!("verified")),
    ])
}

fn catalog() -> Catalog {
    let course = product(
        COURSE,
        ProductKind::NonConsumable,
        vec![EntitlementSpec {
            id: eid(COURSE_KEY),
            attributes: course_attributes(),
        }],
    );
    let mut coins_100 = product(COINS_100, ProductKind::Consumable, vec![]);
    coins_100.consumable = Some(ConsumableSpec {
        currency: coins(),
        amount: 100,
    });
    let plus = product(PLUS, ProductKind::Subscription, vec![plain("plus")]);
    let mut pass = product(PASS, ProductKind::NonRenewing, vec![plain("pass")]);
    pass.access_duration = Some("P30D".parse().unwrap());
    let all = [course, coins_100, plus, pass];
    for p in &all {
        p.validate().unwrap();
    }
    all.into_iter().map(|p| (p.id.clone(), p)).collect()
}

// ---------------------------------------------------------------------------------------------------
// Time: the stories start on 1 March 2026.

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

fn t0() -> Timestamp {
    Timestamp::parse_rfc3339("2026-03-01T00:00:00Z").unwrap()
}

fn day(n: i64) -> Timestamp {
    t0().plus_millis(n * DAY)
}

fn at(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

// ---------------------------------------------------------------------------------------------------
// The harness: recorded state and balances, as the service keeps them between decisions.

struct Customer {
    catalog: Catalog,
    facts: CustomerFacts,
    state: CustomerState,
    balances: BTreeMap<Currency, i64>,
}

impl Customer {
    fn new() -> Self {
        Customer {
            catalog: catalog(),
            facts: CustomerFacts::default(),
            state: CustomerState::default(),
            balances: BTreeMap::new(),
        }
    }

    /// Adds a store fact about `purchase` (a purchase of `product` on the App Store).
    fn add_store(
        &mut self,
        purchase: &str,
        product: &str,
        key: &str,
        at: Timestamp,
        kind: EventKind,
    ) {
        let event = StoreEvent {
            dedupe_key: key.to_owned(),
            occurred_at: at,
            kind,
        };
        match self.facts.purchases.iter_mut().find(|p| p.id == purchase) {
            Some(p) => p.events.push(event),
            None => self.facts.purchases.push(PurchaseFacts {
                id: purchase.to_owned(),
                store: Store::AppStore,
                product_id: pid(product),
                store_transaction_id: format!("tx-{purchase}"),
                environment: Some("Production".to_owned()),
                terms: None,
                settled: None,
                events: vec![event],
            }),
        }
    }

    /// Derives at `now`, diffs against the recorded state, records the result and applies the balance
    /// changes, as one decision of the service does.
    fn decide(&mut self, now: Timestamp) -> Vec<Effect> {
        let after = derive(&self.facts, &self.catalog, now);
        let effects = diff(&self.state, &after, &self.balances);
        for e in &effects {
            if let Effect::BalanceChanged {
                currency,
                previous,
                balance,
            } = e
            {
                assert_eq!(self.balances.get(currency).copied().unwrap_or(0), *previous);
                self.balances.insert(currency.clone(), *balance);
            }
        }
        self.state = after;
        effects
    }

    fn store(
        &mut self,
        purchase: &str,
        product: &str,
        key: &str,
        at: Timestamp,
        kind: EventKind,
        now: Timestamp,
    ) -> Vec<Effect> {
        self.add_store(purchase, product, key, at, kind);
        self.decide(now)
    }

    fn manual(
        &mut self,
        id: &str,
        at: Timestamp,
        action: ManualAction,
        now: Timestamp,
    ) -> Vec<Effect> {
        self.facts.manual.push(ManualFact {
            id: id.to_owned(),
            at,
            action,
            reason: "support ticket".to_owned(),
        });
        self.decide(now)
    }

    /// A spend is the customer's own act: it lowers the recorded balance and is not derived.
    fn spend(&mut self, amount: i64) {
        *self.balances.entry(coins()).or_default() -= amount;
    }

    fn entitlement(&self, id: &str) -> &EntitlementView {
        &self.state.entitlements[&eid(id)]
    }

    fn purchase(&self, id: &str) -> &PurchaseView {
        &self.state.purchases[id]
    }
}

fn bought(expires_at: Option<Timestamp>) -> EventKind {
    EventKind::Purchased {
        expires_at,
        quantity: 1,
    }
}

/// The audit names of effects, for a readable first check of their sequence.
fn names(effects: &[Effect]) -> Vec<&'static str> {
    effects.iter().map(Effect::audit_name).collect()
}

fn purchase_view(
    c: &Customer,
    id: &str,
    product: &str,
    status: PurchaseStatus,
    expires_at: Option<Timestamp>,
) -> PurchaseView {
    PurchaseView {
        id: id.to_owned(),
        store: Store::AppStore,
        product_id: pid(product),
        store_transaction_id: format!("tx-{id}"),
        status,
        purchased_at: c.facts.purchases.iter().find(|p| p.id == id).and_then(|p| {
            p.events
                .iter()
                .filter(|e| {
                    matches!(
                        e.kind,
                        EventKind::Purchased { .. } | EventKind::Renewed { .. }
                    )
                })
                .map(|e| e.occurred_at)
                .min()
        }),
        expires_at,
        environment: Some("Production".to_owned()),
        auto_renew: None,
        grace_until: None,
    }
}

fn course_view(
    status: EntitlementStatus,
    purchase: &str,
    granted_at: Timestamp,
) -> EntitlementView {
    EntitlementView {
        id: eid(COURSE_KEY),
        attributes: course_attributes(),
        status,
        product_id: Some(pid(COURSE)),
        store: Some(Store::AppStore),
        purchase_id: Some(purchase.to_owned()),
        granted_at: Some(granted_at),
        expires_at: None,
    }
}

// ---------------------------------------------------------------------------------------------------
// Courses (non_consumable).

#[test]
fn buying_a_course_grants_its_entitlement_with_the_catalog_attributes() {
    let mut c = Customer::new();
    let effects = c.store(
        "p1",
        COURSE,
        "tx1",
        day(0),
        bought(None),
        day(0).plus_millis(HOUR),
    );

    let granted = course_view(EntitlementStatus::Active, "p1", day(0));
    assert_eq!(
        effects,
        vec![
            Effect::PurchaseUpdated {
                purchase: purchase_view(&c, "p1", COURSE, PurchaseStatus::Active, None),
                previous: None,
            },
            Effect::EntitlementGranted {
                entitlement: granted.clone(),
            },
        ]
    );
    // What Open edX needs to enroll the learner travels with the grant.
    assert_eq!(granted.attributes["course_id"], json!(COURSE_KEY));
    assert_eq!(granted.attributes["mode"], json!("verified"));
    let outbound: Vec<_> = effects.iter().filter_map(Effect::outbound_event).collect();
    assert_eq!(outbound, vec!["entitlement.granted"]);
    assert!(c.entitlement(COURSE_KEY).status.has_access());
    assert!(c.state.ledger.is_empty(), "a course credits nothing");
}

#[test]
fn a_duplicate_fact_changes_nothing() {
    let mut c = Customer::new();
    let now = day(1);
    c.store("p1", COURSE, "tx1", day(0), bought(None), now);
    let recorded = c.state.clone();

    // The same notification delivered again, twice.
    assert_eq!(
        c.store("p1", COURSE, "tx1", day(0), bought(None), now),
        vec![]
    );
    assert_eq!(
        c.store("p1", COURSE, "tx1", day(0), bought(None), now),
        vec![]
    );
    assert_eq!(c.state, recorded);

    // A manual grant replayed under the same id is the same grant.
    let grant = ManualAction::GrantEntitlement {
        entitlement_id: eid("bonus"),
        expires_at: None,
    };
    assert_eq!(
        names(&c.manual("m1", day(1), grant.clone(), now)),
        vec!["entitlement.granted"]
    );
    assert_eq!(c.manual("m1", day(1), grant, now), vec![]);

    // Re-evaluating with nothing new and the same clock is silent too.
    assert_eq!(c.decide(now), vec![]);
}

#[test]
fn a_refund_revokes_access_and_reports_the_refund() {
    let mut c = Customer::new();
    c.store("p1", COURSE, "tx1", day(0), bought(None), day(0));
    let effects = c.store("p1", COURSE, "refund1", day(3), EventKind::Refunded, day(3));

    assert_eq!(
        effects,
        vec![
            Effect::PurchaseRefunded {
                purchase: purchase_view(&c, "p1", COURSE, PurchaseStatus::Refunded, None),
            },
            Effect::EntitlementRevoked {
                entitlement: course_view(EntitlementStatus::Refunded, "p1", day(0)),
            },
        ]
    );
    assert!(!c.entitlement(COURSE_KEY).status.has_access());
}

#[test]
fn a_refund_that_arrives_before_its_purchase_never_grants() {
    let mut c = Customer::new();
    // The refund notification overtakes the purchase.
    let first = c.store("p1", COURSE, "refund1", day(3), EventKind::Refunded, day(4));
    assert_eq!(
        names(&first),
        vec!["purchase.refunded", "entitlement.updated"]
    );
    assert_eq!(
        c.entitlement(COURSE_KEY).status,
        EntitlementStatus::Refunded
    );

    let second = c.store("p1", COURSE, "tx1", day(0), bought(None), day(4));
    assert!(
        !second
            .iter()
            .any(|e| matches!(e, Effect::EntitlementGranted { .. })),
        "a refunded purchase must not grant: {second:?}"
    );
    assert_eq!(c.purchase("p1").status, PurchaseStatus::Refunded);
    assert_eq!(c.purchase("p1").purchased_at, Some(day(0)));
    assert_eq!(
        c.entitlement(COURSE_KEY),
        &course_view(EntitlementStatus::Refunded, "p1", day(0))
    );

    // The same two facts in arrival order give the same state.
    let mut in_order = Customer::new();
    in_order.store("p1", COURSE, "tx1", day(0), bought(None), day(4));
    in_order.store("p1", COURSE, "refund1", day(3), EventKind::Refunded, day(4));
    assert_eq!(in_order.state, c.state);
}

#[test]
fn a_refund_reversal_grants_access_again() {
    let mut c = Customer::new();
    c.store("p1", COURSE, "tx1", day(0), bought(None), day(0));
    c.store("p1", COURSE, "refund1", day(3), EventKind::Refunded, day(3));
    let effects = c.store(
        "p1",
        COURSE,
        "reversal1",
        day(5),
        EventKind::RefundReversed,
        day(5),
    );

    assert_eq!(
        effects,
        vec![
            Effect::PurchaseUpdated {
                purchase: purchase_view(&c, "p1", COURSE, PurchaseStatus::Active, None),
                previous: Some(PurchaseStatus::Refunded),
            },
            Effect::EntitlementGranted {
                entitlement: course_view(EntitlementStatus::Active, "p1", day(0)),
            },
        ]
    );
}

#[test]
fn a_refund_and_its_reversal_in_the_same_millisecond_end_reversed() {
    // The life-order tie-break puts the reversal after the refund, whatever the arrival order.
    for reversal_first in [false, true] {
        let mut c = Customer::new();
        c.add_store("p1", COURSE, "tx1", day(0), bought(None));
        if reversal_first {
            c.add_store(
                "p1",
                COURSE,
                "zz-reversal",
                day(3),
                EventKind::RefundReversed,
            );
            c.add_store("p1", COURSE, "aa-refund", day(3), EventKind::Refunded);
        } else {
            c.add_store("p1", COURSE, "aa-refund", day(3), EventKind::Refunded);
            c.add_store(
                "p1",
                COURSE,
                "zz-reversal",
                day(3),
                EventKind::RefundReversed,
            );
        }
        c.decide(day(4));
        assert_eq!(c.purchase("p1").status, PurchaseStatus::Active);
        assert_eq!(c.entitlement(COURSE_KEY).status, EntitlementStatus::Active);
    }
}

#[test]
fn a_store_revocation_withdraws_access_without_a_refund() {
    let mut c = Customer::new();
    c.store("p1", COURSE, "tx1", day(0), bought(None), day(0));
    let effects = c.store("p1", COURSE, "void1", day(2), EventKind::Revoked, day(2));
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.revoked"]
    );
    assert_eq!(c.purchase("p1").status, PurchaseStatus::Revoked);
    assert_eq!(c.entitlement(COURSE_KEY).status, EntitlementStatus::Revoked);
}

// ---------------------------------------------------------------------------------------------------
// Consumables.

#[test]
fn buying_coins_credits_the_ledger_and_the_balance() {
    let mut c = Customer::new();
    let effects = c.store("p1", COINS_100, "tx1", day(0), bought(None), day(0));
    assert_eq!(
        effects,
        vec![
            Effect::PurchaseUpdated {
                purchase: purchase_view(&c, "p1", COINS_100, PurchaseStatus::Active, None),
                previous: None,
            },
            Effect::LedgerEntry {
                source: LedgerSource::Purchase("p1".into()),
                currency: coins(),
                amount: 100,
            },
            Effect::BalanceChanged {
                currency: coins(),
                previous: 0,
                balance: 100,
            },
        ]
    );
    assert_eq!(c.balances[&coins()], 100);
    assert!(c.state.entitlements.is_empty());

    // Three packs bought at once credit three times the amount.
    let effects = c.store(
        "p2",
        COINS_100,
        "tx2",
        day(1),
        EventKind::Purchased {
            expires_at: None,
            quantity: 3,
        },
        day(1),
    );
    assert!(effects.contains(&Effect::LedgerEntry {
        source: LedgerSource::Purchase("p2".into()),
        currency: coins(),
        amount: 300,
    }));
    assert_eq!(c.balances[&coins()], 400);
}

#[test]
fn refunding_spent_coins_claws_back_below_zero() {
    let mut c = Customer::new();
    c.store("p1", COINS_100, "tx1", day(0), bought(None), day(0));
    c.spend(70);
    assert_eq!(c.balances[&coins()], 30);

    let effects = c.store(
        "p1",
        COINS_100,
        "refund1",
        day(2),
        EventKind::Refunded,
        day(2),
    );
    assert_eq!(
        effects,
        vec![
            Effect::PurchaseRefunded {
                purchase: purchase_view(&c, "p1", COINS_100, PurchaseStatus::Refunded, None),
            },
            Effect::LedgerEntry {
                source: LedgerSource::Purchase("p1".into()),
                currency: coins(),
                amount: -100,
            },
            Effect::BalanceChanged {
                currency: coins(),
                previous: 30,
                balance: -70,
            },
            Effect::BalanceNegative {
                currency: coins(),
                balance: -70,
            },
        ]
    );
    assert_eq!(c.balances[&coins()], -70);
    assert_eq!(
        c.state.ledger[&(LedgerSource::Purchase("p1".into()), coins())],
        0
    );
}

#[test]
fn a_partial_refund_claws_back_its_share_and_one_of_every_unit_refunds_the_purchase() {
    let mut c = Customer::new();
    let three = EventKind::Purchased {
        expires_at: None,
        quantity: 3,
    };
    c.store("p1", COINS_100, "tx1", day(0), three, day(0));
    assert_eq!(c.balances[&coins()], 300);

    // Two of the three packs refunded: 200 clawed back, the purchase stands with one.
    let two = EventKind::PartlyRefunded { quantity: 2 };
    let effects = c.store("p1", COINS_100, "void-a", day(1), two.clone(), day(1));
    assert_eq!(
        effects,
        vec![
            Effect::LedgerEntry {
                source: LedgerSource::Purchase("p1".into()),
                currency: coins(),
                amount: -200,
            },
            Effect::BalanceChanged {
                currency: coins(),
                previous: 300,
                balance: 100,
            },
        ]
    );
    assert_eq!(c.purchase("p1").status, PurchaseStatus::Active);

    // The same partial refund told again changes nothing.
    assert!(
        c.store("p1", COINS_100, "void-a", day(1), two, day(2))
            .is_empty()
    );

    // The last pack refunded too: the purchase is refunded, nothing is left of its credit.
    let one = EventKind::PartlyRefunded { quantity: 1 };
    let effects = c.store("p1", COINS_100, "void-b", day(3), one, day(3));
    assert!(
        matches!(effects[0], Effect::PurchaseRefunded { .. }),
        "{effects:?}"
    );
    assert!(effects.contains(&Effect::LedgerEntry {
        source: LedgerSource::Purchase("p1".into()),
        currency: coins(),
        amount: -100,
    }));
    assert_eq!(c.balances[&coins()], 0);
}

#[test]
fn a_clawback_that_leaves_a_positive_balance_is_not_negative() {
    let mut c = Customer::new();
    c.store("p1", COINS_100, "tx1", day(0), bought(None), day(0));
    c.store("p2", COINS_100, "tx2", day(0), bought(None), day(0));
    c.spend(50);
    let effects = c.store(
        "p1",
        COINS_100,
        "refund1",
        day(2),
        EventKind::Refunded,
        day(2),
    );
    assert!(effects.contains(&Effect::BalanceChanged {
        currency: coins(),
        previous: 150,
        balance: 50,
    }));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::BalanceNegative { .. }))
    );
}

#[test]
fn a_manual_grant_of_a_consumable_credits_its_currency() {
    let mut c = Customer::new();
    let effects = c.manual(
        "grant-1",
        day(0),
        ManualAction::GrantProduct {
            product_id: pid(COINS_100),
            expires_at: None,
            terms: None,
        },
        day(0),
    );
    assert_eq!(
        effects,
        vec![
            Effect::LedgerEntry {
                source: LedgerSource::Grant("grant-1".into()),
                currency: coins(),
                amount: 100,
            },
            Effect::BalanceChanged {
                currency: coins(),
                previous: 0,
                balance: 100,
            },
        ]
    );
    assert_eq!(c.balances[&coins()], 100);
}

// ---------------------------------------------------------------------------------------------------
// Subscriptions.

fn subscribed(c: &mut Customer) {
    let effects = c.store("s1", PLUS, "sub-tx1", day(0), bought(Some(day(30))), day(0));
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.granted"]
    );
    assert_eq!(c.entitlement("plus").expires_at, Some(day(30)));
}

#[test]
fn a_renewal_extends_access() {
    let mut c = Customer::new();
    subscribed(&mut c);
    let effects = c.store(
        "s1",
        PLUS,
        "sub-tx2",
        day(29),
        EventKind::Renewed {
            expires_at: day(60),
        },
        day(29),
    );
    let renewed = EntitlementView {
        id: eid("plus"),
        attributes: BTreeMap::new(),
        status: EntitlementStatus::Active,
        product_id: Some(pid(PLUS)),
        store: Some(Store::AppStore),
        purchase_id: Some("s1".into()),
        granted_at: Some(day(0)),
        expires_at: Some(day(60)),
    };
    assert_eq!(
        effects,
        vec![
            Effect::PurchaseUpdated {
                purchase: purchase_view(&c, "s1", PLUS, PurchaseStatus::Active, Some(day(60))),
                previous: Some(PurchaseStatus::Active),
            },
            Effect::EntitlementRenewed {
                entitlement: renewed,
                previous_expires_at: Some(day(30)),
            },
        ]
    );
    assert_eq!(c.state.next_change_after(day(29)), Some(day(60)));
}

#[test]
fn the_clock_passing_expires_at_expires_the_entitlement() {
    let mut c = Customer::new();
    subscribed(&mut c);
    assert_eq!(c.state.next_change_after(day(1)), Some(day(30)));

    // One millisecond before the end nothing changes.
    assert_eq!(c.decide(day(30).plus_millis(-1)), vec![]);

    let effects = c.decide(day(30));
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.expired"]
    );
    assert_eq!(
        effects[0],
        Effect::PurchaseUpdated {
            purchase: purchase_view(&c, "s1", PLUS, PurchaseStatus::Expired, Some(day(30))),
            previous: Some(PurchaseStatus::Active),
        }
    );
    let Effect::EntitlementExpired { entitlement } = &effects[1] else {
        unreachable!()
    };
    assert_eq!(entitlement.status, EntitlementStatus::Expired);
    assert_eq!(entitlement.expires_at, Some(day(30)));
    assert_eq!(c.state.next_change_after(day(30)), None);

    // A renewal that arrives after the expiry was announced grants access anew.
    let effects = c.store(
        "s1",
        PLUS,
        "sub-tx2",
        day(30),
        EventKind::Renewed {
            expires_at: day(60),
        },
        day(31),
    );
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.granted"]
    );
    assert_eq!(c.entitlement("plus").expires_at, Some(day(60)));
}

#[test]
fn a_grace_period_keeps_access_open() {
    let mut c = Customer::new();
    subscribed(&mut c);
    c.decide(day(29));
    let effects = c.store(
        "s1",
        PLUS,
        "grace1",
        day(30),
        EventKind::GracePeriod { until: day(36) },
        day(32),
    );
    let mut view = c.entitlement("plus").clone();
    assert_eq!(view.status, EntitlementStatus::GracePeriod);
    assert!(view.status.has_access());
    assert_eq!(view.status.as_str(), "grace_period");
    // Access does not change, so nothing goes out: the purchase shows the grace period's end and the
    // entitlement its new status.
    assert_eq!(
        effects,
        vec![
            Effect::PurchaseUpdated {
                purchase: PurchaseView {
                    grace_until: Some(day(36)),
                    ..purchase_view(&c, "s1", PLUS, PurchaseStatus::Active, Some(day(30)))
                },
                previous: Some(PurchaseStatus::Active),
            },
            Effect::EntitlementUpdated {
                entitlement: view.clone(),
                previous: Some(EntitlementStatus::Active),
            },
        ]
    );
    assert!(effects.iter().all(|e| e.outbound_event().is_none()));
    assert_eq!(c.purchase("s1").status, PurchaseStatus::Active);
    // The end of the grace period is when the clock alone takes access away: the expiry job must
    // come back then.
    assert_eq!(c.state.next_change_after(day(32)), Some(day(36)));

    // When the grace period ends without payment, the store is still retrying: no more access.
    let effects = c.decide(day(36));
    view.status = EntitlementStatus::BillingRetry;
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.expired"]
    );
    assert_eq!(effects[1], Effect::EntitlementExpired { entitlement: view });
}

#[test]
fn billing_retry_without_grace_has_no_access_until_paid() {
    let mut c = Customer::new();
    subscribed(&mut c);
    let effects = c.store(
        "s1",
        PLUS,
        "retry1",
        day(30),
        EventKind::BillingRetry,
        day(31),
    );
    assert_eq!(
        c.entitlement("plus").status,
        EntitlementStatus::BillingRetry
    );
    assert_eq!(c.entitlement("plus").status.as_str(), "billing_retry");
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.expired"]
    );

    // The store finally charges: a new period, access again.
    let effects = c.store(
        "s1",
        PLUS,
        "sub-tx2",
        day(33),
        EventKind::Renewed {
            expires_at: day(63),
        },
        day(33),
    );
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.granted"]
    );
    assert_eq!(c.entitlement("plus").status, EntitlementStatus::Active);
    assert_eq!(c.entitlement("plus").expires_at, Some(day(63)));
}

#[test]
fn billing_retry_inside_the_paid_period_keeps_access() {
    let mut c = Customer::new();
    subscribed(&mut c);
    let effects = c.store(
        "s1",
        PLUS,
        "retry1",
        day(28),
        EventKind::BillingRetry,
        day(28),
    );
    assert_eq!(effects, vec![]);
    assert_eq!(c.entitlement("plus").status, EntitlementStatus::Active);
}

#[test]
fn auto_renew_off_is_shown_on_the_purchase_and_keeps_access() {
    let mut c = Customer::new();
    subscribed(&mut c);
    let effects = c.store(
        "s1",
        PLUS,
        "ar1",
        day(5),
        EventKind::AutoRenewChanged { enabled: false },
        day(5),
    );
    assert_eq!(names(&effects), vec!["purchase.updated"]);
    assert_eq!(c.purchase("s1").auto_renew, Some(false));
    assert_eq!(c.entitlement("plus").status, EntitlementStatus::Active);
}

// ---------------------------------------------------------------------------------------------------
// Non-renewing products.

#[test]
fn a_thirty_day_pass_expires_thirty_days_after_purchase() {
    let mut c = Customer::new();
    let bought_at = at("2026-03-10T10:30:00Z");
    let effects = c.store("n1", PASS, "pass-tx1", bought_at, bought(None), bought_at);
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.granted"]
    );
    let end = at("2026-04-09T10:30:00Z");
    assert_eq!(c.entitlement("pass").expires_at, Some(end));
    assert_eq!(c.purchase("n1").expires_at, Some(end));
    assert_eq!(c.state.next_change_after(bought_at), Some(end));

    assert_eq!(c.decide(end.plus_millis(-1)), vec![]);
    let effects = c.decide(end);
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.expired"]
    );
    assert_eq!(c.entitlement("pass").status, EntitlementStatus::Expired);
    assert_eq!(c.purchase("n1").status, PurchaseStatus::Expired);
}

// ---------------------------------------------------------------------------------------------------
// Manual grants and revokes.

#[test]
fn a_manual_grant_then_a_manual_revoke_ends_revoked() {
    let mut c = Customer::new();
    let effects = c.manual(
        "m1",
        day(1),
        ManualAction::GrantProduct {
            product_id: pid(COURSE),
            expires_at: None,
            terms: None,
        },
        day(1),
    );
    let granted = EntitlementView {
        id: eid(COURSE_KEY),
        attributes: course_attributes(),
        status: EntitlementStatus::Active,
        product_id: Some(pid(COURSE)),
        store: Some(Store::Manual),
        purchase_id: None,
        granted_at: Some(day(1)),
        expires_at: None,
    };
    assert_eq!(
        effects,
        vec![Effect::EntitlementGranted {
            entitlement: granted.clone()
        }]
    );

    let effects = c.manual(
        "m2",
        day(2),
        ManualAction::Revoke {
            entitlement_id: eid(COURSE_KEY),
        },
        day(2),
    );
    assert_eq!(
        effects,
        vec![Effect::EntitlementRevoked {
            entitlement: EntitlementView {
                status: EntitlementStatus::Revoked,
                ..granted
            }
        }]
    );
}

#[test]
fn a_manual_entitlement_grant_carries_the_catalog_attributes_and_its_end() {
    let mut c = Customer::new();
    let effects = c.manual(
        "m1",
        day(1),
        ManualAction::GrantEntitlement {
            entitlement_id: eid(COURSE_KEY),
            expires_at: Some(day(8)),
        },
        day(1),
    );
    let Some(Effect::EntitlementGranted { entitlement }) = effects.first() else {
        panic!("expected a grant, got {effects:?}")
    };
    assert_eq!(entitlement.attributes, course_attributes());
    assert_eq!(entitlement.product_id, None);
    assert_eq!(entitlement.expires_at, Some(day(8)));
    assert_eq!(names(&c.decide(day(8))), vec!["entitlement.expired"]);
}

#[test]
fn a_manual_revoke_of_a_bought_course_holds_until_a_new_payment() {
    let mut c = Customer::new();
    c.store("p1", COURSE, "tx1", day(0), bought(None), day(0));
    let effects = c.manual(
        "m1",
        day(5),
        ManualAction::Revoke {
            entitlement_id: eid(COURSE_KEY),
        },
        day(5),
    );
    assert_eq!(
        effects,
        vec![Effect::EntitlementRevoked {
            entitlement: course_view(EntitlementStatus::Revoked, "p1", day(0)),
        }]
    );
    // The old purchase's store facts arriving again do not undo the revoke.
    assert_eq!(
        c.store("p1", COURSE, "tx1", day(0), bought(None), day(6)),
        vec![]
    );

    // The learner buys the course again after the revoke: paid after it, so access again.
    let effects = c.store("p2", COURSE, "tx2", day(10), bought(None), day(10));
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.granted"]
    );
    assert_eq!(
        c.entitlement(COURSE_KEY),
        &course_view(EntitlementStatus::Active, "p2", day(10))
    );
}

#[test]
fn a_subscription_renewal_after_a_manual_revoke_grants_again() {
    let mut c = Customer::new();
    subscribed(&mut c);
    c.manual(
        "m1",
        day(5),
        ManualAction::Revoke {
            entitlement_id: eid("plus"),
        },
        day(5),
    );
    assert_eq!(c.entitlement("plus").status, EntitlementStatus::Revoked);
    let effects = c.store(
        "s1",
        PLUS,
        "sub-tx2",
        day(30),
        EventKind::Renewed {
            expires_at: day(60),
        },
        day(30),
    );
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.granted"]
    );
    assert_eq!(c.entitlement("plus").expires_at, Some(day(60)));
}

#[test]
fn a_manual_revoke_with_nothing_behind_it_still_shows_revoked() {
    let mut c = Customer::new();
    let effects = c.manual(
        "m1",
        day(1),
        ManualAction::Revoke {
            entitlement_id: eid("plus"),
        },
        day(1),
    );
    assert_eq!(names(&effects), vec!["entitlement.updated"]);
    assert_eq!(c.entitlement("plus").status, EntitlementStatus::Revoked);
    assert_eq!(c.entitlement("plus").store, Some(Store::Manual));
}

#[test]
fn manual_grants_of_one_entitlement_show_the_same_one_whatever_their_order() {
    // Two grants that give the same entitlement forever: the snapshot must not depend on the order
    // in which the facts were loaded.
    let grants = [
        ManualFact {
            id: "m1".into(),
            at: day(1),
            action: ManualAction::GrantEntitlement {
                entitlement_id: eid(COURSE_KEY),
                expires_at: None,
            },
            reason: "goodwill".into(),
        },
        ManualFact {
            id: "m2".into(),
            at: day(2),
            action: ManualAction::GrantProduct {
                product_id: pid(COURSE),
                expires_at: None,
                terms: None,
            },
            reason: "goodwill".into(),
        },
    ];
    let forward = CustomerFacts {
        purchases: vec![],
        manual: grants.to_vec(),
    };
    let backward = CustomerFacts {
        purchases: vec![],
        manual: grants.iter().rev().cloned().collect(),
    };
    let a = derive(&forward, &catalog(), day(3));
    let b = derive(&backward, &catalog(), day(3));
    assert_eq!(a, b);
    assert_eq!(a.entitlements[&eid(COURSE_KEY)].granted_at, Some(day(1)));
    assert_eq!(diff(&a, &b, &BTreeMap::new()), vec![]);
}

// ---------------------------------------------------------------------------------------------------
// Pending purchases.

#[test]
fn a_pending_purchase_reports_pending_and_grants_when_paid() {
    let mut c = Customer::new();
    let effects = c.store("p1", COURSE, "pending1", day(0), EventKind::Pending, day(0));
    assert_eq!(
        effects,
        vec![
            Effect::PurchasePending {
                purchase: purchase_view(&c, "p1", COURSE, PurchaseStatus::Pending, None),
            },
            Effect::EntitlementUpdated {
                entitlement: EntitlementView {
                    granted_at: None,
                    ..course_view(EntitlementStatus::Pending, "p1", day(0))
                },
                previous: None,
            },
        ]
    );
    assert_eq!(c.entitlement(COURSE_KEY).status.as_str(), "pending");
    assert!(!c.entitlement(COURSE_KEY).status.has_access());

    let effects = c.store("p1", COURSE, "tx1", day(1), bought(None), day(1));
    assert_eq!(
        effects,
        vec![
            Effect::PurchaseUpdated {
                purchase: purchase_view(&c, "p1", COURSE, PurchaseStatus::Active, None),
                previous: Some(PurchaseStatus::Pending),
            },
            Effect::EntitlementGranted {
                entitlement: course_view(EntitlementStatus::Active, "p1", day(1)),
            },
        ]
    );
}

#[test]
fn a_pending_consumable_credits_nothing_until_paid() {
    let mut c = Customer::new();
    let effects = c.store(
        "p1",
        COINS_100,
        "pending1",
        day(0),
        EventKind::Pending,
        day(0),
    );
    assert_eq!(names(&effects), vec!["purchase.pending"]);
    assert_eq!(c.balances.get(&coins()), None);
    let effects = c.store("p1", COINS_100, "tx1", day(1), bought(None), day(1));
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "ledger.entry", "balance.changed"]
    );
    assert_eq!(c.balances[&coins()], 100);
}

// ---------------------------------------------------------------------------------------------------
// Edges of the rules above.

#[test]
fn a_revoke_at_the_very_instant_of_a_grant_holds() {
    let mut c = Customer::new();
    c.manual(
        "m1",
        day(1),
        ManualAction::GrantEntitlement {
            entitlement_id: eid("bonus"),
            expires_at: None,
        },
        day(1),
    );
    c.manual(
        "m2",
        day(1),
        ManualAction::Revoke {
            entitlement_id: eid("bonus"),
        },
        day(1),
    );
    assert_eq!(c.entitlement("bonus").status, EntitlementStatus::Revoked);

    // A purchase paid in the same millisecond as a revoke is revoked too; one paid a millisecond
    // later is not.
    c.manual(
        "m3",
        day(2),
        ManualAction::Revoke {
            entitlement_id: eid(COURSE_KEY),
        },
        day(2),
    );
    c.store("p1", COURSE, "tx1", day(2), bought(None), day(2));
    assert_eq!(c.entitlement(COURSE_KEY).status, EntitlementStatus::Revoked);
    let effects = c.store(
        "p2",
        COURSE,
        "tx2",
        day(2).plus_millis(1),
        bought(None),
        day(3),
    );
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.granted"]
    );
}

#[test]
fn coins_stay_credited_when_the_store_says_the_purchase_expired() {
    let mut c = Customer::new();
    c.store("p1", COINS_100, "tx1", day(0), bought(None), day(0));
    let effects = c.store("p1", COINS_100, "exp1", day(1), EventKind::Expired, day(1));
    assert_eq!(names(&effects), vec!["purchase.updated"]);
    assert_eq!(c.purchase("p1").status, PurchaseStatus::Expired);
    assert_eq!(c.balances[&coins()], 100);
    // A store revocation (voided purchase), unlike an expiry, claws the coins back.
    let effects = c.store("p1", COINS_100, "void1", day(2), EventKind::Revoked, day(2));
    assert!(effects.contains(&Effect::LedgerEntry {
        source: LedgerSource::Purchase("p1".into()),
        currency: coins(),
        amount: -100,
    }));
    assert_eq!(c.balances[&coins()], 0);
}

#[test]
fn a_renewal_after_a_refunded_period_grants_again() {
    let mut c = Customer::new();
    subscribed(&mut c);
    let effects = c.store("s1", PLUS, "refund1", day(10), EventKind::Refunded, day(10));
    assert_eq!(
        names(&effects),
        vec!["purchase.refunded", "entitlement.revoked"]
    );
    let effects = c.store(
        "s1",
        PLUS,
        "sub-tx2",
        day(30),
        EventKind::Renewed {
            expires_at: day(60),
        },
        day(30),
    );
    assert_eq!(
        names(&effects),
        vec!["purchase.updated", "entitlement.granted"]
    );
    assert_eq!(c.purchase("s1").status, PurchaseStatus::Active);
}

#[test]
fn refunding_one_of_two_purchases_of_a_course_keeps_access() {
    let mut c = Customer::new();
    c.store("p1", COURSE, "tx1", day(0), bought(None), day(0));
    c.store("p2", COURSE, "tx2", day(1), bought(None), day(1));
    assert_eq!(c.entitlement(COURSE_KEY).purchase_id.as_deref(), Some("p1"));

    let effects = c.store("p1", COURSE, "refund1", day(2), EventKind::Refunded, day(2));
    // The entitlement is now held by the other purchase: nothing goes out but the refund.
    assert_eq!(
        effects,
        vec![
            Effect::PurchaseRefunded {
                purchase: purchase_view(&c, "p1", COURSE, PurchaseStatus::Refunded, None),
            },
            Effect::EntitlementUpdated {
                entitlement: course_view(EntitlementStatus::Active, "p2", day(1)),
                previous: Some(EntitlementStatus::Active),
            },
        ]
    );
}

#[test]
fn an_entitlement_the_catalog_no_longer_grants_is_revoked_once() {
    use gateway_core::decide::{derive, diff};
    let course = gateway_core::Product {
        id: "cs101".parse().unwrap(),
        kind: gateway_core::ProductKind::NonConsumable,
        store_skus: Default::default(),
        entitlements: vec![gateway_core::EntitlementSpec {
            id: "old".parse().unwrap(),
            attributes: Default::default(),
        }],
        consumable: None,
        access_duration: None,
        expires_at: None,
        active: true,
        partial_refund: Default::default(),
    };
    let facts = gateway_core::CustomerFacts {
        purchases: vec![gateway_core::PurchaseFacts {
            id: "p1".into(),
            store: gateway_core::Store::AppStore,
            product_id: "cs101".parse().unwrap(),
            store_transaction_id: "t1".into(),
            environment: None,
            terms: None,
            settled: None,
            events: vec![gateway_core::StoreEvent {
                dedupe_key: "k".into(),
                occurred_at: gateway_core::Timestamp::from_millis(10),
                kind: gateway_core::EventKind::Purchased {
                    expires_at: None,
                    quantity: 1,
                },
            }],
        }],
        manual: vec![],
    };
    let now = gateway_core::Timestamp::from_millis(20);
    let mut catalog = std::collections::BTreeMap::new();
    catalog.insert(course.id.clone(), course.clone());
    let before = derive(&facts, &catalog, now);
    let mut renamed = course;
    renamed.entitlements[0].id = "new".parse().unwrap();
    catalog.insert(renamed.id.clone(), renamed);
    let after = derive(&facts, &catalog, now);
    let effects = diff(&before, &after, &Default::default());
    let names: Vec<&str> = effects.iter().map(|e| e.audit_name()).collect();
    assert_eq!(names, vec!["entitlement.granted", "entitlement.revoked"]);
    match &effects[1] {
        gateway_core::Effect::EntitlementRevoked { entitlement } => {
            assert_eq!(entitlement.id.as_str(), "old");
            assert_eq!(entitlement.status, gateway_core::EntitlementStatus::Revoked);
        }
        other => panic!("{other:?}"),
    }
    assert!(diff(&after, &after, &Default::default()).is_empty());
}

#[test]
fn a_purchase_keeps_the_terms_it_was_sold_with() {
    use gateway_core::decide::derive;
    let coins = gateway_core::Product {
        id: "coins".parse().unwrap(),
        kind: gateway_core::ProductKind::Consumable,
        store_skus: Default::default(),
        entitlements: vec![],
        consumable: Some(gateway_core::ConsumableSpec {
            currency: "GEMS".parse().unwrap(),
            amount: 100,
        }),
        access_duration: None,
        expires_at: None,
        active: true,
        partial_refund: Default::default(),
    };
    let sold_with = coins.terms();
    let facts = gateway_core::CustomerFacts {
        purchases: vec![gateway_core::PurchaseFacts {
            id: "p1".into(),
            store: gateway_core::Store::AppStore,
            product_id: "coins".parse().unwrap(),
            store_transaction_id: "t1".into(),
            environment: None,
            terms: Some(sold_with),
            settled: None,
            events: vec![gateway_core::StoreEvent {
                dedupe_key: "k".into(),
                occurred_at: gateway_core::Timestamp::from_millis(10),
                kind: gateway_core::EventKind::Purchased {
                    expires_at: None,
                    quantity: 4_000_000_000,
                },
            }],
        }],
        manual: vec![],
    };
    let mut repriced = coins;
    repriced.consumable = Some(gateway_core::ConsumableSpec {
        currency: "GEMS".parse().unwrap(),
        amount: 1000,
    });
    let catalog = std::collections::BTreeMap::from([(repriced.id.clone(), repriced)]);
    let state = derive(&facts, &catalog, gateway_core::Timestamp::from_millis(20));
    let credited: Vec<i64> = state.ledger.values().copied().collect();
    // 100 per unit as sold, and the quantity capped at MAX_QUANTITY.
    assert_eq!(
        credited,
        vec![100 * i64::from(gateway_core::purchase::MAX_QUANTITY)]
    );
}
