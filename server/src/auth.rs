//! Authentication: turns request headers into an [`AuthContext`] (which key, which vault,
//! which memory mode), or the one uniform 401.
//!
//! Accepted: `Authorization: Bearer mk_…`, `x-api-key: mk_…`, and BYOK
//! (`X-Memory-Key: mk_…` with the provider's key as the bearer token). A key may end in
//! `:read`, `:write` or `:off` to pick the memory mode. A missing, malformed, unknown or
//! revoked key all get the same answer, so a caller learns nothing about other keys.

use std::time::Instant;

use http::HeaderMap;
use http::request::Parts;
use hyper::Request;
use hyper::body::Incoming;

use crate::AppState;
use crate::error::ApiError;
use crate::http::{Buffered, header, query_params, read_body};
use crate::request::MemoryMode;
use crate::secret;

/// Who is calling. The vault of a request is `key_id` (or, for an admin acting with
/// `?key_id=`, that key's id; see [`AuthContext::target_vault`]).
#[derive(Clone)]
pub(crate) struct AuthContext {
    pub key_id: String,
    pub account_id: String,
    pub is_admin: bool,
    /// From the key suffix; requests may override it (see [`MemoryMode::resolve`]).
    pub mode: MemoryMode,
    /// BYOK: the bearer token when the Memory Key came in `X-Memory-Key`. Never stored.
    pub provider_key: Option<String>,
}

