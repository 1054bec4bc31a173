//! Events and webhooks. Every change makes an event (store-formats S2: `id` `evt_...`,
//! `object: "event"`, `api_version`, `created`, `data.object`, `data.previous_attributes` on
//! `*.updated`, `livemode`, `pending_webhooks`, `request`, `type`), kept in the account's event log
//! (served by `GET /v1/events`) and POSTed to every webhook endpoint as Stripe posts it: the event
//! as pretty-printed JSON, `Content-Type: application/json; charset=utf-8`,
//! `User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)`, and
//! `Stripe-Signature: t=<unix secs>,v1=<hex HMAC-SHA256>` (store-formats S1) with one `v1` per
//! active secret of the endpoint (two while a secret rolls). Every delivery is recorded
//! ([`Delivery`]); an event can be sent again with a fresh `t`; deliveries can be skipped
//! ([`PushMode::Skip`], so only a poller of `/v1/events` finds them) or forged ([`Forge`]).
//!
//! Thin events (`object: "v2.core.event"`, store-deltas S-4) point at an object instead of
//! carrying it and are signed the same way; they are not in the `/v1/events` list.
//!
//! This file holds the endpoints, the signing, the sending and the list's paging; `http.rs`
//! serves `GET /v1/events` and `GET /v1/events/{id}`.

pub(in crate::stripe) mod http;

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use aws_lc_rs::hmac;
use serde::Serialize;
use serde_json::{Value, json};
use time::{OffsetDateTime, macros::format_description};

use super::{API_VERSION, StripeError, StripeSim, books::Books, lock, new_id, random_alnum};

/// How long Stripe waits for an endpoint to answer before it counts the delivery as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How old a forged stale `t` is: past the 300 s tolerance of Stripe's libraries.
const STALE_SECONDS: i64 = 600;
/// How far back `GET /v1/events` reaches, as Stripe keeps events for 30 days.
pub(in crate::stripe) const EVENT_RETENTION_SECONDS: i64 = 30 * 86_400;
const USER_AGENT: &str = "Stripe/1.0 (+https://stripe.com/docs/webhooks)";

/// Something wrong with a delivery's signature, to test that the receiver refuses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forge {
    /// Signed with a secret the endpoint does not have.
    WrongSecret,
    /// Signed correctly, with a `t` ten minutes old.
    StaleTimestamp,
    /// No `Stripe-Signature` header.
    NoSignature,
}

/// Whether and how events are delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PushMode {
    /// Delivered to every endpoint, as Stripe does.
    #[default]
    Send,
    /// Recorded and listed but not delivered: a poller must find them.
    Skip,
    /// Delivered with a forged signature.
    Forge(Forge),
}

/// One POST of an event to a webhook endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub event_id: String,
    pub event_type: String,
    pub url: String,
    /// The HTTP status the endpoint answered; `None` when it did not answer in time.
    pub status: Option<u16>,
    /// The endpoint's answer body, or the transport error.
    pub answer: Option<String>,
    /// The request headers sent, by lowercase name.
    pub headers: BTreeMap<String, String>,
    /// The exact body sent (the signed bytes).
    pub body: String,
    /// When it was sent, by the simulator's clock.
    pub at_ms: i64,
}

impl Delivery {
    /// The `Stripe-Signature` header sent, if any.
    pub fn signature_header(&self) -> Option<&str> {
        self.headers.get("stripe-signature").map(String::as_str)
    }

    /// Whether Stripe would count the delivery as received (a 2xx answer).
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// A webhook endpoint and its signing secrets, the newest last.
struct Endpoint {
    url: String,
    secrets: Vec<String>,
}

/// The webhook sender's state.
pub(in crate::stripe) struct Hooks {
    endpoints: Mutex<Vec<Endpoint>>,
    mode: Mutex<PushMode>,
    deliveries: Mutex<Vec<Delivery>>,
    /// Thin events sent so far, oldest first.
    thin: Mutex<Vec<Value>>,
    http: reqwest::Client,
}

impl Hooks {
    pub(in crate::stripe) fn new() -> Self {
        Self {
            endpoints: Mutex::new(Vec::new()),
            mode: Mutex::new(PushMode::Send),
            deliveries: Mutex::new(Vec::new()),
            thin: Mutex::new(Vec::new()),
            http: reqwest::Client::new(),
        }
    }

