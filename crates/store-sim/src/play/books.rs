//! The simulated Google Play's books: one-time purchases, subscriptions, their orders and the
//! voided purchases, with the transitions both the API (acknowledge, consume, revoke) and the
//! control actions make, and their renderings in Google's JSON. No HTTP, no pushes: a transition
//! answers the RTDN it calls for ([`Rtdn`]) and the caller sends it.
//!
//! Renderings follow the discovery document: int64 as strings, google-datetime as RFC 3339 with
//! milliseconds, empty repeated fields and unset messages left out (as Google's JSON mapping
//! does), string enums in the v2 resources and integer codes in the v1 ones.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

use super::{Period, PlayError, push::Rtdn, random_below, random_bytes, rfc3339};

/// Google refunds (and revokes) a purchase not acknowledged within three days of completing.
pub(super) const ACK_WINDOW_MS: i64 = 3 * DAY_MS;
/// A subscription expired longer than this can no longer be queried (HTTP 410).
pub(super) const QUERYABLE_AFTER_EXPIRY_MS: i64 = 60 * DAY_MS;
pub(super) const DAY_MS: i64 = 86_400_000;
/// The currency of simulated prices.
const CURRENCY: &str = "USD";
/// The share of a price Google passes on to the developer (its 15 % service fee tier).
const DEVELOPER_SHARE_PERCENT: i64 = 85;
/// Where order numbers start (17 digits, `GPA.dddd-dddd-dddd-ddddd`), plus a random offset so two
/// simulators of one test run do not share order ids.
const FIRST_ORDER: u64 = 3_300_000_000_000_000;

/// Who voided a purchase (`voidedSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum VoidedSource {
    /// 0: the user (a refund the user asked Google for).
    #[default]
    User,
    /// 1: the developer (a refund from the Play Console or the Orders API).
    Developer,
    /// 2: Google (chargebacks, unacknowledged purchases, fraud).
    Google,
}

impl VoidedSource {
    pub fn code(self) -> u8 {
        match self {
            Self::User => 0,
            Self::Developer => 1,
            Self::Google => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::User,
            1 => Self::Developer,
            2 => Self::Google,
            _ => return None,
        })
    }
}

/// Why a purchase was voided (`voidedReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum VoidedReason {
    /// 0
    #[default]
    Other,
    /// 1
    Remorse,
    /// 2
    NotReceived,
    /// 3
    Defective,
    /// 4
    AccidentalPurchase,
    /// 5
    Fraud,
    /// 6
    FriendlyFraud,
    /// 7
    Chargeback,
    /// 8: not acknowledged within three days.
    UnacknowledgedPurchase,
}

impl VoidedReason {
    pub fn code(self) -> u8 {
        match self {
            Self::Other => 0,
            Self::Remorse => 1,
            Self::NotReceived => 2,
            Self::Defective => 3,
            Self::AccidentalPurchase => 4,
            Self::Fraud => 5,
            Self::FriendlyFraud => 6,
            Self::Chargeback => 7,
            Self::UnacknowledgedPurchase => 8,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Other,
            1 => Self::Remorse,
            2 => Self::NotReceived,
            3 => Self::Defective,
            4 => Self::AccidentalPurchase,
            5 => Self::Fraud,
            6 => Self::FriendlyFraud,
            7 => Self::Chargeback,
            8 => Self::UnacknowledgedPurchase,
            _ => return None,
        })
    }
}

/// Who cancelled a subscription (`canceledStateContext`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelledBy {
    /// `userInitiatedCancellation`, with the cancel survey's reason if the user answered it
    /// (`CANCEL_SURVEY_REASON_COST_RELATED`, ...).
    User { survey_reason: Option<String> },
    /// `systemInitiatedCancellation` (billing problems, say).
    System,
    /// `developerInitiatedCancellation`.
    Developer,
    /// `replacementCancellation`: replaced by an upgrade or downgrade.
    Replacement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OneTimeState {
    Pending,
    Purchased,
    Cancelled,
}

