//! Stripe webhooks into the gateway: events signed as Stripe signs them (by the gateway's own test
//! signer and by Stripe's Node library), refused when the signature is missing, wrong or stale, and
//! decided once.

use std::path::PathBuf;

use gateway_core::{Clock, stripe::signature};
use serde_json::{Value, json};

use crate::{both, helpers::*};

const SECRET: &str = "whsec_acme_signing_secret_0123456789abcdef";
const COURSE: &str = "course-v1:Acme+CS101+2026";

/// Gives `acme` Stripe settings (a signing secret; the API is not reached by these events) and
/// sells `cs101` for a Stripe price too.
async fn open(app: &TestApp) {
    app.seed_catalog("acme").await;
    app.patch(
        "/v1/apps/acme",
        json!({"stripe": {"secret_key": "sk_test_acme_0123456789abcdefghij", "webhook_secret": SECRET,
            "api_base_url": "http://127.0.0.1:9"}}),
    )
    .await
    .expect(200);
    app.put(
        "/v1/apps/acme/products/cs101",
        json!({"kind": "non_consumable",
            "store_skus": {"app_store": "edu.acme.cs101", "play_store": "cs101", "stripe_price": "price_cs101"},
            "entitlements": [{"id": COURSE, "attributes": {"course_id": COURSE, "mode": "verified"}}]}),
    )
    .await
    .expect(200);
}

/// A `checkout.session.completed` event of a payment for `cs101` under `order`.
fn completed(id: &str, order: &str, payment_status: &str, created: i64) -> Value {
    json!({"id": id, "object": "event", "api_version": "2026-07-29.dahlia", "created": created,
        "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "type": "checkout.session.completed",
        "data": {"object": {"id": "cs_test_a1", "object": "checkout.session", "mode": "payment",
            "status": "complete", "payment_status": payment_status, "client_reference_id": "ada",
            "customer": "cus_1", "payment_intent": "pi_1", "subscription": null,
            "amount_total": 4999, "currency": "usd", "created": created,
            "metadata": {"gateway_price": "price_cs101", "gateway_order": order,
                "gateway_app": "acme", "gateway_customer": "ada"}}}})
}

async fn post(app: &TestApp, body: &str, header: Option<&str>) -> Answer {
    let mut req = app
        .client
        .post(format!("{}/v1/apps/acme/notifications/stripe", app.addr))
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_owned());
    if let Some(h) = header {
        req = req.header("stripe-signature", h);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    }
}

fn header(secret: &str, t: i64, body: &str) -> String {
    format!("t={t},v1={}", signature::sign(secret, t, body.as_bytes()))
}

