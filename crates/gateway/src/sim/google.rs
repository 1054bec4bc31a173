//! `purchase-gateway sim google`: the simulated Google Play. `serve` runs it for one app of a
//! running gateway; every other action calls its control surface (`/sim/play/...`) and prints what
//! happened: a sentence on stderr, the JSON answer on stdout.

use std::net::SocketAddr;

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use gateway_core::play::models::subscription_notification_name;
use serde_json::{Value, json};
use store_sim::{
    SimClock,
    play::{PlaySim, PushSettings, VoidedReason, VoidedSource},
};

use super::{Target, control, listen, value_name};

/// The command that starts the simulator, for hints.
const SERVE: &str = "sim google serve";

#[derive(Subcommand)]
pub enum GoogleAction {
    /// Start a simulated Google Play for an app of a running gateway, point the app at it (a new
    /// service account, the API base URL, the push authentication) and serve until Ctrl-C.
    Serve(GoogleServeArgs),
    /// The customer buys a one-time product (ONE_TIME_PRODUCT_PURCHASED).
    Buy {
        /// The product id in Play Console (the product's `store_skus.play_store`).
        #[arg(long)]
        product_id: String,
        /// How many (a consumable bought several at once).
        #[arg(long)]
        quantity: Option<u32>,
        /// The `obfuscated_account_id` of a gateway order, as the app passes it to Play Billing.
        #[arg(long)]
        obfuscated_account_id: Option<String>,
        /// A slow form of payment: the purchase stays pending until `confirm` or `cancel-pending`.
        #[arg(long)]
        pending: bool,
        /// The package; by default the simulator's only one.
        #[arg(long)]
        package: Option<String>,
    },
    /// The customer subscribes to a base plan (SUBSCRIPTION_PURCHASED).
    Subscribe {
        #[arg(long)]
        product_id: String,
        #[arg(long)]
        base_plan_id: String,
        /// The billing period, ISO 8601: P1W, P1M (the default), P3M, P1Y, or PT5M for quick tests.
        #[arg(long)]
        period: Option<String>,
        #[arg(long)]
        obfuscated_account_id: Option<String>,
        #[arg(long)]
        pending: bool,
        #[arg(long)]
        package: Option<String>,
    },
    /// Play confirms a pending payment.
    Confirm(Token),
    /// The customer's pending payment is cancelled (ONE_TIME_PRODUCT_CANCELED or
    /// SUBSCRIPTION_PENDING_PURCHASE_CANCELED).
    CancelPending(Token),
    /// Play renews a subscription (SUBSCRIPTION_RENEWED).
    Renew(Token),
    /// A renewal payment fails and the subscription enters its grace period.
    Grace {
        #[command(flatten)]
        token: Token,
        /// Days of grace (Play offers 3, 7, 14 or 30).
        #[arg(long)]
        grace_days: Option<u32>,
    },
    /// The subscription goes on account hold (no access until the payment is fixed).
    Hold(Token),
    /// The customer pauses the subscription.
    Pause {
        #[command(flatten)]
        token: Token,
        /// How long the pause lasts, ISO 8601 (P1M by default).
        #[arg(long)]
        period: Option<String>,
    },
    /// The subscription recovers from grace, hold or pause (SUBSCRIPTION_RECOVERED).
    Recover(Token),
    /// The subscription is cancelled: it runs to the end of its paid period.
    Cancel {
        #[command(flatten)]
        token: Token,
        #[arg(long, value_enum, default_value = "user")]
        by: Canceller,
    },
    /// The customer undoes a cancellation before expiry (SUBSCRIPTION_RESTARTED).
    Restart(Token),
    /// The subscription expires (SUBSCRIPTION_EXPIRED).
    Expire(Token),
    /// The subscription is revoked at once, refunded (SUBSCRIPTION_REVOKED).
    Revoke(Token),
    /// The customer upgrades or downgrades: a new purchase token replaces this one
    /// (`linkedPurchaseToken`).
    ChangePlan {
        #[command(flatten)]
        token: Token,
        #[arg(long)]
        product_id: String,
        #[arg(long)]
        base_plan_id: String,
        #[arg(long)]
        period: Option<String>,
    },
    /// The customer subscribes again in the Play Store after this subscription expired.
    Resubscribe(Token),
    /// Google refunds or charges back a purchase (all of it, or part of a one-time purchase's
    /// quantity): a voided purchase, pushed as voidedPurchaseNotification unless --no-push.
    Refund {
        #[command(flatten)]
        token: Token,
        /// Units of a one-time purchase to refund; all of them by default.
        #[arg(long)]
        quantity: Option<u32>,
        #[arg(long, value_enum, default_value = "user")]
        source: VoidedSource,
        #[arg(long, value_enum, default_value = "other")]
        reason: VoidedReason,
        /// Push nothing: only the gateway's voided-purchases walk can find it.
        #[arg(long)]
        no_push: bool,
    },
    /// Google asks the developer to review a refund request (pendingRefundReviewNotification).
    RefundReview(Token),
    /// Play Console's "send test notification".
    TestNotification {
        #[arg(long)]
        package: Option<String>,
    },
    /// Print a purchase as the Play Developer API answers it.
    Purchase(Token),
    /// Print the voided purchases, as `voidedpurchases.list` would list them.
    Voided,
    /// Print the acknowledgements and consumptions the API took.
    Acknowledgements,
    /// Print the simulator's clock (Unix ms), or set or move it.
    Clock {
        #[arg(long)]
        set_ms: Option<i64>,
        #[arg(long, allow_hyphen_values = true)]
        advance_ms: Option<i64>,
    },
    /// Apply what time has made due: renewals, expiries, and the refund of purchases left
    /// unacknowledged for three days.
    Tick,
}

