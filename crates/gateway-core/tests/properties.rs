//! Property tests of DESIGN.md invariants 3 (idempotent everywhere) and 4 (order does not matter).
//!
//! A random customer (1-3 purchases of random products, each with random store events, plus some
//! manual grants and revokes) is fed to the core one fact at a time, in random orders with random
//! duplicates, exactly as the service does: derive the state from the facts seen so far, diff it
//! against the state recorded before, apply the balance changes, record the new state. Whatever the
//! order, the result must be the state of the set of facts, and the effects emitted on the way must add
//! up to that state: the ledger telescopes, a downstream that only hears the outbound events ends with
//! the right access, and a replay adds nothing.

use std::collections::{BTreeMap, BTreeSet};

use gateway_core::{
    ConsumableSpec, Currency, CustomerFacts, CustomerState, Effect, EntitlementId, EntitlementSpec,
    EntitlementStatus, EventKind, ManualAction, ManualFact, Product, ProductId, ProductKind,
    PurchaseFacts, PurchaseStatus, Store, StoreEvent, StoreSkus, Timestamp,
    decide::{Catalog, derive, diff},
    ledger::LedgerSource,
};
use proptest::{
    collection::vec,
    option,
    prelude::*,
    test_runner::{Config, FileFailurePersistence, TestCaseError},
};
use serde_json::json;

// ---------------------------------------------------------------------------------------------------
// The catalog.

const COURSE: &str = "edu.acme.course.cs101";
const COURSE_KEY: &str = "course-v1:Acme+CS101+2026";
const COINS_100: &str = "edu.acme.coins.100";
const PLUS: &str = "edu.acme.plus.monthly";
const PASS: &str = "edu.acme.pass.30d";
/// A product an operator removed from the catalog: grants of it are ignored.
const GONE: &str = "edu.acme.gone";

const PRODUCTS: [&str; 4] = [COURSE, COINS_100, PLUS, PASS];
/// `bonus` is in no product: only manual grants give it.
const ENTITLEMENTS: [&str; 4] = [COURSE_KEY, "plus", "pass", "bonus"];

fn pid(s: &str) -> ProductId {
    ProductId::parse(s).unwrap()
}

fn eid(s: &str) -> EntitlementId {
    EntitlementId::parse(s).unwrap()
}

fn spec(id: &str, attributes: serde_json::Value) -> EntitlementSpec {
    let serde_json::Value::Object(map) = attributes else {
        unreachable!()
    };
    EntitlementSpec {
        id: eid(id),
        attributes: map.into_iter().collect(),
    }
}

fn catalog() -> Catalog {
    let base = |id: &str, kind: ProductKind, entitlements: Vec<EntitlementSpec>| Product {
        id: pid(id),
        kind,
        store_skus: StoreSkus::default(),
        entitlements,
        consumable: None,
        access_duration: None,
        expires_at: None,
        active: true,
        partial_refund: Default::default(),
    };
    let course = base(
        COURSE,
        ProductKind::NonConsumable,
        vec![spec(
            COURSE_KEY,
            json!({"course_id": COURSE_KEY, "mode": "verified"}),
        )],
    );
    let mut coins = base(COINS_100, ProductKind::Consumable, vec![]);
    coins.consumable = Some(ConsumableSpec {
        currency: Currency::parse("COINS").unwrap(),
        amount: 100,
    });
    let plus = base(
        PLUS,
        ProductKind::Subscription,
        vec![spec("plus", json!({"tier": "monthly"}))],
    );
    // The pass gives its own entitlement and the subscription's one, with other attributes, so that
    // one entitlement often has several candidates to choose from.
    let mut pass = base(
        PASS,
        ProductKind::NonRenewing,
        vec![
            spec("pass", json!({})),
            spec("plus", json!({"tier": "pass"})),
        ],
    );
    pass.access_duration = Some("P30D".parse().unwrap());
    let all = [course, coins, plus, pass];
    for p in &all {
        p.validate().unwrap();
    }
    all.into_iter().map(|p| (p.id.clone(), p)).collect()
}

