//! Keys and errors, Apps.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{both, helpers::*};

both!(service_endpoints_answer, |app: TestApp| async move {
    app.request(Method::GET, "/healthz", None, None, &[])
        .await
        .expect(200);
    let ready = app
        .request(Method::GET, "/readyz", None, None, &[])
        .await
        .expect(200);
    assert_eq!(
        ready["database"],
        if app.backend == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    let doc = app
        .request(Method::GET, "/openapi.json", None, None, &[])
        .await
        .expect(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/apps",
        "/v1/apps/{app}/products/{product_id}",
        "/v1/apps/{app}/customers/{app_user_id}/balances/{currency}/spend",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is described");
    }
    for schema in [
        "Snapshot",
        "Product",
        "ErrorBody",
        "NewApp",
        "AppView",
        "Spent",
        "EntitlementView",
        "Timeline",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} is described"
        );
    }
    let snapshot = &doc["components"]["schemas"]["Snapshot"]["properties"];
    for field in [
        "app_user_id",
        "version",
        "entitlements",
        "purchases",
        "balances",
        "entitlement_token",
    ] {
        assert!(snapshot[field].is_object(), "Snapshot.{field} is described");
    }
    app.get("/v1/apps/nope").await;
    let metrics = app
        .request(Method::GET, "/metrics", None, None, &[])
        .await
        .expect(200);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("gateway_http_requests_total"),
        "{metrics}"
    );
});

both!(errors_have_one_shape, |app: TestApp| async move {
    app.request(Method::GET, "/v1/apps/x", None, None, &[])
        .await
        .error(401, "unauthorized");
    app.request(Method::GET, "/v1/apps/x", Some("sk_wrong"), None, &[])
        .await
        .error(401, "unauthorized");
    app.get("/v1/nothing/here").await.error(404, "not_found");
    app.request(Method::DELETE, "/v1/apps", Some(ADMIN_KEY), None, &[])
        .await
        .error(405, "method_not_allowed");
    app.send_raw(
        Method::POST,
        "/v1/apps",
        "application/json",
        b"{not json".to_vec(),
    )
    .await
    .error(400, "malformed_json");
    app.send_raw(Method::POST, "/v1/apps", "text/plain", b"{}".to_vec())
        .await
        .error(415, "unsupported_media_type");
    let big = format!(
        "{{\"id\": \"a\", \"name\": \"{}\"}}",
        "x".repeat(1024 * 1024 + 10)
    );
    app.send_raw(
        Method::POST,
        "/v1/apps",
        "application/json",
        big.into_bytes(),
    )
    .await
    .error(413, "body_too_large");
    assert_eq!(
        app.count("apps").await,
        0,
        "no failed call created anything"
    );
});

both!(
    apps_are_created_read_and_patched_without_echoing_secrets,
    |app: TestApp| async move {
        let created = app.create_app("acme").await;
        assert_eq!(created["id"], "acme");
        assert_eq!(created["app_store"]["bundle_id"], "edu.acme.app");
        assert_eq!(created["app_store"]["shared_secret_set"], true);
        let text = created.to_string();
        assert!(
            !text.contains("apple-shared-secret-value") && !text.contains("account_salt"),
            "{text}"
        );

        app.post("/v1/apps", json!({"id": "acme", "name": "Again"}))
            .await
            .error(409, "app_exists");
        app.post("/v1/apps", json!({"id": "bad id", "name": "x"}))
            .await
            .error(400, "invalid_app_id");
        app.post(
            "/v1/apps",
            json!({"id": "b", "name": "x", "embargoed_countries": ["cuba"]}),
        )
        .await
        .error(400, "invalid_country");
        app.post("/v1/apps", json!({"id": "b", "name": "x", "app_store": {"bundle_id": "a", "environment": "Sandbox", "api_base_url": "ftp://x"}})).await.error(400, "invalid_url");
        app.post("/v1/apps", json!({"id": "b", "name": "x", "colour": "red"}))
            .await
            .error(400, "invalid_body");
        assert_eq!(app.count("apps").await, 1);

        let patched = app.patch("/v1/apps/acme", json!({"name": "Acme Academy", "app_store": {"bundle_id": "edu.acme.app2", "environment": "Production", "app_apple_id": 1234567890}, "embargoed_countries": ["CU"]})).await.expect(200);
        assert_eq!(patched["name"], "Acme Academy");
        assert_eq!(patched["app_store"]["bundle_id"], "edu.acme.app2");
        assert_eq!(
            patched["app_store"]["shared_secret_set"], true,
            "a secret not restated is kept"
        );
        let read = app.get("/v1/apps/acme").await.expect(200);
        assert_eq!(read["embargoed_countries"], json!(["CU"]));
        app.patch("/v1/apps/acme", json!({"embargoed_countries": ["cu"]}))
            .await
            .error(400, "invalid_country");
        assert_eq!(
            app.get("/v1/apps/acme").await.expect(200)["embargoed_countries"],
            json!(["CU"]),
            "a refused patch changed nothing"
        );
        app.get("/v1/apps/ghost").await.error(404, "app_not_found");
    }
);

