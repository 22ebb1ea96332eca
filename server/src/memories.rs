//! The memory API beyond prepare/ingest: search, list, get, delete, clear, export/import
//! (JSON Lines), upload (bulk JSON Lines), warmup and stats.
//!
//! Every handler acts on the caller's vault; an admin key may add `?key_id=` to act on
//! another key's vault of the same account (the dashboard uses this).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use engine::{Memory, NewMemory, SearchQuery, Vault};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{AuthContext, authenticate};
use crate::error::{ApiError, Error};
use crate::http::{
    Body, blocking, header, json_response, parse_json, query_params, read_body, text_response,
};
use crate::request::{FiltersBody, parse_role, session_id};
use crate::time::{format_ms, now_ms};

/// Default and largest `limit` of search.
pub const SEARCH_LIMIT_DEFAULT: usize = 10;
pub const SEARCH_LIMIT_MAX: usize = 100;
/// Default and largest page of `GET /v1/memory`.
pub const LIST_LIMIT_DEFAULT: usize = 50;
pub const LIST_LIMIT_MAX: usize = 1000;
/// Lines accepted by one upload (413 above), as the hosted API documents.
pub const UPLOAD_LINES_MAX: usize = 10_000;
/// Errors listed in an upload/import answer; the rest are only counted.
pub const REPORTED_ERRORS_MAX: usize = 10;
/// Memories per engine ingest call during import/upload (one WAL batch each).
pub const IMPORT_BATCH_MAX: usize = 1000;
/// Memories read per page while exporting.
pub const EXPORT_PAGE_MAX: usize = 1000;

/// A memory as the API shows it (without score).
pub fn memory_json(memory: &Memory) -> Value {
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

/// One export line: [`memory_json`] plus `created_at_ms` for a lossless round trip.
pub fn export_line(memory: &Memory) -> String {
    let mut value = memory_json(memory);
    value["created_at_ms"] = json!(memory.created_at_ms);
    value.to_string()
}

/// Parses an export or upload line: `content` (or `text`) required; `role` (default user),
/// `session_id`, `created_at_ms`/`created_at`/`timestamp`, `model`, `metadata` optional.
pub fn import_line(line: &str, now_ms: i64) -> Result<NewMemory, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("a line must be a JSON object".into());
    };
    let text = match fields.get("content").or_else(|| fields.get("text")) {
        Some(Value::String(text)) if !text.trim().is_empty() => text.clone(),
        Some(Value::String(_)) => return Err("`content` is empty".into()),
        _ => return Err("`content` must be a string".into()),
    };
    let role = match fields.get("role") {
        None | Some(Value::Null) => engine::Role::User,
        Some(Value::String(name)) => parse_role(name).ok_or_else(|| {
            format!(
                "unknown role `{}`",
                name.chars().take(32).collect::<String>()
            )
        })?,
        Some(_) => return Err("`role` must be a string".into()),
    };
    let session_id = match fields.get("session_id") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= crate::request::SESSION_ID_BYTES_MAX => s.clone(),
        Some(_) => return Err("`session_id` must be a short string".into()),
    };
    let time = ["created_at_ms", "created_at", "timestamp"]
        .iter()
        .find_map(|name| fields.get(*name).filter(|v| !v.is_null()));
    let created_at_ms = match time {
        None => now_ms,
        Some(value) => crate::time::parse_json_ms(value)
            .ok_or("timestamps must be RFC 3339 or epoch milliseconds")?,
    };
    let model = fields
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let metadata = match fields.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map.clone()),
        Some(_) => return Err("`metadata` must be an object".into()),
    };
    Ok(NewMemory {
        session_id,
        role,
        text,
        created_at_ms,
        model,
        metadata,
    })
}

/// Calls `f` on every memory of the vault, newest first, a page at a time.
pub fn for_each_memory(
    vault: &Vault,
    mut f: impl FnMut(&Memory) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut before = None;
    loop {
        let page = vault.list(before, EXPORT_PAGE_MAX, None)?;
        for memory in &page {
            f(memory)?;
        }
        match page.last() {
            Some(last) if page.len() == EXPORT_PAGE_MAX => before = Some(last.id),
            _ => return Ok(()),
        }
    }
}

/// Authenticates and resolves the target vault (`?key_id=` for admins).
async fn caller(
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
pub async fn search(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let (_auth, _query, vault_id) = caller(state, &parts).await?;
    let bytes = read_body(body, &parts.headers, state.config.limits.body_bytes_max).await?;
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
    let hits = blocking(move || {
        let vault = st.engine.vault(&vault_id)?;
        let started = Instant::now();
        let hits = vault.search(&search)?;
        st.metrics.retrieval.observe(started.elapsed());
        Ok(hits)
    })
    .await?;
    let memories: Vec<Value> = hits
        .iter()
        .filter(|h| h.score > 0.0)
        .map(crate::prepare::hit_json)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"memories": memories}),
    ))
}

/// `GET /v1/memory?cursor=&limit=&session_id=` → `{"memories": [...], "next_cursor"}`,
/// newest first; pass `next_cursor` back as `cursor` for the next page.
pub async fn list(
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
    Ok(json_response(
        StatusCode::OK,
        &json!({"memories": memories, "next_cursor": next_cursor}),
    ))
}

