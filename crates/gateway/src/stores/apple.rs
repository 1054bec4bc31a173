//! The App Store: per-app verifiers of Apple-signed data, and the mapping of a verified transaction to
//! the core's facts about its purchase lineage (`originalTransactionId`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use gateway_core::{
    EventKind, Product, ProductKind, PurchaseFacts, StoreEvent, Timestamp,
    apple::{AppleEnvironment, SignedDataVerifier, TrustedRoots, models::JwsTransaction},
    ids::Store,
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

/// The facts one verified transaction states about its lineage.
pub fn transaction_facts(
    t: &JwsTransaction,
    purchase_id: String,
    product: &Product,
) -> StoreResult<PurchaseFacts> {
    let missing = |field: &str| {
        StoreError::new(
            Problem::Refused,
            "malformed_signed_data",
            format!("The signed transaction has no `{field}`."),
        )
    };
    let id = t
        .transaction_id
        .clone()
        .ok_or_else(|| missing("transactionId"))?;
    let purchased_ms = t.purchase_date.ok_or_else(|| missing("purchaseDate"))?;
    let lineage = t
        .original_transaction_id
        .clone()
        .unwrap_or_else(|| id.clone());
    let at = Timestamp::from_millis(purchased_ms);
    let expires_at = t.expires_date.map(Timestamp::from_millis);
    let renewal = product.kind == ProductKind::Subscription
        && (t.transaction_reason.as_deref() == Some("RENEWAL") || lineage != id);
    let mut events = vec![if renewal {
        StoreEvent {
            dedupe_key: format!("apple:{id}:renewed"),
            occurred_at: at,
            kind: EventKind::Renewed {
                expires_at: expires_at.unwrap_or(at),
            },
        }
    } else {
        StoreEvent {
            dedupe_key: format!("apple:{id}:purchased"),
            occurred_at: at,
            kind: EventKind::Purchased {
                expires_at,
                quantity: t.quantity.unwrap_or(1),
            },
        }
    }];
    if let Some(revoked_ms) = t.revocation_date {
        // Family Sharing ending is a revoke; anything else with a revocation date is a refund.
        let family = t.revocation_type.as_deref() == Some("FAMILY_REVOKE")
            || t.in_app_ownership_type.as_deref() == Some("FAMILY_SHARED");
        events.push(StoreEvent {
            dedupe_key: format!("apple:{id}:revoked:{revoked_ms}"),
            occurred_at: Timestamp::from_millis(revoked_ms),
            kind: if family {
                EventKind::Revoked
            } else {
                EventKind::Refunded
            },
        });
    }
    if t.is_upgraded == Some(true) {
        let when = t.signed_date.map_or(at, Timestamp::from_millis);
        events.push(StoreEvent {
            dedupe_key: format!("apple:{id}:upgraded"),
            occurred_at: when,
            kind: EventKind::Expired,
        });
    }
    Ok(PurchaseFacts {
        id: purchase_id,
        store: Store::AppStore,
        product_id: product.id.clone(),
        store_transaction_id: lineage,
        environment: t.environment.clone(),
        terms: Some(product.terms()),
        settled: None,
        events,
    })
}
