//! Per-app verifiers of Apple-signed data, and a verified transaction as the core's facts about its
//! purchase lineage (`originalTransactionId`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use gateway_core::{
    Product, PurchaseFacts, Timestamp,
    apple::{
        AppleEnvironment, SignedDataVerifier, TrustedRoots,
        facts::{self, Missing},
        models::JwsTransaction,
    },
};

use crate::{
    model::{App, AppleEnvironment as ConfiguredEnvironment},
    stores::error::{Problem, StoreError, StoreResult},
};

/// Verifiers by app, rebuilt when the app's settings change (each keeps its own chain cache).
#[derive(Debug, Default)]
pub struct Verifiers {
    by_app: Mutex<HashMap<String, (Timestamp, Arc<SignedDataVerifier>)>>,
}

impl Verifiers {
    /// The verifier for `app`, or why the app cannot take App Store purchases.
    pub fn for_app(&self, app: &App) -> StoreResult<Arc<SignedDataVerifier>> {
        let key = app.id.to_string();
        if let Some((at, v)) = self
            .by_app
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && *at == app.updated_at
        {
            return Ok(v.clone());
        }
        let config = app.settings.app_store.as_ref().ok_or_else(|| {
            StoreError::not_configured(
                "This app has no `app_store` settings; it cannot take App Store purchases.",
            )
        })?;
        let roots = match &config.root_certificates_pem {
            Some(pems) => TrustedRoots::from_pems(pems).map_err(|e| {
                StoreError::not_configured(format!(
                    "The app's `app_store.root_certificates_pem` cannot be used: {e}."
                ))
            })?,
            None => TrustedRoots::apple(),
        };
        let environment = match config.environment {
            ConfiguredEnvironment::Production => AppleEnvironment::Production,
            ConfiguredEnvironment::Sandbox => AppleEnvironment::Sandbox,
        };
        let verifier = Arc::new(SignedDataVerifier::new(
            roots,
            config.bundle_id.clone(),
            environment,
            config.app_apple_id,
        ));
        self.by_app
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (app.updated_at, verifier.clone()));
        Ok(verifier)
    }
}

/// The facts one verified transaction states about its lineage (see
/// [`gateway_core::apple::facts::transaction_facts`]).
pub fn transaction_facts(
    t: &JwsTransaction,
    purchase_id: String,
    product: &Product,
) -> StoreResult<PurchaseFacts> {
    facts::transaction_facts(t, purchase_id, product).map_err(|Missing(field)| {
        StoreError::new(
            Problem::Refused,
            "malformed_signed_data",
            format!("The signed transaction has no `{field}`."),
        )
    })
}
