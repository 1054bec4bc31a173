//! Domain records the service keeps that are not part of the pure core: apps and their settings, keys.
//! Secrets live in [`Secret`], whose `Debug` never prints the value, and which the API never echoes.

use std::fmt;

use gateway_core::AppId;
use serde::{Deserialize, Serialize};

/// A credential. Serialized for storage only; `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl utoipa::PartialSchema for Secret {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .write_only(true)
            .description(Some(
                "A credential: accepted, stored, never shown back (answers say `<name>_set: true`)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// App Store settings of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppStoreConfig {
    pub bundle_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_apple_id: Option<i64>,
    #[serde(default = "production")]
    pub environment: AppleEnvironment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_certificates_pem: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_secret: Option<Secret>,
    /// The legacy `verifyReceipt` endpoints; Apple's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_receipt_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_receipt_sandbox_url: Option<String>,
    /// Answer CONSUMPTION_REQUEST notifications with Send Consumption Information, from what the
    /// gateway knows of the purchase. Turn it on only when the app's terms obtain the customer's
    /// consent to share that data: Apple requires `customerConsented: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answer_consumption_requests: bool,
    /// Finish each App Store transaction through the App Store Server API (Finish Transaction) once
    /// its grant has committed, so none waits in the device's queue when the app stopped before
    /// calling `Transaction.finish()`. The app may still finish it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finish_transactions: bool,
}

fn production() -> AppleEnvironment {
    AppleEnvironment::Production
}

/// Apple's environment names, as Apple spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum AppleEnvironment {
    Production,
    Sandbox,
}

/// Google Play settings of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlayStoreConfig {
    pub package_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_json: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
    /// The audience of the push subscription's OIDC tokens (its push endpoint URL unless set
    /// otherwise in Pub/Sub); with `pubsub_service_account`, pushes are authenticated by those tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubsub_audience: Option<String>,
    /// The service account the push subscription signs its OIDC tokens as (their `email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubsub_service_account: Option<String>,
    /// Where Google publishes the keys of its OIDC tokens (Google's own by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_certs_url: Option<String>,
    /// A secret the push endpoint URL carries as `?token=`, when pushes are not authenticated by OIDC
    /// tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_token: Option<Secret>,
    /// Answer Play's refund reviews (a chargeback the developer is asked about) with what the gateway
    /// knows of the purchase: set it only when your terms obtain the customer's consent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answer_refund_reviews: bool,
    /// How often, in minutes, the gateway walks Play's voided purchases for refunds and chargebacks
    /// no notification brought (15 by default; 1 to 1440).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1440)]
    pub voided_poll_minutes: Option<u32>,
}

/// Stripe settings of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<Secret>,
    /// Required; on PATCH, omitting it keeps the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Secret>,
    /// The signing secret before the last change, still taken until
    /// `previous_webhook_secret_expires_at`: Stripe's roll keeps the old secret signing for up to a
    /// day. The gateway sets both when `webhook_secret` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_webhook_secret: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_webhook_secret_expires_at: Option<gateway_core::Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
}

/// RevenueCat settings of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevenueCatConfig {
    /// Required; on PATCH, omitting it keeps the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_authorization: Option<Secret>,
}

/// How customers prove who they are to publishable-key calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerAuthConfig {
    pub mode: CustomerAuthMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CustomerAuthMode {
    Key,
    Jwt,
}

/// What happens when a customer restores a store purchase that another customer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferPolicy {
    /// The purchase moves to the customer who restored it (the stores' own behaviour).
    #[default]
    Transfer,
    /// The purchase stays with its first customer.
    Keep,
}

/// Everything configurable about an app, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_store: Option<AppStoreConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub play_store: Option<PlayStoreConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<StripeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenuecat: Option<RevenueCatConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_auth: Option<CustomerAuthConfig>,
    #[serde(default)]
    pub embargoed_countries: Vec<String>,
    #[serde(default)]
    pub transfer_policy: TransferPolicy,
    /// The key of the HMAC that turns an app user id into Play's `obfuscatedAccountId`: stable per
    /// customer, not reversible, not guessable from the user id.
    pub account_salt: Secret,
}

/// An app (tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub id: AppId,
    pub name: String,
    pub settings: AppSettings,
    pub created_at: gateway_core::Timestamp,
    pub updated_at: gateway_core::Timestamp,
}

/// The kind of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Secret,
    Publishable,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Secret => "secret",
            KeyKind::Publishable => "publishable",
        }
    }
}

/// What a secret key may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Admin,
    Catalog,
    Customers,
    Purchases,
    Refunds,
    Read,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub app_id: Option<AppId>,
    pub kind: KeyKind,
    pub scopes: Vec<Scope>,
}

impl ApiKey {
    pub fn is_admin(&self) -> bool {
        self.kind == KeyKind::Secret && self.scopes.contains(&Scope::Admin)
    }
}
