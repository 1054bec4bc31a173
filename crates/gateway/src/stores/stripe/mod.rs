//! The Stripe adapter: web purchases through Stripe Checkout.
//!
//! - [`api`]: the Stripe API client (customers, Checkout Sessions, objects, the events list).
//! - Webhooks: `Stripe-Signature` checked against the app's signing secret
//!   ([`gateway_core::stripe::signature`]), the event read as the pinned API version writes it, and
//!   turned into facts by [`gateway_core::stripe::facts`]. An event about a refund, a dispute or an
//!   invoice names only a PaymentIntent or a Subscription: the adapter reads that object from Stripe
//!   for the price and the order it was bought under, which the gateway put in its `metadata` at
//!   checkout ([`META_PRICE`], [`META_ORDER`]). A thin event (`v2.core.event`) is read through the
//!   object it names.
//! - Recovery: `GET /v1/events` (Stripe keeps 30 days), each event taken as a delivered one is.
//!
//! A one-time payment's lineage is its PaymentIntent; a subscription's is the Subscription.

pub mod api;

use gateway_core::{
    Product, PurchaseFacts, StoreEvent, Timestamp,
    ids::Store,
    stripe::{
        facts::{self as stripe_facts, Stated},
        models::{
            Charge, CheckoutSession, Dispute, Event, Invoice, PaymentIntent, Refund, Subscription,
            ThinEvent,
        },
        signature,
    },
};
use serde::{Deserialize, Serialize};

use self::api::StripeApi;
use super::{Delivery, Names, Notice, Page, Problem, StoreError, StoreResult, Transaction};
use crate::model::App;

pub const NAMES: Names = Names {
    title: "Stripe",
    client: "stripe.client",
    restore: "stripe.restore",
    notification: "stripe.notification",
    order_token: "metadata.order_token",
    cursor: "stripe.events",
    refund: "stripe.refund",
};

/// The `metadata` key of the Stripe price a checkout sold (on the session, its PaymentIntent and
/// its Subscription).
pub const META_PRICE: &str = "gateway_price";
/// The `metadata` key of the order (its `app_account_token`) a checkout was started for.
pub const META_ORDER: &str = "gateway_order";
/// The `metadata` keys of the app and the customer, for the operator reading Stripe's dashboard.
pub const META_APP: &str = "gateway_app";
pub const META_CUSTOMER: &str = "gateway_customer";

/// How far back Stripe lists events (30 days), said as a sentence says it, and what an app lacks
/// to read them.
pub const HISTORY: (i64, &str, &str) = (
    30 * 86_400_000,
    "the 30 days Stripe lists events for",
    "This app has no Stripe secret key (`stripe.secret_key`).",
);

/// A Stripe purchase as an event (or a read) states it: its lineage and what it was sold as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripePurchase {
    /// The PaymentIntent of a one-time payment, or the Subscription.
    pub lineage: String,
    pub subscription: bool,
    /// The Stripe price: the catalog's `stripe_price`.
    pub price: String,
    /// The order's `app_account_token`, from the metadata the checkout set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    pub livemode: bool,
    /// A refund of part of a payment, which ends the purchase when its product says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_refund: Option<StoreEvent>,
}

impl StripePurchase {
    pub fn facts(&self, purchase_id: String, product: &Product) -> PurchaseFacts {
        let revoke = product.partial_refund == gateway_core::catalog::PartialRefund::Revoke;
        PurchaseFacts {
            id: purchase_id,
            store: Store::Stripe,
            product_id: product.id.clone(),
            store_transaction_id: self.lineage.clone(),
            environment: Some(
                if self.livemode {
                    "Production"
                } else {
                    "Sandbox"
                }
                .to_owned(),
            ),
            terms: Some(product.terms()),
            settled: None,
            events: self
                .partial_refund
                .iter()
                .filter(|_| revoke)
                .cloned()
                .collect(),
        }
    }
}