impl OneTimeState {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Purchased => "PURCHASED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// The v1 `purchaseState` code.
    fn code(self) -> u8 {
        match self {
            Self::Purchased => 0,
            Self::Cancelled => 1,
            Self::Pending => 2,
        }
    }
}

/// A one-time product purchase.
pub(super) struct OneTime {
    pub(super) token: String,
    pub(super) package: String,
    pub(super) product_id: String,
    pub(super) quantity: u32,
    pub(super) refundable: u32,
    pub(super) order_id: String,
    pub(super) state: OneTimeState,
    pub(super) created_ms: i64,
    /// When payment completed (`purchaseCompletionTime`); `None` while pending.
    pub(super) completed_ms: Option<i64>,
    pub(super) acknowledged: bool,
    pub(super) consumed: bool,
    pub(super) developer_payload: Option<String>,
    pub(super) account_id: Option<String>,
    pub(super) profile_id: Option<String>,
    pub(super) region_code: String,
    pub(super) test: bool,
    pub(super) purchase_option_id: String,
    pub(super) offer_id: Option<String>,
    pub(super) offer_tags: Vec<String>,
    pub(super) offer_token: String,
}

impl OneTime {
    /// `ProductPurchaseV2`.
    pub(super) fn v2_json(&self) -> Value {
        let mut offer = Map::new();
        offer.insert(
            "purchaseOptionId".into(),
            self.purchase_option_id.clone().into(),
        );
        if let Some(o) = &self.offer_id {
            offer.insert("offerId".into(), o.clone().into());
        }
        if !self.offer_tags.is_empty() {
            offer.insert("offerTags".into(), self.offer_tags.clone().into());
        }
        offer.insert("offerToken".into(), self.offer_token.clone().into());
        offer.insert("quantity".into(), self.quantity.into());
        offer.insert("refundableQuantity".into(), self.refundable.into());
        offer.insert(
            "consumptionState".into(),
            if self.consumed {
                "CONSUMPTION_STATE_CONSUMED"
            } else {
                "CONSUMPTION_STATE_YET_TO_BE_CONSUMED"
            }
            .into(),
        );
        let mut p = Map::new();
        p.insert("kind".into(), "androidpublisher#productPurchaseV2".into());
        p.insert(
            "productLineItem".into(),
            json!([{"productId": self.product_id, "productOfferDetails": offer}]),
        );
        p.insert(
            "purchaseStateContext".into(),
            json!({"purchaseState": self.state.name()}),
        );
        if let Some(at) = self.completed_ms {
            p.insert("purchaseCompletionTime".into(), rfc3339(at).into());
        }
        p.insert(
            "acknowledgementState".into(),
            ack_state(self.acknowledged).into(),
        );
        p.insert("orderId".into(), self.order_id.clone().into());
        p.insert("regionCode".into(), self.region_code.clone().into());
        if let Some(a) = &self.account_id {
            p.insert("obfuscatedExternalAccountId".into(), a.clone().into());
        }
        if let Some(a) = &self.profile_id {
            p.insert("obfuscatedExternalProfileId".into(), a.clone().into());
        }
        if self.test {
            p.insert("testPurchaseContext".into(), json!({"fopType": "TEST"}));
        }
        Value::Object(p)
    }

    /// The v1 `ProductPurchase`: integer states, int64 as strings, `quantity` left out when 1.
    pub(super) fn v1_json(&self) -> Value {
        let mut p = Map::new();
        p.insert("kind".into(), "androidpublisher#productPurchase".into());
        p.insert(
            "purchaseTimeMillis".into(),
            self.completed_ms
                .unwrap_or(self.created_ms)
                .to_string()
                .into(),
        );
        p.insert("purchaseState".into(), self.state.code().into());
        p.insert("consumptionState".into(), u8::from(self.consumed).into());
        p.insert(
            "developerPayload".into(),
            self.developer_payload.clone().unwrap_or_default().into(),
        );
        p.insert("orderId".into(), self.order_id.clone().into());
        p.insert(
            "acknowledgementState".into(),
            u8::from(self.acknowledged).into(),
        );
        if self.test {
            p.insert("purchaseType".into(), 0.into());
        }
        if self.quantity != 1 {
            p.insert("quantity".into(), self.quantity.into());
        }
        p.insert("refundableQuantity".into(), self.refundable.into());
        p.insert("regionCode".into(), self.region_code.clone().into());
        if let Some(a) = &self.account_id {
            p.insert("obfuscatedExternalAccountId".into(), a.clone().into());
        }
        if let Some(a) = &self.profile_id {
            p.insert("obfuscatedExternalProfileId".into(), a.clone().into());
        }
        Value::Object(p)
    }
}

