//! The payloads Apple signs, field for field as Apple names them (store-formats.md A2 to A4). Unknown
//! fields are ignored and unknown enum values are kept as strings, so a new Apple field or value never
//! breaks decoding. Times are unix milliseconds; Xcode writes them as fractions, which are truncated.

use serde::{Deserialize, Deserializer, Serialize};

use crate::text;

/// The fields of Apple's payloads that the gateway keeps as database keys or looks rows up by: each
/// must pass [`text::STORE_ID`] wherever it appears. Apple's own are short ASCII (digits, UUIDs,
/// reverse-DNS ids).
const ID_FIELDS: [&str; 12] = [
    "notificationUUID",
    "transactionId",
    "originalTransactionId",
    "webOrderLineItemId",
    "productId",
    "autoRenewProductId",
    "bundleId",
    "appAccountToken",
    "subscriptionGroupIdentifier",
    "requestIdentifier",
    "externalPurchaseId",
    "appTransactionId",
];

/// The longest string a payload may carry anywhere: a nested JWS fits many times over.
pub const MAX_STRING_LEN: usize = 65_536;

/// Checks the text of a decoded payload before any of it is kept: no NUL anywhere (PostgreSQL cannot
/// store one), no string longer than [`MAX_STRING_LEN`], and every id of [`ID_FIELDS`] a short printable
/// token, so even a validly signed payload cannot put an over-long or NUL-bearing key in the database.
pub fn check_text(value: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let string = |field: &str, s: &str| {
        if s.contains('\0') {
            return Err(format!("`{field}` contains NUL"));
        }
        if s.chars().count() > MAX_STRING_LEN {
            return Err(format!(
                "`{field}` is longer than {MAX_STRING_LEN} characters"
            ));
        }
        Ok(())
    };
    match value {
        Value::String(s) => string("a value", s),
        Value::Array(items) => items.iter().try_for_each(check_text),
        Value::Object(fields) => fields.iter().try_for_each(|(k, v)| {
            string("a field name", k)?;
            if let (true, Value::String(s)) = (ID_FIELDS.contains(&k.as_str()), v) {
                text::STORE_ID.check(s).map_err(|e| format!("`{k}` {e}"))?;
            }
            check_text(v).map_err(|e| e.replace("a value", k))
        }),
        _ => Ok(()),
    }
}

/// Unix milliseconds that Apple may write as a fraction (`1697679936049.7297`) or a negative number.
fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v: Option<serde_json::Number> = Option::deserialize(d)?;
    Ok(v.and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64))))
}

/// A decoded `signedTransactionInfo` (JWSTransactionDecodedPayload). It serializes in Apple's names,
/// so what was verified can be kept and read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwsTransaction {
    pub transaction_id: Option<String>,
    pub original_transaction_id: Option<String>,
    pub web_order_line_item_id: Option<String>,
    pub bundle_id: Option<String>,
    pub product_id: Option<String>,
    pub subscription_group_identifier: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub purchase_date: Option<i64>,
    #[serde(default, deserialize_with = "millis")]
    pub original_purchase_date: Option<i64>,
    #[serde(default, deserialize_with = "millis")]
    pub expires_date: Option<i64>,
    pub quantity: Option<u32>,
    /// `Auto-Renewable Subscription`, `Non-Consumable`, `Consumable`, `Non-Renewing Subscription`.
    #[serde(rename = "type")]
    pub product_type: Option<String>,
    pub app_account_token: Option<String>,
    /// `PURCHASED` or `FAMILY_SHARED`.
    pub in_app_ownership_type: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub signed_date: Option<i64>,
    /// Present when Apple refunded or revoked the transaction.
    pub revocation_reason: Option<i64>,
    #[serde(default, deserialize_with = "millis")]
    pub revocation_date: Option<i64>,
    /// `REFUND_FULL`, `REFUND_PRORATED` or `FAMILY_REVOKE`.
    pub revocation_type: Option<String>,
    /// The share refunded, in thousandths of a percent (33333 is 33.333 %), of the whole quantity.
    pub revocation_percentage: Option<i64>,
    pub is_upgraded: Option<bool>,
    pub offer_type: Option<i64>,
    pub environment: Option<String>,
    pub storefront: Option<String>,
    pub transaction_reason: Option<String>,
    /// Milli-units of `currency`.
    pub price: Option<i64>,
    pub currency: Option<String>,
    /// `BILLED_UPFRONT` or `MONTHLY` (a monthly plan with a 12-month commitment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_plan_type: Option<String>,
    /// A commitment plan's state (`billingPeriodNumber`, `totalBillingPeriods`,
    /// `commitmentExpiresDate`, `commitmentPrice`), kept as Apple wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commitment_info: Option<serde_json::Value>,
    /// The buyer's Apple Account in this app (StoreKit from iOS 18.4), as in their AppTransaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_transaction_id: Option<String>,
}

