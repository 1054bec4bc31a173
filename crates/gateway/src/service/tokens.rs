//! Entitlement tokens: a snapshot carries a compact JWS (ES256, with `kid`) of the customer's active
//! entitlements, short-lived, that a downstream verifies offline with the keys published at
//! `/.well-known/jwks.json`.
//!
//! Claims: `iss` ([`ISSUER`]), `aud` (the app id), `sub` (the app_user_id), `iat`, `exp` (`iat` +
//! [`TOKEN_LIFETIME_SECS`]), `version` (the snapshot's) and `entitlements`: `[{id, status, expires_at,
//! product_id, attributes}]` for every entitlement that gives access now (`expires_at` in seconds).
//!
//! Keys live in the database so every instance signs with the same one. The first token creates a
//! key when there is none. A rotation adds a new key, which signs from then on, and retires the old
//! ones after an overlap; until then the JWKS publishes them all, so tokens already handed out verify.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use gateway_core::{AppId, AppUserId, Timestamp, decide::EntitlementView};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Context, ServiceError, ServiceResult};
use crate::db::{
    DbError,
    signing_keys::{self, StoredKey},
};

/// The `iss` of every token.
pub const ISSUER: &str = "purchase-gateway";

/// How long a token is valid: short, since it is not revoked otherwise.
pub const TOKEN_LIFETIME_SECS: i64 = 300;

/// How long retired keys stay published after a rotation, unless it says otherwise: past the
/// lifetime of any token they signed, with room for verifiers' JWKS caches.
const DEFAULT_OVERLAP_SECS: i64 = 24 * 3600;

/// The live keys: the newest signs, all are published.
pub struct Keys {
    signer: Option<(String, EcdsaKeyPair)>,
    /// Each live key's JWK and when it retires.
    published: Vec<(Option<Timestamp>, serde_json::Value)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kid", &self.signer.as_ref().map(|(k, _)| k))
            .field("published", &self.published.len())
            .finish()
    }
}

/// How long read keys are reused. A rotation through this process is seen at once; one through
/// another instance, within this time.
const CACHE_TTL: Duration = Duration::from_secs(10);

/// The keys read recently, parsed, shared by the use cases of a process through their [`Context`].
pub struct KeyCache {
    slot: Mutex<Option<(Instant, Arc<Keys>)>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            slot: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCache")
    }
}

impl KeyCache {
    /// The cached value, if read within `CACHE_TTL`.
    pub fn get(&self) -> Option<Arc<Keys>> {
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref()
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, v)| v.clone())
    }

    pub fn put(&self, value: Arc<Keys>) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), value));
    }

    pub fn clear(&self) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn corrupt(what: &str) -> ServiceError {
    ServiceError::Internal(DbError::Corrupt(format!("signing key: {what}")))
}

fn generate(now: Timestamp) -> ServiceResult<StoredKey> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| corrupt("could not generate"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|_| corrupt("could not read a generated key"))?;
    let point = pair.public_key().as_ref();
    // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
    if point.len() != 65 {
        return Err(corrupt("unexpected public key length"));
    }
    let kid = format!("ek_{}", uuid::Uuid::now_v7().simple());
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    Ok(StoredKey {
        kid,
        alg: "ES256".into(),
        private_key: STANDARD.encode(pkcs8.as_ref()),
        public_jwk: jwk,
        created_at: now,
        retires_at: None,
    })
}

