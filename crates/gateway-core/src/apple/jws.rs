//! Verification of Apple-signed data, by the rules of Apple's own verifier:
//!
//! 1. a compact JWS, `alg` ES256, an `x5c` header of exactly three certificates;
//! 2. the leaf and intermediate (x5c[0], x5c[1]) chain to a **pinned** root at the payload's own
//!    `signedDate` (so signed data stays verifiable after its certificate expires); x5c[2] is ignored;
//! 3. Apple's marker OIDs: 1.2.840.113635.100.6.11.1 on the leaf, 1.2.840.113635.100.6.2.1 on the
//!    intermediate (a path validator alone accepts certificates without them);
//! 4. the ES256 signature with the leaf's key;
//! 5. then the claims: bundle id, environment, and `appAppleId` in Production.
//!
//! A verified chain is cached by its exact bytes with the window in which it is valid, so the hot path
//! costs one hash and one signature check. Online revocation checks (OCSP) are not made: the gateway
//! runs without reaching Apple's OCSP responders, as Apple's verifier does with online checks off.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime, pem::PemObject};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage};

use super::models::{
    AppTransaction, JwsRenewalInfo, JwsTransaction, NotificationPayload, NotificationSubject,
};
use crate::time::Timestamp;

/// Apple Root CA - G3, the root every App Store signature chains to (SHA-256 fingerprint
/// 63:34:3A:BF:B8:9A:6A:03:EB:B5:7E:9B:3F:5F:A7:BE:7C:4F:5C:75:6F:30:17:B3:A8:C4:88:C3:65:3E:91:79).
pub const APPLE_ROOT_CA_G3_PEM: &str = include_str!("AppleRootCA-G3.pem");

/// The marker extension on Apple's signing (leaf) certificates.
const LEAF_OID: &str = "1.2.840.113635.100.6.11.1";
/// The marker extension on Apple's WWDR intermediate certificates.
const INTERMEDIATE_OID: &str = "1.2.840.113635.100.6.2.1";

/// Verified chains kept at most. Apple rotates its signing certificates rarely: a handful of chains
/// are live at once; the bound only guards against a flood of forged-but-valid-looking chains.
const CACHE_CAPACITY: usize = 256;

/// Why signed data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signed data is not a compact JWS with a JSON header and payload")]
    Malformed,
    #[error("the JWS has no x5c certificate chain")]
    MissingX5c,
    #[error("the JWS algorithm is {0:?}; Apple signs with ES256")]
    UnsupportedAlgorithm(String),
    #[error("the x5c chain has {0} certificates; Apple's has 3")]
    ChainLength(usize),
    #[error("a certificate of the x5c chain cannot be read")]
    InvalidCertificate,
    #[error("the certificate chain does not lead to a trusted Apple root at the time of signing")]
    UntrustedChain,
    #[error("the certificate chain lacks Apple's marker extension ({0})")]
    MissingAppleOid(&'static str),
    #[error("the signature does not match the signing certificate")]
    BadSignature,
    #[error("the signed payload does not have the expected fields: {0}")]
    InvalidPayload(String),
    #[error("the signed data is for bundle {found:?}, not {expected:?}")]
    WrongBundle { found: String, expected: String },
    #[error("the signed data is for App Store app id {found:?}, not {expected}")]
    WrongAppAppleId { found: Option<i64>, expected: i64 },
    #[error("the signed data is from the {found:?} environment; this app accepts {expected:?}")]
    WrongEnvironment { found: String, expected: String },
}

impl VerifyError {
    /// A stable snake_case code for API answers.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed | VerifyError::InvalidPayload(_) => "malformed_signed_data",
            VerifyError::MissingX5c
            | VerifyError::UnsupportedAlgorithm(_)
            | VerifyError::ChainLength(_)
            | VerifyError::InvalidCertificate => "invalid_certificate_chain",
            VerifyError::UntrustedChain => "untrusted_certificate_chain",
            VerifyError::MissingAppleOid(_) => "not_apple_certificate",
            VerifyError::BadSignature => "invalid_signature",
            VerifyError::WrongBundle { .. } | VerifyError::WrongAppAppleId { .. } => "wrong_app",
            VerifyError::WrongEnvironment { .. } => "wrong_environment",
        }
    }
}

