//! `POST /token`, Google's OAuth 2.0 token endpoint for the JWT-bearer grant. The checks are in
//! `mod.rs`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Form, Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::json;

use super::OAuthError;
use crate::play::PlaySim;

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (
            status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response()
    }
}

impl PlaySim {
    pub(in crate::play) fn auth_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/token", post(token))
            .with_state(self.clone())
    }
}

async fn token(
    State(sim): State<Arc<PlaySim>>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, OAuthError> {
    let answer = sim.auth.exchange(&form, sim.now())?;
    Ok(Json(answer).into_response())
}
