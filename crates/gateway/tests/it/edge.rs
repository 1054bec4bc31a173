//! The edge: what a caller controls never reaches a metric label, a database key or a text column
//! unchecked.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;
use store_sim::apple::chain::{AppleChain, Notification};

use crate::{both, helpers::*};

/// `/metrics`, and its request series that a request with an invented method, or a GET of a path no
/// route takes, can land in.
async fn request_series(app: &TestApp) -> (String, BTreeSet<String>) {
    let text = app
        .request(Method::GET, "/metrics", None, None, &[])
        .await
        .expect(200)
        .as_str()
        .unwrap()
        .to_owned();
    let series = text
        .lines()
        .filter(|l| l.starts_with("gateway_http_"))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .filter(|s| {
            let method = s
                .split_once("method=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or("", |(m, _)| m);
            let standard = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
            !standard.contains(&method) || (s.contains("route=\"unmatched\"") && method == "GET")
        })
        .collect();
    (text, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_and_paths_add_no_metric_series() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let send = |method: String, path: String| {
        let client = app.client.clone();
        let url = format!("{}{path}", app.addr);
        async move {
            client
                .request(Method::from_bytes(method.as_bytes()).unwrap(), url)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // One request of each shape first: the bounded series they land in may be new to this process.
    for i in ["warm-up".to_owned(), "warm-up-2".to_owned()] {
        send(format!("PROBE-{i}"), format!("/probe-{i}/x")).await;
        send(format!("PROBE-{i}"), format!("/v1/apps/probe-{i}")).await;
        send("GET".into(), format!("/probe-{i}/x")).await;
    }
    let (_, before) = request_series(&app).await;
    assert!(!before.is_empty());

    // The metrics registry is the process's, shared with tests running beside this one: only the
    // series these requests can land in are compared.
    for i in 0..1000 {
        let status = match i % 3 {
            0 => send(format!("PROBE{i}"), format!("/probe-{i}/x")).await,
            1 => send(format!("PROBE{i}"), format!("/v1/apps/probe-{i}")).await,
            _ => send("GET".into(), format!("/probe-{i}/x")).await,
        };
        assert!(status.is_client_error(), "{i}: {status}");
    }
    let (text, after) = request_series(&app).await;
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(
        added.is_empty(),
        "invented methods and paths added {} series to /metrics, such as {:?}",
        added.len(),
        &added[..added.len().min(3)]
    );
    for invented in ["PROBE1", "probe-2", "PROBE999"] {
        assert!(
            !text.contains(invented),
            "a label carries {invented:?} from a request"
        );
    }
}

both!(
    nul_and_overlong_ids_in_queries_and_paths_are_refused,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let long = "d".repeat(5000);
        for query in [
            "endpoint_id=we_1%00",
            "app_user_id=u%001",
            "before=dlv_%00",
            &format!("endpoint_id={long}"),
            &format!("app_user_id={long}"),
            &format!("before={long}"),
        ] {
            app.get(&format!("/v1/apps/acme/deliveries?{query}"))
                .await
                .error(400, "invalid_query");
        }
        app.get("/v1/apps/acme/deliveries?app_user_id=u1&endpoint_id=store_acme&before=dlv_1")
            .await
            .expect(200);
        for path in [
            "/v1/apps/acme/deliveries/dlv_%00".to_owned(),
            format!("/v1/apps/acme/deliveries/{long}"),
            "/v1/apps/acme/webhook_endpoints/we_%00".to_owned(),
        ] {
            app.get(&path).await.error(400, "invalid_id");
        }
        app.post("/v1/apps/acme/deliveries/dlv_%00/retry", json!({}))
            .await
            .error(400, "invalid_id");
        app.delete("/v1/apps/acme/keys/key_%00", None)
            .await
            .error(400, "invalid_id");
        app.delete(&format!("/v1/keys/{long}"), None)
            .await
            .error(400, "invalid_id");
        // An order id in a body is an id too.
        app.post(
            "/v1/apps/acme/purchases",
            json!({"app_user_id": "u1", "store": "app_store", "order_id": "ord_\u{7}", "transaction_id": "1"}),
        )
        .await
        .error(400, "invalid_id");
    }
);

both!(
    an_overlong_or_nul_sku_is_refused,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let counts = app.counts().await;
        let long = "s".repeat(5000);
        app.put(
            "/v1/apps/acme/products/big",
            json!({"kind": "non_consumable", "store_skus": {"app_store": long}, "entitlements": [{"id": "big"}]}),
        )
        .await
        .error(400, "invalid_product");
        let csv = format!(
            "product_id,kind,app_store,entitlements\nfine,non_consumable,edu.acme.fine,fine\nlong,non_consumable,{long},long\n"
        );
        let answer = app
            .send_raw(
                Method::POST,
                "/v1/apps/acme/products/import",
                "text/csv",
                csv.into_bytes(),
            )
            .await
            .error(422, "invalid_csv");
        assert_eq!(answer["error"]["details"][0]["line"], 3, "{answer}");
        assert_eq!(answer["error"]["details"].as_array().unwrap().len(), 1);
        assert_eq!(app.counts().await, counts, "a refused SKU changed nothing");
        app.put(
            "/v1/apps/acme/products/max",
            json!({"kind": "non_consumable", "store_skus": {"app_store": "s".repeat(255)}, "entitlements": [{"id": "max"}]}),
        )
        .await
        .expect(201);
    }
);

/// An app whose App Store settings trust the simulator's chain.
async fn apple_app(app: &TestApp) -> AppleChain {
    app.seed_catalog("acme").await;
    let chain = AppleChain::generate().unwrap();
    app.patch("/v1/apps/acme", json!({"app_store": {"bundle_id": "edu.acme.app", "environment": "Sandbox", "root_certificates_pem": [chain.root_pem()]}})).await.expect(200);
    chain
}

fn transaction(chain: &AppleChain, id: &str) -> String {
    let at = t0().millis();
    chain
        .sign(&json!({
            "transactionId": id, "originalTransactionId": id, "bundleId": "edu.acme.app",
            "productId": "edu.acme.cs101", "purchaseDate": at, "originalPurchaseDate": at, "signedDate": at,
            "environment": "Sandbox", "inAppOwnershipType": "PURCHASED", "type": "Non-Consumable", "quantity": 1
        }))
        .unwrap()
}

fn notification(chain: &AppleChain, uuid: &str, transaction: Option<String>) -> String {
    chain
        .notification(&Notification {
            notification_type: "REFUND",
            uuid,
            signed_date: t0().millis(),
            bundle_id: "edu.acme.app",
            environment: "Sandbox",
            signed_transaction: transaction,
            ..Default::default()
        })
        .unwrap()
}

async fn notify(app: &TestApp, body: String) -> Answer {
    app.send_raw(
        Method::POST,
        "/v1/apps/acme/notifications/app_store",
        "application/json",
        body.into_bytes(),
    )
    .await
}

both!(
    signed_ids_with_nul_or_overlong_are_refused,
    |app: TestApp| async move {
        let chain = apple_app(&app).await;
        let counts = app.counts().await;
        // Over the documented length of a signed payload: refused before it is read.
        let huge = "u".repeat(600 * 1024);
        notify(&app, notification(&chain, &huge, None))
            .await
            .error(400, "malformed_notification");
        for body in [
            notification(&chain, &"u".repeat(300), None),
            notification(&chain, "a\0b", None),
            notification(&chain, "", None),
            notification(&chain, "n-1", Some(transaction(&chain, "7\u{0}7"))),
            notification(&chain, "n-2", Some(transaction(&chain, &"7".repeat(300)))),
        ] {
            notify(&app, body).await.error(422, "malformed_signed_data");
        }
        app.post(
            "/v1/apps/acme/purchases",
            json!({"app_user_id": "u1", "store": "app_store", "signed_transaction": transaction(&chain, "8\u{0}8")}),
        )
        .await
        .error(422, "malformed_signed_data");
        assert_eq!(app.counts().await, counts, "nothing refused was kept");
        // The same with sound ids is taken.
        notify(
            &app,
            notification(&chain, "n-3", Some(transaction(&chain, "77"))),
        )
        .await
        .expect(200);
    }
);

both!(
    free_text_has_limits_and_no_control_characters,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let grants = "/v1/apps/acme/customers/u1/grants";
        for (reason, code) in [
            ("x".repeat(1001), "reason_too_long"),
            ("bell\u{7}".to_owned(), "invalid_reason"),
            (" \u{a0}\u{3000}".to_owned(), "reason_required"),
        ] {
            app.post(grants, json!({"product_id": "cs101", "reason": reason}))
                .await
                .error(400, code);
        }
        app.patch("/v1/apps/acme", json!({"name": "Acme\u{1b}[31m"}))
            .await
            .error(400, "invalid_name");
        app.post(
            "/v1/apps/acme/webhook_endpoints",
            json!({"url": "https://example.com/hook", "description": "d".repeat(1001)}),
        )
        .await
        .error(400, "invalid_description");
        app.post(
            "/v1/apps/acme/webhook_endpoints",
            json!({"url": format!("https://example.com/{}", "p".repeat(2048))}),
        )
        .await
        .error(400, "invalid_url");
        app.patch(
            "/v1/apps/acme",
            json!({"app_store": {"bundle_id": "edu acme", "environment": "Sandbox"}}),
        )
        .await
        .error(400, "invalid_app_store");
        assert_eq!(app.count("audit_log").await, 0);
        app.post(
            grants,
            json!({"product_id": "cs101", "reason": "x".repeat(1000)}),
        )
        .await
        .expect(201);
    }
);
