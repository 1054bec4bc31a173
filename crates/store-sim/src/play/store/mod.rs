//! The actions of the simulated Google Play, as the customer and as Google take them ([`Action`]):
//! each changes the books and pushes the Real-time developer notification Google sends for it
//! (numbers from store-formats G5):
//!
//! | action | state after | RTDN |
//! |---|---|---|
//! | buy (one-time) | PURCHASED, or PENDING | oneTime 1 |
//! | confirm a pending purchase | PURCHASED / ACTIVE | oneTime 1 / subscription 4 |
//! | cancel a pending purchase | CANCELLED / PENDING_PURCHASE_CANCELED | oneTime 2 / subscription 20 |
//! | subscribe | ACTIVE (PENDING: no RTDN until confirmed) | 4 |
//! | renew (also resumes a paused one) | ACTIVE, new expiry, new order `…..n` | 2 |
//! | enter grace period | IN_GRACE_PERIOD, access until grace ends | 6 |
//! | put on hold | ON_HOLD, access ended | 5 |
//! | pause | PAUSED with `autoResumeTime` | 10 |
//! | recover from grace or hold | ACTIVE, the declined order paid | 1 |
//! | cancel (auto-renew off) | CANCELED, entitled until expiry | 3 |
//! | restart a cancelled one | ACTIVE | 7 |
//! | expire | EXPIRED | 13 |
//! | revoke (refund and revoke) | EXPIRED now, voided | 12 |
//! | change plan (upgrade/downgrade) | new token, `linkedPurchaseToken` = old; old EXPIRED (replacement) | 4 (new token) |
//! | resubscribe in the Play Store | new token with `outOfAppPurchaseContext` | 4 (new token) |
//! | refund (whole or part of the quantity) | voided purchase entry | voided, refundType 1 or 2 |
//! | ask for a refund review | a `pendingRefundToken` on the order | pendingRefundReview |
//! | test notification | | test |
//!
//! Purchases not acknowledged within three days of completing are refunded by Google
//! (voidedReason 8, voidedSource Google, a voided RTDN), and cancelled subscriptions whose period
//! has ended expire (13): checked on every action and API call, and by [`PlaySim::tick`].
//!
//! This file is the state machine; `http.rs` is the `/sim/play` control surface.

mod http;

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::{
    Delivery, Period, PlayError, PlaySim, PushMode,
    books::{
        self, Books, CancelledBy, OneTime, OneTimeState, Order, OrderKind, OrderState, Sub,
        SubState, VoidedReason, VoidedSource,
    },
    lock,
    push::Rtdn,
};

/// The price of a one-time product that names none, in micro-units of USD (0.99).
const DEFAULT_UNIT_PRICE_MICROS: i64 = 990_000;
/// The price of a subscription that names none, per period (4.99).
const DEFAULT_SUBSCRIPTION_PRICE_MICROS: i64 = 4_990_000;
/// The billing region of simulated customers.
const REGION: &str = "US";
/// The largest quantity one purchase may have (Play's multi-quantity purchases go up to this,
/// as far as the simulator cares).
const MAX_QUANTITY: u32 = 100;
/// `CancelSurveyResult.reason` values (the discovery document's enum, less UNSPECIFIED).
const CANCEL_SURVEY_REASONS: [&str; 5] = [
    "CANCEL_SURVEY_REASON_NOT_ENOUGH_USAGE",
    "CANCEL_SURVEY_REASON_TECHNICAL_ISSUES",
    "CANCEL_SURVEY_REASON_COST_RELATED",
    "CANCEL_SURVEY_REASON_FOUND_BETTER_APP",
    "CANCEL_SURVEY_REASON_OTHERS",
];
/// The purchase option a one-time purchase uses when none is named.
const DEFAULT_PURCHASE_OPTION: &str = "buy";

/// A one-time product purchase; [`Buy::new`] gives the common case.
#[derive(Debug, Clone)]
pub struct Buy {
    pub package: String,
    pub product_id: String,
    pub quantity: u32,
    /// `obfuscatedExternalAccountId`, as the app passed it to the Billing Library.
    pub obfuscated_account_id: Option<String>,
    pub obfuscated_profile_id: Option<String>,
    /// Left pending (a slow form of payment) until confirmed or cancelled.
    pub pending: bool,
    /// A license tester's purchase (`testPurchaseContext`, v1 `purchaseType: 0`).
    pub test: bool,
    /// Per item, in micro-units of USD.
    pub unit_price_micros: i64,
    pub purchase_option_id: String,
    pub offer_id: Option<String>,
    pub offer_tags: Vec<String>,
}

