//! Customers: snapshot, offerings, timeline, orders, manual grants and revokes, spending.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{both, helpers::*};

fn entitlement<'a>(snap: &'a Value, id: &str) -> &'a Value {
    snap["entitlements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {snap}"))
}

both!(
    an_unknown_customer_has_an_empty_snapshot,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let mut snap = app.get("/v1/apps/acme/customers/newbie").await.expect(200);
        let token = snap.as_object_mut().unwrap().remove("entitlement_token");
        assert_eq!(
            snap,
            json!({"app_user_id": "newbie", "version": 0, "entitlements": [], "purchases": [], "balances": {}})
        );
        assert_eq!(token.unwrap().as_str().unwrap().split('.').count(), 3);
        assert_eq!(app.count("customers").await, 0, "a read writes nothing");
        app.get("/v1/apps/acme/customers/bad%20user")
            .await
            .error(400, "invalid_app_user_id");
        let offers = app
            .get("/v1/apps/acme/customers/newbie/offerings")
            .await
            .expect(200);
        assert_eq!(offers["products"].as_array().unwrap().len(), 4);
    }
);

both!(
    manual_grant_and_revoke_are_recorded_with_their_reason,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let c = "/v1/apps/acme/customers/learner-1";
        let snap = app
            .post(
                &format!("{c}/grants"),
                json!({"product_id": "cs101", "reason": "scholarship"}),
            )
            .await
            .expect(201);
        assert_eq!(snap["version"], 1);
        let e = entitlement(&snap, "course-v1:Acme+CS101+2026");
        assert_eq!(e["status"], "active");
        assert_eq!(e["attributes"]["course_id"], "course-v1:Acme+CS101+2026");
        assert_eq!(e["store"], "manual");
        assert_eq!(e["product_id"], "cs101");

        // The course is held, so it is no longer offered.
        let offers = app.get(&format!("{c}/offerings")).await.expect(200);
        assert!(
            offers["products"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["id"] != "cs101")
        );

        let snap = app
            .delete(
                &format!("{c}/grants/course-v1:Acme+CS101+2026"),
                Some(json!({"reason": "chargeback on the web"})),
            )
            .await
            .expect(200);
        assert_eq!(snap["version"], 2);
        assert_eq!(
            entitlement(&snap, "course-v1:Acme+CS101+2026")["status"],
            "revoked"
        );
        app.delete(
            &format!("{c}/grants/course-v1:Acme+CS101+2026"),
            Some(json!({"reason": "again"})),
        )
        .await
        .error(404, "entitlement_not_found");

        let timeline = app.get(&format!("{c}/timeline")).await.expect(200);
        let events = timeline["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["kind"], "api.revoke", "newest first");
        assert!(
            events[0]["cause"]
                .as_str()
                .unwrap()
                .contains("chargeback on the web")
        );
        assert_eq!(events[1]["kind"], "api.grant");
        assert!(
            events[1]["detail"]["effects"]
                .to_string()
                .contains("entitlement_granted")
        );
        let page = app
            .get(&format!("{c}/timeline?limit=1&before=2"))
            .await
            .expect(200);
        assert_eq!(page["events"][0]["kind"], "api.grant");
        app.get(&format!("{c}/timeline?limit=0"))
            .await
            .error(400, "invalid_limit");

        let outbox = app.outbox("learner-1").await;
        let types: Vec<&str> = outbox.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, vec!["entitlement.granted", "entitlement.revoked"]);
        assert_eq!(
            outbox[0].payload["data"]["entitlement"]["attributes"]["mode"],
            "verified"
        );

        // A grant after the revoke gives access again.
        app.clock.advance_millis(1000);
        let snap = app
            .post(
                &format!("{c}/grants"),
                json!({"entitlement_id": "course-v1:Acme+CS101+2026", "reason": "appeal won"}),
            )
            .await
            .expect(201);
        assert_eq!(
            entitlement(&snap, "course-v1:Acme+CS101+2026")["status"],
            "active"
        );
    }
);