/// What a Checkout Session is started with.
#[derive(Debug, Clone, Copy)]
pub struct Checkout<'a> {
    pub order_id: &'a str,
    /// The order's `app_account_token`, which binds what Stripe sells to the customer.
    pub order_token: &'a str,
    pub app_user_id: &'a str,
    /// The customer's Stripe customer (`cus_…`).
    pub account: &'a str,
    pub price: &'a str,
    pub subscription: bool,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
}

/// True when the app can call Stripe.
pub fn can_poll(app: &App) -> bool {
    app.settings
        .stripe
        .as_ref()
        .is_some_and(|s| s.secret_key.is_some())
}

/// The Stripe adapter.
#[derive(Debug)]
pub struct StripeStore {
    pub api: StripeApi,
}

fn malformed(what: &str) -> StoreError {
    StoreError::new(
        Problem::Malformed,
        "malformed_notification",
        format!("The Stripe event {what}."),
    )
}

fn seconds(t: i64) -> Timestamp {
    Timestamp::from_millis(t.saturating_mul(1000))
}

fn object<T: serde::de::DeserializeOwned>(e: &Event) -> StoreResult<T> {
    serde_json::from_value(e.data.object.clone())
        .map_err(|_| malformed(&format!("of type {} holds no object of that type", e.kind)))
}

impl StripeStore {
    pub fn new(http: reqwest::Client) -> Self {
        StripeStore {
            api: StripeApi::new(http),
        }
    }

    /// Checks a webhook's signature and reads its event (a thin one through the object it names).
    pub async fn verify_notification(
        &self,
        app: &App,
        delivery: Delivery<'_>,
        now: Timestamp,
    ) -> StoreResult<Notice> {
        let config = app.settings.stripe.as_ref().ok_or_else(|| {
            StoreError::not_configured(
                "This app has no `stripe` settings; it takes no Stripe events.",
            )
        })?;
        let previous = config.previous_webhook_secret.as_ref().filter(|_| {
            config
                .previous_webhook_secret_expires_at
                .is_some_and(|t| t > now)
        });
        let secrets: Vec<&str> = config
            .webhook_secret
            .iter()
            .chain(previous)
            .map(|s| s.expose())
            .collect();
        signature::verify(
            delivery.signature,
            delivery.body,
            &secrets,
            now.millis() / 1000,
        )
        .map_err(|e| {
            let code = match e {
                signature::SignatureError::Missing => "missing_signature",
                signature::SignatureError::Stale { .. } => "stale_signature",
                _ => "invalid_signature",
            };
            StoreError::new(Problem::Unauthenticated, code, format!("Refused: {e}."))
        })?;
        let raw = String::from_utf8_lossy(delivery.body).into_owned();
        let value: serde_json::Value =
            serde_json::from_slice(delivery.body).map_err(|_| malformed("is not JSON"))?;
        let event = match value["object"].as_str() {
            Some("event") => {
                serde_json::from_value(value).map_err(|_| malformed("is not an event"))?
            }
            Some("v2.core.event") => {
                let thin: ThinEvent =
                    serde_json::from_value(value).map_err(|_| malformed("is not a thin event"))?;
                self.resolve_thin(app, thin, now).await?
            }
            _ => return Err(malformed("is neither an event nor a thin event")),
        };
        self.notice(app, event, raw).await
    }

    /// A thin event as the snapshot event it stands for: the object it names, read now.
    async fn resolve_thin(&self, app: &App, thin: ThinEvent, now: Timestamp) -> StoreResult<Event> {
        let kind = thin
            .kind
            .strip_prefix("v1.")
            .unwrap_or(&thin.kind)
            .to_owned();
        let object: serde_json::Value = match &thin.related_object {
            Some(r) => {
                let path = r
                    .url
                    .clone()
                    .unwrap_or_else(|| format!("/v1/{}s/{}", r.kind, r.id));
                self.api.object(app, &path).await?
            }
            // A thin event about nothing the gateway sells (an account, a meter): kept, not decided.
            None => serde_json::json!({}),
        };
        Ok(Event {
            id: thin.id,
            object: "event".into(),
            api_version: None,
            created: now.millis() / 1000,
            kind,
            data: gateway_core::stripe::models::EventData {
                object,
                previous_attributes: None,
            },
            livemode: thin.livemode,
        })
    }

