//! `purchase-gateway demo`: the whole story on this machine, with nothing configured. It starts the
//! gateway on a fresh SQLite file next to the App Store and Google Play simulators, sets up an app
//! and its catalog over the real API, buys a course on iOS and has Apple refund it, buys it again on
//! the web through Stripe Checkout, buys the same course on Android (granted, then acknowledged to
//! Play) and has Google refund it, sells and renews a subscription, printing each customer's
//! timeline as it happens, then keeps serving for you to try more.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use gateway::config::{Config, LogFormat};
use gateway_core::SystemClock;
use serde_json::{Value, json};
use store_sim::{
    SimClock,
    apple::{
        api::{ApiKey, AppStoreServer},
        chain::{AppleChain, Notification},
    },
    play::{Action, Buy, PlaySim, PushMode, PushSettings, Refund},
    stripe::{PayMode, Price, StripeSim},
};
use tokio_util::sync::CancellationToken;

const BUNDLE: &str = "edu.demo.app";
/// The Android app's package name (the same app on Google Play).
const PACKAGE: &str = "edu.demo.app";
/// The service account Google's Pub/Sub pushes as.
const PUSH_ACCOUNT: &str = "rtdn-push@demo-project.iam.gserviceaccount.com";

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
    // And Google Play: its token endpoint, Play Developer API and Pub/Sub pushes, on loopback.
    let play = PlaySim::new(SimClock::system())?;
    let play_url = play.serve().await?;
    play.add_package(PACKAGE);
    let account = play.create_service_account("demo-project")?;
    play.grant(&account, PACKAGE)?;
    let rtdn_url = format!("http://{addr}/v1/apps/demo/notifications/play_store");
    play.set_push(PACKAGE, PushSettings::oidc(&rtdn_url, PUSH_ACCOUNT))?;
    // And Stripe: its API, hosted checkout pages and signed webhooks.
    let stripe = StripeSim::new(SimClock::system())?;
    stripe.add_price(Price::one_time("price_cs101", 4999, "usd", "CS101"));
    let stripe_url = stripe.serve().await?;
    let whsec =
        stripe.add_webhook_endpoint(&format!("http://{addr}/v1/apps/demo/notifications/stripe"));

    let demo = Demo {
        gateway: crate::sim::Gateway {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
            key: admin_key.clone(),
        },
        chain,
    };
    println!(
        "Purchase Gateway demo: the gateway listens on http://{addr}, the App Store simulator on {sim_url}, the Google Play simulator on {play_url}, the Stripe simulator on {stripe_url}."
    );
    println!("Database: {}\n", dir.join("gateway.db").display());

    println!(
        "1. An operator creates an app that sells on the App Store, Google Play and the web, and its catalog."
    );
    demo.gateway.call(reqwest::Method::POST, "/v1/apps", Some(json!({"id": "demo", "name": "Demo Academy", "app_store": {
        "bundle_id": BUNDLE, "environment": "Sandbox", "root_certificates_pem": [demo.chain.root_pem()], "api_base_url": sim_url,
        "issuer_id": api_key.issuer_id, "key_id": api_key.key_id, "private_key_pem": api_key.private_key_pem},
        "play_store": {"package_name": PACKAGE, "service_account_json": account.key_file_json(), "api_base_url": play_url,
        "google_certs_url": format!("{play_url}/oauth2/v3/certs"), "pubsub_audience": rtdn_url, "pubsub_service_account": PUSH_ACCOUNT},
        "stripe": {"secret_key": stripe.secret_key(), "webhook_secret": whsec, "api_base_url": stripe_url}}))).await?;
    demo.gateway.call(reqwest::Method::PUT, "/v1/apps/demo/products/cs101", Some(json!({"kind": "non_consumable", "store_skus": {"app_store": "edu.demo.cs101", "play_store": "cs101", "stripe_price": "price_cs101"},
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
        "   app `demo` (bundle and package {BUNDLE}), products `cs101` (a course, on every store) and `premium` (a monthly subscription).\n"
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

    println!(
        "\n4. Ada buys the course again, on the web: the gateway starts a Stripe Checkout; Stripe's event grants it."
    );
    let started = demo.gateway.call(reqwest::Method::POST, "/v1/apps/demo/checkout", Some(json!({"app_user_id": "ada", "product_id": "cs101",
        "success_url": format!("http://{addr}/pay/demo/return?session_id={{CHECKOUT_SESSION_ID}}"), "cancel_url": "https://demo.example/courses"}))).await?;
    let session = started["checkout_session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!("   checkout: {}", started["url"]);
    stripe.pay(&session, PayMode::Now).await?;
    demo.timeline("ada", &mut ada).await?;
    println!("   the return page: http://{addr}/pay/demo/return?session_id={session}");

    println!(
        "\n5. Linus buys the same course in the Android app; the app hands the gateway Play's purchase token."
    );
    let order = demo
        .gateway
        .call(
            reqwest::Method::POST,
            "/v1/apps/demo/customers/linus/orders",
            Some(json!({"product_ids": ["cs101"], "country": "US"})),
        )
        .await?;
    let mut buy = Buy::new(PACKAGE, "cs101");
    buy.obfuscated_account_id = order["obfuscated_account_id"].as_str().map(str::to_owned);
    // Play's notification of the purchase is left for later: here the app reports it first.
    let bought = play.act_with(Action::Buy(buy), PushMode::Skip).await?;
    let purchase_token = bought.purchase_token.unwrap_or_default();
    let answer = demo.gateway.call(reqwest::Method::POST, "/v1/apps/demo/purchases", Some(json!({"app_user_id": "linus", "store": "play_store", "purchase_token": purchase_token, "product_id": "cs101"}))).await?;
    println!("   answer: {}", answer["status"]);
    let mut linus = 0;
    demo.timeline("linus", &mut linus).await?;
    // Play refunds a purchase not acknowledged within three days: the outbox acknowledges it once
    // the grant has committed.
    let acknowledged = acknowledged(&play, &purchase_token).await;
    println!(
        "   acknowledged to Google Play: {}",
        if acknowledged {
            "yes"
        } else {
            "not yet (the outbox retries)"
        }
    );

    println!(
        "\n6. Google refunds Linus; Play's real-time developer notification reaches the gateway."
    );
    let refund = play.refund(&purchase_token, Refund::default()).await?;
    println!(
        "   notification: {}",
        refund
            .delivery
            .and_then(|d| d.status)
            .map_or_else(|| "not delivered".to_owned(), |s| format!("HTTP {s}"))
    );
    demo.timeline("linus", &mut linus).await?;

    println!("\n7. Grace subscribes to premium; a month later Apple renews it.");
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
    println!(
        "  purchase-gateway sim google purchase --sim {play_url} --purchase-token {purchase_token}"
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

/// Whether Play took the purchase's acknowledgement within a few seconds.
async fn acknowledged(play: &PlaySim, token: &str) -> bool {
    for _ in 0..50 {
        if play
            .acknowledgements()
            .iter()
            .any(|a| a.purchase_token == token)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