both!(bad_grants_change_nothing, |app: TestApp| async move {
    app.seed_catalog("acme").await;
    let c = "/v1/apps/acme/customers/u1";
    let before = app.counts().await;
    app.post(
        &format!("{c}/grants"),
        json!({"product_id": "cs101", "reason": "  "}),
    )
    .await
    .error(400, "reason_required");
    app.post(
        &format!("{c}/grants"),
        json!({"product_id": "nope", "reason": "x"}),
    )
    .await
    .error(404, "product_not_found");
    app.post(
        &format!("{c}/grants"),
        json!({"entitlement_id": "nope", "reason": "x"}),
    )
    .await
    .error(404, "entitlement_not_found");
    app.post(
        &format!("{c}/grants"),
        json!({"entitlement_id": "pass", "product_id": "pass30", "reason": "x"}),
    )
    .await
    .error(400, "invalid_grant");
    app.post(
        &format!("{c}/grants"),
        json!({"entitlement_id": "pass", "reason": "x", "expires_at": "2020-01-01T00:00:00Z"}),
    )
    .await
    .error(422, "invalid_expires_at");
    app.post(
        &format!("{c}/grants"),
        json!({"entitlement_id": "pass", "reason": "x", "expires_at": "soon"}),
    )
    .await
    .error(400, "invalid_body");
    app.delete(&format!("{c}/grants/pass"), Some(json!({"reason": "x"})))
        .await
        .error(404, "entitlement_not_found");
    let reader = app.key("acme", "secret", &["read"]).await;
    app.request(
        Method::POST,
        &format!("{c}/grants"),
        Some(&reader),
        Some(json!({"entitlement_id": "pass", "reason": "x"})),
        &[],
    )
    .await
    .error(403, "forbidden");
    let mut after = app.counts().await;
    for (t, n) in after.iter_mut() {
        if t == "api_keys" {
            *n -= 1;
        }
    }
    assert_eq!(before, after);
});

both!(
    time_boxed_access_expires_by_the_clock,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let c = "/v1/apps/acme/customers/u1";
        let snap = app
            .post(
                &format!("{c}/grants"),
                json!({"product_id": "pass30", "reason": "trial"}),
            )
            .await
            .expect(201);
        assert_eq!(
            entitlement(&snap, "pass")["expires_at"],
            "2026-12-22T10:00:00Z"
        );
        app.clock.advance_millis(29 * 86_400_000);
        assert_eq!(
            entitlement(&app.get(c).await.expect(200), "pass")["status"],
            "active"
        );
        app.clock.advance_millis(86_400_000);
        let snap = app.get(c).await.expect(200);
        assert_eq!(entitlement(&snap, "pass")["status"], "expired");
        assert_eq!(snap["version"], 2);
        let outbox = app.outbox("u1").await;
        assert_eq!(outbox.last().unwrap().event_type, "entitlement.expired");
        // A second read writes nothing more.
        let again = app.get(c).await.expect(200);
        assert_eq!(again["version"], 2);
    }
);

both!(
    consumable_balances_are_spent_once_per_key,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let c = "/v1/apps/acme/customers/u1";
        let snap = app
            .post(
                &format!("{c}/grants"),
                json!({"product_id": "coins100", "reason": "welcome"}),
            )
            .await
            .expect(201);
        assert_eq!(snap["balances"]["COINS"], 100);
        let spend = |key: &'static str, amount: i64| {
            let app = &app;
            async move {
                app.request(
                    Method::POST,
                    &format!("{c}/balances/COINS/spend"),
                    Some(ADMIN_KEY),
                    Some(json!({"amount": amount, "reason": "unlock lesson"})),
                    &[("idempotency-key", key)],
                )
                .await
            }
        };
        let first = spend("spend-1", 30).await.expect(200);
        assert_eq!(first["balance"], 70);
        let replay = spend("spend-1", 30).await.expect(200);
        assert_eq!(replay, first);
        assert_eq!(
            app.get(c).await.expect(200)["balances"]["COINS"],
            70,
            "a replay spends nothing"
        );
        spend("spend-1", 31)
            .await
            .error(409, "idempotency_key_reused");
        spend("spend-2", 71)
            .await
            .error(409, "insufficient_balance");
        spend("spend-3", 0).await.error(400, "invalid_amount");
        app.post(
            &format!("{c}/balances/COINS/spend"),
            json!({"amount": 1, "reason": "x"}),
        )
        .await
        .error(400, "idempotency_key_required");
        app.request(
            Method::POST,
            &format!("{c}/balances/coins/spend"),
            Some(ADMIN_KEY),
            Some(json!({"amount": 1, "reason": "x"})),
            &[("idempotency-key", "k9")],
        )
        .await
        .error(400, "invalid_currency");
        let snap = app.get(c).await.expect(200);
        assert_eq!(snap["balances"]["COINS"], 70);
        assert_eq!(snap["version"], 2);

        // Double entry: every ledger transaction's legs sum to zero.
        let unbalanced: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT txn_id FROM ledger_entries GROUP BY txn_id HAVING SUM(amount) <> 0) t")
        .fetch_one(app.db.reader()).await.unwrap();
        assert_eq!(unbalanced, 0);
        assert_eq!(app.count("ledger_entries").await, 4);
        let types: Vec<String> = app.outbox_types("u1").await;
        assert_eq!(types, vec!["balance.changed", "balance.changed"]);
    }
);

