//! The server does what `/openapi.json` says: the key before anything else, every documented rule
//! checked, one proof per purchase.

use reqwest::Method;
use serde_json::json;
use store_sim::apple::AppleChain;

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
