//! Service accounts and Google's OAuth 2.0 token endpoint for them ("Using OAuth 2.0 for Server to
//! Server Applications"; store-formats G1).
//!
//! [`PlaySim::create_service_account`] mints an account with an RSA 2048 key and answers a
//! [`ServiceAccount`] whose [`ServiceAccount::key_file`] is laid out exactly as the JSON key file
//! the Cloud console downloads. `POST /token` takes the JWT-bearer grant and checks the assertion
//! as Google does: RS256 with the account's key (`kid` = `private_key_id`), `iss` = `client_email`,
//! `aud` = the key file's `token_uri`, `exp` in the future and at most an hour after `iat`, and a
//! `scope`. It answers `{"access_token", "expires_in": 3599, "token_type": "Bearer"}`, or Google's
//! refusals: 400 `invalid_grant` (signature, audience, times), 400 `invalid_scope`, 400
//! `unsupported_grant_type`, 401 `invalid_client` (an unknown or revoked key). A revoked key's
//! assertions and the tokens issued to it are refused from then on.
//!
//! This file holds the accounts, the issued tokens and the checks; `http.rs` is the endpoint.

mod http;

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aws_lc_rs::{
    encoding::AsDer,
    rsa::{KeyPair, KeySize},
    signature::KeyPair as _,
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{PlayError, PlaySim, lock, random_below, random_bytes};

/// The scope the Play Developer API requires.
pub const SCOPE: &str = "https://www.googleapis.com/auth/androidpublisher";
/// Google's token endpoint, the `token_uri` of a key file minted before the simulator is served.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// What Google's token answer says a token lives (it lives an hour; the answer rounds down).
const TOKEN_SECONDS: i64 = 3599;
/// The longest an assertion may live (`exp - iat`): Google's "short-lived token (60 minutes)".
const MAX_ASSERTION_SECONDS: i64 = 3600;
/// How far ahead of Google's clock an assertion's `iat` may be. Google tolerates some skew and
/// does not publish how much; five minutes is the usual library allowance.
const SKEW_SECONDS: i64 = 300;

/// An RSA 2048 key: its PKCS#8 PEM and its public modulus and exponent.
pub(in crate::play) struct RsaKey {
    pem: String,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaKey {
    /// A fresh key from aws-lc-rs.
    pub(in crate::play) fn generate() -> Result<Self, PlayError> {
        let key = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| PlayError::Key("RSA key generation failed".into()))?;
        let der = key
            .as_der()
            .map_err(|_| PlayError::Key("PKCS#8 encoding failed".into()))?;
        let public = key.public_key();
        Ok(Self {
            pem: pem("PRIVATE KEY", der.as_ref()),
            n: public.modulus().big_endian_without_leading_zero().to_vec(),
            e: public.exponent().big_endian_without_leading_zero().to_vec(),
        })
    }

    /// Signs `claims` RS256 with this key, `kid` in the header.
    pub(in crate::play) fn sign(&self, kid: &str, claims: &Value) -> Result<String, PlayError> {
        sign_pem(&self.pem, kid, claims)
    }

    pub(in crate::play) fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_rsa_raw_components(&self.n, &self.e)
    }

    /// A self-signed X.509 certificate of the public key, PEM, as Google's `oauth2/v1/certs` lists
    /// its keys (`CN` names the signer, valid `days` from now).
    pub(in crate::play) fn certificate_pem(
        &self,
        cn: &str,
        days: i64,
    ) -> Result<String, PlayError> {
        let failed = |e: rcgen::Error| PlayError::Key(format!("certificate: {e}"));
        let key = rcgen::KeyPair::from_pem_and_sign_algo(&self.pem, &rcgen::PKCS_RSA_SHA256)
            .map_err(failed)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        Ok(params.self_signed(&key).map_err(failed)?.pem())
    }

    /// The public key as a JSON Web Key, as Google's JWKS lists its keys.
    pub(in crate::play) fn jwk(&self, kid: &str) -> Value {
        json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&self.n), "e": URL_SAFE_NO_PAD.encode(&self.e)})
    }
}

/// `der` in PEM armour under `label`, 64 characters a line.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Signs `claims` RS256 with a PKCS#8 PEM key, `kid` in the header (`typ: JWT`).
fn sign_pem(pem: &str, kid: &str, claims: &Value) -> Result<String, PlayError> {
    let key =
        EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| PlayError::Key(e.to_string()))?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| PlayError::Key(e.to_string()))
}

/// A service account with one key, as the Cloud console makes it. Every field of its key file is
/// here; [`ServiceAccount::key_file`] writes them in Google's layout.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub project_id: String,
    /// The key's id: the `kid` of the assertions signed with it.
    pub private_key_id: String,
    /// The key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as the key file holds it.
    pub private_key_pem: String,
    pub client_email: String,
    pub client_id: String,
    /// Where assertions are exchanged for tokens, and the `aud` they must carry: the simulator's
    /// `{base}/token` when it was served before the account was made, else Google's.
    pub token_uri: String,
}

