//! `POST /v1/apps/{app}/purchases`: an app submits what the store gave it; a restore; and an
//! operator's refund of a purchase at its store.

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::IntoResponse,
};
use gateway_core::ids::Store;
use serde::Deserialize;

use super::{
    Access, AppState, app_for, app_for_customer,
    auth::Caller,
    error::{ApiError, ApiJson, ApiResult, ErrorBody},
    parse_id, parse_user,
};
use crate::{
    model::Scope,
    service::{
        checkout::{self, CheckoutAsk, CheckoutStarted},
        offers::{self, OfferAsk, OfferKind},
        purchases::{self, RefundAsk, RefundDone, Submission, Submitted},
    },
    stores::{Proof, RestoreProof},
};

/// The body of a purchase submission.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    app_user_id: String,
    /// `app_store`, `play_store` or `stripe`.
    store: String,
    #[serde(default)]
    order_id: Option<String>,
    /// StoreKit 2: the transaction's `jwsRepresentation`.
    #[serde(default)]
    signed_transaction: Option<String>,
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    receipt_data: Option<String>,
    #[serde(default)]
    product_id: Option<String>,
    #[serde(default)]
    purchase_token: Option<String>,
    #[serde(default)]
    checkout_session_id: Option<String>,
    /// StoreKit 2: `AppTransaction.shared`'s `jwsRepresentation`. Identifies the customer's Apple
    /// Account (`appTransactionId`), alone or beside a purchase.
    #[serde(default)]
    signed_app_transaction: Option<String>,
}

/// Submits a store purchase: verified with the store, mapped to the catalog, decided.
#[utoipa::path(post, path = "/v1/apps/{app}/purchases", tag = "customers", params(("app" = gateway_core::AppId, Path)), request_body = PurchaseBody,
    responses((status = 200, description = "The decision and the customer after it", body = Submitted),
              (status = 404, description = "`order_not_found`", body = ErrorBody),
              (status = 409, description = "`product_mismatch`, `order_of_another_customer`, `transaction_of_another_customer`, `purchase_of_another_customer` or `store_not_configured`", body = ErrorBody),
              (status = 503, description = "`store_unavailable`: the App Store did not answer; try again", body = ErrorBody),
              (status = 422, description = "The store's signature or data was refused (`invalid_signature`, `untrusted_certificate_chain`, `wrong_app`, `wrong_environment`, `unknown_product`, ...)", body = ErrorBody)))]
pub async fn submit(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PurchaseBody>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&body.app_user_id)?;
    let app = app_for_customer(&s, &caller, &app, &user, &headers, &[Scope::Purchases]).await?;
    let store = Store::parse(&body.store)
        .filter(|s| *s != Store::Manual)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_store",
                "`store` is app_store, play_store or stripe.",
            )
        })?;
    let product_id = body
        .product_id
        .as_deref()
        .map(super::parse_product)
        .transpose()?;
    let order_id = body
        .order_id
        .as_deref()
        .map(|o| super::parse_id(o, "order_id"))
        .transpose()?;
    let submission = Submission {
        store,
        order_id: order_id.map(|o| o.to_string()),
        product_id,
        proof: Proof {
            signed_transaction: body.signed_transaction,
            transaction_id: body.transaction_id,
            receipt_data: body.receipt_data,
            purchase_token: body.purchase_token,
            checkout_session_id: body.checkout_session_id,
            subscription: None,
            store_sku: None,
        },
        signed_app_transaction: body.signed_app_transaction,
    };
    let answer =
        purchases::submit(&s.cx, &app, &user, submission, caller.id(), s.clock.now()).await?;
    tracing::info!(app = %app.id, customer = %user, status = answer.status, "purchase submitted");
    Ok(ApiJson(answer))
}

/// The body of a restore.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// `app_store` (with `signed_transactions` or `receipt_data`) or `play_store` (with
    /// `purchase_tokens`).
    store: String,
    /// StoreKit 2: the `jwsRepresentation` of each of `Transaction.currentEntitlements`.
    #[serde(default)]
    signed_transactions: Vec<String>,
    /// A legacy receipt.
    #[serde(default)]
    receipt_data: Option<String>,
    /// Google Play: the `purchaseToken` of each of the app's current purchases
    /// (`queryPurchasesAsync`).
    #[serde(default)]
    purchase_tokens: Vec<String>,
}

