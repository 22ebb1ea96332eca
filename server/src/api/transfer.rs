//! Bulk transfer of a vault: `GET /v1/memory/export` and `POST /v1/memory/import` (JSON
//! Lines, lossless), and `POST /v1/memory/upload` (the hosted API's bulk import of
//! `{content, role?, timestamp?}` lines). An invalid line is reported and skipped; the
//! valid ones are stored in batches of [`IMPORT_BATCH_MAX`] (one WAL append each).
//!
//! Export/import work on stored records: a long message exported as several chunks comes
//! back as several memories (each short enough never to be chunked again).
//!
//! **Whatever export writes, import reads.** Every exported field is within what
//! [`import_line`] accepts: `created_at_ms` is clamped to the range every reader handles (a
//! record stored before that range was checked still exports), import allows records up to
//! the engine's chunk size even when `message_chars_max` is lower, and a record whose text
//! is only white space (a chunk cut from a long run of spaces) is skipped, not failed, as an
//! empty message is on ingest.

use std::sync::Arc;

use engine::{Memory, NewMemory, Vault};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::memories::{caller, memory_json};
use crate::AppState;
use crate::audit::{self, AuditEntry};
use crate::auth::AuthContext;
use crate::error::{ApiError, Error};
use crate::http::{Body, blocking, json_response, read_body, text_response};
use crate::request::{check_text_length, parse_role, session_id, to_new_memory};
use crate::serve::budget::Reservation;
use crate::time::now_ms;

/// Lines accepted by one upload (413 above), as the hosted API documents.
pub(crate) const UPLOAD_LINES_MAX: usize = 10_000;
/// Errors listed in an upload/import answer; the rest are only counted.
pub(crate) const REPORTED_ERRORS_MAX: usize = 10;
/// Memories per engine ingest call during import/upload (one WAL batch each).
pub(crate) const IMPORT_BATCH_MAX: usize = 1000;
/// Memories read per page while exporting.
pub(crate) const EXPORT_PAGE_MAX: usize = 1000;

/// One export line: [`memory_json`] plus `created_at_ms` for a lossless round trip (clamped
/// like `created_at`, so the line imports).
pub(crate) fn export_line(memory: &Memory) -> String {
    let mut value = memory_json(memory);
    value["created_at_ms"] = json!(crate::time::clamp_ms(memory.created_at_ms));
    value.to_string()
}

/// Parses an export or upload line: `content` (or `text`) required; `role` (default user),
/// `session_id` (default `default_session`), `created_at_ms`/`created_at`/`timestamp`,
/// `model`, `metadata` optional. `chars_max` is the configured `message_chars_max` for a
/// line a client sent (`None` for the CLI's import of a file). The memory is built and
/// bounded by [`to_new_memory`], like every other. `Ok(None)`: the content is empty or white
/// space, a line to skip.
pub(crate) fn import_line(
    line: &str,
    now_ms: i64,
    default_session: &str,
    chars_max: Option<usize>,
) -> Result<Option<NewMemory>, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("a line must be a JSON object".into());
    };
    let text = match fields.get("content").or_else(|| fields.get("text")) {
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(None),
        Some(Value::String(text)) => text.clone(),
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
        None | Some(Value::Null) => default_session,
        Some(Value::String(s)) if s.is_empty() => default_session,
        Some(Value::String(s)) => s.as_str(),
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
    let model = fields.get("model").and_then(Value::as_str);
    let metadata = match fields.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map.clone()),
        Some(_) => return Err("`metadata` must be an object".into()),
    };
    let memory = to_new_memory(session_id, role, text, created_at_ms, model, metadata)
        .map_err(|e| e.to_string())?;
    if let Some(chars_max) = chars_max {
        check_text_length(&memory.text, chars_max).map_err(|e| e.to_string())?;
    }
    Ok(Some(memory))
}

