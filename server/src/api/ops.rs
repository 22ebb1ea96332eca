//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it accepts work: not
//! shutting down, and no vault or the catalog saw a failed fsync), `/metrics` (Prometheus
//! text).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Response, StatusCode};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::http::{Body, json_response, text_response};
use crate::metrics;

pub(crate) fn healthz(_state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
}

pub(crate) fn readyz(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable("Shutting down."));
    }
    // After a failed fsync nothing the process holds about the disk can be trusted: the
    // vault (or the catalog) refuses writes until a restart, which recovers from the disk.
    let poisoned = state.engine.poisoned_vaults().len();
    if poisoned > 0 || state.catalog.is_poisoned() {
        let what = match (poisoned, state.catalog.is_poisoned()) {
            (0, _) => "the key catalog".to_owned(),
            (n, false) => format!("{n} vault(s)"),
            (n, true) => format!("{n} vault(s) and the key catalog"),
        };
        return Err(ApiError::unavailable(format!(
            "An fsync failed for {what}; writes there are refused until the server restarts."
        )));
    }
    Ok(json_response(StatusCode::OK, &json!({"status": "ready"})))
}

pub(crate) fn metrics(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let text = state.metrics.render(&metrics::Gauges {
        open_vaults: state.engine.open_vault_count(),
        open_vaults_bytes: state.engine.memory_bytes(),
        poisoned_vaults: state.engine.poisoned_vaults().len(),
        catalog_poisoned: state.catalog.is_poisoned(),
        uptime: state.started.elapsed(),
    });
    Ok(text_response(
        StatusCode::OK,
        text,
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}
