//! `/v1/keys`: mint (any active key of the account, or only the admin key under
//! `[keys] mint = "admin"`), list (admin), revoke (with every key the revoked key minted).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::audit::{self, AuditEntry};
use crate::auth::{authenticate, authenticated_body};
use crate::catalog::{KEY_NAME_CHARS_MAX, KeyRecord, NewKey};
use crate::config::MintPolicy;
use crate::error::ApiError;
use crate::http::{Body, blocking, json_response, parse_json, query_params};
use crate::time::{format_ms, now_ms};

#[derive(Deserialize, Default)]
struct CreateBody {
    name: Option<String>,
}

/// The public view of a key: never the key or its hash.
pub(crate) fn key_json(key: &KeyRecord) -> serde_json::Value {
    json!({
        "id": key.id,
        "name": key.name,
        "prefix": key.hint,
        "admin": key.is_admin,
        "parent_id": key.parent_id,
        "created_at": format_ms(key.created_at_ms),
        "last_used_at": key.last_used_at_ms.map(format_ms),
        "revoked": key.revoked_at_ms.is_some(),
        "revoked_at": key.revoked_at_ms.map(format_ms),
    })
}

/// `POST /v1/keys` → 201 `{id, key, name, created_at, prefix, parent_id}`. The new key
/// records the key that minted it; 403 under `mint = "admin"` for any other key, 409 past
/// `[keys] active_max`.
pub(crate) async fn create(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_parts, auth, bytes) = authenticated_body(state, req).await?;
    if state.config.keys.mint == MintPolicy::Admin && !auth.is_admin {
        return Err(ApiError::forbidden(
            "Only the account's admin key may mint keys on this server (`[keys] mint = \"admin\"`).",
        ));
    }
    let request: CreateBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        parse_json(&bytes)?
    };
    if let Some(name) = &request.name
        && name.chars().count() > KEY_NAME_CHARS_MAX
    {
        return Err(ApiError::bad_request(
            "name_too_long",
            format!("`name` is longer than {KEY_NAME_CHARS_MAX} characters."),
        )
        .with_param("name"));
    }
    let st = state.clone();
    let (account_id, parent_id) = (auth.account_id.clone(), auth.key_id.clone());
    let (record, key) = blocking(move || {
        let new = NewKey {
            account_id: &account_id,
            name: request.name,
            is_admin: false,
            parent_id: Some(&parent_id),
            active_max: Some(st.config.keys.active_max),
        };
        Ok(st.catalog.mint(new, now_ms())?)
    })
    .await?;
    tracing::info!(key_id = %record.id, parent_id = %auth.key_id, "key created");
    audit::record(
        state,
        AuditEntry {
            at_ms: record.created_at_ms,
            account_id: auth.account_id,
            actor: auth.key_id,
            action: "key.create".into(),
            target: record.id.clone(),
            detail: json!({"name": record.name, "prefix": record.hint}),
        },
    );
    let mut body = key_json(&record);
    body["key"] = json!(key);
    Ok(json_response(StatusCode::CREATED, &body))
}

/// `GET /v1/keys` (admin) → `{"keys": [...]}`, oldest first.
pub(crate) async fn list(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let auth = authenticate(state, req.headers()).await?;
    auth.require_admin()?;
    let keys: Vec<_> = state
        .catalog
        .keys(&auth.account_id)
        .iter()
        .map(key_json)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "keys": keys}),
    ))
}

/// `DELETE /v1/keys/{id}[?purge=true]` → `{id, revoked: true, revoked_keys, purged}`:
/// `revoked_keys` counts the key and every key below it this call revoked (0 when all were
/// revoked already). The admin key may revoke any key of the account except itself; any
/// other key may revoke itself and the keys it minted, transitively. `purge` deletes the
/// named key's vault (not its descendants').
pub(crate) async fn revoke(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let auth = authenticate(state, req.headers()).await?;
    let purge = query_params(req.uri().query())
        .get("purge")
        .is_some_and(|v| v == "true" || v == "1");
    let target = state
        .catalog
        .key(id)
        .filter(|k| k.account_id == auth.account_id);
    let Some(target) = target.filter(|k| {
        auth.is_admin || k.id == auth.key_id || state.catalog.minted_by(&auth.key_id, &k.id)
    }) else {
        return Err(ApiError::not_found(format!("No key with id {id}.")));
    };
    if target.is_admin && target.id == auth.key_id {
        return Err(ApiError::bad_request(
            "cannot_revoke_admin_key",
            "The admin key cannot revoke itself; use `memoryrouter keys revoke` on the server.",
        ));
    }
    let st = state.clone();
    let key_id = target.id.clone();
    let revoked = blocking(move || {
        let revoked = st.catalog.revoke_key(&key_id, now_ms())?;
        if purge {
            st.engine.purge_vault(&key_id)?;
        }
        Ok(revoked)
    })
    .await?;
    tracing::info!(key_id = %target.id, revoked, purge, "key revoked");
    let at_ms = now_ms();
    audit::record(
        state,
        AuditEntry {
            at_ms,
            account_id: auth.account_id.clone(),
            actor: auth.key_id.clone(),
            action: "key.revoke".into(),
            target: target.id.clone(),
            detail: json!({"revoked_keys": revoked}),
        },
    );
    if purge {
        audit::record(
            state,
            AuditEntry {
                at_ms,
                account_id: auth.account_id,
                actor: auth.key_id,
                action: "vault.purge".into(),
                target: target.id.clone(),
                detail: serde_json::Value::Null,
            },
        );
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": target.id, "revoked": true, "revoked_keys": revoked, "purged": purge}),
    ))
}