fn ack_state(acknowledged: bool) -> &'static str {
    if acknowledged {
        "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED"
    } else {
        "ACKNOWLEDGEMENT_STATE_PENDING"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubState {
    Pending,
    Active,
    Paused,
    InGracePeriod,
    OnHold,
    Canceled,
    Expired,
    PendingPurchaseCanceled,
}

impl SubState {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Pending => "SUBSCRIPTION_STATE_PENDING",
            Self::Active => "SUBSCRIPTION_STATE_ACTIVE",
            Self::Paused => "SUBSCRIPTION_STATE_PAUSED",
            Self::InGracePeriod => "SUBSCRIPTION_STATE_IN_GRACE_PERIOD",
            Self::OnHold => "SUBSCRIPTION_STATE_ON_HOLD",
            Self::Canceled => "SUBSCRIPTION_STATE_CANCELED",
            Self::Expired => "SUBSCRIPTION_STATE_EXPIRED",
            Self::PendingPurchaseCanceled => "SUBSCRIPTION_STATE_PENDING_PURCHASE_CANCELED",
        }
    }
}

/// A subscription purchase (one purchase token; renewals keep it and add orders).
pub(super) struct Sub {
    pub(super) token: String,
    pub(super) package: String,
    pub(super) product_id: String,
    pub(super) base_plan_id: String,
    pub(super) offer_id: Option<String>,
    pub(super) offer_tags: Vec<String>,
    pub(super) period: Period,
    pub(super) state: SubState,
    pub(super) created_ms: i64,
    /// When it was granted (`startTime`); `None` while pending.
    pub(super) start_ms: Option<i64>,
    /// The end of the last paid period.
    pub(super) paid_until: i64,
    /// The line item's `expiryTime`: the end of access (the paid period, or the grace period).
    pub(super) expiry_ms: i64,
    pub(super) auto_renew: bool,
    pub(super) acknowledged: bool,
    pub(super) developer_payload: Option<String>,
    /// The initial order id; renewal `n` (from 0) is `{initial}..n`.
    pub(super) first_order: String,
    pub(super) renewals: u32,
    /// Successful orders, oldest first (the last is `latestSuccessfulOrderId`).
    pub(super) orders: Vec<String>,
    /// The declined renewal's order id while in grace or on hold (`renewalDeclined.pendingOrderId`).
    pub(super) pending_order: Option<String>,
    pub(super) linked_token: Option<String>,
    pub(super) cancelled: Option<(CancelledBy, i64)>,
    pub(super) auto_resume_ms: Option<i64>,
    pub(super) account_id: Option<String>,
    pub(super) profile_id: Option<String>,
    /// `outOfAppPurchaseContext`: (expired token, its account id, its profile id), until acknowledged.
    pub(super) out_of_app: Option<(String, Option<String>, Option<String>)>,
    pub(super) test: bool,
    pub(super) region_code: String,
    pub(super) price_micros: i64,
    /// Bumped on every change, for the `etag`.
    pub(super) version: u64,
}

impl Sub {
    /// The next renewal's order id.
    pub(super) fn renewal_order_id(&self) -> String {
        format!("{}..{}", self.first_order, self.renewals)
    }

    /// Whether it expired long enough ago that Google answers 410 for it.
    pub(super) fn gone(&self, now: i64) -> bool {
        matches!(
            self.state,
            SubState::Expired | SubState::PendingPurchaseCanceled
        ) && self.expiry_ms.saturating_add(QUERYABLE_AFTER_EXPIRY_MS) < now
    }

