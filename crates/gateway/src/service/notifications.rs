//! Store notifications. A store's word reaches the gateway here: verified by the store's adapter,
//! deduped on the store's id of it (Apple's `notificationUUID`), turned into facts about the purchase
//! lineage, and decided in one transaction with the raw body. A notification about a lineage no
//! customer holds yet is kept as orphan facts, which join the lineage when the app submits the
//! purchase, so nothing acknowledged is lost and a refund that arrives before its purchase still wins.
//! A notification about a SKU the catalog does not map is held too, and decided when the catalog maps
//! it ([`rerun_unmapped`]).

use gateway_core::{
    AppId, AppUserId, PurchaseStatus, Timestamp,
    decide::PurchaseView,
    ids::Store,
    revenuecat::{self, GrantRef},
};
use serde::Serialize;

use super::{
    Context, ServiceError, ServiceResult,
    batch::{Done, Held, Notification, Recorded, Work},
};
use crate::{
    db::unmapped,
    model::App,
    stores::{Adapter, Delivery, Notice, Transaction, Transfer, revenuecat::RelayedPurchase},
};

/// What became of a notification.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Received {
    /// `decided` (it changed or confirmed a customer's state), `held` (kept until its purchase is
    /// known), `recorded` (kept; nothing to decide) or `duplicate`.
    pub status: &'static str,
    /// The store's id of the notification.
    pub notification_uuid: String,
}

/// Takes one notification body for `store`. Answers only once the raw body is durable.
pub async fn receive(
    cx: &Context,
    app: &App,
    store: Store,
    delivery: Delivery<'_>,
    now: Timestamp,
) -> ServiceResult<Received> {
    let adapter = cx.adapter(store)?;
    let notice = adapter.verify_notification(app, delivery, now).await?;
    decide(cx, adapter, app, notice, now).await
}

/// Decides on a notification its store verified (delivered, or read back from its history).
pub async fn decide(
    cx: &Context,
    adapter: Adapter<'_>,
    app: &App,
    notice: Notice,
    now: Timestamp,
) -> ServiceResult<Received> {
    let source = adapter.names().notification;
    let Notice {
        id,
        raw,
        cause,
        transaction,
        events,
        owed,
        transfer,
        remark,
        account,
        ..
    } = notice;
    if let Some(t) = transfer {
        let store = adapter.store().as_str();
        return take_transfer(cx, app, t, (source, store), (id, raw, cause), now).await;
    }
    let mut transaction = transaction;
    if let Some(Transaction::RevenueCat(relayed)) = &mut transaction {
        match_grant(cx, app, relayed).await?;
    }
    let work = match transaction {
        Some(transaction) => Work::Notification(Box::new(Notification {
            app: app.id.clone(),
            source,
            id: id.clone(),
            raw,
            cause,
            transaction,
            events,
            owed,
            remark,
            held_as: None,
            now,
        })),
        // About an account, not a purchase: decided for what it says, for the customer the account
        // was seen with; one that says nothing, or about an account no customer was seen with, is
        // kept as it came.
        None => match holder(
            cx,
            app,
            adapter.store(),
            (remark.is_some(), account.as_deref()),
        )
        .await?
        {
            Some(customer) => Work::Decide {
                app: app.id.clone(),
                customer,
                input: Box::new(super::decision::Input {
                    source,
                    dedupe_key: id.clone(),
                    raw,
                    cause,
                    actor: adapter.store().as_str().into(),
                    manual: Vec::new(),
                    request_key: None,
                    purchases: Vec::new(),
                    transfer: false,
                    remark,
                    owed: Vec::new(),
                }),
                now,
            },
            None => Work::Record(Box::new(Recorded {
                app: app.id.clone(),
                source,
                dedupe_key: id.clone(),
                raw,
                now,
            })),
        },
    };
    let status = match cx.committer().submit(work).await? {
        Done::Decided { outcome, .. } if outcome.duplicate => "duplicate",
        Done::Decided { .. } => "decided",
        Done::Held => "held",
        Done::Recorded => "recorded",
        Done::Duplicate => "duplicate",
    };
    Ok(Received {
        status,
        notification_uuid: id,
    })
}

