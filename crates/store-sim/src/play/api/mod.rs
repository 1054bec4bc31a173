//! The Play Developer API (Android Publisher v3) under
//! `/androidpublisher/v3/applications/{packageName}/...`, paths exactly as the discovery document
//! has them:
//!
//! - `GET purchases/productsv2/tokens/{token}` (`ProductPurchaseV2`),
//!   `GET purchases/products/{productId}/tokens/{token}` (v1 `ProductPurchase`),
//!   `POST purchases/products/{productId}/tokens/{token}:acknowledge` and `:consume`;
//! - `GET purchases/subscriptionsv2/tokens/{token}` (`SubscriptionPurchaseV2`; 410 once expired
//!   more than 60 days), `POST purchases/subscriptionsv2/tokens/{token}:revoke`,
//!   `POST purchases/subscriptions/{subscriptionId}/tokens/{token}:acknowledge`;
//! - `GET purchases/voidedpurchases` (token paging, `type`, `includeQuantityBasedPartialRefund`);
//! - `GET orders/{orderId}`, `GET orders:batchGet`, `POST orders/{orderId}:refund`,
//!   `POST orders/{orderId}:reviewrefund`.
//!
//! Every call needs `Authorization: Bearer` with a token from `POST /token` that is live, has the
//! androidpublisher scope and belongs to an account granted the package (401, 403, or 404 for an
//! unknown package, otherwise). Errors use Google's envelope
//! `{"error": {"code", "message", "status", "errors": [{"message", "domain", "reason"}]}}`.
//! Calls are logged ([`ApiCall`]); the next calls can be made to fail (429, 503, ...) to exercise
//! retries. Acknowledgements and refund reviews are recorded for tests to read.
//!
//! This file holds the log, the faults, the records and Google's errors; `http.rs` is the router
//! and the handlers.

mod http;

pub(in crate::play) use http::fallback;

use std::{collections::VecDeque, sync::Mutex};

use serde::Serialize;
use serde_json::Value;

use super::{PlaySim, lock};

/// One request the API took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiCall {
    pub method: String,
    /// The path as sent, e.g. `/androidpublisher/v3/applications/com.acme/purchases/products/coins/tokens/abc:acknowledge`.
    pub path: String,
    pub query: Option<String>,
    /// The status it was answered with.
    pub status: u16,
    pub at_ms: i64,
}

/// Which acknowledge endpoint was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProductKind {
    /// `purchases.products.acknowledge`.
    OneTime,
    /// `purchases.subscriptions.acknowledge`.
    Subscription,
}

/// An acknowledgement the API accepted, with what it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acknowledgement {
    pub purchase_token: String,
    pub kind: ProductKind,
    pub developer_payload: Option<String>,
    /// `externalAccountIds.obfuscatedAccountId` (subscriptions only).
    pub obfuscated_account_id: Option<String>,
    /// `externalAccountIds.obfuscatedProfileId` (subscriptions only).
    pub obfuscated_profile_id: Option<String>,
    pub at_ms: i64,
}

/// The answer to a refund review Google recorded (the first `orders.reviewrefund` for a pending
/// refund token; later ones are answered 200 and ignored).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefundReview {
    pub order_id: String,
    pub pending_refund_token: String,
    pub sample_content_provided: bool,
    /// `DECLINE`, `APPROVE` or `NEUTRAL`.
    pub refund_preference: String,
    pub consumption_percentage_milliunits: Option<i64>,
    /// The request body as sent.
    pub body: Value,
    pub at_ms: i64,
}

