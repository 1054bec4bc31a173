//! The Google Play adapter ([`PlayStore`]): the verbs of every store, done with Play's means.
//!
//! - [`auth`]: the service account's OAuth (the JWT bearer grant), its tokens cached;
//! - [`api`]: the Play Developer API client.
//!
//! Play's API states a purchase token's *current* state, so a submission, a notification and a poll
//! all read the token and turn the state into facts (`gateway_core::play::facts`). A notification is
//! only a nudge to read: its authenticity is checked (the push's OIDC token, or the app's push token),
//! then the token it names is read. A purchase is acknowledged (a consumable consumed) only once a
//! decision granted it: the acknowledgement is owed on the grant, written in the grant's transaction
//! and performed from the outbox.

pub mod api;
pub mod auth;

use futures_util::StreamExt;
use gateway_core::{
    Product, PurchaseFacts, Timestamp,
    ids::Store,
    play::{
        facts::{self as play_facts, Unreadable},
        models::{
            DeveloperNotification, ProductPurchaseV2, PushRequest, SubscriptionPurchaseV2,
            subscription_notification_name,
        },
    },
    text,
};
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use self::api::{PlayApi, Subscription};
use super::{
    Delivery, Names, Notice, Owed, Page, Problem, Proof, RestoreProof, Standing, StoreError,
    StoreResult, Transaction,
};
use crate::{
    jwks::{JwksCache, Missing},
    model::{App, PlayStoreConfig, Secret},
};

pub const NAMES: Names = Names {
    title: "Google Play",
    client: "play_store.client",
    restore: "play_store.restore",
    notification: "play_store.notification",
    order_token: "obfuscatedExternalAccountId",
    cursor: "play_store.voided_purchases",
    refund: "play_store.refund",
};

/// The outbox type of an owed acknowledgement (or consumption, for a consumable).
pub const ACKNOWLEDGE: &str = "store.play_store.acknowledge";

/// The outbox type of an owed answer to a refund review (`orders.reviewrefund`).
pub const REFUND_REVIEW: &str = "store.play_store.refund_review";

/// Where Google publishes the keys of its OIDC tokens.
pub const GOOGLE_CERTS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// The issuers of Google's OIDC tokens.
const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// Slack on an OIDC token's `exp`, in seconds, for clock skew.
const LEEWAY_SECS: i64 = 60;

/// How far back Play lists voided purchases (30 days), said as a sentence says it, and what an app
/// lacks to read them.
pub const HISTORY: (i64, &str, &str) = (
    30 * 86_400_000,
    "the 30 days Play lists voided purchases for",
    "This app has no Play Developer API key (`play_store.service_account_json`).",
);

/// Purchases a voided page reads from Play at once.
const VOIDED_READS: usize = 8;

/// How far back a partial refund's notification looks for its voided purchase, and how many pages.
const RECENT_VOID_MS: i64 = 3_600_000;
const RECENT_VOID_PAGES: usize = 3;

/// The most tokens one restore may carry.
pub const MAX_RESTORE: usize = 200;

/// The Google Play adapter: the API client and Google's OIDC keys.
#[derive(Debug)]
pub struct PlayStore {
    pub api: PlayApi,
    certs: JwksCache,
}

/// A Play purchase token as Play stated it at `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayPurchase {
    pub token: String,
    pub at: Timestamp,
    pub state: PlayState,
}

/// What Play answered for a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlayState {
    OneTime {
        purchase: ProductPurchaseV2,
    },
    Subscription {
        purchase: SubscriptionPurchaseV2,
    },
    /// A subscription Play no longer answers for (HTTP 410), of the store product `sku`.
    Gone {
        sku: String,
    },
}

/// The payload of an owed answer to a refund review.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Review {
    order_id: String,
    pending_refund_token: String,
    token: String,
}

/// The payload of an owed acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Acknowledgement {
    token: String,
    /// Play's product id (the subscription id, for a subscription).
    product_id: String,
    subscription: bool,
    /// The customer's obfuscated account, for a purchase made outside the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_account: Option<String>,
}

