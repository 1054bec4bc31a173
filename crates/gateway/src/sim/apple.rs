//! `purchase-gateway sim serve` and `sim apple`: the simulated App Store.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use store_sim::{
    SimClock,
    apple::{
        api::{ApiKey, AppStoreServer},
        chain::AppleChain,
        store::AppleStore,
    },
};

use super::{Target, control, listen, value_name};

#[derive(Args)]
pub struct ServeArgs {
    /// Where the simulator listens (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    #[command(flatten)]
    target: Target,
    /// The app's bundle id; by default the one its App Store settings already have.
    #[arg(long)]
    bundle_id: Option<String>,
}

#[derive(Subcommand)]
pub enum AppleAction {
    /// The customer buys a product: ONE_TIME_CHARGE, or SUBSCRIBED/INITIAL_BUY for a subscription.
    Buy {
        /// The product id in App Store Connect (the product's `store_skus.app_store`).
        #[arg(long)]
        sku: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// A subscription's period, ISO 8601: P1W, P1M (the default), P3M, P1Y, or PT5M for quick tests.
        #[arg(long)]
        period: Option<String>,
        /// The appAccountToken (a UUID) the app gave StoreKit: a gateway order's `app_account_token`.
        #[arg(long)]
        token: Option<String>,
        /// How many (consumables only).
        #[arg(long)]
        quantity: Option<u32>,
        /// A family member's shared copy (`inAppOwnershipType: FAMILY_SHARED`).
        #[arg(long)]
        family_shared: bool,
        /// The price in milli-units of USD (9990 is 9.99).
        #[arg(long)]
        price: Option<i64>,
        /// The Apple Account buying (any name): the transaction carries its `appTransactionId`.
        #[arg(long)]
        account: Option<String>,
    },
    /// Apple renews a subscription: DID_RENEW (BILLING_RECOVERY after a failure).
    Renew {
        #[arg(long)]
        original_transaction_id: String,
    },
    /// Apple cannot charge a renewal: DID_FAIL_TO_RENEW, with GRACE_PERIOD when given grace days.
    FailToRenew {
        #[arg(long)]
        original_transaction_id: String,
        /// Days of billing grace after the paid period (Apple offers 3, 16 or 28).
        #[arg(long)]
        grace_days: Option<u32>,
    },
    /// Apple refunds a transaction, whole or prorated: REFUND.
    Refund {
        #[arg(long)]
        transaction_id: String,
        #[arg(long, value_enum, default_value = "other")]
        reason: Reason,
        /// A prorated refund's share of the whole quantity, in thousandths of a percent (33333 is
        /// one of three units).
        #[arg(long)]
        percentage: Option<i64>,
    },
    /// Apple reverses a refund: REFUND_REVERSED.
    ReverseRefund {
        #[arg(long)]
        transaction_id: String,
    },
    /// Family Sharing ends for a purchase: REVOKE.
    Revoke {
        #[arg(long)]
        transaction_id: String,
    },
    /// The purchaser shares a purchase with a family member: prints the member's own copy and the
    /// signed transaction the member's app submits (no notification).
    ShareWithFamily {
        #[arg(long)]
        transaction_id: String,
    },
    /// The customer moves a subscription to another product of its group:
    /// DID_CHANGE_RENEWAL_PREF, UPGRADE at once or DOWNGRADE at the next renewal (--at-renewal).
    ChangePlan {
        #[arg(long)]
        original_transaction_id: String,
        /// The product id (SKU) to move to.
        #[arg(long)]
        product_id: String,
        #[arg(long)]
        at_renewal: bool,
    },
    /// Apple says something that changes no books: CONSUMPTION_REQUEST, REFUND_DECLINED,
    /// OFFER_REDEEMED (with --subtype) or PRICE_INCREASE (--subtype PENDING or ACCEPTED).
    Tell {
        #[arg(long)]
        transaction_id: String,
        #[arg(long = "type")]
        notification_type: String,
        #[arg(long)]
        subtype: Option<String>,
    },
    /// Prints an Apple Account's AppTransaction and its signed form, which the app submits to
    /// identify the account (`signed_app_transaction`).
    AppTransaction {
        /// The simulator's name for the Apple Account.
        #[arg(long)]
        account: String,
    },
    /// A parent or guardian withdraws consent for an account: RESCIND_CONSENT.
    RescindConsent {
        #[arg(long)]
        account: String,
    },
    /// Apple reports an External Purchase token: EXTERNAL_PURCHASE_TOKEN.
    ExternalPurchaseToken {
        /// CREATED, UNREPORTED or ACTIVE_TOKEN_REMINDER.
        #[arg(long)]
        subtype: String,
        /// ACQUISITION, SERVICES, IN_APP or LINK_OUT.
        #[arg(long)]
        token_type: String,
    },
    /// A subscription expires: EXPIRED.
    Expire {
        #[arg(long)]
        original_transaction_id: String,
        #[arg(long, value_enum, default_value = "voluntary")]
        subtype: Subtype,
    },
    /// Print a transaction as the simulator holds it, or as StoreKit hands it to the app (--signed).
    Transaction {
        #[arg(long)]
        transaction_id: String,
        #[arg(long)]
        signed: bool,
    },
    /// Print the simulator's clock (Unix ms), or set or move it.
    Clock {
        #[arg(long)]
        set_ms: Option<i64>,
        #[arg(long, allow_hyphen_values = true)]
        advance_ms: Option<i64>,
    },
}