both!(
    concurrent_spends_never_overdraw,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let c = "/v1/apps/acme/customers/u1";
        app.post(
            &format!("{c}/grants"),
            json!({"product_id": "coins100", "reason": "welcome"}),
        )
        .await
        .expect(201);
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (client, url) = (
                app.client.clone(),
                format!("{}{c}/balances/COINS/spend", app.addr),
            );
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(ADMIN_KEY)
                    .header("idempotency-key", format!("k{i}"))
                    .json(&json!({"amount": 30, "reason": "race"}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                200 => ok += 1,
                409 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(ok, 3);
        assert_eq!(app.get(c).await.expect(200)["balances"]["COINS"], 10);
    }
);

both!(
    orders_issue_tokens_and_respect_the_embargo,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        app.patch(
            "/v1/apps/acme",
            json!({"embargoed_countries": ["CU", "IR"]}),
        )
        .await
        .expect(200);
        let pk = app.key("acme", "publishable", &[]).await;
        let path = "/v1/apps/acme/customers/u1/orders";
        let order = app
            .request(
                Method::POST,
                path,
                Some(&pk),
                Some(json!({"product_ids": ["cs101"], "country": "us"})),
                &[],
            )
            .await
            .expect(201);
        let token = order["app_account_token"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(token).is_ok());
        let obf = order["obfuscated_account_id"].as_str().unwrap();
        assert_eq!(obf.len(), 64);
        assert!(!obf.contains("u1"));
        let second = app
            .post(path, json!({"product_ids": ["pass30"], "country": "FR"}))
            .await
            .expect(201);
        assert_ne!(second["app_account_token"], order["app_account_token"]);
        assert_eq!(
            second["obfuscated_account_id"], order["obfuscated_account_id"],
            "stable per customer"
        );
        let other = app
            .post(
                "/v1/apps/acme/customers/u2/orders",
                json!({"product_ids": ["cs101"], "country": "DE"}),
            )
            .await
            .expect(201);
        assert_ne!(
            other["obfuscated_account_id"],
            order["obfuscated_account_id"]
        );

        let before = app.count("orders").await;
        app.post(path, json!({"product_ids": ["cs101"]}))
            .await
            .error(409, "country_required");
        app.post(path, json!({"product_ids": ["cs101"], "country": "CU"}))
            .await
            .error(403, "embargoed");
        app.post(path, json!({"product_ids": ["nope"], "country": "US"}))
            .await
            .error(404, "product_not_found");
        app.post(path, json!({"product_ids": [], "country": "US"}))
            .await
            .error(400, "invalid_order");
        app.post(path, json!({"product_ids": ["cs101"], "country": "USA"}))
            .await
            .error(400, "invalid_country");
        app.delete("/v1/apps/acme/products/cs101", None)
            .await
            .expect(200);
        app.post(path, json!({"product_ids": ["cs101"], "country": "US"}))
            .await
            .error(409, "product_inactive");
        assert_eq!(app.count("orders").await, before);
        let found =
            gateway::db::orders::by_app_account_token(&app.db, &"acme".parse().unwrap(), token)
                .await
                .unwrap()
                .unwrap();
        assert_eq!(found.customer_id.as_str(), "u1");
    }
);

/// A stand-in identity provider: a P-256 key, its JWKS served on loopback, and tokens it signs.
pub(crate) struct IdentityProvider {
    pub(crate) jwks_url: String,
    pem: String,
}

impl IdentityProvider {
    pub(crate) async fn start() -> Self {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let key = rcgen::KeyPair::generate().unwrap();
        let raw = key.public_key_raw();
        assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        }]});
        let router = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        IdentityProvider {
            jwks_url,
            pem: key.serialize_pem(),
        }
    }

    pub(crate) fn token(&self, claims: Value) -> String {
        Self::sign(&self.pem, claims)
    }

    fn sign(pem: &str, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }
}