async fn order(app: &TestApp, customer: &str) -> String {
    app.post(
        &format!("/v1/apps/acme/customers/{customer}/orders"),
        json!({"product_ids": ["cs101"]}),
    )
    .await
    .expect(201)["app_account_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn course(app: &TestApp, customer: &str) -> (Value, Value) {
    let snap = app
        .get(&format!("/v1/apps/acme/customers/{customer}"))
        .await
        .expect(200);
    let status = snap["entitlements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == COURSE)
        .map_or(Value::Null, |e| e["status"].clone());
    (status, snap["version"].clone())
}

both!(
    a_signed_checkout_event_grants_once_and_bad_signatures_change_nothing,
    |app: TestApp| async move {
        open(&app).await;
        let token = order(&app, "ada").await;
        let now = app.clock.now().millis() / 1000;
        let body = completed("evt_1", &token, "paid", now).to_string();
        let (_, before) = course(&app, "ada").await;

        // Missing, wrong, stale and unparsable signatures: 401, nothing kept.
        post(&app, &body, None)
            .await
            .error(401, "missing_signature");
        post(&app, &body, Some(&header("whsec_other", now, &body)))
            .await
            .error(401, "invalid_signature");
        post(&app, &body, Some(&header(SECRET, now - 301, &body)))
            .await
            .error(401, "stale_signature");
        post(
            &app,
            &body,
            Some(&format!(
                "v1={}",
                signature::sign(SECRET, now, body.as_bytes())
            )),
        )
        .await
        .error(401, "invalid_signature");
        let tampered = body.replace("4999", "1");
        post(&app, &tampered, Some(&header(SECRET, now, &body)))
            .await
            .error(401, "invalid_signature");
        // Signed, but not an event.
        let junk = r#"{"object":"list"}"#;
        post(&app, junk, Some(&header(SECRET, now, junk)))
            .await
            .error(400, "malformed_notification");
        assert_eq!(course(&app, "ada").await.1, before);
        assert_eq!(app.count("inbound").await, 0, "nothing was kept");

        // Signed right: decided, then a duplicate.
        let answer = post(&app, &body, Some(&header(SECRET, now, &body)))
            .await
            .expect(200);
        assert_eq!(answer["status"], "decided", "{answer}");
        assert_eq!(answer["notification_uuid"], "evt_1");
        assert_eq!(course(&app, "ada").await.0, "active");
        let version = course(&app, "ada").await.1;
        let again = post(&app, &body, Some(&header(SECRET, now + 5, &body)))
            .await
            .expect(200);
        assert_eq!(again["status"], "duplicate");
        assert_eq!(course(&app, "ada").await.1, version);
    }
);

both!(
    a_delayed_payment_is_pending_until_stripe_says_it_settled,
    |app: TestApp| async move {
        open(&app).await;
        let token = order(&app, "ada").await;
        let now = app.clock.now().millis() / 1000;
        let body = completed("evt_2", &token, "unpaid", now).to_string();
        post(&app, &body, Some(&header(SECRET, now, &body)))
            .await
            .expect(200);
        assert_eq!(course(&app, "ada").await.0, "pending");
        let mut settled = completed("evt_3", &token, "paid", now + 60);
        settled["type"] = json!("checkout.session.async_payment_succeeded");
        let body = settled.to_string();
        post(&app, &body, Some(&header(SECRET, now, &body)))
            .await
            .expect(200);
        assert_eq!(course(&app, "ada").await.0, "active");
    }
);

fn stripe_node() -> PathBuf {
    node_package("stripe", "20.0.0")
}

both!(
    events_signed_by_stripes_own_library_are_accepted,
    |app: TestApp| async move {
        open(&app).await;
        let token = order(&app, "ada").await;
        let now = app.clock.now().millis() / 1000;
        let body = completed("evt_node", &token, "paid", now).to_string();
        let script = r#"
const path = require('path');
const Stripe = require(path.join(process.env.STRIPE_DIR, 'node_modules', 'stripe'));
const stripe = Stripe('sk_test_unused');
process.stdout.write(stripe.webhooks.generateTestHeaderString({
  payload: process.env.PAYLOAD, secret: process.env.SECRET, timestamp: Number(process.env.T),
}));
"#;
        let out = std::process::Command::new("node")
            .args(["-e", script])
            .env("STRIPE_DIR", stripe_node())
            .env("PAYLOAD", &body)
            .env("SECRET", SECRET)
            .env("T", now.to_string())
            .output()
            .expect("node runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header = String::from_utf8(out.stdout).unwrap();
        assert!(header.starts_with(&format!("t={now},v1=")), "{header}");
        let answer = post(&app, &body, Some(&header)).await.expect(200);
        assert_eq!(answer["status"], "decided");
        assert_eq!(course(&app, "ada").await.0, "active");
    }
);

/// The simulated Stripe of app `acme`, on the gateway's clock, its webhook endpoint the gateway.
struct Web {
    sim: std::sync::Arc<store_sim::stripe::StripeSim>,
    url: String,
}

impl Web {
    async fn open(app: &TestApp) -> Web {
        use store_sim::{
            SimClock,
            stripe::{Interval, Price, StripeSim},
        };
        let clock = app.clock.clone();
        let sim = StripeSim::new(SimClock::from_fn(move || clock.now().millis())).unwrap();
        let url = sim.serve().await.unwrap();
        sim.add_price(Price::one_time("price_cs101", 4999, "usd", "CS101"));
        sim.add_price(Price::recurring(
            "price_premium",
            999,
            "usd",
            "Premium",
            Interval::Month,
            1,
        ));
        let secret =
            sim.add_webhook_endpoint(&format!("{}/v1/apps/acme/notifications/stripe", app.addr));
        // An app that sells on the App Store already keeps its catalog.
        if app.get("/v1/apps/acme").await.status == reqwest::StatusCode::NOT_FOUND {
            app.seed_catalog("acme").await;
        }
        app.patch(
            "/v1/apps/acme",
            json!({"stripe": {"secret_key": sim.secret_key(), "webhook_secret": secret, "api_base_url": url}}),
        )
        .await
        .expect(200);
        app.put(
            "/v1/apps/acme/products/cs101",
            json!({"kind": "non_consumable",
                "store_skus": {"app_store": "edu.acme.cs101", "stripe_price": "price_cs101"},
                "entitlements": [{"id": COURSE, "attributes": {"course_id": COURSE,
                    "url": format!("{}/healthz", app.addr)}}]}),
        )
        .await
        .expect(200);
        app.put(
            "/v1/apps/acme/products/premium",
            json!({"kind": "subscription", "store_skus": {"stripe_price": "price_premium"},
                "entitlements": [{"id": "premium"}]}),
        )
        .await
        .expect(200);
        Web { sim, url }
    }

    /// Starts a checkout of `product` for `customer`; its session id.
    async fn checkout(&self, app: &TestApp, customer: &str, product: &str) -> String {
        let started = app
            .post(
                "/v1/apps/acme/checkout",
                json!({"app_user_id": customer, "product_id": product,
                    "success_url": format!("{}/pay/acme/return?session_id={{CHECKOUT_SESSION_ID}}", app.addr),
                    "cancel_url": "https://acme.example/courses"}),
            )
            .await
            .expect(201);
        let id = started["checkout_session_id"].as_str().unwrap().to_owned();
        assert!(
            started["url"].as_str().unwrap().starts_with(&self.url),
            "{started}"
        );
        id
    }

    fn session(&self, id: &str) -> Value {
        self.sim.object(id).unwrap()
    }
}

async fn entitlement(app: &TestApp, customer: &str, id: &str) -> Value {
    app.entitlement(customer, id).await
}

both!(
    a_web_purchase_is_granted_refunded_disputed_and_restored,
    |app: TestApp| async move {
        use store_sim::stripe::PayMode;
        let web = Web::open(&app).await;
        let session = web.checkout(&app, "ada", "cs101").await;
        let s = web.session(&session);
        assert_eq!(s["mode"], "payment");
        assert_eq!(s["metadata"]["gateway_price"], "price_cs101");
        assert_eq!(s["metadata"]["gateway_customer"], "ada");
        // One Stripe customer per gateway customer.
        let again = web.checkout(&app, "ada", "cs101").await;
        assert_eq!(web.session(&again)["customer"], s["customer"]);

        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        for e in &paid.events {
            for d in &e.deliveries {
                assert!(d.succeeded(), "{} was refused: {d:?}", e.kind);
            }
        }
        assert_eq!(entitlement(&app, "ada", COURSE).await["status"], "active");
        assert_eq!(entitlement(&app, "ada", COURSE).await["store"], "stripe");

        // Refunded in full: access ends.
        app.clock.advance_millis(60_000);
        let pi = paid.payment_intent.clone().unwrap();
        web.sim.refund(&pi, None).await.unwrap();
        assert_eq!(entitlement(&app, "ada", COURSE).await["status"], "refunded");

        // Bob's payment is disputed (access ends), and the dispute won (access is back).
        let session = web.checkout(&app, "bob", "cs101").await;
        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        assert_eq!(entitlement(&app, "bob", COURSE).await["status"], "active");
        app.clock.advance_millis(60_000);
        let dispute = web
            .sim
            .dispute(&paid.charge.clone().unwrap())
            .await
            .unwrap();
        assert_eq!(entitlement(&app, "bob", COURSE).await["status"], "refunded");
        app.clock.advance_millis(60_000);
        web.sim
            .close_dispute(&dispute.dispute.unwrap(), true)
            .await
            .unwrap();
        assert_eq!(entitlement(&app, "bob", COURSE).await["status"], "active");

        // Cleo pays by bank transfer: pending until it clears.
        let session = web.checkout(&app, "cleo", "cs101").await;
        web.sim.pay(&session, PayMode::Async).await.unwrap();
        assert_eq!(entitlement(&app, "cleo", COURSE).await["status"], "pending");
        app.clock.advance_millis(60_000);
        web.sim.settle_async(&session, true).await.unwrap();
        assert_eq!(entitlement(&app, "cleo", COURSE).await["status"], "active");

        // Dan's bank transfer fails: never granted, nothing to take back.
        let session = web.checkout(&app, "dan", "cs101").await;
        web.sim.pay(&session, PayMode::Async).await.unwrap();
        app.clock.advance_millis(60_000);
        web.sim.settle_async(&session, false).await.unwrap();
        assert_eq!(entitlement(&app, "dan", COURSE).await["status"], "revoked");

        // Eve's payment is disputed and the dispute lost: access stays ended.
        let session = web.checkout(&app, "eve", "cs101").await;
        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        app.clock.advance_millis(60_000);
        let dispute = web
            .sim
            .dispute(&paid.charge.clone().unwrap())
            .await
            .unwrap();
        app.clock.advance_millis(60_000);
        web.sim
            .close_dispute(&dispute.dispute.unwrap(), false)
            .await
            .unwrap();
        assert_eq!(entitlement(&app, "eve", COURSE).await["status"], "refunded");

        // A thin event (v2.core.event) is read through the object it names.
        let session = web.checkout(&app, "fay", "cs101").await;
        web.sim.set_push_mode(store_sim::stripe::PushMode::Skip);
        web.sim.pay(&session, PayMode::Now).await.unwrap();
        web.sim.set_push_mode(store_sim::stripe::PushMode::Send);
        assert_eq!(entitlement(&app, "fay", COURSE).await, Value::Null);
        let thin = web.sim.thin_event(&session).await.unwrap();
        let delivery = &thin.events[0].deliveries[0];
        assert!(delivery.succeeded(), "{delivery:?}");
        assert_eq!(entitlement(&app, "fay", COURSE).await["status"], "active");

        // An operator refunds Cleo's payment from the gateway: Stripe refunds it, access ends.
        let purchase = entitlement(&app, "cleo", COURSE).await["purchase_id"].clone();
        let done = app
            .post(
                &format!(
                    "/v1/apps/acme/purchases/{}/refund",
                    purchase.as_str().unwrap()
                ),
                json!({"reason": "asked support"}),
            )
            .await
            .expect(200);
        assert_eq!(done["purchase"]["status"], "refunded", "{done}");
        let refunds: Vec<Value> = web
            .sim
            .events()
            .into_iter()
            .filter(|e| e["type"] == "charge.refunded")
            .collect();
        assert_eq!(refunds.len(), 2, "Ada's and Cleo's");
    }
);

both!(
    a_missed_stripe_event_is_recovered_and_a_subscription_renews,
    |app: TestApp| async move {
        use store_sim::stripe::{PayMode, PushMode};
        let web = Web::open(&app).await;
        // Stripe's deliveries fail (skipped): the events list still has them.
        web.sim.set_push_mode(PushMode::Skip);
        let session = web.checkout(&app, "ada", "cs101").await;
        web.sim.pay(&session, PayMode::Now).await.unwrap();
        assert_eq!(entitlement(&app, "ada", COURSE).await, Value::Null);
        let recovered = app
            .post(
                "/v1/apps/acme/notifications/stripe/recover",
                json!({"start": t0().plus_millis(-3_600_000)}),
            )
            .await
            .expect(200);
        assert!(recovered["recovered"].as_u64().unwrap() >= 1, "{recovered}");
        assert_eq!(entitlement(&app, "ada", COURSE).await["status"], "active");
        let again = app
            .post(
                "/v1/apps/acme/notifications/stripe/recover",
                json!({"start": t0().plus_millis(-3_600_000)}),
            )
            .await
            .expect(200);
        assert_eq!(again["recovered"], 0, "{again}");

        // The recovery job finds one by itself.
        let session = web.checkout(&app, "hal", "cs101").await;
        web.sim.pay(&session, PayMode::Now).await.unwrap();
        app.clock.advance_millis(1000);
        let acme = gateway::service::apps::get(&app.db, &"acme".parse().unwrap())
            .await
            .unwrap();
        let adapter = app
            .cx
            .stores
            .adapter(gateway_core::ids::Store::Stripe)
            .unwrap();
        let pass =
            gateway::service::recovery::recover_step(&app.cx, adapter, &acme, "t", app.clock.now())
                .await
                .unwrap();
        assert!(
            matches!(pass, gateway::service::recovery::Pass::Read { .. }),
            "{pass:?}"
        );
        assert_eq!(entitlement(&app, "hal", COURSE).await["status"], "active");

        // A subscription: paid for a month, renewed for another.
        web.sim.set_push_mode(PushMode::Send);
        let session = web.checkout(&app, "grace", "premium").await;
        assert_eq!(web.session(&session)["mode"], "subscription");
        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        let first = entitlement(&app, "grace", "premium").await;
        assert_eq!(first["status"], "active", "{first}");
        let sub = paid.subscription.unwrap();
        app.clock.advance_millis(31 * 86_400_000);
        let past = web.sim.renew(&sub).await.unwrap();
        app.clock.advance_millis(31 * 86_400_000);
        let renewal = web.sim.renew(&sub).await.unwrap();
        // A past period's payment refunded: the period paid for now stands.
        web.sim
            .refund(&past.payment_intent.unwrap(), None)
            .await
            .unwrap();
        assert_eq!(
            entitlement(&app, "grace", "premium").await["status"],
            "active"
        );
        let renewed = entitlement(&app, "grace", "premium").await;
        assert_eq!(renewed["status"], "active", "{renewed}");
        assert!(
            renewed["expires_at"].as_str().unwrap() > first["expires_at"].as_str().unwrap(),
            "{first} then {renewed}"
        );

        // The renewal's payment refunded: its PaymentIntent leads to the subscription through the
        // InvoicePayment, and the subscription is refunded (no stray one-time purchase appears).
        app.clock.advance_millis(60_000);
        web.sim
            .refund(&renewal.payment_intent.unwrap(), None)
            .await
            .unwrap();
        assert_eq!(
            entitlement(&app, "grace", "premium").await["status"],
            "refunded"
        );
        let snap = app.get("/v1/apps/acme/customers/grace").await.expect(200);
        assert_eq!(snap["purchases"].as_array().unwrap().len(), 1, "{snap}");

        // Jo's renewal fails (billing retry, no access), then the subscription is cancelled.
        let session = web.checkout(&app, "jo", "premium").await;
        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        let sub = paid.subscription.clone().unwrap();
        app.clock.advance_millis(31 * 86_400_000);
        web.sim.fail_renewal(&sub).await.unwrap();
        assert_eq!(
            entitlement(&app, "jo", "premium").await["status"],
            "billing_retry"
        );
        web.sim.cancel(&sub, false).await.unwrap();
        assert_eq!(
            entitlement(&app, "jo", "premium").await["status"],
            "expired"
        );

        // An operator refunds Ivy's subscription from the gateway: Stripe cancels it now and
        // refunds its latest invoice's payment; access ends.
        let session = web.checkout(&app, "ivy", "premium").await;
        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        let purchase = entitlement(&app, "ivy", "premium").await["purchase_id"].clone();
        let done = app
            .post(
                &format!(
                    "/v1/apps/acme/purchases/{}/refund",
                    purchase.as_str().unwrap()
                ),
                json!({"reason": "asked support"}),
            )
            .await
            .expect(200);
        assert_eq!(done["purchase"]["status"], "refunded", "{done}");
        assert_eq!(
            entitlement(&app, "ivy", "premium").await["status"],
            "refunded"
        );
        let sub = web.sim.object(&paid.subscription.unwrap()).unwrap();
        assert_eq!(sub["status"], "canceled");
        let pi = web.sim.object(&paid.payment_intent.unwrap()).unwrap();
        let charge = web
            .sim
            .object(pi["latest_charge"].as_str().unwrap())
            .unwrap();
        assert_eq!(charge["refunded"], true, "{charge}");
    }
);

fn playwright() -> PathBuf {
    node_package("playwright-core", "1.64.1")
}

/// Debian's Chromium, or `None` (and why) where it is not installed and not required.
fn chromium() -> Option<&'static str> {
    const PATH: &str = "/usr/bin/chromium";
    if std::path::Path::new(PATH).exists() {
        return Some(PATH);
    }
    assert!(
        std::env::var_os("GATEWAY_REQUIRE_BROWSER").is_none(),
        "{PATH} is missing; scripts/ensure-chromium.sh installs it"
    );
    eprintln!("skipped: no Chromium at {PATH} (scripts/ensure-chromium.sh installs it)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_return_page_shows_processing_then_sends_the_learner_to_the_course() {
    use store_sim::stripe::PayMode;
    use tokio::io::AsyncBufReadExt;
    let Some(browser) = chromium() else { return };
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let web = Web::open(&app).await;
    let session = web.checkout(&app, "ada", "cs101").await;
    let page = format!("{}/pay/acme/return?session_id={session}", app.addr);
    let course = format!("{}/healthz", app.addr);
    let script = r#"
const path = require('path');
const { chromium } = require(path.join(process.env.PW_DIR, 'node_modules', 'playwright-core'));
(async () => {
  const browser = await chromium.launch({ executablePath: process.env.BROWSER, args: ['--no-sandbox',
    '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'] });
  const page = await browser.newPage();
  await page.goto(process.env.PAGE);
  console.log('title: ' + await page.title());
  console.log('state: ' + await page.locator('#state').getAttribute('data-status'));
  page.on('pageerror', (e) => console.log('page error: ' + e.message));
  await page.waitForURL(process.env.COURSE, { timeout: 30000 });
  console.log('at: ' + page.url());
  await browser.close();
})().catch((e) => { console.log('error: ' + e.message); process.exit(1); });
"#;
    let mut child = tokio::process::Command::new("node")
        .args(["-e", script])
        .env("PW_DIR", playwright())
        .env("BROWSER", browser)
        .env("PAGE", &page)
        .env("COURSE", &course)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    // The learner is on the page before Stripe has told the gateway anything.
    while let Some(line) = lines.next_line().await.unwrap() {
        said.push(line.clone());
        if line.starts_with("state: ") || line.starts_with("error: ") {
            break;
        }
    }
    assert_eq!(
        said,
        ["title: Processing…", "state: processing"],
        "{said:?}"
    );
    // Stripe takes the payment; its event reaches the gateway; the page moves on by itself.
    web.sim.pay(&session, PayMode::Now).await.unwrap();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push(line);
        }
        rest
    })
    .await
    .expect("the page moves on within a minute");
    assert_eq!(rest, [format!("at: {course}")], "{rest:?}");
    assert!(child.wait().await.unwrap().success());
}

