//! What Google Play sends, field for field (Android Publisher v3, revision 20261026, and Real-time
//! developer notifications over Pub/Sub push). Every field a response may leave out is an `Option`,
//! int64 values are JSON strings as Google writes them, and times are RFC 3339 strings kept as sent;
//! fields the gateway does not read are not modelled (serde skips them).

use serde::{Deserialize, Serialize};

/// `purchases.productsv2.getproductpurchasev2`: a one-time product purchase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductPurchaseV2 {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub product_line_item: Vec<ProductLineItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_state_context: Option<PurchaseStateContext>,
    /// Absent until the payment completes (a pending purchase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_completion_time: Option<String>,
    /// `ACKNOWLEDGEMENT_STATE_PENDING` or `ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledgement_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obfuscated_external_account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obfuscated_external_profile_id: Option<String>,
    /// Present for a license tester's purchase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_purchase_context: Option<serde_json::Value>,
}

/// `purchases.products.get` (v1), read only where the v2 read is refused and the product id is
/// known. Integer states, int64 as strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductPurchase {
    #[serde(default, deserialize_with = "int64")]
    pub purchase_time_millis: Option<i64>,
    /// 0 purchased, 1 canceled, 2 pending.
    #[serde(default)]
    pub purchase_state: Option<i64>,
    /// 0 yet to be consumed, 1 consumed.
    #[serde(default)]
    pub consumption_state: Option<i64>,
    #[serde(default)]
    pub order_id: Option<String>,
    /// 0 test (a license tester's purchase), 1 promo, 2 rewarded.
    #[serde(default)]
    pub purchase_type: Option<i64>,
    /// 0 yet to be acknowledged, 1 acknowledged.
    #[serde(default)]
    pub acknowledgement_state: Option<i64>,
    /// Left out when 1.
    #[serde(default)]
    pub quantity: Option<u32>,
    #[serde(default)]
    pub refundable_quantity: Option<u32>,
    #[serde(default)]
    pub region_code: Option<String>,
    #[serde(default)]
    pub obfuscated_external_account_id: Option<String>,
    #[serde(default)]
    pub obfuscated_external_profile_id: Option<String>,
}

impl ProductPurchase {
    /// The same purchase as `purchases.productsv2` states it, for the product `product_id`. v1
    /// cannot tell a cancelled pending payment from a refund: a cancelled purchase is taken as paid
    /// at its purchase time (it was never granted if it was never paid, so nothing is taken back).
    pub fn into_v2(self, product_id: &str) -> ProductPurchaseV2 {
        let state = match self.purchase_state {
            Some(1) => "CANCELLED",
            Some(2) => "PENDING",
            _ => "PURCHASED",
        };
        let completed = (state != "PENDING")
            .then_some(self.purchase_time_millis)
            .flatten()
            .and_then(rfc3339);
        ProductPurchaseV2 {
            product_line_item: vec![ProductLineItem {
                product_id: product_id.to_owned(),
                product_offer_details: Some(ProductOfferDetails {
                    quantity: Some(self.quantity.unwrap_or(1)),
                    refundable_quantity: self.refundable_quantity,
                    consumption_state: Some(
                        if self.consumption_state == Some(1) {
                            "CONSUMPTION_STATE_CONSUMED"
                        } else {
                            "CONSUMPTION_STATE_YET_TO_BE_CONSUMED"
                        }
                        .to_owned(),
                    ),
                    ..ProductOfferDetails::default()
                }),
            }],
            purchase_state_context: Some(PurchaseStateContext {
                purchase_state: state.to_owned(),
            }),
            purchase_completion_time: completed,
            acknowledgement_state: Some(
                if self.acknowledgement_state == Some(1) {
                    "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED"
                } else {
                    "ACKNOWLEDGEMENT_STATE_PENDING"
                }
                .to_owned(),
            ),
            order_id: self.order_id,
            region_code: self.region_code,
            obfuscated_external_account_id: self.obfuscated_external_account_id,
            obfuscated_external_profile_id: self.obfuscated_external_profile_id,
            test_purchase_context: (self.purchase_type == Some(0))
                .then(|| serde_json::json!({"fopType": "TEST"})),
        }
    }
}

/// Unix ms as a google-datetime (RFC 3339, UTC).
fn rfc3339(ms: i64) -> Option<String> {
    Some(crate::Timestamp::from_millis(ms).to_rfc3339())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductLineItem {
    #[serde(default)]
    pub product_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_offer_details: Option<ProductOfferDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductOfferDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_option_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refundable_quantity: Option<u32>,
    /// `CONSUMPTION_STATE_YET_TO_BE_CONSUMED` or `CONSUMPTION_STATE_CONSUMED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumption_state: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurchaseStateContext {
    /// `PURCHASED`, `CANCELLED` or `PENDING`.
    #[serde(default)]
    pub purchase_state: String,
}

/// `purchases.subscriptionsv2.get`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionPurchaseV2 {
    /// `SUBSCRIPTION_STATE_*`.
    #[serde(default)]
    pub subscription_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledgement_state: Option<String>,
    /// Absent while the first payment is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// The token this one replaces (an upgrade, a downgrade, a resubscription).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_purchase_token: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub line_items: Vec<SubscriptionLineItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canceled_state_context: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_state_context: Option<PausedStateContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account_identifiers: Option<ExternalAccountIdentifiers>,
    /// A resubscription bought in the Play Store after the last one expired; removed once the new
    /// purchase is acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_app_purchase_context: Option<OutOfAppPurchaseContext>,
    /// Present for a license tester's purchase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_purchase: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_code: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionLineItem {
    #[serde(default)]
    pub product_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_time: Option<String>,
    /// Absent while the item is not owned yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_successful_order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_renewing_plan: Option<AutoRenewingPlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_details: Option<OfferDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoRenewingPlan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_renew_enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_plan_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PausedStateContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume_time: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAccountIdentifiers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obfuscated_external_account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obfuscated_external_profile_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutOfAppPurchaseContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_external_account_identifiers: Option<ExternalAccountIdentifiers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_purchase_token: Option<String>,
}

