//! The decision pipeline with store facts, below HTTP (store adapters feed it the same way): one
//! transaction per decision, idempotence, order independence, the ledger and the audit chain.

use gateway::service::decision::{self, Input};
use gateway_core::{AppId, AppUserId, EventKind, PurchaseFacts, StoreEvent, Timestamp, ids::Store};
use serde_json::json;

use crate::{both, helpers::*};

fn ids() -> (AppId, AppUserId) {
    ("acme".parse().unwrap(), "u1".parse().unwrap())
}

fn purchase(product: &str, lineage: &str, events: Vec<StoreEvent>) -> PurchaseFacts {
    PurchaseFacts {
        id: format!("pur_{lineage}"),
        store: Store::AppStore,
        product_id: product.parse().unwrap(),
        store_transaction_id: lineage.into(),
        environment: Some("Sandbox".into()),
        terms: None,
        settled: None,
        events,
    }
}

fn ev(key: &str, at: Timestamp, kind: EventKind) -> StoreEvent {
    StoreEvent {
        dedupe_key: key.into(),
        occurred_at: at,
        kind,
    }
}

fn input(key: &str, p: PurchaseFacts) -> Input {
    Input {
        source: "app_store",
        dedupe_key: key.into(),
        raw: json!({"notification": key}).to_string(),
        cause: format!("App Store said {key}"),
        actor: "app_store".into(),
        manual: vec![],
        request_key: None,
        purchases: vec![p],
        transfer: false,
        remark: None,
        owed: Vec::new(),
    }
}

fn bought(at: Timestamp) -> EventKind {
    let _ = at;
    EventKind::Purchased {
        expires_at: None,
        quantity: 1,
    }
}

both!(
    a_refund_that_arrives_first_still_wins_and_replays_change_nothing,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let (a, u) = ids();
        let t = t0();
        let refund = purchase(
            "cs101",
            "1000",
            vec![ev("n-refund", t.plus_millis(60_000), EventKind::Refunded)],
        );
        let out = decision::apply(
            &app.cx,
            &a,
            &u,
            input("n-refund", refund.clone()),
            t.plus_millis(120_000),
        )
        .await
        .unwrap();
        assert!(!out.duplicate);
        assert!(
            out.effects
                .iter()
                .all(|e| e.outbound_event() != Some("entitlement.granted"))
        );
        let buy = purchase("cs101", "1000", vec![ev("n-buy", t, bought(t))]);
        let out = decision::apply(
            &app.cx,
            &a,
            &u,
            input("n-buy", buy.clone()),
            t.plus_millis(130_000),
        )
        .await
        .unwrap();
        assert!(
            out.effects
                .iter()
                .all(|e| e.outbound_event() != Some("entitlement.granted")),
            "{:?}",
            out.effects
        );
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["purchases"][0]["status"], "refunded");
        assert_eq!(snap["entitlements"][0]["status"], "refunded");

        let counts = app.counts().await;
        let again = decision::apply(&app.cx, &a, &u, input("n-buy", buy), t.plus_millis(140_000))
            .await
            .unwrap();
        assert!(again.duplicate && again.effects.is_empty());
        // The same fact inside another input is a duplicate too.
        let again = decision::apply(
            &app.cx,
            &a,
            &u,
            input("n-other", refund),
            t.plus_millis(150_000),
        )
        .await
        .unwrap();
        assert!(again.duplicate);
        // A replay writes nothing at all: its fact is already kept with the first input's raw body.
        let after = app.counts().await;
        assert_eq!(after, counts);
    }
);

