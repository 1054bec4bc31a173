//! Offer signatures: the app asks for what StoreKit needs to present an App Store offer to one of
//! its customers, signed with the app's In-App Purchase key (a promotional offer in both of
//! StoreKit's forms, or introductory-offer eligibility decided by the app's server).

use gateway_core::{AppUserId, Timestamp, ids::Store, text};
use serde::Serialize;
use serde_json::{Map, json};

use super::{Context, ServiceError, ServiceResult, opt_text};
use crate::{
    db::{self, orders, products},
    model::App,
    stores::apple::offers::{
        INTRODUCTORY_OFFER_ELIGIBILITY, OfferKey, PROMOTIONAL_OFFER, Promotion,
    },
};

/// Which signature is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferKind {
    /// A promotional (or win-back) offer: the legacy signature and the JWS.
    Promotional,
    /// Whether the customer may have a subscription's introductory offer: a JWS.
    IntroductoryEligibility,
}

/// What the app asks to have signed.
#[derive(Debug, Clone)]
pub struct OfferAsk {
    pub kind: OfferKind,
    /// The catalog's product id, or its App Store product id.
    pub product: String,
    /// The offer's identifier in App Store Connect (promotional offers).
    pub offer_identifier: Option<String>,
    /// The eligibility to state (introductory offers).
    pub allow_introductory_offer: Option<bool>,
    /// What the app passes StoreKit as `applicationUsername` (StoreKit 2: its `appAccountToken`).
    pub application_username: Option<String>,
    /// Any transaction id of the customer; by default their Apple Account's `appTransactionId`,
    /// else the lineage of their latest App Store purchase.
    pub transaction_id: Option<String>,
}

/// A signed offer, with everything StoreKit takes beside the signature.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OfferSignature {
    /// `promotional` or `introductory_eligibility`.
    pub kind: &'static str,
    /// The App Store product id.
    pub product_id: String,
    /// The In-App Purchase key's id (StoreKit's `keyID`).
    pub key_id: String,
    /// StoreKit 2's signed JWS for the offer or the eligibility.
    pub jws: String,
    /// The transaction id the JWS names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer_identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_introductory_offer: Option<bool>,
    /// The legacy signature's nonce (lowercase UUID), username, timestamp (Unix ms, valid 24 hours)
    /// and the signature itself (base64 DER): StoreKit 1's `SKPaymentDiscount`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Signs an offer for `customer` with the app's In-App Purchase key.
