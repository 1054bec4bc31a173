//! Health, readiness, metrics, and the request metrics middleware.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{
    AppState,
    error::{ApiError, with_type},
};

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "service", security(()), responses((status = 200, description = "Alive")))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "service", security(()), responses((status = 200, description = "Ready"), (status = 503, description = "The database does not answer")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.cx.db.ping().await {
        axum::Json(json!({"status": "ready", "database": state.cx.db.dialect.name()}))
            .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "The database does not answer.",
        )
        .into_response()
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "service", security(()), responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    with_type(state.metrics.render(), "text/plain; version=0.0.4")
}

/// The method as a metric label. Labels only take values from a fixed set: a label copied from the
/// request would let any caller, keyless, add a series per invented method and grow the registry (and
/// every scrape) without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts requests and their latency by route template (`unmatched` for a path no route takes, never
/// the path itself), method and status: every label is bounded, whatever a caller sends.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("gateway_http_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("gateway_http_request_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    res
}
