//! `GET /v1/admin/overview` (admin key): the dashboard's summary of the whole server.
//!
//! Memory counts come from each key's vault stats, which opens the vault; to keep the
//! endpoint cheap on servers with very many keys it sums at most [`OVERVIEW_VAULTS_MAX`]
//! vaults and says so with `"memories_partial": true`.

use std::path::Path;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::AppState;
use crate::auth::authenticate;
use crate::error::ApiError;
use crate::http::{Body, blocking, json_response};

/// Vaults whose stats are summed per overview request.
pub(crate) const OVERVIEW_VAULTS_MAX: usize = 1000;
/// Directory depth walked when summing disk usage (vaults/<id>/<segment>/<file> is 4).
pub(crate) const DISK_WALK_DEPTH_MAX: usize = 6;

fn disk_bytes(path: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() && depth < DISK_WALK_DEPTH_MAX => {
                disk_bytes(&entry.path(), depth + 1)
            }
            Ok(meta) if meta.is_file() => meta.len(),
            _ => 0,
        })
        .sum()
}

pub(crate) async fn overview(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let auth = authenticate(state, req.headers()).await?;
    auth.require_admin()?;
    let st = state.clone();
    let body = blocking(move || {
        let keys = st.catalog.keys(&auth.account_id);
        let vault_ids = st.engine.vault_ids()?;
        let mut memories = 0u64;
        for key in keys
            .iter()
            .filter(|k| vault_ids.contains(&k.id))
            .take(OVERVIEW_VAULTS_MAX)
        {
            memories += st.engine.vault(&key.id)?.stats()?.memories;
        }
        Ok(json!({
            "vaults": vault_ids.len(),
            "open_vaults": st.engine.open_vault_count(),
            "memories": memories,
            "memories_partial": vault_ids.len() > OVERVIEW_VAULTS_MAX,
            "disk_bytes": disk_bytes(&st.config.data_dir, 0),
            "keys": keys.iter().filter(|k| k.revoked_at_ms.is_none()).count(),
            "uptime_secs": st.started.elapsed().as_secs(),
            "requests": st.metrics.route_summaries(),
        }))
    })
    .await?;
    Ok(json_response(StatusCode::OK, &body))
}
