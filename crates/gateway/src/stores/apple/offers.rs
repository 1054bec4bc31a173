//! What StoreKit asks the app's server to sign with the app's In-App Purchase key, in Apple's exact
//! forms (store-deltas.md A-4): a promotional offer's legacy signature (StoreKit 1, and StoreKit 2's
//! `promotionalOffer(offerID:keyID:nonce:signature:timestamp:)`), and the JWS StoreKit 2 takes for
//! a promotional offer or for introductory-offer eligibility.

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
use serde_json::{Map, Value, json};

use super::super::{StoreError, StoreResult};
use crate::model::AppStoreConfig;

/// The `aud` of a promotional offer's JWS.
pub const PROMOTIONAL_OFFER: &str = "promotional-offer";
/// The `aud` of an introductory-offer eligibility JWS.
pub const INTRODUCTORY_OFFER_ELIGIBILITY: &str = "introductory-offer-eligibility";

/// The separator of the legacy message: U+2063 INVISIBLE SEPARATOR.
const SEPARATOR: char = '\u{2063}';

/// The app's In-App Purchase key and what names it, as StoreKit checks a signature against.
pub struct OfferKey {
    bundle_id: String,
    key_id: String,
    issuer_id: String,
    pair: EcdsaKeyPair,
    jwt: EncodingKey,
}

impl std::fmt::Debug for OfferKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfferKey")
            .field("bundle_id", &self.bundle_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// What a legacy promotional-offer signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Promotion<'a> {
    /// The App Store product id.
    pub product_id: &'a str,
    pub offer_identifier: &'a str,
    /// What the app passes StoreKit as `applicationUsername` (StoreKit 2: the `appAccountToken`);
    /// may be empty.
    pub application_username: &'a str,
    /// A fresh UUID per signature.
    pub nonce: uuid::Uuid,
    /// Unix milliseconds; the offer stays valid for 24 hours after.
    pub timestamp_ms: i64,
}

impl OfferKey {
    /// The key of the app's App Store settings: `key_id`, `issuer_id` and `private_key_pem` (the
    /// `.p8` file App Store Connect gives).
    pub fn from_config(config: &AppStoreConfig) -> StoreResult<Self> {
        let (Some(key_id), Some(issuer_id), Some(pem)) =
            (&config.key_id, &config.issuer_id, &config.private_key_pem)
        else {
            return Err(StoreError::not_configured(
                "Offer signatures need the app's In-App Purchase key: `app_store.key_id`, `issuer_id` and `private_key_pem`.",
            ));
        };
        let not_a_key = || {
            StoreError::not_configured(
                "The app's `app_store.private_key_pem` is not an ES256 (.p8) key.",
            )
        };
        let der =
            PrivatePkcs8KeyDer::from_pem_slice(pem.expose().as_bytes()).map_err(|_| not_a_key())?;
        let der = der.secret_pkcs8_der();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map_err(|_| not_a_key())?;
        let jwt = EncodingKey::from_ec_der(der);
        Ok(Self {
            bundle_id: config.bundle_id.clone(),
            key_id: key_id.clone(),
            issuer_id: issuer_id.clone(),
            pair,
            jwt,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The message a legacy promotional-offer signature covers: bundle id, key id, product id,
    /// offer id, the application username and the nonce (both lowercase) and the timestamp, joined
    /// with U+2063.
    pub fn promotional_message(&self, p: &Promotion<'_>) -> String {
        let nonce = p.nonce.hyphenated().to_string();
        let timestamp = p.timestamp_ms.to_string();
        let parts = [
            self.bundle_id.as_str(),
            self.key_id.as_str(),
            p.product_id,
            p.offer_identifier,
            &p.application_username.to_lowercase(),
            &nonce.to_lowercase(),
            &timestamp,
        ];
        parts.join(&SEPARATOR.to_string())
    }

    /// The legacy signature: ECDSA P-256 with SHA-256 over the message, DER, standard base64.
    pub fn promotional_signature(&self, p: &Promotion<'_>) -> StoreResult<String> {
        let message = self.promotional_message(p);
        let signature = self
            .pair
            .sign(&SystemRandom::new(), message.as_bytes())
            .map_err(|_| {
                StoreError::unavailable("The offer signature could not be made; try again.")
            })?;
        Ok(STANDARD.encode(signature.as_ref()))
    }

    /// A JWS StoreKit 2 takes: ES256 with the key's id (`kid`, `typ: JWT`), claims `bid`, `iss`,
    /// `aud`, `iat` (seconds), `nonce` (a fresh UUID) and the feature's own.
    pub fn jws(
        &self,
        audience: &str,
        feature: Map<String, Value>,
        iat_secs: i64,
        nonce: uuid::Uuid,
    ) -> StoreResult<String> {
        let mut claims = feature;
        claims.insert("bid".into(), json!(self.bundle_id));
        claims.insert("iss".into(), json!(self.issuer_id));
        claims.insert("aud".into(), json!(audience));
        claims.insert("iat".into(), json!(iat_secs));
        claims.insert("nonce".into(), json!(nonce.hyphenated().to_string()));
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.jwt)
            .map_err(|_| StoreError::unavailable("The offer JWS could not be signed; try again."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> OfferKey {
        let pem = store_sim::apple::api::ApiKey::generate("issuer-1", "KEY0000001")
            .unwrap()
            .private_key_pem;
        let config: AppStoreConfig = serde_json::from_value(json!({"bundle_id": "edu.acme.app",
            "environment": "Sandbox", "key_id": "KEY0000001", "issuer_id": "issuer-1",
            "private_key_pem": pem}))
        .unwrap();
        OfferKey::from_config(&config).unwrap()
    }

    #[test]
    fn the_legacy_message_lowers_the_username_and_nonce_and_joins_with_u2063() {
        let nonce = uuid::Uuid::parse_str("A1B2C3D4-0000-4000-8000-00000000000F").unwrap();
        let message = key().promotional_message(&Promotion {
            product_id: "edu.acme.premium",
            offer_identifier: "WINBACK",
            application_username: "Ada-Token",
            nonce,
            timestamp_ms: 1_795_341_600_000,
        });
        assert_eq!(
            message,
            "edu.acme.app\u{2063}KEY0000001\u{2063}edu.acme.premium\u{2063}WINBACK\u{2063}ada-token\u{2063}a1b2c3d4-0000-4000-8000-00000000000f\u{2063}1795341600000"
        );
    }

    #[test]
    fn a_key_that_is_not_pkcs8_is_refused() {
        let config: AppStoreConfig = serde_json::from_value(json!({"bundle_id": "edu.acme.app",
            "environment": "Sandbox", "key_id": "K", "issuer_id": "I",
            "private_key_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"}))
        .unwrap();
        let err = OfferKey::from_config(&config).unwrap_err();
        assert!(err.to_string().contains("not an ES256"), "{err}");
    }
}
