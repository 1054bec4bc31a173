//! What Stripe sends, field for field, at the API version the gateway pins ([`API_VERSION`]): the
//! event envelope and the objects of the events the gateway takes. Fields a payload may leave out
//! are `Option`s; an id Stripe may expand into its object is read either way ([`Expandable`]);
//! fields the gateway does not read are not modelled (serde skips them). Times are Unix seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// The API version the gateway sends as `Stripe-Version` and expects its webhook endpoint to be
/// pinned to.
pub const API_VERSION: &str = "2026-07-29.dahlia";

/// An id Stripe writes as a string, or as the object it names when expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Expandable(pub Option<String>);

impl<'de> Deserialize<'de> for Expandable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Option::<serde_json::Value>::deserialize(d)?;
        Ok(Expandable(match v {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Object(o)) => {
                o.get("id").and_then(|i| i.as_str()).map(str::to_owned)
            }
            _ => None,
        }))
    }
}

impl Expandable {
    pub fn id(&self) -> Option<&str> {
        self.0.as_deref().filter(|s| !s.is_empty())
    }
}

/// `metadata`: string keys and values.
pub type Metadata = BTreeMap<String, String>;

/// A webhook event (`object: "event"`, a snapshot event).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Event {
    pub id: String,
    pub object: String,
    #[serde(default)]
    pub api_version: Option<String>,
    pub created: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: EventData,
    #[serde(default)]
    pub livemode: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct EventData {
    pub object: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_attributes: Option<serde_json::Value>,
}

/// A thin event (`object: "v2.core.event"`): no snapshot, only the object it is about.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ThinEvent {
    pub id: String,
    pub object: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339, unlike snapshot events.
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub livemode: bool,
    #[serde(default)]
    pub related_object: Option<RelatedObject>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RelatedObject {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub url: Option<String>,
}

/// `checkout.session`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct CheckoutSession {
    pub id: String,
    /// `payment`, `subscription` or `setup`.
    #[serde(default)]
    pub mode: String,
    /// `open`, `complete` or `expired`.
    #[serde(default)]
    pub status: Option<String>,
    /// `paid`, `unpaid` or `no_payment_required`.
    #[serde(default)]
    pub payment_status: String,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub customer: Expandable,
    #[serde(default)]
    pub payment_intent: Expandable,
    #[serde(default)]
    pub subscription: Expandable,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

/// `payment_intent`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct PaymentIntent {
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub amount: i64,
    #[serde(default)]
    pub customer: Expandable,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub created: i64,
}

/// `charge`. Its refunds are not in webhook payloads: `amount_refunded` is the running total.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Charge {
    pub id: String,
    #[serde(default)]
    pub amount: i64,
    #[serde(default)]
    pub amount_refunded: i64,
    /// True only when the whole charge is refunded.
    #[serde(default)]
    pub refunded: bool,
    #[serde(default)]
    pub payment_intent: Expandable,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub created: i64,
}

/// `refund`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Refund {
    pub id: String,
    #[serde(default)]
    pub amount: i64,
    #[serde(default)]
    pub charge: Expandable,
    #[serde(default)]
    pub payment_intent: Expandable,
    /// `pending`, `requires_action`, `succeeded`, `failed` or `canceled`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub created: i64,
}

/// `dispute`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Dispute {
    pub id: String,
    #[serde(default)]
    pub charge: Expandable,
    #[serde(default)]
    pub payment_intent: Expandable,
    /// `warning_needs_response`, `warning_under_review`, `warning_closed`, `needs_response`,
    /// `under_review`, `won`, `lost` or `prevented`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub amount: i64,
    #[serde(default)]
    pub created: i64,
}

/// `subscription`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Subscription {
    pub id: String,
    #[serde(default)]
    pub customer: Expandable,
    /// `incomplete`, `incomplete_expired`, `trialing`, `active`, `past_due`, `canceled`, `unpaid`
    /// or `paused`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub cancel_at_period_end: bool,
    #[serde(default)]
    pub canceled_at: Option<i64>,
    #[serde(default)]
    pub ended_at: Option<i64>,
    #[serde(default)]
    pub start_date: Option<i64>,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub items: List<SubscriptionItem>,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub latest_invoice: Expandable,
}

/// A list Stripe embeds (`object: "list"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List {
            data: Vec::new(),
            has_more: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct SubscriptionItem {
    #[serde(default)]
    pub price: Option<Price>,
    /// On the item since API 2025-03-31 (it left the subscription).
    #[serde(default)]
    pub current_period_start: Option<i64>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Price {
    pub id: String,
}

impl Subscription {
    /// The price of its (first) item: the catalog's `stripe_price`.
    pub fn price(&self) -> Option<&str> {
        self.items
            .data
            .first()?
            .price
            .as_ref()
            .map(|p| p.id.as_str())
    }

    /// The end of the paid period (the latest of its items').
    pub fn period_end(&self) -> Option<i64> {
        self.items
            .data
            .iter()
            .filter_map(|i| i.current_period_end)
            .max()
    }
}

/// `invoice`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Invoice {
    pub id: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub billing_reason: Option<String>,
    #[serde(default)]
    pub parent: Option<InvoiceParent>,
    /// Older API versions only.
    #[serde(default)]
    pub subscription: Expandable,
    #[serde(default)]
    pub lines: List<InvoiceLine>,
    #[serde(default)]
    pub created: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct InvoiceParent {
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct SubscriptionDetails {
    #[serde(default)]
    pub subscription: Expandable,
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct InvoiceLine {
    #[serde(default)]
    pub period: Option<Period>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Period {
    pub start: i64,
    pub end: i64,
}

impl Invoice {
    /// The subscription it bills: `parent.subscription_details.subscription` (or the older
    /// top-level `subscription`).
    pub fn subscription_id(&self) -> Option<&str> {
        self.parent
            .as_ref()
            .and_then(|p| p.subscription_details.as_ref())
            .and_then(|d| d.subscription.id())
            .or_else(|| self.subscription.id())
    }

    /// The end of the period it pays for (the latest of its lines').
    pub fn period_end(&self) -> Option<i64> {
        self.lines
            .data
            .iter()
            .filter_map(|l| l.period.as_ref().map(|p| p.end))
            .max()
    }
}