/// Resolves which of the customer's RevenueCat temporary grants an event concerns (see
/// [`gateway_core::revenuecat::GrantRef`]): an `EXPIRATION` naming one is about it; a purchase
/// succeeds the latest running grant of one of the entitlements its product grants. A read before
/// the decision, not inside it: a grant missed by a race simply runs out within its day.
async fn match_grant(cx: &Context, app: &App, r: &mut RelayedPurchase) -> ServiceResult<()> {
    let Some(grant) = r.grant.take() else {
        return Ok(());
    };
    let Ok(customer) = r.customer.parse::<AppUserId>() else {
        return Ok(());
    };
    let grants = crate::db::customers::lineages_with_prefix(
        &cx.db,
        &app.id,
        &customer,
        revenuecat::GRANT_PREFIX,
    )
    .await?;
    let at = match grant {
        GrantRef::Named(lineage) => {
            if grants.contains(&lineage) {
                r.lineage = lineage;
            }
            return Ok(());
        }
        // Most customers never had a grant: one narrow read answers for them.
        GrantRef::FollowUp { .. } if grants.is_empty() => return Ok(()),
        GrantRef::FollowUp { at } => at,
    };
    let Some(held) = crate::db::customers::recorded(&cx.db, &app.id, &customer).await? else {
        return Ok(());
    };
    let running = held.purchases.iter().filter(|p| {
        p.store_transaction_id.starts_with(revenuecat::GRANT_PREFIX)
            && p.status == PurchaseStatus::Active
            && p.purchased_at
                .is_some_and(|from| from.millis() <= at.millis() + revenuecat::GRANT_LEAD_MS)
            && p.expires_at.is_none_or(|until| at < until)
    });
    let Some(product) =
        crate::db::products::by_sku(&cx.db, &app.id, r.store.as_str(), &r.sku).await?
    else {
        return Ok(());
    };
    let mut best: Option<&PurchaseView> = None;
    for p in running {
        let Some(granted) = crate::db::products::get(&cx.db, &app.id, &p.product_id).await? else {
            continue;
        };
        let shared = granted
            .entitlements
            .iter()
            .any(|g| product.entitlements.iter().any(|e| e.id == g.id));
        if shared && best.is_none_or(|b| b.purchased_at < p.purchased_at) {
            best = Some(p);
        }
    }
    if let Some(g) = best {
        let from = g.purchased_at.unwrap_or(at);
        r.succeeds = Some((g.store_transaction_id.clone(), at.max(from)));
    }
    Ok(())
}

