//! `POST /v1/memory/ingest`: store a conversation durably; answer 202 once the engine has
//! acknowledged (its WAL fsync covers the batch), so a 202 is a promise that survives a
//! crash. Resending the whole history is safe: the engine skips messages already stored
//! for the session. `system` messages (instructions, not memories) and messages sent with
//! `"memory": false` are not stored, and count as skipped.
//!
//! Memory: the body counts against the server's body budget until the write is done; its
//! bytes are dropped once parsed, each message's text is moved (never copied) from the
//! parsed JSON into the memory stored, and the engine is handed the text only when the
//! ingest budget has room for it (`serve::budget`), since its working memory while it
//! ingests is a multiple of the text (issue 14 item 3).

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
use crate::request::{
    ChatMessage, Invalid, check_memory_fields, session_id, take_messages, to_new_memory,
};
use crate::time::now_ms;

/// True when a message of this role and content is to be stored.
pub(crate) fn should_store(state: &AppState, message: &ChatMessage) -> bool {
    message.remember
        && !message.text.trim().is_empty()
        && (message.role != Role::System || state.config.ingest.store_system)
}

/// Stores `messages` in the caller's vault (the proxy's exchanges too). `Ok` means durable
/// and visible to the next search. `skipped` counts messages not stored for any reason.
/// Every memory is built by [`to_new_memory`], which holds it to the shared bounds.
pub(crate) fn store(
    state: &AppState,
    auth: &AuthContext,
    messages: Vec<ChatMessage>,
    session_id: &str,
    model: Option<&str>,
    metadata: Option<Metadata>,
) -> Result<IngestOutcome, ApiError> {
    let now = now_ms();
    let total = messages.len();
    let batch: Vec<NewMemory> = messages
        .into_iter()
        .filter(|m| should_store(state, m))
        .map(|m| {
            to_new_memory(
                session_id,
                m.role,
                m.text,
                m.created_at_ms.unwrap_or(now),
                model,
                metadata.clone(),
            )
        })
        .collect::<Result<_, Invalid>>()
        .map_err(Invalid::api_error)?;
    let filtered = total - batch.len();
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
    let (parts, auth, body) = authenticated_body(state, req).await?;
    // The reservation stays until the write is done: what is parsed from the body takes
    // about as much memory as the body did.
    let (bytes, reservation) = body.into_parts();
    let IngestBody {
        messages,
        session_id: body_session,
        model,
        metadata,
        memory_mode,
    } = parse_json(&bytes)?;
    drop(bytes);
    let messages = take_messages(messages, &state.config.limits)?;
    let mode = auth.request_mode(&parts, memory_mode.as_deref())?;
    let session = session_id(body_session.as_deref(), &parts.headers)?;
    // Checked here too, not only as each memory is built: a request whose model or
    // metadata is too large is refused even when nothing in it would be stored.
    check_memory_fields(&session, model.as_deref(), metadata.as_ref())
        .map_err(Invalid::api_error)?;
    if !mode.stores() {
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({"stored": 0, "skipped": messages.len(), "ids": []}),
        ));
    }
    let st = state.clone();
    let total = messages.len();
    let text_bytes = messages
        .iter()
        .filter(|m| should_store(state, m))
        .map(|m| m.text.len())
        .sum();
    let working = state.ingest_budget.acquire(text_bytes).await;
    let outcome = blocking(move || {
        let _held = (reservation, working);
        store(&st, &auth, messages, &session, model.as_deref(), metadata)
    })
    .await?;
    let ids: Vec<String> = outcome.stored.iter().map(u64::to_string).collect();
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"stored": total.saturating_sub(outcome.skipped), "skipped": outcome.skipped, "ids": ids}),
    ))
}
