//! What one decision costs as a subscription's history grows: a renewal decided for a lineage that
//! has renewed 1, 10 or 100 times before, on SQLite (a file, as `serve` runs it). Each decision reads
//! the lineage's facts, folds them, and commits; the cost should not depend on the history.
//!
//! `decide_renewal` is the whole decision, a commit (and its fsync) included; `read_and_fold` is the
//! part that depends on the history: reading the customer's facts and folding them, with no write.
//!
//! `cargo bench -p gateway --bench decision_history`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway::{
    db::Db,
    service::{self, apps, catalog, decision},
};
use gateway_core::{AppId, AppUserId, PurchaseFacts, Timestamp};
use serde_json::json;

const DAY: i64 = 86_400_000;

fn t0() -> Timestamp {
    Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
}

/// One renewal of `lineage`, period `n`.
fn renewal(lineage: &str, n: i64) -> decision::Input {
    let at = t0().plus_millis(30 * DAY * n);
    // Built from JSON: the facts' shape is the contract here, not the struct literal.
    let facts: PurchaseFacts = serde_json::from_value(json!({
        "id": format!("pur_{lineage}"), "store": "app_store", "product_id": "premium",
        "store_transaction_id": lineage, "environment": "Sandbox",
        "events": [{"dedupe_key": format!("{lineage}:renew:{n}"), "occurred_at": at,
            "kind": {"type": "renewed", "expires_at": at.plus_millis(30 * DAY)}}]
    }))
    .unwrap();
    decision::Input {
        source: "app_store.notification",
        dedupe_key: format!("{lineage}:{n}"),
        raw: json!({"renewal": n}).to_string(),
        cause: "DID_RENEW".into(),
        actor: "app_store".into(),
        manual: Vec::new(),
        request_key: None,
        purchases: vec![facts],
        transfer: false,
        remark: None,
        owed: Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cx = rt.block_on(async {
        let db = Db::connect(&format!("sqlite://{}/bench.db", dir.path().display()))
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let app: apps::NewApp =
            serde_json::from_value(json!({"id": "acme", "name": "Acme"})).unwrap();
        apps::create(&db, app, t0()).await.unwrap();
        let product: gateway_core::Product = serde_json::from_value(json!({"id": "premium", "kind": "subscription",
            "store_skus": {"app_store": "edu.acme.premium"}, "entitlements": [{"id": "premium", "attributes": {}}],
            "consumable": null, "access_duration": null, "expires_at": null, "active": true}))
        .unwrap();
        let cx = service::Context::new(
            db,
            reqwest::Client::new(),
            std::sync::Arc::new(gateway_core::SystemClock),
        );
        catalog::put(&cx, &"acme".parse().unwrap(), product, t0())
            .await
            .unwrap();
        cx
    });
    let app: AppId = "acme".parse().unwrap();
    let mut group = c.benchmark_group("decide_renewal");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(6));
    for history in [1i64, 10, 100] {
        let customer: AppUserId = format!("history-{history}").parse().unwrap();
        let lineage = format!("{}", 500_000 + history);
        rt.block_on(async {
            for n in 0..history {
                decision::apply(&cx, &app, &customer, renewal(&lineage, n), t0())
                    .await
                    .unwrap();
            }
        });
        // Each iteration decides the next renewal: the history grows by the iterations too, which a
        // decision that reads every fact would show as a rising cost within the run.
        let mut n = history;
        group.bench_with_input(BenchmarkId::from_parameter(history), &history, |b, _| {
            b.iter(|| {
                n += 1;
                rt.block_on(decision::apply(
                    &cx,
                    &app,
                    &customer,
                    renewal(&lineage, n),
                    t0(),
                ))
                .unwrap()
            })
        });
    }
    group.finish();

    let product = rt
        .block_on(catalog::get(&cx.db, &app, &"premium".parse().unwrap()))
        .unwrap();
    let products: gateway_core::decide::Catalog = [(product.id.clone(), product)].into();
    let mut group = c.benchmark_group("read_and_fold");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    for history in [1i64, 10, 100] {
        let customer = (app.to_string(), format!("history-{history}"));
        group.bench_with_input(BenchmarkId::from_parameter(history), &history, |b, _| {
            b.iter(|| {
                rt.block_on(async {
                    let mut conn = cx.db.reader().acquire().await.unwrap();
                    let loaded =
                        gateway::db::batch::load(&mut conn, std::slice::from_ref(&customer))
                            .await
                            .unwrap();
                    let facts = &loaded[&customer].facts;
                    gateway_core::decide::derive(facts, &products, t0())
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