fn unreadable(e: Unreadable) -> StoreError {
    StoreError::new(Problem::Refused, "malformed_store_data", format!("{e}."))
}

impl PlayPurchase {
    /// Play's product id.
    pub fn sku(&self) -> &str {
        match &self.state {
            PlayState::OneTime { purchase } => purchase
                .product_line_item
                .first()
                .map_or("", |i| i.product_id.as_str()),
            PlayState::Subscription { purchase } => purchase
                .line_items
                .first()
                .map_or("", |i| i.product_id.as_str()),
            PlayState::Gone { sku } => sku,
        }
    }

    /// The obfuscated account id the app passed to Play Billing (an order's token).
    pub fn order_token(&self) -> Option<&str> {
        match &self.state {
            PlayState::OneTime { purchase } => purchase.obfuscated_external_account_id.as_deref(),
            PlayState::Subscription { purchase } => purchase
                .external_account_identifiers
                .as_ref()
                .and_then(|e| e.obfuscated_external_account_id.as_deref()),
            PlayState::Gone { .. } => None,
        }
    }

    /// The token this subscription carries on from: the one an upgrade or downgrade replaced
    /// (`linkedPurchaseToken`), or the expired one a resubscription outside the app renews.
    pub fn linked_token(&self) -> Option<&str> {
        let PlayState::Subscription { purchase } = &self.state else {
            return None;
        };
        purchase.linked_purchase_token.as_deref().or_else(|| {
            purchase
                .out_of_app_purchase_context
                .as_ref()?
                .expired_purchase_token
                .as_deref()
        })
    }

    /// An expiry of the linked token, from when this one was stated.
    pub fn replaced_facts(&self, product: &Product) -> Option<PurchaseFacts> {
        let old = self.linked_token()?;
        Some(PurchaseFacts {
            id: String::new(),
            store: Store::PlayStore,
            product_id: product.id.clone(),
            store_transaction_id: old.to_owned(),
            environment: None,
            terms: Some(product.terms()),
            settled: None,
            events: vec![gateway_core::StoreEvent {
                dedupe_key: format!("play:{old}:replaced_by:{}", self.token),
                occurred_at: self.at,
                kind: gateway_core::EventKind::Expired,
            }],
        })
    }

    /// Play's order id, or the token when there is none.
    pub fn id(&self) -> &str {
        let order = match &self.state {
            PlayState::OneTime { purchase } => purchase.order_id.as_deref(),
            PlayState::Subscription { purchase } => purchase
                .line_items
                .first()
                .and_then(|i| i.latest_successful_order_id.as_deref()),
            PlayState::Gone { .. } => None,
        };
        order.unwrap_or(&self.token)
    }

    pub fn facts(&self, purchase_id: String, product: &Product) -> StoreResult<PurchaseFacts> {
        match &self.state {
            PlayState::OneTime { purchase } => {
                play_facts::product_facts(purchase, &self.token, purchase_id, product, self.at)
            }
            PlayState::Subscription { purchase } => {
                play_facts::subscription_facts(purchase, &self.token, purchase_id, product, self.at)
            }
            PlayState::Gone { .. } => Ok(play_facts::gone_facts(
                &self.token,
                purchase_id,
                product,
                self.at,
            )),
        }
        .map_err(unreadable)
    }

    /// The acknowledgement owed once a decision grants the purchase, while Play waits for one.
    fn acknowledgement(&self) -> Option<Owed> {
        let (state, subscription, external_account) = match &self.state {
            PlayState::OneTime { purchase } => {
                (purchase.acknowledgement_state.as_deref(), false, None)
            }
            PlayState::Subscription { purchase } => (
                purchase.acknowledgement_state.as_deref(),
                true,
                // A purchase made outside the app is named for its customer when acknowledged: the
                // account the expired subscription it renews was bought for.
                purchase.out_of_app_purchase_context.as_ref().and_then(|c| {
                    c.expired_external_account_identifiers
                        .as_ref()?
                        .obfuscated_external_account_id
                        .clone()
                }),
            ),
            PlayState::Gone { .. } => return None,
        };
        if state != Some("ACKNOWLEDGEMENT_STATE_PENDING") {
            return None;
        }
        let ack = Acknowledgement {
            token: self.token.clone(),
            product_id: self.sku().to_owned(),
            subscription,
            external_account,
        };
        let digest = hex::encode(sha2::Sha256::digest(self.token.as_bytes()));
        Some(Owed {
            id: format!("act_play_ack_{}", &digest[..40]),
            event_type: ACKNOWLEDGE,
            payload: serde_json::to_value(&ack).unwrap_or_default(),
            on_grant: Some(self.token.clone()),
        })
    }
}

