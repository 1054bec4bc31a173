//! The server does what `/openapi.json` says: the key before anything else, every documented rule
//! checked, one proof per purchase.

use reqwest::Method;
use serde_json::json;
use store_sim::apple::chain::AppleChain;

use crate::{both, helpers::*};

both!(
    the_key_is_checked_before_any_header,
    |app: TestApp| async move {
        let bad_header = [("idempotency-key", "not a valid key")];
        let body = json!({"id": "acme", "name": "Acme"});
        for key in [None, Some("sk_not_a_key_of_this_gateway_0123456789")] {
            app.request(
                Method::POST,
                "/v1/apps",
                key,
                Some(body.clone()),
                &bad_header,
            )
            .await
            .error(401, "unauthorized");
        }
        app.request(
            Method::POST,
            "/v1/apps",
            Some(ADMIN_KEY),
            Some(body.clone()),
            &bad_header,
        )
        .await
        .error(400, "invalid_idempotency_key");
        assert_eq!(app.count("apps").await, 0);
        // A valid key and header: the layer's authentication is the handler's.
        app.request(
            Method::POST,
            "/v1/apps",
            Some(ADMIN_KEY),
            Some(body),
            &[("idempotency-key", "k1")],
        )
        .await
        .expect(201);
    }
);

both!(
    wait_is_checked_without_after_version,
    |app: TestApp| async move {
        app.create_app("acme").await;
        app.get("/v1/apps/acme/customers/u1?wait=3600")
            .await
            .error(400, "invalid_wait");
        app.get("/v1/apps/acme/customers/u1?wait=50")
            .await
            .expect(200);
    }
);

both!(
    a_purchase_with_two_proofs_is_refused,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let chain = AppleChain::generate().unwrap();
        app.patch("/v1/apps/acme", json!({"app_store": {"bundle_id": "edu.acme.app", "environment": "Sandbox", "shared_secret": "apple-shared-secret-value", "root_certificates_pem": [chain.root_pem()]}})).await.expect(200);
        let at = t0().millis();
        let jws = chain
            .sign(&json!({
                "transactionId": "1000", "originalTransactionId": "1000", "bundleId": "edu.acme.app",
                "productId": "edu.acme.cs101", "purchaseDate": at, "originalPurchaseDate": at, "signedDate": at,
                "environment": "Sandbox", "inAppOwnershipType": "PURCHASED", "type": "Non-Consumable", "quantity": 1
            }))
            .unwrap();
        let counts = app.counts().await;
        for second in [
            json!({"transaction_id": "2000"}),
            json!({"receipt_data": "cmVjZWlwdA=="}),
        ] {
            let mut body =
                json!({"app_user_id": "u1", "store": "app_store", "signed_transaction": jws});
            body.as_object_mut()
                .unwrap()
                .extend(second.as_object().unwrap().clone());
            app.post("/v1/apps/acme/purchases", body)
                .await
                .error(400, "one_proof_only");
        }
        assert_eq!(app.counts().await, counts, "a refused body changed nothing");
        // `null` is no proof: the one given is taken.
        app.post(
            "/v1/apps/acme/purchases",
            json!({"app_user_id": "u1", "store": "app_store", "signed_transaction": jws, "transaction_id": null}),
        )
        .await
        .expect(200);
    }
);

both!(
    what_the_document_allows_is_taken,
    |app: TestApp| async move {
        app.create_app("acme").await;
        // JSON Schema counts 1.0 as an integer.
        app.post("/v1/signing_keys/rotate", json!({"overlap_seconds": 300.0}))
            .await
            .expect(200);
        // A rotation's body is optional; `null` is no body.
        let endpoint = app
            .post(
                "/v1/apps/acme/webhook_endpoints",
                json!({"url": "https://example.com/hook"}),
            )
            .await
            .expect(201);
        let path = format!(
            "/v1/apps/acme/webhook_endpoints/{}/rotate_secret",
            endpoint["id"].as_str().unwrap()
        );
        app.send_raw(Method::POST, &path, "application/json", b"null".to_vec())
            .await
            .expect(200);
        app.send_raw(Method::POST, &path, "application/json", Vec::new())
            .await
            .expect(200);
        // Whitespace alone is no JSON, and no body either.
        app.send_raw(Method::POST, &path, "application/json", b"\r".to_vec())
            .await
            .error(400, "malformed_json");
        // A method no route takes is 405, whatever Idempotency-Key it carries.
        for _ in 0..2 {
            app.request(
                Method::PUT,
                "/v1/apps/acme/products/import",
                Some(ADMIN_KEY),
                Some(json!({})),
                &[("idempotency-key", "same")],
            )
            .await
            .error(405, "method_not_allowed");
        }
    }
);

/// A sample value for each path parameter: what the seeded catalog has, or a made-up id.
fn sample(param: &str) -> &'static str {
    match param {
        "app" => "acme",
        "app_user_id" => "u1",
        "product_id" => "cs101",
        "entitlement_id" => "premium",
        "currency" => "COINS",
        _ => "xyz_0192",
    }
}