both!(
    keys_are_scoped_shown_once_and_revocable,
    |app: TestApp| async move {
        app.create_app("acme").await;
        app.create_app("other").await;
        let catalog_key = app.key("acme", "secret", &["catalog"]).await;
        assert!(catalog_key.starts_with("sk_"));
        let pk = app.key("acme", "publishable", &[]).await;
        assert!(pk.starts_with("pk_"));
        app.post(
            "/v1/apps/acme/keys",
            json!({"kind": "secret", "scopes": ["admin"]}),
        )
        .await
        .error(400, "invalid_scope");
        app.post(
            "/v1/apps/acme/keys",
            json!({"kind": "secret", "scopes": []}),
        )
        .await
        .error(400, "invalid_scope");
        app.post(
            "/v1/apps/acme/keys",
            json!({"kind": "secret", "scopes": ["everything"]}),
        )
        .await
        .error(400, "invalid_body");

        let listed = app.get("/v1/apps/acme/keys").await.expect(200);
        assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
        assert!(
            !listed.to_string().contains(&catalog_key),
            "a key is shown once only"
        );
        let stored: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
            .fetch_all(app.db.reader())
            .await
            .unwrap();
        assert!(
            stored.iter().all(|h| h.len() == 64 && !h.contains("sk_")),
            "only hashes are stored"
        );

        let put = |key: String| {
            let app = &app;
            async move {
                app.request(
                    Method::PUT,
                    "/v1/apps/acme/products/cs101",
                    Some(&key),
                    Some(json!({"kind": "non_consumable", "entitlements": [{"id": "cs101"}]})),
                    &[],
                )
                .await
            }
        };
        put(catalog_key.clone()).await.expect(201);
        put(pk.clone()).await.error(403, "forbidden");
        let other = app.key("other", "secret", &["catalog"]).await;
        put(other).await.error(403, "forbidden");
        let reader = app.key("acme", "secret", &["read"]).await;
        app.request(
            Method::GET,
            "/v1/apps/acme/products/cs101",
            Some(&reader),
            None,
            &[],
        )
        .await
        .expect(200);
        put(reader).await.error(403, "forbidden");
        app.request(
            Method::GET,
            "/v1/apps/acme/customers/u1",
            Some(&pk),
            None,
            &[],
        )
        .await
        .expect(200);
        app.request(
            Method::GET,
            "/v1/apps/other/customers/u1",
            Some(&pk),
            None,
            &[],
        )
        .await
        .error(403, "forbidden");
        app.request(
            Method::POST,
            "/v1/apps",
            Some(&catalog_key),
            Some(json!({"id": "x", "name": "x"})),
            &[],
        )
        .await
        .error(403, "forbidden");

        let id = listed["keys"][0]["id"].as_str().unwrap().to_owned();
        app.delete(&format!("/v1/apps/acme/keys/{id}"), None)
            .await
            .expect(204);
        app.delete(&format!("/v1/apps/acme/keys/{id}"), None)
            .await
            .error(404, "key_not_found");
        put(catalog_key).await.error(401, "unauthorized");
    }
);