/// One entry of `purchases.voidedpurchases.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoidedPurchase {
    #[serde(default)]
    pub purchase_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_time_millis: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided_time_millis: Option<String>,
    /// Unique per order, each renewal included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// 0 user, 1 developer, 2 Google.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided_source: Option<i64>,
    /// 0 other, 1 remorse, 2 not received, 3 defective, 4 accidental purchase, 5 fraud, 6 friendly
    /// fraud, 7 chargeback, 8 unacknowledged purchase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided_reason: Option<i64>,
    /// Only with `includeQuantityBasedPartialRefund`: the units refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided_quantity: Option<u32>,
}

/// `purchases.voidedpurchases.list`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoidedPurchasesList {
    #[serde(default)]
    pub voided_purchases: Vec<VoidedPurchase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_pagination: Option<TokenPagination>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenPagination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A Pub/Sub push request. Pub/Sub writes both spellings of the id and time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PushRequest {
    pub message: PushMessage,
    #[serde(default)]
    pub subscription: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PushMessage {
    /// Base64 (standard alphabet) of a [`DeveloperNotification`].
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default, rename = "messageId")]
    pub message_id_camel: Option<String>,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default, rename = "publishTime")]
    pub publish_time_camel: Option<String>,
    #[serde(default)]
    pub publish_time: Option<String>,
}

impl PushMessage {
    /// The message's id, under either spelling.
    pub fn id(&self) -> Option<&str> {
        self.message_id_camel
            .as_deref()
            .or(self.message_id.as_deref())
            .filter(|s| !s.is_empty())
    }
}

/// A Real-time developer notification: exactly one of its members is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeveloperNotification {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub package_name: String,
    /// Milliseconds: a JSON string in Google's examples, a number in some senders.
    #[serde(default, deserialize_with = "int64")]
    pub event_time_millis: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_notification: Option<SubscriptionNotification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_product_notification: Option<OneTimeProductNotification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided_purchase_notification: Option<VoidedPurchaseNotification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_refund_review_notification: Option<PendingRefundReviewNotification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_notification: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionNotification {
    #[serde(default)]
    pub notification_type: i64,
    #[serde(default)]
    pub purchase_token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OneTimeProductNotification {
    /// 1 purchased, 2 canceled (a pending purchase that was not paid).
    #[serde(default)]
    pub notification_type: i64,
    #[serde(default)]
    pub purchase_token: String,
    #[serde(default)]
    pub sku: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoidedPurchaseNotification {
    #[serde(default)]
    pub purchase_token: String,
    #[serde(default)]
    pub order_id: Option<String>,
    /// 1 subscription, 2 one-time.
    #[serde(default)]
    pub product_type: Option<i64>,
    /// 1 full refund, 2 quantity-based partial refund.
    #[serde(default)]
    pub refund_type: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRefundReviewNotification {
    #[serde(default)]
    pub pending_refund_token: String,
    #[serde(default)]
    pub order_id: String,
    #[serde(default)]
    pub refund_reason: Option<i64>,
    #[serde(default)]
    pub obfuscated_account_id: Option<String>,
    #[serde(default)]
    pub obfuscated_profile_id: Option<String>,
}

/// An int64 Google writes as a string, or a number.
fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(i64),
    }
    match Option::<Either>::deserialize(d)? {
        None => Ok(None),
        Some(Either::Number(n)) => Ok(Some(n)),
        Some(Either::Text(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// The names of `subscriptionNotification.notificationType`, for the timeline (14, 15, 16 and 21 are
/// unassigned).
pub fn subscription_notification_name(n: i64) -> &'static str {
    match n {
        1 => "SUBSCRIPTION_RECOVERED",
        2 => "SUBSCRIPTION_RENEWED",
        3 => "SUBSCRIPTION_CANCELED",
        4 => "SUBSCRIPTION_PURCHASED",
        5 => "SUBSCRIPTION_ON_HOLD",
        6 => "SUBSCRIPTION_IN_GRACE_PERIOD",
        7 => "SUBSCRIPTION_RESTARTED",
        8 => "SUBSCRIPTION_PRICE_CHANGE_CONFIRMED",
        9 => "SUBSCRIPTION_DEFERRED",
        10 => "SUBSCRIPTION_PAUSED",
        11 => "SUBSCRIPTION_PAUSE_SCHEDULE_CHANGED",
        12 => "SUBSCRIPTION_REVOKED",
        13 => "SUBSCRIPTION_EXPIRED",
        17 => "SUBSCRIPTION_ITEMS_CHANGED",
        18 => "SUBSCRIPTION_CANCELLATION_SCHEDULED",
        19 => "SUBSCRIPTION_PRICE_CHANGE_UPDATED",
        20 => "SUBSCRIPTION_PENDING_PURCHASE_CANCELED",
        22 => "SUBSCRIPTION_PRICE_STEP_UP_CONSENT_UPDATED",
        _ => "SUBSCRIPTION_UNKNOWN",
    }
}
