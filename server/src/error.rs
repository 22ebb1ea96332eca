//! Errors: the crate's one error enum, and the OpenAI-shaped HTTP error every handler returns.
//!
//! [`Error`] is what library functions (config, catalog, crypto, commands) fail with.
//! [`ApiError`] is what an HTTP request fails with; [`From<Error>`] and the engine mapping
//! below are the one place where a storage or service fault becomes a status code: user
//! errors are 4xx, anything that smells of the disk is 503 (never a 500 for a known fault).

use std::path::PathBuf;

use http::StatusCode;
use serde_json::json;

/// `Retry-After` of a write refused because the disk is full: freeing space takes an
/// operator, so clients need not come back every second.
pub(crate) const STORAGE_FULL_RETRY_AFTER_SECS: u64 = 5;

/// Everything the server library can fail with outside an HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {field}: {reason}")]
    Config { field: String, reason: String },
    #[error("cannot read config file {path}: {source}")]
    ConfigFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config file {path}: {message}")]
    ConfigParse { path: PathBuf, message: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog write-ahead log: {0}")]
    Wal(#[from] wal::WalError),
    #[error("storage engine: {0}")]
    Engine(#[from] engine::Error),
    #[error("the key catalog refuses changes until a restart (a write to it failed)")]
    CatalogPoisoned,
    #[error("catalog record {lsn} (kind {kind}) is corrupt: {reason}")]
    CorruptCatalog { lsn: u64, kind: u8, reason: String },
    #[error("secret key: {reason}")]
    SecretKey { reason: String },
    #[error("provider key for {provider} cannot be decrypted (wrong secret key?)")]
    Decrypt { provider: String },
    #[error("no key with id {id}")]
    KeyNotFound { id: String },
    #[error("the account already holds {max} active keys (`[keys] active_max`)")]
    ActiveKeysMax { max: usize },
    #[error("the system random number generator failed")]
    Random,
    #[error("{what} failed checksum verification: {reason}")]
    Verify { what: String, reason: String },
    #[error("import line {line}: {reason}")]
    ImportLine { line: usize, reason: String },
    #[error("health check of {url} failed: {reason}")]
    Health { url: String, reason: String },
    #[error("models fetch: {reason}")]
    Fetch { reason: String },
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// An error answered to an HTTP client as
/// `{"error":{"message","type","param","code"}}` with `status`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: &'static str,
    /// Seconds to put in `Retry-After` (429 and 503 only).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
            retry_after_secs: None,
        }
    }

    /// Names the request field the error is about (`messages[2].role`).
    pub(crate) fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    pub(crate) fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// The one answer for a missing, malformed, unknown or revoked key: it never says which,
    /// so a caller cannot probe whether another key exists.
    pub(crate) fn invalid_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_memory_key",
            "Invalid or missing Memory Key. Send `Authorization: Bearer mk_…`.",
        )
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "admin_key_required",
            message,
        )
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            message,
        )
    }

    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            message,
        )
    }

    pub(crate) fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            code,
            message,
        )
    }

    pub(crate) fn rate_limited(retry_after_secs: u64) -> Self {
        Self::rate_limited_as(retry_after_secs, "Too many requests for this key")
    }

    /// A 429 whose message says which limit (`what`) was reached.
    pub(crate) fn rate_limited_as(retry_after_secs: u64, what: &str) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            format!("{what}; retry in {retry_after_secs} s."),
        );
        error.retry_after_secs = Some(retry_after_secs);
        error
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "storage_unavailable",
            message,
        );
        error.retry_after_secs = Some(1);
        error
    }

    /// The disk is full (`ENOSPC`/`EDQUOT`): nothing was stored, and the same request may be
    /// retried once space is freed (no restart needed). 503 like every storage fault, with
    /// its own code so clients and operators can tell it from a broken disk.
    pub(crate) fn storage_full(message: impl Into<String>) -> Self {
        let mut error = Self::unavailable(message);
        error.code = "storage_full";
        error.retry_after_secs = Some(STORAGE_FULL_RETRY_AFTER_SECS);
        error
    }

    /// Last resort for a panicked handler; the plan is that this never happens.
    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "Internal error.",
        )
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<engine::Error> for ApiError {
    fn from(error: engine::Error) -> Self {
        if error.is_user_error() {
            ApiError::unprocessable("invalid_memory_request", error.to_string())
        } else if let engine::Error::Embedder { .. } = error {
            // The embedder's own words (no paths, no keys): the operator needs them to fix
            // it, and the client needs to know nothing was stored.
            tracing::error!(%error, "embedder fault");
            let mut api = ApiError::unavailable(format!(
                "The embedder failed, so nothing was stored or searched: {error}"
            ));
            api.code = "embedder_unavailable";
            // A remote endpoint that answered, but not with embeddings, misbehaves rather
            // than being away: 502, as a proxy reports a bad upstream.
            if let engine::Error::Embedder { reason, .. } = &error
                && reason.starts_with(crate::embedder::remote::BAD_ANSWER)
            {
                api.status = StatusCode::BAD_GATEWAY;
                api.code = "embedder_bad_response";
                api.retry_after_secs = None;
            }
            api
        } else if let engine::Error::SegmentUnreadable { .. } = error {
            // A read of this vault's files failed (contained in the engine): this vault
            // only is unavailable, until the operator restores its disk and restarts.
            tracing::error!(%error, "vault unreadable");
            let mut api = ApiError::unavailable(
                "This vault's stored memories cannot be read (an I/O error on the server's disk); \
                 nothing was read or written. Other vaults are unaffected.",
            );
            api.code = "vault_unavailable";
            api
        } else if engine_out_of_space(&error) {
            tracing::warn!(%error, "disk full: write refused, nothing stored");
            ApiError::storage_full(
                "The disk holding the memory store is full; nothing was stored. Retry once space is freed.",
            )
        } else {
            // Storage faults are logged here, once, and hidden from the client: the message
            // may name paths on the server.
            tracing::error!(%error, "storage fault");
            ApiError::unavailable("Memory storage is unavailable; the write was not acknowledged.")
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Engine(inner) => inner.into(),
            Error::KeyNotFound { id } => ApiError::not_found(format!("No key with id {id}.")),
            Error::ActiveKeysMax { max } => ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "active_keys_max",
                format!(
                    "The account already holds {max} active keys, the most `[keys] active_max` \
                     allows; revoke one first."
                ),
            ),
            Error::Wal(inner) if inner.is_retryable() => {
                tracing::warn!(error = %inner, "disk full: key catalog change refused");
                ApiError::storage_full(
                    "The disk holding the key catalog is full; nothing was changed. Retry once space is freed.",
                )
            }
            Error::Decrypt { provider } => ApiError::unavailable(format!(
                "The stored {provider} provider key cannot be decrypted with this server's secret key."
            )),
            Error::Cluster(inner) => {
                tracing::error!(error = %inner, "cluster fault");
                ApiError::unavailable(
                    "The cluster's shared catalog (etcd) did not answer; a change may or may not have been made. Retry shortly.",
                )
            }
            other => {
                tracing::error!(error = %other, "service fault");
                ApiError::unavailable("The key catalog is unavailable.")
            }
        }
    }
}