impl Buy {
    pub fn new(package: &str, product_id: &str) -> Self {
        Self {
            package: package.to_owned(),
            product_id: product_id.to_owned(),
            quantity: 1,
            obfuscated_account_id: None,
            obfuscated_profile_id: None,
            pending: false,
            test: false,
            unit_price_micros: DEFAULT_UNIT_PRICE_MICROS,
            purchase_option_id: DEFAULT_PURCHASE_OPTION.into(),
            offer_id: None,
            offer_tags: Vec::new(),
        }
    }
}

/// A subscription purchase; [`Subscribe::new`] gives the common case.
#[derive(Debug, Clone)]
pub struct Subscribe {
    pub package: String,
    pub product_id: String,
    pub base_plan_id: String,
    pub offer_id: Option<String>,
    pub offer_tags: Vec<String>,
    pub period: Period,
    pub obfuscated_account_id: Option<String>,
    pub obfuscated_profile_id: Option<String>,
    /// Left pending (SUBSCRIPTION_STATE_PENDING) until confirmed or cancelled.
    pub pending: bool,
    pub test: bool,
    /// Per period, in micro-units of USD (`recurringPrice`).
    pub price_micros: i64,
}

impl Subscribe {
    pub fn new(package: &str, product_id: &str, base_plan_id: &str) -> Self {
        Self {
            package: package.to_owned(),
            product_id: product_id.to_owned(),
            base_plan_id: base_plan_id.to_owned(),
            offer_id: None,
            offer_tags: Vec::new(),
            period: Period::ONE_MONTH,
            obfuscated_account_id: None,
            obfuscated_profile_id: None,
            pending: false,
            test: false,
            price_micros: DEFAULT_SUBSCRIPTION_PRICE_MICROS,
        }
    }
}

/// A refund: of the whole purchase (quantity `None`) or of part of a one-time purchase's quantity.
#[derive(Debug, Clone, Default)]
pub struct Refund {
    pub quantity: Option<u32>,
    pub source: VoidedSource,
    pub reason: VoidedReason,
}

/// Something the customer or Google does.
#[derive(Debug, Clone)]
pub enum Action {
    Buy(Buy),
    Subscribe(Subscribe),
    /// A pending purchase's payment completes.
    Confirm {
        token: String,
    },
    /// A pending purchase is abandoned.
    CancelPending {
        token: String,
    },
    /// A renewal is charged (or a paused subscription resumes).
    Renew {
        token: String,
    },
    /// A renewal is declined; access continues for `grace`.
    EnterGracePeriod {
        token: String,
        grace: Duration,
    },
    /// A renewal is declined (or grace ran out) and access ends until payment is fixed.
    PutOnHold {
        token: String,
    },
    /// The customer's pause takes effect, for `duration`.
    Pause {
        token: String,
        duration: Period,
    },
    /// Payment is fixed while in grace or on hold.
    Recover {
        token: String,
    },
    /// Auto-renewal turned off: entitled until expiry.
    Cancel {
        token: String,
        by: CancelledBy,
    },
    /// Auto-renewal turned back on before expiry.
    Restart {
        token: String,
    },
    Expire {
        token: String,
    },
    /// Refunded and revoked now (Play Console "Refund and revoke").
    Revoke {
        token: String,
    },
    /// An upgrade or downgrade in the app, replacing the subscription now.
    ChangePlan {
        token: String,
        to: Subscribe,
    },
    /// The customer buys the expired subscription again in the Play Store's subscriptions center.
    Resubscribe {
        token: String,
    },
    Refund {
        token: String,
        refund: Refund,
    },
    /// The customer files a chargeback that Google asks the developer to review.
    RequestRefundReview {
        token: String,
    },
    TestNotification {
        package: String,
    },
}

/// What an action did: the purchase it concerned and the RTDN it pushed.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The purchase token concerned (the new one for subscribe, plan changes and resubscribes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purchase_token: Option<String>,
    /// The order the action created or concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// For a refund review: the token `orders.reviewrefund` must name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_refund_token: Option<String>,
    /// The DeveloperNotification the change calls for, whether or not it was pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification: Option<Value>,
    /// The push, if one was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// What an action decided, to be announced once the books are closed.
pub(in crate::play) struct Change {
    package: String,
    rtdn: Option<Rtdn>,
    token: Option<String>,
    order_id: Option<String>,
    pending_refund_token: Option<String>,
}

impl Change {
    /// A change about purchase `token` that calls for `rtdn` (none: nothing to push).
    pub(in crate::play) fn new(
        package: &str,
        rtdn: Option<Rtdn>,
        token: &str,
        order_id: Option<String>,
    ) -> Self {
        Self {
            package: package.to_owned(),
            rtdn,
            token: Some(token.to_owned()),
            order_id,
            pending_refund_token: None,
        }
    }
}