/// Apple's environment names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppleEnvironment {
    Production,
    Sandbox,
}

impl AppleEnvironment {
    pub fn as_str(self) -> &'static str {
        match self {
            AppleEnvironment::Production => "Production",
            AppleEnvironment::Sandbox => "Sandbox",
        }
    }
}

/// Why a set of pinned roots was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootsError {
    #[error("no root certificate was given")]
    Empty,
    #[error("root certificate {0} is not a readable PEM certificate")]
    Unreadable(usize),
}

/// The pinned roots signed data must chain to.
#[derive(Debug, Clone)]
pub struct TrustedRoots {
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustedRoots {
    /// Apple Root CA - G3 alone: what production trusts.
    pub fn apple() -> Self {
        Self::from_pems(&[APPLE_ROOT_CA_G3_PEM])
            .expect("the built-in Apple root is a valid certificate")
    }

    /// Roots from PEM texts (text around the PEM block, as `openssl x509 -text` writes, is skipped).
    pub fn from_pems<S: AsRef<str>>(pems: &[S]) -> Result<Self, RootsError> {
        if pems.is_empty() {
            return Err(RootsError::Empty);
        }
        let mut anchors = Vec::new();
        for (i, pem) in pems.iter().enumerate() {
            let der = CertificateDer::from_pem_slice(pem.as_ref().as_bytes())
                .map_err(|_| RootsError::Unreadable(i))?;
            Self::push(&mut anchors, der).ok_or(RootsError::Unreadable(i))?;
        }
        Ok(Self { anchors })
    }

    /// Roots from DER certificates.
    pub fn from_ders(ders: &[Vec<u8>]) -> Result<Self, RootsError> {
        if ders.is_empty() {
            return Err(RootsError::Empty);
        }
        let mut anchors = Vec::new();
        for (i, der) in ders.iter().enumerate() {
            Self::push(&mut anchors, CertificateDer::from(der.clone()))
                .ok_or(RootsError::Unreadable(i))?;
        }
        Ok(Self { anchors })
    }

    fn push(anchors: &mut Vec<TrustAnchor<'static>>, der: CertificateDer<'static>) -> Option<()> {
        let anchor = webpki::anchor_from_trusted_cert(&der).ok()?.to_owned();
        anchors.push(anchor);
        Some(())
    }
}

/// What a verified chain yields: the leaf's public key, and when the chain is valid.
#[derive(Debug, Clone)]
struct VerifiedChain {
    /// The leaf's uncompressed P-256 point.
    leaf_key: Arc<[u8]>,
    /// The window in which leaf and intermediate are both valid, unix seconds.
    not_before: i64,
    not_after: i64,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    x5c: Option<Vec<String>>,
}

/// Verifies Apple-signed data for one app.
#[derive(Debug)]
pub struct SignedDataVerifier {
    roots: TrustedRoots,
    bundle_id: String,
    environment: AppleEnvironment,
    app_apple_id: Option<i64>,
    chains: Mutex<HashMap<[u8; 32], VerifiedChain>>,
}

/// A verified, decoded JWS: the payload as JSON and the time it was signed.
struct Verified {
    payload: serde_json::Value,
}

impl SignedDataVerifier {
    /// A verifier for an app. In Production, Apple requires the app's App Store id (`appAppleId`) to be
    /// checked on notifications; it is optional in Sandbox.
    pub fn new(
        roots: TrustedRoots,
        bundle_id: impl Into<String>,
        environment: AppleEnvironment,
        app_apple_id: Option<i64>,
    ) -> Self {
        Self {
            roots,
            bundle_id: bundle_id.into(),
            environment,
            app_apple_id,
            chains: Mutex::new(HashMap::new()),
        }
    }

    pub fn environment(&self) -> AppleEnvironment {
        self.environment
    }

    /// A signed transaction (`signedTransactionInfo`, StoreKit 2's `jwsRepresentation`).
    pub fn verify_transaction(
        &self,
        jws: &str,
        now: Timestamp,
    ) -> Result<JwsTransaction, VerifyError> {
        let v = self.verify(jws, now)?;
        let t: JwsTransaction = parse(v.payload)?;
        self.check_bundle(t.bundle_id.as_deref())?;
        self.check_environment(t.environment.as_deref())?;
        Ok(t)
    }

