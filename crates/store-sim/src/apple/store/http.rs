//! The simulated App Store's HTTP control surface under `/sim/apple`, JSON in and out: the router,
//! one handler per action, body parsing and the error answers. The actions themselves are in
//! `mod.rs`.

use std::{sync::Arc, time::Duration};

use crate::control::{self, ControlError};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::json;

use super::{
    AppleStore, AppleStoreError, ExpirySubtype, Outcome, ProductKind, Purchase, RevocationReason,
};

impl ControlError for AppleStoreError {
    fn unfit(message: String) -> Self {
        AppleStoreError::Invalid(message)
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UnknownTransaction(_) => (StatusCode::NOT_FOUND, "unknown_transaction"),
            Self::NotASubscription(_) => (StatusCode::CONFLICT, "not_a_subscription"),
            Self::AlreadyRevoked(_) => (StatusCode::CONFLICT, "already_revoked"),
            Self::NotRefunded(_) => (StatusCode::CONFLICT, "not_refunded"),
            Self::AlreadyExpired(_) => (StatusCode::CONFLICT, "already_expired"),
            Self::Revoked(_) => (StatusCode::CONFLICT, "revoked"),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::NoNotificationUrl => (StatusCode::CONFLICT, "no_notification_url"),
            Self::Sign(_) => (StatusCode::INTERNAL_SERVER_ERROR, "signing_failed"),
        }
    }
}

impl IntoResponse for AppleStoreError {
    fn into_response(self) -> Response {
        control::answer(&self)
    }
}

impl AppleStore {
    /// The control surface: `POST /sim/apple/{buy, renew, fail-to-renew, refund, reverse-refund,
    /// revoke, share-with-family, change-plan, expire, tell, app-transaction, rescind-consent,
    /// external-purchase-token}`, `GET /sim/apple/transactions/{id}` (the decoded payload),
    /// `GET /sim/apple/transactions/{id}/signed` and `GET|POST /sim/apple/clock`. Errors are
    /// `{"error": {"code", "message"}}` with a 4xx for a bad request or an unknown id.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/sim/apple/buy", post(buy))
            .route("/sim/apple/renew", post(renew))
            .route("/sim/apple/fail-to-renew", post(fail_to_renew))
            .route("/sim/apple/refund", post(refund))
            .route("/sim/apple/reverse-refund", post(reverse_refund))
            .route("/sim/apple/revoke", post(revoke))
            .route("/sim/apple/share-with-family", post(share_with_family))
            .route("/sim/apple/change-plan", post(change_plan))
            .route("/sim/apple/tell", post(tell))
            .route("/sim/apple/app-transaction", post(app_transaction))
            .route("/sim/apple/rescind-consent", post(rescind_consent))
            .route(
                "/sim/apple/external-purchase-token",
                post(external_purchase_token),
            )
            .route("/sim/apple/expire", post(expire))
            .route("/sim/apple/transactions/{id}", get(transaction))
            .route("/sim/apple/transactions/{id}/signed", get(signed))
            .route("/sim/apple/clock", get(clock).post(set_clock))
            .with_state(self.clone())
    }
}

/// What the control handlers answer.
type Answer = Result<Response, AppleStoreError>;

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppleStoreError> {
    control::body(bytes)
}

