//! Explicit model management routes, beside Ollama's way (an empty `/api/generate` loads a
//! model, one with `keep_alive: 0` unloads it):
//!
//! * `POST /models/load {"model": NAME}`: load now (llama-server's router route); answers
//!   when the model is loaded, with its memory estimate.
//! * `POST /models/unload {"model": NAME}`: unload now if idle, else as soon as its running
//!   requests finish.
//! * `GET|POST /unload`: unload every model (llama-swap's route).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{self, ApiError, Flavor};
use crate::app::AppState;

const F: Flavor = Flavor::OpenAi;

#[derive(Deserialize, Debug)]
struct ModelRequest {
    model: Option<String>,
    name: Option<String>,
    keep_alive: Option<Value>,
}

fn name_of(r: &ModelRequest) -> Result<String, ApiError> {
    r.model
        .clone()
        .or_else(|| r.name.clone())
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request(F, "\"model\" is required"))
}

/// `POST /models/load`.
pub async fn load(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ModelRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let name = name_of(&req)?;
    let l = common::loaded(&state, Some(&name), req.keep_alive.as_ref(), F).await?;
    Ok(Json(json!({
        "success": true,
        "model": l.names[0],
        "memory": l.estimate.total(),
        "n_ctx": l.n_ctx,
    }))
    .into_response())
}

/// `POST /models/unload`.
pub async fn unload(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ModelRequest = common::parse_body(body, F, state.cfg.max_body_bytes)?;
    let name = name_of(&req)?;
    let idx = state
        .registry
        .find(Some(&name))
        .map_err(|e| e.into_api(F, state.cfg.retry_after_secs))?;
    let was_loaded = state.registry.unload(idx).await;
    let model = state.registry.entries()[idx].names[0].clone();
    let status = state.registry.state_name(idx);
    Ok(Json(json!({
        "success": true,
        "model": model,
        "was_loaded": was_loaded,
        "status": status,
    }))
    .into_response())
}

/// `GET|POST /unload`: every model.
pub async fn unload_all(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let mut names = Vec::new();
    for s in state.registry.status() {
        if state.registry.unload(s.index).await {
            names.push(state.registry.entries()[s.index].names[0].clone());
        }
    }
    Ok(Json(json!({ "success": true, "unloaded": names })).into_response())
}