both!(
    purchase_refund_reversal_story_with_outbox_and_chain,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let (a, u) = ids();
        let t = t0();
        let steps = [
            ("n1", ev("n1", t, bought(t)), "entitlement.granted"),
            (
                "n2",
                ev("n2", t.plus_millis(1000), EventKind::Refunded),
                "entitlement.revoked",
            ),
            (
                "n3",
                ev("n3", t.plus_millis(2000), EventKind::RefundReversed),
                "entitlement.granted",
            ),
        ];
        for (key, e, expected) in steps {
            let out = decision::apply(
                &app.cx,
                &a,
                &u,
                input(key, purchase("cs101", "2000", vec![e])),
                t.plus_millis(5000),
            )
            .await
            .unwrap();
            let events: Vec<_> = out
                .effects
                .iter()
                .filter_map(|e| e.outbound_event())
                .collect();
            assert!(events.contains(&expected), "{key}: {events:?}");
        }
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["entitlements"][0]["status"], "active");
        assert_eq!(snap["version"], 3);
        let outbox = gateway::db::outbox::for_customer(&app.db, &a, &u)
            .await
            .unwrap();
        let types: Vec<&str> = outbox.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            vec![
                "entitlement.granted",
                "purchase.refunded",
                "entitlement.revoked",
                "entitlement.granted"
            ]
        );
        assert_eq!(
            outbox.iter().map(|e| e.customer_seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );

        assert_eq!(
            gateway::db::audit::verify(&app.db, &a, &u).await.unwrap(),
            Ok(())
        );
        sqlx::query("UPDATE audit_log SET detail = '{\"forged\":true}' WHERE seq = 2")
            .execute(app.db.writer())
            .await
            .unwrap();
        assert_eq!(
            gateway::db::audit::verify(&app.db, &a, &u).await.unwrap(),
            Err(2),
            "tampering shows"
        );
    }
);

both!(
    consumable_refund_claws_back_below_zero,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let (a, u) = ids();
        let t = t0();
        let buy = purchase(
            "coins100",
            "3000",
            vec![ev(
                "c1",
                t,
                EventKind::Purchased {
                    expires_at: None,
                    quantity: 2,
                },
            )],
        );
        decision::apply(&app.cx, &a, &u, input("c1", buy), t)
            .await
            .unwrap();
        assert_eq!(
            app.get("/v1/apps/acme/customers/u1").await.expect(200)["balances"]["COINS"],
            200
        );
        app.request(
            reqwest::Method::POST,
            "/v1/apps/acme/customers/u1/balances/COINS/spend",
            Some(ADMIN_KEY),
            Some(json!({"amount": 150, "reason": "spent"})),
            &[("idempotency-key", "s1")],
        )
        .await
        .expect(200);
        let refund = purchase(
            "coins100",
            "3000",
            vec![ev("c2", t.plus_millis(10), EventKind::Refunded)],
        );
        decision::apply(&app.cx, &a, &u, input("c2", refund), t.plus_millis(20))
            .await
            .unwrap();
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["balances"]["COINS"], -150);
        let timeline = app
            .get("/v1/apps/acme/customers/u1/timeline")
            .await
            .expect(200);
        assert_eq!(timeline["events"][0]["kind"], "balance.negative");
        assert_eq!(timeline["events"][0]["detail"]["balance"], -150);
    }
);

both!(subscription_renews_and_expires, |app: TestApp| async move {
    app.seed_catalog("acme").await;
    let (a, u) = ids();
    let t = t0();
    let month = 30 * 86_400_000;
    let buy = purchase(
        "premium",
        "4000",
        vec![ev(
            "s1",
            t,
            EventKind::Purchased {
                expires_at: Some(t.plus_millis(month)),
                quantity: 1,
            },
        )],
    );
    decision::apply(&app.cx, &a, &u, input("s1", buy), t)
        .await
        .unwrap();
    let renew = purchase(
        "premium",
        "4000",
        vec![ev(
            "s2",
            t.plus_millis(month),
            EventKind::Renewed {
                expires_at: t.plus_millis(2 * month),
            },
        )],
    );
    let out = decision::apply(
        &app.cx,
        &a,
        &u,
        input("s2", renew),
        t.plus_millis(month - 1000),
    )
    .await
    .unwrap();
    assert!(
        out.effects
            .iter()
            .any(|e| e.outbound_event() == Some("entitlement.renewed"))
    );
    app.clock.set(t.plus_millis(2 * month - 1));
    let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
    assert_eq!(
        snap["entitlements"][0]["expires_at"],
        t.plus_millis(2 * month).to_rfc3339()
    );
    assert_eq!(snap["entitlements"][0]["status"], "active");
    app.clock.set(t.plus_millis(2 * month));
    let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
    assert_eq!(snap["entitlements"][0]["status"], "expired");
    assert_eq!(snap["purchases"][0]["status"], "expired");
});

