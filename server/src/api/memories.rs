//! The memory API beyond prepare/ingest: search, list, get, delete, clear, warmup and stats
//! (bulk export/import/upload live in `transfer.rs`).
//!
//! Every handler acts on the caller's vault; an admin key may add `?key_id=` to act on
//! another key's vault of the same account (the dashboard uses this).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use engine::{Memory, SearchQuery};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{AuthContext, authenticate};
use crate::error::ApiError;
use crate::http::{Body, blocking, json_response, parse_json, query_params, read_body};
use crate::request::{FiltersBody, session_id};
use crate::time::{format_ms, now_ms};

/// Default and largest `limit` of search.
pub(crate) const SEARCH_LIMIT_DEFAULT: usize = 10;
pub(crate) const SEARCH_LIMIT_MAX: usize = 100;
/// Default and largest page of `GET /v1/memory`.
pub(crate) const LIST_LIMIT_DEFAULT: usize = 50;
pub(crate) const LIST_LIMIT_MAX: usize = 1000;

/// A memory as the API shows it (without score).
pub(crate) fn memory_json(memory: &Memory) -> Value {
    json!({
        "id": memory.id.to_string(),
        "content": memory.text,
        "role": memory.role.as_str(),
        "session_id": (!memory.session_id.is_empty()).then_some(&memory.session_id),
        "created_at": format_ms(memory.created_at_ms),
        "model": memory.model,
        "metadata": memory.metadata,
        "chunk": memory.chunk,
    })
}

/// Authenticates and resolves the target vault (`?key_id=` for admins).
pub(crate) async fn caller(
    state: &Arc<AppState>,
    parts: &Parts,
) -> Result<(AuthContext, HashMap<String, String>, String), ApiError> {
    let auth = authenticate(state, &parts.headers).await?;
    let query = query_params(parts.uri.query());
    let vault = auth.target_vault(state, query.get("key_id").map(String::as_str))?;
    Ok((auth, query, vault))
}

fn parse_usize(
    query: &HashMap<String, String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("") => Ok(default),
        Some(text) => text.parse::<usize>().map(|n| n.clamp(1, max)).map_err(|_| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("`{name}` must be a positive integer."),
            )
            .with_param(name)
        }),
    }
}

fn parse_memory_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::not_found(format!(
            "No memory with id {}.",
            id.chars().take(32).collect::<String>()
        ))
    })
}

#[derive(Deserialize)]
struct SearchBody {
    query: String,
    limit: Option<u64>,
    session_id: Option<String>,
    filters: Option<FiltersBody>,
}

/// `POST /v1/memory/search` → `{"memories": [...]}`, best first. `session_id` restricts to
/// that session; `X-Session-ID` only ranks it up.
pub(crate) async fn search(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let (_auth, _query, vault_id) = caller(state, &parts).await?;
    let bytes = read_body(state, body, &parts.headers).await?;
    let request: SearchBody = parse_json(&bytes)?;
    if request.query.trim().is_empty() {
        return Err(
            ApiError::bad_request("empty_query", "`query` must not be empty.").with_param("query"),
        );
    }
    if request.query.chars().count() > state.config.limits.message_chars_max {
        return Err(ApiError::too_large(
            "query_too_long",
            "`query` is longer than the message limit.",
        )
        .with_param("query"));
    }
    let mut filter = request
        .filters
        .as_ref()
        .map(FiltersBody::to_filter)
        .transpose()?
        .unwrap_or_default();
    if let Some(session) = request.session_id.filter(|s| !s.is_empty()) {
        filter.session_id = Some(session);
    }
    let limit = usize::try_from(request.limit.unwrap_or(SEARCH_LIMIT_DEFAULT as u64))
        .unwrap_or(SEARCH_LIMIT_MAX)
        .clamp(1, SEARCH_LIMIT_MAX);
    let boost = session_id(None, &parts.headers)?;
    let search = SearchQuery {
        text: request.query,
        k: limit,
        filter,
        boost_session: (!boost.is_empty()).then_some(boost),
        now_ms: now_ms(),
    };
    let st = state.clone();
    let (hits, degraded) = blocking(move || {
        let vault = st.engine.vault(&vault_id)?;
        super::prepare::search_or_lexical(&st, &vault, &search)
    })
    .await?;
    let memories: Vec<Value> = hits
        .iter()
        .filter(|h| h.score > 0.0)
        .map(super::prepare::hit_json)
        .collect();
    let mut response = json_response(StatusCode::OK, &json!({"memories": memories}));
    super::prepare::mark_degraded(response.headers_mut(), degraded);
    Ok(response)
}

