//! What can go wrong between MemoryRouter and a provider, before the provider answered.
//!
//! A provider that *did* answer with an error status is not a `ProxyError`: its status and
//! body are passed through (see [`crate::proxy::openai::upstream_error_body`]). These variants are the
//! failures MemoryRouter itself reports; the server's error type turns each into its status
//! and OpenAI-shaped body through [`ProxyError::status`], [`ProxyError::error_type`] and
//! [`ProxyError::code`].

/// A proxy-mode failure that MemoryRouter answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `model` is not `provider/model`.
    #[error("model must be \"provider/model\" (e.g. \"openai/gpt-4o-mini\"), got {model:?}")]
    BadModel { model: String },
    /// The provider prefix names no built-in or configured provider.
    #[error("unknown provider {provider:?}; configured providers: {known}")]
    UnknownProvider { provider: String, known: String },
    /// The request body is not something the proxy can forward.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// Neither a stored provider key nor a BYOK header supplied a key the provider needs.
    #[error(
        "no API key for provider {provider:?}: store one with PUT /v1/provider-keys/{provider}, \
         or send it in the X-Provider-Key header (or as the bearer token with X-Memory-Key)"
    )]
    MissingProviderKey { provider: String },
    /// The provider could not be connected to, or dropped the connection.
    #[error("provider {provider:?} could not be reached: {reason}")]
    Unreachable { provider: String, reason: String },
    /// The provider did not answer within the configured timeout.
    #[error("provider {provider:?} did not answer within {timeout_ms} ms")]
    Timeout { provider: String, timeout_ms: u64 },
    /// The provider answered 2xx with a body the translation could not read.
    #[error("provider {provider:?} sent a response that could not be read: {reason}")]
    BadUpstreamResponse { provider: String, reason: String },
    /// A `[providers.NAME]` table in the config is invalid.
    #[error("invalid config [providers.{name}]: {reason}")]
    Config { name: String, reason: String },
    /// The durable queue of exchanges awaiting ingest failed (disk full, I/O error).
    #[error("proxy outbox: {reason}")]
    Outbox { reason: String },
    /// The TLS client could not be built (no usable root store or protocol versions).
    #[error("could not build the TLS client: {reason}")]
    Tls { reason: String },
}

impl ProxyError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ProxyError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub(crate) fn invalid_param(message: impl Into<String>, param: &'static str) -> Self {
        ProxyError::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    /// The HTTP status MemoryRouter answers with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            ProxyError::BadModel { .. }
            | ProxyError::UnknownProvider { .. }
            | ProxyError::InvalidRequest { .. }
            | ProxyError::MissingProviderKey { .. } => 400,
            ProxyError::Unreachable { .. } | ProxyError::BadUpstreamResponse { .. } => 502,
            ProxyError::Timeout { .. } => 504,
            ProxyError::Outbox { .. } => 503,
            ProxyError::Config { .. } | ProxyError::Tls { .. } => 500,
        }
    }

    /// The OpenAI error `type` field.
    pub(crate) fn error_type(&self) -> &'static str {
        match self.status() {
            400 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The OpenAI error `code` field.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ProxyError::BadModel { .. } => "invalid_model",
            ProxyError::UnknownProvider { .. } => "unknown_provider",
            ProxyError::InvalidRequest { .. } => "invalid_request",
            ProxyError::MissingProviderKey { .. } => "missing_provider_key",
            ProxyError::Unreachable { .. } => "provider_unreachable",
            ProxyError::Timeout { .. } => "provider_timeout",
            ProxyError::BadUpstreamResponse { .. } => "bad_provider_response",
            ProxyError::Config { .. } => "invalid_config",
            ProxyError::Tls { .. } => "tls_error",
            ProxyError::Outbox { .. } => "storage_unavailable",
        }
    }

    /// The OpenAI error `param` field.
    pub(crate) fn param(&self) -> Option<&'static str> {
        match self {
            ProxyError::BadModel { .. } | ProxyError::UnknownProvider { .. } => Some("model"),
            ProxyError::InvalidRequest { param, .. } => *param,
            _ => None,
        }
    }

    /// `{"error":{"message","type","param","code"}}` for this error (what the `ApiError`
    /// it becomes answers; kept for the test of that shape).
    #[cfg(test)]
    fn to_body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.to_string(),
            "type": self.error_type(),
            "param": self.param(),
            "code": self.code(),
        }})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_api_contract() {
        let unreachable = ProxyError::Unreachable {
            provider: "openai".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(unreachable.status(), 502);
        let timeout = ProxyError::Timeout {
            provider: "openai".into(),
            timeout_ms: 10,
        };
        assert_eq!(timeout.status(), 504);
        let missing = ProxyError::MissingProviderKey {
            provider: "anthropic".into(),
        };
        assert_eq!(missing.status(), 400);
        let text = missing.to_string();
        assert!(
            text.contains("anthropic") && text.contains("X-Provider-Key"),
            "{text}"
        );
        let body = missing.to_body();
        assert_eq!(body["error"]["code"], "missing_provider_key");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["param"].is_null());
    }
}
