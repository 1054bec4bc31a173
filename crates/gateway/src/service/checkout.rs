//! Web purchases through Stripe Checkout: `POST /v1/apps/{app}/checkout` makes a gateway order (the
//! same embargo and product rules as the apps' orders), the customer's Stripe customer on first use,
//! and a Checkout Session selling the product's Stripe price. What the customer then does at Stripe
//! reaches the gateway as Stripe's events (or the session submitted by id from the return page).

use gateway_core::{AppUserId, ProductId, ProductKind, Timestamp, ids::Store};
use serde::Serialize;

use super::{Context, ServiceError, ServiceResult, customers};
use crate::{
    db::{orders, products},
    model::App,
    stores::stripe::Checkout,
};

/// What a checkout is asked for.
#[derive(Debug, Clone)]
pub struct CheckoutAsk {
    pub product_id: ProductId,
    pub success_url: String,
    pub cancel_url: String,
    pub country: Option<String>,
}

/// A started checkout: where to send the customer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckoutStarted {
    pub checkout_session_id: String,
    /// Stripe's hosted payment page for this session.
    pub url: String,
    /// The gateway's order the session completes.
    pub order_id: String,
}

/// Starts a Stripe Checkout of `ask.product_id` for `customer`.
pub async fn start(
    cx: &Context,
    app: &App,
    customer: &AppUserId,
    ask: CheckoutAsk,
    now: Timestamp,
) -> ServiceResult<CheckoutStarted> {
    for (field, url) in [
        ("success_url", &ask.success_url),
        ("cancel_url", &ask.cancel_url),
    ] {
        super::opt_text(
            &gateway_core::text::URL_TEXT,
            "invalid_url",
            field,
            Some(url),
        )?;
    }
    if !crate::stores::stripe::can_poll(app) {
        return Err(ServiceError::conflict(
            "store_not_configured",
            "This app has no Stripe secret key (`stripe.secret_key`): it does not sell on the web.",
        ));
    }
    let db = &cx.db;
    let product = products::get(db, &app.id, &ask.product_id)
        .await?
        .ok_or_else(|| {
            ServiceError::not_found(
                "product_not_found",
                format!(
                    "There is no product {:?} in this app.",
                    ask.product_id.as_str()
                ),
            )
        })?;
    let Some(price) = product.store_skus.stripe_price.clone() else {
        return Err(ServiceError::conflict(
            "not_sold_on_stripe",
            format!(
                "Product {} has no Stripe price (`store_skus.stripe_price`).",
                product.id
            ),
        ));
    };
    let order =
        customers::create_order(db, app, customer, vec![ask.product_id], ask.country, now).await?;
    let stripe = &cx.stores.stripe;
    let account = match orders::store_account(db, &app.id, customer, Store::Stripe.as_str()).await?
    {
        Some(a) => a,
        None => {
            let made = stripe.create_customer(app, customer.as_str()).await?;
            let pair = (Store::Stripe.as_str(), made.as_str());
            orders::keep_store_account(db, &app.id, customer, pair, now).await?
        }
    };
    let session = stripe
        .checkout(
            app,
            &Checkout {
                order_id: &order.id,
                order_token: &order.app_account_token,
                app_user_id: customer.as_str(),
                account: &account,
                price: &price,
                subscription: product.kind == ProductKind::Subscription,
                success_url: &ask.success_url,
                cancel_url: &ask.cancel_url,
            },
        )
        .await?;
    Ok(CheckoutStarted {
        url: session.url.clone().unwrap_or_default(),
        checkout_session_id: session.id,
        order_id: order.id,
    })
}

/// Where a checkout stands, for the return page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckoutStatus {
    /// `processing` (Stripe has not said it is paid yet), `granted`, `pending` (a delayed payment
    /// method is still clearing), `failed` or `expired`.
    pub status: &'static str,
    /// Where to send the customer once granted: the `url` attribute of the product's first
    /// entitlement that has one (for Open edX, the course), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    /// The product bought.
    pub product_id: Option<String>,
}

