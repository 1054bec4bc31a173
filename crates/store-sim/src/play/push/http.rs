//! `GET /oauth2/v3/certs`: the simulator's "Google" JWKS, the keys push OIDC tokens are signed
//! with, in the shape of `https://www.googleapis.com/oauth2/v3/certs`; and `GET /oauth2/v1/certs`,
//! the same keys as X.509 certificates by `kid` (what Google's auth libraries read by default).

use std::sync::Arc;

use axum::{Json, Router, extract::State, routing::get};
use serde_json::Value;

use crate::play::PlaySim;

impl PlaySim {
    pub(in crate::play) fn push_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/oauth2/v3/certs", get(certs))
            .route("/oauth2/v1/certs", get(certificates))
            .with_state(self.clone())
    }
}

async fn certs(State(sim): State<Arc<PlaySim>>) -> Json<Value> {
    Json(sim.jwks())
}

async fn certificates(State(sim): State<Arc<PlaySim>>) -> Json<Value> {
    Json(sim.certificates())
}