fn sub_rtdn(notification_type: u8, token: &str) -> Option<Rtdn> {
    Some(Rtdn::Subscription {
        notification_type,
        token: token.to_owned(),
    })
}

fn wrong_state(token: &str, action: &'static str, state: &'static str) -> PlayError {
    PlayError::InvalidState {
        token: token.to_owned(),
        action,
        state,
    }
}

fn duration_ms(d: Duration) -> Result<i64, PlayError> {
    i64::try_from(d.as_millis()).map_err(|_| PlayError::Invalid("the duration is too long".into()))
}

impl PlaySim {
    /// Takes an action, pushing its RTDN as [`PlaySim::set_push_mode`] says (sent by default).
    pub async fn act(&self, action: Action) -> Result<Outcome, PlayError> {
        let mode = self.push_mode();
        self.act_with(action, mode).await
    }

    /// Takes an action, pushing its RTDN as `mode` says (skipped, or forged).
    pub async fn act_with(&self, action: Action, mode: PushMode) -> Result<Outcome, PlayError> {
        self.tick().await;
        let change = {
            let now = self.now();
            let mut books = lock(&self.books);
            self.apply(&mut books, action, now)?
        };
        self.announce(change, Some(mode)).await
    }

    /// Applies what Google does when time passes (refunds of purchases left unacknowledged for
    /// three days, expiry of cancelled subscriptions whose period ended) and pushes their RTDNs.
    pub async fn tick(&self) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for change in self.sweep() {
            if let Ok(o) = self.announce(change, None).await {
                outcomes.push(o);
            }
        }
        outcomes
    }

    /// The changes time has made, applied to the books, not yet announced.
    pub(in crate::play) fn sweep(&self) -> Vec<Change> {
        let now = self.now();
        let swept = lock(&self.books).sweep(now);
        swept
            .into_iter()
            .map(|(package, rtdn)| {
                let (token, order_id) = match &rtdn {
                    Rtdn::Voided {
                        token, order_id, ..
                    } => (Some(token.clone()), Some(order_id.clone())),
                    Rtdn::Subscription { token, .. } => (Some(token.clone()), None),
                    _ => (None, None),
                };
                Change {
                    package,
                    rtdn: Some(rtdn),
                    token,
                    order_id,
                    pending_refund_token: None,
                }
            })
            .collect()
    }

    /// Pushes a change's RTDN (as `mode` says, the default mode when `None`).
    pub(in crate::play) async fn announce(
        &self,
        change: Change,
        mode: Option<PushMode>,
    ) -> Result<Outcome, PlayError> {
        let mode = mode.unwrap_or_else(|| self.push_mode());
        let notification = change
            .rtdn
            .as_ref()
            .map(|r| r.notification(&change.package, self.now()));
        let delivery = match &notification {
            Some(n) => self.push(&change.package, n, &mode).await?,
            None => None,
        };
        Ok(Outcome {
            purchase_token: change.token,
            order_id: change.order_id,
            pending_refund_token: change.pending_refund_token,
            notification,
            delivery,
        })
    }

    /// Changes the books for one action.
    fn apply(&self, books: &mut Books, action: Action, now: i64) -> Result<Change, PlayError> {
        match action {
            Action::Buy(b) => self.buy_in(books, &b, now),
            Action::Subscribe(s) => self.subscribe_in(books, &s, now, None),
            Action::Confirm { token } => confirm(books, &token, now),
            Action::CancelPending { token } => cancel_pending(books, &token, now),
            Action::Renew { token } => renew(books, &token, now),
            Action::EnterGracePeriod { token, grace } => {
                let grace = duration_ms(grace)?;
                let s = books.sub_mut(&token)?;
                if s.state != SubState::Active || !s.auto_renew {
                    return Err(wrong_state(&token, "enter a grace period", s.state.name()));
                }
                let period_end = s.paid_until.min(now);
                s.state = SubState::InGracePeriod;
                s.expiry_ms = period_end.saturating_add(grace);
                let change = Change::new(&s.package.clone(), sub_rtdn(6, &token), &token, None);
                declined_order(books, &token, now)?;
                Ok(change)
            }
            Action::PutOnHold { token } => {
                let s = books.sub_mut(&token)?;
                if !matches!(s.state, SubState::Active | SubState::InGracePeriod) || !s.auto_renew {
                    return Err(wrong_state(&token, "put on hold", s.state.name()));
                }
                s.state = SubState::OnHold;
                s.expiry_ms = s.expiry_ms.min(now);
                s.paid_until = s.paid_until.min(now);
                let change = Change::new(&s.package.clone(), sub_rtdn(5, &token), &token, None);
                declined_order(books, &token, now)?;
                Ok(change)
            }
            Action::Pause { token, duration } => {
                let s = books.sub_mut(&token)?;
                if s.state != SubState::Active || !s.auto_renew {
                    return Err(wrong_state(&token, "pause", s.state.name()));
                }
                s.state = SubState::Paused;
                s.expiry_ms = s.expiry_ms.min(now);
                s.paid_until = s.paid_until.min(now);
                s.auto_resume_ms = Some(duration.after(now));
                s.version += 1;
                Ok(Change::new(&s.package, sub_rtdn(10, &token), &token, None))
            }
            Action::Recover { token } => recover(books, &token, now),
            Action::Cancel { token, by } => {
                if let CancelledBy::User {
                    survey_reason: Some(reason),
                } = &by
                    && !CANCEL_SURVEY_REASONS.contains(&reason.as_str())
                {
                    return Err(PlayError::Invalid(format!(
                        "{reason:?} is not a cancel survey reason: use one of {}",
                        CANCEL_SURVEY_REASONS.join(", ")
                    )));
                }
                let s = books.sub_mut(&token)?;
                if !matches!(s.state, SubState::Active | SubState::InGracePeriod) {
                    return Err(wrong_state(&token, "cancel", s.state.name()));
                }
                s.state = SubState::Canceled;
                s.auto_renew = false;
                s.cancelled = Some((by, now));
                s.version += 1;
                Ok(Change::new(&s.package, sub_rtdn(3, &token), &token, None))
            }
            Action::Restart { token } => {
                let s = books.sub_mut(&token)?;
                if s.state != SubState::Canceled {
                    return Err(wrong_state(&token, "restart", s.state.name()));
                }
                s.state = SubState::Active;
                s.auto_renew = true;
                s.cancelled = None;
                s.version += 1;
                Ok(Change::new(&s.package, sub_rtdn(7, &token), &token, None))
            }
            Action::Expire { token } => {
                let s = books.sub_mut(&token)?;
                if matches!(
                    s.state,
                    SubState::Expired | SubState::Pending | SubState::PendingPurchaseCanceled
                ) {
                    return Err(wrong_state(&token, "expire", s.state.name()));
                }
                // A cancelled subscription keeps its cancellation; others end by the system.
                let cancelled = s.cancelled.take();
                books::end_now(s, CancelledBy::System, now);
                if cancelled.is_some() {
                    s.cancelled = cancelled;
                }
                Ok(Change::new(&s.package, sub_rtdn(13, &token), &token, None))
            }
            Action::Revoke { token } => {
                let package = books.package_of(&token)?;
                let order_id = books.void_subscription(
                    &token,
                    VoidedSource::Developer,
                    VoidedReason::Other,
                    CancelledBy::Developer,
                    now,
                )?;
                Ok(Change::new(
                    &package,
                    sub_rtdn(12, &token),
                    &token,
                    Some(order_id),
                ))
            }
            Action::ChangePlan { token, to } => {
                let old = books.sub_mut(&token)?;
                if !matches!(
                    old.state,
                    SubState::Active | SubState::Canceled | SubState::InGracePeriod
                ) {
                    return Err(wrong_state(&token, "change the plan of", old.state.name()));
                }
                if old.package != to.package {
                    return Err(PlayError::Invalid(format!(
                        "a plan change stays in package {:?}",
                        old.package
                    )));
                }
                let mut to = to;
                to.pending = false;
                if to.obfuscated_account_id.is_none() {
                    to.obfuscated_account_id = old.account_id.clone();
                }
                if to.obfuscated_profile_id.is_none() {
                    to.obfuscated_profile_id = old.profile_id.clone();
                }
                books::end_now(old, CancelledBy::Replacement, now);
                let change = self.subscribe_in(books, &to, now, None)?;
                if let Some(new) = change.token.as_deref().and_then(|t| books.subs.get_mut(t)) {
                    new.linked_token = Some(token.clone());
                }
                Ok(change)
            }
            Action::Resubscribe { token } => {
                let old = books.sub_mut(&token)?;
                if old.state != SubState::Expired {
                    return Err(wrong_state(&token, "resubscribe to", old.state.name()));
                }
                let plan = Subscribe {
                    package: old.package.clone(),
                    product_id: old.product_id.clone(),
                    base_plan_id: old.base_plan_id.clone(),
                    offer_id: old.offer_id.clone(),
                    offer_tags: old.offer_tags.clone(),
                    period: old.period,
                    obfuscated_account_id: None,
                    obfuscated_profile_id: None,
                    pending: false,
                    test: old.test,
                    price_micros: old.price_micros,
                };
                let out_of_app = (
                    token.clone(),
                    old.account_id.clone(),
                    old.profile_id.clone(),
                );
                self.subscribe_in(books, &plan, now, Some(out_of_app))
            }
            Action::Refund { token, refund } => {
                let package = books.package_of(&token)?;
                if books.subs.contains_key(&token) {
                    if refund.quantity.is_some() {
                        return Err(PlayError::Invalid(
                            "subscriptions are refunded whole; leave the quantity out".into(),
                        ));
                    }
                    let by = if refund.source == VoidedSource::Developer {
                        CancelledBy::Developer
                    } else {
                        CancelledBy::System
                    };
                    let order_id =
                        books.void_subscription(&token, refund.source, refund.reason, by, now)?;
                    let rtdn = Rtdn::Voided {
                        token: token.clone(),
                        order_id: order_id.clone(),
                        product_type: 1,
                        refund_type: 1,
                    };
                    return Ok(Change::new(&package, Some(rtdn), &token, Some(order_id)));
                }
                let voided = books.void_one_time(
                    &token,
                    refund.quantity,
                    refund.source,
                    refund.reason,
                    now,
                )?;
                Ok(Change::new(
                    &package,
                    Some(voided.rtdn),
                    &token,
                    Some(voided.order_id),
                ))
            }
            Action::RequestRefundReview { token } => {
                let package = books.package_of(&token)?;
                let (order_id, account_id, profile_id) = if let Some(p) = books.one_time.get(&token)
                {
                    (
                        Some(p.order_id.clone()),
                        p.account_id.clone(),
                        p.profile_id.clone(),
                    )
                } else {
                    let s = books.sub_mut(&token)?;
                    (
                        s.orders.last().cloned(),
                        s.account_id.clone(),
                        s.profile_id.clone(),
                    )
                };
                let order = order_id
                    .as_ref()
                    .and_then(|id| books.orders.get_mut(id))
                    .filter(|o| {
                        matches!(
                            o.state,
                            OrderState::Processed | OrderState::PartiallyRefunded
                        )
                    })
                    .ok_or_else(|| wrong_state(&token, "ask for a refund review of", "unpaid"))?;
                let pending = books::opaque_token(48);
                order.pending_refund_token = Some(pending.clone());
                order.last_event_ms = now;
                let order_id = order.id.clone();
                let rtdn = Rtdn::RefundReview {
                    pending_refund_token: pending.clone(),
                    order_id: order_id.clone(),
                    account_id,
                    profile_id,
                };
                let mut change = Change::new(&package, Some(rtdn), &token, Some(order_id));
                change.pending_refund_token = Some(pending);
                Ok(change)
            }
            Action::TestNotification { package } => {
                self.check_package(&package)?;
                Ok(Change {
                    package,
                    rtdn: Some(Rtdn::Test),
                    token: None,
                    order_id: None,
                    pending_refund_token: None,
                })
            }
        }
    }

    fn buy_in(&self, books: &mut Books, b: &Buy, now: i64) -> Result<Change, PlayError> {
        self.check_package(&b.package)?;
        if b.product_id.trim().is_empty() {
            return Err(PlayError::Invalid(
                "a purchase needs a product id (sku)".into(),
            ));
        }
        if b.quantity == 0 || b.quantity > MAX_QUANTITY {
            return Err(PlayError::Invalid(format!(
                "a quantity of {} is not possible: 1 to {MAX_QUANTITY}",
                b.quantity
            )));
        }
        if b.unit_price_micros < 0 {
            return Err(PlayError::Invalid("a price cannot be negative".into()));
        }
        let token = books::new_purchase_token();
        let order_id = books.new_order_id();
        books.orders.insert(
            order_id.clone(),
            Order {
                id: order_id.clone(),
                package: b.package.clone(),
                token: token.clone(),
                product_id: b.product_id.clone(),
                kind: OrderKind::OneTime {
                    purchase_option_id: b.purchase_option_id.clone(),
                    offer_id: b.offer_id.clone(),
                    quantity: b.quantity,
                },
                state: if b.pending {
                    OrderState::Pending
                } else {
                    OrderState::Processed
                },
                created_ms: now,
                last_event_ms: now,
                total_micros: b.unit_price_micros * i64::from(b.quantity),
                processed_ms: (!b.pending).then_some(now),
                cancelled_ms: None,
                refund: None,
                partial_refunds: Vec::new(),
                sales_channel: "IN_APP",
                pending_refund_token: None,
            },
        );
        books.one_time.insert(
            token.clone(),
            OneTime {
                token: token.clone(),
                package: b.package.clone(),
                product_id: b.product_id.clone(),
                quantity: b.quantity,
                refundable: b.quantity,
                order_id: order_id.clone(),
                state: if b.pending {
                    OneTimeState::Pending
                } else {
                    OneTimeState::Purchased
                },
                created_ms: now,
                completed_ms: (!b.pending).then_some(now),
                acknowledged: false,
                consumed: false,
                developer_payload: None,
                account_id: b.obfuscated_account_id.clone(),
                profile_id: b.obfuscated_profile_id.clone(),
                region_code: REGION.into(),
                test: b.test,
                purchase_option_id: b.purchase_option_id.clone(),
                offer_id: b.offer_id.clone(),
                offer_tags: b.offer_tags.clone(),
                offer_token: books::opaque_token(48),
            },
        );
        let rtdn = Rtdn::OneTime {
            notification_type: 1,
            token: token.clone(),
            sku: b.product_id.clone(),
        };
        Ok(Change::new(&b.package, Some(rtdn), &token, Some(order_id)))
    }

    /// A new subscription (bought in the app, or in the Play Store when `out_of_app` names the
    /// expired one it follows).
    fn subscribe_in(
        &self,
        books: &mut Books,
        p: &Subscribe,
        now: i64,
        out_of_app: Option<(String, Option<String>, Option<String>)>,
    ) -> Result<Change, PlayError> {
        self.check_package(&p.package)?;
        if p.product_id.trim().is_empty() || p.base_plan_id.trim().is_empty() {
            return Err(PlayError::Invalid(
                "a subscription needs a product id and a base plan id".into(),
            ));
        }
        if p.price_micros < 0 {
            return Err(PlayError::Invalid("a price cannot be negative".into()));
        }
        let token = books::new_purchase_token();
        let order_id = books.new_order_id();
        let end = p.period.after(now);
        let sales_channel = if out_of_app.is_some() {
            "PLAY_STORE"
        } else {
            "IN_APP"
        };
        books.orders.insert(
            order_id.clone(),
            Order {
                id: order_id.clone(),
                package: p.package.clone(),
                token: token.clone(),
                product_id: p.product_id.clone(),
                kind: OrderKind::Subscription {
                    base_plan_id: p.base_plan_id.clone(),
                    offer_id: p.offer_id.clone(),
                    start_ms: now,
                    end_ms: end,
                },
                state: if p.pending {
                    OrderState::Pending
                } else {
                    OrderState::Processed
                },
                created_ms: now,
                last_event_ms: now,
                total_micros: p.price_micros,
                processed_ms: (!p.pending).then_some(now),
                cancelled_ms: None,
                refund: None,
                partial_refunds: Vec::new(),
                sales_channel,
                pending_refund_token: None,
            },
        );
        books.subs.insert(
            token.clone(),
            Sub {
                token: token.clone(),
                package: p.package.clone(),
                product_id: p.product_id.clone(),
                base_plan_id: p.base_plan_id.clone(),
                offer_id: p.offer_id.clone(),
                offer_tags: p.offer_tags.clone(),
                period: p.period,
                state: if p.pending {
                    SubState::Pending
                } else {
                    SubState::Active
                },
                created_ms: now,
                start_ms: (!p.pending).then_some(now),
                paid_until: end,
                expiry_ms: end,
                auto_renew: true,
                acknowledged: false,
                developer_payload: None,
                first_order: order_id.clone(),
                renewals: 0,
                orders: if p.pending {
                    Vec::new()
                } else {
                    vec![order_id.clone()]
                },
                pending_order: None,
                linked_token: None,
                cancelled: None,
                auto_resume_ms: None,
                account_id: p.obfuscated_account_id.clone(),
                profile_id: p.obfuscated_profile_id.clone(),
                out_of_app,
                test: p.test,
                region_code: REGION.into(),
                price_micros: p.price_micros,
                version: 1,
            },
        );
        // A pending subscription is announced when its payment completes.
        let rtdn = (!p.pending).then(|| Rtdn::Subscription {
            notification_type: 4,
            token: token.clone(),
        });
        Ok(Change::new(&p.package, rtdn, &token, Some(order_id)))
    }
}

