//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it accepts work: not
//! shutting down), `/metrics` (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Response, StatusCode};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::http::{Body, json_response, text_response};

pub(crate) fn healthz(_state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
}

pub(crate) fn readyz(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable("Shutting down."));
    }
    Ok(json_response(StatusCode::OK, &json!({"status": "ready"})))
}

pub(crate) fn metrics(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let text = state.metrics.render(
        state.engine.open_vault_count(),
        state.engine.memory_bytes(),
        state.started.elapsed(),
    );
    Ok(text_response(
        StatusCode::OK,
        text,
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}
