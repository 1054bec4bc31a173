//! The Stripe API's requests without HTTP: form bodies in Stripe's bracket notation
//! (`line_items[0][price]=...`, `metadata[k]=v`) read into nested JSON objects, the idempotency
//! keys' stored answers, and creating customers and Checkout Sessions from their parameters,
//! refused as Stripe refuses them. `http.rs` is the `/v1` router.

pub(in crate::stripe) mod http;

use std::{collections::HashMap, sync::Mutex};

use serde_json::{Map, Value};

use super::{
    StripeError, StripeSim,
    books::{self, SessionInputs},
    lock, new_id,
};

/// How long a Checkout Session stays open when the request names no `expires_at` (Stripe's
/// default), and the longest it may.
const SESSION_SECONDS: i64 = 24 * 3600;
/// How long Stripe keeps an idempotency key's answer.
pub(in crate::stripe) const IDEMPOTENCY_SECONDS: i64 = 24 * 3600;
/// The shortest `expires_at` Stripe allows, from creation.
const SESSION_MIN_SECONDS: i64 = 30 * 60;

/// An answer kept for an idempotency key.
#[derive(Clone)]
pub(in crate::stripe) struct Stored {
    /// `POST /v1/...`: a key is for one endpoint.
    pub route: String,
    pub params: Value,
    /// The answer, or `None` while the first request with the key still runs.
    pub answer: Option<(u16, Value)>,
    /// When it was stored (Unix seconds).
    pub at: i64,
}

#[derive(Default)]
pub(in crate::stripe) struct ApiState {
    pub idempotency: Mutex<HashMap<String, Stored>>,
}

/// Reads a form body (or a query string) in Stripe's bracket notation into nested objects:
/// `a[b][0][c]=v` becomes `{"a": {"b": {"0": {"c": "v"}}}}`, and `a[]=v` appends to `a`.
pub(in crate::stripe) fn parse_form(bytes: &[u8]) -> Result<Value, StripeError> {
    let mut root = Map::new();
    for (key, value) in url::form_urlencoded::parse(bytes) {
        let (head, mut rest) = match key.find('[') {
            Some(i) => (&key[..i], &key[i..]),
            None => (&key[..], ""),
        };
        let invalid = || StripeError::invalid(format!("Invalid parameter name: {key}"));
        if head.is_empty() {
            return Err(invalid());
        }
        let mut path = vec![head.to_owned()];
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[').ok_or_else(invalid)?;
            let end = inner.find(']').ok_or_else(invalid)?;
            path.push(inner[..end].to_owned());
            rest = &inner[end + 1..];
        }
        insert(&mut root, &path, value.into_owned()).map_err(|()| invalid())?;
    }
    Ok(Value::Object(root))
}

fn insert(map: &mut Map<String, Value>, path: &[String], value: String) -> Result<(), ()> {
    let Some((first, rest)) = path.split_first() else {
        return Err(());
    };
    let key = if first.is_empty() {
        map.len().to_string()
    } else {
        first.clone()
    };
    if rest.is_empty() {
        if map.get(&key).is_some_and(Value::is_object) {
            return Err(());
        }
        map.insert(key, Value::String(value));
        return Ok(());
    }
    let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    match child {
        Value::Object(m) => insert(m, rest, value),
        _ => Err(()),
    }
}

/// Refuses parameters the endpoint does not take, as Stripe does.
fn known(params: &Value, allowed: &[&str]) -> Result<(), StripeError> {
    if let Some(map) = params.as_object() {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(StripeError::Invalid {
                    message: format!("Received unknown parameter: {key}"),
                    code: Some("parameter_unknown"),
                    param: Some(key.clone()),
                });
            }
        }
    }
    Ok(())
}

/// A `metadata` parameter: an object of strings (absent: empty).
fn metadata(value: &Value, param: &str) -> Result<Value, StripeError> {
    match value {
        Value::Null => Ok(Value::Object(Map::new())),
        Value::Object(m) if m.values().all(Value::is_string) => Ok(value.clone()),
        // `metadata=` (empty) clears it, as Stripe allows.
        Value::String(s) if s.is_empty() => Ok(Value::Object(Map::new())),
        _ => Err(StripeError::Invalid {
            message: format!("Invalid object: {param} must be a hash of strings"),
            code: Some("parameter_invalid_string_object"),
            param: Some(param.to_owned()),
        }),
    }
}

/// An optional string parameter, as JSON (absent: `null`).
fn text(value: &Value, param: &str) -> Result<Value, StripeError> {
    match value {
        Value::Null | Value::String(_) => Ok(value.clone()),
        _ => Err(StripeError::invalid_param(
            format!("Invalid string: {param} must be a string"),
            param,
        )),
    }
}

fn missing(param: &str) -> StripeError {
    StripeError::Invalid {
        message: format!("Missing required param: {param}."),
        code: Some("parameter_missing"),
        param: Some(param.to_owned()),
    }
}

fn integer(value: &Value, param: &str) -> Result<Option<i64>, StripeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => s.parse().map(Some).map_err(|_| StripeError::Invalid {
            message: format!("Invalid integer: {s}"),
            code: Some("parameter_invalid_integer"),
            param: Some(param.to_owned()),
        }),
        _ => Err(StripeError::invalid_param("Invalid integer", param)),
    }
}