    /// `SubscriptionPurchaseV2` (no `latestOrderId`: removed from the schema; the order ids are
    /// per line item).
    pub(super) fn v2_json(&self) -> Value {
        let owned = !matches!(
            self.state,
            SubState::Pending | SubState::PendingPurchaseCanceled
        );
        let mut item = Map::new();
        item.insert("productId".into(), self.product_id.clone().into());
        if owned {
            item.insert("expiryTime".into(), rfc3339(self.expiry_ms).into());
            if let Some(order) = self.orders.last() {
                item.insert("latestSuccessfulOrderId".into(), order.clone().into());
            }
        }
        item.insert(
            "autoRenewingPlan".into(),
            json!({"autoRenewEnabled": self.auto_renew, "recurringPrice": money(self.price_micros)}),
        );
        let mut offer = Map::new();
        offer.insert("basePlanId".into(), self.base_plan_id.clone().into());
        if let Some(o) = &self.offer_id {
            offer.insert("offerId".into(), o.clone().into());
        }
        if !self.offer_tags.is_empty() {
            offer.insert("offerTags".into(), self.offer_tags.clone().into());
        }
        item.insert("offerDetails".into(), Value::Object(offer));

        let mut s = Map::new();
        s.insert(
            "kind".into(),
            "androidpublisher#subscriptionPurchaseV2".into(),
        );
        s.insert("regionCode".into(), self.region_code.clone().into());
        s.insert("lineItems".into(), json!([item]));
        if let Some(at) = self.start_ms {
            s.insert("startTime".into(), rfc3339(at).into());
        }
        s.insert("subscriptionState".into(), self.state.name().into());
        if let Some(t) = &self.linked_token {
            s.insert("linkedPurchaseToken".into(), t.clone().into());
        }
        match self.state {
            SubState::Paused => {
                if let Some(at) = self.auto_resume_ms {
                    s.insert(
                        "pausedStateContext".into(),
                        json!({"autoResumeTime": rfc3339(at)}),
                    );
                }
            }
            SubState::InGracePeriod | SubState::OnHold => {
                let key = if self.state == SubState::OnHold {
                    "onHoldStateContext"
                } else {
                    "inGracePeriodStateContext"
                };
                let context = match &self.pending_order {
                    Some(order) => json!({"renewalDeclined": {"pendingOrderId": order}}),
                    None => json!({}),
                };
                s.insert(key.into(), context);
            }
            SubState::Canceled | SubState::Expired => {
                if let Some((by, at)) = &self.cancelled {
                    s.insert("canceledStateContext".into(), cancelled_json(by, *at));
                }
            }
            _ => {}
        }
        if self.test {
            s.insert("testPurchase".into(), json!({}));
        }
        s.insert(
            "acknowledgementState".into(),
            ack_state(self.acknowledged).into(),
        );
        let mut ids = Map::new();
        if let Some(a) = &self.account_id {
            ids.insert("obfuscatedExternalAccountId".into(), a.clone().into());
        }
        if let Some(a) = &self.profile_id {
            ids.insert("obfuscatedExternalProfileId".into(), a.clone().into());
        }
        if !ids.is_empty() {
            s.insert("externalAccountIdentifiers".into(), Value::Object(ids));
        }
        if let Some((token, account, profile)) = &self.out_of_app {
            let mut expired = Map::new();
            if let Some(a) = account {
                expired.insert("obfuscatedExternalAccountId".into(), a.clone().into());
            }
            if let Some(a) = profile {
                expired.insert("obfuscatedExternalProfileId".into(), a.clone().into());
            }
            let mut context = Map::new();
            if !expired.is_empty() {
                context.insert(
                    "expiredExternalAccountIdentifiers".into(),
                    Value::Object(expired),
                );
            }
            context.insert("expiredPurchaseToken".into(), token.clone().into());
            s.insert("outOfAppPurchaseContext".into(), Value::Object(context));
        }
        s.insert("etag".into(), self.etag().into());
        Value::Object(s)
    }

    fn etag(&self) -> String {
        let hash = self.token.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        URL_SAFE_NO_PAD.encode(format!("{hash:016x}:{}", self.version))
    }
}