both!(
    customer_jwts_hold_publishable_keys_to_their_customer,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let idp = IdentityProvider::start().await;
        app.patch("/v1/apps/acme", json!({"customer_auth": {"mode": "jwt", "jwks_url": idp.jwks_url, "issuer": "https://id.acme.edu", "audience": "acme-app"}})).await.expect(200);
        let pk = app.key("acme", "publishable", &[]).await;
        let exp = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600) as i64;
        let claims = |sub: &str| json!({"sub": sub, "iss": "https://id.acme.edu", "aud": "acme-app", "exp": exp});
        let get = |token: Option<String>| {
            let (app, pk) = (&app, pk.clone());
            async move {
                let mut req = app
                    .client
                    .get(format!("{}/v1/apps/acme/customers/u1", app.addr))
                    .bearer_auth(pk);
                if let Some(t) = token {
                    req = req.header("x-customer-token", t);
                }
                let res = req.send().await.unwrap();
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap();
                (status, body)
            }
        };
        let (status, body) = get(None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap()),
            (401, "customer_token_required")
        );
        let (status, body) = get(Some(idp.token(claims("u1")))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["app_user_id"], "u1");
        let (status, body) = get(Some(idp.token(claims("u2")))).await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap()),
            (403, "customer_mismatch")
        );
        let mut expired = claims("u1");
        expired["exp"] = json!(1_000_000);
        let (status, body) = get(Some(idp.token(expired))).await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap()),
            (401, "invalid_customer_token")
        );
        let mut other_issuer = claims("u1");
        other_issuer["iss"] = json!("https://evil.example");
        let (status, _) = get(Some(idp.token(other_issuer))).await;
        assert_eq!(status, 401);
        let forger = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let (status, body) = get(Some(IdentityProvider::sign(&forger, claims("u1")))).await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap()),
            (401, "invalid_customer_token")
        );
        let (status, _) = get(Some("not.a.jwt".into())).await;
        assert_eq!(status, 401);
        // Orders are held to the same rule; a secret key acts for any customer.
        app.request(
            Method::POST,
            "/v1/apps/acme/customers/u1/orders",
            Some(&pk),
            Some(json!({"product_ids": ["cs101"]})),
            &[],
        )
        .await
        .error(401, "customer_token_required");
        let token = idp.token(claims("u1"));
        app.request(
            Method::POST,
            "/v1/apps/acme/customers/u1/orders",
            Some(&pk),
            Some(json!({"product_ids": ["cs101"]})),
            &[("x-customer-token", token.as_str())],
        )
        .await
        .expect(201);
        app.get("/v1/apps/acme/customers/u1").await.expect(200);
    }
);

/// Seconds since the epoch, as JWT claims count them.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

both!(
    customer_jwts_must_name_the_configured_issuer_and_audience_and_be_valid_now,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let idp = IdentityProvider::start().await;
        app.patch("/v1/apps/acme", json!({"customer_auth": {"mode": "jwt", "jwks_url": idp.jwks_url, "issuer": "https://id.acme.edu", "audience": "acme-app"}})).await.expect(200);
        let pk = app.key("acme", "publishable", &[]).await;
        let now = unix_now();
        let good = json!({"sub": "u1", "iss": "https://id.acme.edu", "aud": "acme-app", "exp": now + 600, "iat": now, "nbf": now});
        let read = |claims: Value| {
            let token = idp.token(claims);
            let (app, pk) = (&app, pk.clone());
            async move {
                app.request(
                    Method::GET,
                    "/v1/apps/acme/customers/u1",
                    Some(&pk),
                    None,
                    &[("x-customer-token", token.as_str())],
                )
                .await
            }
        };
        let with = |changes: Value| {
            let mut claims = good.clone();
            for (k, v) in changes.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            claims
        };
        read(good.clone()).await.expect(200);
        let leeway = gateway::service::customer_auth::LEEWAY_SECS as i64;
        for (changes, why) in [
            (json!({"iss": null}), "no `iss`"),
            (json!({"aud": null}), "no `aud`"),
            (json!({"aud": "another-app"}), "another audience"),
            (
                json!({"aud": ["another-app"]}),
                "another audience, as a list",
            ),
            (json!({"iss": "https://evil.example"}), "another issuer"),
            (json!({"nbf": now + leeway + 120}), "not valid yet"),
            (json!({"iat": now + leeway + 120}), "issued in the future"),
            (json!({"exp": now - leeway - 120}), "expired"),
        ] {
            let answer = read(with(changes)).await;
            assert_eq!(answer.status, 401, "{why}: {}", answer.body);
            answer.error(401, "invalid_customer_token");
        }
        // Within the leeway, clocks that differ a little are forgiven.
        for changes in [
            json!({"nbf": now + leeway / 2}),
            json!({"iat": now + leeway / 2}),
            json!({"aud": ["acme-app", "another-app"]}),
            json!({"iat": null, "nbf": null}),
        ] {
            read(with(changes)).await.expect(200);
        }
        // An app that names neither issuer nor audience does not ask for them.
        app.patch(
            "/v1/apps/acme",
            json!({"customer_auth": {"mode": "jwt", "jwks_url": idp.jwks_url}}),
        )
        .await
        .expect(200);
        read(with(json!({"iss": null, "aud": null})))
            .await
            .expect(200);
        read(with(json!({"nbf": now + leeway + 120})))
            .await
            .error(401, "invalid_customer_token");
    }
);

