//! `notify-load`: sends N signed App Store Server Notifications V2 from M concurrent clients to a
//! running gateway and reports notifications/s and latency percentiles. Every notification is a
//! distinct purchase (ONE_TIME_CHARGE) of a customer who started an order, so each one is a full
//! decision: verification, the decision transaction with its durable commit, and the answer.
//!
//! It sets up its own app (`load-<random>`) through the admin API, pinning a fresh simulator chain.
//! Requests go only to the gateway URL given, which must be on this machine.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use store_sim::apple::{AppleChain, Notification};

#[derive(Parser)]
#[command(
    about = "Send N signed App Store notifications from M clients to a gateway and measure it."
)]
struct Args {
    /// The gateway, e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// An admin key of the gateway (to create the load app).
    #[arg(long, env = "GATEWAY_BOOTSTRAP_ADMIN_KEY")]
    admin_key: String,
    /// Notifications to send.
    #[arg(short = 'n', long, default_value_t = 2000)]
    count: usize,
    /// Concurrent clients.
    #[arg(short = 'c', long, default_value_t = 16)]
    clients: usize,
    /// Customers the purchases are spread over.
    #[arg(long, default_value_t = 200)]
    customers: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = url_host(&args.gateway)?;
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        bail!("notify-load only sends to a gateway on this machine (loopback); got {host}");
    }
    let http = reqwest::Client::new();
    let chain = Arc::new(AppleChain::generate()?);
    let app = format!("load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let bundle = "edu.load.app";
    let admin = |m: reqwest::Method, path: String, body: serde_json::Value| {
        http.request(m, format!("{}{path}", args.gateway))
            .bearer_auth(&args.admin_key)
            .json(&body)
            .send()
    };
    let res = admin(reqwest::Method::POST, "/v1/apps".into(), json!({"id": app, "name": "Load", "app_store": {"bundle_id": bundle, "environment": "Sandbox", "root_certificates_pem": [chain.root_pem()]}})).await?;
    if !res.status().is_success() {
        bail!(
            "creating the load app failed: {} {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );
    }
    admin(reqwest::Method::PUT, format!("/v1/apps/{app}/products/course"), json!({"kind": "non_consumable", "store_skus": {"app_store": "edu.load.course"}, "entitlements": [{"id": "course"}]})).await?.error_for_status()?;
    let mut tokens = Vec::new();
    for c in 0..args.customers.max(1) {
        let order: serde_json::Value = admin(
            reqwest::Method::POST,
            format!("/v1/apps/{app}/customers/c{c}/orders"),
            json!({"product_ids": ["course"]}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
        tokens.push(
            order["app_account_token"]
                .as_str()
                .context("an order has a token")?
                .to_owned(),
        );
    }

    // Sign everything first: the measurement is the gateway's, not the signer's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut bodies = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let id = format!("{}", 3_000_000_000_u64 + i as u64);
        let tx = json!({"transactionId": id, "originalTransactionId": id, "bundleId": bundle, "productId": "edu.load.course",
            "purchaseDate": now, "signedDate": now, "environment": "Sandbox", "type": "Non-Consumable",
            "inAppOwnershipType": "PURCHASED", "appAccountToken": tokens[i % tokens.len()]});
        let uuid = uuid::Uuid::new_v4().to_string();
        bodies.push(chain.notification(&Notification {
            notification_type: "ONE_TIME_CHARGE",
            uuid: &uuid,
            signed_date: now,
            bundle_id: bundle,
            environment: "Sandbox",
            signed_transaction: Some(chain.sign(&tx)?),
            ..Default::default()
        })?);
    }
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = Arc::new(format!(
        "{}/v1/apps/{app}/notifications/app_store",
        args.gateway
    ));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (http, bodies, next, url) = (http.clone(), bodies.clone(), next.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let ok = http
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                latencies.push(t.elapsed());
                if !ok {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failures = 0;
    for w in workers {
        let (l, f) = w.await?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{} notifications from {} clients in {:.2} s: {:.0} notifications/s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} failed",
        latencies.len(),
        args.clients,
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        failures
    );
    if failures > 0 {
        bail!("{failures} notifications were not answered 2xx");
    }
    Ok(())
}

fn url_host(url: &str) -> anyhow::Result<String> {
    let rest = url
        .split("://")
        .nth(1)
        .context("the gateway URL starts with http://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default().to_owned()
    };
    Ok(host)
}
