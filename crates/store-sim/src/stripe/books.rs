//! The account's books: the price catalogue, every object the API serves (kept as the JSON Stripe
//! renders, so what `GET /v1/...` answers and what an event carries are the same bytes of state),
//! and the event log. The renderings follow Stripe's example objects in
//! Stripe's `fixtures3.json` (kept in `tests/vectors/stripe/`), top-level field for field, at API version
//! `2026-07-29.dahlia`: no `refunds` on a charge (store-deltas S-1); an invoice names its
//! subscription at `parent.subscription_details.subscription` and has no top-level
//! `subscription`, `payment_intent` or `charge` (S-2); periods live on subscription items. No HTTP.

use std::collections::HashMap;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Interval, Price, StripeError, new_id};

/// A price and what the catalogue adds to it.
#[derive(Clone)]
pub(super) struct PriceEntry {
    pub price: Price,
    pub created: i64,
    /// The product's id (`prod_...`), made when the price was added.
    pub product: String,
}

/// What a Checkout Session keeps that its rendering does not show (line items are not expanded
/// by default; the payment intent's and subscription's metadata are the session's inputs).
#[derive(Debug, Clone)]
pub(super) struct SessionInputs {
    pub price: String,
    pub quantity: i64,
    pub payment_intent_metadata: Value,
    pub subscription_metadata: Value,
}

#[derive(Clone, Default)]
pub(super) struct Books {
    pub prices: HashMap<String, PriceEntry>,
    /// Every object by id; ids' prefixes keep the kinds apart.
    pub objects: HashMap<String, Value>,
    pub sessions: HashMap<String, SessionInputs>,
    /// Every event (snapshot events only), oldest first.
    pub events: Vec<Value>,
}

impl Books {
    pub fn add_price(&mut self, price: Price, now: i64) {
        let product = match self.prices.get(&price.id) {
            Some(old) => old.product.clone(),
            None => new_id("prod"),
        };
        self.prices.insert(
            price.id.clone(),
            PriceEntry {
                price,
                created: now,
                product,
            },
        );
    }

    pub fn price(&self, id: &str) -> Result<&PriceEntry, StripeError> {
        self.prices
            .get(id)
            .ok_or_else(|| StripeError::no_such("price", id))
    }

    /// The object `id` if it is a `kind` (`"charge"`, `"checkout.session"`, ...).
    pub fn get(&self, kind: &'static str, id: &str) -> Result<&Value, StripeError> {
        self.objects
            .get(id)
            .filter(|o| o["object"] == kind)
            .ok_or_else(|| StripeError::no_such(kind, id))
    }

    pub fn get_mut(&mut self, kind: &'static str, id: &str) -> Result<&mut Value, StripeError> {
        self.objects
            .get_mut(id)
            .filter(|o| o["object"] == kind)
            .ok_or_else(|| StripeError::no_such(kind, id))
    }

    /// Keeps (or replaces) an object under its `id`.
    pub fn put(&mut self, object: Value) {
        if let Some(id) = object["id"].as_str() {
            self.objects.insert(id.to_owned(), object);
        }
    }
}

/// `at` plus `count` `interval`s, as Stripe bills: calendar months and years, keeping the day of
/// the month where the month has it and taking the month's last day where not.
pub(super) fn advance(at: i64, interval: Interval, count: u32) -> i64 {
    let Ok(start) = OffsetDateTime::from_unix_timestamp(at) else {
        return at;
    };
    let months = match interval {
        Interval::Day => return at + i64::from(count) * 86_400,
        Interval::Week => return at + i64::from(count) * 7 * 86_400,
        Interval::Month => i64::from(count),
        Interval::Year => i64::from(count) * 12,
    };
    let total = i64::from(start.year()) * 12 + i64::from(u8::from(start.month())) - 1 + months;
    let (Ok(year), Ok(month)) = (
        i32::try_from(total.div_euclid(12)),
        u8::try_from(total.rem_euclid(12) + 1),
    ) else {
        return at;
    };
    let Ok(month) = time::Month::try_from(month) else {
        return at;
    };
    let day = start.day().min(month.length(year));
    time::Date::from_calendar_date(year, month, day)
        .map(|d| start.replace_date(d).unix_timestamp())
        .unwrap_or(at)
}