fn confirm(books: &mut Books, token: &str, now: i64) -> Result<Change, PlayError> {
    if let Some(p) = books.one_time.get_mut(token) {
        if p.state != OneTimeState::Pending {
            return Err(wrong_state(token, "confirm", p.state.name()));
        }
        p.state = OneTimeState::Purchased;
        p.completed_ms = Some(now);
        let (package, order_id, sku) =
            (p.package.clone(), p.order_id.clone(), p.product_id.clone());
        if let Some(o) = books.orders.get_mut(&order_id) {
            o.state = OrderState::Processed;
            o.processed_ms = Some(now);
            o.last_event_ms = now;
        }
        let rtdn = Rtdn::OneTime {
            notification_type: 1,
            token: token.to_owned(),
            sku,
        };
        return Ok(Change::new(&package, Some(rtdn), token, Some(order_id)));
    }
    let s = books.sub_mut(token)?;
    if s.state != SubState::Pending {
        return Err(wrong_state(token, "confirm", s.state.name()));
    }
    let end = s.period.after(now);
    s.state = SubState::Active;
    s.start_ms = Some(now);
    s.paid_until = end;
    s.expiry_ms = end;
    s.orders = vec![s.first_order.clone()];
    s.version += 1;
    let (package, order_id) = (s.package.clone(), s.first_order.clone());
    if let Some(o) = books.orders.get_mut(&order_id) {
        o.state = OrderState::Processed;
        o.processed_ms = Some(now);
        o.last_event_ms = now;
        if let OrderKind::Subscription {
            start_ms, end_ms, ..
        } = &mut o.kind
        {
            *start_ms = now;
            *end_ms = end;
        }
    }
    Ok(Change::new(
        &package,
        sub_rtdn(4, token),
        token,
        Some(order_id),
    ))
}

