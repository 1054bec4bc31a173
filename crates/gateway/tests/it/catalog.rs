//! Catalog: products one by one, and CSV import/export.

use reqwest::Method;
use serde_json::json;

use crate::{both, helpers::*};

both!(
    products_are_put_read_listed_and_deactivated,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let p = app.get("/v1/apps/acme/products/cs101").await.expect(200);
        assert_eq!(p["kind"], "non_consumable");
        assert_eq!(p["entitlements"][0]["attributes"]["mode"], "verified");
        assert_eq!(p["store_skus"]["app_store"], "edu.acme.cs101");
        assert_eq!(p["active"], true);
        assert_eq!(
            app.get("/v1/apps/acme/products/pass30").await.expect(200)["access_duration"],
            "P30D"
        );

        let replaced = app.put("/v1/apps/acme/products/cs101", json!({"kind": "non_consumable", "store_skus": {"app_store": "edu.acme.cs101.v2"}, "entitlements": [{"id": "cs101"}]})).await.expect(200);
        assert_eq!(replaced["store_skus"]["app_store"], "edu.acme.cs101.v2");
        // The old SKU is free again; the new one is taken.
        app.put("/v1/apps/acme/products/cs102", json!({"kind": "non_consumable", "store_skus": {"app_store": "edu.acme.cs101"}, "entitlements": [{"id": "cs102"}]})).await.expect(201);
        app.put("/v1/apps/acme/products/cs103", json!({"kind": "non_consumable", "store_skus": {"app_store": "edu.acme.cs101.v2"}, "entitlements": [{"id": "cs103"}]})).await.error(409, "sku_taken");

        let gone = app
            .delete("/v1/apps/acme/products/cs102", None)
            .await
            .expect(200);
        assert_eq!(gone["active"], false);
        assert_eq!(
            app.get("/v1/apps/acme/products/cs102").await.expect(200)["active"],
            false,
            "history is kept"
        );
        app.delete("/v1/apps/acme/products/nope", None)
            .await
            .error(404, "product_not_found");
        app.get("/v1/apps/acme/products/nope")
            .await
            .error(404, "product_not_found");
        app.get("/v1/apps/ghost/products")
            .await
            .error(404, "app_not_found");
        let list = app.get("/v1/apps/acme/products").await.expect(200);
        assert_eq!(list["products"].as_array().unwrap().len(), 5);
    }
);

both!(
    bad_products_are_refused_and_change_nothing,
    |app: TestApp| async move {
        app.create_app("acme").await;
        let base = "/v1/apps/acme/products";
        app.put(
            &format!("{base}/c"),
            json!({"kind": "consumable", "entitlements": []}),
        )
        .await
        .error(400, "invalid_product");
        app.put(
            &format!("{base}/c"),
            json!({"kind": "consumable", "consumable": {"currency": "COINS", "amount": -5}}),
        )
        .await
        .error(400, "invalid_product");
        app.put(
            &format!("{base}/c"),
            json!({"kind": "consumable", "consumable": {"currency": "coins", "amount": 5}}),
        )
        .await
        .error(400, "invalid_body");
        app.put(&format!("{base}/s"), json!({"kind": "subscription", "access_duration": "P1M", "entitlements": [{"id": "x"}]})).await.error(400, "invalid_product");
        app.put(
            &format!("{base}/n"),
            json!({"kind": "non_renewing", "entitlements": [{"id": "x"}]}),
        )
        .await
        .error(400, "invalid_product");
        app.put(&format!("{base}/n"), json!({"kind": "non_renewing", "access_duration": "thirty days", "entitlements": [{"id": "x"}]})).await.error(400, "invalid_body");
        app.put(
            &format!("{base}/k"),
            json!({"kind": "lifetime", "entitlements": [{"id": "x"}]}),
        )
        .await
        .error(400, "invalid_body");
        app.put(
            &format!("{base}/bad%20id"),
            json!({"kind": "non_consumable", "entitlements": [{"id": "x"}]}),
        )
        .await
        .error(400, "invalid_product_id");
        assert_eq!(app.count("products").await, 0);
        assert_eq!(app.count("product_skus").await, 0);
    }
);