/// The price as Stripe renders it.
pub(super) fn price_json(entry: &PriceEntry) -> Value {
    let p = &entry.price;
    let recurring = p.recurring.map(|(interval, count)| {
        json!({"interval": interval.as_str(), "interval_count": count, "meter": null,
            "usage_type": "licensed", "trial_period_days": null})
    });
    json!({
        "id": p.id, "object": "price", "active": true, "billing_scheme": "per_unit",
        "created": entry.created, "currency": p.currency,
        "custom_unit_amount": null, "livemode": false, "lookup_key": null, "metadata": {},
        "nickname": null, "product": entry.product, "recurring": recurring,
        "tax_behavior": "unspecified", "tiers_mode": null, "transform_quantity": null,
        "type": if p.recurring.is_some() { "recurring" } else { "one_time" },
        "unit_amount": p.unit_amount, "unit_amount_decimal": p.unit_amount.to_string(),
    })
}

/// One object of the fields of two (the `json!` macro's recursion stops short of Stripe's
/// larger objects).
fn join(mut head: Value, rest: Value) -> Value {
    if let (Value::Object(h), Value::Object(r)) = (&mut head, rest) {
        h.extend(r);
    }
    head
}

fn address() -> Value {
    json!({"city": null, "country": null, "line1": null, "line2": null, "postal_code": null,
        "state": null})
}

pub(super) fn customer(
    id: &str,
    created: i64,
    email: &Value,
    name: &Value,
    metadata: Value,
) -> Value {
    json!({
        "id": id, "object": "customer", "address": null, "balance": 0, "created": created,
        "currency": null, "default_source": null, "delinquent": false,
        "description": null, "discount": null, "email": email,
        "invoice_prefix": id.trim_start_matches("cus_").chars().take(8).collect::<String>().to_uppercase(),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null,
            "rendering_options": null},
        "livemode": false, "metadata": metadata, "name": name, "next_invoice_sequence": 1,
        "phone": null, "preferred_locales": [], "shipping": null, "tax_exempt": "none",
        "test_clock": null,
    })
}

/// What a new Checkout Session says.
pub(super) struct NewSession<'a> {
    pub id: &'a str,
    pub created: i64,
    pub expires_at: i64,
    pub mode: &'a str,
    pub url: String,
    pub amount: i64,
    pub currency: &'a str,
    pub customer: Value,
    pub customer_email: Value,
    pub client_reference_id: Value,
    pub metadata: Value,
    pub success_url: Value,
    pub cancel_url: Value,
}

pub(super) fn session(s: NewSession<'_>) -> Value {
    let head = json!({
        "id": s.id, "object": "checkout.session", "adaptive_pricing": null,
        "after_expiration": null, "allow_promotion_codes": null,
        "amount_subtotal": s.amount, "amount_total": s.amount,
        "automatic_tax": {"enabled": false, "liability": null, "provider": null, "status": null},
        "billing_address_collection": null, "cancel_url": s.cancel_url,
        "client_reference_id": s.client_reference_id, "client_secret": null,
        "collected_information": null, "consent": null, "consent_collection": null,
        "created": s.created, "currency": s.currency, "custom_fields": [],
        "custom_text": {"after_submit": null, "shipping_address": null, "submit": null,
            "terms_of_service_acceptance": null},
        "customer": s.customer, "customer_account": null,
        "customer_creation": if s.customer.is_null() { json!("if_required") } else { Value::Null },
        "customer_details": null, "customer_email": s.customer_email, "discounts": [],
        "expires_at": s.expires_at, "invoice": null, "invoice_creation": null,
    });
    let rest = json!({
        "livemode": false, "locale": null, "metadata": s.metadata, "mode": s.mode,
        "origin_context": null, "payment_intent": null, "payment_link": null,
        "payment_method_collection": if s.mode == "subscription" { json!("always") } else { Value::Null },
        "payment_method_configuration_details": null, "payment_method_options": {},
        "payment_method_types": ["card"], "payment_status": "unpaid",
        "permissions": null, "phone_number_collection": {"enabled": false},
        "recovered_from": null, "saved_payment_method_options": null, "setup_intent": null,
        "shipping_address_collection": null, "shipping_cost": null, "shipping_options": [],
        "status": "open", "submit_type": null, "subscription": null,
        "success_url": s.success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted", "url": s.url, "wallet_options": null,
        "currency_conversion": null, "integration_identifier": null,
        "managed_payments": {"enabled": false},
    });
    join(head, rest)
}

/// The customer details a completed session shows.
pub(super) fn customer_details(email: &Value, name: &Value) -> Value {
    json!({"address": address(), "business_name": null, "email": email,
        "individual_name": null, "name": name, "phone": null, "tax_exempt": "none",
        "tax_ids": []})
}