fn cancel_pending(books: &mut Books, token: &str, now: i64) -> Result<Change, PlayError> {
    let (package, order_id, rtdn) = if let Some(p) = books.one_time.get_mut(token) {
        if p.state != OneTimeState::Pending {
            return Err(wrong_state(
                token,
                "cancel the pending purchase",
                p.state.name(),
            ));
        }
        p.state = OneTimeState::Cancelled;
        let rtdn = Rtdn::OneTime {
            notification_type: 2,
            token: token.to_owned(),
            sku: p.product_id.clone(),
        };
        (p.package.clone(), p.order_id.clone(), Some(rtdn))
    } else {
        let s = books.sub_mut(token)?;
        if s.state != SubState::Pending {
            return Err(wrong_state(
                token,
                "cancel the pending purchase",
                s.state.name(),
            ));
        }
        s.state = SubState::PendingPurchaseCanceled;
        s.auto_renew = false;
        s.expiry_ms = s.expiry_ms.min(now);
        s.version += 1;
        (
            s.package.clone(),
            s.first_order.clone(),
            sub_rtdn(20, token),
        )
    };
    if let Some(o) = books.orders.get_mut(&order_id) {
        o.state = OrderState::Canceled;
        o.cancelled_ms = Some(now);
        o.last_event_ms = now;
    }
    Ok(Change::new(&package, rtdn, token, Some(order_id)))
}