impl StripeSim {
    /// `POST /v1/customers`: `email`, `name`, `metadata[k]`.
    pub(in crate::stripe) fn create_customer(&self, params: &Value) -> Result<Value, StripeError> {
        known(
            params,
            &["email", "name", "metadata", "description", "phone"],
        )?;
        let id = new_id("cus");
        let mut customer = books::customer(
            &id,
            self.now(),
            &text(&params["email"], "email")?,
            &text(&params["name"], "name")?,
            metadata(&params["metadata"], "metadata")?,
        );
        customer["description"] = text(&params["description"], "description")?;
        customer["phone"] = text(&params["phone"], "phone")?;
        lock(&self.books).put(customer.clone());
        Ok(customer)
    }

    /// `POST /v1/checkout/sessions` (one line item), refused as Stripe refuses it.
    pub(in crate::stripe) fn create_session(&self, params: &Value) -> Result<Value, StripeError> {
        known(
            params,
            &[
                "mode",
                "line_items",
                "customer",
                "customer_email",
                "client_reference_id",
                "metadata",
                "success_url",
                "cancel_url",
                "payment_intent_data",
                "subscription_data",
                "expires_at",
                "payment_method_types",
                "ui_mode",
            ],
        )?;
        let now = self.now();
        let mode = params["mode"].as_str().ok_or_else(|| missing("mode"))?;
        if !matches!(mode, "payment" | "subscription") {
            return Err(StripeError::Invalid {
                message: format!(
                    "Invalid mode: must be one of payment or subscription (the simulator does not take {mode:?})"
                ),
                code: Some("parameter_invalid_empty"),
                param: Some("mode".into()),
            });
        }
        let items = params["line_items"]
            .as_object()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| missing("line_items"))?;
        if items.len() > 1 || !items.contains_key("0") {
            return Err(StripeError::invalid_param(
                "The simulated Stripe takes exactly one line item, line_items[0].",
                "line_items",
            ));
        }
        let item = &items["0"];
        let price_id = item["price"]
            .as_str()
            .ok_or_else(|| missing("line_items[0][price]"))?;
        let quantity = integer(&item["quantity"], "line_items[0][quantity]")?.unwrap_or(1);
        if quantity < 1 {
            return Err(StripeError::invalid_param(
                "Quantity must be greater than 0.",
                "line_items[0][quantity]",
            ));
        }
        let customer = text(&params["customer"], "customer")?;
        if !customer.is_null() && !params["customer_email"].is_null() {
            return Err(StripeError::invalid(
                "You may only specify one of these parameters: customer, customer_email.",
            ));
        }
        let expires_at = integer(&params["expires_at"], "expires_at")?;
        let mut books = lock(&self.books);
        let entry = books.price(price_id).map_err(|_| StripeError::NoSuch {
            kind: "price",
            id: price_id.to_owned(),
            param: Some("line_items[0][price]".into()),
        })?;
        let recurring = entry.price.recurring.is_some();
        if mode == "payment" && recurring {
            return Err(StripeError::invalid_param(
                "You specified `payment` mode but passed a recurring price. Either switch to `subscription` mode or use only one-time prices.",
                "mode",
            ));
        }
        if mode == "subscription" && !recurring {
            return Err(StripeError::invalid_param(
                "You must provide at least one recurring price in `subscription` mode when using prices.",
                "mode",
            ));
        }
        if mode != "payment" && !params["payment_intent_data"].is_null() {
            return Err(StripeError::invalid_param(
                "You can only specify `payment_intent_data` in `payment` mode.",
                "payment_intent_data",
            ));
        }
        if mode != "subscription" && !params["subscription_data"].is_null() {
            return Err(StripeError::invalid_param(
                "You can only specify `subscription_data` in `subscription` mode.",
                "subscription_data",
            ));
        }
        if let Some(id) = customer.as_str() {
            books.get("customer", id).map_err(|_| StripeError::NoSuch {
                kind: "customer",
                id: id.to_owned(),
                param: Some("customer".into()),
            })?;
        }
        let expires_at = match expires_at {
            None => now + SESSION_SECONDS,
            Some(t) if (now + SESSION_MIN_SECONDS..=now + SESSION_SECONDS).contains(&t) => t,
            Some(_) => {
                return Err(StripeError::invalid_param(
                    "The `expires_at` timestamp must be between 30 minutes and 24 hours from Checkout Session creation.",
                    "expires_at",
                ));
            }
        };
        let amount = entry.price.unit_amount * quantity;
        let currency = entry.price.currency.clone();
        let inputs = SessionInputs {
            price: price_id.to_owned(),
            quantity,
            payment_intent_metadata: metadata(
                &params["payment_intent_data"]["metadata"],
                "payment_intent_data[metadata]",
            )?,
            subscription_metadata: metadata(
                &params["subscription_data"]["metadata"],
                "subscription_data[metadata]",
            )?,
        };
        let id = format!("cs_test_{}", super::random_alnum(58));
        let base = self.base_url().unwrap_or_default();
        let session = books::session(books::NewSession {
            id: &id,
            created: now,
            expires_at,
            mode,
            url: format!("{base}/checkout/{id}"),
            amount,
            currency: &currency,
            customer,
            customer_email: text(&params["customer_email"], "customer_email")?,
            client_reference_id: text(&params["client_reference_id"], "client_reference_id")?,
            metadata: metadata(&params["metadata"], "metadata")?,
            success_url: text(&params["success_url"], "success_url")?,
            cancel_url: text(&params["cancel_url"], "cancel_url")?,
        });
        books.sessions.insert(id, inputs);
        books.put(session.clone());
        Ok(session)
    }
}