/// A write refused because the disk is full, with nothing kept: the WAL's retryable
/// [`wal::WalError::NoSpace`], or an engine file write (a manifest) failing with `ENOSPC` or
/// `EDQUOT` before anything was renamed into place.
fn engine_out_of_space(error: &engine::Error) -> bool {
    match error {
        engine::Error::Wal(wal) => wal.is_retryable(),
        engine::Error::Io { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_faults_are_503_and_user_errors_4xx() {
        let fault = engine::Error::Io {
            path: "/data/vaults/x".into(),
            source: std::io::Error::other("disk on fire"),
        };
        let api: ApiError = fault.into();
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(api.retry_after_secs.is_some());
        assert!(
            !api.message.contains("/data"),
            "paths are not shown to clients"
        );
        let unreadable: ApiError = engine::Error::SegmentUnreadable {
            path: "/data/vaults/x/seg-1/vectors.bin".into(),
        }
        .into();
        assert_eq!(unreadable.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unreadable.code, "vault_unavailable");
        assert!(unreadable.retry_after_secs.is_some());
        assert!(!unreadable.message.contains("/data"));
        let user: ApiError = engine::Error::InvalidVaultId { id: "../x".into() }.into();
        assert!(user.status.is_client_error());
        let full: ApiError = engine::Error::Io {
            path: "/data/vaults/x/MANIFEST.tmp".into(),
            source: std::io::Error::from_raw_os_error(28),
        }
        .into();
        assert_eq!(
            (full.status, full.code, full.retry_after_secs),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_full",
                Some(STORAGE_FULL_RETRY_AFTER_SECS)
            )
        );
        let body = ApiError::invalid_key().body();
        assert_eq!(body["error"]["type"], "authentication_error");
        assert!(body["error"]["param"].is_null());
    }
}