    /// Signed renewal info (`signedRenewalInfo`): it has no bundle id, so only the environment is checked.
    pub fn verify_renewal_info(
        &self,
        jws: &str,
        now: Timestamp,
    ) -> Result<JwsRenewalInfo, VerifyError> {
        let v = self.verify(jws, now)?;
        let r: JwsRenewalInfo = parse(v.payload)?;
        self.check_environment(r.environment.as_deref())?;
        Ok(r)
    }

    /// A signed `AppTransaction` (StoreKit 2's `AppTransaction.shared`, or a notification's
    /// `signedAppTransactionInfo`): its bundle, its environment (`receiptType`) and, in
    /// production, the app's Apple id are checked as for a notification.
    pub fn verify_app_transaction(
        &self,
        jws: &str,
        now: Timestamp,
    ) -> Result<AppTransaction, VerifyError> {
        let v = self.verify(jws, now)?;
        let t: AppTransaction = parse(v.payload)?;
        self.check_bundle(t.bundle_id.as_deref())?;
        self.check_app_apple_id(t.app_apple_id)?;
        self.check_environment(t.receipt_type.as_deref())?;
        Ok(t)
    }

    /// An App Store Server Notification V2 `signedPayload`. The nested transaction and renewal info
    /// are separate JWS, verified by the caller with [`Self::verify_transaction`] and
    /// [`Self::verify_renewal_info`].
    pub fn verify_notification(
        &self,
        jws: &str,
        now: Timestamp,
    ) -> Result<NotificationPayload, VerifyError> {
        let v = self.verify(jws, now)?;
        let n: NotificationPayload = parse(v.payload)?;
        let NotificationSubject {
            bundle_id,
            app_apple_id,
            environment,
        } = n.subject();
        self.check_bundle(bundle_id.as_deref())?;
        self.check_app_apple_id(app_apple_id)?;
        self.check_environment(environment.as_deref())?;
        Ok(n)
    }

    /// In production, the app's Apple id when the verifier was given one.
    fn check_app_apple_id(&self, found: Option<i64>) -> Result<(), VerifyError> {
        match self.app_apple_id {
            Some(expected)
                if self.environment == AppleEnvironment::Production && found != Some(expected) =>
            {
                Err(VerifyError::WrongAppAppleId { found, expected })
            }
            _ => Ok(()),
        }
    }

    fn check_bundle(&self, found: Option<&str>) -> Result<(), VerifyError> {
        match found {
            Some(b) if b == self.bundle_id => Ok(()),
            other => Err(VerifyError::WrongBundle {
                found: other.unwrap_or("").to_owned(),
                expected: self.bundle_id.clone(),
            }),
        }
    }

    fn check_environment(&self, found: Option<&str>) -> Result<(), VerifyError> {
        match found {
            Some(e) if e == self.environment.as_str() => Ok(()),
            other => Err(VerifyError::WrongEnvironment {
                found: other.unwrap_or("").to_owned(),
                expected: self.environment.as_str().to_owned(),
            }),
        }
    }