/// A provider's move of the purchases it relays (RevenueCat's `TRANSFER`): every such purchase of
/// the customers it names moves to the one it names, in one decision (as a restore under the
/// `transfer` policy moves one); with none to move, the notification is kept.
async fn take_transfer(
    cx: &Context,
    app: &App,
    t: Transfer,
    (source, actor): (&'static str, &str),
    (id, raw, cause): (String, String, String),
    now: Timestamp,
) -> ServiceResult<Received> {
    let mut purchases = Vec::new();
    for from in t.from.iter().filter(|f| **f != t.to) {
        let Ok(customer) = from.parse::<AppUserId>() else {
            continue;
        };
        let Some(held) = crate::db::customers::recorded(&cx.db, &app.id, &customer).await? else {
            continue;
        };
        purchases.extend(
            held.purchases
                .into_iter()
                .filter(|p| p.store_transaction_id.starts_with(t.lineage_prefix))
                .map(|p| gateway_core::PurchaseFacts {
                    id: p.id,
                    store: p.store,
                    product_id: p.product_id,
                    store_transaction_id: p.store_transaction_id,
                    environment: p.environment,
                    terms: None,
                    settled: None,
                    events: Vec::new(),
                }),
        );
    }
    let to: Option<AppUserId> = t.to.parse().ok();
    let (Some(to), false) = (to, purchases.is_empty()) else {
        let work = Work::Record(Box::new(Recorded {
            app: app.id.clone(),
            source,
            dedupe_key: id.clone(),
            raw,
            now,
        }));
        let status = match cx.committer().submit(work).await? {
            Done::Recorded => "recorded",
            _ => "duplicate",
        };
        return Ok(Received {
            status,
            notification_uuid: id,
        });
    };
    let input = super::decision::Input {
        source,
        dedupe_key: id.clone(),
        raw,
        cause,
        actor: actor.to_owned(),
        manual: Vec::new(),
        request_key: None,
        purchases,
        transfer: true,
        remark: None,
        owed: Vec::new(),
    };
    let outcome = super::decision::apply(cx, &app.id, &to, input, now).await?;
    Ok(Received {
        status: if outcome.duplicate {
            "duplicate"
        } else {
            "decided"
        },
        notification_uuid: id,
    })
}

/// Held inputs decided again per round.
const RERUN_BATCH: i64 = 256;

/// Decides the inputs held for a SKU the catalog now maps (of `app`, or of every app), as many as
/// there are: the catalog change that maps a SKU calls it, and the housekeeping job does for any a
/// stop left behind. Returns how many were decided.
pub async fn rerun_unmapped(
    cx: &Context,
    app: Option<&AppId>,
    now: Timestamp,
) -> ServiceResult<usize> {
    let db = &cx.db;
    let mut total = 0;
    loop {
        let held = unmapped::mapped(db, app.map(AppId::as_str), RERUN_BATCH).await?;
        let taken = held.len();
        let mut works = Vec::with_capacity(taken);
        for h in held {
            let body: Held = serde_json::from_str(&h.body).map_err(crate::db::DbError::from)?;
            let app: AppId = h.app.parse().map_err(|_| {
                crate::db::DbError::Corrupt(format!("app id {:?} of a held input", h.app))
            })?;
            let adapter = Store::parse(&h.store)
                .and_then(|s| cx.stores.adapter(s))
                .ok_or_else(|| {
                    crate::db::DbError::Corrupt(format!("store {:?} of a held input", h.store))
                })?;
            let store = (adapter.store(), adapter.names().notification);
            let n = Notification::from_held(app, store, h.inbound_id, body, now)?;
            works.push(Work::Notification(Box::new(n)));
        }
        // Submitted together, they share the committer's batches.
        let done =
            futures_util::future::join_all(works.into_iter().map(|w| cx.committer().submit(w)))
                .await;
        let mut decided = 0;
        for d in done {
            if !matches!(d?, Done::Held) {
                decided += 1;
            }
        }
        total += decided;
        if decided > 0 {
            tracing::info!(decided, "inputs held for an unmapped SKU were decided");
        }
        // Stop on a short round, or when a round decided nothing (each would be taken again).
        if taken < RERUN_BATCH as usize || decided == 0 {
            return Ok(total);
        }
    }
}

/// The customer a store account was last seen with, for a notification about the account that
/// says something (`remarked`); none is looked up for one that says nothing.
async fn holder(
    cx: &Context,
    app: &App,
    store: Store,
    (remarked, account): (bool, Option<&str>),
) -> ServiceResult<Option<AppUserId>> {
    let (true, Some(account)) = (remarked, account) else {
        return Ok(None);
    };
    let holder =
        crate::db::orders::account_holder(&cx.db, &app.id, (store.as_str(), account)).await?;
    holder
        .map(|c| {
            c.parse().map_err(|_| {
                ServiceError::Internal(crate::db::DbError::Corrupt(format!("customer id {c:?}")))
            })
        })
        .transpose()
}