/// Restores a customer's store purchases; a purchase another customer holds moves by the app's
/// `transfer_policy`.
#[utoipa::path(post, path = "/v1/apps/{app}/customers/{app_user_id}/restore", tag = "customers",
    params(("app" = gateway_core::AppId, Path), ("app_user_id" = gateway_core::AppUserId, Path)), request_body = RestoreBody,
    responses((status = 200, description = "The customer's snapshot after the restore", body = crate::service::customers::Snapshot),
              (status = 409, description = "`store_not_configured`", body = ErrorBody),
              (status = 422, description = "The store's signature or data was refused, or the receipt holds nothing to restore", body = ErrorBody),
              (status = 503, description = "`store_unavailable`: the App Store did not answer; try again", body = ErrorBody)))]
pub async fn restore(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, user)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RestoreBody>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&user)?;
    let app = app_for_customer(&s, &caller, &app, &user, &headers, &[Scope::Purchases]).await?;
    let apple = !body.signed_transactions.is_empty() || body.receipt_data.is_some();
    let store = match (body.store.as_str(), apple, body.purchase_tokens.is_empty()) {
        ("app_store", _, true) => Store::AppStore,
        ("play_store", false, _) => Store::PlayStore,
        ("app_store" | "play_store", _, _) => {
            return Err(ApiError::bad_request(
                "field_not_for_store",
                "`signed_transactions` and `receipt_data` restore App Store purchases, `purchase_tokens` Google Play ones.",
            ));
        }
        _ => {
            return Err(ApiError::bad_request(
                "store_not_supported",
                "Restores are taken for `app_store` (with `signed_transactions` or `receipt_data`) and `play_store` (with `purchase_tokens`).",
            ));
        }
    };
    let proof = RestoreProof {
        signed_transactions: body.signed_transactions,
        receipt_data: body.receipt_data,
        purchase_tokens: body.purchase_tokens,
    };
    let snap = purchases::restore(
        &s.cx,
        &app,
        &user,
        (store, proof),
        caller.id(),
        s.clock.now(),
    )
    .await?;
    Ok(ApiJson(snap))
}

/// The body of a refund.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Why; kept in the customer's audit log.
    reason: String,
    /// Refund only what is left of a subscription's paid period (Play's `proratedRefund`); the
    /// whole of it by default.
    #[serde(default)]
    prorated: bool,
}

/// Refunds a purchase at its store and ends its access (Google Play: `subscriptionsv2.revoke`, or
/// `orders.refund` with `revoke` for a one-time purchase). Apple refunds only at the customer's
/// request, so an App Store purchase gets 409 `store_cannot_refund`.
#[utoipa::path(post, path = "/v1/apps/{app}/purchases/{purchase_id}/refund", tag = "customers",
    params(("app" = gateway_core::AppId, Path), ("purchase_id" = gateway_core::ResourceId, Path)), request_body = RefundBody,
    responses((status = 200, description = "The purchase and the customer after the refund", body = RefundDone),
              (status = 400, description = "`reason_required`", body = ErrorBody),
              (status = 422, description = "`prorated_refund_not_possible`: only a subscription is refunded pro rata", body = ErrorBody),
              (status = 404, description = "`purchase_not_found`", body = ErrorBody),
              (status = 409, description = "`already_refunded`, `store_cannot_refund`, `invalid_purchase_state`, `store_not_configured`", body = ErrorBody),
              (status = 503, description = "`store_unavailable`: the store did not answer; nothing changed", body = ErrorBody)))]
pub async fn refund(
    State(s): State<AppState>,
    caller: Caller,
    Path((app, purchase_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<RefundBody>,
) -> ApiResult<impl IntoResponse> {
    let purchase_id = parse_id(&purchase_id, "purchase_id")?;
    let app = app_for(&s, &caller, &app, Access::Scopes(&[Scope::Refunds])).await?;
    let ask = RefundAsk {
        reason: body.reason,
        prorated: body.prorated,
    };
    let done = purchases::refund(
        &s.cx,
        &app,
        purchase_id.as_str(),
        ask,
        caller.id(),
        s.clock.now(),
    )
    .await?;
    tracing::info!(app = %app.id, purchase = %purchase_id, "purchase refunded at its store");
    Ok(ApiJson(done))
}

/// The body of a checkout.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    app_user_id: String,
    /// The catalog's product (its `store_skus.stripe_price` is what Stripe sells).
    product_id: String,
    /// Where Stripe sends the customer after paying; `{CHECKOUT_SESSION_ID}` in it is replaced by
    /// the session's id (the gateway's own return page, `/pay/{app}/return?session_id=...`, waits
    /// for the grant).
    success_url: String,
    cancel_url: String,
    /// The buyer's country (ISO 3166 alpha-2), required when the app embargoes some.
    #[serde(default)]
    country: Option<String>,
}

/// Starts a web purchase: a gateway order and a Stripe Checkout Session for the product's Stripe
/// price (payment mode, or subscription mode for a subscription), the customer's Stripe customer
/// reused. Send the customer to `url`.
#[utoipa::path(post, path = "/v1/apps/{app}/checkout", tag = "customers", params(("app" = gateway_core::AppId, Path)), request_body = CheckoutBody,
    responses((status = 201, description = "The session to send the customer to", body = CheckoutStarted),
              (status = 403, description = "`embargoed`: the buyer's country is refused", body = ErrorBody),
              (status = 404, description = "`product_not_found`", body = ErrorBody),
              (status = 409, description = "`store_not_configured`, `not_sold_on_stripe`, `product_inactive` or `country_required`", body = ErrorBody),
              (status = 422, description = "Stripe refused the session (`store_refused`: an unknown price, say)", body = ErrorBody),
              (status = 503, description = "`store_unavailable`: Stripe did not answer; try again", body = ErrorBody)))]
