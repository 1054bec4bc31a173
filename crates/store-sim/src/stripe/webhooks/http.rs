//! `GET /v1/events` (Stripe's list: newest first, `limit`, `starting_after`, `ending_before`,
//! `created[...]`, `type`; only the last 30 days) and `GET /v1/events/{id}`, behind the API's key
//! check (`api/http.rs` mounts them).

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{EVENT_RETENTION_SECONDS, page};
use crate::stripe::{
    StripeSim,
    api::{
        http::{envelope, not_found},
        parse_form,
    },
    lock,
};

pub(in crate::stripe) async fn list_events(
    State(sim): State<Arc<StripeSim>>,
    RawQuery(query): RawQuery,
) -> Response {
    let now = sim.now();
    let answer = parse_form(query.unwrap_or_default().as_bytes())
        .and_then(|q| page(&lock(&sim.books).events, &q, now));
    match answer {
        Ok(list) => Json(list).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(envelope(&e))).into_response(),
    }
}

pub(in crate::stripe) async fn get_event(
    State(sim): State<Arc<StripeSim>>,
    Path(id): Path<String>,
) -> Response {
    let now = sim.now();
    let found = lock(&sim.books)
        .events
        .iter()
        .find(|e| e["id"] == id.as_str())
        .filter(|e| e["created"].as_i64().unwrap_or_default() >= now - EVENT_RETENTION_SECONDS)
        .cloned();
    match found {
        Some(event) => Json(event).into_response(),
        None => not_found("event", &id),
    }
}
