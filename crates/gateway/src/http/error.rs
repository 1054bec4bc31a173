//! The one error shape: `{"error": {"code", "message"}}` (plus `details` where a list helps), with a 4xx
//! for the caller's mistakes and a 5xx only for the gateway's own faults, whose internals are logged,
//! never sent.

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{FromRequest, Request},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::service::{Kind, ServiceError};

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable machine-readable code and a sentence for a person.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A snake_case code, stable across versions.
    pub code: String,
    pub message: String,
    /// More about the error where a list helps (the bad rows of a CSV import).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl ApiError {
    /// The body this error is answered with.
    pub fn body(self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        (status, Json(self.body())).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Client {
                kind,
                code,
                message,
                details,
            } => {
                let status = match kind {
                    Kind::BadRequest => StatusCode::BAD_REQUEST,
                    Kind::Unauthorized => StatusCode::UNAUTHORIZED,
                    Kind::Forbidden => StatusCode::FORBIDDEN,
                    Kind::NotFound => StatusCode::NOT_FOUND,
                    Kind::Conflict => StatusCode::CONFLICT,
                    Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
                    Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                };
                ApiError {
                    status,
                    code,
                    message,
                    details,
                }
            }
            ServiceError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "The gateway failed to answer; the request changed nothing. Try again.",
                )
            }
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ServiceError::Internal(e).into()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `Json` whose rejections speak the error shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime_type::Essence>().ok())
            .is_some_and(|m| m.is_json());
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as JSON with `Content-Type: application/json`.",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::bad_request("invalid_body", "The body could not be read.")
            }
        })?;
        json_body(&bytes).map(ApiJson)
    }
}

/// Reads a JSON body into `T`: malformed JSON, a NUL anywhere and a body that does not fit are 400s.
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("The body is not valid JSON: {e}."),
        )
    })?;
    if has_nul(&value) {
        return Err(ApiError::bad_request(
            "invalid_character",
            "Text in the body may not contain the NUL character (\\u0000).",
        ));
    }
    // Every body of the API is an object (or `null` for an optional one); serde would also take a
    // list for a struct, by position.
    if !(value.is_object() || value.is_null()) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "The body must be a JSON object.",
        ));
    }
    whole_numbers_as_integers(&mut value);
    serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("The body does not fit this call: {e}."),
        )
    })
}

/// JSON has one number type, and `1.0` is an integer to JSON Schema: a whole number written with a
/// fraction is taken where an integer is, as the document promises.
fn whole_numbers_as_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && (i64::MIN as f64..i64::MAX as f64).contains(&f)
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(o) => o.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// `Query` whose rejections speak the error shape and name the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "The query string does not fit this call: {}.",
                    e.body_text()
                ),
            )),
        }
    }
}

/// True when any string (or key) in `v` holds a NUL, which PostgreSQL cannot store and no field needs.
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Content types, as far as choosing a body parser needs them.
mod mime_type {
    /// The `type/subtype` of a content type, lower-cased, without parameters.
    pub struct Essence(String);

    impl std::str::FromStr for Essence {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let essence = s
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence.contains('/') {
                Ok(Essence(essence))
            } else {
                Err(())
            }
        }
    }

    impl Essence {
        /// `application/json` or any `+json` type.
        pub fn is_json(&self) -> bool {
            self.0 == "application/json" || self.0.ends_with("+json")
        }
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// The answer to a body over the limit.
pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "The body is larger than 1 MiB.",
    )
}

/// Gives every error answer the error shape, including the framework's own (no route, wrong method,
/// body too large), so a client only ever has one shape to read.
pub async fn shape_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    // An answer already in a shape of its own: JSON, or a page of the gateway's for a person.
    let shaped = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
    });
    if shaped {
        return res;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "There is no such resource or route."),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "This route does not take that method.",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "The body is larger than 1 MiB."),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "This call does not take that content type.",
        ),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "The request took too long."),
        s if s.is_server_error() => (
            "internal",
            "The gateway failed to answer; the request changed nothing. Try again.",
        ),
        _ => ("bad_request", "The request is not valid."),
    };
    let mut shaped = ApiError::new(status, code, message).into_response();
    if let Some(allow) = res.headers().get(header::ALLOW) {
        shaped.headers_mut().insert(header::ALLOW, allow.clone());
    }
    shaped
}

/// The answer to a request whose handler panicked.
pub fn panic_answer(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    metrics::counter!("gateway_panics_total").increment(1);
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "The gateway failed to answer; the request changed nothing. Try again.",
    )
    .into_response()
}

/// A plain body response of a content type.
pub fn with_type(body: impl Into<Body>, content_type: &'static str) -> Response {
    let mut res = Response::new(body.into());
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Body {
        n: i64,
    }

    #[test]
    fn a_whole_number_written_with_a_fraction_is_an_integer() {
        // Near 2^51 the best-effort float parser lands a quarter off; the body must still read.
        for (text, n) in [
            (r#"{"n": -2251799813685247.0}"#, -2251799813685247),
            (r#"{"n": 4503599627370495.0}"#, 4503599627370495),
            (r#"{"n": 7.0}"#, 7),
        ] {
            let body: Body = json_body(text.as_bytes()).unwrap();
            assert_eq!(body.n, n, "{text}");
        }
        let fraction = json_body::<Body>(br#"{"n": 7.5}"#).unwrap_err();
        assert_eq!(fraction.code, "invalid_body");
    }
}