#[derive(Args)]
pub struct Token {
    /// The purchase token (a `buy` or `subscribe` prints it).
    #[arg(long)]
    purchase_token: String,
}

#[derive(Args)]
pub struct GoogleServeArgs {
    /// Where the simulator listens (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9101")]
    listen: SocketAddr,
    #[command(flatten)]
    target: Target,
    /// The app's package name; by default the one its Play settings already have.
    #[arg(long)]
    package: Option<String>,
}

/// Who cancels a subscription.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Canceller {
    User,
    System,
    Developer,
}

/// The push service account the simulator signs its OIDC tokens as.
const PUSH_ACCOUNT: &str = "rtdn-push@play-sim.iam.gserviceaccount.com";

pub(super) async fn run(sim: &str, action: GoogleAction) -> anyhow::Result<()> {
    let (method, path, body) = match action {
        GoogleAction::Serve(args) => return serve(args).await,
        GoogleAction::Buy {
            product_id,
            quantity,
            obfuscated_account_id,
            pending,
            package,
        } => {
            let package = package_of(sim, package).await?;
            let mut b = json!({"package": package, "product_id": product_id, "pending": pending});
            set(&mut b, "quantity", quantity.map(Value::from));
            set(
                &mut b,
                "obfuscated_account_id",
                obfuscated_account_id.map(Value::from),
            );
            (reqwest::Method::POST, "buy".to_owned(), Some(b))
        }
        GoogleAction::Subscribe {
            product_id,
            base_plan_id,
            period,
            obfuscated_account_id,
            pending,
            package,
        } => {
            let package = package_of(sim, package).await?;
            let mut b = json!({"package": package, "product_id": product_id,
                "base_plan_id": base_plan_id, "pending": pending});
            set(&mut b, "period", period.map(Value::from));
            set(
                &mut b,
                "obfuscated_account_id",
                obfuscated_account_id.map(Value::from),
            );
            (reqwest::Method::POST, "subscribe".to_owned(), Some(b))
        }
        GoogleAction::Confirm(t) => on_token("confirm", t),
        GoogleAction::CancelPending(t) => on_token("cancel-pending", t),
        GoogleAction::Renew(t) => on_token("renew", t),
        GoogleAction::Hold(t) => on_token("hold", t),
        GoogleAction::Recover(t) => on_token("recover", t),
        GoogleAction::Restart(t) => on_token("restart", t),
        GoogleAction::Expire(t) => on_token("expire", t),
        GoogleAction::Revoke(t) => on_token("revoke", t),
        GoogleAction::Resubscribe(t) => on_token("resubscribe", t),
        GoogleAction::RefundReview(t) => on_token("refund-review", t),
        GoogleAction::Grace { token, grace_days } => {
            let mut b = json!({"purchase_token": token.purchase_token});
            set(&mut b, "grace_days", grace_days.map(Value::from));
            (reqwest::Method::POST, "grace".to_owned(), Some(b))
        }
        GoogleAction::Pause { token, period } => {
            let mut b = json!({"purchase_token": token.purchase_token});
            set(&mut b, "period", period.map(Value::from));
            (reqwest::Method::POST, "pause".to_owned(), Some(b))
        }
        GoogleAction::Cancel { token, by } => (
            reqwest::Method::POST,
            "cancel".to_owned(),
            Some(json!({"purchase_token": token.purchase_token, "by": value_name(&by)})),
        ),
        GoogleAction::ChangePlan {
            token,
            product_id,
            base_plan_id,
            period,
        } => {
            let mut b = json!({"purchase_token": token.purchase_token,
                "product_id": product_id, "base_plan_id": base_plan_id});
            set(&mut b, "period", period.map(Value::from));
            (reqwest::Method::POST, "change-plan".to_owned(), Some(b))
        }
        GoogleAction::Refund {
            token,
            quantity,
            source,
            reason,
            no_push,
        } => {
            let mut b = json!({"purchase_token": token.purchase_token,
                "voided_source": source.code(), "voided_reason": reason.code()});
            set(&mut b, "quantity", quantity.map(Value::from));
            if no_push {
                b["push"] = "skip".into();
            }
            (reqwest::Method::POST, "refund".to_owned(), Some(b))
        }
        GoogleAction::TestNotification { package } => {
            let package = package_of(sim, package).await?;
            (
                reqwest::Method::POST,
                "test-notification".to_owned(),
                Some(json!({"package": package})),
            )
        }
        GoogleAction::Purchase(t) => (
            reqwest::Method::GET,
            format!("purchases/{}", t.purchase_token),
            None,
        ),
        GoogleAction::Voided => (reqwest::Method::GET, "voided".to_owned(), None),
        GoogleAction::Acknowledgements => {
            (reqwest::Method::GET, "acknowledgements".to_owned(), None)
        }
        GoogleAction::Clock { set_ms, advance_ms } if set_ms.is_none() && advance_ms.is_none() => {
            (reqwest::Method::GET, "clock".to_owned(), None)
        }
        GoogleAction::Clock { set_ms, advance_ms } => (
            reqwest::Method::POST,
            "clock".to_owned(),
            Some(json!({"now_ms": set_ms, "advance_ms": advance_ms})),
        ),
        GoogleAction::Tick => (reqwest::Method::POST, "tick".to_owned(), None),
    };
    let answer = control(sim, "play", SERVE, method, &path, body).await?;
    if let Some(line) = summary(&answer) {
        eprintln!("{line}");
    }
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn on_token(path: &str, t: Token) -> (reqwest::Method, String, Option<Value>) {
    (
        reqwest::Method::POST,
        path.to_owned(),
        Some(json!({"purchase_token": t.purchase_token})),
    )
}

/// Sets `field` of a body when there is a value for it.
fn set(body: &mut Value, field: &str, value: Option<Value>) {
    if let Some(v) = value {
        body[field] = v;
    }
}

/// The package an action names, or the simulator's only one.
async fn package_of(sim: &str, named: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = named {
        return Ok(p);
    }
    let listed = control(sim, "play", SERVE, reqwest::Method::GET, "packages", None).await?;
    match listed["packages"].as_array().map(Vec::as_slice) {
        Some([only]) => Ok(only.as_str().unwrap_or_default().to_owned()),
        Some([]) | None => bail!("the simulator has no package yet; start it with `{SERVE}`"),
        Some(_) => bail!("the simulator has several packages; name one with --package"),
    }
}

/// One sentence on what an action pushed and how the gateway took it.
fn summary(a: &Value) -> Option<String> {
    let n = a.get("notification")?;
    let token = a["purchase_token"].as_str().unwrap_or("?");
    let what = if let Some(s) = n.get("subscriptionNotification") {
        subscription_notification_name(s["notificationType"].as_i64().unwrap_or(0)).to_owned()
    } else if let Some(o) = n.get("oneTimeProductNotification") {
        match o["notificationType"].as_i64() {
            Some(1) => "ONE_TIME_PRODUCT_PURCHASED".to_owned(),
            Some(2) => "ONE_TIME_PRODUCT_CANCELED".to_owned(),
            _ => "oneTimeProductNotification".to_owned(),
        }
    } else if n.get("voidedPurchaseNotification").is_some() {
        "voidedPurchaseNotification".to_owned()
    } else if n.get("pendingRefundReviewNotification").is_some() {
        "pendingRefundReviewNotification".to_owned()
    } else {
        "testNotification".to_owned()
    };
    let reply = match &a["delivery"] {
        Value::Null => "nothing was pushed".to_owned(),
        d => match d["status"].as_u64() {
            Some(code) => format!(
                "the gateway answered {code}{}",
                d["answer"]
                    .as_str()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ),
            None => "the gateway did not answer".to_owned(),
        },
    };
    Some(format!(
        "Google Play pushed {what} for purchase token {token}; {reply}."
    ))
}

async fn serve(args: GoogleServeArgs) -> anyhow::Result<()> {
    let (gateway, app) = args.target.open();
    let mut settings = gateway.store_settings(&app, "play_store").await?;
    let package = match args
        .package
        .or_else(|| settings.get("package_name")?.as_str().map(str::to_owned))
    {
        Some(p) => p,
        None => bail!("app {app} has no Google Play settings yet; name its package with --package"),
    };

    let play = PlaySim::new(SimClock::system())?;
    let listener = listen(args.listen).await?;
    let url = play.serve_on(listener).await?;
    play.add_package(&package);
    let account = play.create_service_account("play-sim")?;
    play.grant(&account, &package)?;
    let endpoint = format!("{}/v1/apps/{app}/notifications/play_store", gateway.base);
    play.set_push(&package, PushSettings::oidc(&endpoint, PUSH_ACCOUNT))?;
    println!(
        "The simulated Google Play listens on {url}: the Play Developer API, its token endpoint, Google's keys, and the controls under {url}/sim/play."
    );

    settings.insert("package_name".into(), package.clone().into());
    settings.insert(
        "service_account_json".into(),
        account.key_file_json().into(),
    );
    settings.insert("api_base_url".into(), url.clone().into());
    settings.insert(
        "google_certs_url".into(),
        format!("{url}/oauth2/v3/certs").into(),
    );
    settings.insert("pubsub_audience".into(), endpoint.clone().into());
    settings.insert("pubsub_service_account".into(), PUSH_ACCOUNT.into());
    gateway
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/apps/{app}"),
            Some(json!({"play_store": settings})),
        )
        .await?;
    println!(
        "App {app} (package {package}) now calls the simulator's Play Developer API as {} and trusts its signed pushes.",
        account.client_email
    );
    println!("Real-time developer notifications go to {endpoint}.");
    println!(
        "Next: create an order (POST {}/v1/apps/{app}/customers/<customer>/orders), buy with its obfuscated_account_id, and send the gateway the purchase token:",
        gateway.base
    );
    println!(
        "  purchase-gateway sim google buy --sim {url} --product-id <the product's Play id> --obfuscated-account-id <id>"
    );
    println!(
        "Then try confirm, renew, grace, hold, pause, cancel, expire, change-plan, refund and refund-review (purchase-gateway sim google --help)."
    );
    println!("Serving until Ctrl-C.");
    super::until_interrupted().await;
    println!(
        "Stopped. App {app} still points at the simulator; PATCH /v1/apps/{app} to change that."
    );
    Ok(())
}