impl ServiceAccount {
    /// The JSON key file, field for field as Google's (`type: service_account`, ...).
    pub fn key_file(&self) -> Value {
        let escaped: String = self
            .client_email
            .chars()
            .map(|c| match c {
                '@' => "%40".to_owned(),
                c => c.to_string(),
            })
            .collect();
        json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": format!("https://www.googleapis.com/robot/v1/metadata/x509/{escaped}"),
            "universe_domain": "googleapis.com",
        })
    }

    /// The key file as the text an operator pastes into the gateway's settings.
    pub fn key_file_json(&self) -> String {
        serde_json::to_string_pretty(&self.key_file()).unwrap_or_default()
    }

    /// Signs any claims with the account's key (`kid` = `private_key_id`), to build good and bad
    /// assertions in tests.
    pub fn sign(&self, claims: &Value) -> Result<String, PlayError> {
        sign_pem(&self.private_key_pem, &self.private_key_id, claims)
    }

    /// The assertion a Google client library makes at `now_ms`: `iss` the account, `scope` the
    /// Play Developer API's, `aud` the `token_uri`, valid for an hour.
    pub fn assertion(&self, now_ms: i64) -> Result<String, PlayError> {
        let iat = now_ms.div_euclid(1000);
        self.sign(&json!({
            "iss": self.client_email, "scope": SCOPE, "aud": self.token_uri,
            "iat": iat, "exp": iat + MAX_ASSERTION_SECONDS,
        }))
    }
}

/// An account as the token endpoint knows it: its key's public half and whether it was revoked.
struct Account {
    key_id: String,
    key: DecodingKey,
    token_uri: String,
    revoked: bool,
}

/// An access token the endpoint issued.
#[derive(Clone)]
pub(in crate::play) struct Issued {
    pub(in crate::play) client_email: String,
    key_id: String,
    scopes: Vec<String>,
    expires_ms: i64,
}

/// The accounts and the tokens issued to them.
#[derive(Default)]
pub(in crate::play) struct Auth {
    accounts: Mutex<HashMap<String, Account>>,
    tokens: Mutex<HashMap<String, Issued>>,
    token_calls: AtomicU64,
}

/// A refusal of the token endpoint: the status, `error` and `error_description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::play) struct OAuthError {
    pub(in crate::play) status: u16,
    pub(in crate::play) error: &'static str,
    pub(in crate::play) description: String,
}

fn invalid_grant(description: &str) -> OAuthError {
    OAuthError {
        status: 400,
        error: "invalid_grant",
        description: description.to_owned(),
    }
}

fn invalid_client(description: &str) -> OAuthError {
    OAuthError {
        status: 401,
        error: "invalid_client",
        description: description.to_owned(),
    }
}

/// Why an API call's bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::play) enum Denied {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a token the endpoint issued, expired, or its key was revoked.
    Invalid,
    /// Issued without the androidpublisher scope.
    Scope,
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    aud: Option<Value>,
    scope: Option<String>,
    iat: Option<i64>,
    exp: Option<i64>,
}

impl Auth {
    pub(in crate::play) fn account_exists(&self, client_email: &str) -> Result<(), PlayError> {
        if lock(&self.accounts).contains_key(client_email) {
            Ok(())
        } else {
            Err(PlayError::UnknownAccount(client_email.to_owned()))
        }
    }

    /// How many times the token endpoint was called.
    fn token_calls(&self) -> u64 {
        self.token_calls.load(Ordering::SeqCst)
    }