const GOOD_CSV: &str = "product_id,kind,active,app_store,play_store,play_base_plan,stripe_price,entitlements,consumable_currency,consumable_amount,access_duration,expires_at\n\
cs101,non_consumable,true,edu.acme.cs101,cs101,,price_1,\"[{\"\"id\"\":\"\"course-v1:Acme+CS101+2026\"\",\"\"attributes\"\":{\"\"course_id\"\":\"\"course-v1:Acme+CS101+2026\"\",\"\"mode\"\":\"\"verified\"\"}}]\",,,,\n\
coins,consumable,true,edu.acme.coins,,,,,COINS,100,,\n\
premium,subscription,true,edu.acme.premium,premium,monthly,,premium;extras,,,,\n\
pass,non_renewing,false,,,,,pass,,,P30D,\n\
fall,non_renewing,true,,,,,fall,,,,2027-01-31T00:00:00Z\n";

both!(
    csv_import_and_export_round_trip,
    |app: TestApp| async move {
        app.create_app("acme").await;
        let res = app
            .send_raw(
                Method::POST,
                "/v1/apps/acme/products/import",
                "text/csv",
                GOOD_CSV.as_bytes().to_vec(),
            )
            .await
            .expect(200);
        assert_eq!(res["imported"], 5);
        let premium = app.get("/v1/apps/acme/products/premium").await.expect(200);
        assert_eq!(premium["store_skus"]["play_base_plan"], "monthly");
        assert_eq!(premium["entitlements"].as_array().unwrap().len(), 2);
        assert_eq!(
            app.get("/v1/apps/acme/products/cs101").await.expect(200)["entitlements"][0]["attributes"]
                ["mode"],
            "verified"
        );
        assert_eq!(
            app.get("/v1/apps/acme/products/pass").await.expect(200)["active"],
            false
        );

        let exported = app.get("/v1/apps/acme/products/export").await.expect(200);
        let exported = exported.as_str().unwrap().to_owned();
        assert!(exported.starts_with("product_id,kind,active,"));
        // Importing the export into another app gives the same catalog.
        app.create_app("copy").await;
        app.send_raw(
            Method::POST,
            "/v1/apps/copy/products/import",
            "text/csv",
            exported.clone().into_bytes(),
        )
        .await
        .expect(200);
        let a = app.get("/v1/apps/acme/products").await.expect(200);
        let b = app.get("/v1/apps/copy/products").await.expect(200);
        assert_eq!(a, b);
        assert_eq!(
            app.get("/v1/apps/copy/products/export")
                .await
                .expect(200)
                .as_str()
                .unwrap(),
            exported
        );
    }
);