pub async fn get(
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

pub async fn delete(
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
pub async fn clear(
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

/// `GET /v1/memory/export` → JSON Lines, newest first.
pub async fn export(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, _body) = req.into_parts();
    let (_auth, _query, vault_id) = caller(state, &parts).await?;
    let st = state.clone();
    let text = blocking(move || {
        let vault = st.engine.vault(&vault_id)?;
        let mut out = String::new();
        for_each_memory(&vault, |memory| {
            out.push_str(&export_line(memory));
            out.push('\n');
            Ok(())
        })?;
        Ok(out)
    })
    .await?;
    Ok(text_response(StatusCode::OK, text, "application/x-ndjson"))
}

/// Parses JSON Lines and stores the valid lines; the answer's parts shared by import and
/// upload.
struct BulkOutcome {
    lines: usize,
    stored_messages: usize,
    chunks: usize,
    skipped: usize,
    failed: usize,
    errors: Vec<Value>,
}

async fn bulk_store(
    state: &Arc<AppState>,
    vault_id: String,
    text: String,
    default_session: String,
) -> Result<BulkOutcome, ApiError> {
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_owned()))
        .collect();
    if lines.len() > UPLOAD_LINES_MAX {
        return Err(ApiError::too_large(
            "too_many_lines",
            format!(
                "{} lines exceed the limit of {UPLOAD_LINES_MAX}.",
                lines.len()
            ),
        ));
    }
    let chars_max = state.config.limits.message_chars_max;
    let st = state.clone();
    blocking(move || {
        let now = now_ms();
        let mut outcome = BulkOutcome {
            lines: lines.len(),
            stored_messages: 0,
            chunks: 0,
            skipped: 0,
            failed: 0,
            errors: Vec::new(),
        };
        let mut batch = Vec::new();
        for (number, line) in &lines {
            let parsed = import_line(line, now).and_then(|mut memory| {
                if memory.text.chars().count() > chars_max {
                    return Err(format!("`content` is longer than {chars_max} characters"));
                }
                if memory.session_id.is_empty() {
                    memory.session_id = default_session.clone();
                }
                Ok(memory)
            });
            match parsed {
                Ok(memory) => batch.push(memory),
                Err(message) => {
                    outcome.failed += 1;
                    if outcome.errors.len() < REPORTED_ERRORS_MAX {
                        outcome
                            .errors
                            .push(json!({"line": number, "message": message}));
                    }
                }
            }
        }
        let vault = st.engine.vault(&vault_id)?;
        for chunk in batch.chunks(IMPORT_BATCH_MAX) {
            let result = vault.ingest(chunk.to_vec())?;
            outcome.chunks += result.stored.len();
            outcome.skipped += result.skipped;
            outcome.stored_messages += chunk.len() - result.skipped;
        }
        Ok(outcome)
    })
    .await
}

/// `POST /v1/memory/import` (JSON Lines as exported) → `{imported, skipped, failed, errors}`.
pub async fn import(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let (_auth, _query, vault_id) = caller(state, &parts).await?;
    let bytes = read_body(body, &parts.headers, state.config.limits.body_bytes_max).await?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("invalid_utf8", "The body must be UTF-8 JSON Lines."))?;
    let outcome = bulk_store(state, vault_id, text, String::new()).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"imported": outcome.stored_messages, "skipped": outcome.skipped, "failed": outcome.failed, "errors": outcome.errors}),
    ))
}

/// `POST /v1/memory/upload` (JSON Lines of `{content, role?, timestamp?}`) →
/// `{status, vault, stats: {inputItems, chunks, stored, failed}, errors?}`.
pub async fn upload(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let (_auth, _query, vault_id) = caller(state, &parts).await?;
    let bytes = read_body(body, &parts.headers, state.config.limits.body_bytes_max).await?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("invalid_utf8", "The body must be UTF-8 JSON Lines."))?;
    let session = header(&parts.headers, "x-session-id")
        .unwrap_or("")
        .to_owned();
    let outcome = bulk_store(state, vault_id.clone(), text, session).await?;
    let mut body = json!({
        "status": if outcome.failed == 0 { "complete" } else { "partial" },
        "vault": vault_id,
        "stats": {"inputItems": outcome.lines, "chunks": outcome.chunks, "stored": outcome.stored_messages, "failed": outcome.failed},
    });
    if !outcome.errors.is_empty() {
        body["errors"] = json!(outcome.errors);
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `POST /v1/memory/warmup` → `{status: "warm", memories_loaded, warmup_ms}`.
pub async fn warmup(
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
pub async fn stats(
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
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_lines_round_trip_and_report_errors() {
        let memory = import_line(r#"{"content":"hi","role":"assistant","session_id":"s","created_at":"2026-06-05T21:00:00.000Z","metadata":{"a":1}}"#, 7).unwrap();
        assert_eq!(memory.role, engine::Role::Assistant);
        assert_eq!(memory.session_id, "s");
        assert_eq!(
            crate::time::format_ms(memory.created_at_ms),
            "2026-06-05T21:00:00.000Z"
        );
        let upload = import_line(r#"{"content":"x","timestamp":1700000000000}"#, 7).unwrap();
        assert_eq!(upload.created_at_ms, 1_700_000_000_000);
        assert_eq!(
            import_line(r#"{"content":"x"}"#, 7).unwrap().created_at_ms,
            7
        );
        assert!(import_line("not json", 0).is_err());
        assert!(import_line(r#"{"content":""}"#, 0).is_err());
        assert!(import_line(r#"{"content":"x","role":"wizard"}"#, 0).is_err());
        assert!(import_line(r#"[1]"#, 0).is_err());
    }
}
