//! `purchase-gateway demo`: the whole App Store story on this machine, with nothing configured. It
//! starts the gateway on a fresh SQLite file next to the store simulator, sets up an app and its
//! catalog over the real API, buys a course, has Apple refund it, sells and renews a subscription,
//! printing each customer's timeline as it happens, then keeps serving for you to try more.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use gateway::config::{Config, LogFormat};
use gateway_core::SystemClock;
use serde_json::{Value, json};
use store_sim::apple::{
    api::{ApiKey, AppStoreServer},
    chain::{AppleChain, Notification},
};
use tokio_util::sync::CancellationToken;

const BUNDLE: &str = "edu.demo.app";

struct Demo {
    gateway: crate::sim::Gateway,
    chain: Arc<AppleChain>,
}

impl Demo {
    async fn notify(&self, n: &Notification<'_>) -> anyhow::Result<Value> {
        let body = self.chain.notification(n)?;
        let res = self
            .gateway
            .http
            .post(format!(
                "{}/v1/apps/demo/notifications/app_store",
                self.gateway.base
            ))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        Ok(res.json().await?)
    }

    async fn timeline(&self, customer: &str, since: &mut i64) -> anyhow::Result<()> {
        let t = self
            .gateway
            .call(
                reqwest::Method::GET,
                &format!("/v1/apps/demo/customers/{customer}/timeline?limit=50"),
                None,
            )
            .await?;
        let mut rows: Vec<&Value> = t["events"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        rows.reverse();
        let seen = *since;
        for row in rows
            .into_iter()
            .filter(|r| r["seq"].as_i64().unwrap_or(0) > seen)
        {
            *since = row["seq"].as_i64().unwrap_or(*since);
            let effects: Vec<String> = row["detail"]["effects"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(|x| x["type"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "    {customer} #{}: {}",
                row["seq"],
                row["cause"].as_str().unwrap_or("")
            );
            if !effects.is_empty() {
                println!("        -> {}", effects.join(", "));
            }
        }
        Ok(())
    }
}

fn transaction(
    id: &str,
    original: &str,
    sku: &str,
    kind: &str,
    purchased: i64,
    extra: Value,
) -> Value {
    let mut t = json!({"transactionId": id, "originalTransactionId": original, "bundleId": BUNDLE, "productId": sku,
        "purchaseDate": purchased, "originalPurchaseDate": purchased, "signedDate": purchased, "type": kind,
        "environment": "Sandbox", "inAppOwnershipType": "PURCHASED", "quantity": 1, "storefront": "USA",
        "transactionReason": "PURCHASE", "price": 49990, "currency": "USD"});
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        t.extend(extra.clone());
    }
    t
}

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "purchase-gateway-demo-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let admin_key = format!("sk_demo_{}", uuid::Uuid::new_v4().simple());
    let config = Config {
        listen: listen.to_string(),
        database_url: format!("sqlite://{}", dir.join("gateway.db").display()),
        bootstrap_admin_key: Some(gateway::model::Secret::new(admin_key.clone())),
        log_format: LogFormat::Pretty,
        log_level: "warn".into(),
    };
    let state = gateway::prepare(config, Arc::new(SystemClock))
        .await
        .context("starting the gateway")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("could not listen on {listen}; try --listen 127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let server = tokio::spawn(async move { gateway::run(state, listener, token).await });

    // The store simulator: Apple's signing chain and App Store Server API, on loopback.
    let chain = Arc::new(AppleChain::generate()?);
    let api_key = ApiKey::generate("57246542-96fe-1a63-e053-0824d011072a", "DEMOKEY123")?;
    let apple = AppStoreServer::new(chain.clone(), api_key.clone(), BUNDLE);
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", sim_listener.local_addr()?);
    let router = apple.router();
    tokio::spawn(async move { axum::serve(sim_listener, router).await });

    let demo = Demo {
        gateway: crate::sim::Gateway {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
            key: admin_key.clone(),
        },
        chain,
    };
    println!(
        "Purchase Gateway demo: the gateway listens on http://{addr}, the App Store simulator on {sim_url}."
    );
    println!("Database: {}\n", dir.join("gateway.db").display());

    println!("1. An operator creates an app that sells on the App Store, and its catalog.");
    demo.gateway.call(reqwest::Method::POST, "/v1/apps", Some(json!({"id": "demo", "name": "Demo Academy", "app_store": {
        "bundle_id": BUNDLE, "environment": "Sandbox", "root_certificates_pem": [demo.chain.root_pem()], "api_base_url": sim_url,
        "issuer_id": api_key.issuer_id, "key_id": api_key.key_id, "private_key_pem": api_key.private_key_pem}}))).await?;
    demo.gateway.call(reqwest::Method::PUT, "/v1/apps/demo/products/cs101", Some(json!({"kind": "non_consumable", "store_skus": {"app_store": "edu.demo.cs101"},
        "entitlements": [{"id": "course-v1:Demo+CS101+2026", "attributes": {"course_id": "course-v1:Demo+CS101+2026", "mode": "verified"}}]}))).await?;
    demo.gateway.call(
        reqwest::Method::PUT,
        "/v1/apps/demo/products/premium",
        Some(
            json!({"kind": "subscription", "store_skus": {"app_store": "edu.demo.premium.monthly"},
        "entitlements": [{"id": "premium"}]}),
        ),
    )
    .await?;
    println!(
        "   app `demo` (bundle {BUNDLE}), products `cs101` (a course) and `premium` (a monthly subscription).\n"
    );

    let now = gateway_core::Clock::now(&SystemClock).millis();
    println!(
        "2. Ada buys the course in the iOS app; the app hands the gateway what StoreKit signed."
    );
    let order = demo
        .gateway
        .call(
            reqwest::Method::POST,
            "/v1/apps/demo/customers/ada/orders",
            Some(json!({"product_ids": ["cs101"], "country": "US"})),
        )
        .await?;
    let token = order["app_account_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let bought = transaction(
        "2000000100",
        "2000000100",
        "edu.demo.cs101",
        "Non-Consumable",
        now,
        json!({"appAccountToken": token}),
    );
    let answer = demo.gateway.call(reqwest::Method::POST, "/v1/apps/demo/purchases", Some(json!({"app_user_id": "ada", "store": "app_store", "signed_transaction": demo.chain.sign(&bought)?}))).await?;
    println!(
        "   answer: {} (finish the StoreKit transaction: {})",
        answer["status"], answer["finish_transaction"]
    );
    let mut ada = 0;
    demo.timeline("ada", &mut ada).await?;

    println!("\n3. Apple refunds Ada; its App Store Server Notification reaches the gateway.");
    let refunded = transaction(
        "2000000100",
        "2000000100",
        "edu.demo.cs101",
        "Non-Consumable",
        now,
        json!({"appAccountToken": token, "revocationDate": now + 1000, "revocationReason": 0, "signedDate": now + 1000}),
    );
    let n = demo
        .notify(&Notification {
            notification_type: "REFUND",
            uuid: &uuid::Uuid::new_v4().to_string(),
            signed_date: now + 1000,
            bundle_id: BUNDLE,
            environment: "Sandbox",
            signed_transaction: Some(demo.chain.sign(&refunded)?),
            ..Default::default()
        })
        .await?;
    println!("   notification: {}", n["status"]);
    demo.timeline("ada", &mut ada).await?;

    println!("\n4. Grace subscribes to premium; a month later Apple renews it.");
    let month = 30 * 86_400_000_i64;
    apple.put_transaction(transaction(
        "2000000200",
        "2000000200",
        "edu.demo.premium.monthly",
        "Auto-Renewable Subscription",
        now,
        json!({"expiresDate": now + month}),
    ));
    // The app only knows the transaction id; the gateway asks the App Store Server API.
    let answer = demo.gateway.call(reqwest::Method::POST, "/v1/apps/demo/purchases", Some(json!({"app_user_id": "grace", "store": "app_store", "transaction_id": "2000000200"}))).await?;
    println!(
        "   answer: {} until {}",
        answer["status"], answer["purchase"]["expires_at"]
    );
    let renewal = transaction(
        "2000000201",
        "2000000200",
        "edu.demo.premium.monthly",
        "Auto-Renewable Subscription",
        now + month,
        json!({"expiresDate": now + 2 * month, "transactionReason": "RENEWAL"}),
    );
    demo.notify(&Notification {
        notification_type: "DID_RENEW",
        uuid: &uuid::Uuid::new_v4().to_string(),
        signed_date: now + month,
        bundle_id: BUNDLE,
        environment: "Sandbox",
        signed_transaction: Some(demo.chain.sign(&renewal)?),
        ..Default::default()
    })
    .await?;
    let mut grace = 0;
    demo.timeline("grace", &mut grace).await?;
    let snap = demo
        .gateway
        .call(reqwest::Method::GET, "/v1/apps/demo/customers/grace", None)
        .await?;
    println!(
        "   premium now runs until {}",
        snap["entitlements"][0]["expires_at"]
    );

    println!("\nThe gateway keeps serving on http://{addr} until Ctrl-C. Try:");
    println!(
        "  curl -s http://{addr}/v1/apps/demo/customers/ada -H 'Authorization: Bearer {admin_key}'"
    );
    println!(
        "  curl -s http://{addr}/v1/apps/demo/customers/grace/timeline -H 'Authorization: Bearer {admin_key}'"
    );
    println!("  curl -s http://{addr}/openapi.json | head -c 300");

    let signal = shutdown.clone();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => signal.cancel(),
        _ = shutdown.cancelled() => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}
