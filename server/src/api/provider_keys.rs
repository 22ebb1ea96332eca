//! `/v1/provider-keys/{provider}`: the account's stored provider keys (admin key only),
//! encrypted at rest and only ever listed masked.
//!
//! Only the key is stored. A `base_url` in the body is refused with 400: provider base URLs
//! come only from the config file (`[providers.NAME] base_url`), so no URL a request sends is
//! ever stored, listed or fetched (an accepted-but-ignored setting would be a silent bug,
//! and an honoured one a server-side request forgery).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::audit::{self, AuditEntry};
use crate::auth::authenticate;
use crate::catalog::{PROVIDER_VALUE_CHARS_MAX, ProviderKeyInfo, valid_provider_name};
use crate::error::ApiError;
use crate::http::{Body, blocking, json_response, parse_json, read_body};
use crate::time::{format_ms, now_ms};

#[derive(Deserialize)]
struct PutBody {
    api_key: String,
    /// Refused when given (see the module docs); read only to say so.
    #[serde(default)]
    base_url: Option<serde_json::Value>,
}

/// A stored key as listed: never the key, never a base URL (a catalog written before
/// base URLs were refused may still hold one; it was never used and is not shown).
fn info_json(info: &ProviderKeyInfo) -> serde_json::Value {
    json!({"provider": info.provider, "hint": info.hint, "updated_at": format_ms(info.updated_at_ms)})
}

/// The answer to a `base_url` in the body: where base URLs are set instead.
fn base_url_refused() -> ApiError {
    ApiError::bad_request(
        "base_url_not_supported",
        "`base_url` is not accepted here: provider base URLs are set only in the server's \
         config file (`[providers.NAME] base_url`). Send just the `api_key`.",
    )
    .with_param("base_url")
}

fn check_provider(provider: &str) -> Result<(), ApiError> {
    if valid_provider_name(provider) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_provider",
            "Provider names are 1-64 characters of a-z, 0-9, `_` and `-`.",
        )
        .with_param("provider"))
    }
}

/// `GET /v1/provider-keys` → `{"providers": [{provider, hint, updated_at}]}`.
pub(crate) async fn list(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let auth = authenticate(state, req.headers()).await?;
    auth.require_admin()?;
    let providers: Vec<_> = state
        .catalog
        .provider_keys(&auth.account_id)
        .iter()
        .map(info_json)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"providers": providers}),
    ))
}

/// `PUT /v1/provider-keys/{provider}` `{"api_key"}` → the masked entry; a `base_url` is 400.
pub(crate) async fn put(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    provider: &str,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let auth = authenticate(state, &parts.headers).await?;
    auth.require_admin()?;
    check_provider(provider)?;
    let bytes = read_body(state, body, &parts.headers).await?;
    let request: PutBody = parse_json(&bytes)?;
    if request.base_url.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(base_url_refused());
    }
    if request.api_key.trim().is_empty() {
        return Err(
            ApiError::bad_request("empty_api_key", "`api_key` must not be empty.")
                .with_param("api_key"),
        );
    }
    if request.api_key.len() > PROVIDER_VALUE_CHARS_MAX {
        return Err(ApiError::too_large(
            "value_too_long",
            format!("`api_key` is longer than {PROVIDER_VALUE_CHARS_MAX} bytes."),
        )
        .with_param("api_key"));
    }
    let st = state.clone();
    let provider = provider.to_owned();
    let account_id = auth.account_id.clone();
    let info = blocking(move || {
        Ok(st.catalog.set_provider_key(
            &account_id,
            &provider,
            request.api_key.trim(),
            None,
            now_ms(),
        )?)
    })
    .await?;
    // The provider's name only: never the key, nor its masked hint.
    audit::record(
        state,
        AuditEntry {
            at_ms: now_ms(),
            account_id: auth.account_id,
            actor: auth.key_id,
            action: "provider_key.put".into(),
            target: info.provider.clone(),
            detail: serde_json::Value::Null,
        },
    );
    Ok(json_response(StatusCode::OK, &info_json(&info)))
}

/// `DELETE /v1/provider-keys/{provider}` → `{provider, deleted: true}` or 404.
pub(crate) async fn delete(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    provider: &str,
) -> Result<Response<Body>, ApiError> {
    let auth = authenticate(state, req.headers()).await?;
    auth.require_admin()?;
    check_provider(provider)?;
    let st = state.clone();
    let name = provider.to_owned();
    let account_id = auth.account_id.clone();
    let deleted = blocking(move || Ok(st.catalog.delete_provider_key(&account_id, &name)?)).await?;
    if !deleted {
        return Err(ApiError::not_found(format!(
            "No stored key for provider {provider}."
        )));
    }
    audit::record(
        state,
        AuditEntry {
            at_ms: now_ms(),
            account_id: auth.account_id,
            actor: auth.key_id,
            action: "provider_key.delete".into(),
            target: provider.to_owned(),
            detail: serde_json::Value::Null,
        },
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({"provider": provider, "deleted": true}),
    ))
}
