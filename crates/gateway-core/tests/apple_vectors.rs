//! Apple's own test vectors, with the outcomes Apple's verifier gives them.

use std::path::PathBuf;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use gateway_core::{
    Timestamp,
    apple::{
        AppleEnvironment, SignedDataVerifier, TrustedRoots, VerifyError, jws::APPLE_ROOT_CA_G3_PEM,
    },
};
use sha2::{Digest, Sha256};

fn vector(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/apple")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn test_roots() -> TrustedRoots {
    TrustedRoots::from_pems(&[vector("testCA.pem")]).unwrap()
}

fn verifier(env: AppleEnvironment, bundle: &str, app_apple_id: Option<i64>) -> SignedDataVerifier {
    SignedDataVerifier::new(test_roots(), bundle, env, app_apple_id)
}

/// A time inside the test chain's validity, for vectors that carry no `signedDate`.
fn now() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-22T10:00:00Z").unwrap()
}

/// The base64 body of a PEM file (the test PEMs start with an `openssl -text` dump).
fn pem_b64(name: &str) -> String {
    let text = vector(name);
    let start =
        text.find("-----BEGIN CERTIFICATE-----").unwrap() + "-----BEGIN CERTIFICATE-----".len();
    let end = text.find("-----END CERTIFICATE-----").unwrap();
    text[start..end].split_whitespace().collect()
}

#[test]
fn the_built_in_root_is_apple_root_ca_g3() {
    let der = rustls_pki_types_der(APPLE_ROOT_CA_G3_PEM);
    assert_eq!(
        hex::encode_upper(Sha256::digest(&der)),
        "63343ABFB89A6A03EBB57E9B3F5FA7BE7C4F5C756F3017B3A8C488C3653E9179"
    );
}

fn rustls_pki_types_der(pem: &str) -> Vec<u8> {
    let start = pem.find("-----BEGIN CERTIFICATE-----").unwrap() + 27;
    let end = pem.find("-----END CERTIFICATE-----").unwrap();
    STANDARD
        .decode(pem[start..end].split_whitespace().collect::<String>())
        .unwrap()
}

#[test]
fn a_signed_transaction_verifies_and_decodes() {
    let t = verifier(AppleEnvironment::Sandbox, "com.example", None)
        .verify_transaction(&vector("transactionInfo"), now())
        .unwrap();
    assert_eq!(t.environment.as_deref(), Some("Sandbox"));
    assert_eq!(t.bundle_id.as_deref(), Some("com.example"));
    assert_eq!(t.signed_date, Some(1_672_956_154_000));
}

#[test]
fn a_transaction_of_another_bundle_or_environment_is_refused() {
    let jws = vector("transactionInfo");
    let err = verifier(AppleEnvironment::Sandbox, "com.example.x", None)
        .verify_transaction(&jws, now())
        .unwrap_err();
    assert!(matches!(err, VerifyError::WrongBundle { .. }), "{err:?}");
    let err = verifier(AppleEnvironment::Production, "com.example", Some(1234))
        .verify_transaction(&jws, now())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::WrongEnvironment { .. }),
        "{err:?}"
    );
}

#[test]
fn renewal_info_checks_only_the_environment() {
    let jws = vector("renewalInfo");
    let r = verifier(AppleEnvironment::Sandbox, "any.bundle", None)
        .verify_renewal_info(&jws, now())
        .unwrap();
    assert_eq!(r.environment.as_deref(), Some("Sandbox"));
    let err = verifier(AppleEnvironment::Production, "com.example", Some(1234))
        .verify_renewal_info(&jws, now())
        .unwrap_err();
    assert!(matches!(err, VerifyError::WrongEnvironment { .. }));
}

#[test]
fn a_notification_checks_bundle_then_app_id_then_environment() {
    let jws = vector("testNotification");
    let n = verifier(AppleEnvironment::Sandbox, "com.example", None)
        .verify_notification(&jws, now())
        .unwrap();
    assert_eq!(n.notification_type, "TEST");
    assert!(!n.notification_uuid.is_empty());
    let err = verifier(AppleEnvironment::Production, "com.example", Some(1234))
        .verify_notification(&jws, now())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::WrongEnvironment { .. }),
        "{err:?}"
    );
    let err = verifier(AppleEnvironment::Production, "com.example", Some(1235))
        .verify_notification(&jws, now())
        .unwrap_err();
    assert_eq!(
        err,
        VerifyError::WrongAppAppleId {
            found: Some(1234),
            expected: 1235
        }
    );
    let err = verifier(AppleEnvironment::Sandbox, "com.example", None)
        .verify_notification(&vector("wrongBundleId"), now())
        .unwrap_err();
    assert!(matches!(err, VerifyError::WrongBundle { .. }), "{err:?}");
}

