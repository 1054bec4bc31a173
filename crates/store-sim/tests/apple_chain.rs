//! The simulated chain's signed data verifies as Apple's does, with the gateway's own verifier, and a
//! chain shaped wrong is refused.

use gateway_core::{
    Timestamp,
    apple::{AppleEnvironment, SignedDataVerifier, TrustedRoots, VerifyError},
};
use serde_json::json;
use store_sim::apple::chain::{AppleChain, ChainOptions};
use time::OffsetDateTime;

fn verifier(chain: &AppleChain) -> SignedDataVerifier {
    SignedDataVerifier::new(
        TrustedRoots::from_pems(&[chain.root_pem()]).unwrap(),
        "edu.acme.app",
        AppleEnvironment::Sandbox,
        None,
    )
}

fn transaction(signed_date: i64) -> serde_json::Value {
    json!({"transactionId": "2000000001", "originalTransactionId": "2000000001", "bundleId": "edu.acme.app",
           "productId": "edu.acme.cs101", "type": "Non-Consumable", "purchaseDate": signed_date,
           "signedDate": signed_date, "environment": "Sandbox", "inAppOwnershipType": "PURCHASED"})
}

#[test]
fn signed_data_verifies_as_apple_signed_data_does() {
    let chain = AppleChain::generate().unwrap();
    let now = Timestamp::from_datetime(OffsetDateTime::now_utc());
    let jws = chain.sign(&transaction(now.millis())).unwrap();
    let t = verifier(&chain).verify_transaction(&jws, now).unwrap();
    assert_eq!(t.transaction_id.as_deref(), Some("2000000001"));
    // Another simulator's chain is not trusted.
    let other = AppleChain::generate().unwrap();
    assert_eq!(
        verifier(&other).verify_transaction(&jws, now).unwrap_err(),
        VerifyError::UntrustedChain
    );
}

#[test]
fn chains_without_markers_or_out_of_date_are_refused() {
    let now = Timestamp::from_datetime(OffsetDateTime::now_utc());
    let no_leaf = AppleChain::generate_with(&ChainOptions {
        leaf_marker: false,
        ..Default::default()
    })
    .unwrap();
    let jws = no_leaf.sign(&transaction(now.millis())).unwrap();
    assert!(matches!(
        verifier(&no_leaf).verify_transaction(&jws, now),
        Err(VerifyError::MissingAppleOid(_))
    ));
    let no_inter = AppleChain::generate_with(&ChainOptions {
        intermediate_marker: false,
        ..Default::default()
    })
    .unwrap();
    let jws = no_inter.sign(&transaction(now.millis())).unwrap();
    assert!(matches!(
        verifier(&no_inter).verify_transaction(&jws, now),
        Err(VerifyError::MissingAppleOid(_))
    ));
    let chain = AppleChain::generate().unwrap();
    let long_ago = now.millis() - 3 * 365 * 86_400_000;
    let jws = chain.sign(&transaction(long_ago)).unwrap();
    assert_eq!(
        verifier(&chain).verify_transaction(&jws, now).unwrap_err(),
        VerifyError::UntrustedChain,
        "signed before the chain was valid"
    );
}
