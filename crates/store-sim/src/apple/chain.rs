//! Apple-shaped signed data: a three-certificate chain (P-256, like Apple's signing leaf) and compact
//! JWS with the `x5c` header Apple writes: standard base64 DER of leaf, intermediate and root.

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// Apple's marker extension on signing (leaf) certificates.
const LEAF_OID: &[u64] = &[1, 2, 840, 113_635, 100, 6, 11, 1];
/// Apple's marker extension on WWDR intermediate certificates.
const INTERMEDIATE_OID: &[u64] = &[1, 2, 840, 113_635, 100, 6, 2, 1];
/// DER NULL, the content Apple's marker extensions carry.
const DER_NULL: [u8; 2] = [0x05, 0x00];

/// Why a chain could not be made or a payload signed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the signing key was refused: {0}")]
    Key(String),
    #[error("signing failed")]
    Sign,
}

/// How to shape a simulated chain; the defaults give one that verifies like Apple's.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    pub leaf_marker: bool,
    pub intermediate_marker: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Default for ChainOptions {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            leaf_marker: true,
            intermediate_marker: true,
            not_before: now - Duration::days(365),
            not_after: now + Duration::days(3650),
        }
    }
}

/// A simulated Apple signing chain and its leaf key.
pub struct AppleChain {
    root_pem: String,
    x5c: [String; 3],
    leaf_key: EcdsaKeyPair,
}

impl std::fmt::Debug for AppleChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppleChain").finish_non_exhaustive()
    }
}

fn params(cn: &str, options: &ChainOptions) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Purchase Gateway Store Simulator");
    p.not_before = options.not_before;
    p.not_after = options.not_after;
    // As Apple's certificates carry it, and as OpenSSL's strict chain checks (which Apple's
    // libraries use) require of every certificate an issuer signed.
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

impl AppleChain {
    /// A new chain that verifies as Apple's does, valid from a year ago for ten years.
    pub fn generate() -> Result<Self, SimError> {
        Self::generate_with(&ChainOptions::default())
    }

    /// A new chain shaped by `options` (for negative tests: no marker OIDs, expired, ...).
    pub fn generate_with(options: &ChainOptions) -> Result<Self, SimError> {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut root_params = params("Simulated Apple Root CA", options)?;
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, root_key);

        let inter_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut inter_params = params("Simulated Apple Worldwide Developer Relations CA", options)?;
        inter_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        inter_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        if options.intermediate_marker {
            inter_params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    INTERMEDIATE_OID,
                    DER_NULL.to_vec(),
                ));
        }
        let inter = inter_params.signed_by(&inter_key, &root_issuer)?;
        let inter_issuer = Issuer::new(inter_params, inter_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut leaf_params = params(
            "Simulated Prod ECC Mac App Store and iTunes Store Receipt Signing",
            options,
        )?;
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if options.leaf_marker {
            leaf_params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    LEAF_OID,
                    DER_NULL.to_vec(),
                ));
        }
        let leaf = leaf_params.signed_by(&leaf_key, &inter_issuer)?;

        let signing =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &leaf_key.serialize_der())
                .map_err(|e| SimError::Key(e.to_string()))?;
        Ok(Self {
            root_pem: root.pem(),
            x5c: [
                STANDARD.encode(leaf.der()),
                STANDARD.encode(inter.der()),
                STANDARD.encode(root.der()),
            ],
            leaf_key: signing,
        })
    }

    /// The root to pin (an app's `root_certificates_pem`).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs `payload` as the App Store does: compact JWS, ES256, `x5c` = [leaf, intermediate, root].
    pub fn sign(&self, payload: &serde_json::Value) -> Result<String, SimError> {
        let header = serde_json::json!({"alg": "ES256", "x5c": self.x5c});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = self
            .leaf_key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| SimError::Sign)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// What an App Store Server Notification V2 says, for [`AppleChain::notification`].
#[derive(Debug, Clone, Default)]
pub struct Notification<'a> {
    pub notification_type: &'a str,
    pub subtype: Option<&'a str>,
    pub uuid: &'a str,
    /// Unix milliseconds.
    pub signed_date: i64,
    pub bundle_id: &'a str,
    pub app_apple_id: Option<i64>,
    pub environment: &'a str,
    pub signed_transaction: Option<String>,
    pub signed_renewal: Option<String>,
    /// 1 active, 2 expired, 3 billing retry, 4 grace period, 5 revoked.
    pub status: Option<i64>,
    /// A signed AppTransaction: the notification is about the app's Apple Account (RESCIND_CONSENT)
    /// and carries `appData` in place of `data`.
    pub signed_app_transaction: Option<String>,
    /// An external purchase token: the notification (EXTERNAL_PURCHASE_TOKEN) carries
    /// `externalPurchaseToken` in place of `data`.
    pub external_purchase_token: Option<serde_json::Value>,
}

impl AppleChain {
    /// The body Apple POSTs for a notification: `{"signedPayload": "<JWS>"}`.
    pub fn notification(&self, n: &Notification<'_>) -> Result<String, SimError> {
        let mut data = serde_json::json!({"bundleId": n.bundle_id, "environment": n.environment, "bundleVersion": "1"});
        if let Some(id) = n.app_apple_id {
            data["appAppleId"] = id.into();
        }
        if let Some(t) = &n.signed_transaction {
            data["signedTransactionInfo"] = t.clone().into();
        }
        if let Some(r) = &n.signed_renewal {
            data["signedRenewalInfo"] = r.clone().into();
        }
        if let Some(s) = n.status {
            data["status"] = s.into();
        }
        let mut payload = serde_json::json!({
            "notificationType": n.notification_type,
            "notificationUUID": n.uuid,
            "version": "2.0",
            "signedDate": n.signed_date,
        });
        match (&n.signed_app_transaction, &n.external_purchase_token) {
            (_, Some(token)) => payload["externalPurchaseToken"] = token.clone(),
            (Some(app), None) => {
                let mut app_data = serde_json::json!({"bundleId": n.bundle_id,
                    "environment": n.environment, "signedAppTransactionInfo": app});
                if let Some(id) = n.app_apple_id {
                    app_data["appAppleId"] = id.into();
                }
                payload["appData"] = app_data;
            }
            (None, None) => payload["data"] = data,
        }
        if let Some(sub) = n.subtype {
            payload["subtype"] = sub.into();
        }
        Ok(serde_json::json!({"signedPayload": self.sign(&payload)?}).to_string())
    }
}