    pub(in crate::stripe) fn endpoint_count(&self) -> usize {
        lock(&self.endpoints).len()
    }
}

/// The `v1` signature of a delivery: lowercase hex of HMAC-SHA256 keyed with the endpoint secret
/// as UTF-8 bytes (`whsec_` included, not decoded) over `t + "." + body` (store-formats S1).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    hex::encode(ctx.sign().as_ref())
}

/// The `Stripe-Signature` header for `body` at `t`: `t=<t>` and one `v1=` per secret, in order.
pub fn signature_header(secrets: &[String], t: i64, body: &[u8]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&signature(secret, t, body));
    }
    header
}

/// A new webhook signing secret: `whsec_` and 32 letters and digits.
fn new_secret() -> String {
    format!("whsec_{}", random_alnum(32))
}

/// `secs` as Stripe's v2 API writes a time: RFC 3339 in UTC with milliseconds.
pub(in crate::stripe) fn rfc3339(secs: i64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// The API path an object is served at (`/v1/checkout/sessions/cs_...`).
pub(in crate::stripe) fn object_url(object: &Value) -> String {
    let id = object["id"].as_str().unwrap_or_default();
    let collection = match object["object"].as_str().unwrap_or_default() {
        "checkout.session" => "checkout/sessions",
        "customer" => "customers",
        "payment_intent" => "payment_intents",
        "charge" => "charges",
        "refund" => "refunds",
        "dispute" => "disputes",
        "subscription" => "subscriptions",
        "invoice" => "invoices",
        "price" => "prices",
        _ => "objects",
    };
    format!("/v1/{collection}/{id}")
}

/// Makes an event about `object` (with `previous_attributes` for an update) and keeps it in the
/// log; `pending` is how many endpoints it is owed to.
pub(in crate::stripe) fn record(
    books: &mut Books,
    now: i64,
    kind: &str,
    object: &Value,
    previous: Option<Value>,
    pending: usize,
) -> Value {
    let mut data = json!({"object": object});
    if let Some(p) = previous {
        data["previous_attributes"] = p;
    }
    let event = json!({
        "id": new_id("evt"), "object": "event", "api_version": API_VERSION, "created": now,
        "data": data, "livemode": false, "pending_webhooks": pending,
        "request": {"id": null, "idempotency_key": null}, "type": kind,
    });
    books.events.push(event.clone());
    event
}

/// The newest-first page of `events` that a `GET /v1/events` query asks for (`limit`,
/// `starting_after`, `ending_before`, `created[gt|gte|lt|lte]` or `created=<t>`, `type` with a
/// trailing `*` wildcard as Stripe allows), of those at most 30 days old.
pub(in crate::stripe) fn page(
    events: &[Value],
    query: &Value,
    now: i64,
) -> Result<Value, StripeError> {
    let limit = match &query["limit"] {
        Value::Null => 10,
        v => v
            .as_str()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                StripeError::invalid_param(
                    "Invalid integer: limit must be between 1 and 100",
                    "limit",
                )
            })?,
    };
    let int = |v: &Value, param: &str| -> Result<Option<i64>, StripeError> {
        match v {
            Value::Null => Ok(None),
            v => v
                .as_str()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| StripeError::invalid_param(format!("Invalid integer: {v}"), param)),
        }
    };
    let created = &query["created"];
    let (exact, gt, gte, lt, lte) = if created.is_object() {
        (
            None,
            int(&created["gt"], "created[gt]")?,
            int(&created["gte"], "created[gte]")?,
            int(&created["lt"], "created[lt]")?,
            int(&created["lte"], "created[lte]")?,
        )
    } else {
        (int(created, "created")?, None, None, None, None)
    };
    let kind = query["type"].as_str();
    let matches = |e: &Value| {
        let c = e["created"].as_i64().unwrap_or_default();
        let t = e["type"].as_str().unwrap_or_default();
        c >= now - EVENT_RETENTION_SECONDS
            && exact.is_none_or(|x| c == x)
            && gt.is_none_or(|x| c > x)
            && gte.is_none_or(|x| c >= x)
            && lt.is_none_or(|x| c < x)
            && lte.is_none_or(|x| c <= x)
            && kind.is_none_or(|k| match k.strip_suffix('*') {
                Some(prefix) => t.starts_with(prefix),
                None => t == k,
            })
    };
    // Newest first: the log is oldest first, and events of one second keep their order.
    let newest_first: Vec<&Value> = events.iter().rev().filter(|e| matches(e)).collect();
    let position = |param: &str, id: &str| {
        newest_first
            .iter()
            .position(|e| e["id"] == id)
            .ok_or_else(|| StripeError::NoSuch {
                kind: "event",
                id: id.to_owned(),
                param: Some(param.to_owned()),
            })
    };
    let (data, has_more): (Vec<&Value>, bool) = match (
        query["starting_after"].as_str(),
        query["ending_before"].as_str(),
    ) {
        (Some(_), Some(_)) => {
            return Err(StripeError::invalid(
                "You may only specify one of these parameters: ending_before, starting_after.",
            ));
        }
        (Some(after), None) => {
            let rest = &newest_first[position("starting_after", after)? + 1..];
            (
                rest.iter().take(limit).copied().collect(),
                rest.len() > limit,
            )
        }
        (None, Some(before)) => {
            let newer = &newest_first[..position("ending_before", before)?];
            let from = newer.len().saturating_sub(limit);
            (newer[from..].to_vec(), from > 0)
        }
        (None, None) => (
            newest_first.iter().take(limit).copied().collect(),
            newest_first.len() > limit,
        ),
    };
    Ok(json!({"object": "list", "url": "/v1/events", "has_more": has_more, "data": data}))
}

