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
    /// The store whose notifications are sent: `app_store` (signed App Store Server Notifications) or
    /// `play` (Real-time developer notifications as authenticated Pub/Sub pushes, each purchase read
    /// from the Play simulator this process serves).
    #[arg(long, default_value = "app_store", value_parser = ["app_store", "play"])]
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
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.no_answer += other.no_answer;
        self.given_up += other.given_up;
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
    let play = args.store == "play";
    if play && (args.submit || args.lms) {
        bail!("--store play sends notifications: it cannot be used with --submit or --lms");
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
    admin(reqwest::Method::PUT, format!("/v1/apps/{app}/products/course"), json!({"kind": "non_consumable", "store_skus": {"app_store": "edu.load.course", "play_store": "load_course"}, "entitlements": [{"id": "course", "attributes": {"course_id": COURSE, "mode": "verified"}}]})).await?.error_for_status()?;
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

    let push_auth = if play {
        Some(setup_play(&args, &app, &accounts).await?)
    } else {
        None
    };
    // Sign everything first: the measurement is the gateway's, not the signer's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut bodies = Vec::with_capacity(args.count);
    if let Some((_, _, pushes)) = &push_auth {
        bodies.clone_from(pushes);
    }
    for i in 0..args.count {
        if play {
            break;
        }
        let id = format!("{}", 3_000_000_000_u64 + i as u64);
        let tx = json!({"transactionId": id, "originalTransactionId": id, "bundleId": bundle, "productId": "edu.load.course",
            "purchaseDate": now, "signedDate": now, "environment": "Sandbox", "type": "Non-Consumable",
            "inAppOwnershipType": "PURCHASED", "appAccountToken": tokens[i % tokens.len()]});
        if args.submit {
            let customer = format!("c{}", i % tokens.len());
            bodies.push(
                json!({"app_user_id": customer, "store": "app_store", "signed_transaction": chain.sign(&tx)?})
                    .to_string(),
            );
            continue;
        }
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
    let url = Arc::new(if args.submit {
        format!("{}/v1/apps/{app}/purchases", args.gateway)
    } else if play {
        format!("{}/v1/apps/{app}/notifications/play_store", args.gateway)
    } else {
        format!("{}/v1/apps/{app}/notifications/app_store", args.gateway)
    });
    // Pushes carry Pub/Sub's OIDC token; the other requests the admin key.
    let key = Arc::new(match &push_auth {
        Some((_, oidc, _)) => oidc.clone(),
        None => args.admin_key.clone(),
    });
    let (give_up_percent, give_up_within_ms) = (args.give_up_percent, args.give_up_within_ms);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (http, bodies, next, url, key) = (
            http.clone(),
            bodies.clone(),
            next.clone(),
            url.clone(),
            key.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sent_at = Vec::new();
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                sent_at.push((i, t));
                let send = http
                    .post(url.as_str())
                    .bearer_auth(key.as_str())
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send();
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
                match answer.map(|r| r.status()) {
                    Ok(s) if s.is_success() => tally.ok += 1,
                    Ok(s) if s.is_server_error() => tally.server_errors += 1,
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