pub async fn sign(
    cx: &Context,
    app: &App,
    customer: &AppUserId,
    ask: OfferAsk,
    now: Timestamp,
) -> ServiceResult<OfferSignature> {
    opt_text(
        &text::STORE_ID,
        "invalid_product_id",
        "product_id",
        Some(&ask.product),
    )?;
    opt_text(
        &text::STORE_ID,
        "invalid_offer_identifier",
        "offer_identifier",
        ask.offer_identifier.as_deref(),
    )?;
    opt_text(
        &text::STORE_ID,
        "invalid_application_username",
        "application_username",
        ask.application_username.as_deref(),
    )?;
    opt_text(
        &text::TRANSACTION_ID,
        "invalid_transaction_id",
        "transaction_id",
        ask.transaction_id.as_deref(),
    )?;
    let username = ask.application_username.is_some();
    match (
        ask.kind,
        &ask.offer_identifier,
        ask.allow_introductory_offer,
    ) {
        (OfferKind::Promotional, Some(_), None) => {}
        (OfferKind::IntroductoryEligibility, None, Some(_)) if !username => {}
        (OfferKind::Promotional, _, _) => {
            return Err(ServiceError::bad_request(
                "invalid_offer",
                "A promotional offer takes `offer_identifier`, and no `allow_introductory_offer`.",
            ));
        }
        (OfferKind::IntroductoryEligibility, _, _) => {
            return Err(ServiceError::bad_request(
                "invalid_offer",
                "An introductory-offer eligibility takes `allow_introductory_offer`, and no `offer_identifier` or `application_username`.",
            ));
        }
    }
    let config = app.settings.app_store.as_ref().ok_or_else(|| {
        ServiceError::from(crate::stores::StoreError::not_configured(
            "This app has no `app_store` settings.",
        ))
    })?;
    let key = OfferKey::from_config(config)?;
    let db = &cx.db;
    let product = products::by_id_or_sku(db, &app.id, Store::AppStore.as_str(), &ask.product)
        .await?
        .ok_or_else(|| {
            ServiceError::not_found(
                "product_not_found",
                format!(
                    "No product of this app is {:?}, by id or App Store product id.",
                    ask.product
                ),
            )
        })?;
    let sku = product
        .store_skus
        .for_store(Store::AppStore)
        .ok_or_else(|| {
            ServiceError::conflict(
                "product_not_on_app_store",
                format!(
                    "Product {} has no App Store product id (`store_skus.app_store`).",
                    product.id
                ),
            )
        })?;
    let transaction_id = match ask.transaction_id {
        Some(t) => Some(t),
        None => customer_transaction(cx, app, customer).await?,
    };
    let nonce = uuid::Uuid::new_v4();
    let iat = now.millis().div_euclid(1000);
    match ask.kind {
        OfferKind::Promotional => {
            let offer = ask.offer_identifier.unwrap_or_default();
            let username = ask.application_username.unwrap_or_default();
            let promotion = Promotion {
                product_id: &sku,
                offer_identifier: &offer,
                application_username: &username,
                nonce,
                timestamp_ms: now.millis(),
            };
            let signature = key.promotional_signature(&promotion)?;
            let mut claims = Map::new();
            claims.insert("productId".into(), json!(sku));
            claims.insert("offerIdentifier".into(), json!(offer));
            if let Some(t) = &transaction_id {
                claims.insert("transactionId".into(), json!(t));
            }
            let jws = key.jws(PROMOTIONAL_OFFER, claims, iat, uuid::Uuid::new_v4())?;
            Ok(OfferSignature {
                kind: "promotional",
                product_id: sku,
                key_id: key.key_id().to_owned(),
                jws,
                transaction_id,
                offer_identifier: Some(offer),
                allow_introductory_offer: None,
                nonce: Some(nonce.hyphenated().to_string()),
                application_username: Some(username),
                timestamp: Some(now.millis()),
                signature: Some(signature),
            })
        }
        OfferKind::IntroductoryEligibility => {
            let Some(transaction) = transaction_id else {
                return Err(ServiceError::conflict(
                    "transaction_id_required",
                    "Introductory-offer eligibility names a transaction of the customer: send `transaction_id`, or submit the customer's AppTransaction or a purchase first.",
                ));
            };
            let allow = ask.allow_introductory_offer.unwrap_or_default();
            let mut claims = Map::new();
            claims.insert("productId".into(), json!(sku));
            claims.insert("allowIntroductoryOffer".into(), json!(allow));
            claims.insert("transactionId".into(), json!(transaction));
            let jws = key.jws(INTRODUCTORY_OFFER_ELIGIBILITY, claims, iat, nonce)?;
            Ok(OfferSignature {
                kind: "introductory_eligibility",
                product_id: sku,
                key_id: key.key_id().to_owned(),
                jws,
                transaction_id: Some(transaction),
                offer_identifier: None,
                allow_introductory_offer: Some(allow),
                nonce: None,
                application_username: None,
                timestamp: None,
                signature: None,
            })
        }
    }
}

/// A transaction id of the customer's: their Apple Account's `appTransactionId`, else the lineage
/// (`originalTransactionId`) of their latest App Store purchase.
async fn customer_transaction(
    cx: &Context,
    app: &App,
    customer: &AppUserId,
) -> ServiceResult<Option<String>> {
    let store = Store::AppStore.as_str();
    if let Some(account) = orders::account_of(&cx.db, &app.id, customer, store).await? {
        return Ok(Some(account));
    }
    let recorded = db::customers::recorded(&cx.db, &app.id, customer).await?;
    Ok(recorded.and_then(|r| {
        r.purchases
            .into_iter()
            .filter(|p| p.store == Store::AppStore)
            .max_by_key(|p| p.purchased_at)
            .map(|p| p.store_transaction_id)
    }))
}
