//! `notify-load`: sends N signed App Store Server Notifications V2 from M concurrent clients to a
//! running gateway and reports notifications/s and latency percentiles. Every notification is a
//! distinct purchase (ONE_TIME_CHARGE) of a customer who started an order, so each one is a full
//! decision: verification, the decision transaction with its durable commit, and the answer.
//!
//! It sets up its own app (`load-<random>`) through the admin API, pinning a fresh simulator chain.
//! Requests go only to the gateway URL given, which must be on this machine.
//!
//! With `--lms`, it also serves the simulator's stand-in Open edX LMS, points an `openedx` endpoint of
//! the app at it, gives every notification a customer of its own (so each one enrolls a learner),
//! and reports how long each purchase took to reach the LMS: from sending the notification to the
//! LMS taking the enrollment call.
//!
//! With `--submit`, the same purchases are submitted as an app submits them (`POST .../purchases`
//! with the signed transaction), which answers with the customer's snapshot. With `--give-up-percent`,
//! that share of the clients' requests is abandoned at a moment within `--give-up-within-ms`, the
//! connection dropped, as by a client that goes away: the gateway must stay whole for the others.
//!
//! With `--store play`, the purchases are Google Play's: this process serves the Play simulator (its
//! token endpoint, Developer API and Google's OIDC keys), buys each purchase there, and sends each as
//! a Real-time developer notification in a Pub/Sub push with a Google-signed OIDC token, so each one
//! is a push verified, a purchase read from the simulated Play Developer API, a decision, and an
//! acknowledgement owed (performed by the gateway's outbox after the answer). The simulator runs in
//! this process, on the same machine: its CPU is counted beside the gateway's.
//!
//! With `--store stripe`, this process serves the Stripe simulator; each purchase is a Checkout
//! Session the gateway starts (`POST .../checkout`), paid in the simulator, and its
//! `checkout.session.completed` event is sent signed as Stripe signs it, so each one is a signature
//! checked, the PaymentIntent read from the simulated Stripe API, and a decision. With
//! `--store revenuecat`, each purchase is a RevenueCat `NON_RENEWING_PURCHASE` webhook with the
//! app's Authorization header: the gateway's cost alone, as RevenueCat is taken on its word.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use store_sim::apple::chain::{AppleChain, Notification};

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
    /// The store whose notifications are sent: `app_store` (signed App Store Server Notifications),
    /// `play` (Real-time developer notifications as authenticated Pub/Sub pushes, each purchase read
    /// from the Play simulator this process serves), `stripe` (signed webhook events of Checkout
    /// Sessions paid in the Stripe simulator this process serves) or `revenuecat` (webhooks).
    #[arg(long, default_value = "app_store", value_parser = ["app_store", "play", "stripe", "revenuecat"])]
    store: String,
    /// Serve a stand-in Open edX LMS and measure purchase -> LMS-enrolled latency (one customer per
    /// notification).
    #[arg(long)]
    lms: bool,
    /// With --lms: the stand-in LMS's throttle (`on`: Open edX's 120 calls a minute for staff, the
    /// gateway pacing itself at its default 100; `off`: the limit lifted, as by turning off the LMS's
    /// rate-limit configuration, and the endpoint's pace raised to match).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    lms_throttle: String,
    /// With --lms: the endpoint's `requests_per_minute` instead of the one `--lms-throttle` implies
    /// (above the LMS's limit, it shows the 429s and their `Retry-After` at work).
    #[arg(long)]
    lms_pace: Option<u32>,
    /// Submit purchases (`POST /v1/apps/{app}/purchases`) instead of sending notifications.
    #[arg(long)]
    submit: bool,
    /// Percent of requests the client abandons before the answer (dropping the connection).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
    give_up_percent: u64,
    /// An abandoned request is dropped at a moment spread over this many milliseconds.
    #[arg(long, default_value_t = 20)]
    give_up_within_ms: u64,
}

/// How one request ended.
#[derive(Default)]
struct Tally {
    ok: usize,
    client_errors: usize,
    server_errors: usize,
    no_answer: usize,
    given_up: usize,
    /// Notifications answered 2xx with a status other than `decided` (held, recorded, duplicate).
    undecided: usize,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.no_answer += other.no_answer;
        self.given_up += other.given_up;
        self.undecided += other.undecided;
    }

    fn failures(&self) -> usize {
        self.client_errors + self.server_errors + self.no_answer
    }
}

