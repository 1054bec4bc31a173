//! Customers: the snapshot, offerings, timeline, orders, manual grants and revokes, and spending a
//! consumable balance.

use std::collections::BTreeMap;

use gateway_core::{
    AppId, AppUserId, Currency, EntitlementId, ManualAction, ManualFact, Product, ProductId,
    ProductKind, Timestamp,
    decide::{EntitlementView, PurchaseView},
    ledger::LedgerSource,
};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::Digest;

use super::{Context, ServiceError, ServiceResult, decision};
use crate::{
    db::{self, Db, audit, customers, ledger, orders, outbox, products},
    model::App,
};

/// A customer as the API shows them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub app_user_id: AppUserId,
    /// Grows with every change of the snapshot.
    pub version: i64,
    pub entitlements: Vec<EntitlementView>,
    pub purchases: Vec<PurchaseView>,
    #[schema(value_type = BTreeMap<String, i64>)]
    pub balances: BTreeMap<Currency, i64>,
    /// A JWS (ES256) of the entitlements that give access now, valid for 5 minutes, verifiable
    /// offline with the keys at `/.well-known/jwks.json`.
    pub entitlement_token: Option<String>,
}

/// The customer's snapshot at `now`. A customer never seen has version 0 and nothing. When the clock
/// has passed a recorded expiry, the customer is re-evaluated first, so a read never shows access that
/// has ended.
pub async fn snapshot(
    cx: &Context,
    app: &AppId,
    id: &AppUserId,
    now: Timestamp,
) -> ServiceResult<Snapshot> {
    let snap = unsigned(cx, app, id, now).await?;
    signed(cx, app, snap, now).await
}

/// [`snapshot`] without its entitlement token, for callers that only look at it.
async fn unsigned(
    cx: &Context,
    app: &AppId,
    id: &AppUserId,
    now: Timestamp,
) -> ServiceResult<Snapshot> {
    let db = &cx.db;
    // One read in the usual case; a state the clock has overtaken (an expiry passed) is decided first
    // and read again.
    let mut rec = customers::recorded(db, app, id).await?.unwrap_or_default();
    if rec.next_change_at.is_some_and(|t| t <= now) {
        decision::reevaluate(cx, app, id, now).await?;
        rec = customers::recorded(db, app, id).await?.unwrap_or_default();
    }
    Ok(Snapshot {
        app_user_id: id.clone(),
        version: rec.version,
        entitlements: rec.entitlements,
        purchases: rec.purchases,
        balances: rec.balances,
        entitlement_token: None,
    })
}

/// Adds the entitlement token to a snapshot that is handed out.
async fn signed(
    cx: &Context,
    app: &AppId,
    mut snap: Snapshot,
    now: Timestamp,
) -> ServiceResult<Snapshot> {
    let token = super::tokens::sign(
        cx,
        app,
        &snap.app_user_id,
        snap.version,
        &snap.entitlements,
        now,
    )
    .await?;
    snap.entitlement_token = Some(token);
    Ok(snap)
}

/// The active products this customer may buy now: all but those whose every entitlement they hold.
pub async fn offerings(
    cx: &Context,
    app: &AppId,
    id: &AppUserId,
    now: Timestamp,
) -> ServiceResult<Vec<Product>> {
    let db = &cx.db;
    let snap = unsigned(cx, app, id, now).await?;
    let held: Vec<&EntitlementId> = snap
        .entitlements
        .iter()
        .filter(|e| e.status.has_access())
        .map(|e| &e.id)
        .collect();
    let all = products::list(db, app, true).await?;
    Ok(all
        .into_iter()
        .filter(|p| {
            p.kind == ProductKind::Consumable
                || !p.entitlements.iter().all(|e| held.contains(&&e.id))
        })
        .collect())
}

/// The customer's audit trail, newest first.
pub async fn timeline(
    db: &Db,
    app: &AppId,
    id: &AppUserId,
    before: Option<i64>,
    limit: i64,
) -> ServiceResult<Vec<audit::AuditRow>> {
    if !(1..=500).contains(&limit) {
        return Err(ServiceError::bad_request(
            "invalid_limit",
            "`limit` must be between 1 and 500.",
        ));
    }
    Ok(audit::timeline(db, app, id, before, limit).await?)
}