fn renew(books: &mut Books, token: &str, now: i64) -> Result<Change, PlayError> {
    let s = books.sub_mut(token)?;
    if !matches!(s.state, SubState::Active | SubState::Paused) || !s.auto_renew {
        return Err(wrong_state(token, "renew", s.state.name()));
    }
    let start = s.paid_until.max(now);
    paid_period(books, token, start, now, 2)
}

fn recover(books: &mut Books, token: &str, now: i64) -> Result<Change, PlayError> {
    let s = books.sub_mut(token)?;
    // From grace the period runs from the original renewal date; from hold it restarts now.
    let start = match s.state {
        SubState::InGracePeriod => s.paid_until,
        SubState::OnHold => now,
        state => return Err(wrong_state(token, "recover", state.name())),
    };
    paid_period(books, token, start, now, 1)
}

/// A renewal charged: a new paid period from `start`, the renewal order processed, ACTIVE.
fn paid_period(
    books: &mut Books,
    token: &str,
    start: i64,
    now: i64,
    notification_type: u8,
) -> Result<Change, PlayError> {
    let s = books.sub_mut(token)?;
    let end = s.period.after(start);
    let order_id = s
        .pending_order
        .take()
        .unwrap_or_else(|| s.renewal_order_id());
    s.renewals += 1;
    s.orders.push(order_id.clone());
    s.state = SubState::Active;
    s.auto_resume_ms = None;
    s.paid_until = end;
    s.expiry_ms = end;
    s.version += 1;
    let package = s.package.clone();
    let mut order = Order {
        id: order_id.clone(),
        package: package.clone(),
        token: token.to_owned(),
        product_id: s.product_id.clone(),
        kind: OrderKind::Subscription {
            base_plan_id: s.base_plan_id.clone(),
            offer_id: s.offer_id.clone(),
            start_ms: start,
            end_ms: end,
        },
        state: OrderState::Processed,
        created_ms: now,
        last_event_ms: now,
        total_micros: s.price_micros,
        processed_ms: Some(now),
        cancelled_ms: None,
        refund: None,
        partial_refunds: Vec::new(),
        sales_channel: "IN_APP",
        pending_refund_token: None,
    };
    // A declined renewal's order was created when it was first declined.
    if let Some(declined) = books.orders.get(&order_id) {
        order.created_ms = declined.created_ms;
    }
    books.orders.insert(order_id.clone(), order);
    Ok(Change::new(
        &package,
        sub_rtdn(notification_type, token),
        token,
        Some(order_id),
    ))
}