/// The API's own state (the purchases are in the books).
#[derive(Default)]
pub(in crate::play) struct ApiState {
    calls: Mutex<Vec<ApiCall>>,
    /// Answers to give before the real ones: (status, Retry-After).
    faults: Mutex<VecDeque<(u16, Option<String>)>>,
    /// Calls to let through before the faults apply.
    faults_after: Mutex<u64>,
    acknowledgements: Mutex<Vec<Acknowledgement>>,
    reviews: Mutex<Vec<RefundReview>>,
    /// Reviews answered after the first, for the same pending refund token (ignored by Google).
    ignored_reviews: Mutex<u64>,
    /// Tokens `purchases.productsv2` refuses while v1 answers for them.
    v1_only: Mutex<std::collections::HashSet<String>>,
}

/// An error in Google's envelope (boxed: errors travel in `Result`s on every path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::play) struct GoogleError(Box<ErrorBody>);

/// What Google's envelope says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorBody {
    code: u16,
    status: &'static str,
    message: String,
    /// `errors[0].message` when it differs from `message`.
    detail: Option<&'static str>,
    domain: &'static str,
    reason: &'static str,
    /// `errors[0].location` and `locationType`.
    location: Option<(&'static str, &'static str)>,
    retry_after: Option<String>,
}

impl From<ErrorBody> for GoogleError {
    fn from(body: ErrorBody) -> Self {
        Self(Box::new(body))
    }
}

impl ErrorBody {
    fn new(
        code: u16,
        status: &'static str,
        message: &str,
        domain: &'static str,
        reason: &'static str,
    ) -> Self {
        Self {
            code,
            status,
            message: message.to_owned(),
            detail: None,
            domain,
            reason,
            location: None,
            retry_after: None,
        }
    }
}

impl GoogleError {
    /// No `Authorization` header.
    fn login_required() -> Self {
        ErrorBody {
            detail: Some("Login Required."),
            location: Some(("Authorization", "header")),
            ..ErrorBody::new(
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                "global",
                "required",
            )
        }.into()
    }

    /// A token Google did not issue, expired, or of a revoked key.
    fn invalid_credentials() -> Self {
        ErrorBody {
            detail: Some("Invalid Credentials"),
            location: Some(("Authorization", "header")),
            ..ErrorBody::new(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                "global",
                "authError",
            )
        }.into()
    }

    fn insufficient_scopes() -> Self {
        ErrorBody {
            detail: Some("Insufficient Permission"),
            ..ErrorBody::new(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                "global",
                "insufficientPermissions",
            )
        }
        .into()
    }

    fn permission_denied() -> Self {
        ErrorBody::new(
            403,
            "PERMISSION_DENIED",
            "The current user has insufficient permissions to perform the requested operation.",
            "androidpublisher",
            "permissionDenied",
        )
        .into()
    }

    fn application_not_found() -> Self {
        ErrorBody {
            location: Some(("packageName", "parameter")),
            ..ErrorBody::new(
                404,
                "NOT_FOUND",
                "No application was found for the given package name.",
                "global",
                "applicationNotFound",
            )
        }
        .into()
    }

    /// An unknown purchase token, or one of another product or kind.
    fn invalid_token() -> Self {
        ErrorBody {
            location: Some(("token", "parameter")),
            ..ErrorBody::new(
                400,
                "INVALID_ARGUMENT",
                "The purchase token is no longer valid.",
                "global",
                "invalid",
            )
        }
        .into()
    }

    /// A subscription expired more than 60 days ago.
    fn subscription_gone() -> Self {
        ErrorBody::new(
            410,
            "FAILED_PRECONDITION",
            "The subscription purchase is no longer available for query because it has been expired for too long.",
            "androidpublisher",
            "subscriptionPurchaseNoLongerAvailable",
        ).into()
    }

    /// Acknowledging, consuming or revoking a purchase in the wrong state.
    fn invalid_purchase_state() -> Self {
        ErrorBody {
            location: Some(("token", "parameter")),
            ..ErrorBody::new(
                400,
                "FAILED_PRECONDITION",
                "The purchase is not in a valid state to perform the desired operation.",
                "androidpublisher",
                "invalidPurchaseState",
            )
        }
        .into()
    }