/// App Store product kinds.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Consumable,
    NonConsumable,
    NonRenewing,
    AutoRenewable,
}

/// Apple's `revocationReason`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Reason {
    /// 0: another reason, such as the customer's request.
    Other,
    /// 1: the customer reported an issue in the app.
    AppIssue,
}

/// EXPIRED subtypes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Subtype {
    Voluntary,
    BillingRetry,
    PriceIncrease,
    ProductNotForSale,
}

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (gateway, app) = args.target.open();
    let app_path = format!("/v1/apps/{app}");
    let mut settings = gateway.store_settings(&app, "app_store").await?;
    let bundle = match args
        .bundle_id
        .or_else(|| settings.get("bundle_id")?.as_str().map(str::to_owned))
    {
        Some(b) => b,
        None => {
            bail!("app {app} has no App Store settings yet; name its bundle id with --bundle-id")
        }
    };

    let chain = Arc::new(AppleChain::generate()?);
    let key_id: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_uppercase()
        .chars()
        .take(10)
        .collect();
    let key = ApiKey::generate(&uuid::Uuid::new_v4().to_string(), &key_id)?;
    let server = AppStoreServer::new(chain.clone(), key.clone(), &bundle);
    server.set_environment("Sandbox");
    if let Some(id) = settings.get("app_apple_id").and_then(Value::as_i64) {
        server.set_app_apple_id(id);
    }
    let notification_url = format!("{}{app_path}/notifications/app_store", gateway.base);
    server.set_notification_url(&notification_url);
    let store = AppleStore::new(server.clone(), SimClock::system());

    let listener = listen(args.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    println!(
        "The simulated App Store listens on {url}: the App Store Server API, and the controls under {url}/sim/apple."
    );

    settings.insert("bundle_id".into(), bundle.clone().into());
    settings.insert("environment".into(), "Sandbox".into());
    settings.insert("root_certificates_pem".into(), json!([chain.root_pem()]));
    settings.insert("api_base_url".into(), url.clone().into());
    settings.insert("issuer_id".into(), key.issuer_id.clone().into());
    settings.insert("key_id".into(), key.key_id.clone().into());
    settings.insert("private_key_pem".into(), key.private_key_pem.clone().into());
    gateway
        .call(
            reqwest::Method::PATCH,
            &app_path,
            Some(json!({"app_store": settings})),
        )
        .await?;
    println!(
        "App {app} (bundle {bundle}, Sandbox) now trusts the simulator's root certificate and calls its App Store Server API with a new key ({key_id})."
    );
    println!("Notifications go to {notification_url}.");
    println!(
        "Next: create an order (POST {}{app_path}/customers/<customer>/orders) and buy with its app_account_token:",
        gateway.base
    );
    println!(
        "  purchase-gateway sim apple buy --sim {url} --sku <the product's App Store SKU> --kind non-consumable --token <app_account_token>"
    );
    println!(
        "Then try renew, fail-to-renew, change-plan, refund, reverse-refund, revoke and expire (purchase-gateway sim apple --help)."
    );
    println!("Serving until Ctrl-C.");

    let router = server.router().merge(store.router());
    axum::serve(listener, router)
        .with_graceful_shutdown(super::until_interrupted())
        .await
        .context("the simulator stopped")?;
    println!("Stopped. App {app} still points at the simulator; PATCH {app_path} to change that.");
    Ok(())
}