/// `GET /v1/memory?cursor=&limit=&session_id=` → `{"memories": [...], "next_cursor"}`,
/// newest first; pass `next_cursor` back as `cursor` for the next page.
pub(crate) async fn list(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, _body) = req.into_parts();
    let (_auth, query, vault_id) = caller(state, &parts).await?;
    let limit = parse_usize(&query, "limit", LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)?;
    let cursor = match query.get("cursor").map(String::as_str) {
        None | Some("") => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "`cursor` must be a `next_cursor` from an earlier page.",
            )
            .with_param("cursor")
        })?),
    };
    let session = query.get("session_id").cloned().filter(|s| !s.is_empty());
    let page = list_page(state, vault_id, cursor, limit, session).await?;
    Ok(json_response(StatusCode::OK, &page))
}

/// One page of a vault's memories after `cursor`, oldest first, optionally of one session:
/// `{"memories": [...], "next_cursor": ...}` (the list route and MCP's `list_memories`).
pub(crate) async fn list_page(
    state: &Arc<AppState>,
    vault_id: String,
    cursor: Option<u64>,
    limit: usize,
    session: Option<String>,
) -> Result<Value, ApiError> {
    let st = state.clone();
    let mut page = blocking(move || {
        Ok(st
            .engine
            .vault(&vault_id)?
            .list(cursor, limit + 1, session.as_deref())?)
    })
    .await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = if more {
        page.last().map(|m| m.id.to_string())
    } else {
        None
    };
    let memories: Vec<Value> = page.iter().map(memory_json).collect();
    Ok(json!({"memories": memories, "next_cursor": next_cursor}))
}

pub(crate) async fn get(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let (parts, _body) = req.into_parts();
    let (_auth, _query, vault_id) = caller(state, &parts).await?;
    let memory_id = parse_memory_id(id)?;
    let st = state.clone();
    let memory = blocking(move || Ok(st.engine.vault(&vault_id)?.get(memory_id)?)).await?;
    match memory {
        Some(memory) => Ok(json_response(StatusCode::OK, &memory_json(&memory))),
        None => Err(ApiError::not_found(format!(
            "No memory with id {memory_id}."
        ))),
    }
}

pub(crate) async fn delete(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let (parts, _body) = req.into_parts();
    let (_auth, _query, vault_id) = caller(state, &parts).await?;
    let memory_id = parse_memory_id(id)?;
    let st = state.clone();
    let deleted = blocking(move || Ok(st.engine.vault(&vault_id)?.delete(memory_id)?)).await?;
    if !deleted {
        return Err(ApiError::not_found(format!(
            "No memory with id {memory_id}."
        )));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": memory_id.to_string(), "deleted": true}),
    ))
}

/// `DELETE /v1/memory[?session_id=][&reset=true]`: clears one session (`?session_id=` or
/// `X-Session-ID`) or the whole vault; `reset=true` also forgets the embedder pin.
pub(crate) async fn clear(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, _body) = req.into_parts();
    let (_auth, query, vault_id) = caller(state, &parts).await?;
    let reset = query.get("reset").is_some_and(|v| v == "true" || v == "1");
    let session = session_id(
        query
            .get("session_id")
            .map(String::as_str)
            .filter(|s| !s.is_empty()),
        &parts.headers,
    )?;
    if reset && !session.is_empty() {
        return Err(ApiError::bad_request(
            "reset_with_session",
            "`reset=true` clears the whole vault; drop the session id.",
        ));
    }
    let st = state.clone();
    let session_for_clear = session.clone();
    let deleted = blocking(move || {
        let vault = st.engine.vault(&vault_id)?;
        if reset {
            let count = vault.stats()?.memories;
            vault.reset()?;
            Ok(count)
        } else {
            Ok(vault
                .clear((!session_for_clear.is_empty()).then_some(session_for_clear.as_str()))?)
        }
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"deleted": deleted, "session_id": (!session.is_empty()).then_some(session), "reset": reset}),
    ))
}

/// `POST /v1/memory/warmup` → `{status: "warm", memories_loaded, warmup_ms}`.
pub(crate) async fn warmup(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, _body) = req.into_parts();
    let (_auth, _query, vault_id) = caller(state, &parts).await?;
    let st = state.clone();
    let started = Instant::now();
    let memories = blocking(move || Ok(st.engine.vault(&vault_id)?.stats()?.memories)).await?;
    let warmup_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": "warm", "memories_loaded": memories, "warmup_ms": warmup_ms}),
    ))
}

/// `GET /v1/memory/stats`.
pub(crate) async fn stats(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, _body) = req.into_parts();
    let (_auth, _query, vault_id) = caller(state, &parts).await?;
    let st = state.clone();
    let id = vault_id.clone();
    let stats = blocking(move || Ok(st.engine.vault(&id)?.stats()?)).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "vault": vault_id,
            "memories": stats.memories,
            "bytes": stats.bytes_on_disk,
            "embedder": stats.embedder,
            "dimension": stats.dim,
            "last_write": stats.last_write_ms.map(format_ms),
            "segments": stats.segments,
            "memtable": stats.memtable,
            "compacting": stats.busy,
            "memory_bytes": stats.memory_bytes,
        }),
    ))
}