/// Play's `obfuscatedAccountId` for a customer: HMAC-SHA256 of the user id under the app's salt, hex
/// (64 characters, Play's limit). Stable per customer, not reversible.
pub fn obfuscated_account_id(app: &App, id: &AppUserId) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(app.settings.account_salt.expose().as_bytes())
            .expect("HMAC takes a key of any length");
    mac.update(id.as_str().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Starts an order: checks the products and the embargo, and issues the tokens that tie the store
/// purchase back to this customer.
pub async fn create_order(
    db: &Db,
    app: &App,
    id: &AppUserId,
    product_ids: Vec<ProductId>,
    country: Option<String>,
    now: Timestamp,
) -> ServiceResult<orders::Order> {
    if product_ids.is_empty() {
        return Err(ServiceError::bad_request(
            "invalid_order",
            "`product_ids` must name at least one product.",
        ));
    }
    super::opt_text(
        &gateway_core::text::ANY_CASE_COUNTRY,
        "invalid_country",
        "country",
        country.as_deref(),
    )?;
    let country = country.map(|c| c.to_ascii_uppercase());
    if country.is_none() && !app.settings.embargoed_countries.is_empty() {
        // A rule of this app's settings, not of the request's shape.
        return Err(ServiceError::conflict(
            "country_required",
            "This app refuses purchases from some countries: give the buyer's `country` (ISO 3166 alpha-2).",
        ));
    }
    if let Some(c) = &country
        && app.settings.embargoed_countries.contains(c)
    {
        return Err(ServiceError::forbidden(
            "embargoed",
            format!("Purchases from {c} are not allowed by this app."),
        ));
    }
    for pid in &product_ids {
        let product = products::get(db, &app.id, pid).await?.ok_or_else(|| {
            ServiceError::not_found(
                "product_not_found",
                format!("There is no product {:?} in this app.", pid.as_str()),
            )
        })?;
        if !product.active {
            return Err(ServiceError::conflict(
                "product_inactive",
                format!("Product {pid} is not for sale."),
            ));
        }
    }
    let order = orders::Order {
        id: db::new_id("ord"),
        app_id: app.id.clone(),
        customer_id: id.clone(),
        app_account_token: uuid::Uuid::new_v4().to_string(),
        obfuscated_account_id: obfuscated_account_id(app, id),
        items: product_ids,
        country,
        status: "open".into(),
        created_at: now,
    };
    orders::insert(db, &order).await?;
    Ok(order)
}

/// What a manual grant names.
#[derive(Debug, Clone)]
pub enum GrantTarget {
    Entitlement(EntitlementId),
    Product(ProductId),
}

/// A manual grant as asked for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub target: GrantTarget,
    pub reason: String,
    pub expires_at: Option<Timestamp>,
    /// The request's `Idempotency-Key`: a retry with it records nothing new.
    pub idempotency_key: Option<String>,
}

/// A manual revoke as asked for.
#[derive(Debug, Clone)]
pub struct Revoke {
    pub entitlement_id: EntitlementId,
    pub reason: String,
    pub idempotency_key: Option<String>,
}

/// The identity of a manual fact: its id, and the request key that made it when the caller sent an
/// `Idempotency-Key`.
struct FactIdentity {
    id: String,
    request_key: Option<String>,
}