async fn load(cx: &Context, now: Timestamp) -> ServiceResult<Arc<Keys>> {
    let db = &cx.db;
    if let Some(k) = cx.token_keys().get() {
        return Ok(k);
    }
    let mut live = signing_keys::live(db, now).await?;
    if !live.iter().any(|k| k.retires_at.is_none()) {
        // No key signs yet (a new installation): make one. Two instances racing here both add one;
        // both are published and the newer signs.
        signing_keys::add(db, &generate(now)?, None).await?;
        live = signing_keys::live(db, now).await?;
    }
    let signer = match live.iter().find(|k| k.retires_at.is_none()) {
        Some(k) => {
            let der = STANDARD
                .decode(&k.private_key)
                .map_err(|_| corrupt("not base64"))?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map_err(|_| corrupt("not a P-256 PKCS#8 key"))?;
            Some((k.kid.clone(), pair))
        }
        None => None,
    };
    let keys = Arc::new(Keys {
        signer,
        published: live
            .into_iter()
            .map(|k| (k.retires_at, k.public_jwk))
            .collect(),
    });
    cx.token_keys().put(keys.clone());
    Ok(keys)
}

/// One entitlement as a token states it.
#[derive(Debug, Serialize)]
struct Claimed<'a> {
    id: &'a str,
    status: &'a gateway_core::EntitlementStatus,
    expires_at: Option<i64>,
    product_id: Option<&'a gateway_core::ProductId>,
    attributes: &'a std::collections::BTreeMap<String, serde_json::Value>,
}

/// Signs a token of `entitlements` (those with access are stated) for `customer` of `app`.
pub async fn sign(
    cx: &Context,
    app: &AppId,
    customer: &AppUserId,
    version: i64,
    entitlements: &[EntitlementView],
    now: Timestamp,
) -> ServiceResult<String> {
    let keys = load(cx, now).await?;
    let Some((kid, pair)) = &keys.signer else {
        return Err(corrupt("no key signs"));
    };
    let iat = now.millis().div_euclid(1000);
    let stated: Vec<Claimed> = entitlements
        .iter()
        .filter(|e| e.status.has_access())
        .map(|e| Claimed {
            id: e.id.as_str(),
            status: &e.status,
            expires_at: e.expires_at.map(|t| t.millis().div_euclid(1000)),
            product_id: e.product_id.as_ref(),
            attributes: &e.attributes,
        })
        .collect();
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let claims = json!({
        "iss": ISSUER, "aud": app.as_str(), "sub": customer.as_str(), "iat": iat,
        "exp": iat + TOKEN_LIFETIME_SECS, "version": version, "entitlements": stated,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(DbError::from)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).map_err(DbError::from)?)
    );
    let rng = SystemRandom::new();
    let signature = pair
        .sign(&rng, signing_input.as_bytes())
        .map_err(|_| corrupt("could not sign"))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    ))
}

/// The published keys (a JWK Set).
pub async fn jwks(cx: &Context, now: Timestamp) -> ServiceResult<serde_json::Value> {
    let keys = load(cx, now).await?;
    let live: Vec<&serde_json::Value> = keys
        .published
        .iter()
        .filter(|(retires, _)| retires.is_none_or(|at| at > now))
        .map(|(_, jwk)| jwk)
        .collect();
    Ok(json!({ "keys": live }))
}

/// A key rotation.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SigningKeyRotation)]
pub struct Rotation {
    /// How long the current keys stay published beside the new one (default 86400, at least the
    /// token lifetime of 300).
    #[serde(default)]
    pub overlap_seconds: Option<i64>,
}

/// Adds a new signing key; the current ones are published until the overlap ends. Returns the new
/// key's id.
pub async fn rotate(cx: &Context, rotation: Rotation, now: Timestamp) -> ServiceResult<String> {
    let overlap = rotation.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECS);
    if !(TOKEN_LIFETIME_SECS..=30 * 24 * 3600).contains(&overlap) {
        return Err(ServiceError::bad_request(
            "invalid_overlap",
            format!(
                "`overlap_seconds` is between {TOKEN_LIFETIME_SECS} (a token's lifetime) and 2592000 (30 days)."
            ),
        ));
    }
    let key = generate(now)?;
    signing_keys::add(&cx.db, &key, Some(now.plus_millis(overlap * 1000))).await?;
    cx.token_keys().clear();
    Ok(key.kid)
}