// ---------------------------------------------------------------------------------------------------
// Time: coarse slots of five days so that facts often share a timestamp, and a P30D pass ends exactly
// on a slot.

const DAY: i64 = 86_400_000;
const SLOT: i64 = 5 * DAY;
/// 2026-03-01T00:00:00Z.
const T0: i64 = 1_772_323_200_000;

fn slot_time(n: i64) -> Timestamp {
    Timestamp::from_millis(T0 + n * SLOT)
}

fn slot() -> impl Strategy<Value = Timestamp> {
    (0i64..12).prop_map(slot_time)
}

// ---------------------------------------------------------------------------------------------------
// Scenarios.

#[derive(Debug, Clone)]
enum Fact {
    Store { purchase: usize, event: StoreEvent },
    Manual(ManualFact),
}

#[derive(Debug, Clone)]
struct PurchaseSpec {
    product: ProductId,
    store: Store,
}

#[derive(Debug, Clone)]
struct Scenario {
    purchases: Vec<PurchaseSpec>,
    /// Every distinct fact, once.
    facts: Vec<Fact>,
    now: Timestamp,
}

fn purchase_id(i: usize) -> String {
    format!("p{i}")
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        1 => Just(EventKind::Pending),
        4 => (option::of(slot()), 1u32..=3).prop_map(|(expires_at, quantity)| EventKind::Purchased {
            expires_at,
            quantity,
        }),
        2 => slot().prop_map(|expires_at| EventKind::Renewed { expires_at }),
        2 => Just(EventKind::Refunded),
        1 => (1u32..=3).prop_map(|quantity| EventKind::PartlyRefunded { quantity }),
        1 => Just(EventKind::RefundReversed),
        1 => Just(EventKind::Revoked),
        1 => Just(EventKind::Expired),
        1 => slot().prop_map(|until| EventKind::GracePeriod { until }),
        1 => Just(EventKind::BillingRetry),
        1 => any::<bool>().prop_map(|enabled| EventKind::AutoRenewChanged { enabled }),
    ]
}