impl StripeSim {
    /// Adds a webhook endpoint that receives every event, and answers its signing secret
    /// (`whsec_...`). Adding a URL again answers its current secret.
    pub fn add_webhook_endpoint(&self, url: &str) -> String {
        let mut endpoints = lock(&self.hooks.endpoints);
        if let Some(e) = endpoints.iter().find(|e| e.url == url) {
            return e.secrets.last().cloned().unwrap_or_default();
        }
        let secret = new_secret();
        endpoints.push(Endpoint {
            url: url.to_owned(),
            secrets: vec![secret.clone()],
        });
        secret
    }

    /// Rolls an endpoint's signing secret and answers the new one. The one before it keeps
    /// signing too (as during Stripe's rotation window), so deliveries carry two `v1`s; older
    /// ones stop.
    pub fn roll_webhook_secret(&self, url: &str) -> Result<String, StripeError> {
        let mut endpoints = lock(&self.hooks.endpoints);
        let endpoint = endpoints
            .iter_mut()
            .find(|e| e.url == url)
            .ok_or_else(|| StripeError::UnknownEndpoint(url.to_owned()))?;
        let secret = new_secret();
        endpoint.secrets.push(secret.clone());
        let keep = endpoint.secrets.len().saturating_sub(2);
        endpoint.secrets.drain(..keep);
        Ok(secret)
    }

    /// The webhook endpoints' URLs, in the order added.
    pub fn webhook_endpoints(&self) -> Vec<String> {
        lock(&self.hooks.endpoints)
            .iter()
            .map(|e| e.url.clone())
            .collect()
    }

    /// Whether events are delivered (and how) from now on: [`PushMode::Skip`] records them
    /// without delivering until set back to [`PushMode::Send`].
    pub fn set_push_mode(&self, mode: PushMode) {
        *lock(&self.hooks.mode) = mode;
    }

    pub fn push_mode(&self) -> PushMode {
        lock(&self.hooks.mode).clone()
    }