// Every operation of the document, called without a key, with a body it does not take, with an id
// that breaks its pattern, and with a bare body: whatever the server answers is a status the
// document lists for that operation.
both!(
    every_answer_is_a_documented_status,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let doc = app
            .request(Method::GET, "/openapi.json", None, None, &[])
            .await
            .expect(200);
        let mut checked = 0;
        for (template, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let documented: Vec<String> = op["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect();
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let params: Vec<&str> = template
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .collect();
                let fill = |bad: Option<&str>| {
                    let mut path = template.clone();
                    for p in &params {
                        let value = if Some(*p) == bad { "a%00b" } else { sample(p) };
                        path = path.replace(&format!("{{{p}}}"), value);
                    }
                    path
                };
                let secured = op["security"] != serde_json::json!([{}]);
                let mut answers = Vec::new();
                if secured {
                    let a = app
                        .request(method.clone(), &fill(None), None, None, &[])
                        .await;
                    answers.push(("no key", a.status.as_u16()));
                }
                if op.get("requestBody").is_some() {
                    let a = app
                        .send_raw(
                            method.clone(),
                            &fill(None),
                            "application/xml",
                            b"<a/>".to_vec(),
                        )
                        .await;
                    answers.push(("an XML body", a.status.as_u16()));
                    let a = app
                        .request(
                            method.clone(),
                            &fill(None),
                            Some(ADMIN_KEY),
                            Some(json!({})),
                            &[],
                        )
                        .await;
                    answers.push(("an empty object", a.status.as_u16()));
                }
                for p in &params {
                    let a = app
                        .request(method.clone(), &fill(Some(p)), Some(ADMIN_KEY), None, &[])
                        .await;
                    answers.push(("a NUL in an id", a.status.as_u16()));
                }
                for (what, status) in answers {
                    assert!(
                        documented.contains(&status.to_string()),
                        "{method} {template} with {what} answered {status}, which the document does not list ({documented:?})"
                    );
                    checked += 1;
                }
                if secured
                    && matches!(
                        method,
                        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
                    )
                {
                    let params = op["parameters"].as_array().unwrap();
                    assert!(
                        params.iter().any(|p| p["name"] == "Idempotency-Key"),
                        "{method} {template} does not document Idempotency-Key"
                    );
                }
            }
        }
        assert!(checked > 80, "only {checked} answers were checked");
        // Ids in paths state their rule.
        let schemas = &doc["components"]["schemas"];
        for id in [
            "AppId",
            "AppUserId",
            "ProductId",
            "EntitlementId",
            "ResourceId",
            "Currency",
        ] {
            assert!(
                schemas[id]["pattern"].is_string() && schemas[id]["maxLength"].is_u64(),
                "{id}"
            );
        }
    }
);

both!(a_body_is_an_object_not_a_list, |app: TestApp| async move {
    app.seed_catalog("acme").await;
    let keys = app.count("signing_keys").await;
    app.post("/v1/signing_keys/rotate", json!([]))
        .await
        .error(400, "invalid_body");
    app.post(
        "/v1/apps/acme/customers/u1/grants",
        json!(["cs101", "a reason"]),
    )
    .await
    .error(400, "invalid_body");
    assert_eq!(app.count("signing_keys").await, keys, "nothing changed");
    assert_eq!(app.count("customers").await, 0);
});

/// Walks a schema for text fields that state no rule: a `$ref` is followed once; inside `oneOf`,
/// `anyOf`, `allOf` and `not` (rules that tie fields together, over fields stated elsewhere) only
/// references are followed.
fn loose_text(
    v: &serde_json::Value,
    at: &str,
    tying: bool,
    schemas: &serde_json::Value,
    seen: &mut std::collections::HashSet<String>,
    loose: &mut Vec<String>,
) {
    if let Some(name) = v["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
        if seen.insert(name.to_owned()) {
            loose_text(&schemas[name], name, false, schemas, seen, loose);
        }
        return;
    }
    let text = v["type"] == "string"
        || v["type"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "string"));
    let ruled = ["pattern", "enum", "const", "format"]
        .iter()
        .any(|k| v.get(*k).is_some());
    if text && !ruled && !tying {
        loose.push(at.to_owned());
    }
    for (k, sub) in v["properties"].as_object().into_iter().flatten() {
        loose_text(sub, &format!("{at}.{k}"), tying, schemas, seen, loose);
    }
    for key in ["items", "additionalProperties"] {
        if v[key].is_object() {
            loose_text(&v[key], &format!("{at}[]"), tying, schemas, seen, loose);
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for sub in v[key].as_array().into_iter().flatten() {
            loose_text(sub, at, true, schemas, seen, loose);
        }
    }
}

both!(
    every_text_field_of_a_request_states_its_rule,
    |app: TestApp| async move {
        // A text field with no rule lets a client send what the server refuses (a NUL, say).
        let doc = app
            .request(Method::GET, "/openapi.json", None, None, &[])
            .await
            .expect(200);
        let schemas = &doc["components"]["schemas"];
        let mut seen = std::collections::HashSet::new();
        let mut loose = Vec::new();
        let mut bodies = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (_, content) in op["requestBody"]["content"]
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    bodies += 1;
                    let at = format!("{method} {path}");
                    loose_text(
                        &content["schema"],
                        &at,
                        false,
                        schemas,
                        &mut seen,
                        &mut loose,
                    );
                }
            }
        }
        assert!(bodies > 20, "only {bodies} request bodies were walked");
        assert!(seen.len() > 20, "only {} schemas were reached", seen.len());
        assert!(loose.is_empty(), "text fields with no rule: {loose:?}");
    }
);
