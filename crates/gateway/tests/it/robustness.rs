//! Long polls, retries and races: what production traffic does that a happy path does not.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::{both, helpers::*};

both!(
    a_long_poll_answers_when_the_snapshot_changes,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let url = format!(
            "{}/v1/apps/acme/customers/u1?wait=20&after_version=0",
            app.addr
        );
        let client = app.client.clone();
        let started = Instant::now();
        let poll = tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.post(
            "/v1/apps/acme/customers/u1/grants",
            json!({"product_id": "cs101", "reason": "gift"}),
        )
        .await
        .expect(201);
        let snap = poll.await.unwrap();
        assert_eq!(snap["version"], 1);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the poll woke on the change, not at its deadline"
        );

        // Nothing changes: the poll answers with the same version when its wait runs out.
        let snap = app
            .get("/v1/apps/acme/customers/u1?wait=1&after_version=1")
            .await
            .expect(200);
        assert_eq!(snap["version"], 1);
        // Already newer: at once.
        let snap = app
            .get("/v1/apps/acme/customers/u1?wait=50&after_version=0")
            .await
            .expect(200);
        assert_eq!(snap["version"], 1);
        app.get("/v1/apps/acme/customers/u1?wait=3600&after_version=1")
            .await
            .error(400, "invalid_wait");
        app.get("/v1/apps/acme/customers/u1?wait=abc&after_version=1")
            .await
            .error(400, "invalid_query");
        app.get("/v1/apps/acme/customers/u1/timeline?limit=many")
            .await
            .error(400, "invalid_query");
    }
);

both!(
    the_running_server_expires_access_by_itself,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let snap = app
            .post(
                "/v1/apps/acme/customers/u1/grants",
                json!({"product_id": "pass30", "reason": "trial"}),
            )
            .await
            .expect(201);
        assert_eq!(snap["version"], 1);
        app.clock.advance_millis(31 * 86_400_000);
        // No read re-evaluates here: the server's own expiry loop must (it ticks every 5 s).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let outbox = app.outbox("u1").await;
            if outbox
                .last()
                .is_some_and(|e| e.event_type == "entitlement.expired")
            {
                break;
            }
            assert!(Instant::now() < deadline, "the expiry loop never ran");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
);

both!(
    an_abandoned_idempotency_claim_expires,
    |app: TestApp| async move {
        let owner = gateway::service::keys::hash_key(ADMIN_KEY);
        let now = t0().millis();
        for (key, age) in [("stale", 200_000), ("fresh", 1_000)] {
            sqlx::query("INSERT INTO idempotency_keys (key_id, idem_key, request_hash, created_at) VALUES ($1, $2, 'x', $3)")
            .bind(&owner).bind(key).bind(now - age)
            .execute(app.db.writer()).await.unwrap();
        }
        let body = json!({"id": "acme", "name": "Acme"});
        app.request(
            Method::POST,
            "/v1/apps",
            Some(ADMIN_KEY),
            Some(body.clone()),
            &[("idempotency-key", "fresh")],
        )
        .await
        .error(409, "idempotency_key_in_use");
        app.request(
            Method::POST,
            "/v1/apps",
            Some(ADMIN_KEY),
            Some(body.clone()),
            &[("idempotency-key", "stale")],
        )
        .await
        .expect(201);
        let replay = app
            .request(
                Method::POST,
                "/v1/apps",
                Some(ADMIN_KEY),
                Some(body),
                &[("idempotency-key", "stale")],
            )
            .await;
        assert_eq!(replay.status, 201);
        assert_eq!(replay.headers["idempotent-replayed"], "true");
    }
);

both!(
    a_spend_key_reused_for_another_spend_is_refused,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let c = "/v1/apps/acme/customers/u1";
        app.post(
            &format!("{c}/grants"),
            json!({"product_id": "coins100", "reason": "gift"}),
        )
        .await
        .expect(201);
        let other = app.key("acme", "secret", &["customers"]).await;
        let spend = |key: String, amount: i64| {
            let app = &app;
            async move {
                app.request(
                    Method::POST,
                    &format!("{c}/balances/COINS/spend"),
                    Some(&key),
                    Some(json!({"amount": amount, "reason": "r"})),
                    &[("idempotency-key", "order-1")],
                )
                .await
            }
        };
        spend(ADMIN_KEY.to_owned(), 10).await.expect(200);
        // Another caller, so the HTTP replay does not answer; the ledger sees the same key.
        spend(other.clone(), 50)
            .await
            .error(409, "idempotency_key_reused");
        // The same caller repeating its refused request is refused again, by the HTTP replay.
        spend(other, 10).await.error(409, "idempotency_key_reused");
        assert_eq!(app.get(c).await.expect(200)["balances"]["COINS"], 90);
    }
);

both!(
    a_grant_retried_after_a_lost_answer_grants_once,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let c = "/v1/apps/acme/customers/u1";
        let grants = format!("{c}/grants");
        let grant = || {
            app.request(
                Method::POST,
                &grants,
                Some(ADMIN_KEY),
                Some(json!({"product_id": "coins100", "reason": "gift"})),
                &[("idempotency-key", "grant-1")],
            )
        };
        grant().await.expect(201);
        // The answer was lost and the replay record with it: the retry still adds nothing.
        sqlx::query("DELETE FROM idempotency_keys")
            .execute(app.db.writer())
            .await
            .unwrap();
        let snap = grant().await.expect(201);
        assert_eq!(snap["balances"]["COINS"], 100);
        assert_eq!(snap["version"], 1);
        let pass = format!("{c}/grants/pass");
        let revoke = || {
            app.request(
                Method::DELETE,
                &pass,
                Some(ADMIN_KEY),
                Some(json!({"reason": "x"})),
                &[("idempotency-key", "rev-1")],
            )
        };
        app.post(
            &format!("{c}/grants"),
            json!({"entitlement_id": "pass", "reason": "gift"}),
        )
        .await
        .expect(201);
        revoke().await.expect(200);
        sqlx::query("DELETE FROM idempotency_keys")
            .execute(app.db.writer())
            .await
            .unwrap();
        let snap = revoke().await.expect(200);
        assert_eq!(snap["version"], 3, "the retried revoke is the same revoke");
    }
);