fn config(app: &App) -> StoreResult<&PlayStoreConfig> {
    app.settings.play_store.as_ref().ok_or_else(|| {
        StoreError::not_configured(
            "This app has no `play_store` settings; it cannot take Google Play purchases.",
        )
    })
}

fn check_token(field: &str, token: &str) -> StoreResult<()> {
    if text::PURCHASE_TOKEN.check(token).is_ok() {
        Ok(())
    } else {
        Err(StoreError::new(
            Problem::Malformed,
            "invalid_purchase_token",
            format!(
                "`{field}` is a Google Play purchase token: letters, digits, '.', '-' and '_'."
            ),
        ))
    }
}

/// Checks an app's `play_store` settings beyond what their types hold.
pub fn check_settings(p: &PlayStoreConfig) -> StoreResult<()> {
    let field = |f: &str| format!("play_store.{f}");
    let check = |rule, name: &str, value: Option<&str>| {
        super::text(rule, "invalid_play_store", &field(name), value)
    };
    check(&text::STORE_ID, "package_name", Some(&p.package_name))?;
    check(
        &text::STORE_ID,
        "pubsub_audience",
        p.pubsub_audience.as_deref(),
    )?;
    check(
        &text::STORE_ID,
        "pubsub_service_account",
        p.pubsub_service_account.as_deref(),
    )?;
    check(
        &text::SECRET_TEXT,
        "push_token",
        p.push_token.as_ref().map(Secret::expose),
    )?;
    super::check_url(&field("api_base_url"), p.api_base_url.as_deref())?;
    super::check_url(&field("google_certs_url"), p.google_certs_url.as_deref())?;
    if let Some(sa) = &p.service_account_json {
        check(&text::JSON_TEXT, "service_account_json", Some(sa.expose()))?;
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(sa.expose());
        if !parsed.is_ok_and(|v| v.get("private_key").is_some() && v.get("client_email").is_some())
        {
            // Text of the right shape that is not a key file: the document cannot state this.
            return Err(StoreError::new(
                Problem::Refused,
                "invalid_play_store",
                "`play_store.service_account_json` must be a Google service account key file (JSON with client_email and private_key).",
            ));
        }
    }
    if p.voided_poll_minutes
        .is_some_and(|m| !(1..=1440).contains(&m))
    {
        return Err(StoreError::new(
            Problem::Malformed,
            "invalid_play_store",
            "`play_store.voided_poll_minutes` is 1 to 1440 (a day).",
        ));
    }
    if p.pubsub_audience.is_some() != p.pubsub_service_account.is_some() {
        // Two fields each of the right shape that must come together: more than a schema states.
        return Err(StoreError::new(
            Problem::Refused,
            "invalid_play_store",
            "`play_store.pubsub_audience` and `pubsub_service_account` go together: pushes are checked against both.",
        ));
    }
    Ok(())
}

/// How often the app's voided purchases are walked, in milliseconds.
pub fn poll_interval_ms(app: &App) -> Option<i64> {
    let minutes = app.settings.play_store.as_ref()?.voided_poll_minutes?;
    Some(i64::from(minutes) * 60_000)
}

/// True when the app can call the Play Developer API.
pub fn can_poll(app: &App) -> bool {
    app.settings
        .play_store
        .as_ref()
        .is_some_and(|c| c.service_account_json.is_some())
}