    /// What an event says: the purchase it is about (read from Stripe where the event names only a
    /// PaymentIntent or a Subscription) and its facts. An event the gateway does not take is kept
    /// with no purchase.
    async fn notice(&self, app: &App, e: Event, raw: String) -> StoreResult<Notice> {
        let at = seconds(e.created);
        let kind = e.kind.as_str();
        let stated: Option<(Stated, Option<StripePurchase>)> = match kind {
            k if k.starts_with("checkout.session.") => {
                let s: CheckoutSession = object(&e)?;
                stripe_facts::session_facts(k, &s, at).map(|st| {
                    let p = s.metadata.get(META_PRICE).map(|price| StripePurchase {
                        lineage: st.lineage.clone(),
                        subscription: false,
                        price: price.clone(),
                        order: s.metadata.get(META_ORDER).cloned(),
                        livemode: e.livemode,
                        partial_refund: None,
                    });
                    (st, p)
                })
            }
            "charge.refunded" => {
                let c: Charge = object(&e)?;
                let partial = stripe_facts::partial_refund(&c, at);
                let stated = stripe_facts::charge_facts(&c, at).or_else(|| {
                    let pi = c.payment_intent.id()?;
                    partial.as_ref().map(|_| Stated {
                        lineage: pi.to_owned(),
                        subscription: false,
                        events: Vec::new(),
                    })
                });
                self.one_time(app, stated, e.livemode)
                    .await?
                    .map(|(st, p)| {
                        let p = p.map(|p| StripePurchase {
                            partial_refund: partial,
                            ..p
                        });
                        (st, p)
                    })
            }
            k if k.starts_with("refund.") => {
                let r: Refund = object(&e)?;
                self.one_time(app, stripe_facts::refund_facts(k, &r, at), e.livemode)
                    .await?
            }
            k if k.starts_with("charge.dispute.") => {
                let d: Dispute = object(&e)?;
                self.one_time(app, stripe_facts::dispute_facts(k, &d, at), e.livemode)
                    .await?
            }
            k if k.starts_with("customer.subscription.") => {
                let s: Subscription = object(&e)?;
                let p = subscription_purchase(&s, e.livemode);
                Some((stripe_facts::subscription_facts(&s, at), p))
            }
            k if k.starts_with("invoice.") => {
                let i: Invoice = object(&e)?;
                match stripe_facts::invoice_facts(k, &i, at) {
                    Some(st) => {
                        let path = format!("/v1/subscriptions/{}", st.lineage);
                        let s: Subscription = self.api.object(app, &path).await?;
                        let p = subscription_purchase(&s, e.livemode);
                        Some((st, p))
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let cause = format!("Stripe event {} ({}).", e.kind, e.id);
        let (transaction, events) = match stated {
            Some((st, Some(p))) => (Some(Transaction::Stripe(p)), st.events),
            // Nothing the gateway sold (no price in its metadata): kept, not decided.
            _ => (None, Vec::<StoreEvent>::new()),
        };
        Ok(Notice {
            store: Store::Stripe,
            id: e.id,
            raw,
            cause,
            transaction,
            events,
            owed: Vec::new(),
            transfer: None,
            remark: None,
            account: None,
        })
    }

    /// The purchase a refund or dispute names by its PaymentIntent: a one-time payment (the price
    /// and order in the PaymentIntent's metadata, put there at checkout), or a payment of a
    /// subscription's invoice, found through the InvoicePayment that links them (an invoice's
    /// PaymentIntent carries no metadata), whose facts are then the subscription's when it paid the
    /// current period (a past period's refund changes nothing).
    async fn one_time(
        &self,
        app: &App,
        stated: Option<Stated>,
        livemode: bool,
    ) -> StoreResult<Option<(Stated, Option<StripePurchase>)>> {
        let Some(st) = stated else { return Ok(None) };
        let path = format!("/v1/payment_intents/{}", st.lineage);
        let pi: PaymentIntent = self.api.object(app, &path).await?;
        if let Some(price) = pi.metadata.get(META_PRICE) {
            let p = StripePurchase {
                lineage: st.lineage.clone(),
                subscription: false,
                price: price.clone(),
                order: pi.metadata.get(META_ORDER).cloned(),
                livemode,
                partial_refund: None,
            };
            return Ok(Some((st, Some(p))));
        }
        let path = format!(
            "/v1/invoice_payments?payment%5Btype%5D=payment_intent&payment%5Bpayment_intent%5D={}",
            st.lineage
        );
        let payments: gateway_core::stripe::models::List<InvoicePayment> =
            self.api.object(app, &path).await?;
        let Some(invoice) = payments.data.first().and_then(|p| p.invoice.id()) else {
            // Not a payment the gateway sold: kept, not decided.
            return Ok(Some((st, None)));
        };
        let invoice: Invoice = self
            .api
            .object(app, &format!("/v1/invoices/{invoice}"))
            .await?;
        let Some(sub) = invoice.subscription_id() else {
            return Ok(Some((st, None)));
        };
        let s: Subscription = self
            .api
            .object(app, &format!("/v1/subscriptions/{sub}"))
            .await?;
        let p = subscription_purchase(&s, livemode);
        // The money of a past period coming back takes nothing from the period paid for now.
        let current = s.latest_invoice.id() == Some(invoice.id.as_str());
        let st = Stated {
            lineage: s.id.clone(),
            subscription: true,
            events: if current { st.events } else { Vec::new() },
        };
        Ok(Some((st, p)))
    }

    /// A Checkout Session as Stripe holds it now.
    pub async fn session(&self, app: &App, id: &str) -> StoreResult<CheckoutSession> {
        self.api
            .object(app, &format!("/v1/checkout/sessions/{id}"))
            .await
    }

    /// Makes a Stripe customer for a gateway customer.
    pub async fn create_customer(&self, app: &App, app_user_id: &str) -> StoreResult<String> {
        let form = vec![
            (format!("metadata[{META_APP}]"), app.id.to_string()),
            (format!("metadata[{META_CUSTOMER}]"), app_user_id.to_owned()),
        ];
        // Two checkouts racing for a new customer make one Stripe customer (within Stripe's day
        // of idempotency).
        let key = format!("customer-{}-{app_user_id}", app.id);
        Ok(self.api.create_customer(app, form, &key).await?.id)
    }

    /// Starts a Checkout Session for one product: the price and the order in the metadata of the
    /// session and of what it makes (its PaymentIntent, or its Subscription), so every later event
    /// leads back to them.
    pub async fn checkout(&self, app: &App, c: &Checkout<'_>) -> StoreResult<CheckoutSession> {
        let mode = if c.subscription {
            "subscription"
        } else {
            "payment"
        };
        let mut form: api::Form = vec![
            ("mode".into(), mode.into()),
            ("line_items[0][price]".into(), c.price.into()),
            ("line_items[0][quantity]".into(), "1".into()),
            ("customer".into(), c.account.into()),
            ("success_url".into(), c.success_url.into()),
            ("cancel_url".into(), c.cancel_url.into()),
        ];
        if c.app_user_id.len() <= 200 {
            form.push(("client_reference_id".into(), c.app_user_id.into()));
        }
        let carried = if c.subscription {
            "subscription_data[metadata]"
        } else {
            "payment_intent_data[metadata]"
        };
        for (k, v) in [
            (META_PRICE, c.price),
            (META_ORDER, c.order_token),
            (META_APP, app.id.as_str()),
            (META_CUSTOMER, c.app_user_id),
        ] {
            form.push((format!("metadata[{k}]"), v.to_owned()));
            form.push((format!("{carried}[{k}]"), v.to_owned()));
        }
        self.api
            .create_checkout_session(app, form, &format!("checkout-{}", c.order_id))
            .await
    }

    /// Checks the form of a submitted proof: a Checkout Session id alone.
    pub fn check(&self, proof: &super::Proof) -> StoreResult<()> {
        if proof.signed_transaction.is_some()
            || proof.transaction_id.is_some()
            || proof.receipt_data.is_some()
            || proof.purchase_token.is_some()
        {
            return Err(StoreError::new(
                Problem::Malformed,
                "field_not_for_store",
                "Stripe purchases are proved by their `checkout_session_id` alone.",
            ));
        }
        match &proof.checkout_session_id {
            Some(id) => super::text(
                &gateway_core::text::STORE_ID,
                "invalid_checkout_session_id",
                "checkout_session_id",
                Some(id),
            ),
            None => Err(StoreError::new(
                Problem::Malformed,
                "checkout_session_id_required",
                "Send the `checkout_session_id` of the Stripe Checkout the customer finished.",
            )),
        }
    }

    /// A finished Checkout Session, read from Stripe: what its `checkout.session.completed` event
    /// states, without waiting for the event.
    pub async fn verify_submission(
        &self,
        app: &App,
        proof: super::Proof,
    ) -> StoreResult<super::Proven> {
        let id = proof.checkout_session_id.unwrap_or_default();
        let session = self.session(app, &id).await?;
        if session.status.as_deref() != Some("complete") {
            return Err(StoreError::new(
                Problem::Conflict,
                "checkout_not_complete",
                format!(
                    "Checkout Session {id} is {}: the customer has not finished paying.",
                    session.status.as_deref().unwrap_or("open")
                ),
            ));
        }
        let now = Timestamp::from_millis(session.created.saturating_mul(1000));
        let transaction = if session.mode == "subscription" {
            let sub = session.subscription.id().ok_or_else(|| {
                StoreError::unavailable("Stripe has not made the session's subscription yet.")
            })?;
            let s: Subscription = self
                .api
                .object(app, &format!("/v1/subscriptions/{sub}"))
                .await?;
            let p = subscription_purchase(&s, false);
            p.map(|p| {
                (
                    Transaction::Stripe(p),
                    stripe_facts::subscription_facts(&s, now).events,
                )
            })
        } else {
            let livemode = false;
            stripe_facts::session_facts("checkout.session.completed", &session, now).and_then(
                |st| {
                    session.metadata.get(META_PRICE).map(|price| {
                        let p = StripePurchase {
                            lineage: st.lineage.clone(),
                            subscription: false,
                            price: price.clone(),
                            order: session.metadata.get(META_ORDER).cloned(),
                            livemode,
                            partial_refund: None,
                        };
                        (Transaction::Stripe(p), st.events)
                    })
                },
            )
        };
        let Some((transaction, events)) = transaction else {
            return Err(StoreError::new(
                Problem::Refused,
                "unknown_product",
                "This Checkout Session was not started by the gateway: its metadata names no price.",
            ));
        };
        Ok(super::Proven {
            transactions: vec![transaction],
            raw: serde_json::json!({"checkout_session": id, "events": events}).to_string(),
            what: "checkout",
            listing: false,
            owed: Vec::new(),
        })
    }

    /// Refunds at Stripe (`POST /v1/refunds`): a one-time payment whole; a subscription by
    /// cancelling it now and refunding its latest invoice's payment (found through its
    /// InvoicePayment). A pro-rata refund is left to Stripe's dashboard.
    pub async fn refund(
        &self,
        app: &App,
        order: super::RefundOrder<'_>,
        _now: Timestamp,
    ) -> StoreResult<Transaction> {
        if order.prorated {
            return Err(StoreError::new(
                Problem::Conflict,
                "store_cannot_refund",
                "The gateway refunds Stripe payments whole; refund a share in Stripe's dashboard.",
            ));
        }
        if order.subscription {
            return self.refund_subscription(app, order.lineage).await;
        }
        let form = vec![("payment_intent".to_owned(), order.lineage.to_owned())];
        let key = format!("refund-{}", order.lineage);
        let _: Refund = self.api.create(app, "/v1/refunds", form, &key).await?;
        let pi: PaymentIntent = self
            .api
            .object(app, &format!("/v1/payment_intents/{}", order.lineage))
            .await?;
        Ok(Transaction::Stripe(StripePurchase {
            lineage: order.lineage.to_owned(),
            subscription: false,
            price: pi
                .metadata
                .get(META_PRICE)
                .cloned()
                .or_else(|| order.sku.map(str::to_owned))
                .unwrap_or_default(),
            order: pi.metadata.get(META_ORDER).cloned(),
            livemode: false,
            partial_refund: None,
        }))
    }

    /// Cancels a subscription now and refunds its latest invoice's payment.
    async fn refund_subscription(&self, app: &App, id: &str) -> StoreResult<Transaction> {
        let s: Subscription = self
            .api
            .object(app, &format!("/v1/subscriptions/{id}"))
            .await?;
        if let Some(invoice) = s.latest_invoice.id() {
            let path = format!("/v1/invoice_payments?invoice={invoice}");
            let payments: gateway_core::stripe::models::List<InvoicePayment> =
                self.api.object(app, &path).await?;
            if let Some(pi) = payments
                .data
                .iter()
                .find_map(|p| p.payment.payment_intent.id())
            {
                let form = vec![("payment_intent".to_owned(), pi.to_owned())];
                let key = format!("refund-{pi}");
                let _: Refund = self.api.create(app, "/v1/refunds", form, &key).await?;
            }
        }
        let ended = if s.status == "canceled" {
            s
        } else {
            self.api.cancel_subscription(app, id).await?
        };
        subscription_purchase(&ended, false)
            .map(Transaction::Stripe)
            .ok_or_else(|| {
                StoreError::new(
                    Problem::Refused,
                    "unknown_product",
                    "This subscription was not sold by the gateway: it names no price.",
                )
            })
    }

    /// A page of Stripe's events list for `window`, newest first, each taken as a delivered one is.
    pub async fn poll(
        &self,
        app: &App,
        (start, end): (Timestamp, Timestamp),
        token: Option<&str>,
    ) -> StoreResult<Page> {
        let page = self
            .api
            .events(app, (start.millis() / 1000, end.millis() / 1000), token)
            .await?;
        let next = if page.has_more {
            page.data.last().map(|e| e.id.clone())
        } else {
            None
        };
        let mut notices = Vec::with_capacity(page.data.len());
        for e in page.data {
            let raw = serde_json::to_string(&e).unwrap_or_default();
            notices.push(self.notice(app, e, raw).await);
        }
        Ok(Page {
            notices,
            next: Ok(next),
        })
    }
}

/// An InvoicePayment (`GET /v1/invoice_payments`): the invoice it paid and the payment that paid it.
#[derive(Debug, Clone, Deserialize)]
struct InvoicePayment {
    #[serde(default)]
    invoice: gateway_core::stripe::models::Expandable,
    #[serde(default)]
    payment: InvoicePaymentPayment,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct InvoicePaymentPayment {
    #[serde(default)]
    payment_intent: gateway_core::stripe::models::Expandable,
}

/// A subscription the gateway sold: its price and order from its metadata.
fn subscription_purchase(s: &Subscription, livemode: bool) -> Option<StripePurchase> {
    let price = s
        .metadata
        .get(META_PRICE)
        .cloned()
        .or_else(|| s.price().map(str::to_owned))?;
    Some(StripePurchase {
        lineage: s.id.clone(),
        subscription: true,
        price,
        order: s.metadata.get(META_ORDER).cloned(),
        livemode,
        partial_refund: None,
    })
}