both!(
    racing_for_one_sku_never_fails_the_server,
    |app: TestApp| async move {
        app.create_app("acme").await;
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (client, url) = (
                app.client.clone(),
                format!("{}/v1/apps/acme/products/p{i}", app.addr),
            );
            tasks.push(tokio::spawn(async move {
            client.put(url).bearer_auth(ADMIN_KEY).json(&json!({"kind": "non_consumable", "store_skus": {"play_store": "shared"}, "entitlements": [{"id": format!("e{i}")}]}))
                .send().await.unwrap().status().as_u16()
        }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        statuses.sort();
        assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409]);
        let owners: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM product_skus WHERE sku = 'shared'")
                .fetch_one(app.db.reader())
                .await
                .unwrap();
        assert_eq!(owners, 1);
        assert_eq!(
            app.count("products").await,
            1,
            "the refused ones were rolled back whole"
        );
    }
);

both!(
    what_is_read_can_be_written_back,
    |app: TestApp| async move {
        app.seed_catalog("acme").await;
        let product = app.get("/v1/apps/acme/products/cs101").await.expect(200);
        let written = app
            .put("/v1/apps/acme/products/cs101", product.clone())
            .await
            .expect(200);
        assert_eq!(written, product);
        app.put("/v1/apps/acme/products/other", product)
            .await
            .error(422, "id_mismatch");

        app.post("/v1/apps", json!({"id": "web", "name": "Web", "stripe": {"webhook_secret": "whsec_abc", "secret_key": "sk_live_x"}, "revenuecat": {"webhook_authorization": "Bearer rc"}})).await.expect(201);
        let patched = app
            .patch(
                "/v1/apps/web",
                json!({"stripe": {"api_base_url": "http://127.0.0.1:9/"}, "revenuecat": {}}),
            )
            .await
            .expect(200);
        assert_eq!(patched["stripe"]["webhook_secret_set"], true);
        assert_eq!(patched["stripe"]["secret_key_set"], true);
        assert_eq!(patched["revenuecat"]["webhook_authorization_set"], true);
        app.post(
            "/v1/apps",
            json!({"id": "web2", "name": "Web", "stripe": {}}),
        )
        .await
        .error(400, "invalid_stripe");
    }
);

both!(
    a_begin_cancelled_in_flight_leaves_no_transaction_on_the_connection,
    |app: TestApp| async move {
        use std::{future::Future, task::Poll};
        sqlx::query("CREATE TABLE begin_probe (n INTEGER NOT NULL)")
            .execute(app.db.writer())
            .await
            .unwrap();
        // One connection, handed out without a test ping: once it is idle, the first poll of a begin
        // takes it at once, sends BEGIN and waits for the reply. Before `db::begin_on` ran the BEGIN
        // in a task of its own, dropping the begin then left PostgreSQL inside a transaction on a
        // connection the pool handed on (sqlx #4393).
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect(&app.test_db.url)
            .await
            .unwrap();
        // On PostgreSQL the reply to this BEGIN comes 100 ms after it is sent, so the begin is surely
        // still in flight when it is dropped. SQLite's worker thread may answer within the first
        // poll; what follows must hold either way.
        let slow_begin = match app.backend {
            Backend::Postgres => Some("BEGIN; SELECT pg_sleep(0.1)"),
            Backend::Sqlite => None,
        };
        for n in 0..5 {
            while pool.num_idle() < 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            {
                let mut begin = std::pin::pin!(gateway::db::begin_on(&pool, slow_begin));
                let first = std::future::poll_fn(|cx| Poll::Ready(begin.as_mut().poll(cx))).await;
                if app.backend == Backend::Postgres {
                    assert!(first.is_pending(), "the BEGIN is in flight");
                }
                // Dropped here, as a request whose client went away drops its handler.
            }
            // The next user of the connection writes without a transaction: that write is committed
            // (another connection sees it), not held in a transaction left open by the dropped begin.
            sqlx::query("INSERT INTO begin_probe (n) VALUES ($1)")
                .bind(n)
                .execute(&pool)
                .await
                .unwrap();
            let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM begin_probe WHERE n = $1")
                .bind(n)
                .fetch_one(app.db.reader())
                .await
                .unwrap();
            assert_eq!(seen, 1, "round {n}: the write was committed");
            // And a transaction begun there is a fresh one, which commits what it wrote.
            let mut tx = gateway::db::begin_on(&pool, None).await.unwrap();
            sqlx::query("INSERT INTO begin_probe (n) VALUES ($1)")
                .bind(100 + n)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM begin_probe WHERE n = $1")
                .bind(100 + n)
                .fetch_one(app.db.reader())
                .await
                .unwrap();
            assert_eq!(seen, 1, "round {n}: the transaction committed");
        }
        pool.close().await;
    }
);