/// Calls `f` on every memory of the vault, newest first, a page at a time.
pub(crate) fn for_each_memory(
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

/// `GET /v1/memory/export` → JSON Lines, newest first.
pub(crate) async fn export(
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

/// `chars_max` bounds each line's text (the configured `message_chars_max`, or for an import
/// at least the engine's chunk size, which bounds every exported record).
///
/// Memory: the lines are read in place from the body's text (no copy of each line), each
/// batch of memories is handed to the engine by value, and the body's share of the body
/// budget (`body`) is held until the last batch is stored.
async fn bulk_store(
    state: &Arc<AppState>,
    vault_id: String,
    body: JsonlBody,
    default_session: String,
    chars_max: usize,
) -> Result<BulkOutcome, ApiError> {
    let JsonlBody { text, reservation } = body;
    let line_count = text.lines().filter(|l| !l.trim().is_empty()).count();
    if line_count > UPLOAD_LINES_MAX {
        return Err(ApiError::too_large(
            "too_many_lines",
            format!("{line_count} lines exceed the limit of {UPLOAD_LINES_MAX}."),
        ));
    }
    let st = state.clone();
    blocking(move || {
        let _reservation = reservation;
        let lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l));
        let now = now_ms();
        let mut outcome = BulkOutcome {
            lines: line_count,
            stored_messages: 0,
            chunks: 0,
            skipped: 0,
            failed: 0,
            errors: Vec::new(),
        };
        let mut batch = Vec::new();
        for (number, line) in lines {
            match import_line(line, now, &default_session, Some(chars_max)) {
                Ok(Some(memory)) => batch.push(memory),
                Ok(None) => outcome.skipped += 1,
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
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(IMPORT_BATCH_MAX));
            let chunk = std::mem::replace(&mut batch, rest);
            let sent = chunk.len();
            let result = vault.ingest(chunk)?;
            outcome.chunks += result.stored.len();
            outcome.skipped += result.skipped;
            outcome.stored_messages += sent - result.skipped;
        }
        Ok(outcome)
    })
    .await
}

/// A JSON Lines body as text, and its share of the server's body budget.
struct JsonlBody {
    text: String,
    reservation: Reservation,
}

/// The common start of the JSON Lines endpoints: the caller's vault and the body as UTF-8
/// text (read within the body limit and the body budget; the bytes become the text without
/// a copy).
async fn jsonl_request(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<(http::request::Parts, AuthContext, String, JsonlBody), ApiError> {
    let (parts, body) = req.into_parts();
    let (auth, _query, vault_id) = caller(state, &parts).await?;
    let (bytes, reservation) = read_body(state, body, &parts.headers).await?.into_parts();
    let text = String::from_utf8(Vec::from(bytes))
        .map_err(|_| ApiError::bad_request("invalid_utf8", "The body must be UTF-8 JSON Lines."))?;
    Ok((parts, auth, vault_id, JsonlBody { text, reservation }))
}

/// `POST /v1/memory/import` (JSON Lines as exported) → `{imported, skipped, failed, errors}`.
pub(crate) async fn import(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_parts, auth, vault_id, text) = jsonl_request(state, req).await?;
    let chars_max = state
        .config
        .limits
        .message_chars_max
        .max(engine::CHUNK_CHARS_MAX);
    let outcome = bulk_store(state, vault_id.clone(), text, String::new(), chars_max).await?;
    audit::record(
        state,
        AuditEntry {
            at_ms: now_ms(),
            account_id: auth.account_id,
            actor: auth.key_id,
            action: "memory.import".into(),
            target: vault_id,
            detail: json!({"imported": outcome.stored_messages, "failed": outcome.failed}),
        },
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({"imported": outcome.stored_messages, "skipped": outcome.skipped, "failed": outcome.failed, "errors": outcome.errors}),
    ))
}