fn cancelled_json(by: &CancelledBy, at: i64) -> Value {
    match by {
        CancelledBy::User { survey_reason } => {
            let mut user = json!({"cancelTime": rfc3339(at)});
            if let Some(reason) = survey_reason {
                user["cancelSurveyResult"] = json!({"reason": reason});
            }
            json!({"userInitiatedCancellation": user})
        }
        CancelledBy::System => json!({"systemInitiatedCancellation": {}}),
        CancelledBy::Developer => json!({"developerInitiatedCancellation": {}}),
        CancelledBy::Replacement => json!({"replacementCancellation": {}}),
    }
}

/// `Money` from micro-units of [`CURRENCY`].
pub(super) fn money(micros: i64) -> Value {
    json!({"currencyCode": CURRENCY, "units": micros.div_euclid(1_000_000).to_string(),
        "nanos": micros.rem_euclid(1_000_000) * 1000})
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OrderState {
    Pending,
    Processed,
    Canceled,
    PartiallyRefunded,
    Refunded,
}

impl OrderState {
    fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processed => "PROCESSED",
            Self::Canceled => "CANCELED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
            Self::Refunded => "REFUNDED",
        }
    }
}

pub(super) enum OrderKind {
    OneTime {
        purchase_option_id: String,
        offer_id: Option<String>,
        quantity: u32,
    },
    Subscription {
        base_plan_id: String,
        offer_id: Option<String>,
        start_ms: i64,
        end_ms: i64,
    },
}