both!(
    one_customer_has_one_access_from_the_app_store_and_the_web,
    |app: TestApp| async move {
        use store_sim::{
            apple::store::{ProductKind, RevocationReason},
            stripe::PayMode,
        };
        let apple = crate::sim::Sim::open(&app).await;
        let web = Web::open(&app).await;
        // Ada buys the course in the iOS app...
        let token = crate::sim::order(&app, "ada", "cs101").await;
        let ios = apple
            .store
            .buy("edu.acme.cs101", ProductKind::NonConsumable, Some(&token))
            .await
            .unwrap();
        assert_eq!(entitlement(&app, "ada", COURSE).await["status"], "active");
        // ...and the web page she opens sees it too: her snapshot is one, whatever the store.
        let session = web.checkout(&app, "ada", "cs101").await;
        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        let snap = app.get("/v1/apps/acme/customers/ada").await.expect(200);
        let stores: Vec<&str> = snap["purchases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["store"].as_str().unwrap())
            .collect();
        assert_eq!(stores.len(), 2, "{snap}");
        assert!(stores.contains(&"app_store") && stores.contains(&"stripe"));
        let courses = snap["entitlements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["id"] == COURSE)
            .count();
        assert_eq!(courses, 1, "one access with two sources: {snap}");
        let page = app
            .client
            .get(format!("{}/pay/acme/return?session_id={session}", app.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("data-status=\"granted\""), "{page}");
        // What is not a session of this app's gateway: a clear page, and a clear error.
        let res = app
            .client
            .get(format!("{}/pay/acme/return?session_id=nope", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
        assert!(
            res.text()
                .await
                .unwrap()
                .contains("We could not find this payment")
        );
        app.get("/pay/acme/status?session_id=cs_test_unknown0000")
            .await
            .error(404, "stripe_object_not_found");

        // Refunding one source keeps access while the other holds.
        app.clock.advance_millis(60_000);
        web.sim
            .refund(&paid.payment_intent.unwrap(), None)
            .await
            .unwrap();
        assert_eq!(entitlement(&app, "ada", COURSE).await["status"], "active");
        assert_eq!(entitlement(&app, "ada", COURSE).await["store"], "app_store");
        app.clock.advance_millis(60_000);
        apple
            .store
            .refund(&ios.transaction_id, RevocationReason::Other)
            .await
            .unwrap();
        assert_eq!(entitlement(&app, "ada", COURSE).await["status"], "refunded");
    }
);

both!(
    a_refund_that_fails_gives_access_back,
    |app: TestApp| async move {
        use store_sim::stripe::PayMode;
        let web = Web::open(&app).await;
        let session = web.checkout(&app, "ada", "cs101").await;
        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        app.clock.advance_millis(60_000);
        let refunded = web
            .sim
            .refund(&paid.payment_intent.unwrap(), None)
            .await
            .unwrap();
        assert_eq!(entitlement(&app, "ada", COURSE).await["status"], "refunded");
        // The bank returns the refund: Stripe sends refund.failed and refund.updated.
        app.clock.advance_millis(60_000);
        let failed = web
            .sim
            .fail_refund(&refunded.refund.unwrap())
            .await
            .unwrap();
        assert_eq!(failed.event_types(), ["refund.failed", "refund.updated"]);
        for e in &failed.events {
            assert!(e.deliveries.iter().all(|d| d.succeeded()), "{e:?}");
        }
        assert_eq!(entitlement(&app, "ada", COURSE).await["status"], "active");
    }
);

both!(
    the_return_pages_status_follows_the_purchase,
    |app: TestApp| async move {
        use store_sim::stripe::PayMode;
        let web = Web::open(&app).await;
        let status = |session: String| {
            let app = &app;
            async move {
                app.get(&format!("/pay/acme/status?session_id={session}&wait=0"))
                    .await
                    .expect(200)
            }
        };
        // Not paid yet; then paid by bank transfer, which has not settled; then failed.
        let late = web.checkout(&app, "ada", "cs101").await;
        assert_eq!(status(late.clone()).await["status"], "processing");
        web.sim.pay(&late, PayMode::Async).await.unwrap();
        assert_eq!(status(late.clone()).await["status"], "pending");
        web.sim.settle_async(&late, false).await.unwrap();
        let failed = status(late.clone()).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        assert!(failed["redirect_url"].is_null());

        // Paid by card: granted, with the course's address; its later looks say the same, and a
        // refund turns it to failed.
        let card = web.checkout(&app, "ada", "cs101").await;
        let paid = web.sim.pay(&card, PayMode::Now).await.unwrap();
        for _ in 0..2 {
            let granted = status(card.clone()).await;
            assert_eq!(granted["status"], "granted", "{granted}");
            assert_eq!(granted["product_id"], "cs101");
            assert_eq!(granted["redirect_url"], format!("{}/healthz", app.addr));
        }
        app.clock.advance_millis(60_000);
        web.sim
            .refund(&paid.payment_intent.unwrap(), None)
            .await
            .unwrap();
        assert_eq!(status(card).await["status"], "failed");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_stripe_command_points_an_app_at_itself_and_acts_as_stripe() {
    use tokio::io::AsyncBufReadExt;
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    // The simulator keeps real time, and a signature older than five minutes is refused.
    app.clock.set(gateway_core::Timestamp::from_millis(
        store_sim::SimClock::system().now_ms(),
    ));
    open(&app).await;
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_purchase-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["sim", "stripe", "serve", "--listen", "127.0.0.1:0"])
        .args([
            "--gateway",
            &app.addr,
            "--app",
            "acme",
            "--admin-key",
            ADMIN_KEY,
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let url = crate::sim::served_url(&mut lines).await;
    let settings = app.get("/v1/apps/acme").await.expect(200)["stripe"].clone();
    assert_eq!(settings["api_base_url"], url.as_str());
    assert_eq!(settings["webhook_secret_set"], true);

    let started = app
        .post(
            "/v1/apps/acme/checkout",
            json!({"app_user_id": "ada", "product_id": "cs101",
                "success_url": "https://acme.example/done", "cancel_url": "https://acme.example/"}),
        )
        .await
        .expect(201);
    let session = started["checkout_session_id"].as_str().unwrap();
    let (ok, out, err) =
        crate::sim::sim_command("stripe", &["pay", "--sim", &url, "--session", session]).await;
    assert!(ok, "{err}");
    assert!(
        err.contains("Stripe sent checkout.session.completed") && err.contains("answered 200"),
        "{err}"
    );
    assert_eq!(course(&app, "ada").await.0, "active");
    let paid: Value = serde_json::from_str(&out).unwrap();
    let pi = paid["payment_intent"].as_str().unwrap();
    let (ok, _, err) =
        crate::sim::sim_command("stripe", &["refund", "--sim", &url, "--payment", pi]).await;
    assert!(ok, "{err}");
    assert_eq!(course(&app, "ada").await.0, "refunded");
    let (ok, _, err) =
        crate::sim::sim_command("stripe", &["refund", "--sim", &url, "--payment", pi]).await;
    assert!(!ok);
    assert!(err.contains("the simulator refused"), "{err}");
    serve.kill().await.unwrap();
}

both!(
    a_web_page_starts_a_checkout_with_a_publishable_key_and_an_embargo_holds,
    |app: TestApp| async move {
        let web = Web::open(&app).await;
        let pk = app.key("acme", "publishable", &[]).await;
        let body = |customer: &str, country: Option<&str>| {
            let mut b = json!({"app_user_id": customer, "product_id": "cs101",
                "success_url": "https://acme.example/done", "cancel_url": "https://acme.example/"});
            if let Some(c) = country {
                b["country"] = json!(c);
            }
            b
        };
        let started = app
            .request(
                reqwest::Method::POST,
                "/v1/apps/acme/checkout",
                Some(&pk),
                Some(body("ada", None)),
                &[],
            )
            .await
            .expect(201);
        let session = web.session(started["checkout_session_id"].as_str().unwrap());
        assert_eq!(session["metadata"]["gateway_customer"], "ada");

        // An app that embargoes some countries wants the buyer's, and refuses those.
        app.patch("/v1/apps/acme", json!({"embargoed_countries": ["CU"]}))
            .await
            .expect(200);
        app.post("/v1/apps/acme/checkout", body("bob", None))
            .await
            .error(409, "country_required");
        app.post("/v1/apps/acme/checkout", body("bob", Some("cu")))
            .await
            .error(403, "embargoed");
        app.post("/v1/apps/acme/checkout", body("bob", Some("FR")))
            .await
            .expect(201);
        // A product with no Stripe price is not sold on the web.
        app.post(
            "/v1/apps/acme/checkout",
            json!({"app_user_id": "bob", "product_id": "coins100", "country": "FR",
                "success_url": "https://acme.example/done", "cancel_url": "https://acme.example/"}),
        )
        .await
        .error(409, "not_sold_on_stripe");
    }
);

both!(
    a_partial_refund_follows_the_products_policy,
    |app: TestApp| async move {
        use store_sim::stripe::PayMode;
        let web = Web::open(&app).await;
        // The default: a partial refund keeps access.
        let session = web.checkout(&app, "ada", "cs101").await;
        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        app.clock.advance_millis(60_000);
        web.sim
            .refund(&paid.payment_intent.unwrap(), Some(1000))
            .await
            .unwrap();
        assert_eq!(entitlement(&app, "ada", COURSE).await["status"], "active");

        // A product whose policy is `revoke`: a partial refund ends access as a whole one does.
        let mut cs101 = app.get("/v1/apps/acme/products/cs101").await.expect(200);
        assert_eq!(cs101["partial_refund"], "keep");
        cs101["partial_refund"] = json!("revoke");
        app.put("/v1/apps/acme/products/cs101", cs101)
            .await
            .expect(200);
        let session = web.checkout(&app, "bob", "cs101").await;
        let paid = web.sim.pay(&session, PayMode::Now).await.unwrap();
        app.clock.advance_millis(60_000);
        web.sim
            .refund(&paid.payment_intent.unwrap(), Some(1000))
            .await
            .unwrap();
        assert_eq!(entitlement(&app, "bob", COURSE).await["status"], "refunded");
        let csv = app
            .client
            .get(format!("{}/v1/apps/acme/products/export", app.addr))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            csv.lines().next().unwrap().ends_with(",partial_refund"),
            "{csv}"
        );
        assert!(
            csv.lines()
                .any(|l| l.starts_with("cs101,") && l.ends_with(",revoke")),
            "{csv}"
        );
    }
);
