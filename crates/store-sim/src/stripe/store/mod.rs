//! The actions of the simulated Stripe, as the customer and as Stripe take them: each changes the
//! books and sends the events Stripe sends for it, in Stripe's order.
//!
//! | action | objects after | events |
//! |---|---|---|
//! | pay a payment-mode session now | PaymentIntent + Charge succeeded; session complete, paid | `charge.succeeded`, `payment_intent.succeeded`, `checkout.session.completed` |
//! | pay one later (bank transfer) | PaymentIntent processing, Charge pending; session complete, unpaid | `checkout.session.completed` |
//! | settle a later payment | succeeded and paid, or failed | `checkout.session.async_payment_succeeded` / `_failed` |
//! | pay a subscription-mode session | Subscription active, Invoice paid (with its PaymentIntent + Charge) | `customer.subscription.created`, `invoice.paid`, `checkout.session.completed` |
//! | expire an open session | session expired | `checkout.session.expired` |
//! | refund (whole or part) | Refund succeeded; charge `amount_refunded` grows, `refunded` when whole | `refund.created`, `charge.refunded` |
//! | a refund fails | Refund failed; charge `amount_refunded` shrinks | `refund.failed`, `refund.updated` |
//! | dispute a charge | Dispute needs_response | `charge.dispute.created` |
//! | close a dispute | Dispute won or lost | `charge.dispute.closed` |
//! | renew | new Invoice paid (`subscription_cycle`), item periods advanced (keeping the anchor's day) | `invoice.paid`, `customer.subscription.updated` |
//! | fail a renewal | new Invoice open, payment failed; subscription past_due, periods advanced | `invoice.payment_failed`, `customer.subscription.updated` |
//! | renew a past-due one | its open Invoice paid; active again, same period | `invoice.paid`, `customer.subscription.updated` |
//! | fail a past-due one again | the open Invoice's `attempt_count` grows | `invoice.payment_failed` |
//! | cancel at period end | `cancel_at_period_end` | `customer.subscription.updated` |
//! | cancel now | subscription canceled | `customer.subscription.deleted` |
//!
//! This file is the state machine; `http.rs` is the `/sim/stripe` control surface and the hosted
//! checkout page.

mod http;

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::{
    Delivery, StripeError, StripeSim,
    books::{self, Books, Payment, PaymentState},
    lock, new_id,
    webhooks::record,
};

/// The email a customer who gave none pays with.
const DEFAULT_EMAIL: &str = "jenny.rosen@example.com";

/// How the customer pays a payment-mode session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayMode {
    /// By card: paid at once.
    #[default]
    Now,
    /// By bank transfer: the session completes unpaid and the payment settles later
    /// ([`StripeSim::settle_async`]).
    Async,
}

/// One event an action sent, and its deliveries.
#[derive(Debug, Clone, Serialize)]
pub struct Emitted {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub event: Value,
    pub deliveries: Vec<Delivery>,
}

impl Emitted {
    pub(in crate::stripe) fn new(event: &Value, deliveries: Vec<Delivery>) -> Self {
        Self {
            id: event["id"].as_str().unwrap_or_default().to_owned(),
            kind: event["type"].as_str().unwrap_or_default().to_owned(),
            event: event.clone(),
            deliveries,
        }
    }
}

/// What an action did: the objects it made or touched, and the events it sent, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkout_session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_intent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispute: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    pub events: Vec<Emitted>,
}

impl Outcome {
    /// The types of the events sent, in order.
    pub fn event_types(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.kind.as_str()).collect()
    }
}

/// An action's changes to the books, with the events they call for (already in the log), and
/// what it takes to undo them.
struct Change<'a> {
    books: &'a mut Books,
    now: i64,
    /// How many endpoints each event is owed to (`pending_webhooks`).
    pending: usize,
    outcome: Outcome,
    events: Vec<Value>,
    /// Each object as it was before the action first touched it (`None`: it did not exist).
    undo: HashMap<String, Option<Value>>,
    /// The length of the event log before the action.
    logged: usize,
}