/// An order (the Orders API's `Order`).
pub(super) struct Order {
    pub(super) id: String,
    pub(super) package: String,
    pub(super) token: String,
    pub(super) product_id: String,
    pub(super) kind: OrderKind,
    pub(super) state: OrderState,
    pub(super) created_ms: i64,
    pub(super) last_event_ms: i64,
    pub(super) total_micros: i64,
    pub(super) processed_ms: Option<i64>,
    pub(super) cancelled_ms: Option<i64>,
    /// (when, `OTHER` or `CHARGEBACK`, amount).
    pub(super) refund: Option<(i64, &'static str, i64)>,
    /// (when, amount).
    pub(super) partial_refunds: Vec<(i64, i64)>,
    pub(super) sales_channel: &'static str,
    /// The token of the refund review Google asked for, if any.
    pub(super) pending_refund_token: Option<String>,
}

impl Order {
    pub(super) fn json(&self) -> Value {
        let mut history = Map::new();
        if let Some(at) = self.processed_ms {
            history.insert("processedEvent".into(), json!({"eventTime": rfc3339(at)}));
        }
        if let Some(at) = self.cancelled_ms {
            history.insert(
                "cancellationEvent".into(),
                json!({"eventTime": rfc3339(at)}),
            );
        }
        if let Some((at, reason, micros)) = self.refund {
            history.insert(
                "refundEvent".into(),
                json!({"eventTime": rfc3339(at), "refundReason": reason,
                    "refundDetails": {"total": money(micros), "tax": money(0)}}),
            );
        }
        if !self.partial_refunds.is_empty() {
            let events: Vec<Value> = self
                .partial_refunds
                .iter()
                .map(|(at, micros)| {
                    json!({"createTime": rfc3339(*at), "processTime": rfc3339(*at),
                        "state": "PROCESSED_SUCCESSFULLY",
                        "refundDetails": {"total": money(*micros), "tax": money(0)}})
                })
                .collect();
            history.insert("partialRefundEvents".into(), events.into());
        }
        let mut line = json!({"productId": self.product_id, "productTitle": self.product_id,
            "listingPrice": money(self.total_micros), "total": money(self.total_micros),
            "tax": money(0)});
        match &self.kind {
            OrderKind::OneTime {
                purchase_option_id,
                offer_id,
                quantity,
            } => {
                let mut d = json!({"purchaseOptionId": purchase_option_id, "quantity": quantity});
                if let Some(o) = offer_id {
                    d["offerId"] = o.clone().into();
                }
                line["oneTimePurchaseDetails"] = d;
            }
            OrderKind::Subscription {
                base_plan_id,
                offer_id,
                start_ms,
                end_ms,
            } => {
                let mut d = json!({"basePlanId": base_plan_id,
                    "offerPhaseDetails": {"baseDetails": {}},
                    "servicePeriodStartTime": rfc3339(*start_ms),
                    "servicePeriodEndTime": rfc3339(*end_ms)});
                if let Some(o) = offer_id {
                    d["offerId"] = o.clone().into();
                }
                line["subscriptionDetails"] = d;
            }
        }
        json!({
            "orderId": self.id,
            "purchaseToken": self.token,
            "state": self.state.name(),
            "createTime": rfc3339(self.created_ms),
            "lastEventTime": rfc3339(self.last_event_ms),
            "salesChannel": self.sales_channel,
            "total": money(self.total_micros),
            "tax": money(0),
            "developerRevenueInBuyerCurrency": money(self.total_micros * DEVELOPER_SHARE_PERCENT / 100),
            "buyerAddress": {"buyerCountry": "US"},
            "orderDetails": {"taxInclusive": false},
            "orderHistory": history,
            "lineItems": [line],
        })
    }
}

/// A voided purchase, as `voidedpurchases.list` lists it.
#[derive(Debug, Clone)]
pub(super) struct Void {
    pub(super) package: String,
    pub(super) token: String,
    pub(super) order_id: String,
    pub(super) purchase_ms: i64,
    pub(super) voided_ms: i64,
    /// When Google recorded the void: what `startTime` and `endTime` filter on.
    pub(super) recorded_ms: i64,
    pub(super) source: VoidedSource,
    pub(super) reason: VoidedReason,
    /// `Some` for a quantity-based partial refund.
    pub(super) quantity: Option<u32>,
    pub(super) subscription: bool,
}

impl Void {
    pub(super) fn json(&self) -> Value {
        let mut v = json!({
            "kind": "androidpublisher#voidedPurchase",
            "purchaseToken": self.token,
            "purchaseTimeMillis": self.purchase_ms.to_string(),
            "voidedTimeMillis": self.voided_ms.to_string(),
            "orderId": self.order_id,
            "voidedSource": self.source.code(),
            "voidedReason": self.reason.code(),
        });
        if let Some(q) = self.quantity {
            v["voidedQuantity"] = q.into();
        }
        v
    }
}

/// Everything Google Play keeps about purchases.
pub(super) struct Books {
    pub(super) one_time: HashMap<String, OneTime>,
    pub(super) subs: HashMap<String, Sub>,
    pub(super) orders: HashMap<String, Order>,
    /// In the order Google recorded them.
    pub(super) voids: Vec<Void>,
    next_order: u64,
}

/// A purchase token shaped like Google's: letters, `.AO-J1O`, then base64url.
pub(super) fn new_purchase_token() -> String {
    let letters: String = random_bytes(24)
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    format!(
        "{letters}.AO-J1O{}",
        URL_SAFE_NO_PAD.encode(random_bytes(96))
    )
}

/// An opaque token (offer tokens, pending refund tokens).
pub(super) fn opaque_token(bytes: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(bytes))
}

/// What a full or partial refund of a one-time purchase did.
pub(super) struct Voided {
    pub(super) rtdn: Rtdn,
    pub(super) order_id: String,
}

impl Books {
    pub(super) fn new() -> Self {
        Self {
            one_time: HashMap::new(),
            subs: HashMap::new(),
            orders: HashMap::new(),
            voids: Vec::new(),
            next_order: FIRST_ORDER + random_below(1 << 50),
        }
    }

    /// A new order id, `GPA.dddd-dddd-dddd-ddddd`.
    pub(super) fn new_order_id(&mut self) -> String {
        let n = self.next_order;
        self.next_order += 1;
        let digits = format!("{n:017}");
        format!(
            "GPA.{}-{}-{}-{}",
            &digits[0..4],
            &digits[4..8],
            &digits[8..12],
            &digits[12..17]
        )
    }

    pub(super) fn one_time_mut(&mut self, token: &str) -> Result<&mut OneTime, PlayError> {
        if self.subs.contains_key(token) {
            return Err(PlayError::NotAOneTimePurchase(token.to_owned()));
        }
        self.one_time
            .get_mut(token)
            .ok_or_else(|| PlayError::UnknownToken(token.to_owned()))
    }