impl PlayStore {
    pub fn new(http: reqwest::Client, clock: std::sync::Arc<dyn gateway_core::Clock>) -> Self {
        PlayStore {
            api: PlayApi::new(http.clone(), clock),
            certs: JwksCache::new(http),
        }
    }

    pub fn check(&self, proof: &Proof) -> StoreResult<()> {
        if proof.signed_transaction.is_some()
            || proof.transaction_id.is_some()
            || proof.receipt_data.is_some()
            || proof.checkout_session_id.is_some()
        {
            return Err(StoreError::new(
                Problem::Malformed,
                "field_not_for_store",
                "Google Play purchases are proved by their `purchase_token` alone.",
            ));
        }
        match &proof.purchase_token {
            Some(token) => check_token("purchase_token", token),
            None => Err(StoreError::new(
                Problem::Malformed,
                "purchase_token_required",
                "Send the `purchase_token` Play Billing gave the app.",
            )),
        }
    }

    /// Reads a token's current state: as a subscription or a one-time product when the caller knows
    /// which, else a subscription first and then a one-time product.
    async fn read(
        &self,
        app: &App,
        token: &str,
        (subscription, sku): (Option<bool>, Option<&str>),
        at: Timestamp,
    ) -> StoreResult<PlayPurchase> {
        let purchase = |state| PlayPurchase {
            token: token.to_owned(),
            at,
            state,
        };
        if subscription != Some(false) {
            match self.api.subscription(app, token).await {
                Ok(Subscription::Found(s)) => {
                    return Ok(purchase(PlayState::Subscription { purchase: *s }));
                }
                Ok(Subscription::Gone) => {
                    return Ok(purchase(PlayState::Gone { sku: String::new() }));
                }
                Err(e) if e.code == "purchase_token_not_found" && subscription.is_none() => {}
                Err(e) => return Err(e),
            }
        }
        let p = match self.api.product(app, token).await {
            Ok(p) => p,
            // v2 refuses the token; v1 may still answer for it, given the product id.
            Err(e) if e.problem == Problem::NotFound => match sku {
                Some(sku) => {
                    check_token("productId", sku)?;
                    self.api.product_v1(app, sku, token).await?.into_v2(sku)
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        Ok(purchase(PlayState::OneTime { purchase: p }))
    }

    pub async fn verify_submission(
        &self,
        app: &App,
        proof: Proof,
        now: Timestamp,
    ) -> StoreResult<super::Proven> {
        config(app)?;
        let token = proof.purchase_token.unwrap_or_default();
        let hint = (proof.subscription, proof.store_sku.as_deref());
        let p = self.read(app, &token, hint, now).await?;
        // What Play answered is the proof kept (and deduplicated): the token alone would make a
        // token sent again after Play confirmed its payment look like the pending one before.
        let raw = serde_json::json!({"purchaseToken": token, "purchase": p.state}).to_string();
        Ok(super::Proven {
            owed: p.acknowledgement().into_iter().collect(),
            transactions: vec![Transaction::Play(p)],
            raw,
            what: "purchase",
            listing: false,
        })
    }

    /// Refunds and revokes a purchase at Play: a subscription through `subscriptionsv2.revoke`, a
    /// one-time purchase through `orders.refund` of its order with `revoke`. Answers the purchase as
    /// Play states it afterwards.
    pub async fn refund(
        &self,
        app: &App,
        order: super::RefundOrder<'_>,
        now: Timestamp,
    ) -> StoreResult<Transaction> {
        config(app)?;
        check_token("store_transaction_id", order.lineage)?;
        let hint = (Some(order.subscription), order.sku);
        if order.subscription {
            self.api
                .revoke_subscription(app, order.lineage, order.prorated)
                .await?;
        } else {
            if order.prorated {
                return Err(StoreError::new(
                    Problem::Refused,
                    "prorated_refund_not_possible",
                    "Only a subscription is refunded pro rata; refund a one-time purchase whole.",
                ));
            }
            let p = self.read(app, order.lineage, hint, now).await?;
            let order_id = p.id().to_owned();
            self.api.refund_order(app, &order_id).await?;
        }
        Ok(Transaction::Play(
            self.read(app, order.lineage, hint, now).await?,
        ))
    }

    pub async fn verify_restore(
        &self,
        app: &App,
        proof: &RestoreProof,
        now: Timestamp,
    ) -> StoreResult<Vec<Transaction>> {
        let limit = (MAX_RESTORE, "too_many_purchases", "purchase tokens");
        super::restore_items(&proof.purchase_tokens, limit, |token| {
            check_token("purchase_tokens", token)
        })?;
        if proof.purchase_tokens.is_empty() {
            return Err(StoreError::new(
                Problem::Malformed,
                "nothing_to_restore",
                "Send the `purchase_tokens` of the app's current Play purchases to restore.",
            ));
        }
        config(app)?;
        let mut out = Vec::new();
        for token in &proof.purchase_tokens {
            let p = self.read(app, token, (None, None), now).await?;
            out.push(Transaction::Play(p));
        }
        Ok(out)
    }

    /// Checks that a push comes from the app's Pub/Sub subscription: its OIDC token (Google-signed,
    /// the app's audience and service account), or the app's push token in the URL.
    async fn authenticate(
        &self,
        c: &PlayStoreConfig,
        delivery: &Delivery<'_>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let refused = |code: &'static str, message: String| {
            StoreError::new(Problem::Unauthenticated, code, message)
        };
        if let (Some(given), Some(expected)) = (delivery.query_token, &c.push_token) {
            let same: bool = aws_lc_rs::constant_time::verify_slices_are_equal(
                given.as_bytes(),
                expected.expose().as_bytes(),
            )
            .is_ok();
            return if same {
                Ok(())
            } else {
                Err(refused(
                    "invalid_push_token",
                    "The push's `token` is not the app's `play_store.push_token`.".into(),
                ))
            };
        }
        let (Some(bearer), Some(audience), Some(account)) = (
            delivery.bearer,
            &c.pubsub_audience,
            &c.pubsub_service_account,
        ) else {
            return Err(refused(
                "push_unauthenticated",
                "A Play notification must carry the push subscription's OIDC token (`Authorization: Bearer`) or the app's push token (`?token=`), as the app's `play_store` settings name.".into(),
            ));
        };
        let bad = |why: String| {
            refused(
                "invalid_push_authentication",
                format!("The push's OIDC token is not valid: {why}."),
            )
        };
        let header = decode_header(bearer).map_err(|_| bad("it is not a JWT".into()))?;
        if header.alg != jsonwebtoken::Algorithm::RS256 {
            return Err(bad("it is not signed RS256".into()));
        }
        let url = c.google_certs_url.as_deref().unwrap_or(GOOGLE_CERTS_URL);
        let jwk =
            self.certs
                .key(url, header.kid.as_deref())
                .await
                .map_err(|missing| match missing {
                    Missing::Unreachable => StoreError::unavailable(
                        "Google's OIDC keys cannot be fetched now; the push will be retried.",
                    ),
                    Missing::UnknownKey => bad("it names a key Google does not publish".into()),
                })?;
        let key =
            DecodingKey::from_jwk(&jwk).map_err(|_| bad("Google's key cannot verify it".into()))?;
        let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&GOOGLE_ISSUERS);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // `exp` is checked against the gateway's clock, not the machine's.
        validation.validate_exp = false;
        #[derive(Deserialize)]
        struct Claims {
            exp: i64,
            #[serde(default)]
            email: Option<String>,
            #[serde(default)]
            email_verified: Option<bool>,
        }
        let claims = decode::<Claims>(bearer, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                bad(match e.kind() {
                    ErrorKind::ExpiredSignature => "it has expired".into(),
                    ErrorKind::InvalidIssuer => "Google did not issue it".into(),
                    ErrorKind::InvalidAudience => {
                        "its audience is not the app's `pubsub_audience`".into()
                    }
                    ErrorKind::InvalidSignature => "its signature does not verify".into(),
                    _ => e.to_string(),
                })
            })?
            .claims;
        if claims.exp.saturating_add(LEEWAY_SECS) <= now.millis().div_euclid(1000) {
            return Err(bad("it has expired".into()));
        }
        if claims.email.as_deref() != Some(account.as_str()) || claims.email_verified != Some(true)
        {
            return Err(bad(
                "it is not the app's `pubsub_service_account`, verified".into(),
            ));
        }
        Ok(())
    }

    /// A Pub/Sub push of a Real-time developer notification, authenticated, and the purchase it
    /// names read from Play (the message carries no state).
    pub async fn verify_notification(
        &self,
        app: &App,
        delivery: Delivery<'_>,
        now: Timestamp,
    ) -> StoreResult<Notice> {
        let c = config(app)?;
        let malformed = |why: &str| {
            StoreError::new(
                Problem::Malformed,
                "malformed_notification",
                format!("The body is not a Pub/Sub push of a Play notification: {why}."),
            )
        };
        let push: PushRequest = serde_json::from_slice(delivery.body)
            .map_err(|_| malformed("it is not `{\"message\": {...}}`"))?;
        self.authenticate(c, &delivery, now).await?;
        let id = push
            .message
            .id()
            .ok_or_else(|| malformed("its message has no `messageId`"))?
            .to_owned();
        super::text(
            &text::STORE_ID,
            "malformed_notification",
            "message.messageId",
            Some(&id),
        )?;
        let data = push
            .message
            .data
            .as_deref()
            .ok_or_else(|| malformed("its message has no `data`"))?;
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| malformed("its `data` is not base64"))?;
        let n: DeveloperNotification = serde_json::from_slice(&decoded)
            .map_err(|_| malformed("its `data` is not a developer notification"))?;
        if n.package_name != c.package_name {
            return Err(StoreError::new(
                Problem::Refused,
                "wrong_app",
                format!(
                    "The notification is for the package {:?}, not this app's.",
                    n.package_name
                ),
            ));
        }
        let at = n.event_time_millis.map_or(now, Timestamp::from_millis);
        let raw = String::from_utf8_lossy(delivery.body).into_owned();
        let notice = |cause: String, transaction: Option<Transaction>, owed: Vec<Owed>| Notice {
            store: Store::PlayStore,
            id: id.clone(),
            raw: raw.clone(),
            cause,
            transaction,
            events: Vec::new(),
            owed,
            transfer: None,
            remark: None,
            account: None,
        };
        if let Some(s) = &n.subscription_notification {
            check_token("purchaseToken", &s.purchase_token)?;
            let p = self
                .read(app, &s.purchase_token, (Some(true), None), at)
                .await?;
            let cause = format!(
                "Google Play notification {} for order {}.",
                subscription_notification_name(s.notification_type),
                p.id()
            );
            let owed = p.acknowledgement().into_iter().collect();
            return Ok(notice(cause, Some(Transaction::Play(p)), owed));
        }
        if let Some(o) = &n.one_time_product_notification {
            check_token("purchaseToken", &o.purchase_token)?;
            let hint = (Some(false), o.sku.as_deref());
            let p = self.read(app, &o.purchase_token, hint, at).await?;
            let what = match o.notification_type {
                1 => "ONE_TIME_PRODUCT_PURCHASED",
                2 => "ONE_TIME_PRODUCT_CANCELED",
                _ => "ONE_TIME_PRODUCT_UNKNOWN",
            };
            let cause = format!("Google Play notification {what} for order {}.", p.id());
            let owed = p.acknowledgement().into_iter().collect();
            return Ok(notice(cause, Some(Transaction::Play(p)), owed));
        }
        if let Some(v) = &n.voided_purchase_notification {
            check_token("purchaseToken", &v.purchase_token)?;
            // The purchase as it stands, and the void as a refund of its order (Play's read may
            // still say active right after a refund: the void is authoritative).
            let subscription = v.product_type.map(|t| t == 1);
            let p = self
                .read(app, &v.purchase_token, (subscription, None), at)
                .await?;
            let voided = gateway_core::play::models::VoidedPurchase {
                purchase_token: v.purchase_token.clone(),
                order_id: v.order_id.clone(),
                voided_time_millis: Some(at.millis().to_string()),
                ..Default::default()
            };
            let mut out = notice(
                format!(
                    "Google Play notification VOIDED_PURCHASE for order {}.",
                    v.order_id.as_deref().unwrap_or("?")
                ),
                Some(Transaction::Play(p)),
                Vec::new(),
            );
            if v.refund_type == Some(2) {
                // A partial refund: the notification does not say how many units, Play's voided
                // purchases do. If Play has not listed it yet, the voided walk finds it later.
                let order = v.order_id.as_deref().unwrap_or_default();
                out.events = self
                    .recent_voids(app, (&v.purchase_token, order), at.min(now), now)
                    .await?
                    .iter()
                    .map(|found| play_facts::voided_event(found, at))
                    .collect();
            } else {
                out.events.push(play_facts::voided_event(&voided, at));
            }
            return Ok(out);
        }
        if let Some(r) = &n.pending_refund_review_notification {
            // The review names an order, not a token: the order says which purchase it is. A review
            // is not a refund; access stays until Play voids the order.
            let order = self.api.order(app, &r.order_id).await?;
            let token = order.purchase_token.unwrap_or_default();
            check_token("purchaseToken", &token)?;
            let p = self.read(app, &token, (None, None), at).await?;
            let owed = c.answer_refund_reviews.then(|| {
                let review = Review {
                    order_id: r.order_id.clone(),
                    pending_refund_token: r.pending_refund_token.clone(),
                    token: token.clone(),
                };
                Owed {
                    id: format!(
                        "act_play_review_{}",
                        &hex::encode(sha2::Sha256::digest(r.pending_refund_token.as_bytes()))[..40]
                    ),
                    event_type: REFUND_REVIEW,
                    payload: serde_json::to_value(&review).unwrap_or_default(),
                    on_grant: None,
                }
            });
            let cause = format!(
                "Google Play notification PENDING_REFUND_REVIEW for order {}.",
                r.order_id
            );
            return Ok(notice(
                cause,
                Some(Transaction::Play(p)),
                owed.into_iter().collect(),
            ));
        }
        let what = if n.test_notification.is_some() {
            "TEST_NOTIFICATION"
        } else {
            "UNKNOWN"
        };
        Ok(notice(
            format!("Google Play notification {what}."),
            None,
            Vec::new(),
        ))
    }

