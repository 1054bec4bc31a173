//! The simulated Google Play's control surface under `/sim/play`, JSON in and out: setup (service
//! accounts, packages and their push settings, key revocation, faults, the push mode, the clock),
//! one route per action, and reads of the books and records. Every action body takes an optional
//! `"push"`: `"send"`, `"skip"`, or `{"forge": ...}` (`"other_key"`, `"expired"`, `"no_auth"`,
//! `"email_unverified"`, `{"audience": "..."}`, `{"email": "..."}`, `{"issuer": "..."}`,
//! `{"wrong_token": "..."}`). Errors are `{"error": {"code", "message"}}` with a 4xx.

use std::{sync::Arc, time::Duration};

use crate::control::{self, ControlError};
use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{Action, Buy, Refund, Subscribe};
use crate::play::{
    CancelledBy, Forge, Period, PlayError, PlaySim, PushAuth, PushMode, PushSettings, VoidedReason,
    VoidedSource, lock, push::DEFAULT_SUBSCRIPTION,
};

impl ControlError for PlayError {
    fn unfit(message: String) -> Self {
        PlayError::Invalid(message)
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UnknownPackage(_) => (StatusCode::NOT_FOUND, "unknown_package"),
            Self::UnknownToken(_) => (StatusCode::NOT_FOUND, "unknown_purchase_token"),
            Self::UnknownOrder(_) => (StatusCode::NOT_FOUND, "unknown_order"),
            Self::UnknownAccount(_) => (StatusCode::NOT_FOUND, "unknown_service_account"),
            Self::UnknownMessage(_) => (StatusCode::NOT_FOUND, "unknown_message"),
            Self::NotASubscription(_) => (StatusCode::CONFLICT, "not_a_subscription"),
            Self::NotAOneTimePurchase(_) => (StatusCode::CONFLICT, "not_a_one_time_purchase"),
            Self::InvalidState { .. } => (StatusCode::CONFLICT, "invalid_state"),
            Self::NoPushSettings(_) => (StatusCode::CONFLICT, "no_push_settings"),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Key(_) => (StatusCode::INTERNAL_SERVER_ERROR, "key_failed"),
        }
    }
}

impl IntoResponse for PlayError {
    fn into_response(self) -> Response {
        control::answer(&self)
    }
}

/// What the control handlers answer.
type Answer = Result<Response, PlayError>;

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PlayError> {
    control::body(bytes)
}

fn ok<T: serde::Serialize>(value: T) -> Answer {
    control::ok(value)
}

/// `"push"` in an action body.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PushBody {
    Send,
    Skip,
    Forge(ForgeBody),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ForgeBody {
    OtherKey,
    Expired,
    NoAuth,
    EmailUnverified,
    Audience(String),
    Email(String),
    Issuer(String),
    WrongToken(String),
}

impl From<PushBody> for PushMode {
    fn from(b: PushBody) -> Self {
        match b {
            PushBody::Send => PushMode::Send,
            PushBody::Skip => PushMode::Skip,
            PushBody::Forge(f) => PushMode::Forge(match f {
                ForgeBody::OtherKey => Forge::OtherKey,
                ForgeBody::Expired => Forge::Expired,
                ForgeBody::NoAuth => Forge::NoAuth,
                ForgeBody::EmailUnverified => Forge::EmailUnverified,
                ForgeBody::Audience(a) => Forge::Audience(a),
                ForgeBody::Email(e) => Forge::Email(e),
                ForgeBody::Issuer(i) => Forge::Issuer(i),
                ForgeBody::WrongToken(t) => Forge::WrongToken(t),
            }),
        }
    }
}

/// Takes an action, with the body's push mode if it names one.
async fn act(sim: &PlaySim, action: Action, push: Option<PushBody>) -> Answer {
    let outcome = match push {
        Some(p) => sim.act_with(action, p.into()).await?,
        None => sim.act(action).await?,
    };
    ok(outcome)
}

