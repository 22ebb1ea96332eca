//! `POST /v1/memory/ingest`: store a conversation durably; answer 202 once the engine has
//! acknowledged (its WAL fsync covers the batch), so a 202 is a promise that survives a
//! crash. Resending the whole history is safe: the engine skips messages already stored
//! for the session. `system` messages (instructions, not memories) and messages sent with
//! `"memory": false` are not stored, and count as skipped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use engine::{IngestOutcome, Metadata, NewMemory, Role};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{AuthContext, authenticated_body};
use crate::error::ApiError;
use crate::http::{Body, blocking, json_response, parse_json};
use crate::request::{ChatMessage, parse_messages, session_id};
use crate::time::now_ms;

/// Largest `metadata` object accepted, serialised, in bytes (it is stored with every
/// memory of the request).
pub(crate) const METADATA_BYTES_MAX: usize = 16 * 1024;
/// Longest `model` string.
pub(crate) const MODEL_CHARS_MAX: usize = 256;

/// True when a message of this role and content is to be stored.
pub(crate) fn should_store(state: &AppState, message: &ChatMessage) -> bool {
    message.remember
        && !message.text.trim().is_empty()
        && (message.role != Role::System || state.config.ingest.store_system)
}

/// Stores `messages` in the caller's vault. `Ok` means durable and visible to the next
/// search. `skipped` counts messages not stored for any reason.
pub(crate) fn store(
    state: &AppState,
    auth: &AuthContext,
    messages: &[ChatMessage],
    session_id: &str,
    model: Option<&str>,
    metadata: Option<Metadata>,
) -> Result<IngestOutcome, ApiError> {
    let now = now_ms();
    let batch: Vec<NewMemory> = messages
        .iter()
        .filter(|m| should_store(state, m))
        .map(|m| NewMemory {
            session_id: session_id.to_owned(),
            role: m.role,
            text: m.text.clone(),
            created_at_ms: m.created_at_ms.unwrap_or(now),
            model: model.map(str::to_owned),
            metadata: metadata.clone(),
        })
        .collect();
    let filtered = messages.len() - batch.len();
    if batch.is_empty() {
        return Ok(IngestOutcome {
            stored: Vec::new(),
            skipped: filtered,
        });
    }
    let vault = state.engine.vault(&auth.key_id)?;
    let started = Instant::now();
    let mut outcome = vault.ingest(batch)?;
    state.metrics.ingest_durable.observe(started.elapsed());
    state
        .metrics
        .memories_stored
        .fetch_add(outcome.stored.len() as u64, Ordering::Relaxed);
    outcome.skipped += filtered;
    Ok(outcome)
}

#[derive(Deserialize)]
struct IngestBody {
    messages: Value,
    session_id: Option<String>,
    model: Option<String>,
    metadata: Option<Metadata>,
    memory_mode: Option<String>,
}

/// The handler: 202 `{"stored", "skipped", "ids"}`. `stored` counts messages written,
/// `ids` the records written (a long message is stored as several chunks, one id each).
pub(crate) async fn handle(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, auth, bytes) = authenticated_body(state, req).await?;
    let request: IngestBody = parse_json(&bytes)?;
    let messages = parse_messages(&request.messages, &state.config.limits)?;
    let mode = auth.request_mode(&parts, request.memory_mode.as_deref())?;
    let session = session_id(request.session_id.as_deref(), &parts.headers)?;
    if request
        .model
        .as_ref()
        .is_some_and(|m| m.chars().count() > MODEL_CHARS_MAX)
    {
        return Err(ApiError::too_large(
            "model_too_long",
            format!("`model` is longer than {MODEL_CHARS_MAX} characters."),
        )
        .with_param("model"));
    }
    if let Some(metadata) = &request.metadata
        && serde_json::to_vec(metadata).map_or(0, |b| b.len()) > METADATA_BYTES_MAX
    {
        return Err(ApiError::too_large(
            "metadata_too_large",
            format!("`metadata` is larger than {METADATA_BYTES_MAX} bytes."),
        )
        .with_param("metadata"));
    }
    if !mode.stores() {
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({"stored": 0, "skipped": messages.len(), "ids": []}),
        ));
    }
    let st = state.clone();
    let total = messages.len();
    let outcome = blocking(move || {
        store(
            &st,
            &auth,
            &messages,
            &session,
            request.model.as_deref(),
            request.metadata,
        )
    })
    .await?;
    let ids: Vec<String> = outcome.stored.iter().map(u64::to_string).collect();
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"stored": total.saturating_sub(outcome.skipped), "skipped": outcome.skipped, "ids": ids}),
    ))
}