both!(
    a_refused_decision_writes_nothing,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let (a, u) = ids();
        let t = t0();
        decision::apply(
            &app.cx,
            &a,
            &u,
            input(
                "p1",
                purchase("cs101", "5000", vec![ev("p1", t, bought(t))]),
            ),
            t,
        )
        .await
        .unwrap();
        let before = app.counts().await;
        let thief: AppUserId = "u2".parse().unwrap();
        let err = decision::apply(
            &app.cx,
            &a,
            &thief,
            input(
                "p2",
                purchase(
                    "cs101",
                    "5000",
                    vec![ev(
                        "p2",
                        t.plus_millis(5),
                        EventKind::Renewed {
                            expires_at: t.plus_millis(9),
                        },
                    )],
                ),
            ),
            t,
        )
        .await;
        assert!(err.is_err());
        assert_eq!(
            app.counts().await,
            before,
            "not even the customer row or the raw input"
        );
    }
);

both!(
    concurrent_decisions_share_commits_and_each_stays_exact,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let a: AppId = "acme".parse().unwrap();
        let t = t0();
        // 8 customers, 6 coin purchases each, all in flight at once: they are group-committed, and
        // inputs for one customer never share a batch.
        let mut tasks = Vec::new();
        for c in 0..8 {
            for n in 0..6 {
                let cx = app.cx.clone();
                let a = a.clone();
                let u: AppUserId = format!("c{c}").parse().unwrap();
                let lineage = format!("coins-{c}-{n}");
                let p = purchase(
                    "coins100",
                    &lineage,
                    vec![ev(&format!("{lineage}:buy"), t, bought(t))],
                );
                tasks.push(tokio::spawn(async move {
                    decision::apply(&cx, &a, &u, input(&lineage, p), t.plus_millis(1))
                        .await
                        .map(|o| o.duplicate)
                }));
            }
        }
        // A lineage that customer c0 holds, claimed by another customer in the same wave: refused
        // alone, without failing anyone else's decision.
        let thief = {
            let cx = app.cx.clone();
            let a = a.clone();
            let u: AppUserId = "thief".parse().unwrap();
            let p = purchase(
                "coins100",
                "coins-0-0",
                vec![ev("coins-0-0:other", t, bought(t))],
            );
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                decision::apply(&cx, &a, &u, input("thief-claim", p), t.plus_millis(2)).await
            })
        };
        for task in tasks {
            assert!(
                !task.await.unwrap().unwrap(),
                "a fresh input is decided, not a replay"
            );
        }
        let err = thief.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("another customer"), "{err}");

        for c in 0..8 {
            let u: AppUserId = format!("c{c}").parse().unwrap();
            let snap = app
                .get(&format!("/v1/apps/acme/customers/c{c}"))
                .await
                .expect(200);
            assert_eq!(snap["balances"]["COINS"], 600, "{snap}");
            assert_eq!(snap["version"], 6, "one version per decision: {snap}");
            let seqs: Vec<i64> = app
                .outbox(&format!("c{c}"))
                .await
                .iter()
                .map(|e| e.customer_seq)
                .collect();
            assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "outbox order of c{c}");
            assert_eq!(
                gateway::db::audit::verify(&app.db, &a, &u).await.unwrap(),
                Ok(())
            );
        }
        assert_eq!(app.count("inbound").await, 48);
        assert_eq!(app.count("purchases").await, 48);
        assert_eq!(
            app.count("customers").await,
            8,
            "the refused claim wrote nothing, not even its customer"
        );
    }
);