    /// Steps 1 to 4: the JWS, its chain and its signature. `now` is the effective time when the
    /// payload carries no `signedDate`.
    fn verify(&self, jws: &str, now: Timestamp) -> Result<Verified, VerifyError> {
        let mut parts = jws.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(VerifyError::Malformed)?;
        let x5c = header
            .x5c
            .filter(|c| !c.is_empty())
            .ok_or(VerifyError::MissingX5c)?;
        match header.alg.as_deref() {
            Some("ES256") => {}
            other => {
                return Err(VerifyError::UnsupportedAlgorithm(
                    other.unwrap_or("").to_owned(),
                ));
            }
        }
        let payload: serde_json::Value = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(serde_json::Value::is_object)
            .ok_or(VerifyError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| VerifyError::Malformed)?;

        let effective_ms = ["signedDate", "receiptCreationDate"]
            .iter()
            .find_map(|k| payload.get(*k).and_then(serde_json::Value::as_f64))
            .map_or(now.millis(), |ms| ms as i64);
        let effective = effective_ms.div_euclid(1000);

        if x5c.len() != 3 {
            return Err(VerifyError::ChainLength(x5c.len()));
        }
        let chain = self.chain(&x5c[0], &x5c[1], effective)?;

        let signed = &jws.trim()[..h.len() + 1 + p.len()];
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            &*chain.leaf_key,
        )
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| VerifyError::BadSignature)?;
        Ok(Verified { payload })
    }

    /// Checks a (leaf, intermediate) chain, base64 DER as in `x5c`, at `effective` unix seconds: the
    /// chain steps of verification alone, for diagnostics and tests.
    pub fn check_chain(
        &self,
        leaf_b64: &str,
        intermediate_b64: &str,
        effective: i64,
    ) -> Result<(), VerifyError> {
        self.verify_chain(leaf_b64, intermediate_b64, effective)
            .map(|_| ())
    }

    /// The verified chain of (leaf, intermediate) at `effective` (unix seconds): from the cache when it
    /// was verified before and `effective` is inside its window, else verified now.
    fn chain(
        &self,
        leaf_b64: &str,
        intermediate_b64: &str,
        effective: i64,
    ) -> Result<VerifiedChain, VerifyError> {
        let mut hasher = Sha256::new();
        hasher.update(leaf_b64.as_bytes());
        hasher.update([0]);
        hasher.update(intermediate_b64.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        {
            let cache = self.chains.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(&key)
                && (c.not_before..=c.not_after).contains(&effective)
            {
                return Ok(c.clone());
            }
        }
        let verified = self.verify_chain(leaf_b64, intermediate_b64, effective)?;
        let mut cache = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, verified.clone());
        Ok(verified)
    }

    fn verify_chain(
        &self,
        leaf_b64: &str,
        intermediate_b64: &str,
        effective: i64,
    ) -> Result<VerifiedChain, VerifyError> {
        let leaf_der = STANDARD
            .decode(leaf_b64)
            .map_err(|_| VerifyError::InvalidCertificate)?;
        let inter_der = STANDARD
            .decode(intermediate_b64)
            .map_err(|_| VerifyError::InvalidCertificate)?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)
            .map_err(|_| VerifyError::InvalidCertificate)?;
        let (_, inter) = x509_parser::parse_x509_certificate(&inter_der)
            .map_err(|_| VerifyError::InvalidCertificate)?;

        let leaf_cert = CertificateDer::from(leaf_der.as_slice());
        let ee =
            EndEntityCert::try_from(&leaf_cert).map_err(|_| VerifyError::InvalidCertificate)?;
        let intermediates = [CertificateDer::from(inter_der.as_slice())];
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(effective).unwrap_or(0),
        ));
        // Apple's certificates carry no extended key usage; any required-if-present purpose passes.
        const ANY_PURPOSE: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
        ee.verify_for_usage(
            ALL_VERIFICATION_ALGS,
            &self.roots.anchors,
            &intermediates,
            time,
            KeyUsage::required_if_present(ANY_PURPOSE),
            None,
            None,
        )
        .map_err(|_| VerifyError::UntrustedChain)?;

        let has = |cert: &x509_parser::certificate::X509Certificate<'_>, oid: &str| {
            cert.extensions()
                .iter()
                .any(|e| e.oid.to_id_string() == oid)
        };
        if !has(&leaf, LEAF_OID) {
            return Err(VerifyError::MissingAppleOid(LEAF_OID));
        }
        if !has(&inter, INTERMEDIATE_OID) {
            return Err(VerifyError::MissingAppleOid(INTERMEDIATE_OID));
        }
        let leaf_key: Arc<[u8]> = Arc::from(leaf.public_key().subject_public_key.data.as_ref());
        let not_before = leaf
            .validity()
            .not_before
            .timestamp()
            .max(inter.validity().not_before.timestamp());
        let not_after = leaf
            .validity()
            .not_after
            .timestamp()
            .min(inter.validity().not_after.timestamp());
        Ok(VerifiedChain {
            leaf_key,
            not_before,
            not_after,
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(payload: serde_json::Value) -> Result<T, VerifyError> {
    super::models::check_text(&payload).map_err(VerifyError::InvalidPayload)?;
    serde_json::from_value(payload).map_err(|e| VerifyError::InvalidPayload(e.to_string()))
}