    pub(super) fn sub_mut(&mut self, token: &str) -> Result<&mut Sub, PlayError> {
        if self.one_time.contains_key(token) {
            return Err(PlayError::NotASubscription(token.to_owned()));
        }
        self.subs
            .get_mut(token)
            .ok_or_else(|| PlayError::UnknownToken(token.to_owned()))
    }

    /// The package a purchase token belongs to.
    pub(super) fn package_of(&self, token: &str) -> Result<String, PlayError> {
        self.one_time
            .get(token)
            .map(|p| p.package.clone())
            .or_else(|| self.subs.get(token).map(|s| s.package.clone()))
            .ok_or_else(|| PlayError::UnknownToken(token.to_owned()))
    }

    /// Voids `quantity` items of a one-time purchase (all that are left when `None`): a voided
    /// purchase entry, the order refunded, and the purchase cancelled once nothing is left.
    pub(super) fn void_one_time(
        &mut self,
        token: &str,
        quantity: Option<u32>,
        source: VoidedSource,
        reason: VoidedReason,
        now: i64,
    ) -> Result<Voided, PlayError> {
        let p = self.one_time_mut(token)?;
        if p.state != OneTimeState::Purchased || p.refundable == 0 {
            return Err(PlayError::InvalidState {
                token: token.to_owned(),
                action: "refund",
                state: if p.state == OneTimeState::Purchased {
                    "refunded already"
                } else {
                    p.state.name()
                },
            });
        }
        let q = quantity.unwrap_or(p.refundable);
        if q == 0 || q > p.refundable {
            return Err(PlayError::Invalid(format!(
                "cannot refund {q} of purchase {token:?}: {} of {} are refundable",
                p.refundable, p.quantity
            )));
        }
        // A refund of the whole purchase is a full refund; any refund of part of the quantity
        // (even the last part) is quantity-based.
        let full = q == p.quantity;
        p.refundable -= q;
        if p.refundable == 0 {
            p.state = OneTimeState::Cancelled;
        }
        let (package, order_id, purchase_ms, quantity_total, left) = (
            p.package.clone(),
            p.order_id.clone(),
            p.completed_ms.unwrap_or(p.created_ms),
            p.quantity,
            p.refundable,
        );
        if let Some(order) = self.orders.get_mut(&order_id) {
            let amount = order.total_micros * i64::from(q) / i64::from(quantity_total.max(1));
            order.last_event_ms = now;
            if full {
                order.state = OrderState::Refunded;
                order.refund = Some((now, refund_reason(reason), amount));
            } else {
                order.partial_refunds.push((now, amount));
                order.state = if left == 0 {
                    OrderState::Refunded
                } else {
                    OrderState::PartiallyRefunded
                };
            }
        }
        self.voids.push(Void {
            package,
            token: token.to_owned(),
            order_id: order_id.clone(),
            purchase_ms,
            voided_ms: now,
            recorded_ms: now,
            source,
            reason,
            quantity: (!full).then_some(q),
            subscription: false,
        });
        Ok(Voided {
            rtdn: Rtdn::Voided {
                token: token.to_owned(),
                order_id: order_id.clone(),
                product_type: 2,
                refund_type: if full { 1 } else { 2 },
            },
            order_id,
        })
    }

    /// Refunds a subscription's latest order and revokes it: a voided purchase entry (type 1
    /// lists it), the order refunded, the subscription expired now with `cancelled_by`.
    pub(super) fn void_subscription(
        &mut self,
        token: &str,
        source: VoidedSource,
        reason: VoidedReason,
        cancelled_by: CancelledBy,
        now: i64,
    ) -> Result<String, PlayError> {
        let s = self.sub_mut(token)?;
        let Some(order_id) = s.orders.last().cloned() else {
            return Err(PlayError::InvalidState {
                token: token.to_owned(),
                action: "refund",
                state: s.state.name(),
            });
        };
        if s.state == SubState::Expired && s.expiry_ms <= now {
            return Err(PlayError::InvalidState {
                token: token.to_owned(),
                action: "revoke",
                state: "expired already",
            });
        }
        end_now(s, cancelled_by, now);
        let package = s.package.clone();
        let mut purchase_ms = s.created_ms;
        if let Some(order) = self.orders.get_mut(&order_id) {
            purchase_ms = order.created_ms;
            order.state = OrderState::Refunded;
            order.last_event_ms = now;
            order.refund = Some((now, refund_reason(reason), order.total_micros));
        }
        self.voids.push(Void {
            package,
            token: token.to_owned(),
            order_id: order_id.clone(),
            purchase_ms,
            voided_ms: now,
            recorded_ms: now,
            source,
            reason,
            quantity: None,
            subscription: true,
        });
        Ok(order_id)
    }

