//! The OpenAPI document as it is served: what utoipa derives from the handlers and types, then what
//! its attributes cannot carry, added here in one place so that the document states every rule the
//! server enforces and every status it answers (a generated client works first time):
//!
//! - the statuses every route of a kind answers: 401 without a valid key, 403 for a key that may not,
//!   404 for an unknown app or resource, 400 for a request that breaks the document, 413 and 415 for
//!   bodies, 409 for an `Idempotency-Key` in use; and the `Idempotency-Key` header on every write;
//! - the length and characters of each text field, from the same [`TextRule`]s and id patterns the
//!   server checks with ([`gateway_core::text`], [`gateway_core::ids`]);
//! - the rules that tie fields together ("exactly one of", what each product kind takes), as JSON
//!   Schema the derive cannot write.
//!
//! What no schema can state (a store's signature, ids in the path and the body that must match, an
//! end date in the past) is answered 422, and each route that can answers it lists it. CI runs
//! Schemathesis against a gateway on each database to hold the document and the server to each other.

use gateway_core::{
    AppId, AppUserId, EntitlementId, ProductId, ResourceId,
    text::{self, TextRule},
};
use serde_json::{Map, Value, json};

use crate::{service::webhooks::EVENT_TYPES, stores};

/// The document to serve.
pub fn document(generated: &utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(generated).expect("the document serializes");
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            for (method, op) in item.as_object_mut().into_iter().flatten() {
                standard_answers(path, method, op);
            }
        }
    }
    // A CSV file is text without NUL (a file holding one is refused as not a text file).
    let csv = &mut doc["paths"]["/v1/apps/{app}/products/import"]["post"]["requestBody"]["content"]
        ["text/csv"]["schema"];
    assert!(csv.is_object(), "the import takes a CSV body");
    csv["pattern"] = "^[^\\x00]*$".into();
    let schemas = &mut doc["components"]["schemas"];
    for (schema, field, rule) in field_rules() {
        let property = &mut schemas[schema]["properties"][field];
        assert!(!property.is_null(), "{schema}.{field} is in the document");
        rule.apply(property);
    }
    tie_fields(schemas);
    doc
}