    /// Every delivery so far, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.hooks.deliveries).clone()
    }

    /// Every snapshot event so far, oldest first (what `GET /v1/events` pages through).
    pub fn events(&self) -> Vec<Value> {
        lock(&self.books).events.clone()
    }

    /// The thin events sent so far, oldest first.
    pub fn thin_events(&self) -> Vec<Value> {
        lock(&self.hooks.thin).clone()
    }

    /// Delivers an event to every endpoint as the push mode says; the deliveries made.
    pub(in crate::stripe) async fn deliver(&self, event: &Value) -> Vec<Delivery> {
        let mode = self.push_mode();
        self.deliver_with(event, &mode).await
    }

    async fn deliver_with(&self, event: &Value, mode: &PushMode) -> Vec<Delivery> {
        if *mode == PushMode::Skip {
            return Vec::new();
        }
        let forge = match mode {
            PushMode::Forge(f) => Some(f),
            _ => None,
        };
        // Stripe sends events pretty-printed; the signature covers these exact bytes.
        let body = serde_json::to_string_pretty(event).unwrap_or_default();
        let targets: Vec<(String, Vec<String>)> = lock(&self.hooks.endpoints)
            .iter()
            .map(|e| (e.url.clone(), e.secrets.clone()))
            .collect();
        let mut out = Vec::new();
        for (url, secrets) in targets {
            let mut t = self.now();
            if forge == Some(&Forge::StaleTimestamp) {
                t -= STALE_SECONDS;
            }
            let mut headers = BTreeMap::new();
            headers.insert(
                "content-type".to_owned(),
                "application/json; charset=utf-8".to_owned(),
            );
            headers.insert("user-agent".to_owned(), USER_AGENT.to_owned());
            match forge {
                Some(Forge::NoSignature) => {}
                Some(Forge::WrongSecret) => {
                    headers.insert(
                        "stripe-signature".to_owned(),
                        signature_header(&[new_secret()], t, body.as_bytes()),
                    );
                }
                _ => {
                    headers.insert(
                        "stripe-signature".to_owned(),
                        signature_header(&secrets, t, body.as_bytes()),
                    );
                }
            }
            let mut request = self
                .hooks
                .http
                .post(&url)
                .body(body.clone())
                .timeout(DELIVERY_TIMEOUT);
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            let (status, answer) = match request.send().await {
                Ok(res) => (Some(res.status().as_u16()), res.text().await.ok()),
                Err(e) => (None, Some(e.to_string())),
            };
            let delivery = Delivery {
                event_id: event["id"].as_str().unwrap_or_default().to_owned(),
                event_type: event["type"].as_str().unwrap_or_default().to_owned(),
                url,
                status,
                answer,
                headers,
                body: body.clone(),
                at_ms: self.now_ms(),
            };
            lock(&self.hooks.deliveries).push(delivery.clone());
            out.push(delivery);
        }
        out
    }

    /// The event (snapshot or thin) with this id.
    fn find_event(&self, event_id: &str) -> Result<Value, StripeError> {
        let snapshot = lock(&self.books)
            .events
            .iter()
            .find(|e| e["id"] == event_id)
            .cloned();
        snapshot
            .or_else(|| {
                lock(&self.hooks.thin)
                    .iter()
                    .find(|e| e["id"] == event_id)
                    .cloned()
            })
            .ok_or_else(|| StripeError::no_such("event", event_id))
    }

    /// Delivers an event again to every endpoint, with the same body and a fresh `t`, as Stripe
    /// retries (and as the Dashboard's "Resend" does), whatever the push mode.
    pub async fn resend(&self, event_id: &str) -> Result<Vec<Delivery>, StripeError> {
        self.resend_with(event_id, PushMode::Send).await
    }

    /// [`StripeSim::resend`] with a forged signature ([`PushMode::Skip`] sends as usual).
    pub async fn resend_with(
        &self,
        event_id: &str,
        mode: PushMode,
    ) -> Result<Vec<Delivery>, StripeError> {
        let event = self.find_event(event_id)?;
        let mode = if mode == PushMode::Skip {
            PushMode::Send
        } else {
            mode
        };
        Ok(self.deliver_with(&event, &mode).await)
    }

    /// Sends a thin event (`object: "v2.core.event"`) about an object: its `type` is `v1.` and
    /// the type of the latest snapshot event about the object, its `related_object` the object's
    /// id, kind and API path. Signed like every delivery.
    pub async fn thin_event(&self, related_object_id: &str) -> Result<super::Outcome, StripeError> {
        let (kind, object) =
            {
                let books = lock(&self.books);
                let latest = books
                .events
                .iter()
                .rev()
                .find(|e| e["data"]["object"]["id"] == related_object_id)
                .ok_or_else(|| StripeError::InvalidState(format!(
                    "no event concerns {related_object_id:?}, so there is no thin event to send"
                )))?;
                (
                    format!("v1.{}", latest["type"].as_str().unwrap_or_default()),
                    books
                        .objects
                        .get(related_object_id)
                        .cloned()
                        .unwrap_or_else(|| latest["data"]["object"].clone()),
                )
            };
        let event = json!({
            "id": format!("evt_test_{}", random_alnum(40)),
            "object": "v2.core.event", "type": kind, "created": rfc3339(self.now()),
            "livemode": false, "context": null,
            "related_object": {"id": related_object_id, "type": object["object"],
                "url": object_url(&object)},
            "reason": null,
        });
        lock(&self.hooks.thin).push(event.clone());
        let deliveries = self.deliver(&event).await;
        Ok(super::Outcome {
            events: vec![super::Emitted::new(&event, deliveries)],
            ..Default::default()
        })
    }
}
