//! `purchase-gateway sim stripe`: the simulated Stripe. `serve` runs it for one app of a running
//! gateway; every other action calls its control surface (`/sim/stripe/...`) and prints what
//! happened: a sentence on stderr, the JSON answer on stdout.

use std::net::SocketAddr;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use store_sim::{
    SimClock,
    stripe::{Interval, Price, StripeSim},
};

use super::{Target, control, listen};

/// The command that starts the simulator, for hints.
const SERVE: &str = "sim stripe serve";

#[derive(Subcommand)]
pub enum StripeAction {
    /// Start a simulated Stripe for an app of a running gateway: a price for each product's
    /// `stripe_price`, a webhook endpoint to the app's Stripe URL; point the app at it (its secret
    /// key, signing secret and API base URL) and serve until Ctrl-C.
    Serve(StripeServeArgs),
    /// The customer pays a Checkout Session (by card; `--later` for a bank transfer that clears
    /// with `settle`).
    Pay {
        #[arg(long)]
        session: String,
        #[arg(long)]
        later: bool,
    },
    /// A bank transfer clears (or, with `--failed`, fails).
    Settle {
        #[arg(long)]
        session: String,
        #[arg(long)]
        failed: bool,
    },
    /// An open Checkout Session expires.
    Expire {
        #[arg(long)]
        session: String,
    },
    /// Refund a payment (a PaymentIntent `pi_…` or a Charge `ch_…`), whole or `--amount` cents.
    Refund {
        #[arg(long)]
        payment: String,
        #[arg(long)]
        amount: Option<i64>,
    },
    /// A refund fails afterwards.
    FailRefund {
        #[arg(long)]
        refund: String,
    },
    /// The customer's bank disputes a charge.
    Dispute {
        #[arg(long)]
        charge: String,
    },
    /// A dispute is closed: won, or `--lost`.
    CloseDispute {
        #[arg(long)]
        dispute: String,
        #[arg(long)]
        lost: bool,
    },
    /// A subscription renews (its next invoice is paid).
    Renew {
        #[arg(long)]
        subscription: String,
    },
    /// A subscription's renewal payment fails.
    FailRenewal {
        #[arg(long)]
        subscription: String,
    },
    /// A subscription is cancelled now, or `--at-period-end`.
    Cancel {
        #[arg(long)]
        subscription: String,
        #[arg(long)]
        at_period_end: bool,
    },
    /// Send a thin event (`v2.core.event`) about an object.
    ThinEvent {
        #[arg(long)]
        object: String,
    },
    /// Print an object as the API serves it.
    Object {
        #[arg(long)]
        id: String,
    },
    /// Print the simulator's clock (Unix ms), or set or move it.
    Clock {
        #[arg(long)]
        set_ms: Option<i64>,
        #[arg(long, allow_hyphen_values = true)]
        advance_ms: Option<i64>,
    },
}

#[derive(Args)]
pub struct StripeServeArgs {
    /// Where the simulator listens (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9102")]
    listen: SocketAddr,
    #[command(flatten)]
    target: Target,
}

