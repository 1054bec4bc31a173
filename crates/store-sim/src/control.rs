//! What every store's control surface (`/sim/<store>`) shares: an error is answered as
//! `{"error": {"code", "message"}}` with the status its type names, and a JSON body (an empty one
//! read as `{}`) that does not fit the action is that type's 400, not axum's plain-text rejection.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

/// An error of a control surface.
pub trait ControlError: std::fmt::Display + Sized {
    /// The HTTP status and machine-readable code the control surface answers with.
    fn status_and_code(&self) -> (StatusCode, &'static str);

    /// A request body that does not fit the action (a 400).
    fn unfit(message: String) -> Self;
}

/// The answer for `e`.
pub fn answer<E: ControlError>(e: &E) -> Response {
    let (status, code) = e.status_and_code();
    (
        status,
        Json(json!({"error": {"code": code, "message": e.to_string()}})),
    )
        .into_response()
}

/// Reads a JSON body; an empty one is `{}`, for actions whose fields are all optional.
pub fn body<T: DeserializeOwned, E: ControlError>(bytes: &[u8]) -> Result<T, E> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| E::unfit(format!("the body does not fit this action: {e}")))
}

/// `value` as a 200 JSON answer.
pub fn ok<T: Serialize, E>(value: T) -> Result<Response, E> {
    Ok(Json(value).into_response())
}