/// Hand-written so a BYOK provider key can never reach a log line through `{:?}`.
impl std::fmt::Debug for AuthContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthContext")
            .field("key_id", &self.key_id)
            .field("account_id", &self.account_id)
            .field("is_admin", &self.is_admin)
            .field("mode", &self.mode)
            .field(
                "provider_key",
                &self.provider_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl std::fmt::Display for AuthContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.key_id)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header(headers, "authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Splits `mk_…:read` into the key and its mode. An unknown suffix is a malformed key.
fn split_suffix(presented: &str) -> Option<(&str, MemoryMode)> {
    match presented.split_once(':') {
        None => Some((presented, MemoryMode::On)),
        Some((key, "read")) => Some((key, MemoryMode::Read)),
        Some((key, "write")) => Some((key, MemoryMode::Write)),
        Some((key, "off")) => Some((key, MemoryMode::Off)),
        Some(_) => None,
    }
}

/// What every JSON endpoint starts with: the request's head, its authenticated caller, and
/// its body read under the configured size limit and the server's body budget (held
/// until the returned [`Buffered`] is dropped). Authentication comes first, so a caller
/// without a valid key never gets a body read (or a 413 instead of the uniform 401).
pub(crate) async fn authenticated_body(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<(Parts, AuthContext, Buffered), ApiError> {
    let (parts, body) = req.into_parts();
    let auth = authenticate(state, &parts.headers).await?;
    let bytes = read_body(state, body, &parts.headers).await?;
    Ok((parts, auth, bytes))
}

impl AuthContext {
    /// The memory mode of this request: the key's suffix, overridden by the `X-Memory-Mode`
    /// header, the `?mode=` parameter or the body's `memory_mode` (see [`MemoryMode::resolve`]).
    pub(crate) fn request_mode(
        &self,
        parts: &Parts,
        body_mode: Option<&str>,
    ) -> Result<MemoryMode, ApiError> {
        let query = query_params(parts.uri.query());
        MemoryMode::resolve(
            self.mode,
            &parts.headers,
            query.get("mode").map(String::as_str),
            body_mode,
        )
    }
}

/// The valid key a request presents, without rate limiting or recording its use (cluster
/// mode reads it to find the request's vault before deciding where to serve it). A
/// well-formed key this node does not know yet is looked up again after catching up with
/// the shared catalog ([`Catalog::lookup_fresh`](crate::catalog::Catalog::lookup_fresh)).
pub(crate) async fn presented_record(
    state: &AppState,
    headers: &HeaderMap,
) -> Option<crate::catalog::KeyRecord> {
    let presented = match header(headers, "x-memory-key") {
        Some(memory_key) => Some(memory_key),
        None => bearer(headers).or_else(|| header(headers, "x-api-key")),
    };
    let (key, _) = presented.and_then(split_suffix)?;
    if !secret::looks_like_key(key) || !secret::passes_checksum(key) {
        return None;
    }
    state.catalog.lookup_fresh(key).await
}

/// Authenticates a request, applies the per-key and per-account rate limits and records
/// the key's use.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<AuthContext, ApiError> {
    let (presented, provider_key) = match header(headers, "x-memory-key") {
        Some(memory_key) => (Some(memory_key), bearer(headers).map(str::to_owned)),
        None => (
            bearer(headers).or_else(|| header(headers, "x-api-key")),
            None,
        ),
    };
    let (key, mode) = presented
        .and_then(split_suffix)
        .ok_or_else(ApiError::invalid_key)?;
    // Shape and checksum first: a mistyped or forged key costs no hashing and no lookup.
    if !secret::looks_like_key(key) || !secret::passes_checksum(key) {
        return Err(ApiError::invalid_key());
    }
    let record = state
        .catalog
        .lookup_fresh(key)
        .await
        .ok_or_else(ApiError::invalid_key)?;
    let now = Instant::now();
    state
        .limiter
        .key
        .check(&record.id, now)
        .map_err(ApiError::rate_limited)?;
    state
        .limiter
        .account
        .check(&record.account_id, now)
        .map_err(|secs| {
            ApiError::rate_limited_as(
                secs,
                "Too many requests for this account (`account_requests_per_minute`)",
            )
        })?;
    state.catalog.touch(&record.id, crate::time::now_ms());
    Ok(AuthContext {
        key_id: record.id,
        account_id: record.account_id,
        is_admin: record.is_admin,
        mode,
        provider_key,
    })
}

impl AuthContext {
    /// The vault a memory request acts on: the caller's own, or with `?key_id=` from an
    /// admin key, that key's vault (same account only; anything else is 404 so the answer
    /// does not reveal keys of other accounts).
    pub(crate) fn target_vault(
        &self,
        state: &AppState,
        key_id: Option<&str>,
    ) -> Result<String, ApiError> {
        let Some(key_id) = key_id.filter(|k| !k.is_empty() && *k != self.key_id) else {
            return Ok(self.key_id.clone());
        };
        if !self.is_admin {
            return Err(ApiError::forbidden(
                "`key_id` needs the account's admin key.",
            ));
        }
        match state.catalog.key(key_id) {
            Some(key) if key.account_id == self.account_id => Ok(key.id),
            _ => Err(ApiError::not_found(format!("No key with id {key_id}."))),
        }
    }

    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "This endpoint needs the account's admin key.",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_pick_the_mode() {
        assert_eq!(split_suffix("mk_a"), Some(("mk_a", MemoryMode::On)));
        assert_eq!(split_suffix("mk_a:read"), Some(("mk_a", MemoryMode::Read)));
        assert_eq!(
            split_suffix("mk_a:write"),
            Some(("mk_a", MemoryMode::Write))
        );
        assert_eq!(split_suffix("mk_a:off"), Some(("mk_a", MemoryMode::Off)));
        assert_eq!(split_suffix("mk_a:sometimes"), None);
    }

    #[test]
    fn bearer_parsing_is_tolerant_of_case_and_strict_about_shape() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "bearer mk_x".parse().unwrap());
        assert_eq!(bearer(&headers), Some("mk_x"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    /// A key whose checksum fails is refused before the catalog is asked — even one the
    /// catalog holds (registered here as it is, as if its hash had been stored) — while a
    /// key minted before keys had a checksum keeps working.
    #[tokio::test]
    async fn a_failing_checksum_is_refused_before_the_lookup_and_old_keys_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config {
            data_dir: dir.path().to_path_buf(),
            ..crate::Config::default()
        };
        let state = crate::AppState::open(config).unwrap().state;
        let account = state.catalog.accounts().remove(0).id;
        let register = |key: &str| {
            state
                .catalog
                .register_key(key, &account, None, false, 0)
                .unwrap()
        };
        let bearer = |key: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
            headers
        };
        let legacy = format!(
            "{}{}",
            secret::KEY_PREFIX,
            "Ab3x".repeat(11)[..43].to_owned()
        );
        let minted = secret::mint_key().unwrap();
        let last = minted.chars().last().unwrap();
        let forged = format!(
            "{}{}",
            &minted[..minted.len() - 1],
            if last == 'a' { 'b' } else { 'a' }
        );
        for key in [&legacy, &minted, &forged] {
            register(key);
        }
        assert!(authenticate(&state, &bearer(&legacy)).await.is_ok());
        assert!(
            authenticate(&state, &bearer(&format!("{legacy}:read")))
                .await
                .is_ok()
        );
        assert!(authenticate(&state, &bearer(&minted)).await.is_ok());
        assert!(
            state.catalog.lookup(&forged).is_some(),
            "the catalog holds it"
        );
        let refused = authenticate(&state, &bearer(&forged)).await.unwrap_err();
        assert_eq!(refused.code, "invalid_memory_key");
    }

    #[test]
    fn debug_output_never_shows_the_byok_provider_key() {
        let auth = AuthContext {
            key_id: "key_abc".into(),
            account_id: "acct".into(),
            is_admin: false,
            mode: MemoryMode::On,
            provider_key: Some("sk-secret-provider-key".into()),
        };
        let shown = format!("{auth:?}");
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(
            shown.contains("key_abc") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