    /// The JWT-bearer grant: checks the form and its assertion as Google does and issues a token.
    fn exchange(&self, form: &HashMap<String, String>, now_ms: i64) -> Result<Value, OAuthError> {
        self.token_calls.fetch_add(1, Ordering::SeqCst);
        let grant_type = form
            .get("grant_type")
            .map(String::as_str)
            .unwrap_or_default();
        if grant_type != GRANT_TYPE {
            return Err(OAuthError {
                status: 400,
                error: "unsupported_grant_type",
                description: format!("Invalid grant_type: {grant_type}"),
            });
        }
        let Some(assertion) = form.get("assertion").filter(|a| !a.is_empty()) else {
            return Err(OAuthError {
                status: 400,
                error: "invalid_request",
                description: "Missing required parameter: assertion".into(),
            });
        };
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|_| invalid_grant("Invalid JWT: The assertion is not a valid JWT."))?;
        if header.alg != Algorithm::RS256 {
            return Err(invalid_grant("Invalid JWT Signature."));
        }
        // The claims, unverified, only to find the account; the signature is checked next.
        let claims: AssertionClaims = jsonwebtoken::dangerous::insecure_decode(assertion)
            .map_err(|_| invalid_grant("Invalid JWT: The assertion is not a valid JWT."))?
            .claims;
        let email = claims.iss.clone().unwrap_or_default();
        let accounts = lock(&self.accounts);
        let account = accounts
            .get(&email)
            .filter(|a| header.kid.as_deref().is_none_or(|kid| kid == a.key_id))
            .ok_or_else(|| invalid_client("The OAuth client was not found."))?;
        if account.revoked {
            return Err(invalid_client("The OAuth client was not found."));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        // Times and audience are checked below against the simulator's clock and the key file.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(assertion, &account.key, &validation)
            .map_err(|_| invalid_grant("Invalid JWT Signature."))?;
        // Google takes its own token endpoint as the audience wherever the grant is posted (its
        // auth libraries always name it), or the key file's `token_uri`.
        let aud_ok = match &claims.aud {
            Some(Value::String(aud)) => *aud == account.token_uri || aud == GOOGLE_TOKEN_URI,
            _ => false,
        };
        if !aud_ok {
            return Err(invalid_grant(&format!(
                "Invalid JWT: Failed audience check. The expected value was {}.",
                account.token_uri
            )));
        }
        let now = now_ms.div_euclid(1000);
        let timely = match (claims.iat, claims.exp) {
            (Some(iat), Some(exp)) => {
                exp > now && iat <= now + SKEW_SECONDS && exp - iat <= MAX_ASSERTION_SECONDS
            }
            _ => false,
        };
        if !timely {
            return Err(invalid_grant(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
            ));
        }
        let scopes: Vec<String> = claims
            .scope
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if scopes.is_empty() {
            return Err(OAuthError {
                status: 400,
                error: "invalid_scope",
                description: "Invalid OAuth scope or ID token audience provided.".into(),
            });
        }
        let key_id = account.key_id.clone();
        drop(accounts);
        let token = format!("ya29.{}", URL_SAFE_NO_PAD.encode(random_bytes(96)));
        lock(&self.tokens).insert(
            token.clone(),
            Issued {
                client_email: email,
                key_id,
                scopes,
                expires_ms: now_ms + (TOKEN_SECONDS + 1) * 1000,
            },
        );
        Ok(json!({"access_token": token, "expires_in": TOKEN_SECONDS, "token_type": "Bearer"}))
    }

    /// The account an API call's `Authorization` header authenticates, or why not.
    pub(in crate::play) fn authenticate(
        &self,
        authorization: Option<&str>,
        now_ms: i64,
    ) -> Result<Issued, Denied> {
        let token = authorization
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .ok_or(Denied::Missing)?;
        let issued = lock(&self.tokens)
            .get(token)
            .cloned()
            .ok_or(Denied::Invalid)?;
        if issued.expires_ms <= now_ms {
            return Err(Denied::Invalid);
        }
        let live = lock(&self.accounts)
            .get(&issued.client_email)
            .is_some_and(|a| !a.revoked && a.key_id == issued.key_id);
        if !live {
            return Err(Denied::Invalid);
        }
        if !issued.scopes.iter().any(|s| s == SCOPE) {
            return Err(Denied::Scope);
        }
        Ok(issued)
    }
}

impl PlaySim {
    /// A new service account in `project_id` with a fresh RSA 2048 key. Its `token_uri` is the
    /// simulator's `{base}/token` if it is served already, else Google's: serve first.
    pub fn create_service_account(&self, project_id: &str) -> Result<ServiceAccount, PlayError> {
        let key = RsaKey::generate()?;
        let number = 100_000_000_000_000_000_000u128 + u128::from(random_below(u64::MAX));
        let name = format!("play-api-{}", random_below(1_000_000));
        let account = ServiceAccount {
            project_id: project_id.to_owned(),
            private_key_id: hex_id(20),
            private_key_pem: key.pem.clone(),
            client_email: format!("{name}@{project_id}.iam.gserviceaccount.com"),
            client_id: number.to_string(),
            token_uri: self
                .base_url()
                .map_or_else(|| GOOGLE_TOKEN_URI.to_owned(), |b| format!("{b}/token")),
        };
        lock(&self.auth.accounts).insert(
            account.client_email.clone(),
            Account {
                key_id: account.private_key_id.clone(),
                key: key.decoding_key(),
                token_uri: account.token_uri.clone(),
                revoked: false,
            },
        );
        Ok(account)
    }

    /// Revokes (deletes) the account's key: its assertions are refused from now on
    /// (`invalid_client`), and the tokens already issued to it answer 401.
    pub fn revoke_key(&self, account: &ServiceAccount) -> Result<(), PlayError> {
        self.revoke_key_of(&account.client_email)
    }

    /// [`PlaySim::revoke_key`] by the account's `client_email`.
    pub fn revoke_key_of(&self, client_email: &str) -> Result<(), PlayError> {
        let mut accounts = lock(&self.auth.accounts);
        let entry = accounts
            .get_mut(client_email)
            .ok_or_else(|| PlayError::UnknownAccount(client_email.to_owned()))?;
        entry.revoked = true;
        Ok(())
    }

    /// How many times `POST /token` was called (to check that clients cache their tokens).
    pub fn token_calls(&self) -> u64 {
        self.auth.token_calls()
    }
}

/// `bytes` random bytes in lower-case hex (key ids are 40 hex digits).
pub(in crate::play) fn hex_id(bytes: usize) -> String {
    random_bytes(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