    /// The voided purchases Play recorded for `token`'s order `order` from an hour before `at` (a
    /// void is recorded when it is notified) to `now`, a few pages at most.
    async fn recent_voids(
        &self,
        app: &App,
        (token, order): (&str, &str),
        at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<gateway_core::play::models::VoidedPurchase>> {
        let window = (at.plus_millis(-RECENT_VOID_MS).millis(), now.millis());
        let mut found = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..RECENT_VOID_PAGES {
            let page = self.api.voided(app, window, next.as_deref()).await?;
            found.extend(page.voided_purchases.into_iter().filter(|v| {
                v.purchase_token == token && v.order_id.as_deref().is_none_or(|o| o == order)
            }));
            next = page
                .token_pagination
                .and_then(|t| t.next_page_token)
                .filter(|t| !t.is_empty());
            if next.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// A page of voided purchases: each a refund of its order (or of some of its units), read with
    /// the purchase it voids.
    pub async fn poll(
        &self,
        app: &App,
        (start, end): (Timestamp, Timestamp),
        token: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<Page> {
        let page = self
            .api
            .voided(app, (start.millis(), end.millis()), token)
            .await?;
        // The purchases a page voids are read a few at a time: a page holds up to a thousand, and
        // one read after another would take minutes; more at once would spend Play's quota in bursts.
        let mut reads = Vec::with_capacity(page.voided_purchases.len());
        for v in &page.voided_purchases {
            reads.push(async move {
                check_token("purchaseToken", &v.purchase_token)?;
                let p = self.read(app, &v.purchase_token, (None, None), now).await?;
                let void = play_facts::voided_event(v, now);
                let mut n = Notice {
                    store: Store::PlayStore,
                    // One per void: an order's, or each partial refund of it.
                    id: void
                        .dedupe_key
                        .strip_prefix("play:")
                        .unwrap_or(&void.dedupe_key)
                        .to_owned(),
                    raw: serde_json::to_string(v).unwrap_or_default(),
                    cause: format!(
                        "Google Play voided order {} (found in its voided purchases).",
                        v.order_id.as_deref().unwrap_or("?")
                    ),
                    transaction: Some(Transaction::Play(p)),
                    events: Vec::new(),
                    owed: Vec::new(),
                    transfer: None,
                    remark: None,
                    account: None,
                };
                n.events.push(void);
                Ok(n)
            });
        }
        let notices = futures_util::stream::iter(reads)
            .buffered(VOIDED_READS)
            .collect()
            .await;
        let next = page
            .token_pagination
            .and_then(|t| t.next_page_token)
            .filter(|t| !t.is_empty());
        Ok(Page {
            notices,
            next: Ok(next),
        })
    }

    pub fn action_subject(
        &self,
        event_type: &str,
        payload: &serde_json::Value,
    ) -> StoreResult<(String, u32)> {
        if event_type == REFUND_REVIEW {
            return Ok((review(payload)?.token, 1));
        }
        let ack = acknowledgement(event_type, payload)?;
        Ok((ack.token, 1))
    }

    /// Acknowledges a granted purchase (consumes a consumable).
    pub async fn perform(
        &self,
        app: &App,
        event_type: &str,
        payload: &serde_json::Value,
        standing: Standing,
    ) -> StoreResult<u16> {
        if event_type == REFUND_REVIEW {
            let r = review(payload)?;
            // Not delivered: the refund is fair. Delivered: the facts, and Google decides.
            let answer = api::ReviewRefund {
                pending_refund_token: r.pending_refund_token,
                sample_content_provided: false,
                refund_preference: if standing.delivered {
                    "NEUTRAL"
                } else {
                    "APPROVE"
                },
                consumption_percentage_milliunits: standing.consumed,
            };
            self.api.review_refund(app, &r.order_id, &answer).await?;
            metrics::counter!("gateway_play_refund_reviews_total").increment(1);
            tracing::info!(app = %app.id, order = %r.order_id, preference = answer.refund_preference, "answered a Play refund review");
            return Ok(200);
        }
        let ack = acknowledgement(event_type, payload)?;
        let done = if ack.subscription {
            self.api
                .acknowledge_subscription(
                    app,
                    &ack.product_id,
                    &ack.token,
                    ack.external_account.as_deref(),
                )
                .await
        } else if standing.consumable {
            self.api.consume(app, &ack.product_id, &ack.token).await
        } else {
            self.api
                .acknowledge_product(app, &ack.product_id, &ack.token)
                .await
        };
        // Acknowledged already (an earlier attempt whose answer was lost): Play refuses a second one,
        // and what it says of the purchase now settles it.
        let done = match done {
            Err(e) if e.code == "invalid_purchase_state" => {
                let p = self
                    .read(
                        app,
                        &ack.token,
                        (Some(ack.subscription), Some(&ack.product_id)),
                        Timestamp::from_millis(0),
                    )
                    .await?;
                if p.acknowledgement().is_none() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            other => other,
        };
        let label = if done.is_ok() { "sent" } else { "failed" };
        metrics::counter!("gateway_play_acknowledgements_total", "outcome" => label).increment(1);
        done.map(|()| 200)
    }
}

fn acknowledgement(event_type: &str, payload: &serde_json::Value) -> StoreResult<Acknowledgement> {
    super::action((event_type, ACKNOWLEDGE), payload, "a Play acknowledgement")
}

fn review(payload: &serde_json::Value) -> StoreResult<Review> {
    super::action(
        (REFUND_REVIEW, REFUND_REVIEW),
        payload,
        "an answer to a Play refund review",
    )
}