/// When request `i` is abandoned, if it is: spread evenly by a multiplicative hash, so a run is
/// repeatable and needs no random source.
fn give_up_after(i: usize, percent: u64, within_ms: u64) -> Option<Duration> {
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if (h >> 32) % 100 >= percent {
        return None;
    }
    Some(Duration::from_micros((h >> 8) % (within_ms.max(1) * 1000)))
}

const COURSE: &str = "course-v1:Load+C1+2026";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.lms && args.give_up_percent > 0 {
        bail!("--lms counts an enrollment per request: it cannot be used with --give-up-percent");
    }
    if args.lms {
        args.customers = args.count;
    }
    let store = args.store.clone();
    let play = store == "play";
    if store != "app_store" && (args.submit || args.lms) {
        bail!("--store {store} sends notifications: it cannot be used with --submit or --lms");
    }
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
    admin(reqwest::Method::PUT, format!("/v1/apps/{app}/products/course"), json!({"kind": "non_consumable", "store_skus": {"app_store": "edu.load.course", "play_store": "load_course", "stripe_price": STRIPE_PRICE}, "entitlements": [{"id": "course", "attributes": {"course_id": COURSE, "mode": "verified"}}]})).await?.error_for_status()?;
    let lms = if args.lms {
        let lms = store_sim::openedx::Lms::new("load-client", "load-secret");
        lms.add_course(
            COURSE,
            store_sim::openedx::Course {
                modes: vec![
                    store_sim::openedx::Mode::new("audit"),
                    store_sim::openedx::Mode::new("verified"),
                ],
                enrollment_end: None,
            },
        );
        for c in 0..args.customers {
            lms.add_user(&format!("c{c}"));
        }
        let throttled = args.lms_throttle == "on";
        lms.throttle(throttled);
        let url = lms.serve().await?;
        let pace = args
            .lms_pace
            .unwrap_or(if throttled { 100 } else { 100_000 });
        admin(
            reqwest::Method::POST,
            format!("/v1/apps/{app}/webhook_endpoints"),
            json!({"kind": "openedx", "url": url,
            "openedx": {"client_id": "load-client", "client_secret": "load-secret",
                "requests_per_minute": pace}}),
        )
        .await?
        .error_for_status()?;
        Some(lms)
    } else {
        None
    };
    // Orders from several clients at once: with --lms there is one per notification.
    let mut tokens = vec![String::new(); args.customers.max(1)];
    let mut accounts = vec![String::new(); args.customers.max(1)];
    let mut next_order = 0;
    while next_order < tokens.len() {
        let batch: Vec<usize> = (next_order..tokens.len().min(next_order + 32)).collect();
        next_order += batch.len();
        let mut pending = Vec::new();
        for c in batch {
            let req = http
                .post(format!(
                    "{}/v1/apps/{app}/customers/c{c}/orders",
                    args.gateway
                ))
                .bearer_auth(&args.admin_key)
                .json(&json!({"product_ids": ["course"]}))
                .send();
            pending.push((c, tokio::spawn(req)));
        }
        for (c, req) in pending {
            let order: serde_json::Value = req.await??.error_for_status()?.json().await?;
            tokens[c] = order["app_account_token"]
                .as_str()
                .context("an order has a token")?
                .to_owned();
            accounts[c] = order["obfuscated_account_id"]
                .as_str()
                .context("an order has an obfuscated account id")?
                .to_owned();
        }
    }

    // Each request's body and the headers that authenticate it.
    let mut requests: Vec<(String, Vec<(&'static str, String)>)> = Vec::with_capacity(args.count);
    let _play = if play {
        let (sim, oidc, pushes) = setup_play(&args, &app, &accounts).await?;
        let auth = vec![("authorization", format!("Bearer {oidc}"))];
        requests.extend(pushes.into_iter().map(|b| (b, auth.clone())));
        Some(sim)
    } else {
        None
    };
    let _stripe = if store == "stripe" {
        let (sim, signed) = setup_stripe(&args, &app).await?;
        requests.extend(signed);
        Some(sim)
    } else {
        None
    };
    if store == "revenuecat" {
        requests.extend(setup_revenuecat(&args, &app).await?);
    }
    // Sign everything first: the measurement is the gateway's, not the signer's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let admin_auth = vec![("authorization", format!("Bearer {}", args.admin_key))];
    for i in 0..args.count {
        if store != "app_store" {
            break;
        }
        let id = format!("{}", 3_000_000_000_u64 + i as u64);
        let tx = json!({"transactionId": id, "originalTransactionId": id, "bundleId": bundle, "productId": "edu.load.course",
            "purchaseDate": now, "signedDate": now, "environment": "Sandbox", "type": "Non-Consumable",
            "inAppOwnershipType": "PURCHASED", "appAccountToken": tokens[i % tokens.len()]});
        if args.submit {
            let customer = format!("c{}", i % tokens.len());
            requests.push((
                json!({"app_user_id": customer, "store": "app_store", "signed_transaction": chain.sign(&tx)?})
                    .to_string(),
                admin_auth.clone(),
            ));
            continue;
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        let body = chain.notification(&Notification {
            notification_type: "ONE_TIME_CHARGE",
            uuid: &uuid,
            signed_date: now,
            bundle_id: bundle,
            environment: "Sandbox",
            signed_transaction: Some(chain.sign(&tx)?),
            ..Default::default()
        })?;
        requests.push((body, admin_auth.clone()));
    }
    let bodies = Arc::new(requests);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = Arc::new(if args.submit {
        format!("{}/v1/apps/{app}/purchases", args.gateway)
    } else {
        let route = if play { "play_store" } else { store.as_str() };
        format!("{}/v1/apps/{app}/notifications/{route}", args.gateway)
    });
    let (give_up_percent, give_up_within_ms) = (args.give_up_percent, args.give_up_within_ms);
    let submit = args.submit;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (http, bodies, next, url) = (http.clone(), bodies.clone(), next.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sent_at = Vec::new();
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((body, headers)) = bodies.get(i) else {
                    break;
                };
                let t = Instant::now();
                sent_at.push((i, t));
                let mut req = http
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body.clone());
                for (name, value) in headers {
                    req = req.header(*name, value);
                }
                let send = req.send();
                let answer = match give_up_after(i, give_up_percent, give_up_within_ms) {
                    Some(after) => match tokio::time::timeout(after, send).await {
                        Ok(answer) => answer,
                        Err(_) => {
                            tally.given_up += 1;
                            continue;
                        }
                    },
                    None => send.await,
                };
                latencies.push(t.elapsed());
                match answer {
                    Ok(r) if r.status().is_success() => {
                        tally.ok += 1;
                        if !submit {
                            let said: serde_json::Value = r.json().await.unwrap_or_default();
                            if said["status"] != "decided" {
                                tally.undecided += 1;
                            }
                        }
                    }
                    Ok(r) if r.status().is_server_error() => tally.server_errors += 1,
                    Ok(_) => tally.client_errors += 1,
                    Err(_) => tally.no_answer += 1,
                }
            }
            (latencies, sent_at, tally)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut sent_at: Vec<Option<Instant>> = vec![None; args.count];
    let mut tally = Tally::default();
    for w in workers {
        let (l, s, t) = w.await?;
        latencies.extend(l);
        for (i, t) in s {
            sent_at[i] = Some(t);
        }
        tally.add(&t);
    }
    let failures = tally.failures();
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let what = if args.submit {
        "submissions"
    } else {
        "notifications"
    };
    println!(
        "{} {what} answered from {} clients in {:.2} s: {:.0} {what}/s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} failed ({} 5xx, {} 4xx, {} unanswered); {} given up by the client",
        latencies.len(),
        args.clients,
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        failures,
        tally.server_errors,
        tally.client_errors,
        tally.no_answer,
        tally.given_up,
    );
    if failures > 0 {
        bail!("{failures} {what} were not answered 2xx");
    }
    if tally.undecided > 0 {
        bail!(
            "{} notifications were answered without a decision (held, recorded or duplicate)",
            tally.undecided
        );
    }
    if let Some(lms) = lms {
        report_enrollments(&lms, &sent_at).await?;
    }
    Ok(())
}

/// Serves the Play simulator, points the load app's Play settings at it, buys one purchase per
/// notification (each for its customer's order) without pushing, and returns the simulator (which
/// serves the gateway's reads and acknowledgements while it lives), the push's OIDC token and the
/// push bodies, one Real-time developer notification per purchase.
async fn setup_play(
    args: &Args,
    app: &str,
    accounts: &[String],
) -> anyhow::Result<(Arc<store_sim::play::PlaySim>, String, Vec<String>)> {
    use base64::Engine;
    use store_sim::play::{Buy, PlaySim, PushMode};
    const PACKAGE: &str = "edu.load.app";
    const PUSHER: &str = "load-push@load.iam.gserviceaccount.com";
    let sim = PlaySim::new(store_sim::SimClock::system())?;
    let url = sim.serve().await?;
    sim.add_package(PACKAGE);
    sim.set_push_mode(PushMode::Skip);
    let account = sim.create_service_account("load")?;
    sim.grant(&account, PACKAGE)?;
    let audience = format!("{}/v1/apps/{app}/notifications/play_store", args.gateway);
    let res = reqwest::Client::new()
        .patch(format!("{}/v1/apps/{app}", args.gateway))
        .bearer_auth(&args.admin_key)
        .json(&json!({"play_store": {"package_name": PACKAGE,
            "service_account_json": account.key_file_json(), "api_base_url": url,
            "pubsub_audience": audience, "pubsub_service_account": PUSHER,
            "google_certs_url": format!("{url}/oauth2/v3/certs")}}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!(
            "setting the load app's Play settings failed: {}",
            res.text().await?
        );
    }
    let mut bodies = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let mut buy = Buy::new(PACKAGE, "load_course");
        buy.obfuscated_account_id = Some(accounts[i % accounts.len()].clone());
        let token = sim
            .buy(buy)
            .await?
            .purchase_token
            .context("a purchase has a token")?;
        let notification = json!({"version": "1.0", "packageName": PACKAGE,
            "eventTimeMillis": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis().to_string(),
            "oneTimeProductNotification": {"version": "1.0", "notificationType": 1, "purchaseToken": token, "sku": "load_course"}});
        let data = base64::engine::general_purpose::STANDARD.encode(notification.to_string());
        let id = format!("{}", 9_000_000_000_u64 + i as u64);
        bodies.push(
            json!({"message": {"data": data, "messageId": id, "message_id": id},
                "subscription": "projects/load/subscriptions/load"})
            .to_string(),
        );
    }
    let oidc = sim.push_token(&audience, PUSHER, None)?;
    Ok((sim, oidc, bodies))
}

const STRIPE_PRICE: &str = "price_load_course";

/// Serves the Stripe simulator, points the load app's Stripe settings at it, starts one Checkout
/// Session per notification through the gateway (for its customer) and pays it in the simulator
/// without delivering, and returns the simulator (which serves the gateway's reads while it lives)
/// and each `checkout.session.completed` event with its `Stripe-Signature`.
async fn setup_stripe(
    args: &Args,
    app: &str,
) -> anyhow::Result<(
    Arc<store_sim::stripe::StripeSim>,
    Vec<(String, Vec<(&'static str, String)>)>,
)> {
    use store_sim::stripe::{PayMode, Price, PushMode, StripeSim, signature_header};
    let sim = StripeSim::new(store_sim::SimClock::system())?;
    let url = sim.serve().await?;
    sim.add_price(Price::one_time(STRIPE_PRICE, 4900, "usd", "Load course"));
    let hook = format!("{}/v1/apps/{app}/notifications/stripe", args.gateway);
    let secret = sim.add_webhook_endpoint(&hook);
    sim.set_push_mode(PushMode::Skip);
    let http = reqwest::Client::new();
    let res = http
        .patch(format!("{}/v1/apps/{app}", args.gateway))
        .bearer_auth(&args.admin_key)
        .json(
            &json!({"stripe": {"secret_key": sim.secret_key(), "webhook_secret": secret,
            "api_base_url": url}}),
        )
        .send()
        .await?;
    if !res.status().is_success() {
        bail!(
            "setting the load app's Stripe settings failed: {}",
            res.text().await?
        );
    }
    let mut sessions = Vec::with_capacity(args.count);
    for chunk in (0..args.count).collect::<Vec<_>>().chunks(32) {
        let mut pending = Vec::new();
        for &i in chunk {
            let req = http
                .post(format!("{}/v1/apps/{app}/checkout", args.gateway))
                .bearer_auth(&args.admin_key)
                .json(
                    &json!({"app_user_id": format!("c{}", i % args.customers.max(1)),
                    "product_id": "course", "success_url": "https://load.example/paid",
                    "cancel_url": "https://load.example/cancelled"}),
                )
                .send();
            pending.push(tokio::spawn(req));
        }
        for req in pending {
            let session: serde_json::Value = req.await??.error_for_status()?.json().await?;
            sessions.push(
                session["checkout_session_id"]
                    .as_str()
                    .context("a checkout answers its session")?
                    .to_owned(),
            );
        }
    }
    let mut signed = Vec::with_capacity(args.count);
    for session in sessions {
        let paid = sim.pay(&session, PayMode::Now).await?;
        let completed = paid
            .events
            .iter()
            .find(|e| e.kind == "checkout.session.completed")
            .context("a paid session completes")?;
        let body = serde_json::to_string_pretty(&completed.event)?;
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        let header = signature_header(std::slice::from_ref(&secret), t, body.as_bytes());
        signed.push((body, vec![("stripe-signature", header)]));
    }
    Ok((sim, signed))
}

/// Gives the load app a RevenueCat Authorization value and returns one `NON_RENEWING_PURCHASE`
/// webhook per notification (each a purchase of its own, relayed from the App Store).
async fn setup_revenuecat(
    args: &Args,
    app: &str,
) -> anyhow::Result<Vec<(String, Vec<(&'static str, String)>)>> {
    let auth = format!("Bearer rc-load-{}", uuid::Uuid::new_v4().simple());
    let res = reqwest::Client::new()
        .patch(format!("{}/v1/apps/{app}", args.gateway))
        .bearer_auth(&args.admin_key)
        .json(&json!({"revenuecat": {"webhook_authorization": auth}}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!(
            "setting the load app's RevenueCat settings failed: {}",
            res.text().await?
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    Ok((0..args.count)
        .map(|i| {
            let tx = format!("{}", 4_000_000_000_u64 + i as u64);
            let body = json!({"api_version": "1.0", "event": {"id": uuid::Uuid::new_v4().to_string(),
                "type": "NON_RENEWING_PURCHASE", "app_id": "load", "event_timestamp_ms": now,
                "app_user_id": format!("c{}", i % args.customers.max(1)), "product_id": "edu.load.course",
                "entitlement_ids": ["course"], "period_type": "NORMAL", "purchased_at_ms": now,
                "expiration_at_ms": null, "store": "APP_STORE", "environment": "SANDBOX",
                "transaction_id": tx, "original_transaction_id": tx, "price": 49.0, "currency": "USD"}});
            (body.to_string(), vec![("authorization", auth.clone())])
        })
        .collect())
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

/// Waits for the LMS to take one enrollment per notification (notification i enrolls learner `ci`),
/// then prints the purchase -> LMS-enrolled latencies.
async fn report_enrollments(
    lms: &store_sim::openedx::Lms,
    sent_at: &[Option<Instant>],
) -> anyhow::Result<()> {
    // Paced at 100 calls a minute, the last learner of a burst waits for the whole burst's minutes.
    let paced = Duration::from_secs((sent_at.len() as u64 * 60).div_ceil(100) + 120);
    let deadline = Instant::now() + paced;
    while lms.calls().len() < sent_at.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat: Vec<Duration> = lms
        .calls()
        .iter()
        .filter(|c| c.course_id == COURSE && c.enrollment.is_active)
        .filter_map(|c| {
            let i: usize = c.user.strip_prefix('c')?.parse().ok()?;
            Some(c.at.duration_since((*sent_at.get(i)?)?))
        })
        .collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0
    };
    println!(
        "purchase -> LMS enrolled: {} of {} learners; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        sent_at.len(),
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    let first = lms.calls().iter().map(|c| c.at).min();
    let last = lms.calls().iter().map(|c| c.at).max();
    if let (Some(first), Some(last)) = (first, last) {
        let span = last.duration_since(first).as_secs_f64();
        println!(
            "LMS calls: {} over {:.1} s ({:.0} a minute); throttled by the LMS: {}",
            lms.calls().len(),
            span,
            if span > 0.0 {
                lms.calls().len() as f64 * 60.0 / span
            } else {
                0.0
            },
            lms.throttled()
        );
    }
    if lat.len() < sent_at.len() {
        bail!("{} learners were never enrolled", sent_at.len() - lat.len());
    }
    Ok(())
}