impl Change<'_> {
    fn emit(&mut self, kind: &str, object: &Value, previous: Option<Value>) {
        let event = record(self.books, self.now, kind, object, previous, self.pending);
        self.events.push(event);
    }

    /// An object to change, kept for [`Change::rollback`].
    fn get_mut(&mut self, kind: &'static str, id: &str) -> Result<&mut Value, StripeError> {
        let original = self.books.get(kind, id)?.clone();
        self.undo.entry(id.to_owned()).or_insert(Some(original));
        self.books.get_mut(kind, id)
    }

    /// Keeps a new or changed object, remembering what was there for [`Change::rollback`].
    fn put(&mut self, object: Value) {
        if let Some(id) = object["id"].as_str() {
            let before = self.books.objects.get(id).cloned();
            self.undo.entry(id.to_owned()).or_insert(before);
        }
        self.books.put(object);
    }

    /// Puts the books back as they were before the action.
    fn rollback(self) {
        for (id, before) in self.undo {
            match before {
                Some(object) => {
                    self.books.objects.insert(id, object);
                }
                None => {
                    self.books.objects.remove(&id);
                }
            }
        }
        self.books.events.truncate(self.logged);
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

impl StripeSim {
    /// Expires the open sessions that time has passed (as Stripe does at their `expires_at`), then
    /// takes the action.
    async fn act(
        &self,
        apply: impl FnOnce(&mut Change<'_>) -> Result<(), StripeError>,
    ) -> Result<Outcome, StripeError> {
        self.tick().await;
        self.apply(apply).await
    }

    /// Runs `apply` on the books under one lock (undoing it all if it fails), then delivers the
    /// events it recorded, in order.
    async fn apply(
        &self,
        apply: impl FnOnce(&mut Change<'_>) -> Result<(), StripeError>,
    ) -> Result<Outcome, StripeError> {
        let pending = self.hooks.endpoint_count();
        let now = self.now();
        let (mut outcome, events) = {
            let mut books = lock(&self.books);
            let logged = books.events.len();
            let mut change = Change {
                books: &mut books,
                now,
                pending,
                outcome: Outcome::default(),
                events: Vec::new(),
                undo: HashMap::new(),
                logged,
            };
            if let Err(e) = apply(&mut change) {
                change.rollback();
                return Err(e);
            }
            (change.outcome, change.events)
        };
        for event in events {
            let deliveries = self.deliver(&event).await;
            outcome.events.push(Emitted::new(&event, deliveries));
        }
        Ok(outcome)
    }

    /// Expires every open Checkout Session whose `expires_at` has come, sending
    /// `checkout.session.expired` for each (oldest first). Actions do this first; tests that only
    /// move the clock call it (or `POST /sim/stripe/tick`).
    pub async fn tick(&self) -> Vec<Outcome> {
        let now = self.now();
        let mut due: Vec<(i64, String)> = lock(&self.books)
            .objects
            .values()
            .filter(|o| {
                o["object"] == "checkout.session"
                    && o["status"] == "open"
                    && o["expires_at"].as_i64().is_some_and(|t| t <= now)
            })
            .map(|o| (o["created"].as_i64().unwrap_or_default(), str_of(&o["id"])))
            .collect();
        due.sort();
        let mut outcomes = Vec::new();
        for (_, id) in due {
            if let Ok(o) = self.apply(|c| expire(c, &id)).await {
                outcomes.push(o);
            }
        }
        outcomes
    }

    /// The customer pays a Checkout Session (as the hosted page's buttons do). Payment mode
    /// makes a PaymentIntent and its Charge (with `payment_intent_data.metadata`), succeeded
    /// ([`PayMode::Now`]) or still processing ([`PayMode::Async`]); subscription mode makes the
    /// Subscription (with `subscription_data.metadata`) and its first paid Invoice.
    pub async fn pay(&self, session_id: &str, mode: PayMode) -> Result<Outcome, StripeError> {
        self.act(|c| pay(c, session_id, mode)).await
    }

    /// A later payment (bank transfer) settles: it succeeds (the session becomes paid) or fails.
    pub async fn settle_async(
        &self,
        session_id: &str,
        succeeded: bool,
    ) -> Result<Outcome, StripeError> {
        self.act(|c| settle(c, session_id, succeeded)).await
    }

    /// An open session expires unpaid.
    pub async fn expire(&self, session_id: &str) -> Result<Outcome, StripeError> {
        self.act(|c| expire(c, session_id)).await
    }

    /// Refunds a payment (a PaymentIntent or a Charge): `amount` in the smallest unit, or all
    /// that is left when `None`.
    pub async fn refund(&self, payment: &str, amount: Option<i64>) -> Result<Outcome, StripeError> {
        self.act(|c| refund(c, payment, amount)).await
    }

    /// A succeeded refund fails afterwards (the card was closed, say): the money is back with
    /// the merchant.
    pub async fn fail_refund(&self, refund_id: &str) -> Result<Outcome, StripeError> {
        self.act(|c| {
            let refund = c.get_mut("refund", refund_id)?;
            if refund["status"] != "succeeded" {
                return Err(StripeError::InvalidState(format!(
                    "refund {refund_id} is {}, not succeeded, so it cannot fail",
                    str_of(&refund["status"])
                )));
            }
            refund["status"] = "failed".into();
            refund["failure_reason"] = "expired_or_canceled_card".into();
            refund["failure_balance_transaction"] = new_id("txn").into();
            let refund = refund.clone();
            let amount = refund["amount"].as_i64().unwrap_or_default();
            let charge = c.get_mut("charge", &str_of(&refund["charge"]))?;
            let refunded = charge["amount_refunded"].as_i64().unwrap_or_default() - amount;
            charge["amount_refunded"] = refunded.max(0).into();
            charge["refunded"] = false.into();
            c.outcome.refund = Some(refund_id.to_owned());
            c.outcome.charge = Some(str_of(&refund["charge"]));
            c.emit("refund.failed", &refund, None);
            c.emit(
                "refund.updated",
                &refund,
                Some(json!({"status": "succeeded", "failure_reason": null,
                    "failure_balance_transaction": null})),
            );
            Ok(())
        })
        .await
    }

    /// The customer disputes a charge with their bank.
    pub async fn dispute(&self, charge_id: &str) -> Result<Outcome, StripeError> {
        self.act(|c| {
            let charge = c.get_mut("charge", charge_id)?;
            if charge["status"] != "succeeded" || charge["disputed"] == true {
                return Err(StripeError::InvalidState(format!(
                    "charge {charge_id} cannot be disputed: it is {} and {}disputed",
                    str_of(&charge["status"]),
                    if charge["disputed"] == true {
                        ""
                    } else {
                        "not "
                    }
                )));
            }
            charge["disputed"] = true.into();
            let charge = charge.clone();
            let id = new_id("dp");
            let dispute = books::dispute(&id, c.now, &charge);
            c.put(dispute.clone());
            c.outcome.dispute = Some(id);
            c.outcome.charge = Some(charge_id.to_owned());
            c.outcome.payment_intent = charge["payment_intent"].as_str().map(str::to_owned);
            c.emit("charge.dispute.created", &dispute, None);
            Ok(())
        })
        .await
    }

    /// The bank decides a dispute: for the merchant (`won`) or for the customer.
    pub async fn close_dispute(&self, dispute_id: &str, won: bool) -> Result<Outcome, StripeError> {
        self.act(|c| {
            let dispute = c.get_mut("dispute", dispute_id)?;
            if matches!(dispute["status"].as_str(), Some("won" | "lost")) {
                return Err(StripeError::InvalidState(format!(
                    "dispute {dispute_id} is already closed ({})",
                    str_of(&dispute["status"])
                )));
            }
            dispute["status"] = if won { "won" } else { "lost" }.into();
            let dispute = dispute.clone();
            c.outcome.dispute = Some(dispute_id.to_owned());
            c.outcome.charge = Some(str_of(&dispute["charge"]));
            c.emit("charge.dispute.closed", &dispute, None);
            Ok(())
        })
        .await
    }

    /// A subscription renews: a new paid Invoice for the next period, with its own
    /// PaymentIntent and Charge (carrying the subscription's metadata).
    pub async fn renew(&self, subscription_id: &str) -> Result<Outcome, StripeError> {
        self.act(|c| cycle(c, subscription_id, true)).await
    }

    /// A subscription's renewal payment fails: a new open Invoice, the subscription past due.
    pub async fn fail_renewal(&self, subscription_id: &str) -> Result<Outcome, StripeError> {
        self.act(|c| cycle(c, subscription_id, false)).await
    }

    /// Cancels a subscription: at the end of its period (it stays active until then) or now.
    pub async fn cancel(
        &self,
        subscription_id: &str,
        at_period_end: bool,
    ) -> Result<Outcome, StripeError> {
        self.act(|c| {
            let now = c.now;
            c.outcome.subscription = Some(subscription_id.to_owned());
            let sub = c.get_mut("subscription", subscription_id)?;
            if sub["status"] == "canceled" {
                return Err(StripeError::InvalidState(format!(
                    "A canceled subscription can only update its cancellation_details and metadata. ({subscription_id})"
                )));
            }
            if at_period_end {
                let previous = json!({"cancel_at_period_end": sub["cancel_at_period_end"],
                    "cancel_at": sub["cancel_at"], "canceled_at": sub["canceled_at"],
                    "cancellation_details": sub["cancellation_details"]});
                sub["cancel_at_period_end"] = true.into();
                sub["cancel_at"] = sub["items"]["data"][0]["current_period_end"].clone();
                sub["canceled_at"] = now.into();
                sub["cancellation_details"]["reason"] = "cancellation_requested".into();
                let sub = sub.clone();
                c.emit("customer.subscription.updated", &sub, Some(previous));
            } else {
                sub["status"] = "canceled".into();
                sub["canceled_at"] = now.into();
                sub["ended_at"] = now.into();
                sub["cancellation_details"]["reason"] = "cancellation_requested".into();
                let sub = sub.clone();
                c.emit("customer.subscription.deleted", &sub, None);
            }
            Ok(())
        })
        .await
    }
}

/// The email and name a customer pays a session with.
fn payer(books: &Books, session: &Value) -> (Value, Value) {
    let customer = session["customer"]
        .as_str()
        .and_then(|id| books.objects.get(id));
    let email = customer
        .map(|c| c["email"].clone())
        .filter(|e| !e.is_null())
        .or_else(|| Some(session["customer_email"].clone()).filter(|e| !e.is_null()))
        .unwrap_or_else(|| DEFAULT_EMAIL.into());
    let name = customer.map(|c| c["name"].clone()).unwrap_or(Value::Null);
    (email, name)
}

/// The InvoicePayment that links a paid invoice to its PaymentIntent (`GET /v1/invoice_payments`
/// finds it by the PaymentIntent).
fn invoice_payment(invoice: &str, pi: &Value, now: i64) -> Value {
    json!({"id": new_id("inpay"), "object": "invoice_payment", "amount_paid": pi["amount"],
        "amount_requested": pi["amount"], "created": now, "currency": pi["currency"],
        "invoice": invoice, "is_default": true, "livemode": false,
        "payment": {"type": "payment_intent", "payment_intent": pi["id"]},
        "status": "paid", "status_transitions": {"canceled_at": null, "paid_at": now}})
}

/// Makes a PaymentIntent and its Charge; their ids.
fn make_payment(c: &mut Change<'_>, p: &Payment<'_>, state: PaymentState) -> (Value, Value) {
    let pi_id = new_id("pi");
    let ch_id = new_id("ch");
    let pi = books::payment_intent(&pi_id, &ch_id, p, state);
    let ch = books::charge(&ch_id, &pi_id, p, state);
    c.put(pi.clone());
    c.put(ch.clone());
    c.outcome.payment_intent = Some(pi_id);
    c.outcome.charge = Some(ch_id);
    (pi, ch)
}

fn expire(c: &mut Change<'_>, session_id: &str) -> Result<(), StripeError> {
    let session = c.get_mut("checkout.session", session_id)?;
    if session["status"] != "open" {
        return Err(StripeError::InvalidState(format!(
            "Only Checkout Sessions with a status in [\"open\"] can be expired. This Checkout Session has a status of \"{}\".",
            str_of(&session["status"])
        )));
    }
    session["status"] = "expired".into();
    session["url"] = Value::Null;
    let session = session.clone();
    c.outcome.checkout_session = Some(session_id.to_owned());
    c.emit("checkout.session.expired", &session, None);
    Ok(())
}

fn pay(c: &mut Change<'_>, session_id: &str, mode: PayMode) -> Result<(), StripeError> {
    let session = c.books.get("checkout.session", session_id)?.clone();
    if session["status"] != "open" {
        return Err(StripeError::InvalidState(format!(
            "This Checkout Session is no longer active ({session_id} is {}).",
            str_of(&session["status"])
        )));
    }
    let inputs = c
        .books
        .sessions
        .get(session_id)
        .cloned()
        .ok_or_else(|| StripeError::no_such("checkout.session", session_id))?;
    let (email, name) = payer(c.books, &session);
    if session["mode"] == "subscription" && mode == PayMode::Async {
        return Err(StripeError::InvalidState(
            "the simulated Stripe pays subscription-mode sessions by card (PayMode::Now) only"
                .into(),
        ));
    }
    let mut customer = session["customer"].clone();
    c.outcome.checkout_session = Some(session_id.to_owned());
    c.outcome.customer = customer.as_str().map(str::to_owned);
    let amount = session["amount_total"].as_i64().unwrap_or_default();
    let currency = str_of(&session["currency"]);
    let mut done = session.clone();
    done["status"] = "complete".into();
    done["url"] = Value::Null;
    done["customer_details"] = books::customer_details(&email, &name);
    if session["mode"] == "subscription" {
        if customer.is_null() {
            // Checkout makes a customer for a subscription when the session named none.
            let id = new_id("cus");
            c.put(books::customer(&id, c.now, &email, &name, json!({})));
            customer = id.into();
            done["customer"] = customer.clone();
        }
        c.outcome.customer = customer.as_str().map(str::to_owned);
        let entry = c.books.price(&inputs.price)?;
        let price = books::price_json(entry);
        let (interval, count) = entry.price.recurring.ok_or_else(|| {
            StripeError::InvalidState(format!("price {} is not recurring", inputs.price))
        })?;
        let period = (c.now, books::advance(c.now, interval, count));
        let sub_id = new_id("sub");
        let in_id = new_id("in");
        let item = books::subscription_item(
            &new_id("si"),
            c.now,
            &sub_id,
            price.clone(),
            inputs.quantity,
            period,
        );
        let sub = books::subscription(books::NewSubscription {
            id: &sub_id,
            created: c.now,
            customer: customer.clone(),
            currency: &currency,
            item,
            metadata: inputs.subscription_metadata.clone(),
            latest_invoice: &in_id,
        });
        let invoice = books::invoice(books::NewInvoice {
            id: &in_id,
            created: c.now,
            customer: customer.clone(),
            subscription: &sub,
            price,
            quantity: inputs.quantity,
            amount,
            currency: &currency,
            billing_reason: "subscription_create",
            period,
            paid: true,
        });
        // An invoice's PaymentIntent carries no metadata of the subscription's (Stripe copies
        // none): an InvoicePayment links it to its invoice.
        let (pi, _) = make_payment(
            c,
            &Payment {
                created: c.now,
                amount,
                currency: &currency,
                customer: customer.clone(),
                metadata: json!({}),
                description: "Subscription creation".into(),
            },
            PaymentState::Succeeded,
        );
        c.put(invoice_payment(&in_id, &pi, c.now));
        c.put(sub.clone());
        c.put(invoice.clone());
        done["payment_status"] = "paid".into();
        done["subscription"] = sub_id.clone().into();
        done["invoice"] = in_id.clone().into();
        c.put(done.clone());
        c.outcome.subscription = Some(sub_id);
        c.outcome.invoice = Some(in_id);
        c.emit("customer.subscription.created", &sub, None);
        c.emit("invoice.paid", &invoice, None);
        c.emit("checkout.session.completed", &done, None);
        return Ok(());
    }
    let state = match mode {
        PayMode::Now => PaymentState::Succeeded,
        PayMode::Async => PaymentState::Processing,
    };
    let (pi, ch) = make_payment(
        c,
        &Payment {
            created: c.now,
            amount,
            currency: &currency,
            customer,
            metadata: inputs.payment_intent_metadata.clone(),
            description: Value::Null,
        },
        state,
    );
    done["payment_intent"] = pi["id"].clone();
    if mode == PayMode::Async {
        done["payment_method_types"] = json!(["us_bank_account"]);
        c.put(done.clone());
        c.emit("checkout.session.completed", &done, None);
        return Ok(());
    }
    done["payment_status"] = "paid".into();
    c.put(done.clone());
    c.emit("charge.succeeded", &ch, None);
    c.emit("payment_intent.succeeded", &pi, None);
    c.emit("checkout.session.completed", &done, None);
    Ok(())
}

fn settle(c: &mut Change<'_>, session_id: &str, succeeded: bool) -> Result<(), StripeError> {
    let session = c.books.get("checkout.session", session_id)?.clone();
    let pi_id = str_of(&session["payment_intent"]);
    let waiting = session["status"] == "complete"
        && session["payment_status"] == "unpaid"
        && c.books
            .get("payment_intent", &pi_id)
            .is_ok_and(|pi| pi["status"] == "processing");
    if !waiting {
        return Err(StripeError::InvalidState(format!(
            "session {session_id} has no payment waiting to settle"
        )));
    }
    let pi = c.get_mut("payment_intent", &pi_id)?;
    let amount = pi["amount"].clone();
    let ch_id = str_of(&pi["latest_charge"]);
    if succeeded {
        pi["status"] = "succeeded".into();
        pi["amount_received"] = amount.clone();
    } else {
        pi["status"] = "requires_payment_method".into();
        pi["last_payment_error"] = json!({"type": "invalid_request_error",
            "code": "payment_method_unactivated", "charge": ch_id,
            "message": "The bank transfer was not received."});
    }
    let ch = c.get_mut("charge", &ch_id)?;
    if succeeded {
        ch["status"] = "succeeded".into();
        ch["paid"] = true.into();
        ch["captured"] = true.into();
        ch["amount_captured"] = amount;
        ch["balance_transaction"] = new_id("txn").into();
    } else {
        ch["status"] = "failed".into();
        ch["failure_code"] = "payment_method_unactivated".into();
        ch["failure_message"] = "The bank transfer was not received.".into();
    }
    let session = c.get_mut("checkout.session", session_id)?;
    if succeeded {
        session["payment_status"] = "paid".into();
    }
    let session = session.clone();
    c.outcome.checkout_session = Some(session_id.to_owned());
    c.outcome.payment_intent = Some(pi_id);
    c.outcome.charge = Some(ch_id);
    let kind = if succeeded {
        "checkout.session.async_payment_succeeded"
    } else {
        "checkout.session.async_payment_failed"
    };
    c.emit(kind, &session, None);
    Ok(())
}

fn refund(c: &mut Change<'_>, payment: &str, amount: Option<i64>) -> Result<(), StripeError> {
    let ch_id = if payment.starts_with("pi_") {
        str_of(&c.books.get("payment_intent", payment)?["latest_charge"])
    } else {
        payment.to_owned()
    };
    let charge = c.get_mut("charge", &ch_id)?;
    if charge["status"] != "succeeded" {
        return Err(StripeError::Invalid {
            message: format!(
                "Charge {ch_id} has not succeeded (it is {}), so it cannot be refunded.",
                str_of(&charge["status"])
            ),
            code: Some("charge_not_refundable"),
            param: None,
        });
    }
    let total = charge["amount"].as_i64().unwrap_or_default();
    let refunded = charge["amount_refunded"].as_i64().unwrap_or_default();
    let left = total - refunded;
    if left <= 0 {
        return Err(StripeError::Invalid {
            message: format!("Charge {ch_id} has already been refunded."),
            code: Some("charge_already_refunded"),
            param: None,
        });
    }
    let amount = amount.unwrap_or(left);
    if amount <= 0 {
        return Err(StripeError::Invalid {
            message: "Invalid positive integer".into(),
            code: Some("parameter_invalid_integer"),
            param: Some("amount".into()),
        });
    }
    if amount > left {
        let currency = str_of(&charge["currency"]).to_uppercase();
        return Err(StripeError::Invalid {
            message: format!(
                "Refund amount ({}) is greater than unrefunded amount on charge ({}).",
                http::money(amount, &currency),
                http::money(left, &currency),
            ),
            code: Some("amount_too_large"),
            param: Some("amount".into()),
        });
    }
    charge["amount_refunded"] = (refunded + amount).into();
    charge["refunded"] = (refunded + amount == total).into();
    let charge = charge.clone();
    let id = new_id("re");
    let refund = books::refund(&id, c.now, amount, &charge);
    c.put(refund.clone());
    c.outcome.refund = Some(id);
    c.outcome.charge = Some(ch_id);
    c.outcome.payment_intent = charge["payment_intent"].as_str().map(str::to_owned);
    c.emit("refund.created", &refund, None);
    c.emit("charge.refunded", &charge, None);
    Ok(())
}

/// A renewal attempt: `paid` or declined.
///
/// An active subscription starts its next period with a new invoice; a past-due one retries its
/// open invoice instead (paid: active again, same period; declined: still past due).
fn cycle(c: &mut Change<'_>, subscription_id: &str, paid: bool) -> Result<(), StripeError> {
    let sub = c.books.get("subscription", subscription_id)?.clone();
    match sub["status"].as_str() {
        Some("active") => {}
        Some("past_due") => return retry(c, &sub, paid),
        _ => {
            return Err(StripeError::InvalidState(format!(
                "subscription {subscription_id} is {}, so it does not renew",
                str_of(&sub["status"])
            )));
        }
    }
    if sub["cancel_at_period_end"] == true {
        return Err(StripeError::InvalidState(format!(
            "subscription {subscription_id} is set to cancel at the end of its period, so it does not renew"
        )));
    }
    let item = &sub["items"]["data"][0];
    let price = item["price"].clone();
    let price_id = str_of(&price["id"]);
    let (interval, count) =
        c.books.price(&price_id)?.price.recurring.ok_or_else(|| {
            StripeError::InvalidState(format!("price {price_id} is not recurring"))
        })?;
    let start = item["current_period_end"].as_i64().unwrap_or(c.now);
    // Periods keep to the billing cycle anchor's day (Jan 31, Feb 28, Mar 31), not the last end's.
    let anchor = sub["billing_cycle_anchor"].as_i64().unwrap_or(start);
    let mut cycles = 1;
    while books::advance(anchor, interval, count * cycles) <= start && cycles < 10_000 {
        cycles += 1;
    }
    let period = (start, books::advance(anchor, interval, count * cycles));
    let quantity = item["quantity"].as_i64().unwrap_or(1);
    let amount = price["unit_amount"].as_i64().unwrap_or_default() * quantity;
    let currency = str_of(&sub["currency"]);
    let in_id = new_id("in");
    let mut next = sub.clone();
    next["items"]["data"][0]["current_period_start"] = period.0.into();
    next["items"]["data"][0]["current_period_end"] = period.1.into();
    next["latest_invoice"] = in_id.clone().into();
    let mut previous = json!({"items": sub["items"], "latest_invoice": sub["latest_invoice"]});
    if !paid {
        next["status"] = "past_due".into();
    }
    if next["status"] != sub["status"] {
        previous["status"] = sub["status"].clone();
    }
    let invoice = books::invoice(books::NewInvoice {
        id: &in_id,
        created: c.now,
        customer: sub["customer"].clone(),
        subscription: &next,
        price,
        quantity,
        amount,
        currency: &currency,
        billing_reason: "subscription_cycle",
        period,
        paid,
    });
    let (pi, _) = make_payment(
        c,
        &Payment {
            created: c.now,
            amount,
            currency: &currency,
            customer: sub["customer"].clone(),
            metadata: json!({}),
            description: "Subscription update".into(),
        },
        if paid {
            PaymentState::Succeeded
        } else {
            PaymentState::Failed
        },
    );
    if paid {
        c.put(invoice_payment(&in_id, &pi, c.now));
    }
    c.put(invoice.clone());
    c.put(next.clone());
    c.outcome.subscription = Some(subscription_id.to_owned());
    c.outcome.invoice = Some(in_id);
    c.emit(
        if paid {
            "invoice.paid"
        } else {
            "invoice.payment_failed"
        },
        &invoice,
        None,
    );
    c.emit("customer.subscription.updated", &next, Some(previous));
    Ok(())
}

/// Retries a past-due subscription's open invoice.
fn retry(c: &mut Change<'_>, sub: &Value, paid: bool) -> Result<(), StripeError> {
    let sub_id = str_of(&sub["id"]);
    let in_id = str_of(&sub["latest_invoice"]);
    let invoice = c.books.get("invoice", &in_id)?;
    if invoice["status"] != "open" {
        return Err(StripeError::InvalidState(format!(
            "subscription {sub_id} is past due but its latest invoice {in_id} is not open"
        )));
    }
    let amount = invoice["amount_due"].as_i64().unwrap_or_default();
    let currency = str_of(&invoice["currency"]);
    let (pi, _) = make_payment(
        c,
        &Payment {
            created: c.now,
            amount,
            currency: &currency,
            customer: sub["customer"].clone(),
            metadata: json!({}),
            description: "Subscription update".into(),
        },
        if paid {
            PaymentState::Succeeded
        } else {
            PaymentState::Failed
        },
    );
    let now = c.now;
    if paid {
        c.put(invoice_payment(&in_id, &pi, now));
    }
    let invoice = c.get_mut("invoice", &in_id)?;
    let attempts = invoice["attempt_count"].as_i64().unwrap_or_default() + 1;
    invoice["attempt_count"] = attempts.into();
    if paid {
        invoice["status"] = "paid".into();
        invoice["amount_paid"] = amount.into();
        invoice["amount_remaining"] = 0.into();
        invoice["auto_advance"] = false.into();
        invoice["next_payment_attempt"] = Value::Null;
        invoice["status_transitions"]["paid_at"] = now.into();
    } else {
        invoice["next_payment_attempt"] = (now + 3 * 86_400).into();
    }
    let invoice = invoice.clone();
    c.outcome.subscription = Some(sub_id.clone());
    c.outcome.invoice = Some(in_id);
    if !paid {
        c.emit("invoice.payment_failed", &invoice, None);
        return Ok(());
    }
    let next = c.get_mut("subscription", &sub_id)?;
    next["status"] = "active".into();
    let next = next.clone();
    c.emit("invoice.paid", &invoice, None);
    c.emit(
        "customer.subscription.updated",
        &next,
        Some(json!({"status": "past_due"})),
    );
    Ok(())
}