#[test]
fn malformed_data_and_a_missing_chain_are_refused() {
    let v = verifier(AppleEnvironment::Sandbox, "com.example", None);
    assert_eq!(
        v.verify_notification(&vector("missingX5CHeaderClaim"), now())
            .unwrap_err(),
        VerifyError::MissingX5c
    );
    for bad in ["a.b.c.d", "a.b.c", "", "garbage", "..."] {
        assert_eq!(
            v.verify_transaction(bad, now()).unwrap_err(),
            VerifyError::Malformed,
            "{bad:?}"
        );
    }
}

#[test]
fn the_chain_must_end_at_a_pinned_root() {
    let apple = SignedDataVerifier::new(
        TrustedRoots::apple(),
        "com.example",
        AppleEnvironment::Sandbox,
        None,
    );
    assert_eq!(
        apple
            .verify_transaction(&vector("transactionInfo"), now())
            .unwrap_err(),
        VerifyError::UntrustedChain
    );
}

#[test]
fn a_forged_payload_or_signature_is_refused() {
    let jws = vector("transactionInfo");
    let parts: Vec<&str> = jws.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["productId"] = serde_json::json!("com.example.free.lunch");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    let v = verifier(AppleEnvironment::Sandbox, "com.example", None);
    assert_eq!(
        v.verify_transaction(&forged, now()).unwrap_err(),
        VerifyError::BadSignature
    );
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(
        v.verify_transaction(&flipped, now()).unwrap_err(),
        VerifyError::BadSignature
    );
    // The right signature is still accepted after the failures (nothing was cached wrongly).
    assert!(v.verify_transaction(&jws, now()).is_ok());
}

#[test]
fn chains_are_checked_for_validity_and_apple_oids() {
    let v = verifier(AppleEnvironment::Sandbox, "com.example", None);
    let (leaf, inter) = (pem_b64("testLeaf.pem"), pem_b64("testIntermediate.pem"));
    assert_eq!(v.check_chain(&leaf, &inter, 1_761_962_975), Ok(()));
    assert_eq!(
        v.check_chain(&leaf, &inter, 2_280_946_846),
        Err(VerifyError::UntrustedChain),
        "expired"
    );
    assert_eq!(
        v.check_chain(&pem_b64("testInvalidOIDLeaf.pem"), &inter, 1_761_962_975),
        Err(VerifyError::MissingAppleOid("1.2.840.113635.100.6.11.1"))
    );
    assert_eq!(
        v.check_chain(
            &pem_b64("testInvalidIntermediateLeaf.pem"),
            &pem_b64("testInvalidOIDIntermediate.pem"),
            1_761_962_975
        ),
        Err(VerifyError::MissingAppleOid("1.2.840.113635.100.6.2.1"))
    );
    assert_eq!(
        v.check_chain("not base64!", &inter, 1_761_962_975),
        Err(VerifyError::InvalidCertificate)
    );
    assert_eq!(
        v.check_chain(&STANDARD.encode(b"abc"), &inter, 1_761_962_975),
        Err(VerifyError::InvalidCertificate)
    );
}

#[test]
fn the_real_apple_chain_verifies_against_the_built_in_root() {
    let v = SignedDataVerifier::new(
        TrustedRoots::apple(),
        "com.example",
        AppleEnvironment::Production,
        Some(1),
    );
    let (leaf, inter) = (
        pem_b64("REAL_APPLE_SIGNING_CERTIFICATE.pem"),
        pem_b64("REAL_APPLE_INTERMEDIATE.pem"),
    );
    assert_eq!(v.check_chain(&leaf, &inter, 1_761_962_975), Ok(()));
    // The test chain is not Apple's.
    assert_eq!(
        v.check_chain(
            &pem_b64("testLeaf.pem"),
            &pem_b64("testIntermediate.pem"),
            1_761_962_975
        ),
        Err(VerifyError::UntrustedChain)
    );
}

#[test]
fn a_chain_of_the_wrong_length_is_refused() {
    let jws = vector("transactionInfo");
    let parts: Vec<&str> = jws.split('.').collect();
    let mut header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    header["x5c"].as_array_mut().unwrap().pop();
    let short = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        parts[1],
        parts[2]
    );
    let v = verifier(AppleEnvironment::Sandbox, "com.example", None);
    assert_eq!(
        v.verify_transaction(&short, now()).unwrap_err(),
        VerifyError::ChainLength(2)
    );
    header["alg"] = serde_json::json!("HS256");
    let hs = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        parts[1],
        parts[2]
    );
    assert_eq!(
        v.verify_transaction(&hs, now()).unwrap_err(),
        VerifyError::UnsupportedAlgorithm("HS256".into())
    );
}