pub(super) async fn act(sim: &str, action: AppleAction) -> anyhow::Result<()> {
    let (method, path, body) = match action {
        AppleAction::Buy {
            sku,
            kind,
            period,
            token,
            quantity,
            family_shared,
            price,
            account,
        } => {
            let mut b =
                json!({"sku": sku, "kind": value_name(&kind), "family_shared": family_shared});
            for (field, value) in [
                ("period", period.map(Value::from)),
                ("app_account_token", token.map(Value::from)),
                ("quantity", quantity.map(Value::from)),
                ("price", price.map(Value::from)),
                ("account", account.map(Value::from)),
            ] {
                if let Some(v) = value {
                    b[field] = v;
                }
            }
            (reqwest::Method::POST, "buy".to_owned(), Some(b))
        }
        AppleAction::Renew {
            original_transaction_id,
        } => (
            reqwest::Method::POST,
            "renew".into(),
            Some(json!({"original_transaction_id": original_transaction_id})),
        ),
        AppleAction::FailToRenew {
            original_transaction_id,
            grace_days,
        } => (
            reqwest::Method::POST,
            "fail-to-renew".into(),
            Some(
                json!({"original_transaction_id": original_transaction_id, "grace_period_days": grace_days}),
            ),
        ),
        AppleAction::Refund {
            transaction_id,
            reason,
            percentage,
        } => {
            let code = match reason {
                Reason::Other => 0,
                Reason::AppIssue => 1,
            };
            (
                reqwest::Method::POST,
                "refund".into(),
                Some(
                    json!({"transaction_id": transaction_id, "revocation_reason": code,
                    "revocation_percentage": percentage}),
                ),
            )
        }
        AppleAction::ReverseRefund { transaction_id } => (
            reqwest::Method::POST,
            "reverse-refund".into(),
            Some(json!({"transaction_id": transaction_id})),
        ),
        AppleAction::ShareWithFamily { transaction_id } => (
            reqwest::Method::POST,
            "share-with-family".into(),
            Some(json!({"transaction_id": transaction_id})),
        ),
        AppleAction::ChangePlan {
            original_transaction_id,
            product_id,
            at_renewal,
        } => (
            reqwest::Method::POST,
            "change-plan".into(),
            Some(
                json!({"original_transaction_id": original_transaction_id, "product_id": product_id,
                "at_renewal": at_renewal}),
            ),
        ),
        AppleAction::Tell {
            transaction_id,
            notification_type,
            subtype,
        } => (
            reqwest::Method::POST,
            "tell".into(),
            Some(
                json!({"transaction_id": transaction_id, "notification_type": notification_type,
                "subtype": subtype}),
            ),
        ),
        AppleAction::AppTransaction { account } => (
            reqwest::Method::POST,
            "app-transaction".into(),
            Some(json!({ "account": account })),
        ),
        AppleAction::ExternalPurchaseToken {
            subtype,
            token_type,
        } => (
            reqwest::Method::POST,
            "external-purchase-token".into(),
            Some(json!({"subtype": subtype, "token_type": token_type})),
        ),
        AppleAction::RescindConsent { account } => (
            reqwest::Method::POST,
            "rescind-consent".into(),
            Some(json!({ "account": account })),
        ),
        AppleAction::Revoke { transaction_id } => (
            reqwest::Method::POST,
            "revoke".into(),
            Some(json!({"transaction_id": transaction_id})),
        ),
        AppleAction::Expire {
            original_transaction_id,
            subtype,
        } => (
            reqwest::Method::POST,
            "expire".into(),
            Some(
                json!({"original_transaction_id": original_transaction_id, "subtype": value_name(&subtype).replace('-', "_").to_uppercase()}),
            ),
        ),
        AppleAction::Transaction {
            transaction_id,
            signed,
        } => {
            let tail = if signed { "/signed" } else { "" };
            (
                reqwest::Method::GET,
                format!("transactions/{transaction_id}{tail}"),
                None,
            )
        }
        AppleAction::Clock { set_ms, advance_ms } if set_ms.is_none() && advance_ms.is_none() => {
            (reqwest::Method::GET, "clock".into(), None)
        }
        AppleAction::Clock { set_ms, advance_ms } => (
            reqwest::Method::POST,
            "clock".into(),
            Some(json!({"now_ms": set_ms, "advance_ms": advance_ms})),
        ),
    };
    let answer = control(sim, "apple", "sim serve", method, &path, body).await?;
    if let Some(kind) = answer["notification_type"].as_str() {
        eprintln!("{}", summary(kind, &answer));
    }
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// One sentence on what an action did and how the gateway took it.
fn summary(kind: &str, a: &Value) -> String {
    let subtype = a["subtype"]
        .as_str()
        .map(|s| format!("/{s}"))
        .unwrap_or_default();
    let reply = match a["http_status"].as_u64() {
        Some(code) => format!(
            "the gateway answered {code}{}",
            a.get("gateway_answer")
                .map(|g| format!(": {g}"))
                .unwrap_or_default()
        ),
        None => format!(
            "the gateway did not answer ({})",
            a["send_attempt_result"].as_str().unwrap_or("OTHER")
        ),
    };
    format!(
        "Apple sent {kind}{subtype} for transaction {} (original {}); {reply}.",
        a["transaction_id"].as_str().unwrap_or("?"),
        a["original_transaction_id"].as_str().unwrap_or("?"),
    )
}