    /// The RTDNs of the purchases Google refunds now because they were not acknowledged within
    /// three days of completing (voidedReason 8, voidedSource Google), and of the cancelled
    /// subscriptions whose paid period has ended (EXPIRED). `(package, rtdn)` each.
    pub(super) fn sweep(&mut self, now: i64) -> Vec<(String, Rtdn)> {
        let mut out = Vec::new();
        let overdue: Vec<String> = self
            .one_time
            .values()
            .filter(|p| {
                p.state == OneTimeState::Purchased
                    && !p.acknowledged
                    && p.refundable == p.quantity
                    && p.completed_ms
                        .is_some_and(|at| at.saturating_add(ACK_WINDOW_MS) <= now)
            })
            .map(|p| p.token.clone())
            .collect();
        for token in overdue {
            let package = self.one_time.get(&token).map(|p| p.package.clone());
            if let (Some(package), Ok(v)) = (
                package,
                self.void_one_time(
                    &token,
                    None,
                    VoidedSource::Google,
                    VoidedReason::UnacknowledgedPurchase,
                    now,
                ),
            ) {
                out.push((package, v.rtdn));
            }
        }
        let overdue: Vec<String> = self
            .subs
            .values()
            .filter(|s| {
                !s.acknowledged
                    && !matches!(
                        s.state,
                        SubState::Pending | SubState::PendingPurchaseCanceled | SubState::Expired
                    )
                    && s.start_ms
                        .is_some_and(|at| at.saturating_add(ACK_WINDOW_MS) <= now)
            })
            .map(|s| s.token.clone())
            .collect();
        for token in overdue {
            let package = self.subs.get(&token).map(|s| s.package.clone());
            if let (Some(package), Ok(order_id)) = (
                package,
                self.void_subscription(
                    &token,
                    VoidedSource::Google,
                    VoidedReason::UnacknowledgedPurchase,
                    CancelledBy::System,
                    now,
                ),
            ) {
                out.push((
                    package,
                    Rtdn::Voided {
                        token,
                        order_id,
                        product_type: 1,
                        refund_type: 1,
                    },
                ));
            }
        }
        let lapsed: Vec<String> = self
            .subs
            .values()
            .filter(|s| s.state == SubState::Canceled && s.expiry_ms <= now)
            .map(|s| s.token.clone())
            .collect();
        for token in lapsed {
            if let Some(s) = self.subs.get_mut(&token) {
                s.state = SubState::Expired;
                s.version += 1;
                out.push((
                    s.package.clone(),
                    Rtdn::Subscription {
                        notification_type: 13,
                        token,
                    },
                ));
            }
        }
        out
    }
}

/// The Orders API's `refundReason` for a voided reason.
fn refund_reason(reason: VoidedReason) -> &'static str {
    if reason == VoidedReason::Chargeback {
        "CHARGEBACK"
    } else {
        "OTHER"
    }
}

/// Ends a subscription now: EXPIRED, access and auto-renewal over.
pub(super) fn end_now(s: &mut Sub, cancelled_by: CancelledBy, now: i64) {
    s.state = SubState::Expired;
    s.auto_renew = false;
    s.expiry_ms = s.expiry_ms.min(now);
    s.paid_until = s.paid_until.min(now);
    s.pending_order = None;
    s.auto_resume_ms = None;
    s.cancelled = Some((cancelled_by, now));
    s.version += 1;
}