pub(super) async fn run(sim: &str, action: StripeAction) -> anyhow::Result<()> {
    let post = |path: &str, body: Value| (reqwest::Method::POST, path.to_owned(), Some(body));
    let (method, path, body) = match action {
        StripeAction::Serve(args) => return serve(args).await,
        StripeAction::Pay { session, later } => {
            post("pay", json!({"session": session, "async": later}))
        }
        StripeAction::Settle { session, failed } => post(
            "settle-async",
            json!({"session": session, "succeeded": !failed}),
        ),
        StripeAction::Expire { session } => post("expire", json!({"session": session})),
        StripeAction::Refund { payment, amount } => {
            post("refund", json!({"payment": payment, "amount": amount}))
        }
        StripeAction::FailRefund { refund } => post("fail-refund", json!({"refund": refund})),
        StripeAction::Dispute { charge } => post("dispute", json!({"charge": charge})),
        StripeAction::CloseDispute { dispute, lost } => {
            post("close-dispute", json!({"dispute": dispute, "won": !lost}))
        }
        StripeAction::Renew { subscription } => {
            post("renew", json!({"subscription": subscription}))
        }
        StripeAction::FailRenewal { subscription } => {
            post("fail-renewal", json!({"subscription": subscription}))
        }
        StripeAction::Cancel {
            subscription,
            at_period_end,
        } => post(
            "cancel",
            json!({"subscription": subscription, "at_period_end": at_period_end}),
        ),
        StripeAction::ThinEvent { object } => post("thin-event", json!({"related_object": object})),
        StripeAction::Object { id } => (reqwest::Method::GET, format!("objects/{id}"), None),
        StripeAction::Clock { set_ms, advance_ms } if set_ms.is_none() && advance_ms.is_none() => {
            (reqwest::Method::GET, "clock".to_owned(), None)
        }
        StripeAction::Clock { set_ms, advance_ms } => {
            post("clock", json!({"now_ms": set_ms, "advance_ms": advance_ms}))
        }
    };
    let answer = control(sim, "stripe", SERVE, method, &path, body).await?;
    if let Some(events) = answer["events"].as_array() {
        for e in events {
            let answered: Vec<String> = e["deliveries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    d["status"]
                        .as_u64()
                        .map_or_else(|| "no answer".to_owned(), |s| s.to_string())
                })
                .collect();
            eprintln!(
                "Stripe sent {} ({}); the gateway answered {}.",
                e["type"].as_str().unwrap_or("?"),
                e["id"].as_str().unwrap_or("?"),
                if answered.is_empty() {
                    "nothing (not delivered)".to_owned()
                } else {
                    answered.join(", ")
                }
            );
        }
    }
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

async fn serve(args: StripeServeArgs) -> anyhow::Result<()> {
    let (gateway, app) = args.target.open();
    let products = gateway
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{app}/products"),
            None,
        )
        .await?;
    let sim = StripeSim::new(SimClock::system())?;
    let mut priced = Vec::new();
    for p in products["products"].as_array().into_iter().flatten() {
        let Some(price) = p["store_skus"]["stripe_price"].as_str() else {
            continue;
        };
        let name = p["id"].as_str().unwrap_or(price);
        let one = if p["kind"] == "subscription" {
            Price::recurring(price, 999, "usd", name, Interval::Month, 1)
        } else {
            Price::one_time(price, 4999, "usd", name)
        };
        sim.add_price(one);
        priced.push(price.to_owned());
    }
    if priced.is_empty() {
        bail!("no product of app {app} has a Stripe price (`store_skus.stripe_price`)");
    }
    let listener = listen(args.listen).await?;
    let url = sim.serve_on(listener).await?;
    let endpoint = format!("{}/v1/apps/{app}/notifications/stripe", gateway.base);
    let secret = sim.add_webhook_endpoint(&endpoint);
    gateway
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/apps/{app}"),
            Some(json!({"stripe": {"secret_key": sim.secret_key(), "webhook_secret": secret, "api_base_url": url}})),
        )
        .await?;
    println!(
        "The simulated Stripe listens on {url}: the Stripe API, hosted checkout pages under {url}/checkout, and the controls under {url}/sim/stripe."
    );
    println!(
        "App {app} now calls it with a new secret key and takes its events at {endpoint}; prices: {}.",
        priced.join(", ")
    );
    println!(
        "Next: POST {}/v1/apps/{app}/checkout and open the url it answers, or pay from here:",
        gateway.base
    );
    println!("  purchase-gateway sim stripe pay --sim {url} --session <checkout_session_id>");
    println!(
        "Then try refund, dispute, close-dispute, renew, fail-renewal and cancel (purchase-gateway sim stripe --help)."
    );
    println!("Serving until Ctrl-C.");
    super::until_interrupted().await;
    println!(
        "Stopped. App {app} still points at the simulator; PATCH /v1/apps/{app} to change that."
    );
    Ok(())
}