pub async fn checkout(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&body.app_user_id)?;
    let app = app_for_customer(&s, &caller, &app, &user, &headers, &[Scope::Purchases]).await?;
    let ask = CheckoutAsk {
        product_id: super::parse_product(&body.product_id)?,
        success_url: body.success_url,
        cancel_url: body.cancel_url,
        country: body.country,
    };
    let started = checkout::start(&s.cx, &app, &user, ask, s.clock.now()).await?;
    tracing::info!(app = %app.id, customer = %user, session = %started.checkout_session_id, "checkout started");
    Ok((axum::http::StatusCode::CREATED, ApiJson(started)))
}

/// The body of an offer signature request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferSignatureBody {
    app_user_id: String,
    /// `promotional` (a promotional or win-back offer) or `introductory_eligibility`.
    kind: String,
    /// The catalog's product id, or its App Store product id.
    product_id: String,
    /// The offer's identifier in App Store Connect (promotional).
    #[serde(default)]
    offer_identifier: Option<String>,
    /// Whether the customer may have the introductory offer (introductory_eligibility).
    #[serde(default)]
    allow_introductory_offer: Option<bool>,
    /// What the app passes StoreKit as `applicationUsername` (StoreKit 2: the `appAccountToken`),
    /// for the legacy signature; none is an empty one.
    #[serde(default)]
    application_username: Option<String>,
    /// Any transaction id of the customer; by default their Apple Account's `appTransactionId`,
    /// else the lineage of their latest App Store purchase.
    #[serde(default)]
    transaction_id: Option<String>,
}

/// Signs an App Store offer for a customer with the app's In-App Purchase key: a promotional
/// offer in both forms StoreKit takes (the legacy signature and StoreKit 2's JWS), or an
/// introductory-offer eligibility JWS.
#[utoipa::path(post, path = "/v1/apps/{app}/app_store/offer_signatures", tag = "customers",
    params(("app" = gateway_core::AppId, Path)), request_body = OfferSignatureBody,
    responses((status = 200, description = "The signature and what StoreKit takes beside it", body = crate::service::offers::OfferSignature),
              (status = 400, description = "`invalid_offer`, `invalid_kind` or a malformed field", body = ErrorBody),
              (status = 404, description = "`product_not_found`", body = ErrorBody),
              (status = 409, description = "`product_not_on_app_store`, `store_not_configured` (no In-App Purchase key) or `transaction_id_required` (no transaction of the customer is known)", body = ErrorBody),
              (status = 503, description = "`store_unavailable`: the signature could not be made; try again", body = ErrorBody)))]
pub async fn offer_signature(
    State(s): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OfferSignatureBody>,
) -> ApiResult<impl IntoResponse> {
    let user = parse_user(&body.app_user_id)?;
    let app = app_for_customer(&s, &caller, &app, &user, &headers, &[Scope::Purchases]).await?;
    let kind = match body.kind.as_str() {
        "promotional" => OfferKind::Promotional,
        "introductory_eligibility" => OfferKind::IntroductoryEligibility,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_kind",
                "`kind` is promotional or introductory_eligibility.",
            ));
        }
    };
    let ask = OfferAsk {
        kind,
        product: body.product_id,
        offer_identifier: body.offer_identifier,
        allow_introductory_offer: body.allow_introductory_offer,
        application_username: body.application_username,
        transaction_id: body.transaction_id,
    };
    let signed = offers::sign(&s.cx, &app, &user, ask, s.clock.now()).await?;
    tracing::info!(app = %app.id, customer = %user, kind = signed.kind, product = %signed.product_id, "offer signed");
    Ok(ApiJson(signed))
}