/// What a string field holds.
enum Rule {
    Text(&'static TextRule),
    /// An id newtype's pattern and length, for a field the body takes as a string.
    Id(&'static str, usize),
    /// Only these values.
    OneOf(&'static [&'static str]),
    /// Array items of a rule, with bounds on the count.
    Items(Box<Rule>, Option<usize>, Option<usize>),
    /// An integer range.
    Range(i64, i64),
}

impl Rule {
    /// Adds the rule to a property schema, keeping its type (and so whether `null` is taken).
    fn apply(&self, property: &mut Value) {
        // A `$ref` or `oneOf [$ref, null]` (utoipa's way for a typed field) becomes a plain string.
        if property.get("oneOf").is_some() || property.get("$ref").is_some() {
            let nullable = property["oneOf"]
                .as_array()
                .is_some_and(|v| v.iter().any(|s| s["type"] == "null"));
            let description = property.get("description").cloned();
            *property =
                json!({"type": if nullable { json!(["string", "null"]) } else { json!("string") }});
            if let Some(d) = description {
                property["description"] = d;
            }
        }
        let p = property.as_object_mut().expect("a property is an object");
        match self {
            Rule::Text(rule) => {
                if rule.min > 0 {
                    p.insert("minLength".into(), rule.min.into());
                }
                p.insert("maxLength".into(), rule.max.into());
                p.insert("pattern".into(), rule.pattern.into());
            }
            Rule::Id(pattern, max) => {
                p.insert("minLength".into(), 1.into());
                p.insert("maxLength".into(), (*max).into());
                p.insert("pattern".into(), (*pattern).into());
            }
            Rule::OneOf(values) => {
                p.insert("enum".into(), json!(values));
            }
            Rule::Items(rule, min, max) => {
                if let Some(min) = min {
                    p.insert("minItems".into(), (*min).into());
                }
                if let Some(max) = max {
                    p.insert("maxItems".into(), (*max).into());
                }
                let mut items = p.remove("items").unwrap_or_else(|| json!({}));
                rule.apply(&mut items);
                p.insert("items".into(), items);
            }
            Rule::Range(min, max) => {
                p.insert("minimum".into(), (*min).into());
                p.insert("maximum".into(), (*max).into());
            }
        }
    }
}

fn t(rule: &'static TextRule) -> Rule {
    Rule::Text(rule)
}

fn items(rule: Rule) -> Rule {
    Rule::Items(Box::new(rule), None, None)
}

/// The rule of every string (and bounded number) field of the request bodies, by schema and field.
/// The server checks the same rules where each body is taken (`service::apps::validate` and the like).
fn field_rules() -> Vec<(&'static str, &'static str, Rule)> {
    use Rule::Id;
    let app_id = || Id(AppId::PATTERN, AppId::MAX_LEN);
    let product_id = || Id(ProductId::PATTERN, ProductId::MAX_LEN);
    let entitlement_id = || Id(EntitlementId::PATTERN, EntitlementId::MAX_LEN);
    vec![
        ("NewApp", "id", app_id()),
        ("NewApp", "name", t(&text::NAME)),
        ("NewApp", "embargoed_countries", items(t(&text::COUNTRY))),
        ("AppPatch", "name", t(&text::NAME)),
        ("AppPatch", "embargoed_countries", items(t(&text::COUNTRY))),
        ("AppStoreConfig", "bundle_id", t(&text::STORE_ID)),
        ("AppStoreConfig", "issuer_id", t(&text::STORE_ID)),
        ("AppStoreConfig", "key_id", t(&text::STORE_ID)),
        (
            "AppStoreConfig",
            "private_key_pem",
            t(&text::PRIVATE_KEY_PEM),
        ),
        (
            "AppStoreConfig",
            "root_certificates_pem",
            items(t(&text::CERTIFICATE_PEM)),
        ),
        ("AppStoreConfig", "api_base_url", t(&text::URL_TEXT)),
        ("AppStoreConfig", "shared_secret", t(&text::SECRET_TEXT)),
        ("AppStoreConfig", "verify_receipt_url", t(&text::URL_TEXT)),
        (
            "AppStoreConfig",
            "verify_receipt_sandbox_url",
            t(&text::URL_TEXT),
        ),
        ("PlayStoreConfig", "package_name", t(&text::STORE_ID)),
        (
            "PlayStoreConfig",
            "service_account_json",
            t(&text::JSON_TEXT),
        ),
        ("PlayStoreConfig", "api_base_url", t(&text::URL_TEXT)),
        ("PlayStoreConfig", "pubsub_audience", t(&text::STORE_ID)),
        (
            "PlayStoreConfig",
            "pubsub_service_account",
            t(&text::STORE_ID),
        ),
        ("PlayStoreConfig", "google_certs_url", t(&text::URL_TEXT)),
        ("PlayStoreConfig", "push_token", t(&text::SECRET_TEXT)),
        ("StripeConfig", "secret_key", t(&text::SECRET_TEXT)),
        ("StripeConfig", "webhook_secret", t(&text::SECRET_TEXT)),
        (
            "StripeConfig",
            "previous_webhook_secret",
            t(&text::SECRET_TEXT),
        ),
        ("StripeConfig", "api_base_url", t(&text::URL_TEXT)),
        (
            "RevenueCatConfig",
            "webhook_authorization",
            t(&text::SECRET_TEXT),
        ),
        ("CustomerAuthConfig", "jwks_url", t(&text::URL_TEXT)),
        ("CustomerAuthConfig", "issuer", t(&text::STORE_ID)),
        ("CustomerAuthConfig", "audience", t(&text::STORE_ID)),
        ("StoreSkus", "app_store", t(&text::STORE_ID)),
        ("StoreSkus", "play_store", t(&text::STORE_ID)),
        ("StoreSkus", "play_base_plan", t(&text::STORE_ID)),
        ("StoreSkus", "stripe_price", t(&text::STORE_ID)),
        (
            "ConsumableSpec",
            "amount",
            Rule::Range(1, gateway_core::catalog::MAX_CONSUMABLE_AMOUNT),
        ),
        ("GrantBody", "entitlement_id", entitlement_id()),
        ("GrantBody", "product_id", product_id()),
        ("GrantBody", "reason", t(&text::REASON)),
        ("ReasonBody", "reason", t(&text::REASON)),
        ("SpendBody", "reason", t(&text::REASON)),
        ("RefundBody", "reason", t(&text::REASON)),
        ("SpendBody", "amount", Rule::Range(1, i64::MAX / 4)),
        (
            "OrderBody",
            "product_ids",
            Rule::Items(Box::new(product_id()), Some(1), None),
        ),
        ("OrderBody", "country", t(&text::ANY_CASE_COUNTRY)),
        (
            "PurchaseBody",
            "app_user_id",
            Id(AppUserId::PATTERN, AppUserId::MAX_LEN),
        ),
        (
            "PurchaseBody",
            "store",
            Rule::OneOf(&["app_store", "play_store", "stripe"]),
        ),
        (
            "PurchaseBody",
            "order_id",
            Id(ResourceId::PATTERN, ResourceId::MAX_LEN),
        ),
        ("PurchaseBody", "signed_transaction", t(&text::SIGNED_DATA)),
        ("PurchaseBody", "transaction_id", t(&text::TRANSACTION_ID)),
        ("PurchaseBody", "receipt_data", t(&text::RECEIPT)),
        ("PurchaseBody", "product_id", product_id()),
        ("PurchaseBody", "purchase_token", t(&text::PURCHASE_TOKEN)),
        ("PurchaseBody", "checkout_session_id", t(&text::STORE_ID)),
        (
            "PurchaseBody",
            "signed_app_transaction",
            t(&text::SIGNED_DATA),
        ),
        (
            "OfferSignatureBody",
            "app_user_id",
            Id(AppUserId::PATTERN, AppUserId::MAX_LEN),
        ),
        (
            "OfferSignatureBody",
            "kind",
            Rule::OneOf(&["promotional", "introductory_eligibility"]),
        ),
        ("OfferSignatureBody", "product_id", t(&text::STORE_ID)),
        ("OfferSignatureBody", "offer_identifier", t(&text::STORE_ID)),
        (
            "OfferSignatureBody",
            "application_username",
            t(&text::STORE_ID),
        ),
        (
            "OfferSignatureBody",
            "transaction_id",
            t(&text::TRANSACTION_ID),
        ),
        (
            "CheckoutBody",
            "app_user_id",
            Id(AppUserId::PATTERN, AppUserId::MAX_LEN),
        ),
        ("CheckoutBody", "product_id", product_id()),
        ("CheckoutBody", "success_url", t(&text::URL_TEXT)),
        ("CheckoutBody", "cancel_url", t(&text::URL_TEXT)),
        ("CheckoutBody", "country", t(&text::ANY_CASE_COUNTRY)),
        (
            "RestoreBody",
            "store",
            Rule::OneOf(&["app_store", "play_store"]),
        ),
        (
            "RestoreBody",
            "signed_transactions",
            Rule::Items(
                Box::new(t(&text::SIGNED_DATA)),
                None,
                Some(stores::apple::MAX_RESTORE),
            ),
        ),
        ("RestoreBody", "receipt_data", t(&text::RECEIPT)),
        (
            "RestoreBody",
            "purchase_tokens",
            Rule::Items(
                Box::new(t(&text::PURCHASE_TOKEN)),
                None,
                Some(stores::play::MAX_RESTORE),
            ),
        ),
        ("NewEndpoint", "url", t(&text::URL_TEXT)),
        ("NewEndpoint", "events", items(Rule::OneOf(EVENT_TYPES))),
        ("NewEndpoint", "description", t(&text::DESCRIPTION)),
        ("NewEndpoint", "secret", t(&text::WEBHOOK_SECRET)),
        ("EndpointPatch", "url", t(&text::URL_TEXT)),
        ("EndpointPatch", "events", items(Rule::OneOf(EVENT_TYPES))),
        ("EndpointPatch", "description", t(&text::DESCRIPTION)),
        ("Settings", "client_id", t(&text::STORE_ID)),
        ("Settings", "client_secret", t(&text::SECRET_TEXT)),
        ("Settings", "default_mode", t(&text::STORE_ID)),
        ("SecretRotation", "secret", t(&text::WEBHOOK_SECRET)),
        ("Envelope", "signedPayload", t(&text::SIGNED_DATA)),
        (
            "SecretRotation",
            "overlap_seconds",
            Rule::Range(0, 30 * 86_400),
        ),
        (
            "SigningKeyRotation",
            "overlap_seconds",
            Rule::Range(crate::service::tokens::TOKEN_LIFETIME_SECS, 30 * 86_400),
        ),
    ]
}

/// `{"required": [field], "properties": {field: {"type": kind}}}`: the field is there and not null.
fn present(field: &str, kind: &str) -> Value {
    json!({"required": [field], "properties": {field: {"type": kind}}})
}

/// The rules that tie fields of one body together.
fn tie_fields(schemas: &mut Value) {
    // An entitlement's attributes are free JSON for the downstream, held to the one rule of every
    // body: no NUL in any string or key.
    let no_nul = json!({"type": "string", "pattern": "^[^\\x00]*$"});
    schemas["JsonValue"] = json!({
        "description": "Any JSON value without NUL in its strings and keys",
        "anyOf": [
            {"type": ["null", "boolean", "number"]},
            no_nul,
            {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
            {"type": "object", "propertyNames": no_nul, "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
        ],
    });
    schemas["EntitlementSpec"]["properties"]["attributes"] = json!({
        "type": "object",
        "propertyNames": no_nul,
        "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
    });
    // A new app's Stripe and RevenueCat sections carry their secrets; a patch may leave out a stored one.
    for (section, secret) in [
        ("stripe", "webhook_secret"),
        ("revenuecat", "webhook_authorization"),
    ] {
        let property = &mut schemas["NewApp"]["properties"][section];
        let reference = property["oneOf"][0].clone();
        *property =
            json!({"oneOf": [{"allOf": [reference, present(secret, "string")]}, {"type": "null"}]});
    }
    let mut add = |schema: &str, keyword: &str, value: Value| {
        let s = schemas[schema]
            .as_object_mut()
            .unwrap_or_else(|| panic!("{schema} is in the document"));
        s.insert(keyword.into(), value);
    };
    // A Production app is checked against its App Store app id, so it needs one.
    add(
        "AppStoreConfig",
        "anyOf",
        json!([
            {"required": ["environment"], "properties": {"environment": {"const": "Sandbox"}}},
            present("app_apple_id", "integer"),
        ]),
    );
    add(
        "CustomerAuthConfig",
        "anyOf",
        json!([{"properties": {"mode": {"const": "key"}}}, present("jwks_url", "string")]),
    );
    add(
        "NewKeyBody",
        "oneOf",
        json!([
            {"required": ["kind", "scopes"], "properties": {"kind": {"const": "secret"}, "scopes": {"minItems": 1, "items": {"enum": ["catalog", "customers", "purchases", "refunds", "read"]}}}},
            {"properties": {"kind": {"const": "publishable"}, "scopes": {"maxItems": 0}}},
        ]),
    );
    add(
        "GrantBody",
        "oneOf",
        json!([
            present("entitlement_id", "string"),
            present("product_id", "string")
        ]),
    );
    // An App Store purchase carries one of its three proofs, an AppTransaction beside it or alone;
    // a Play purchase its token alone; a Stripe one its Checkout Session.
    let apple = |proof: &str| {
        json!({"allOf": [present(proof, "string"), {"properties": {
            "store": {"const": "app_store"}, "purchase_token": {"type": "null"},
            "checkout_session_id": {"type": "null"}}}]})
    };
    add(
        "PurchaseBody",
        "oneOf",
        json!([
            apple("signed_transaction"),
            apple("transaction_id"),
            apple("receipt_data"),
            {"allOf": [present("signed_app_transaction", "string"), {"properties": {
                "store": {"const": "app_store"}, "signed_transaction": {"type": "null"},
                "transaction_id": {"type": "null"}, "receipt_data": {"type": "null"},
                "purchase_token": {"type": "null"}, "checkout_session_id": {"type": "null"}}}]},
            {"allOf": [present("purchase_token", "string"), {"properties": {
                "store": {"const": "play_store"}, "signed_transaction": {"type": "null"},
                "transaction_id": {"type": "null"}, "receipt_data": {"type": "null"},
                "checkout_session_id": {"type": "null"}, "signed_app_transaction": {"type": "null"}}}]},
            {"allOf": [present("checkout_session_id", "string"), {"properties": {
                "store": {"const": "stripe"}, "signed_transaction": {"type": "null"},
                "transaction_id": {"type": "null"}, "receipt_data": {"type": "null"},
                "purchase_token": {"type": "null"}, "signed_app_transaction": {"type": "null"}}}]},
        ]),
    );
    // A promotional offer names its offer; an eligibility states it.
    add(
        "OfferSignatureBody",
        "oneOf",
        json!([
            {"allOf": [present("offer_identifier", "string"), {"properties": {
                "kind": {"const": "promotional"}, "allow_introductory_offer": {"type": "null"}}}]},
            {"allOf": [present("allow_introductory_offer", "boolean"), {"properties": {
                "kind": {"const": "introductory_eligibility"}, "offer_identifier": {"type": "null"},
                "application_username": {"type": "null"}}}]},
        ]),
    );
    add(
        "RestoreBody",
        "anyOf",
        json!([
            {"required": ["signed_transactions"], "properties": {"store": {"const": "app_store"},
                "signed_transactions": {"minItems": 1}, "purchase_tokens": {"maxItems": 0}}},
            {"allOf": [present("receipt_data", "string"), {"properties": {
                "store": {"const": "app_store"}, "purchase_tokens": {"maxItems": 0}}}]},
            {"required": ["purchase_tokens"], "properties": {"store": {"const": "play_store"},
                "purchase_tokens": {"minItems": 1}, "signed_transactions": {"maxItems": 0},
                "receipt_data": {"type": "null"}}},
        ]),
    );
    // A webhook takes a signing secret and every event type; the Open edX connector takes its OAuth2
    // client and the entitlement events.
    add(
        "NewEndpoint",
        "oneOf",
        json!([
            {"properties": {"kind": {"const": "webhook"}, "openedx": {"type": "null"}}},
            {"required": ["kind", "openedx"], "properties": {
                "kind": {"const": "openedx"},
                "openedx": {"$ref": "#/components/schemas/Settings"},
                "secret": {"type": "null"},
                "events": {"items": {"enum": crate::service::openedx::EVENT_TYPES}},
            }},
        ]),
    );
    // What each kind of product takes: a consumable its credit, a non-renewing product an end, a
    // subscription no end of its own (the store's), every other kind at least one entitlement.
    let no = json!({"type": "null"});
    let entitlements = json!({"type": "array", "minItems": 1});
    let end = |field: &str| present(field, "string");
    add(
        "ProductBody",
        "oneOf",
        json!([
            {"required": ["kind", "entitlements"], "properties": {"kind": {"const": "non_consumable"}, "consumable": no, "entitlements": entitlements}},
            {"required": ["kind", "consumable"], "properties": {"kind": {"const": "consumable"}, "consumable": {"$ref": "#/components/schemas/ConsumableSpec"}}},
            {"required": ["kind", "entitlements"], "properties": {"kind": {"const": "subscription"}, "consumable": no, "access_duration": no, "expires_at": no, "entitlements": entitlements}},
            {"required": ["kind", "entitlements"], "properties": {"kind": {"const": "non_renewing"}, "consumable": no, "entitlements": entitlements}, "anyOf": [end("access_duration"), end("expires_at")]},
        ]),
    );
    add(
        "ProductBody",
        "not",
        json!({"required": ["access_duration", "expires_at"], "properties": {"access_duration": {"type": "string"}, "expires_at": {"type": "string"}}}),
    );
}

/// The statuses a route of its kind answers, and the `Idempotency-Key` header on writes.
fn standard_answers(path: &str, method: &str, op: &mut Value) {
    let Some(op) = op.as_object_mut() else {
        return;
    };
    let secured = op
        .get("security")
        .and_then(Value::as_array)
        .is_none_or(|s| !s.iter().any(|r| r.as_object().is_some_and(Map::is_empty)));
    let write = matches!(method, "post" | "put" | "patch" | "delete");
    let any_body = op.contains_key("requestBody");
    // Bodies the handler reads by content type (JSON, or CSV for an import); an optional body (a
    // rotation's) is read as it comes.
    let typed_body = secured
        && op
            .get("requestBody")
            .and_then(|b| b.get("required"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    // Store notifications take no key, so no key scopes an `Idempotency-Key` there.
    if write && secured {
        let params = op
            .entry("parameters")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("parameters are a list");
        let schema = json!({"type": "string", "minLength": text::IDEMPOTENCY_KEY.min, "maxLength": text::IDEMPOTENCY_KEY.max, "pattern": text::IDEMPOTENCY_KEY.pattern});
        match params.iter_mut().find(|p| p["name"] == "Idempotency-Key") {
            // A call that requires one (a spend) declares it; its schema is the rule's.
            Some(declared) => declared["schema"] = schema,
            None => params.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "A repeat with the same key (and the same request) gets the first answer, with `Idempotent-Replayed: true`.",
                "schema": schema,
            })),
        }
    }
    let has_params = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses are an object");
    // Wildcards say nothing a client can act on: each status is listed instead.
    responses.retain(|status, _| !status.ends_with("XX"));
    let mut answer = |status: &str, description: &str| {
        responses.entry(status).or_insert_with(|| {
            json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            })
        });
    };
    if has_params || any_body {
        answer(
            "400",
            "The request breaks a rule this document states; nothing changed",
        );
    }
    if secured {
        answer(
            "401",
            "`unauthorized`: no API key, or one that is not valid or was revoked (checked first)",
        );
        answer("403", "`forbidden`: this key may not do this");
    }
    if path.contains('{') {
        answer(
            "404",
            "The app (`app_not_found`) or the resource the path names is not there",
        );
    }
    if any_body {
        answer("413", "`body_too_large`: the body is over 1 MiB");
    }
    if typed_body {
        answer(
            "415",
            "`unsupported_media_type`: the body is not of the content type this call takes",
        );
    }
    if write && secured {
        answer(
            "409",
            "`idempotency_key_in_use` or `idempotency_key_reused`, or a conflict with the state named by the code",
        );
    }
}