/// Derives a manual fact's identity. With an `Idempotency-Key`, the id is a digest of the caller, the
/// key and everything the request says (`request`), so a retry of a request whose answer was lost is
/// the same fact (a no-op), never a second grant; the request key is a digest of the caller and the
/// key alone, so the same key sent with another request is found and refused (409), never taken for
/// a repeat. The HTTP layer's replay of answers lasts a day; this check lasts as long as the fact.
fn fact_identity(
    actor: &str,
    idempotency_key: Option<&str>,
    request: &serde_json::Value,
) -> FactIdentity {
    match idempotency_key {
        Some(key) => {
            let digest = |text: String| {
                format!(
                    "man_{}",
                    &hex::encode(sha2::Sha256::digest(text.as_bytes()))[..32]
                )
            };
            FactIdentity {
                id: digest(format!("{actor}\0{key}\0{request}")),
                request_key: Some(digest(format!("{actor}\0{key}"))),
            }
        }
        None => FactIdentity {
            id: db::new_id("man"),
            request_key: None,
        },
    }
}

/// Whether a manual request was made before: `true` for a repeat of the same request, a 409 when its
/// `Idempotency-Key` made another fact, `false` when it is new.
async fn seen_before(db: &Db, app: &AppId, identity: &FactIdentity) -> ServiceResult<bool> {
    let Some(request_key) = &identity.request_key else {
        return Ok(false);
    };
    match customers::manual_fact_by_request_key(db, app, request_key).await? {
        None => Ok(false),
        Some(id) if id == identity.id => Ok(true),
        Some(_) => Err(key_reused()),
    }
}

/// The refusal of an `Idempotency-Key` sent again with another request.
pub(crate) fn key_reused() -> ServiceError {
    ServiceError::conflict(
        "idempotency_key_reused",
        "This Idempotency-Key was used for another request; use a new key for a new request.",
    )
}

/// Grants by hand, with a reason kept in the audit log.
pub async fn grant(
    cx: &Context,
    app: &AppId,
    id: &AppUserId,
    grant: Grant,
    actor: &str,
    now: Timestamp,
) -> ServiceResult<Snapshot> {
    let db = &cx.db;
    let Grant {
        target,
        reason,
        expires_at,
        idempotency_key,
    } = grant;
    let reason = super::reason(&reason)?;
    if expires_at.is_some_and(|e| e <= now) {
        // Fits the document (a time), refused for when it is: the document cannot state that.
        return Err(ServiceError::new(
            super::Kind::Unprocessable,
            "invalid_expires_at",
            "`expires_at` must be in the future.",
        ));
    }
    let named = match &target {
        GrantTarget::Product(pid) => json!({"product_id": pid}),
        GrantTarget::Entitlement(eid) => json!({"entitlement_id": eid}),
    };
    let action = match target {
        GrantTarget::Product(pid) => {
            let Some(product) = products::get(db, app, &pid).await? else {
                return Err(ServiceError::not_found(
                    "product_not_found",
                    format!("There is no product {:?} in this app.", pid.as_str()),
                ));
            };
            ManualAction::GrantProduct {
                product_id: pid,
                expires_at,
                // What was granted stays what it was, whatever the catalog says later.
                terms: Some(product.terms()),
            }
        }
        GrantTarget::Entitlement(eid) => {
            if !products::entitlement_known(db, app, &eid).await? {
                return Err(ServiceError::not_found(
                    "entitlement_not_found",
                    format!(
                        "No product of this app grants entitlement {:?}.",
                        eid.as_str()
                    ),
                ));
            }
            ManualAction::GrantEntitlement {
                entitlement_id: eid,
                expires_at,
            }
        }
    };
    let request =
        json!({"grant": named, "customer": id, "expires_at": expires_at, "reason": &reason});
    let identity = fact_identity(actor, idempotency_key.as_deref(), &request);
    if seen_before(db, app, &identity).await? {
        // A retry of a grant that was recorded: answer as the first time did.
        return snapshot(cx, app, id, now).await;
    }
    let fact = ManualFact {
        id: identity.id,
        at: now,
        action,
        reason: reason.clone(),
    };
    let input = decision::Input {
        request_key: identity.request_key,
        source: "api.grant",
        dedupe_key: fact.id.clone(),
        raw: serde_json::to_string(&fact).unwrap_or_default(),
        cause: format!("Granted by hand: {reason}"),
        actor: actor.to_owned(),
        manual: vec![fact],
        purchases: Vec::new(),
        transfer: false,
        remark: None,
        owed: Vec::new(),
    };
    decision::apply(cx, app, id, input, now).await?;
    snapshot(cx, app, id, now).await
}