both!(
    idempotency_key_replays_the_first_answer,
    |app: TestApp| async move {
        let h = [("idempotency-key", "create-acme-1")];
        let body = json!({"id": "acme", "name": "Acme"});
        let first = app
            .request(
                Method::POST,
                "/v1/apps",
                Some(ADMIN_KEY),
                Some(body.clone()),
                &h,
            )
            .await;
        assert_eq!(first.status, 201);
        let again = app
            .request(Method::POST, "/v1/apps", Some(ADMIN_KEY), Some(body), &h)
            .await;
        assert_eq!(
            again.status, 201,
            "a repeat gets the first answer, not app_exists"
        );
        assert_eq!(again.body, first.body);
        assert_eq!(again.headers["idempotent-replayed"], "true");
        app.request(
            Method::POST,
            "/v1/apps",
            Some(ADMIN_KEY),
            Some(json!({"id": "other", "name": "x"})),
            &h,
        )
        .await
        .error(409, "idempotency_key_reused");
        assert_eq!(app.count("apps").await, 1);
    }
);

both!(state_survives_a_restart, |app: TestApp| async move {
    app.seed_catalog("acme").await;
    app.post(
        "/v1/apps/acme/customers/u1/grants",
        json!({"product_id": "coins100", "reason": "welcome gift"}),
    )
    .await
    .expect(201);
    let before = app.get("/v1/apps/acme/customers/u1").await.expect(200);
    let backend = app.backend;
    let db = app.stop().await;
    let app = spawn_on(backend, db).await;
    let mut after = app.get("/v1/apps/acme/customers/u1").await.expect(200);
    // An ES256 signature differs each time; what it signs, and the key it names, do not.
    let (before, token_before) = take_token(before);
    let token_after = take_token_mut(&mut after);
    assert_eq!(before, after);
    assert_eq!(
        token_before.split('.').take(2).collect::<Vec<_>>(),
        token_after.split('.').take(2).collect::<Vec<_>>()
    );
    assert_eq!(after["balances"]["COINS"], 100);
    assert_eq!(
        app.get("/v1/apps/acme/products").await.expect(200)["products"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
});

both!(
    admin_keys_are_listed_and_revoked,
    |app: TestApp| async move {
        app.create_app("acme").await;
        let admin = gateway::service::keys::create(
            &app.db,
            None,
            gateway::model::KeyKind::Secret,
            vec![gateway::model::Scope::Admin],
            t0(),
        )
        .await
        .unwrap();
        app.key("acme", "secret", &["read"]).await;
        let all = app.get("/v1/keys").await.expect(200);
        let keys = all["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(
            keys.iter()
                .any(|k| k["app_id"].is_null() && k["id"] == admin.key.id.as_str())
        );
        assert!(!all.to_string().contains(&admin.secret));
        let listed = app
            .request(Method::GET, "/v1/apps", Some(&admin.secret), None, &[])
            .await
            .expect(200);
        assert_eq!(listed["apps"][0]["id"], "acme");
        app.delete(&format!("/v1/keys/{}", admin.key.id), None)
            .await
            .expect(204);
        app.request(Method::GET, "/v1/apps", Some(&admin.secret), None, &[])
            .await
            .error(401, "unauthorized");
        app.delete(&format!("/v1/keys/{}", admin.key.id), None)
            .await
            .error(404, "key_not_found");
        let reader = app.key("acme", "secret", &["read"]).await;
        app.request(Method::GET, "/v1/keys", Some(&reader), None, &[])
            .await
            .error(403, "forbidden");
    }
);

both!(
    a_production_app_store_needs_its_apple_id,
    |app: TestApp| async move {
        app.post("/v1/apps", json!({"id": "prod", "name": "Prod", "app_store": {"bundle_id": "edu.acme.app", "environment": "Production"}}))
        .await
        .error(400, "invalid_app_store");
        app.post("/v1/apps", json!({"id": "prod", "name": "Prod", "app_store": {"bundle_id": "edu.acme.app", "app_apple_id": 1234567890}})).await.expect(201);
    }
);

fn take_token_mut(snap: &mut Value) -> String {
    let token = snap["entitlement_token"].as_str().unwrap().to_owned();
    snap.as_object_mut().unwrap().remove("entitlement_token");
    token
}

fn take_token(mut snap: Value) -> (Value, String) {
    let token = take_token_mut(&mut snap);
    (snap, token)
}