both!(
    the_expiry_job_emits_expiry_without_a_read,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        app.post(
            "/v1/apps/acme/customers/u1/grants",
            json!({"product_id": "pass30", "reason": "trial"}),
        )
        .await
        .expect(201);
        app.post(
            "/v1/apps/acme/customers/u2/grants",
            json!({"entitlement_id": "pass", "reason": "forever"}),
        )
        .await
        .expect(201);
        let clock: std::sync::Arc<dyn gateway_core::Clock> = std::sync::Arc::new(app.clock.clone());
        assert_eq!(
            gateway::jobs::expiry::step(&app.cx, &clock).await,
            gateway::jobs::Outcome::Partial(0),
            "nothing is due yet"
        );
        app.clock.advance_millis(31 * 86_400_000);
        assert_eq!(
            gateway::jobs::expiry::step(&app.cx, &clock).await,
            gateway::jobs::Outcome::Partial(1)
        );
        let outbox = app.outbox("u1").await;
        assert_eq!(outbox.last().unwrap().event_type, "entitlement.expired");
        assert_eq!(
            gateway::jobs::expiry::step(&app.cx, &clock).await,
            gateway::jobs::Outcome::Partial(0),
            "done once"
        );
        let snap = app.get("/v1/apps/acme/customers/u1").await.expect(200);
        assert_eq!(snap["entitlements"][0]["status"], "expired");
        assert_eq!(snap["version"], 2);
    }
);

both!(
    a_manual_request_key_makes_one_fact_and_refuses_another_request,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let (course, ebook) = ("course-v1:Acme+CS101+2026", "cs101");
        let grant = |customer: &'static str, product: &'static str, key: &'static str| {
            let app = &app;
            async move {
                app.request(
                    Method::POST,
                    &format!("/v1/apps/acme/customers/{customer}/grants"),
                    Some(ADMIN_KEY),
                    Some(json!({"product_id": product, "reason": "scholarship"})),
                    &[("idempotency-key", key)],
                )
                .await
            }
        };
        grant("learner-1", ebook, "k1").await.expect(201);
        // The HTTP layer keeps answers for a day; past that, only the fact remembers the key.
        let forget = |app: &TestApp| {
            let db = app.db.clone();
            let now = gateway_core::Clock::now(&app.clock).millis();
            async move {
                gateway::db::idempotency::purge(
                    &db,
                    now + 2 * gateway::db::idempotency::KEEP_MS,
                    1000,
                )
                .await
                .unwrap()
            }
        };
        app.clock.advance_millis(25 * 3_600_000);
        assert_eq!(forget(&app).await, 1);

        // The same request again: the same fact, nothing new.
        let snap = grant("learner-1", ebook, "k1").await.expect(201);
        assert_eq!(snap["version"], 1);
        // The key with another customer, or another product: refused, nothing granted.
        grant("learner-2", ebook, "k1")
            .await
            .error(409, "idempotency_key_reused");
        let other = app
            .get("/v1/apps/acme/customers/learner-2")
            .await
            .expect(200);
        assert_eq!(other["version"], 0, "nothing was granted: {other}");
        forget(&app).await;
        grant("learner-1", "pass30", "k1")
            .await
            .error(409, "idempotency_key_reused");
        forget(&app).await;

        // A revoke whose key once served the grant is refused, not taken as done.
        let revoke = |key: &'static str| {
            let app = &app;
            async move {
                app.request(
                    Method::DELETE,
                    &format!("/v1/apps/acme/customers/learner-1/grants/{course}"),
                    Some(ADMIN_KEY),
                    Some(json!({"reason": "chargeback"})),
                    &[("idempotency-key", key)],
                )
                .await
            }
        };
        revoke("k1").await.error(409, "idempotency_key_reused");
        let snap = app
            .get("/v1/apps/acme/customers/learner-1")
            .await
            .expect(200);
        assert_eq!(entitlement(&snap, course)["status"], "active");
        let snap = revoke("k2").await.expect(200);
        assert_eq!(entitlement(&snap, course)["status"], "revoked");
        forget(&app).await;
        // And the revoke repeated with its own key is answered as the first time, changing nothing.
        let again = revoke("k2").await.expect(200);
        assert_eq!(again["version"], snap["version"]);
        assert_eq!(app.count("manual_facts").await, 2);
    }
);
