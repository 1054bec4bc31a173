//! API keys: 256 random bits, shown once, stored as a SHA-256.

use std::time::{Duration, Instant, SystemTime};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use gateway_core::{AppId, Timestamp};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Kind, ServiceError, ServiceResult};
use crate::{
    db::{self, Db, keys},
    model::{ApiKey, KeyKind, Scope},
};

/// The hash a key is stored and looked up by.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new key and the text to hand out once.
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
}

fn generate(kind: KeyKind) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let prefix = match kind {
        KeyKind::Secret => "sk_",
        KeyKind::Publishable => "pk_",
    };
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Creates a key. App keys may not carry `admin`; publishable keys carry no scopes.
pub async fn create(
    db: &Db,
    app: Option<&AppId>,
    kind: KeyKind,
    scopes: Vec<Scope>,
    now: Timestamp,
) -> ServiceResult<NewKey> {
    let mut scopes = scopes;
    scopes.sort();
    scopes.dedup();
    match (app, kind) {
        (None, _) if scopes != [Scope::Admin] => {
            return Err(ServiceError::bad_request(
                "invalid_scope",
                "A key of no app must be an admin key.",
            ));
        }
        (Some(_), KeyKind::Secret) if scopes.contains(&Scope::Admin) => {
            return Err(ServiceError::bad_request(
                "invalid_scope",
                "An app's key cannot have the admin scope; admin keys are made with `purchase-gateway keys create --admin`.",
            ));
        }
        (Some(_), KeyKind::Secret) if scopes.is_empty() => {
            return Err(ServiceError::bad_request(
                "invalid_scope",
                "A secret key needs at least one scope: catalog, customers, purchases, refunds or read.",
            ));
        }
        (Some(_), KeyKind::Publishable) if !scopes.is_empty() => {
            return Err(ServiceError::bad_request(
                "invalid_scope",
                "A publishable key has fixed rights and takes no scopes.",
            ));
        }
        _ => {}
    }
    let secret = generate(kind);
    let key = ApiKey {
        id: db::new_id("key"),
        app_id: app.cloned(),
        kind,
        scopes,
    };
    let prefix: String = secret.chars().take(11).collect();
    keys::insert(db, &key, &hash_key(&secret), &prefix, now).await?;
    Ok(NewKey { key, secret })
}

/// The id of the admin key given by configuration (`GATEWAY_BOOTSTRAP_ADMIN_KEY`): it is not stored,
/// and lives as long as the configuration names it.
const BOOTSTRAP_ID: &str = "bootstrap";

/// What a read that stays open (a long poll, an event stream) was let in with. It may go on only while
/// these hold, and checks them again as it waits (see [`Credentials::check`]).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The id of the API key of the request.
    pub key_id: String,
    /// When the customer JWT that came with a publishable key expires, by the system clock (as the
    /// token was checked).
    pub token_expires_at: Option<SystemTime>,
}

impl Credentials {
    /// Ok while the key is live and the customer token unexpired, with the instant until which that
    /// is known: when to check again. The key is known to this process (see [`keys::Liveness`]): most
    /// checks read nothing, and a key is read at most once per [`keys::LIVE_RECHECK`] however many
    /// reads it holds open.
    pub async fn check(&self, db: &Db) -> ServiceResult<Instant> {
        let now = Instant::now();
        let token_left = self
            .token_expires_at
            .map(|exp| exp.duration_since(SystemTime::now()).unwrap_or_default());
        if token_left == Some(Duration::ZERO) {
            return Err(ServiceError::new(
                Kind::Unauthorized,
                "customer_token_expired",
                "The customer token has expired: reconnect with a fresh one.",
            ));
        }
        let mut until = match token_left {
            Some(left) => now + left,
            // The configured key is not stored and cannot be revoked; checking once a minute
            // costs nothing.
            None => now + Duration::from_secs(60),
        };
        if self.key_id != BOOTSTRAP_ID {
            let (live, read_at) = keys::is_live(db, &self.key_id).await?;
            if !live {
                return Err(ServiceError::new(
                    Kind::Unauthorized,
                    "key_revoked",
                    "The API key of this request was revoked.",
                ));
            }
            until = until.min(read_at + keys::LIVE_RECHECK);
        }
        Ok(until)
    }
}

/// Finds the caller a presented key belongs to. `bootstrap_hash` is the hash of
/// `GATEWAY_BOOTSTRAP_ADMIN_KEY`, if one is set.
pub async fn authenticate(
    db: &Db,
    presented: &str,
    bootstrap_hash: Option<&str>,
) -> ServiceResult<Option<ApiKey>> {
    let hash = hash_key(presented);
    if bootstrap_hash == Some(hash.as_str()) {
        return Ok(Some(ApiKey {
            id: BOOTSTRAP_ID.into(),
            app_id: None,
            kind: KeyKind::Secret,
            scopes: vec![Scope::Admin],
        }));
    }
    Ok(keys::find_by_hash(db, &hash).await?)
}