/// The declined renewal's order, PENDING, named in the grace or hold context.
fn declined_order(books: &mut Books, token: &str, now: i64) -> Result<(), PlayError> {
    let s = books.sub_mut(token)?;
    s.version += 1;
    if s.pending_order.is_some() {
        return Ok(());
    }
    let id = s.renewal_order_id();
    s.pending_order = Some(id.clone());
    let order = Order {
        id: id.clone(),
        package: s.package.clone(),
        token: token.to_owned(),
        product_id: s.product_id.clone(),
        kind: OrderKind::Subscription {
            base_plan_id: s.base_plan_id.clone(),
            offer_id: s.offer_id.clone(),
            start_ms: s.paid_until,
            end_ms: s.period.after(s.paid_until),
        },
        state: OrderState::Pending,
        created_ms: now,
        last_event_ms: now,
        total_micros: s.price_micros,
        processed_ms: None,
        cancelled_ms: None,
        refund: None,
        partial_refunds: Vec::new(),
        sales_channel: "IN_APP",
        pending_refund_token: None,
    };
    books.orders.insert(id, order);
    Ok(())
}

/// The common actions by name.
impl PlaySim {
    /// The customer buys a one-time product: oneTime RTDN 1.
    pub async fn buy(&self, buy: Buy) -> Result<Outcome, PlayError> {
        self.act(Action::Buy(buy)).await
    }