/// Revokes an entitlement by hand, whatever granted it, until a later grant or purchase.
pub async fn revoke(
    cx: &Context,
    app: &AppId,
    id: &AppUserId,
    revoke: Revoke,
    actor: &str,
    now: Timestamp,
) -> ServiceResult<Snapshot> {
    let db = &cx.db;
    let Revoke {
        entitlement_id: eid,
        reason,
        idempotency_key,
    } = revoke;
    let reason = super::reason(&reason)?;
    let request = json!({"revoke": &eid, "customer": id, "reason": &reason});
    let identity = fact_identity(actor, idempotency_key.as_deref(), &request);
    if seen_before(db, app, &identity).await? {
        // A retry of a revoke that was recorded: answer as the first time did.
        return snapshot(cx, app, id, now).await;
    }
    let current = unsigned(cx, app, id, now).await?;
    let holds = current.entitlements.iter().any(|e| {
        e.id == eid
            && (e.status.has_access() || e.status == gateway_core::EntitlementStatus::Pending)
    });
    if !holds {
        return Err(ServiceError::not_found(
            "entitlement_not_found",
            format!(
                "This customer does not hold entitlement {:?}.",
                eid.as_str()
            ),
        ));
    }
    let fact = ManualFact {
        id: identity.id,
        at: now,
        action: ManualAction::Revoke {
            entitlement_id: eid,
        },
        reason: reason.clone(),
    };
    let input = decision::Input {
        request_key: identity.request_key,
        source: "api.revoke",
        dedupe_key: fact.id.clone(),
        raw: serde_json::to_string(&fact).unwrap_or_default(),
        cause: format!("Revoked by hand: {reason}"),
        actor: actor.to_owned(),
        manual: vec![fact],
        purchases: Vec::new(),
        transfer: false,
        remark: None,
        owed: Vec::new(),
    };
    decision::apply(cx, app, id, input, now).await?;
    snapshot(cx, app, id, now).await
}

/// The answer to a spend.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Spent {
    pub transaction_id: String,
    pub currency: Currency,
    pub amount: i64,
    pub balance: i64,
    pub version: i64,
}

/// Spends `amount` of `currency` once per `idem_key`: the debit, its audit row, the
/// `balance.changed` event and the new version commit together; a repeat returns the first answer.
#[allow(clippy::too_many_arguments)]
pub async fn spend(
    db: &Db,
    app: &AppId,
    id: &AppUserId,
    currency: Currency,
    amount: i64,
    reason: &str,
    idem_key: &str,
    actor: &str,
    now: Timestamp,
) -> ServiceResult<Spent> {
    let reason = super::reason(reason)?;
    if amount <= 0 || amount > i64::MAX / 4 {
        return Err(ServiceError::bad_request(
            "invalid_amount",
            "`amount` must be a positive whole number.",
        ));
    }
    let mut tx = db.begin(db::Begin::Write).await?;
    let mut row = customers::lock(&mut tx, app, id, now).await?;
    let balances = ledger::balances(&mut tx, app, id).await?;
    if let Some((txn, cur, spent)) = ledger::spend_by_key(&mut tx, app, id, idem_key).await? {
        db::rollback(tx).await?;
        if cur != currency || -spent != amount {
            return Err(ServiceError::conflict(
                "idempotency_key_reused",
                "This Idempotency-Key was used for another spend of this customer; use a new key for a new spend.",
            ));
        }
        let balance = balances.get(&cur).copied().unwrap_or(0);
        return Ok(Spent {
            transaction_id: txn,
            currency: cur,
            amount: -spent,
            balance,
            version: row.version,
        });
    }
    let previous = balances.get(&currency).copied().unwrap_or(0);
    if previous < amount {
        db::rollback(tx).await?;
        return Err(ServiceError::conflict(
            "insufficient_balance",
            format!("The {currency} balance is {previous}; {amount} cannot be spent."),
        ));
    }
    let source = LedgerSource::Spend(idem_key.to_owned());
    let txn = ledger::record(
        &mut tx,
        app,
        id,
        &currency,
        &source,
        -amount,
        Some(&reason),
        now,
    )
    .await?;
    let balance = previous - amount;
    row.version += 1;
    let effect = gateway_core::Effect::BalanceChanged {
        currency: currency.clone(),
        previous,
        balance,
    };
    let payload = decision::outbound_payload(app, id, "balance.changed", &effect, now);
    outbox::insert(&mut tx, app, id, &mut row, "balance.changed", &payload, now).await?;
    let detail = json!({"actor": actor, "transaction_id": txn, "currency": currency, "amount": amount,
        "previous": previous, "balance": balance, "idempotency_key": idem_key, "version": row.version});
    let cause = format!("Spent {amount} {currency}: {reason}");
    let entry = audit::Entry {
        at: now,
        kind: "api.spend",
        cause: &cause,
        detail: &detail,
    };
    audit::append(&mut tx, app, id, &mut row, entry).await?;
    customers::save_row(&mut tx, app, id, &row, row.next_change_at, now).await?;
    db::changes::announce(&mut tx, &[(app.to_string(), id.to_string())]).await?;
    db::commit(tx).await?;
    db.changes().publish(app, id);
    metrics::counter!("gateway_spends_total").increment(1);
    Ok(Spent {
        transaction_id: txn,
        currency,
        amount,
        balance,
        version: row.version,
    })
}

