//! Public keys published as a JWK Set, fetched and cached by URL: an identity provider's (customer
//! JWTs) or Google's (the OIDC tokens of Pub/Sub pushes). A set is trusted for [`TTL`], and fetched
//! again when a token names a key it lacks (key rotation), at most once per [`REFRESH_COOLDOWN`], so a
//! flood of tokens with made-up `kid`s cannot turn the gateway into a load generator against the
//! publisher.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use tokio::sync::RwLock;

/// How long a fetched key set is trusted before it is fetched again.
const TTL: Duration = Duration::from_secs(300);

/// The least time between two fetches of one key set.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

/// How long a JWKS request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no key came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The URL did not answer with a key set.
    Unreachable,
    /// The set has no such key (or several and the token names none).
    UnknownKey,
}

struct Cached {
    keys: JwkSet,
    fetched: Instant,
}

/// Key sets by URL, shared by every request of the process.
pub struct JwksCache {
    http: reqwest::Client,
    sets: RwLock<HashMap<String, Cached>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwksCache")
    }
}

impl JwksCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            sets: RwLock::new(HashMap::new()),
        }
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, Missing> {
        let res = self.http.get(url).timeout(FETCH_TIMEOUT).send().await;
        let set = match res {
            Ok(r) if r.status().is_success() => r.json::<JwkSet>().await.ok(),
            _ => None,
        };
        let Some(set) = set else {
            tracing::warn!(jwks_url = %url, "a JWKS could not be fetched");
            return Err(Missing::Unreachable);
        };
        self.sets.write().await.insert(
            url.to_owned(),
            Cached {
                keys: set.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(set)
    }

    /// The key `kid` of the set at `url`, fetching when the set is stale or lacks it.
    pub async fn key(&self, url: &str, kid: Option<&str>) -> Result<Jwk, Missing> {
        let pick = |set: &JwkSet| -> Option<Jwk> {
            match kid {
                Some(kid) => set.find(kid).cloned(),
                None if set.keys.len() == 1 => set.keys.first().cloned(),
                None => None,
            }
        };
        let (cached, may_refresh) = {
            let sets = self.sets.read().await;
            match sets.get(url) {
                Some(c) if c.fetched.elapsed() < TTL => {
                    (pick(&c.keys), c.fetched.elapsed() >= REFRESH_COOLDOWN)
                }
                _ => (None, true),
            }
        };
        if let Some(key) = cached {
            return Ok(key);
        }
        if !may_refresh {
            return Err(Missing::UnknownKey);
        }
        let set = self.fetch(url).await?;
        pick(&set).ok_or(Missing::UnknownKey)
    }
}
