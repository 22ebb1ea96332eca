//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it accepts work: not
//! shutting down, no vault or the catalog saw a failed fsync, the disk has room for the
//! writes that last ran out of it, and no vault has a segment file that could not be
//! read), `/metrics` (Prometheus text).

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
    // vault (or the catalog) refuses writes until a restart, which recovers from the disk. A
    // cluster node's catalog is poisoned the same way by a shared-log record it cannot apply.
    let poisoned = state.engine.poisoned_vaults().len();
    if poisoned > 0 || state.catalog.is_poisoned() {
        let what = match (poisoned, state.catalog.is_poisoned()) {
            (0, _) => "the key catalog".to_owned(),
            (n, false) => format!("{n} vault(s)"),
            (n, true) => format!("{n} vault(s) and the key catalog"),
        };
        return Err(ApiError::unavailable(format!(
            "Writes to {what} are refused until the server restarts: an fsync failed (or, in \
             cluster mode, the catalog log held a record this node could not apply)."
        )));
    }
    // A vault whose segment file could not be read (an I/O error on a mapped page, contained)
    // answers 503 until the operator restores the disk and restarts.
    let unreadable = state.engine.unreadable_vaults().len();
    if unreadable > 0 {
        return Err(ApiError::unavailable(format!(
            "{unreadable} vault(s) cannot be read (an I/O error on a segment file); they answer \
             503 until the server restarts."
        )));
    }
    // A full disk: writes fail (retryably) until space is freed, reads work. Each check
    // probes for room first, so this clears as soon as space is back, without a write.
    let stalled = state.engine.write_stalled_vaults().len();
    let catalog_stalled = state.catalog.is_write_stalled();
    if stalled > 0 || catalog_stalled {
        let what = match (stalled, catalog_stalled) {
            (0, _) => "the key catalog".to_owned(),
            (n, false) => format!("{n} vault(s)"),
            (n, true) => format!("{n} vault(s) and the key catalog"),
        };
        return Err(ApiError::storage_full(format!(
            "The disk is full: writes to {what} fail until space is freed; reads keep working."
        )));
    }
    Ok(json_response(StatusCode::OK, &json!({"status": "ready"})))
}

pub(crate) fn metrics(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let text = state.metrics.render(&metrics::Gauges {
        open_vaults: state.engine.open_vault_count(),
        open_vaults_bytes: state.engine.memory_bytes(),
        poisoned_vaults: state.engine.poisoned_vaults().len(),
        unreadable_vaults: state.engine.unreadable_vaults().len(),
        catalog_poisoned: state.catalog.is_poisoned(),
        write_stalled_vaults: state.engine.write_stalled_vaults().len(),
        body_buffered_bytes: state.body_budget.used(),
        body_buffer_max_bytes: state.body_budget.max(),
        bodies_refused: state.body_budget.refused(),
        uptime: state.started.elapsed(),
    });
    Ok(text_response(
        StatusCode::OK,
        text,
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// A failed fsync in one vault turns readiness to 503 and shows in the metrics; the
    /// vault keeps refusing writes after the disk recovers (only a restart clears it).
    #[test]
    fn readiness_and_metrics_report_a_vault_whose_fsync_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::from_toml("").unwrap();
        config.data_dir = dir.path().to_path_buf();
        let disk = engine::powerloss::PowerLoss::attach(dir.path()).unwrap();
        let state = Arc::new(
            AppState::open_with(config, Arc::new(disk.clone()))
                .unwrap()
                .state,
        );
        assert!(readyz(&state).is_ok());
        let said = |text: &str| engine::NewMemory {
            session_id: "s".into(),
            role: engine::Role::User,
            text: text.into(),
            created_at_ms: 1,
            model: None,
            metadata: None,
        };
        let vault = state.engine.vault("key_sick").unwrap();
        vault.ingest(vec![said("before the failure")]).unwrap();
        disk.fail_syncs(true);
        assert!(vault.ingest(vec![said("not acknowledged")]).is_err());
        disk.fail_syncs(false);
        assert!(vault.ingest(vec![said("refused")]).is_err());
        let err = readyz(&state).unwrap_err();
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.message.contains("1 vault(s)"), "{}", err.message);
        let body = metrics(&state).unwrap().into_body();
        let text = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(body.collect())
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("memoryrouter_vaults_poisoned 1"), "{text}");
        assert!(text.contains("memoryrouter_catalog_poisoned 0"), "{text}");
    }
}