fn manual_action() -> impl Strategy<Value = ManualAction> {
    let entitlement = prop::sample::select(ENTITLEMENTS.to_vec()).prop_map(eid);
    let product = prop::sample::select(vec![COURSE, COINS_100, PLUS, PASS, GONE]).prop_map(pid);
    prop_oneof![
        (entitlement.clone(), option::of(slot())).prop_map(|(entitlement_id, expires_at)| {
            ManualAction::GrantEntitlement {
                entitlement_id,
                expires_at,
            }
        }),
        (product, option::of(slot())).prop_map(|(product_id, expires_at)| {
            ManualAction::GrantProduct {
                product_id,
                expires_at,
                terms: None,
            }
        }),
        entitlement.prop_map(|entitlement_id| ManualAction::Revoke { entitlement_id }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let purchase = (
        prop::sample::select(PRODUCTS.to_vec()),
        prop::sample::select(vec![Store::AppStore, Store::PlayStore, Store::Stripe]),
        vec((event_kind(), slot()), 1..=5),
    );
    let manual = vec((manual_action(), slot()), 0..=4);
    // `now` sometimes sits one millisecond either side of a slot, where expiries bite.
    let now = (0i64..15, -1i64..=1).prop_map(|(n, off)| slot_time(n).plus_millis(off));
    (vec(purchase, 1..=3), manual, now).prop_map(|(purchases, manual, now)| {
        let mut facts = Vec::new();
        let mut specs = Vec::new();
        for (i, (product, store, events)) in purchases.into_iter().enumerate() {
            specs.push(PurchaseSpec {
                product: pid(product),
                store,
            });
            for (j, (kind, occurred_at)) in events.into_iter().enumerate() {
                facts.push(Fact::Store {
                    purchase: i,
                    event: StoreEvent {
                        dedupe_key: format!("{}-e{j}", purchase_id(i)),
                        occurred_at,
                        kind,
                    },
                });
            }
        }
        for (j, (action, at)) in manual.into_iter().enumerate() {
            facts.push(Fact::Manual(ManualFact {
                id: format!("m{j}"),
                at,
                action,
                reason: "property test".into(),
            }));
        }
        Scenario {
            purchases: specs,
            facts,
            now,
        }
    })
}

/// An arrival order: every fact at least once, some more than once, shuffled.
fn arrival(n: usize) -> impl Strategy<Value = Vec<usize>> {
    vec(0..n, 0..=4)
        .prop_map(move |extra| (0..n).chain(extra).collect::<Vec<_>>())
        .prop_shuffle()
}

#[derive(Debug, Clone)]
struct Case {
    scenario: Scenario,
    order_a: Vec<usize>,
    order_b: Vec<usize>,
    order_c: Vec<usize>,
    /// Spends during run A: after which arrival step, how many coins.
    spends: Vec<(prop::sample::Index, i64)>,
    /// How many slots before `now` the clock of run C starts.
    clock_span: i64,
}

fn case() -> impl Strategy<Value = Case> {
    scenario().prop_flat_map(|scenario| {
        let n = scenario.facts.len();
        (
            arrival(n),
            arrival(n),
            arrival(n),
            vec((any::<prop::sample::Index>(), 1i64..=150), 0..=2),
            0i64..=14,
        )
            .prop_map(
                move |(order_a, order_b, order_c, spends, clock_span)| Case {
                    scenario: scenario.clone(),
                    order_a,
                    order_b,
                    order_c,
                    spends,
                    clock_span,
                },
            )
    })
}

// ---------------------------------------------------------------------------------------------------
// Building the facts a customer has.

/// Adds one fact to `facts` the way the facts table would hold it: a purchase lineage appears with its
/// first fact, and a duplicate is appended as it arrived (the core must dedupe it).
fn push(facts: &mut CustomerFacts, scenario: &Scenario, fact: &Fact) {
    match fact {
        Fact::Store { purchase, event } => {
            let id = purchase_id(*purchase);
            match facts.purchases.iter_mut().find(|p| p.id == id) {
                Some(p) => p.events.push(event.clone()),
                None => {
                    let spec = &scenario.purchases[*purchase];
                    facts.purchases.push(PurchaseFacts {
                        id: id.clone(),
                        store: spec.store,
                        product_id: spec.product.clone(),
                        store_transaction_id: format!("store-{id}"),
                        environment: None,
                        terms: None,
                        settled: None,
                        events: vec![event.clone()],
                    });
                }
            }
        }
        Fact::Manual(m) => facts.manual.push(m.clone()),
    }
}

/// The facts of `indices` as a set, in one fixed order of its own (purchases and manual facts by id,
/// events by dedupe key), with no duplicates.
fn canonical(scenario: &Scenario, indices: &BTreeSet<usize>) -> CustomerFacts {
    let mut facts = CustomerFacts::default();
    for &i in indices {
        push(&mut facts, scenario, &scenario.facts[i]);
    }
    facts.purchases.sort_by(|a, b| a.id.cmp(&b.id));
    for p in &mut facts.purchases {
        p.events.sort_by(|a, b| a.dedupe_key.cmp(&b.dedupe_key));
    }
    facts.manual.sort_by(|a, b| a.id.cmp(&b.id));
    facts
}

// ---------------------------------------------------------------------------------------------------
// Feeding facts one at a time.

type Ledger = BTreeMap<(LedgerSource, Currency), i64>;

/// What one run through an arrival order leaves behind.
#[derive(Debug)]
struct Run {
    state: CustomerState,
    /// The sum of every `LedgerEntry` emitted, per source and currency.
    ledger: Ledger,
    balances: BTreeMap<Currency, i64>,
    spent: BTreeMap<Currency, i64>,
    /// What a downstream that hears only the outbound entitlement events believes.
    downstream: BTreeMap<EntitlementId, bool>,
}

fn nonzero(ledger: &Ledger) -> Ledger {
    ledger
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn access(state: &CustomerState) -> BTreeMap<EntitlementId, bool> {
    state
        .entitlements
        .iter()
        .map(|(id, e)| (id.clone(), e.status.has_access()))
        .collect()
}

/// Only the entitlements a downstream believes are open.
fn open(view: &BTreeMap<EntitlementId, bool>) -> BTreeSet<EntitlementId> {
    view.iter()
        .filter(|(_, has)| **has)
        .map(|(id, _)| id.clone())
        .collect()
}

fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// Checks that `effects` are exactly the step from `before` to `after` and applies them to the
/// downstream view, the balances and the ledger sums.
fn check_step(
    before: &CustomerState,
    after: &CustomerState,
    effects: &[Effect],
    balances: &mut BTreeMap<Currency, i64>,
    ledger: &mut Ledger,
    downstream: &mut BTreeMap<EntitlementId, bool>,
) -> Result<(), TestCaseError> {
    // Nothing a fact once established disappears from the state.
    for id in before.purchases.keys() {
        prop_assert!(after.purchases.contains_key(id), "purchase {id} vanished");
    }
    for id in before.entitlements.keys() {
        prop_assert!(
            after.entitlements.contains_key(id),
            "entitlement {id} vanished"
        );
    }

    let mut purchases_told = BTreeSet::new();
    let mut entitlements_told = BTreeSet::new();
    let mut moved: BTreeMap<Currency, i64> = BTreeMap::new();
    let mut balance_changes = BTreeMap::new();
    let mut negatives = BTreeMap::new();
    for e in effects {
        match e {
            Effect::PurchasePending { purchase }
            | Effect::PurchaseRefunded { purchase }
            | Effect::PurchaseUpdated { purchase, .. } => {
                prop_assert_eq!(Some(purchase), after.purchases.get(&purchase.id));
                prop_assert!(purchases_told.insert(purchase.id.clone()));
                let was = before.purchases.get(&purchase.id).map(|p| p.status);
                match e {
                    Effect::PurchasePending { .. } => {
                        prop_assert_eq!(purchase.status, PurchaseStatus::Pending)
                    }
                    Effect::PurchaseRefunded { .. } => {
                        prop_assert_eq!(purchase.status, PurchaseStatus::Refunded)
                    }
                    Effect::PurchaseUpdated { previous, .. } => prop_assert_eq!(*previous, was),
                    _ => unreachable!(),
                }
            }
            Effect::EntitlementGranted { entitlement }
            | Effect::EntitlementRenewed { entitlement, .. }
            | Effect::EntitlementRevoked { entitlement }
            | Effect::EntitlementExpired { entitlement }
            | Effect::EntitlementUpdated { entitlement, .. } => {
                let id = &entitlement.id;
                prop_assert_eq!(Some(entitlement), after.entitlements.get(id));
                prop_assert!(entitlements_told.insert(id.clone()));
                let had = downstream.get(id).copied().unwrap_or(false);
                let has = entitlement.status.has_access();
                match e {
                    Effect::EntitlementGranted { .. } => {
                        prop_assert!(!had && has, "granted twice: {:?}", entitlement);
                        downstream.insert(id.clone(), true);
                    }
                    Effect::EntitlementRenewed {
                        previous_expires_at,
                        ..
                    } => {
                        prop_assert!(had && has, "renewed without access: {:?}", entitlement);
                        prop_assert_eq!(*previous_expires_at, before.entitlements[id].expires_at);
                        prop_assert!(later(entitlement.expires_at, *previous_expires_at));
                    }
                    Effect::EntitlementRevoked { .. } | Effect::EntitlementExpired { .. } => {
                        prop_assert!(had && !has, "closed without access: {:?}", entitlement);
                        let expiry = matches!(
                            entitlement.status,
                            EntitlementStatus::Expired | EntitlementStatus::BillingRetry
                        );
                        prop_assert_eq!(matches!(e, Effect::EntitlementExpired { .. }), expiry);
                        downstream.insert(id.clone(), false);
                    }
                    Effect::EntitlementUpdated { previous, .. } => {
                        prop_assert_eq!(had, has, "access changed silently: {:?}", entitlement);
                        prop_assert_eq!(*previous, before.entitlements.get(id).map(|v| v.status));
                    }
                    _ => unreachable!(),
                }
            }
            Effect::LedgerEntry {
                source,
                currency,
                amount,
            } => {
                let key = (source.clone(), currency.clone());
                prop_assert_ne!(*amount, 0);
                let delta = after.ledger.get(&key).copied().unwrap_or(0)
                    - before.ledger.get(&key).copied().unwrap_or(0);
                prop_assert_eq!(*amount, delta);
                *ledger.entry(key).or_default() += amount;
                *moved.entry(currency.clone()).or_default() += amount;
            }
            Effect::BalanceChanged {
                currency,
                previous,
                balance,
            } => {
                prop_assert!(
                    balance_changes
                        .insert(currency.clone(), (*previous, *balance))
                        .is_none()
                );
            }
            Effect::BalanceNegative { currency, balance } => {
                prop_assert!(negatives.insert(currency.clone(), *balance).is_none());
            }
        }
    }

    // Every change is told, once; nothing unchanged is.
    let changed_purchases: BTreeSet<String> = after
        .purchases
        .iter()
        .filter(|(id, v)| before.purchases.get(*id) != Some(*v))
        .map(|(id, _)| id.clone())
        .collect();
    prop_assert_eq!(purchases_told, changed_purchases);
    let changed_entitlements: BTreeSet<EntitlementId> = after
        .entitlements
        .iter()
        .filter(|(id, v)| before.entitlements.get(*id) != Some(*v))
        .map(|(id, _)| id.clone())
        .collect();
    prop_assert_eq!(entitlements_told, changed_entitlements);

    // Balances move by exactly the ledger entries, from the recorded balance.
    let moved: BTreeMap<Currency, i64> = moved.into_iter().filter(|(_, d)| *d != 0).collect();
    prop_assert_eq!(
        balance_changes.keys().collect::<Vec<_>>(),
        moved.keys().collect::<Vec<_>>()
    );
    for (currency, delta) in &moved {
        let recorded = balances.get(currency).copied().unwrap_or(0);
        let (previous, balance) = balance_changes[currency];
        prop_assert_eq!(previous, recorded);
        prop_assert_eq!(balance, recorded + delta);
        let negative = (*delta < 0 && balance < 0).then_some(balance);
        prop_assert_eq!(negatives.get(currency).copied(), negative);
        balances.insert(currency.clone(), balance);
    }
    prop_assert!(negatives.keys().all(|c| moved.contains_key(c)));

    // The downstream now believes exactly what the state says.
    prop_assert_eq!(open(downstream), open(&access(after)));
    Ok(())
}

/// Feeds `order` to the core one fact at a time, the clock reading `now_at(step)`.
fn run(
    scenario: &Scenario,
    catalog: &Catalog,
    order: &[usize],
    now_at: impl Fn(usize) -> Timestamp,
    spends: &BTreeMap<usize, i64>,
) -> Result<Run, TestCaseError> {
    let coins = Currency::parse("COINS").unwrap();
    let mut facts = CustomerFacts::default();
    let mut seen = BTreeSet::new();
    let mut state = CustomerState::default();
    let mut out = Run {
        state: CustomerState::default(),
        ledger: Ledger::new(),
        balances: BTreeMap::new(),
        spent: BTreeMap::new(),
        downstream: BTreeMap::new(),
    };
    for (step, &i) in order.iter().enumerate() {
        let now = now_at(step);
        // What the clock alone would make of the facts known before this one.
        let clock_only = derive(&facts, catalog, now);
        let duplicate = !seen.insert(i);
        push(&mut facts, scenario, &scenario.facts[i]);

        let after = derive(&facts, catalog, now);
        // The state is a function of the set of facts: arrival order and duplicates do not enter.
        prop_assert_eq!(&after, &derive(&canonical(scenario, &seen), catalog, now));
        let effects = diff(&state, &after, &out.balances);
        if duplicate {
            prop_assert_eq!(&after, &clock_only, "a replay changed the state");
            prop_assert_eq!(&effects, &diff(&state, &clock_only, &out.balances));
            if clock_only == state {
                prop_assert!(effects.is_empty(), "a replay emitted {:?}", effects);
            }
        }
        check_step(
            &state,
            &after,
            &effects,
            &mut out.balances,
            &mut out.ledger,
            &mut out.downstream,
        )?;
        state = after;

        if let Some(&amount) = spends.get(&step) {
            *out.balances.entry(coins.clone()).or_default() -= amount;
            *out.spent.entry(coins.clone()).or_default() += amount;
        }
    }
    out.state = state;
    Ok(out)
}

fn check(case: Case) -> Result<(), TestCaseError> {
    let catalog = catalog();
    let s = &case.scenario;
    let now = s.now;
    let all: BTreeSet<usize> = (0..s.facts.len()).collect();
    let expected = derive(&canonical(s, &all), &catalog, now);

    let spends: BTreeMap<usize, i64> = case
        .spends
        .iter()
        .map(|(at, amount)| (at.index(case.order_a.len()), *amount))
        .collect();
    let a = run(s, &catalog, &case.order_a, |_| now, &spends)?;
    let b = run(s, &catalog, &case.order_b, |_| now, &BTreeMap::new())?;

    // Invariant 4: every order converges on the state of the set of facts.
    prop_assert_eq!(&a.state, &expected);
    prop_assert_eq!(&b.state, &expected);

    // The ledger telescopes: the entries emitted on the way add up to the final positions.
    prop_assert_eq!(nonzero(&a.ledger), nonzero(&expected.ledger));
    prop_assert_eq!(nonzero(&b.ledger), nonzero(&expected.ledger));

    // Balances are the final positions, less what was spent.
    let mut positions: BTreeMap<Currency, i64> = BTreeMap::new();
    for ((_, currency), amount) in &expected.ledger {
        *positions.entry(currency.clone()).or_default() += amount;
    }
    for (currency, position) in &positions {
        let spent = a.spent.get(currency).copied().unwrap_or(0);
        prop_assert_eq!(
            a.balances.get(currency).copied().unwrap_or(0),
            position - spent
        );
        prop_assert_eq!(b.balances.get(currency).copied().unwrap_or(0), *position);
    }
    prop_assert!(
        b.balances.keys().all(|c| positions.contains_key(c)),
        "a balance moved in a currency no source holds: {:?}",
        b.balances
    );

    // A downstream hearing only the outbound events ends with the right access.
    let final_access = open(&access(&expected));
    prop_assert_eq!(open(&a.downstream), final_access.clone());
    prop_assert_eq!(open(&b.downstream), final_access.clone());

    // Invariant 3: once everything is known, replaying any fact changes nothing.
    let mut known = CustomerFacts::default();
    for &i in &case.order_a {
        push(&mut known, s, &s.facts[i]);
    }
    for fact in &s.facts {
        let mut again = known.clone();
        push(&mut again, s, fact);
        let replayed = derive(&again, &catalog, now);
        prop_assert_eq!(&replayed, &a.state);
        prop_assert_eq!(diff(&a.state, &replayed, &a.balances), vec![]);
    }

    // Everything in one step nets out the same as one fact at a time.
    let mut one = Ledger::new();
    let mut one_downstream = BTreeMap::new();
    let mut one_balances = BTreeMap::new();
    let effects = diff(&CustomerState::default(), &expected, &BTreeMap::new());
    check_step(
        &CustomerState::default(),
        &expected,
        &effects,
        &mut one_balances,
        &mut one,
        &mut one_downstream,
    )?;
    prop_assert_eq!(nonzero(&one), nonzero(&a.ledger));
    prop_assert_eq!(open(&one_downstream), open(&a.downstream));
    prop_assert_eq!(
        one_balances
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .collect::<Vec<_>>(),
        b.balances
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .collect::<Vec<_>>()
    );

    // The expiry job sleeps until `next_change_after`: before it, the clock alone changes nothing.
    let horizon = expected.next_change_after(now).unwrap_or(slot_time(1000));
    prop_assert!(horizon > now);
    for t in [
        now.plus_millis(1),
        Timestamp::from_millis(now.millis() + (horizon.millis() - now.millis()) / 2),
        horizon.plus_millis(-1),
    ] {
        if t > now && t < horizon {
            prop_assert_eq!(
                &derive(&canonical(s, &all), &catalog, t),
                &expected,
                "the state changed at {:?}, before next_change_after {:?}",
                t,
                horizon
            );
        }
    }

    // With a clock that moves forward while facts arrive, the end is the same state, and the
    // downstream was kept in step all along (checked at every step by `run`).
    let start = now.plus_millis(-case.clock_span * SLOT);
    let steps = case.order_c.len() as i64;
    let c = run(
        s,
        &catalog,
        &case.order_c,
        |step| {
            let step = step as i64 + 1;
            start.plus_millis((now.millis() - start.millis()) * step / steps)
        },
        &BTreeMap::new(),
    )?;
    prop_assert_eq!(&c.state, &expected);
    prop_assert_eq!(nonzero(&c.ledger), nonzero(&expected.ledger));
    prop_assert_eq!(open(&c.downstream), final_access);
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        // PROPTEST_CASES=100000 for a longer search.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    })]

    #[test]
    fn any_order_and_any_replay_converge_and_effects_add_up(case in case()) {
        check(case)?;
    }
}

/// The same check on one hand-written customer, so that a regression shows as a readable story too:
/// a course refunded before its purchase arrives, coins bought and refunded, a subscription renewed,
/// a manual grant and a revoke.
#[test]
fn a_hand_written_customer_converges_in_every_rotation() {
    let ev = |key: &str, n: i64, kind: EventKind| StoreEvent {
        dedupe_key: key.into(),
        occurred_at: slot_time(n),
        kind,
    };
    let bought = |expires_at: Option<Timestamp>| EventKind::Purchased {
        expires_at,
        quantity: 1,
    };
    let store = |purchase, event| Fact::Store { purchase, event };
    let manual = |id: &str, n: i64, action| {
        Fact::Manual(ManualFact {
            id: id.into(),
            at: slot_time(n),
            action,
            reason: "story".into(),
        })
    };
    let scenario = Scenario {
        purchases: vec![
            PurchaseSpec {
                product: pid(COURSE),
                store: Store::AppStore,
            },
            PurchaseSpec {
                product: pid(COINS_100),
                store: Store::PlayStore,
            },
            PurchaseSpec {
                product: pid(PLUS),
                store: Store::Stripe,
            },
        ],
        facts: vec![
            store(0, ev("p0-buy", 0, bought(None))),
            store(0, ev("p0-refund", 2, EventKind::Refunded)),
            store(1, ev("p1-buy", 1, bought(None))),
            store(1, ev("p1-refund", 3, EventKind::Refunded)),
            store(2, ev("p2-buy", 0, bought(Some(slot_time(6))))),
            store(
                2,
                ev(
                    "p2-renew",
                    6,
                    EventKind::Renewed {
                        expires_at: slot_time(12),
                    },
                ),
            ),
            manual(
                "m0",
                1,
                ManualAction::GrantEntitlement {
                    entitlement_id: eid("bonus"),
                    expires_at: None,
                },
            ),
            manual(
                "m1",
                2,
                ManualAction::Revoke {
                    entitlement_id: eid("bonus"),
                },
            ),
        ],
        now: slot_time(8),
    };
    let n = scenario.facts.len();
    for r in 0..n {
        let order: Vec<usize> = (0..n)
            .map(|i| (i + r) % n)
            .chain([r, (r + 3) % n])
            .collect();
        let reversed: Vec<usize> = order.iter().rev().copied().collect();
        check(Case {
            scenario: scenario.clone(),
            order_a: order.clone(),
            order_b: reversed,
            order_c: order,
            spends: vec![],
            clock_span: 8,
        })
        .unwrap();
    }
    let state = derive(
        &canonical(&scenario, &(0..n).collect()),
        &catalog(),
        scenario.now,
    );
    let status = |id: &str| state.entitlements[&eid(id)].status;
    assert_eq!(status(COURSE_KEY), EntitlementStatus::Refunded);
    assert_eq!(status("plus"), EntitlementStatus::Active);
    assert_eq!(status("bonus"), EntitlementStatus::Revoked);
    assert_eq!(
        state.entitlements[&eid("plus")].expires_at,
        Some(slot_time(12))
    );
    assert_eq!(
        state.ledger[&(
            LedgerSource::Purchase("p1".into()),
            Currency::parse("COINS").unwrap()
        )],
        0
    );
}

/// One purchase's facts, split into those a summary was kept of (in any number of steps, as decisions
/// keep it) and those that come after, some of them older than the summary's latest renewal.
fn summarized() -> impl Strategy<Value = (Vec<StoreEvent>, Vec<usize>, usize, Timestamp)> {
    (
        vec((slot(), event_kind()), 1..14),
        0usize..14,
        (0i64..14).prop_map(slot_time),
    )
        .prop_flat_map(|(events, kept, now)| {
            let events: Vec<StoreEvent> = events
                .into_iter()
                .enumerate()
                .map(|(i, (occurred_at, kind))| StoreEvent {
                    dedupe_key: format!("e{i}"),
                    occurred_at,
                    kind,
                })
                .collect();
            let n = events.len();
            (Just(events), arrival(n), Just(kept.min(n)), Just(now))
        })
}

proptest! {
    #![proptest_config(Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    })]

    /// The fold from a kept summary, over the facts since its latest renewal and those that came
    /// later, is the fold over every fact: what lets a decision read a bounded number of facts.
    #[test]
    fn a_fold_from_a_summary_is_the_fold_of_every_fact(
        (events, order, kept, now) in summarized(),
        kind in prop_oneof![Just(ProductKind::Subscription), Just(ProductKind::NonConsumable)],
    ) {
        let arrived: Vec<StoreEvent> = order.iter().map(|&i| events[i].clone()).collect();
        let (earlier, later) = arrived.split_at(kept);
        let mut settled = gateway_core::Settled::default();
        for e in earlier {
            settled.absorb(e);
        }
        let from = settled.read_from();
        let mut read: Vec<StoreEvent> = earlier
            .iter()
            .filter(|e| from.is_none_or(|t| e.occurred_at >= t))
            .cloned()
            .collect();
        read.extend(later.iter().cloned());
        let all = gateway_core::purchase::fold_with_terms(&events, Some(kind), None, now);
        let summarized =
            gateway_core::purchase::fold_from(Some(&settled), &read, Some(kind), None, now);
        prop_assert_eq!(summarized, all);
    }
}