/// `POST /v1/memory/upload` (JSON Lines of `{content, role?, timestamp?}`) →
/// `{status, vault, stats: {inputItems, chunks, stored, failed}, errors?}`.
pub(crate) async fn upload(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, _auth, vault_id, text) = jsonl_request(state, req).await?;
    // The header is held to the same bound as in every other request that names a session.
    let session = session_id(None, &parts.headers)?;
    let chars_max = state.config.limits.message_chars_max;
    let outcome = bulk_store(state, vault_id.clone(), text, session, chars_max).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_lines_round_trip_and_report_errors() {
        let memory = import_line(r#"{"content":"hi","role":"assistant","session_id":"s","created_at":"2026-06-05T21:00:00.000Z","metadata":{"a":1}}"#, 7, "", None).unwrap().unwrap();
        assert_eq!(memory.role, engine::Role::Assistant);
        assert_eq!(memory.session_id, "s");
        assert_eq!(
            crate::time::format_ms(memory.created_at_ms),
            "2026-06-05T21:00:00.000Z"
        );
        let upload = import_line(r#"{"content":"x","timestamp":1700000000000}"#, 7, "", None)
            .unwrap()
            .unwrap();
        assert_eq!(upload.created_at_ms, 1_700_000_000_000);
        assert_eq!(
            import_line(r#"{"content":"x"}"#, 7, "", None)
                .unwrap()
                .unwrap()
                .created_at_ms,
            7
        );
        assert!(import_line("not json", 0, "", None).is_err());
        assert!(matches!(
            import_line(r#"{"content":" \n"}"#, 0, "", None),
            Ok(None)
        ));
        assert!(import_line(r#"{"content":7}"#, 0, "", None).is_err());
        for time in [
            r#""created_at_ms":253402300800000"#,
            r#""created_at":1e300"#,
            r#""timestamp":"9999-12-31T23:59:59-23:59""#,
            r#""created_at":"1970-01-01T00:00:00+00:01""#,
        ] {
            assert_eq!(
                import_line(&format!(r#"{{"content":"x",{time}}}"#), 0, "", None).unwrap_err(),
                "`created_at` must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z (in UTC, after its offset)",
                "{time}"
            );
        }
        assert!(import_line(r#"{"content":"x","role":"wizard"}"#, 0, "", None).is_err());
        assert!(import_line(r#"[1]"#, 0, "", None).is_err());
    }

    #[test]
    fn an_exported_line_imports_whatever_created_at_is_on_disk() {
        for (stored, exported) in [
            (i64::MAX, crate::time::MS_MAX),
            (253_402_300_800_000, crate::time::MS_MAX),
            (i64::MIN, 0),
            (-1, 0),
            (1_700_000_000_000, 1_700_000_000_000),
        ] {
            let memory = Memory {
                id: 1,
                session_id: "s".into(),
                role: engine::Role::User,
                text: "hi".into(),
                created_at_ms: stored,
                model: None,
                metadata: None,
                content_hash: 0,
                chunk: 0,
            };
            let line = export_line(&memory);
            let back = import_line(&line, 0, "", None).unwrap().unwrap();
            assert_eq!(back.created_at_ms, exported, "{line}");
        }
    }

    #[test]
    fn import_lines_take_the_default_session_and_the_request_limits() {
        let line = |text: &str, session: &str, chars_max| {
            import_line(text, 0, session, chars_max).map(|m| m.unwrap().session_id)
        };
        assert_eq!(line(r#"{"content":"x"}"#, "up", None).unwrap(), "up");
        assert_eq!(
            line(r#"{"content":"x","session_id":"own"}"#, "up", None).unwrap(),
            "own"
        );
        assert_eq!(
            line(r#"{"content":"xxxx"}"#, "", Some(3)).unwrap_err(),
            "`content` is longer than 3 characters"
        );
        assert!(line(r#"{"content":"xxxx"}"#, "", None).is_ok());
        let long = format!(r#"{{"content":"x","session_id":"{}"}}"#, "s".repeat(300));
        assert_eq!(
            line(&long, "", None).unwrap_err(),
            "`session_id` must be a short string"
        );
        let model = format!(r#"{{"content":"x","model":"{}"}}"#, "m".repeat(300));
        assert_eq!(
            line(&model, "", None).unwrap_err(),
            "`model` is longer than 256 characters"
        );
    }
}