    /// The customer subscribes: subscription RTDN 4 (none while pending).
    pub async fn subscribe(&self, subscribe: Subscribe) -> Result<Outcome, PlayError> {
        self.act(Action::Subscribe(subscribe)).await
    }

    /// A pending purchase's payment completes.
    pub async fn confirm(&self, token: &str) -> Result<Outcome, PlayError> {
        self.act(Action::Confirm {
            token: token.into(),
        })
        .await
    }

    /// A pending purchase is abandoned.
    pub async fn cancel_pending(&self, token: &str) -> Result<Outcome, PlayError> {
        self.act(Action::CancelPending {
            token: token.into(),
        })
        .await
    }

    /// A subscription renews: RTDN 2.
    pub async fn renew(&self, token: &str) -> Result<Outcome, PlayError> {
        self.act(Action::Renew {
            token: token.into(),
        })
        .await
    }

    /// The customer turns auto-renewal off: RTDN 3.
    pub async fn cancel(&self, token: &str) -> Result<Outcome, PlayError> {
        self.act(Action::Cancel {
            token: token.into(),
            by: CancelledBy::User {
                survey_reason: None,
            },
        })
        .await
    }

    /// A subscription expires: RTDN 13.
    pub async fn expire(&self, token: &str) -> Result<Outcome, PlayError> {
        self.act(Action::Expire {
            token: token.into(),
        })
        .await
    }

    /// A subscription is refunded and revoked now: RTDN 12.
    pub async fn revoke(&self, token: &str) -> Result<Outcome, PlayError> {
        self.act(Action::Revoke {
            token: token.into(),
        })
        .await
    }

    /// A purchase is refunded, whole or in part: a voided purchase RTDN.
    pub async fn refund(&self, token: &str, refund: Refund) -> Result<Outcome, PlayError> {
        self.act(Action::Refund {
            token: token.into(),
            refund,
        })
        .await
    }

    /// The customer files a chargeback Google asks the developer to review.
    pub async fn request_refund_review(&self, token: &str) -> Result<Outcome, PlayError> {
        self.act(Action::RequestRefundReview {
            token: token.into(),
        })
        .await
    }

    /// The Play Console's "Send test notification".
    pub async fn send_test_notification(&self, package: &str) -> Result<Outcome, PlayError> {
        self.act(Action::TestNotification {
            package: package.into(),
        })
        .await
    }
}

/// Reading the books, as the API would answer (without its checks).
impl PlaySim {
    /// A one-time purchase's `ProductPurchaseV2`.
    pub fn product_purchase(&self, token: &str) -> Option<Value> {
        lock(&self.books).one_time.get(token).map(OneTime::v2_json)
    }

    /// A subscription's `SubscriptionPurchaseV2`.
    pub fn subscription_purchase(&self, token: &str) -> Option<Value> {
        lock(&self.books).subs.get(token).map(Sub::v2_json)
    }

    /// An order's `Order`.
    pub fn order(&self, order_id: &str) -> Option<Value> {
        lock(&self.books).orders.get(order_id).map(Order::json)
    }

    /// Every voided purchase (partial refunds included), in the order they were recorded.
    pub fn voided_purchases(&self) -> Vec<Value> {
        lock(&self.books).voids.iter().map(|v| v.json()).collect()
    }
}