/// A payment: a PaymentIntent and its Charge, as one paying a session or an invoice makes.
pub(super) struct Payment<'a> {
    pub created: i64,
    pub amount: i64,
    pub currency: &'a str,
    pub customer: Value,
    pub metadata: Value,
    pub description: Value,
}

/// How a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PaymentState {
    Succeeded,
    /// A bank transfer on its way (async payment methods).
    Processing,
    Failed,
}

pub(super) fn payment_intent(
    id: &str,
    charge_id: &str,
    p: &Payment<'_>,
    state: PaymentState,
) -> Value {
    let (status, received, error) = match state {
        PaymentState::Succeeded => ("succeeded", p.amount, Value::Null),
        PaymentState::Processing => ("processing", 0, Value::Null),
        PaymentState::Failed => (
            "requires_payment_method",
            0,
            json!({"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.", "charge": charge_id}),
        ),
    };
    let head = json!({
        "id": id, "object": "payment_intent", "amount": p.amount, "amount_capturable": 0,
        "amount_details": {"tip": {}}, "amount_received": received, "application": null,
        "application_fee_amount": null, "automatic_payment_methods": null, "canceled_at": null,
        "cancellation_reason": null, "capture_method": "automatic",
        "client_secret": format!("{id}_secret_{}", super::random_alnum(25)),
        "confirmation_method": "automatic", "created": p.created, "currency": p.currency,
        "customer": p.customer, "customer_account": null, "description": p.description,
        "excluded_payment_method_types": null, "last_payment_error": error,
    });
    let rest = json!({
        "latest_charge": charge_id, "livemode": false, "managed_payments": {"enabled": false},
        "metadata": p.metadata,
        "next_action": null, "on_behalf_of": null,
        "payment_method": format!("pm_{}", super::random_alnum(24)),
        "payment_method_configuration_details": null, "payment_method_options": {},
        "payment_method_types": ["card"], "processing": null, "receipt_email": null,
        "review": null, "setup_future_usage": null, "shipping": null, "source": null,
        "statement_descriptor": null, "statement_descriptor_suffix": null, "status": status,
        "transfer_data": null, "transfer_group": null,
    });
    join(head, rest)
}

pub(super) fn charge(id: &str, pi: &str, p: &Payment<'_>, state: PaymentState) -> Value {
    let (status, paid, failure_code, failure_message, outcome) = match state {
        PaymentState::Succeeded => ("succeeded", true, Value::Null, Value::Null, "authorized"),
        PaymentState::Processing => ("pending", false, Value::Null, Value::Null, "authorized"),
        PaymentState::Failed => (
            "failed",
            false,
            json!("card_declined"),
            json!("Your card has insufficient funds."),
            "issuer_declined",
        ),
    };
    let captured = state == PaymentState::Succeeded;
    let head = json!({
        "id": id, "object": "charge", "amount": p.amount,
        "amount_captured": if captured { p.amount } else { 0 }, "amount_refunded": 0,
        "application": null, "application_fee": null, "application_fee_amount": null,
        "balance_transaction": if captured { json!(super::new_id("txn")) } else { Value::Null },
        "billing_details": {"address": address(), "email": null, "name": null, "phone": null,
            "tax_id": null},
        "calculated_statement_descriptor": "PURCHASE GATEWAY", "captured": captured,
        "created": p.created, "currency": p.currency, "customer": p.customer,
        "description": p.description, "disputed": false, "failure_balance_transaction": null,
        "failure_code": failure_code, "failure_message": failure_message, "fraud_details": {},
        "livemode": false, "metadata": p.metadata, "on_behalf_of": null,
    });
    let rest = json!({
        "outcome": {"advice_code": null, "network_advice_code": null,
            "network_decline_code": null, "network_status": if paid { "approved_by_network" } else { "declined_by_network" },
            "reason": null, "risk_level": "normal", "seller_message": if paid { "Payment complete." } else { "The bank did not return any further details with this decline." },
            "type": outcome},
        "paid": paid, "payment_intent": pi, "payment_method": null,
        "payment_method_details": {"card": {"brand": "visa", "country": "US", "exp_month": 12,
            "exp_year": 2034, "funding": "credit", "last4": "4242", "network": "visa"},
            "type": "card"},
        "receipt_email": null, "receipt_number": null, "receipt_url": null, "refunded": false,
        "review": null, "shipping": null, "source": null, "source_transfer": null, "statement_descriptor": null,
        "statement_descriptor_suffix": null, "status": status, "transfer_data": null,
        "transfer_group": null,
    });
    join(head, rest)
}