/// A decoded `signedRenewalInfo` (JWSRenewalInfoDecodedPayload).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwsRenewalInfo {
    pub original_transaction_id: Option<String>,
    pub product_id: Option<String>,
    pub auto_renew_product_id: Option<String>,
    /// 0 off, 1 on.
    pub auto_renew_status: Option<i64>,
    pub expiration_intent: Option<i64>,
    pub is_in_billing_retry_period: Option<bool>,
    #[serde(default, deserialize_with = "millis")]
    pub grace_period_expires_date: Option<i64>,
    #[serde(default, deserialize_with = "millis")]
    pub signed_date: Option<i64>,
    pub environment: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub renewal_date: Option<i64>,
    pub app_account_token: Option<String>,
}

/// The `data` of a notification.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationData {
    pub app_apple_id: Option<i64>,
    pub bundle_id: Option<String>,
    pub bundle_version: Option<String>,
    pub environment: Option<String>,
    pub signed_transaction_info: Option<String>,
    pub signed_renewal_info: Option<String>,
    /// 1 active, 2 expired, 3 billing retry, 4 grace period, 5 revoked.
    pub status: Option<i64>,
    pub consumption_request_reason: Option<String>,
}

/// The `summary` of a RENEWAL_EXTENSION/SUMMARY notification.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSummary {
    pub request_identifier: Option<String>,
    pub environment: Option<String>,
    pub app_apple_id: Option<i64>,
    pub bundle_id: Option<String>,
    pub product_id: Option<String>,
    pub failed_count: Option<i64>,
    pub succeeded_count: Option<i64>,
}

/// The `externalPurchaseToken` of an EXTERNAL_PURCHASE_TOKEN notification.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalPurchaseToken {
    pub external_purchase_id: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub token_creation_date: Option<i64>,
    pub app_apple_id: Option<i64>,
    pub bundle_id: Option<String>,
    /// `ACQUISITION`, `SERVICES`, `IN_APP` or `LINK_OUT` (2025); kept as Apple writes it.
    pub token_type: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub token_expiration_date: Option<i64>,
}

/// A decoded signed `AppTransaction` (JWSAppTransactionDecodedPayload): the app's purchase by one
/// Apple Account, which StoreKit hands the app even when the customer bought nothing in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppTransaction {
    /// The environment: `Production`, `Sandbox`, `Xcode` or `LocalTesting`.
    pub receipt_type: Option<String>,
    pub app_apple_id: Option<i64>,
    pub bundle_id: Option<String>,
    pub application_version: Option<String>,
    pub version_external_identifier: Option<i64>,
    #[serde(default, deserialize_with = "millis")]
    pub receipt_creation_date: Option<i64>,
    #[serde(default, deserialize_with = "millis")]
    pub original_purchase_date: Option<i64>,
    pub original_application_version: Option<String>,
    pub device_verification: Option<String>,
    pub device_verification_nonce: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub preorder_date: Option<i64>,
    /// One per Apple Account (and family member) per app, stable across redownloads and refunds.
    pub app_transaction_id: Option<String>,
    /// `iOS`, `macOS`, `tvOS` or `visionOS`.
    pub original_platform: Option<String>,
}

/// The `appData` of a RESCIND_CONSENT notification.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppData {
    pub app_apple_id: Option<i64>,
    pub bundle_id: Option<String>,
    pub environment: Option<String>,
    pub signed_app_transaction_info: Option<String>,
}

/// A decoded App Store Server Notification V2 (ResponseBodyV2DecodedPayload).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPayload {
    pub notification_type: String,
    pub subtype: Option<String>,
    #[serde(rename = "notificationUUID")]
    pub notification_uuid: String,
    pub version: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub signed_date: Option<i64>,
    pub data: Option<NotificationData>,
    pub summary: Option<NotificationSummary>,
    pub external_purchase_token: Option<ExternalPurchaseToken>,
    pub app_data: Option<AppData>,
}

/// Whose notification it is: the fields the verifier checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationSubject {
    pub bundle_id: Option<String>,
    pub app_apple_id: Option<i64>,
    pub environment: Option<String>,
}

impl NotificationPayload {
    /// Bundle, app id and environment from the first of `data`, `summary`, `externalPurchaseToken`
    /// and `appData` that is present, as Apple's verifier takes them.
    pub fn subject(&self) -> NotificationSubject {
        if let Some(d) = &self.data {
            return NotificationSubject {
                bundle_id: d.bundle_id.clone(),
                app_apple_id: d.app_apple_id,
                environment: d.environment.clone(),
            };
        }
        if let Some(s) = &self.summary {
            return NotificationSubject {
                bundle_id: s.bundle_id.clone(),
                app_apple_id: s.app_apple_id,
                environment: s.environment.clone(),
            };
        }
        if let Some(t) = &self.external_purchase_token {
            let sandbox = t
                .external_purchase_id
                .as_deref()
                .is_some_and(|id| id.starts_with("SANDBOX"));
            return NotificationSubject {
                bundle_id: t.bundle_id.clone(),
                app_apple_id: t.app_apple_id,
                environment: Some(if sandbox { "Sandbox" } else { "Production" }.to_owned()),
            };
        }
        if let Some(a) = &self.app_data {
            return NotificationSubject {
                bundle_id: a.bundle_id.clone(),
                app_apple_id: a.app_apple_id,
                environment: a.environment.clone(),
            };
        }
        NotificationSubject {
            bundle_id: None,
            app_apple_id: None,
            environment: None,
        }
    }
}