/// Where the checkout of Checkout Session `session_id` stands. A finished session is decided at
/// once (as if its event had come); otherwise the answer waits up to `wait` for the customer's
/// state to change (Stripe's event, a delayed payment clearing).
pub async fn status(
    cx: &Context,
    app: &App,
    session_id: &str,
    wait: std::time::Duration,
    clock: &dyn gateway_core::Clock,
) -> ServiceResult<CheckoutStatus> {
    super::opt_text(
        &gateway_core::text::STORE_ID,
        "invalid_checkout_session_id",
        "session_id",
        Some(session_id),
    )?;
    // The page is public: what cannot be a Checkout Session costs Stripe no call.
    if !session_id.starts_with("cs_") {
        return Err(ServiceError::not_found(
            "checkout_not_found",
            "This is not a Stripe Checkout Session id (`cs_...`).",
        ));
    }
    let stripe = &cx.stores.stripe;
    let session = stripe.session(app, session_id).await?;
    let not_ours = || {
        ServiceError::not_found(
            "checkout_not_found",
            "This Checkout Session was not started by this app's gateway.",
        )
    };
    let customer: AppUserId = session
        .metadata
        .get(crate::stores::stripe::META_CUSTOMER)
        .and_then(|c| c.parse().ok())
        .ok_or_else(not_ours)?;
    if session
        .metadata
        .get(crate::stores::stripe::META_APP)
        .map(String::as_str)
        != Some(app.id.as_str())
    {
        return Err(not_ours());
    }
    let price = session
        .metadata
        .get(crate::stores::stripe::META_PRICE)
        .cloned();
    let product = match &price {
        Some(p) => products::by_sku(&cx.db, &app.id, Store::Stripe.as_str(), p).await?,
        None => None,
    };
    let product_id = product.as_ref().map(|p| p.id.to_string());
    let redirect_url = product.as_ref().and_then(|p| {
        p.entitlements
            .iter()
            .find_map(|e| e.attributes.get("url")?.as_str().map(str::to_owned))
    });
    let answer = |status: &'static str| CheckoutStatus {
        status,
        redirect_url: (status == "granted")
            .then(|| redirect_url.clone())
            .flatten(),
        product_id: product_id.clone(),
    };
    match session.status.as_deref() {
        Some("expired") => return Ok(answer("expired")),
        Some("complete") => {}
        _ => {
            // Not paid yet: wait for the customer's state to change, then look again once.
            wait_for_change(cx, app, &customer, wait).await;
            return Ok(answer("processing"));
        }
    }
    use gateway_core::PurchaseStatus as S;
    let said = |status: S| match status {
        S::Active | S::Expired => "granted",
        S::Pending => "pending",
        S::Refunded | S::Revoked | S::Rejected => "failed",
    };
    // A purchase already decided is answered from the customer's record: the page's later looks
    // cost Stripe no more calls. Until then the session is submitted, so the page grants even
    // before Stripe's event arrives.
    let lineage = if session.mode == "subscription" {
        session.subscription.id()
    } else {
        session.payment_intent.id()
    };
    if let Some(lineage) = lineage
        && let Some(held) = crate::db::customers::recorded(&cx.db, &app.id, &customer).await?
        && let Some(p) = held
            .purchases
            .iter()
            .find(|p| p.store == Store::Stripe && p.store_transaction_id == lineage)
        && p.status != S::Pending
    {
        return Ok(answer(said(p.status)));
    }
    let submission = super::purchases::Submission {
        store: Store::Stripe,
        order_id: None,
        product_id: None,
        proof: crate::stores::Proof {
            checkout_session_id: Some(session_id.to_owned()),
            ..crate::stores::Proof::default()
        },
        signed_app_transaction: None,
    };
    let now = clock.now();
    let submitted =
        super::purchases::submit(cx, app, &customer, submission, "return_page", now).await?;
    // A checkout session is a purchase: the answer always names one.
    let status = submitted.purchase.map_or(S::Pending, |p| p.status);
    if status == S::Pending {
        wait_for_change(cx, app, &customer, wait).await;
    }
    Ok(answer(said(status)))
}

/// Waits up to `wait` for `customer`'s state to change (in this instance; another's change is
/// seen at the page's next look).
async fn wait_for_change(cx: &Context, app: &App, customer: &AppUserId, wait: std::time::Duration) {
    if wait.is_zero() {
        return;
    }
    let signal = cx.db.changes().subscribe(&app.id, customer);
    let notified = signal.notified();
    let _ = tokio::time::timeout(wait.min(customers::MAX_WAIT), notified).await;
}