both!(
    a_batch_that_fails_decides_its_inputs_one_by_one,
    |app: TestApp| async move {
        // PostgreSQL refuses a NUL character in text, which fails the whole batch the input is in;
        // the batch's other inputs are then decided one by one, and only that input is refused.
        // SQLite stores the character, so there every input is decided.
        app.seed_catalog("acme").await;
        let a: AppId = "acme".parse().unwrap();
        let t = t0();
        let mut tasks = Vec::new();
        for c in 0..12 {
            let cx = app.cx.clone();
            let a = a.clone();
            let u: AppUserId = format!("b{c}").parse().unwrap();
            let lineage = format!("batch-{c}");
            let p = purchase(
                "cs101",
                &lineage,
                vec![ev(&format!("{lineage}:buy"), t, bought(t))],
            );
            let mut input = input(&lineage, p);
            if c == 5 {
                input.raw = "{\"note\": \"a NUL \u{0} inside\"}".into();
            }
            tasks.push(tokio::spawn(async move {
                decision::apply(&cx, &a, &u, input, t.plus_millis(1)).await
            }));
        }
        for (c, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            if c == 5 && app.backend == Backend::Postgres {
                assert!(result.is_err(), "the NUL input is refused on PostgreSQL");
            } else {
                assert!(!result.unwrap().duplicate, "input {c} is decided");
            }
        }
        for c in 0..12 {
            let snap = app
                .get(&format!("/v1/apps/acme/customers/b{c}"))
                .await
                .expect(200);
            let expected = if c == 5 && app.backend == Backend::Postgres {
                0
            } else {
                1
            };
            assert_eq!(snap["version"], expected, "b{c}: {snap}");
        }
    }
);

both!(
    a_decision_reads_the_facts_since_the_latest_renewal_not_the_whole_lineage,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let (a, u) = ids();
        let t = t0();
        let day = 86_400_000;
        let at = |d: i64| t.plus_millis(d * day);
        let renewal = |n: i64| {
            ev(
                &format!("renew-{n}"),
                at(30 * n),
                EventKind::Renewed {
                    expires_at: at(30 * (n + 1)),
                },
            )
        };
        let first = vec![ev("buy", at(0), bought(at(0))), renewal(0)];
        decision::apply(
            &app.cx,
            &a,
            &u,
            input("n-0", purchase("premium", "9100", first)),
            t,
        )
        .await
        .unwrap();
        for n in 1..=100 {
            let facts = purchase("premium", "9100", vec![renewal(n)]);
            decision::apply(&app.cx, &a, &u, input(&format!("n-{n}"), facts), at(30 * n))
                .await
                .unwrap();
        }
        // A fact about an old period arrives late: it is taken into the summary all the same.
        let late = ev(
            "auto-off",
            at(15),
            EventKind::AutoRenewChanged { enabled: false },
        );
        let outcome = decision::apply(
            &app.cx,
            &a,
            &u,
            input("late", purchase("premium", "9100", vec![late])),
            at(3_001),
        )
        .await
        .unwrap();
        let view = outcome.state.purchases.values().next().unwrap();
        assert_eq!(view.expires_at, Some(at(30 * 101)));
        assert_eq!(view.auto_renew, Some(false));

        let mut conn = app.db.writer().acquire().await.unwrap();
        let loaded = gateway::db::batch::load(&mut conn, &[(a.to_string(), u.to_string())])
            .await
            .unwrap();
        let facts = &loaded[&(a.to_string(), u.to_string())].facts.purchases[0];
        assert!(
            facts.events.len() <= 2,
            "a decision reads the facts since the latest renewal, not all 103: {}",
            facts.events.len()
        );
        let settled = facts
            .settled
            .as_ref()
            .expect("a summary of the facts is kept");
        assert_eq!(settled.expires_at, Some(at(30 * 101)));
        assert_eq!(settled.auto_renew.as_ref().map(|(_, on)| *on), Some(false));
        assert_eq!(settled.purchased_at, Some(at(0)));
    }
);