impl PlaySim {
    /// The control surface under `/sim/play` (see this module's routes).
    pub(in crate::play) fn control_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/sim/play/service-accounts", post(create_service_account))
            .route("/sim/play/keys/revoke", post(revoke_key))
            .route("/sim/play/packages", get(packages).post(set_package))
            .route("/sim/play/faults", post(faults))
            .route("/sim/play/push-mode", post(push_mode))
            .route("/sim/play/buy", post(buy))
            .route("/sim/play/subscribe", post(subscribe))
            .route("/sim/play/confirm", post(confirm))
            .route("/sim/play/cancel-pending", post(cancel_pending))
            .route("/sim/play/renew", post(renew))
            .route("/sim/play/grace", post(grace))
            .route("/sim/play/hold", post(hold))
            .route("/sim/play/pause", post(pause))
            .route("/sim/play/recover", post(recover))
            .route("/sim/play/cancel", post(cancel))
            .route("/sim/play/restart", post(restart))
            .route("/sim/play/expire", post(expire))
            .route("/sim/play/revoke", post(revoke))
            .route("/sim/play/change-plan", post(change_plan))
            .route("/sim/play/resubscribe", post(resubscribe))
            .route("/sim/play/refund", post(refund))
            .route("/sim/play/refund-review", post(refund_review))
            .route("/sim/play/test-notification", post(test_notification))
            .route("/sim/play/tick", post(tick))
            .route("/sim/play/resend", post(resend))
            .route("/sim/play/purchases/{token}", get(purchase))
            .route("/sim/play/orders/{order_id}", get(order))
            .route("/sim/play/voided", get(voided))
            .route("/sim/play/deliveries", get(deliveries))
            .route("/sim/play/calls", get(calls))
            .route("/sim/play/acknowledgements", get(acknowledgements))
            .route("/sim/play/refund-reviews", get(refund_reviews))
            .route("/sim/play/clock", get(clock).post(set_clock))
            .with_state(self.clone())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountBody {
    project_id: Option<String>,
    /// Packages to grant it (added if missing).
    #[serde(default)]
    packages: Vec<String>,
}

/// Makes a service account and answers its key file.
async fn create_service_account(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: AccountBody = body(&bytes)?;
    let account = sim.create_service_account(b.project_id.as_deref().unwrap_or("play-sim"))?;
    for package in &b.packages {
        sim.add_package(package);
        sim.grant(&account, package)?;
    }
    ok(account.key_file())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeKeyBody {
    client_email: String,
}

async fn revoke_key(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: RevokeKeyBody = body(&bytes)?;
    sim.revoke_key_of(&b.client_email)?;
    ok(json!({}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcBody {
    /// The push endpoint URL when absent.
    audience: Option<String>,
    service_account_email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushSettingsBody {
    endpoint: String,
    oidc: Option<OidcBody>,
    token: Option<String>,
    subscription: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageBody {
    package: String,
    push: Option<PushSettingsBody>,
}

/// Adds a package and sets (or, without `push`, clears) its push settings.
async fn set_package(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: PackageBody = body(&bytes)?;
    sim.add_package(&b.package);
    let Some(p) = b.push else {
        sim.clear_push(&b.package);
        return ok(json!({}));
    };
    let auth = match (p.oidc, p.token) {
        (Some(_), Some(_)) => {
            return Err(PlayError::Invalid(
                "push authentication is either oidc or token, not both".into(),
            ));
        }
        (Some(o), None) => PushAuth::Oidc {
            audience: o.audience.unwrap_or_else(|| p.endpoint.clone()),
            service_account_email: o.service_account_email,
        },
        (None, Some(t)) => PushAuth::Token(t),
        (None, None) => PushAuth::None,
    };
    let settings = PushSettings {
        endpoint: p.endpoint,
        auth,
        subscription: p
            .subscription
            .unwrap_or_else(|| DEFAULT_SUBSCRIPTION.to_owned()),
    };
    sim.set_push(&b.package, settings)?;
    ok(json!({}))
}

/// The packages in the simulated Play Console, by name.
async fn packages(State(sim): State<Arc<PlaySim>>) -> Answer {
    ok(json!({"packages": sim.packages()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    status: u16,
    retry_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsBody {
    faults: Vec<FaultBody>,
    /// Calls to let through first.
    #[serde(default)]
    after: u64,
}

async fn faults(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: FaultsBody = body(&bytes)?;
    sim.fail_after(
        b.after,
        b.faults
            .into_iter()
            .map(|f| (f.status, f.retry_after))
            .collect(),
    );
    ok(json!({}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushModeBody {
    push: PushBody,
}

async fn push_mode(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: PushModeBody = body(&bytes)?;
    sim.set_push_mode(b.push.into());
    ok(json!({}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyBody {
    package: String,
    product_id: String,
    quantity: Option<u32>,
    obfuscated_account_id: Option<String>,
    obfuscated_profile_id: Option<String>,
    #[serde(default)]
    pending: bool,
    #[serde(default)]
    test: bool,
    unit_price_micros: Option<i64>,
    purchase_option_id: Option<String>,
    offer_id: Option<String>,
    #[serde(default)]
    offer_tags: Vec<String>,
    push: Option<PushBody>,
}

async fn buy(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: BuyBody = body(&bytes)?;
    let defaults = Buy::new(&b.package, &b.product_id);
    let buy = Buy {
        quantity: b.quantity.unwrap_or(1),
        obfuscated_account_id: b.obfuscated_account_id,
        obfuscated_profile_id: b.obfuscated_profile_id,
        pending: b.pending,
        test: b.test,
        unit_price_micros: b.unit_price_micros.unwrap_or(defaults.unit_price_micros),
        purchase_option_id: b
            .purchase_option_id
            .unwrap_or_else(|| defaults.purchase_option_id.clone()),
        offer_id: b.offer_id,
        offer_tags: b.offer_tags,
        ..defaults
    };
    act(&sim, Action::Buy(buy), b.push).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    package: String,
    product_id: String,
    base_plan_id: String,
    /// ISO 8601, one unit: P1W, P1M (the default), P3M, P1Y, or PT5M for quick tests.
    period: Option<String>,
    offer_id: Option<String>,
    #[serde(default)]
    offer_tags: Vec<String>,
    obfuscated_account_id: Option<String>,
    obfuscated_profile_id: Option<String>,
    #[serde(default)]
    pending: bool,
    #[serde(default)]
    test: bool,
    price_micros: Option<i64>,
    push: Option<PushBody>,
}

fn period(text: Option<&str>) -> Result<Period, PlayError> {
    text.map_or(Ok(Period::ONE_MONTH), |p| {
        p.parse()
            .map_err(|e: crate::apple::store::AppleStoreError| PlayError::Invalid(e.to_string()))
    })
}

impl SubscribeBody {
    fn plan(self) -> Result<(Subscribe, Option<PushBody>), PlayError> {
        let defaults = Subscribe::new(&self.package, &self.product_id, &self.base_plan_id);
        let plan = Subscribe {
            period: period(self.period.as_deref())?,
            offer_id: self.offer_id,
            offer_tags: self.offer_tags,
            obfuscated_account_id: self.obfuscated_account_id,
            obfuscated_profile_id: self.obfuscated_profile_id,
            pending: self.pending,
            test: self.test,
            price_micros: self.price_micros.unwrap_or(defaults.price_micros),
            ..defaults
        };
        Ok((plan, self.push))
    }
}

async fn subscribe(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let (plan, push) = body::<SubscribeBody>(&bytes)?.plan()?;
    act(&sim, Action::Subscribe(plan), push).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    purchase_token: String,
    push: Option<PushBody>,
}

/// An action that names only a purchase token.
async fn token_action(sim: &PlaySim, bytes: &[u8], make: fn(String) -> Action) -> Answer {
    let b: TokenBody = body(bytes)?;
    act(sim, make(b.purchase_token), b.push).await
}

async fn confirm(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::Confirm { token }).await
}

async fn cancel_pending(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::CancelPending { token }).await
}

async fn renew(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::Renew { token }).await
}

async fn hold(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::PutOnHold { token }).await
}

async fn recover(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::Recover { token }).await
}

async fn restart(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::Restart { token }).await
}

async fn expire(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::Expire { token }).await
}

async fn revoke(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::Revoke { token }).await
}

async fn resubscribe(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::Resubscribe { token }).await
}

async fn refund_review(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    token_action(&sim, &bytes, |token| Action::RequestRefundReview { token }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GraceBody {
    purchase_token: String,
    /// Google offers 3, 7, 14 or 30 days; any whole number is taken. 3 when absent.
    grace_days: Option<u32>,
    push: Option<PushBody>,
}

async fn grace(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: GraceBody = body(&bytes)?;
    let days = u64::from(b.grace_days.unwrap_or(3));
    let action = Action::EnterGracePeriod {
        token: b.purchase_token,
        grace: Duration::from_secs(days * 86_400),
    };
    act(&sim, action, b.push).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    purchase_token: String,
    /// How long the pause lasts (ISO 8601, P1M when absent).
    period: Option<String>,
    push: Option<PushBody>,
}

async fn pause(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: PauseBody = body(&bytes)?;
    let action = Action::Pause {
        token: b.purchase_token,
        duration: period(b.period.as_deref())?,
    };
    act(&sim, action, b.push).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    purchase_token: String,
    /// `user` (the default), `system` or `developer`.
    by: Option<String>,
    /// For `user`: the cancel survey's reason, e.g. `CANCEL_SURVEY_REASON_COST_RELATED`.
    survey_reason: Option<String>,
    push: Option<PushBody>,
}

async fn cancel(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: CancelBody = body(&bytes)?;
    let by = match b.by.as_deref().unwrap_or("user") {
        "user" => CancelledBy::User {
            survey_reason: b.survey_reason,
        },
        "system" => CancelledBy::System,
        "developer" => CancelledBy::Developer,
        other => {
            return Err(PlayError::Invalid(format!(
                "{other:?} is not who cancels: use user, system or developer"
            )));
        }
    };
    let action = Action::Cancel {
        token: b.purchase_token,
        by,
    };
    act(&sim, action, b.push).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePlanBody {
    purchase_token: String,
    product_id: String,
    base_plan_id: String,
    period: Option<String>,
    offer_id: Option<String>,
    #[serde(default)]
    offer_tags: Vec<String>,
    price_micros: Option<i64>,
    push: Option<PushBody>,
}

async fn change_plan(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: ChangePlanBody = body(&bytes)?;
    let package = lock(&sim.books).package_of(&b.purchase_token)?;
    let defaults = Subscribe::new(&package, &b.product_id, &b.base_plan_id);
    let to = Subscribe {
        period: period(b.period.as_deref())?,
        offer_id: b.offer_id,
        offer_tags: b.offer_tags,
        price_micros: b.price_micros.unwrap_or(defaults.price_micros),
        ..defaults
    };
    let action = Action::ChangePlan {
        token: b.purchase_token,
        to,
    };
    act(&sim, action, b.push).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    purchase_token: String,
    /// Part of a one-time purchase's quantity; the whole purchase when absent.
    quantity: Option<u32>,
    /// 0 user (the default), 1 developer, 2 Google.
    voided_source: Option<u8>,
    /// 0 other (the default) to 8 unacknowledged purchase.
    voided_reason: Option<u8>,
    push: Option<PushBody>,
}

async fn refund(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: RefundBody = body(&bytes)?;
    let source = match b.voided_source {
        None => VoidedSource::default(),
        Some(n) => VoidedSource::from_code(n)
            .ok_or_else(|| PlayError::Invalid(format!("voided_source {n} is not 0, 1 or 2")))?,
    };
    let reason = match b.voided_reason {
        None => VoidedReason::default(),
        Some(n) => VoidedReason::from_code(n)
            .ok_or_else(|| PlayError::Invalid(format!("voided_reason {n} is not 0 to 8")))?,
    };
    let action = Action::Refund {
        token: b.purchase_token,
        refund: Refund {
            quantity: b.quantity,
            source,
            reason,
        },
    };
    act(&sim, action, b.push).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageOnlyBody {
    package: String,
    push: Option<PushBody>,
}

async fn test_notification(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: PackageOnlyBody = body(&bytes)?;
    act(
        &sim,
        Action::TestNotification { package: b.package },
        b.push,
    )
    .await
}

async fn tick(State(sim): State<Arc<PlaySim>>) -> Answer {
    ok(sim.tick().await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendBody {
    message_id: String,
    push: Option<PushBody>,
}

async fn resend(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: ResendBody = body(&bytes)?;
    let mode = b.push.map_or(PushMode::Send, PushMode::from);
    ok(sim.resend_with(&b.message_id, mode).await?)
}

/// A purchase as the API answers it (`ProductPurchaseV2` or `SubscriptionPurchaseV2`).
async fn purchase(State(sim): State<Arc<PlaySim>>, Path(token): Path<String>) -> Answer {
    sim.product_purchase(&token)
        .or_else(|| sim.subscription_purchase(&token))
        .map_or(Err(PlayError::UnknownToken(token)), ok)
}

async fn order(State(sim): State<Arc<PlaySim>>, Path(order_id): Path<String>) -> Answer {
    sim.order(&order_id)
        .map_or(Err(PlayError::UnknownOrder(order_id)), ok)
}

async fn voided(State(sim): State<Arc<PlaySim>>) -> Answer {
    ok(sim.voided_purchases())
}

async fn deliveries(State(sim): State<Arc<PlaySim>>) -> Answer {
    ok(sim.deliveries())
}

async fn calls(State(sim): State<Arc<PlaySim>>) -> Answer {
    ok(sim.calls())
}

async fn acknowledgements(State(sim): State<Arc<PlaySim>>) -> Answer {
    ok(sim.acknowledgements())
}

async fn refund_reviews(State(sim): State<Arc<PlaySim>>) -> Answer {
    ok(sim.refund_reviews())
}

async fn clock(State(sim): State<Arc<PlaySim>>) -> Answer {
    ok(json!({"now_ms": sim.now()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    /// Stops the clock here (Unix ms).
    now_ms: Option<i64>,
    /// Then moves it this far.
    advance_ms: Option<i64>,
}

async fn set_clock(State(sim): State<Arc<PlaySim>>, bytes: Bytes) -> Answer {
    let b: ClockBody = body(&bytes)?;
    let clock = sim.clock();
    if let Some(at) = b.now_ms {
        clock.set(at);
    }
    if let Some(by) = b.advance_ms {
        clock.advance(by);
    }
    let now: Value = sim.now().into();
    ok(json!({"now_ms": now}))
}