/// How often a long poll re-reads the database. Changes of this instance wake it at once; on
/// PostgreSQL, so do those of other instances (LISTEN/NOTIFY), and the re-read only covers a gap in
/// listening. On SQLite another process (the CLI) can write, and the re-read is how it is seen.
fn cross_instance_poll(db: &Db) -> std::time::Duration {
    match db.dialect {
        db::Dialect::Postgres => std::time::Duration::from_secs(10),
        db::Dialect::Sqlite => std::time::Duration::from_secs(1),
    }
}

/// The longest a long poll may hold: under the request timeout, so a poll always answers 200.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(50);

/// The snapshot once its version passes `after_version`, or as it is when `wait` runs out; refused
/// (401 `key_revoked` or `customer_token_expired`) as soon as `credentials` no longer hold, which is
/// checked before a snapshot is handed out, whenever this process learns of a revocation, at least
/// every [`db::keys::LIVE_RECHECK`], and at the customer token's expiry.
pub async fn snapshot_after(
    cx: &Context,
    app: &AppId,
    id: &AppUserId,
    after_version: i64,
    wait: std::time::Duration,
    clock: &dyn gateway_core::Clock,
    credentials: &super::keys::Credentials,
) -> ServiceResult<Snapshot> {
    let db = &cx.db;
    use tokio::time::{Instant, sleep_until};
    let deadline = Instant::now() + wait.min(MAX_WAIT);
    let mut revocations = db.key_liveness().revocations();
    let mut recheck = Instant::from_std(credentials.check(db).await?);
    loop {
        let signal = db.changes().subscribe(app, id);
        let notified = signal.notified();
        tokio::pin!(notified);
        // Registered before the read, so a commit between the read and the wait still wakes us.
        notified.as_mut().enable();
        let snap = unsigned(cx, app, id, clock.now()).await?;
        let now = Instant::now();
        if snap.version > after_version || now >= deadline {
            // After the read: a change committed after a revocation this process knows of is never
            // handed out.
            credentials.check(db).await?;
            return signed(cx, app, snap, clock.now()).await;
        }
        let reread = now + (deadline - now).min(cross_instance_poll(db));
        // Between reads only the credentials are checked, mostly from what this process knows.
        loop {
            tokio::select! {
                _ = &mut notified => break,
                _ = sleep_until(reread) => break,
                // The sender lives as long as `db`: this never ends in an error.
                _ = revocations.changed() => {}
                _ = sleep_until(recheck) => {}
            }
            recheck = Instant::from_std(credentials.check(db).await?);
        }
    }
}
