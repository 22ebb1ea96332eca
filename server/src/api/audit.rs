//! `GET /v1/audit?since=&limit=` (admin key): the account's audit log (see `crate::audit`).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::AppState;
use crate::audit::{AuditEntry, PAGE_DEFAULT, PAGE_MAX};
use crate::auth::authenticate;
use crate::error::ApiError;
use crate::http::{Body, blocking, json_response, query_params};
use crate::time::{format_ms, parse_rfc3339_ms};

fn entry_json(entry: &AuditEntry) -> serde_json::Value {
    json!({
        "at": format_ms(entry.at_ms),
        "at_ms": entry.at_ms,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "detail": entry.detail,
    })
}

/// `since`: milliseconds since the epoch or an RFC 3339 time (default: the beginning);
/// `limit`: 1..=1000 (default 100); `cursor`: the `next_cursor` of the previous page.
/// → `{object: "list", data: [...], has_more, next_cursor?}`, oldest first.
pub(crate) async fn list(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let auth = authenticate(state, req.headers()).await?;
    auth.require_admin()?;
    let query = query_params(req.uri().query());
    let since_ms = match query.get("since").map(String::as_str) {
        None | Some("") => 0,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .or_else(|| parse_rfc3339_ms(text))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_since",
                    "`since` is milliseconds since 1970 or an RFC 3339 time.",
                )
                .with_param("since")
            })?,
    };
    let limit = match query.get("limit") {
        None => PAGE_DEFAULT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("`limit` is a whole number from 1 to {PAGE_MAX}."),
                )
                .with_param("limit")
            })?,
    };
    let cursor = match query.get("cursor") {
        None => 0,
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request("invalid_cursor", "`cursor` is a `next_cursor` value.")
                .with_param("cursor")
        })?,
    };
    let st = state.clone();
    let account = auth.account_id.clone();
    let (entries, next) =
        blocking(move || Ok(st.audit.read(&account, since_ms, cursor, limit)?)).await?;
    let data: Vec<_> = entries.iter().map(entry_json).collect();
    let mut body = json!({"object": "list", "data": data, "has_more": next.is_some()});
    if let Some(next) = next {
        body["next_cursor"] = json!(next.to_string());
    }
    Ok(json_response(StatusCode::OK, &body))
}
