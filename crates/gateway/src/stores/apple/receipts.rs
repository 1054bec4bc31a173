//! Legacy receipts (`verifyReceipt`), for old clients: deprecated by Apple, kept because apps in the
//! field still send them. The receipt goes to production first; status 21007 means a sandbox receipt
//! and it is sent again to the sandbox (21008 the other way). `verifyReceipt` does not know which app
//! asks, so the receipt's `bundle_id` is checked here. Its transactions become the same
//! [`JwsTransaction`]s StoreKit 2 signs, so one mapping serves both.

use std::time::Duration;

use gateway_core::apple::{AppleEnvironment, models::JwsTransaction};
use serde::Deserialize;
use serde_json::json;

use crate::{
    model::App,
    stores::error::{Problem, StoreError, StoreResult},
};

pub const PRODUCTION_URL: &str = "https://buy.itunes.apple.com/verifyReceipt";
pub const SANDBOX_URL: &str = "https://sandbox.itunes.apple.com/verifyReceipt";

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A verified receipt: where it is from and its transactions.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub environment: AppleEnvironment,
    pub transactions: Vec<JwsTransaction>,
}

#[derive(Deserialize)]
struct Answer {
    status: i64,
    environment: Option<String>,
    receipt: Option<ReceiptBody>,
    #[serde(default)]
    latest_receipt_info: Vec<InApp>,
    #[serde(default, alias = "is-retryable")]
    is_retryable: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ReceiptBody {
    bundle_id: Option<String>,
    #[serde(default)]
    in_app: Vec<InApp>,
}

/// One transaction of a receipt: every number is a string.
#[derive(Deserialize)]
struct InApp {
    product_id: Option<String>,
    transaction_id: Option<String>,
    original_transaction_id: Option<String>,
    purchase_date_ms: Option<String>,
    original_purchase_date_ms: Option<String>,
    expires_date_ms: Option<String>,
    cancellation_date_ms: Option<String>,
    cancellation_reason: Option<String>,
    quantity: Option<String>,
    is_upgraded: Option<String>,
    in_app_ownership_type: Option<String>,
    web_order_line_item_id: Option<String>,
}

fn ms(v: &Option<String>) -> Option<i64> {
    v.as_deref().and_then(|s| s.parse().ok())
}

impl InApp {
    fn into_transaction(self, bundle: &str, environment: AppleEnvironment) -> JwsTransaction {
        JwsTransaction {
            transaction_id: self.transaction_id,
            original_transaction_id: self.original_transaction_id,
            web_order_line_item_id: self.web_order_line_item_id,
            bundle_id: Some(bundle.to_owned()),
            product_id: self.product_id,
            subscription_group_identifier: None,
            purchase_date: ms(&self.purchase_date_ms),
            original_purchase_date: ms(&self.original_purchase_date_ms),
            expires_date: ms(&self.expires_date_ms),
            quantity: self.quantity.as_deref().and_then(|q| q.parse().ok()),
            product_type: None,
            app_account_token: None,
            in_app_ownership_type: self.in_app_ownership_type,
            signed_date: None,
            revocation_reason: self
                .cancellation_reason
                .as_deref()
                .and_then(|r| r.parse().ok()),
            revocation_date: ms(&self.cancellation_date_ms),
            revocation_type: None,
            revocation_percentage: None,
            is_upgraded: self.is_upgraded.map(|u| u == "true"),
            offer_type: None,
            environment: Some(environment.as_str().to_owned()),
            storefront: None,
            transaction_reason: None,
            price: None,
            currency: None,
            billing_plan_type: None,
            app_transaction_id: None,
            commitment_info: None,
        }
    }
}

/// Verifies a base64 receipt with Apple and returns its transactions, newest purchase first.
pub async fn verify(http: &reqwest::Client, app: &App, receipt_data: &str) -> StoreResult<Receipt> {
    let config = app
        .settings
        .app_store
        .as_ref()
        .ok_or_else(|| StoreError::not_configured("This app has no `app_store` settings."))?;
    let secret = config.shared_secret.as_ref().ok_or_else(|| {
        StoreError::not_configured("Legacy receipts need the app's `app_store.shared_secret`.")
    })?;
    let production = config
        .verify_receipt_url
        .clone()
        .unwrap_or_else(|| PRODUCTION_URL.to_owned());
    let sandbox = config
        .verify_receipt_sandbox_url
        .clone()
        .unwrap_or_else(|| SANDBOX_URL.to_owned());
    let body = json!({"receipt-data": receipt_data, "password": secret.expose(), "exclude-old-transactions": false});

    let mut url = production.clone();
    let mut answer = post(http, &url, &body).await?;
    if answer.status == 21007 {
        url = sandbox.clone();
        answer = post(http, &url, &body).await?;
    } else if answer.status == 21008 {
        url = production;
        answer = post(http, &url, &body).await?;
    }
    let retryable = answer
        .is_retryable
        .as_ref()
        .is_some_and(|v| v.as_bool() == Some(true) || v.as_i64() == Some(1));
    let fail = |kind, code, message: &str| Err(StoreError::new(kind, code, message.to_owned()));
    match answer.status {
        0 | 21006 => {}
        21000 => {
            return fail(
                Problem::Malformed,
                "malformed_receipt",
                "Apple could not read this receipt.",
            );
        }
        21002 | 21005 | 21009 => {
            return fail(
                Problem::Unavailable,
                "store_unavailable",
                "Apple could not verify the receipt now; try again later.",
            );
        }
        s if (21100..=21199).contains(&s) && retryable => {
            return fail(
                Problem::Unavailable,
                "store_unavailable",
                "Apple could not verify the receipt now; try again later.",
            );
        }
        21003 => {
            return fail(
                Problem::Refused,
                "receipt_not_authentic",
                "Apple says this receipt is not authentic.",
            );
        }
        21004 => {
            return fail(
                Problem::Conflict,
                "store_not_configured",
                "Apple refused the app's `app_store.shared_secret`.",
            );
        }
        21010 => {
            return fail(
                Problem::NotFound,
                "account_not_found",
                "Apple knows no purchases for this receipt's account.",
            );
        }
        s => {
            return Err(StoreError::new(
                Problem::Refused,
                "receipt_refused",
                format!("Apple refused the receipt with status {s}."),
            ));
        }
    }
    let environment = if url == sandbox || answer.environment.as_deref() == Some("Sandbox") {
        AppleEnvironment::Sandbox
    } else {
        AppleEnvironment::Production
    };
    let receipt = answer.receipt.ok_or_else(|| {
        StoreError::new(
            Problem::Refused,
            "malformed_receipt",
            "Apple's answer has no receipt.",
        )
    })?;
    let bundle = receipt.bundle_id.unwrap_or_default();
    if bundle != config.bundle_id {
        return Err(StoreError::new(
            Problem::Refused,
            "wrong_app",
            format!(
                "The receipt is for bundle {bundle:?}, not {:?}.",
                config.bundle_id
            ),
        ));
    }
    let rows = if answer.latest_receipt_info.is_empty() {
        receipt.in_app
    } else {
        answer.latest_receipt_info
    };
    let mut transactions: Vec<JwsTransaction> = rows
        .into_iter()
        .map(|r| r.into_transaction(&bundle, environment))
        .collect();
    transactions.sort_by_key(|t| std::cmp::Reverse(t.purchase_date));
    Ok(Receipt {
        environment,
        transactions,
    })
}

async fn post(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> StoreResult<Answer> {
    let res = http
        .post(url)
        .json(body)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|_| {
            StoreError::new(
                Problem::Unavailable,
                "store_unavailable",
                "Apple's verifyReceipt does not answer; try again later.",
            )
        })?;
    if !res.status().is_success() {
        return Err(StoreError::new(
            Problem::Unavailable,
            "store_unavailable",
            "Apple's verifyReceipt failed; try again later.",
        ));
    }
    let not_a_receipt = || {
        StoreError::new(
            Problem::Unavailable,
            "store_unavailable",
            "Apple's verifyReceipt answered with something that is not a receipt.",
        )
    };
    let value: serde_json::Value = res.json().await.map_err(|_| not_a_receipt())?;
    // The same bounds as signed payloads: nothing from the answer reaches the database unchecked.
    gateway_core::apple::models::check_text(&value).map_err(|e| {
        StoreError::new(
            Problem::Refused,
            "malformed_receipt",
            format!("Apple's answer about this receipt cannot be kept: {e}."),
        )
    })?;
    serde_json::from_value(value).map_err(|_| not_a_receipt())
}