    fn bad_request(message: &str) -> Self {
        ErrorBody::new(400, "INVALID_ARGUMENT", message, "global", "badRequest").into()
    }

    fn order_not_found(order_id: &str) -> Self {
        ErrorBody {
            location: Some(("orderId", "parameter")),
            ..ErrorBody::new(
                404,
                "NOT_FOUND",
                &format!("Order {order_id} was not found."),
                "global",
                "notFound",
            )
        }
        .into()
    }

    fn not_found() -> Self {
        ErrorBody::new(
            404,
            "NOT_FOUND",
            "The requested URL was not found on this server.",
            "global",
            "notFound",
        )
        .into()
    }

    /// A method the discovery document has and the simulator does not.
    fn unimplemented(method: &str) -> Self {
        ErrorBody::new(
            501,
            "UNIMPLEMENTED",
            &format!("The simulator does not implement {method}."),
            "global",
            "notImplemented",
        )
        .into()
    }

    /// An injected fault's answer.
    fn fault(code: u16, retry_after: Option<String>) -> Self {
        let mut e = match code {
            429 => ErrorBody::new(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service 'androidpublisher.googleapis.com'.",
                "usageLimits",
                "rateLimitExceeded",
            ),
            503 => ErrorBody::new(
                503,
                "UNAVAILABLE",
                "The service is currently unavailable.",
                "global",
                "backendError",
            ),
            code => ErrorBody::new(
                code,
                "INTERNAL",
                "Internal error encountered.",
                "global",
                "backendError",
            ),
        };
        e.retry_after = retry_after;
        e.into()
    }
}

impl PlaySim {
    /// Every API call taken, oldest first (the token endpoint's are counted by
    /// [`PlaySim::token_calls`] instead).
    pub fn calls(&self) -> Vec<ApiCall> {
        lock(&self.api.calls).clone()
    }

    /// Forgets the calls taken so far.
    pub fn clear_calls(&self) {
        lock(&self.api.calls).clear();
    }

    /// Makes the next API calls fail with these answers first: (status, Retry-After), e.g.
    /// `(429, Some("2"))` (RESOURCE_EXHAUSTED) or `(503, None)` (UNAVAILABLE).
    pub fn fail_next(&self, faults: Vec<(u16, Option<String>)>) {
        self.fail_after(0, faults);
    }

    /// Lets `calls` more API calls through, then fails the next ones with these answers.
    pub fn fail_after(&self, calls: u64, faults: Vec<(u16, Option<String>)>) {
        *lock(&self.api.faults_after) = calls;
        *lock(&self.api.faults) = faults.into();
    }

    /// The acknowledgements the API accepted, oldest first.
    /// Makes `purchases.productsv2` refuse a one-time purchase token (as Google's invalid-token
    /// 400) while `purchases.products.get` (v1) still answers for it.
    pub fn refuse_v2(&self, token: &str) {
        lock(&self.api.v1_only).insert(token.to_owned());
    }

    pub fn acknowledgements(&self) -> Vec<Acknowledgement> {
        lock(&self.api.acknowledgements).clone()
    }

    /// The refund reviews recorded (one per pending refund token), oldest first.
    pub fn refund_reviews(&self) -> Vec<RefundReview> {
        lock(&self.api.reviews).clone()
    }

    /// How many `orders.reviewrefund` calls were answered 200 but ignored (not the first for
    /// their pending refund token).
    pub fn ignored_refund_reviews(&self) -> u64 {
        *lock(&self.api.ignored_reviews)
    }

    /// The next injected fault, if one is due.
    fn take_fault(&self) -> Option<GoogleError> {
        let mut faults = lock(&self.api.faults);
        if faults.is_empty() {
            return None;
        }
        let mut after = lock(&self.api.faults_after);
        if *after > 0 {
            *after -= 1;
            return None;
        }
        faults
            .pop_front()
            .map(|(code, retry_after)| GoogleError::fault(code, retry_after))
    }
}