fn outcome(o: Outcome) -> Response {
    Json(o).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyBody {
    sku: String,
    kind: String,
    period: Option<String>,
    app_account_token: Option<String>,
    quantity: Option<u32>,
    #[serde(default)]
    family_shared: bool,
    price: Option<i64>,
    /// The simulator's name for the Apple Account buying.
    account: Option<String>,
}

async fn buy(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: BuyBody = body(&bytes)?;
    let kind = ProductKind::parse(&b.kind, b.period.as_deref())?;
    let purchase = Purchase {
        sku: &b.sku,
        kind,
        app_account_token: b.app_account_token.as_deref(),
        quantity: b.quantity.unwrap_or(1),
        family_shared: b.family_shared,
        price: b.price,
        account: b.account.as_deref(),
    };
    Ok(outcome(s.buy_with(&purchase).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineageBody {
    original_transaction_id: String,
}

async fn renew(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: LineageBody = body(&bytes)?;
    Ok(outcome(s.renew(&b.original_transaction_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TellBody {
    transaction_id: String,
    notification_type: String,
    subtype: Option<String>,
}

async fn tell(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: TellBody = body(&bytes)?;
    Ok(outcome(
        s.tell(
            &b.transaction_id,
            &b.notification_type,
            b.subtype.as_deref(),
        )
        .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountBody {
    /// The simulator's name for an Apple Account.
    account: String,
}

/// The account's AppTransaction: its decoded payload and the signed form StoreKit hands the app.
async fn app_transaction(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: AccountBody = body(&bytes)?;
    let t = s.app_transaction(&b.account)?;
    let signed = s.signed_app_transaction(&b.account)?;
    Ok(Json(json!({"app_transaction": t, "signed_app_transaction": signed})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// CREATED, UNREPORTED or ACTIVE_TOKEN_REMINDER.
    subtype: String,
    /// ACQUISITION, SERVICES, IN_APP or LINK_OUT.
    token_type: String,
}

async fn external_purchase_token(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: TokenBody = body(&bytes)?;
    Ok(outcome(
        s.external_purchase_token(&b.subtype, &b.token_type).await?,
    ))
}

async fn rescind_consent(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: AccountBody = body(&bytes)?;
    Ok(outcome(s.rescind_consent(&b.account).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanBody {
    original_transaction_id: String,
    /// The product id (SKU) of the group to move to.
    product_id: String,
    /// At once (an upgrade, the default) or at the next renewal (a downgrade).
    #[serde(default)]
    at_renewal: bool,
}

async fn change_plan(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: PlanBody = body(&bytes)?;
    Ok(outcome(
        s.change_plan(&b.original_transaction_id, &b.product_id, !b.at_renewal)
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    original_transaction_id: String,
    /// Apple offers 3, 16 or 28 days; any whole number of days is taken.
    grace_period_days: Option<u32>,
}

async fn fail_to_renew(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: FailBody = body(&bytes)?;
    let grace = b
        .grace_period_days
        .map(|d| Duration::from_secs(u64::from(d) * 86_400));
    Ok(outcome(
        s.fail_to_renew(&b.original_transaction_id, grace).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    transaction_id: String,
    /// Apple's `revocationReason`: 0 (another reason, the default) or 1 (an issue in the app).
    revocation_reason: Option<i64>,
    /// A prorated refund's `revocationPercentage` (thousandths of a percent); whole when absent.
    revocation_percentage: Option<i64>,
}

async fn refund(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: RefundBody = body(&bytes)?;
    let reason = match b.revocation_reason {
        None | Some(0) => RevocationReason::Other,
        Some(1) => RevocationReason::AppIssue,
        Some(n) => {
            return Err(AppleStoreError::Invalid(format!(
                "revocation_reason {n} is not Apple's: 0 (another reason) or 1 (an issue in the app)"
            )));
        }
    };
    Ok(outcome(
        s.refund_share(&b.transaction_id, reason, b.revocation_percentage)
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransactionBody {
    transaction_id: String,
}

async fn reverse_refund(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: TransactionBody = body(&bytes)?;
    Ok(outcome(s.reverse_refund(&b.transaction_id).await?))
}

async fn revoke(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: TransactionBody = body(&bytes)?;
    Ok(outcome(s.revoke(&b.transaction_id).await?))
}

/// A copy of the purchase for a family member: its decoded payload and the signed transaction the
/// member's app would submit.
async fn share_with_family(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: TransactionBody = body(&bytes)?;
    let copy = s.share_with_family(&b.transaction_id)?;
    let id = copy["transactionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let signed = s.signed_transaction(&id)?;
    Ok(Json(json!({"transaction": copy, "signed_transaction": signed})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireBody {
    original_transaction_id: String,
    /// VOLUNTARY (the default), BILLING_RETRY, PRICE_INCREASE or PRODUCT_NOT_FOR_SALE.
    subtype: Option<String>,
}

async fn expire(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: ExpireBody = body(&bytes)?;
    let subtype = b
        .subtype
        .as_deref()
        .map_or(Ok(ExpirySubtype::Voluntary), str::parse)?;
    Ok(outcome(
        s.expire(&b.original_transaction_id, subtype).await?,
    ))
}

async fn transaction(State(s): State<Arc<AppleStore>>, Path(id): Path<String>) -> Answer {
    Ok(Json(s.transaction(&id)?).into_response())
}

async fn signed(State(s): State<Arc<AppleStore>>, Path(id): Path<String>) -> Answer {
    Ok(Json(json!({"signedTransactionInfo": s.signed_transaction(&id)?})).into_response())
}

async fn clock(State(s): State<Arc<AppleStore>>) -> Response {
    Json(json!({"now_ms": s.clock.now_ms()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    /// Stops the clock here (Unix ms).
    now_ms: Option<i64>,
    /// Then moves it this far.
    advance_ms: Option<i64>,
}

async fn set_clock(State(s): State<Arc<AppleStore>>, bytes: Bytes) -> Answer {
    let b: ClockBody = body(&bytes)?;
    if let Some(at) = b.now_ms {
        s.clock.set(at);
    }
    if let Some(by) = b.advance_ms {
        s.clock.advance(by);
    }
    Ok(Json(json!({"now_ms": s.clock.now_ms()})).into_response())
}