pub(super) fn refund(id: &str, created: i64, amount: i64, charge: &Value) -> Value {
    json!({
        "id": id, "object": "refund", "amount": amount,
        "balance_transaction": super::new_id("txn"), "charge": charge["id"],
        "created": created, "currency": charge["currency"], "customer": charge["customer"],
        "customer_account": null,
        "destination_details": {"card": {"reference_status": "pending", "reference_type": "acquirer_reference_number", "type": "refund"}, "type": "card"},
        "metadata": {}, "payment_intent": charge["payment_intent"], "payment_method": null,
        "reason": null, "receipt_number": null, "source_transfer_reversal": null,
        "status": "succeeded", "transfer_reversal": null,
    })
}

/// How long a merchant has to answer a dispute.
const DISPUTE_RESPONSE_SECONDS: i64 = 7 * 86_400;

pub(super) fn dispute(id: &str, created: i64, charge: &Value) -> Value {
    json!({
        "id": id, "object": "dispute", "amount": charge["amount"], "balance_transactions": [],
        "charge": charge["id"], "created": created, "currency": charge["currency"],
        "enhanced_eligibility_types": [], "evidence": {},
        "evidence_details": {"due_by": created + DISPUTE_RESPONSE_SECONDS, "enhanced_eligibility": {},
            "has_evidence": false, "past_due": false, "submission_count": 0},
        "is_charge_refundable": false, "livemode": false, "metadata": {},
        "payment_intent": charge["payment_intent"],
        "payment_method_details": {"card": {"brand": "visa", "case_type": "chargeback",
            "network_reason_code": "10.4"}, "type": "card"},
        "reason": "fraudulent", "status": "needs_response",
    })
}

/// The legacy plan a subscription item still shows beside its price.
fn plan(price: &Value) -> Value {
    let recurring = &price["recurring"];
    json!({
        "id": price["id"], "object": "plan", "active": true, "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"], "billing_scheme": "per_unit",
        "created": price["created"], "currency": price["currency"],
        "interval": recurring["interval"], "interval_count": recurring["interval_count"],
        "livemode": false, "metadata": {}, "meter": null, "nickname": null,
        "product": price["product"], "tiers_mode": null, "transform_usage": null,
        "trial_period_days": null, "usage_type": "licensed",
    })
}

pub(super) fn subscription_item(
    id: &str,
    created: i64,
    subscription: &str,
    price: Value,
    quantity: i64,
    period: (i64, i64),
) -> Value {
    json!({
        "id": id, "object": "subscription_item", "billing_thresholds": null, "created": created,
        "current_period_end": period.1, "current_period_start": period.0, "discounts": [],
        "metadata": {}, "plan": plan(&price), "price": price, "quantity": quantity,
        "subscription": subscription,
        "tax_rates": [],
    })
}

/// What a new Subscription says.
pub(super) struct NewSubscription<'a> {
    pub id: &'a str,
    pub created: i64,
    pub customer: Value,
    pub currency: &'a str,
    pub item: Value,
    pub metadata: Value,
    pub latest_invoice: &'a str,
}

pub(super) fn subscription(s: NewSubscription<'_>) -> Value {
    let head = json!({
        "id": s.id, "object": "subscription", "application": null,
        "application_fee_percent": null,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
        "billing_cycle_anchor": s.created, "billing_cycle_anchor_config": null,
        "billing_mode": {"type": "classic"}, "billing_thresholds": null, "cancel_at": null,
        "cancel_at_period_end": false, "canceled_at": null,
        "cancellation_details": {"comment": null, "feedback": null, "reason": null},
        "collection_method": "charge_automatically", "created": s.created,
        "currency": s.currency, "customer": s.customer, "customer_account": null,
        "days_until_due": null, "default_payment_method": null, "default_source": null,
        "default_tax_rates": [], "description": null, "discounts": [], "ended_at": null,
    });
    let rest = json!({
        "invoice_settings": {"account_tax_ids": null, "issuer": {"type": "self"}},
        "items": {"object": "list", "data": [s.item], "has_more": false,
            "url": format!("/v1/subscription_items?subscription={}", s.id)},
        "latest_invoice": s.latest_invoice, "livemode": false, "metadata": s.metadata,
        "next_pending_invoice_item_invoice": null, "on_behalf_of": null,
        "pause_collection": null,
        "payment_settings": {"payment_method_options": null, "payment_method_types": null,
            "save_default_payment_method": "off"},
        "pending_invoice_item_interval": null, "pending_setup_intent": null,
        "pending_update": null, "schedule": null, "start_date": s.created, "status": "active",
        "test_clock": null, "transfer_data": null, "trial_end": null,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": null, "billing_schedules": [], "managed_payments": {"enabled": false},
    });
    join(head, rest)
}