both!(
    csv_import_is_all_or_nothing_and_names_every_bad_line,
    |app: TestApp| async move {
        app.create_app("acme").await;
        app.put("/v1/apps/acme/products/taken", json!({"kind": "non_consumable", "store_skus": {"app_store": "sku.taken"}, "entitlements": [{"id": "t"}]})).await.expect(201);
        let csv = "product_id,kind,app_store,entitlements,consumable_currency,consumable_amount,access_duration\n\
ok1,non_consumable,sku.ok1,e1,,,\n\
bad kind,non_consumable,,e2,,,\n\
c1,consumable,,,COINS,lots,\n\
ok2,non_consumable,sku.ok1,e3,,,\n\
n1,non_renewing,,e4,,,P1X\n\
ok1,non_consumable,,e5,,,\n";
        let body = app
            .send_raw(
                Method::POST,
                "/v1/apps/acme/products/import",
                "text/csv",
                csv.as_bytes().to_vec(),
            )
            .await
            .error(422, "invalid_csv");
        let lines: Vec<u64> = body["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7], "{body}");
        assert_eq!(app.count("products").await, 1, "nothing was imported");

        // A SKU held by a product already in the catalog is found inside the transaction.
        let csv = "product_id,kind,app_store,entitlements\nnew1,non_consumable,sku.fresh,e1\nnew2,non_consumable,sku.taken,e2\n";
        let body = app
            .send_raw(
                Method::POST,
                "/v1/apps/acme/products/import",
                "text/csv",
                csv.as_bytes().to_vec(),
            )
            .await
            .error(422, "invalid_csv");
        assert_eq!(body["error"]["details"][0]["line"], 3);
        assert_eq!(
            app.count("products").await,
            1,
            "the good row before it was rolled back"
        );

        let body = app
            .send_raw(
                Method::POST,
                "/v1/apps/acme/products/import",
                "text/csv",
                b"id,kind\nx,consumable\n".to_vec(),
            )
            .await
            .error(422, "invalid_csv");
        assert_eq!(body["error"]["details"][0]["line"], 1);
        app.send_raw(
            Method::POST,
            "/v1/apps/acme/products/import",
            "application/json",
            b"{}".to_vec(),
        )
        .await
        .error(415, "unsupported_media_type");
    }
);

both!(
    changing_what_a_product_grants_moves_its_holders,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        app.post(
            "/v1/apps/acme/customers/u1/grants",
            json!({"product_id": "pass30", "reason": "trial"}),
        )
        .await
        .expect(201);
        app.put("/v1/apps/acme/products/pass30", json!({"kind": "non_renewing", "access_duration": "P30D", "entitlements": [{"id": "pass-v2"}]})).await.expect(200);
        // The change marked the holder due; the expiry job re-derives them.
        let clock: std::sync::Arc<dyn gateway_core::Clock> = std::sync::Arc::new(app.clock.clone());
        assert_eq!(
            gateway::jobs::expiry::step(&app.cx, &clock).await,
            gateway::jobs::Outcome::Partial(1)
        );
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        let ids: Vec<&str> = snap["entitlements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["pass-v2"]);
        let types: Vec<String> = app.outbox_types("u1").await;
        assert_eq!(
            types,
            vec![
                "entitlement.granted",
                "entitlement.revoked",
                "entitlement.granted"
            ]
        );
    }
);

both!(
    repricing_a_consumable_changes_no_balance,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        app.post(
            "/v1/apps/acme/customers/u1/grants",
            json!({"product_id": "coins100", "reason": "gift"}),
        )
        .await
        .expect(201);
        app.put("/v1/apps/acme/products/coins100", json!({"kind": "consumable", "store_skus": {"app_store": "edu.acme.coins100"}, "consumable": {"currency": "COINS", "amount": 1000}})).await.expect(200);
        app.put("/v1/apps/acme/products/pass30", json!({"kind": "non_renewing", "access_duration": "P60D", "entitlements": [{"id": "pass"}]})).await.expect(200);
        let clock: std::sync::Arc<dyn gateway_core::Clock> = std::sync::Arc::new(app.clock.clone());
        gateway::jobs::expiry::step(&app.cx, &clock).await;
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(
            snap["balances"]["COINS"], 100,
            "what was granted stays what it was"
        );
        app.put("/v1/apps/acme/products/big", json!({"kind": "consumable", "consumable": {"currency": "COINS", "amount": 9_223_372_036_854_775_807_i64}})).await.error(400, "invalid_product");
        app.put("/v1/apps/acme/products/long", json!({"kind": "non_renewing", "access_duration": "P8000Y", "entitlements": [{"id": "x"}]})).await.error(422, "invalid_duration");
    }
);

both!(
    csv_line_numbers_count_as_an_editor_does,
    |app: TestApp| async move {
        app.create_app("acme").await;
        let import = |csv: &'static str| {
            let app = &app;
            async move {
                app.send_raw(
                    Method::POST,
                    "/v1/apps/acme/products/import",
                    "text/csv",
                    csv.as_bytes().to_vec(),
                )
                .await
            }
        };
        let lines = |body: serde_json::Value| -> Vec<u64> {
            body["error"]["details"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["line"].as_u64().unwrap())
                .collect()
        };
        // Windows line endings.
        let body = import(
            "product_id,kind,entitlements\r\np1,nope,e\r\np2,non_consumable,e\r\np3,bad,e\r\n",
        )
        .await
        .error(422, "invalid_csv");
        assert_eq!(lines(body), vec![2, 4]);
        // A blank line, then a quoted cell over two lines.
        let body = import(
            "product_id,kind,entitlements\np1,non_consumable,e1\n\np2,nope,\"a\nb\"\np3,wrong,e3\n",
        )
        .await
        .error(422, "invalid_csv");
        assert_eq!(lines(body), vec![4, 6]);
        let body = import("product_id,kind,kind\np1,non_consumable,consumable\n")
            .await
            .error(422, "invalid_csv");
        assert!(
            body["error"]["details"][0]["message"]
                .as_str()
                .unwrap()
                .contains("twice"),
            "{body}"
        );
        import("product_id,kind,entitlements\np1,non_consumable,e\u{0}\n")
            .await
            .error(422, "invalid_csv");
        assert_eq!(app.count("products").await, 0);
        app.put("/v1/apps/acme/products/p1", json!({"kind": "non_consumable", "entitlements": [{"id": "e", "attributes": {"note": "a\u{0}b"}}]})).await.error(400, "invalid_character");
    }
);
