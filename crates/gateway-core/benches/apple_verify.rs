//! Verifying an Apple-signed transaction: the first time a chain is seen (X.509 path validation, two
//! certificate signatures, the OID checks, then the JWS signature) and with the chain cached (one
//! hash, one P-256 signature check, the JSON decode).

use std::path::PathBuf;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gateway_core::{
    Timestamp,
    apple::{AppleEnvironment, SignedDataVerifier, TrustedRoots},
};

fn vector(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/apple")
        .join(name);
    std::fs::read_to_string(path)
        .expect("the vector exists")
        .trim()
        .to_owned()
}

fn bench(c: &mut Criterion) {
    let roots = TrustedRoots::from_pems(&[vector("testCA.pem")]).expect("the test root reads");
    let jws = vector("transactionInfo");
    let now = Timestamp::parse_rfc3339("2026-11-22T10:00:00Z").expect("a time");
    let make = || {
        SignedDataVerifier::new(
            roots.clone(),
            "com.example",
            AppleEnvironment::Sandbox,
            None,
        )
    };

    c.bench_function("apple_verify_transaction/first_sight", |b| {
        b.iter_batched(
            make,
            |v| v.verify_transaction(&jws, now).expect("verifies"),
            BatchSize::SmallInput,
        )
    });
    let warm = make();
    warm.verify_transaction(&jws, now).expect("verifies");
    c.bench_function("apple_verify_transaction/cached_chain", |b| {
        b.iter(|| warm.verify_transaction(&jws, now).expect("verifies"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