/// What a new subscription Invoice says.
pub(super) struct NewInvoice<'a> {
    pub id: &'a str,
    pub created: i64,
    pub customer: Value,
    pub subscription: &'a Value,
    pub price: Value,
    pub quantity: i64,
    pub amount: i64,
    pub currency: &'a str,
    pub billing_reason: &'a str,
    pub period: (i64, i64),
    pub paid: bool,
}

pub(super) fn invoice(i: NewInvoice<'_>) -> Value {
    let (status, paid, remaining) = if i.paid {
        ("paid", i.amount, 0)
    } else {
        ("open", 0, i.amount)
    };
    let sub_id = &i.subscription["id"];
    let item_id = &i.subscription["items"]["data"][0]["id"];
    let line = json!({
        "id": new_id("il"), "object": "line_item", "amount": i.amount, "currency": i.currency,
        "description": format!("{} × {}", i.quantity, i.price["product"].as_str().unwrap_or_default()),
        "discount_amounts": [], "discountable": true, "discounts": [], "invoice": i.id,
        "livemode": false, "metadata": i.subscription["metadata"],
        "parent": {"invoice_item_details": null, "subscription_item_details": {
            "invoice_item": null, "proration": false, "proration_details": {"credited_items": null},
            "subscription": sub_id, "subscription_item": item_id},
            "type": "subscription_item_details"},
        "period": {"end": i.period.1, "start": i.period.0},
        "pretax_credit_amounts": [],
        "pricing": {"price_details": {"price": i.price["id"], "product": i.price["product"]},
            "type": "price_details", "unit_amount_decimal": i.price["unit_amount_decimal"]},
        "quantity": i.quantity, "quantity_decimal": i.quantity.to_string(),
        "subscription": sub_id, "subtotal": i.amount, "taxes": [],
    });
    let head = json!({
        "id": i.id, "object": "invoice", "account_country": "US",
        "account_name": "Purchase Gateway (simulated)", "account_tax_ids": null,
        "amount_due": i.amount, "amount_overpaid": 0, "amount_paid": paid,
        "amount_remaining": remaining, "amount_shipping": 0, "application": null,
        "attempt_count": 1, "attempted": true, "auto_advance": !i.paid,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null,
            "provider": null, "status": null},
        "automatically_finalizes_at": null, "billing_reason": i.billing_reason,
        "collection_method": "charge_automatically", "created": i.created,
        "currency": i.currency, "custom_fields": null, "customer": i.customer,
        "customer_account": null, "customer_address": null, "customer_email": null,
        "customer_name": null, "customer_phone": null, "customer_shipping": null,
        "customer_tax_exempt": "none", "customer_tax_ids": [], "default_payment_method": null,
        "default_source": null, "default_tax_rates": [], "description": null, "discounts": [],
    });
    let rest = json!({
        "due_date": null, "effective_at": i.created, "ending_balance": 0, "footer": null,
        "from_invoice": null,
        "hosted_invoice_url": null, "invoice_pdf": null,
        "issuer": {"type": "self"}, "last_finalization_error": null, "latest_revision": null,
        "lines": {"object": "list", "data": [line], "has_more": false,
            "url": format!("/v1/invoices/{}/lines", i.id)},
        "livemode": false, "metadata": {},
        "next_payment_attempt": if i.paid { Value::Null } else { json!(i.created + 3 * 86_400) },
        "number": format!("{}-{:04}", i.id.trim_start_matches("in_").chars().take(8).collect::<String>().to_uppercase(), 1),
        "on_behalf_of": null,
        "parent": {"quote_details": null, "subscription_details": {
            "metadata": i.subscription["metadata"], "subscription": sub_id},
            "type": "subscription_details"},
        "payment_settings": {"default_mandate": null, "payment_method_options": null,
            "payment_method_types": null},
        "period_end": i.created, "period_start": i.created,
        "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0,
        "receipt_number": null, "rendering": null, "shipping_cost": null,
        "shipping_details": null, "starting_balance": 0, "statement_descriptor": null,
        "status": status,
        "status_transitions": {"finalized_at": i.created, "marked_uncollectible_at": null,
            "paid_at": if i.paid { json!(i.created) } else { Value::Null }, "voided_at": null},
        "subtotal": i.amount, "subtotal_excluding_tax": i.amount, "test_clock": null,
        "total": i.amount, "total_discount_amounts": [], "total_excluding_tax": i.amount,
        "total_pretax_credit_amounts": [], "total_taxes": [],
        "webhooks_delivered_at": i.created,
    });
    join(head, rest)
}
