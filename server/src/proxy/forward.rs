//! The steps both proxy endpoints share: reading the request and memory plan, retrieving,
//! choosing the provider key, building the upstream request, the timing headers, and
//! queueing the exchange once the answer is complete (durably, before the client gets the
//! answer's end).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::error::ProxyError;
use super::options::{self, MemoryPlan};
use super::outbox::PendingExchange;
use super::providers::{Provider, ProviderKind};
use super::relay::Durable;
use super::state::schedule_ingest;
use crate::AppState;
use crate::api::prepare::{PrepareOptions, retrieve};
use crate::auth::{AuthContext, authenticate};
use crate::error::ApiError;
use crate::http::{blocking, header, parse_json, read_body};
use crate::request::{ChatMessage, MODEL_CHARS_MAX, check_model, parse_messages};

/// Sent to providers; some CDN-fronted endpoints refuse requests without a user agent.
const USER_AGENT: &str = concat!("memoryrouter/", env!("CARGO_PKG_VERSION"));
/// Client headers forwarded to providers as they are (OpenRouter's attribution headers,
/// Anthropic's beta switches). Nothing else from the client reaches the provider.
const FORWARDED_HEADERS: &[&str] = &[
    "http-referer",
    "x-title",
    "anthropic-beta",
    "openai-organization",
    "openai-project",
];

impl From<ProxyError> for ApiError {
    fn from(error: ProxyError) -> Self {
        let status =
            http::StatusCode::from_u16(error.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
        let mut api = ApiError::new(status, error.error_type(), error.code(), error.to_string());
        if let Some(param) = error.param() {
            api = api.with_param(param);
        }
        if matches!(error, ProxyError::Outbox { .. }) {
            api.retry_after_secs = Some(1);
        }
        api
    }
}

/// A proxy request after authentication and option parsing.
pub(crate) struct ProxyRequest {
    pub started: Instant,
    pub parts: Parts,
    pub auth: AuthContext,
    pub body: Map<String, Value>,
    pub plan: MemoryPlan,
    /// The answer's tokens charged to the key's proxy budget before the call (its declared
    /// maximum); a longer answer is charged the rest ([`ExchangeDraft::charge_answer`]).
    pub answer_tokens_charged: u64,
}

/// Authenticates, reads the JSON object body and resolves the memory plan (removing
/// MemoryRouter's own fields from the body).
pub(crate) async fn begin(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<ProxyRequest, ApiError> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let auth = authenticate(state, &parts.headers).await?;
    let bytes = read_body(state, body, &parts.headers).await?;
    let mut body: Map<String, Value> = parse_json(&bytes)?;
    let answer_tokens_charged = spend_proxy_budget(state, &auth, bytes.len(), &body)?;
    let plan = options::resolve(&mut body, parts.uri.query(), &parts.headers, auth.mode)?;
    Ok(ProxyRequest {
        started,
        parts,
        auth,
        body,
        plan,
        answer_tokens_charged,
    })
}

/// The per-key proxy budget (`[limits] proxy_requests_per_minute`, `proxy_tokens_per_minute`):
/// a leaked key cannot spend the account's provider keys faster than this. Tokens are
/// estimated before the call as the body's bytes / 4 plus the answer's declared maximum
/// (`max_tokens`, `max_completion_tokens`), which is returned; once the answer is known, what
/// it has beyond that maximum (its bytes / 4) is charged too.
fn spend_proxy_budget(
    state: &AppState,
    auth: &AuthContext,
    body_bytes: usize,
    body: &Map<String, Value>,
) -> Result<u64, ApiError> {
    let now = Instant::now();
    let limits = &state.limiter;
    limits
        .proxy_requests
        .check(&auth.key_id, now)
        .map_err(|secs| {
            ApiError::rate_limited_as(
                secs,
                "Too many proxied calls for this key (`proxy_requests_per_minute`)",
            )
        })?;
    let answer_max = ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|field| body.get(*field).and_then(Value::as_u64))
        .max()
        .unwrap_or(0);
    let tokens = (body_bytes as u64).div_ceil(4).saturating_add(answer_max);
    limits
        .proxy_tokens
        .take(&auth.key_id, tokens, now)
        .map_err(|secs| {
            ApiError::rate_limited_as(
                secs,
                "This key's proxy token budget is spent (`proxy_tokens_per_minute`)",
            )
        })?;
    Ok(answer_max)
}

/// Parses `messages` for the memory paths and strips the `"memory"` flags from the raw
/// messages that will be forwarded.
pub(crate) fn chat_messages(
    state: &AppState,
    messages: &mut Vec<Value>,
) -> Result<Vec<ChatMessage>, ApiError> {
    let value = Value::Array(std::mem::take(messages));
    let parsed = parse_messages(&value, &state.config.limits);
    if let Value::Array(raw) = value {
        *messages = raw;
    }
    let parsed = parsed?;
    super::openai::strip_memory_flags(messages);
    Ok(parsed)
}

/// What retrieval produced, for injection and the response headers.
#[derive(Default)]
pub(crate) struct Retrieved {
    pub context: String,
    pub memories: usize,
    pub tokens: usize,
    pub latency_ms: f64,
    /// Retrieved lexical-only because the embedder failed (`X-MemoryRouter-Degraded`).
    pub degraded: bool,
}

/// Retrieves memories for `messages` unless the plan says not to.
pub(crate) async fn retrieve_for(
    state: &Arc<AppState>,
    auth: &AuthContext,
    plan: &MemoryPlan,
    messages: Vec<ChatMessage>,
) -> Result<Retrieved, ApiError> {
    if !plan.mode.retrieves() {
        return Ok(Retrieved::default());
    }
    let started = Instant::now();
    let opts = PrepareOptions {
        context_limit: plan.context_limit,
        session_id: plan.session_id.clone(),
        session_only: plan.session_scope,
        ..PrepareOptions::default()
    };
    let (st, auth) = (state.clone(), auth.clone());
    let prepared = blocking(move || retrieve(&st, &auth, &messages, &opts)).await?;
    Ok(Retrieved {
        memories: prepared.memories.len(),
        tokens: prepared.tokens,
        context: prepared.context,
        latency_ms: ms(started.elapsed()),
        degraded: prepared.degraded,
    })
}

/// The provider key: `X-Provider-Key` > the bearer token sent with `X-Memory-Key` (or, for
/// Anthropic clients, `x-api-key` with `X-Memory-Key`) > the account's stored key.
pub(crate) fn provider_key(
    state: &AppState,
    auth: &AuthContext,
    headers: &HeaderMap,
    provider: &Provider,
) -> Result<Option<String>, ApiError> {
    if let Some(key) = header(headers, "x-provider-key").filter(|k| !is_memory_key(k)) {
        return Ok(Some(key.to_owned()));
    }
    if let Some(key) = auth.provider_key.as_deref().filter(|k| !is_memory_key(k)) {
        return Ok(Some(key.to_owned()));
    }
    if header(headers, "x-memory-key").is_some()
        && let Some(key) = header(headers, "x-api-key").filter(|k| !is_memory_key(k))
    {
        return Ok(Some(key.to_owned()));
    }
    // The stored entry's base_url is deliberately not used: hosts come only from the config.
    if let Some(stored) = state
        .catalog
        .provider_key(&auth.account_id, &provider.name)?
    {
        return Ok(Some(stored.api_key));
    }
    if provider.key_required {
        return Err(ProxyError::MissingProviderKey {
            provider: provider.name.clone(),
        }
        .into());
    }
    Ok(None)
}

/// Whether a BYOK candidate is in fact a Memory Key (with or without a mode suffix). Clients
/// that put the Memory Key both in their API-key setting and in `X-Memory-Key` send it
/// twice; it must never be taken for a provider key and sent to a provider.
fn is_memory_key(candidate: &str) -> bool {
    let key = candidate.split_once(':').map_or(candidate, |(key, _)| key);
    crate::secret::looks_like_key(key.trim())
}

/// Builds the upstream POST for `provider` with `body`.
pub(crate) fn upstream_request(
    provider: &Provider,
    key: Option<&str>,
    client_headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<Request<Full<Bytes>>, ApiError> {
    let mut builder = Request::post(provider.chat_url()?)
        .header(CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, USER_AGENT);
    match provider.kind {
        ProviderKind::Openai => {
            if let Some(key) = key {
                builder = builder.header(AUTHORIZATION, bearer_value(key, &provider.name)?);
            }
        }
        ProviderKind::Anthropic => {
            if let Some(key) = key {
                builder = builder.header("x-api-key", secret_value(key, &provider.name)?);
            }
            let version = header(client_headers, "anthropic-version")
                .unwrap_or(super::openai_to_anthropic::ANTHROPIC_VERSION);
            builder = builder.header("anthropic-version", version);
        }
    }
    for name in FORWARDED_HEADERS {
        if let Some(value) = client_headers.get(*name) {
            builder = builder.header(*name, value.clone());
        }
    }
    builder.body(Full::new(Bytes::from(body))).map_err(|e| {
        ApiError::from(ProxyError::invalid(format!(
            "the upstream request could not be built: {e}"
        )))
    })
}

fn secret_value(key: &str, provider: &str) -> Result<HeaderValue, ApiError> {
    let mut value = HeaderValue::from_str(key).map_err(|_| {
        ApiError::from(ProxyError::invalid(format!(
            "the {provider} provider key contains characters not allowed in a header"
        )))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn bearer_value(key: &str, provider: &str) -> Result<HeaderValue, ApiError> {
    secret_value(&format!("Bearer {key}"), provider)
}

/// Calls the provider and returns its response head and how long that took.
pub(crate) async fn call(
    state: &AppState,
    provider: &Provider,
    request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Instant, tokio::time::Instant), ApiError> {
    let deadline = tokio::time::Instant::now() + state.proxy.client.timeout();
    let sent = Instant::now();
    let response = state
        .proxy
        .client
        .send(&provider.name, request, deadline)
        .await?;
    Ok((response, sent, deadline))
}

/// The `X-Memory-*`, `X-MR-*` and `X-Provider-Response-Ms` headers (milliseconds with two
/// decimals):
///
/// | header | value |
/// |---|---|
/// | `X-Memory-Retrieved`, `X-Memory-Chunks-Retrieved` | memory records put in the context |
/// | `X-Memory-Tokens-Injected` | estimated tokens of the injected context |
/// | `X-Memory-Latency-Ms` | retrieval time |
/// | `X-Provider-Response-Ms` | provider time: to the whole body, or to the response head when streaming |
/// | `X-MR-Processing-Ms` | request received → response head ready, provider time included |
/// | `X-MR-Overhead-Ms` | processing minus provider time: what MemoryRouter added |
/// | `X-MemoryRouter-Degraded` | `embedder_unavailable` when retrieval ran by words alone |
pub(crate) fn timing_headers(
    headers: &mut HeaderMap,
    started: Instant,
    provider_ms: f64,
    retrieved: &Retrieved,
) {
    let processing = ms(started.elapsed());
    let values = [
        ("x-memory-retrieved", retrieved.memories.to_string()),
        ("x-memory-chunks-retrieved", retrieved.memories.to_string()),
        ("x-memory-tokens-injected", retrieved.tokens.to_string()),
        (
            "x-memory-latency-ms",
            format!("{:.2}", retrieved.latency_ms),
        ),
        ("x-provider-response-ms", format!("{provider_ms:.2}")),
        ("x-mr-processing-ms", format!("{processing:.2}")),
        (
            "x-mr-overhead-ms",
            format!("{:.2}", (processing - provider_ms).max(0.0)),
        ),
    ];
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    crate::api::prepare::mark_degraded(headers, retrieved.degraded);
}

/// Milliseconds as a float.
pub(crate) fn ms(elapsed: std::time::Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

/// What is needed to store the exchange once the answer is known.
pub(crate) struct ExchangeDraft {
    pub state: Arc<AppState>,
    pub key_id: String,
    pub account_id: String,
    pub session_id: String,
    pub model: String,
    /// The user's turn, if it is to be stored.
    pub user_turn: Option<String>,
    pub store_response: bool,
    /// See [`ProxyRequest::answer_tokens_charged`].
    pub answer_tokens_charged: u64,
}

impl ExchangeDraft {
    pub(crate) fn new(
        state: &Arc<AppState>,
        req: &ProxyRequest,
        model: &str,
        user_turn: Option<String>,
    ) -> Self {
        ExchangeDraft {
            state: state.clone(),
            key_id: req.auth.key_id.clone(),
            account_id: req.auth.account_id.clone(),
            session_id: req.plan.session_id.clone(),
            model: model.to_owned(),
            user_turn: user_turn.filter(|_| req.plan.store_input),
            store_response: req.plan.store_response,
            answer_tokens_charged: req.answer_tokens_charged,
        }
    }

    /// Charges the key's proxy token budget for an answer of `answer_bytes` (estimated at
    /// 4 bytes a token) beyond what was charged for it before the call.
    pub(crate) fn charge_answer(&self, answer_bytes: usize) {
        let tokens = (answer_bytes as u64).div_ceil(4);
        let extra = tokens.saturating_sub(self.answer_tokens_charged);
        self.state
            .limiter
            .proxy_tokens
            .charge(&self.key_id, extra, Instant::now());
    }

    /// Whether anything would be stored at all (saves the work of assembling the answer).
    pub(crate) fn stores_anything(&self) -> bool {
        self.user_turn.is_some() || self.store_response
    }

    /// Queues the exchange with the assistant's `answer`. The receiver fires once it is in
    /// the durable outbox: the caller holds the answer's last frame (or whole body) until
    /// then, so an answer a client has read fully is never lost to a crash.
    /// [`finish`](Self::finish) for an answer read whole (not streamed): stores at most
    /// what a stream would keep ([`super::answer::bounded`]); a streamed answer is bounded
    /// as it streams.
    pub(crate) fn finish_whole(self, answer: String) -> Durable {
        self.finish(super::answer::bounded(answer))
    }

    pub(crate) fn finish(self, answer: String) -> Durable {
        let mut turns = Vec::with_capacity(2);
        if let Some(user) = self.user_turn {
            turns.push(("user".to_owned(), user));
        }
        if self.store_response && !answer.trim().is_empty() {
            turns.push(("assistant".to_owned(), answer));
        }
        let exchange = PendingExchange {
            key_id: self.key_id,
            account_id: self.account_id,
            session_id: self.session_id,
            model: Some(self.model),
            turns,
            created_at_ms: crate::time::now_ms(),
        };
        schedule_ingest(self.state, exchange)
    }
}

/// The user turn to store: the last user message, unless it was sent with `"memory": false`.
pub(crate) fn user_turn(messages: &[ChatMessage]) -> Option<String> {
    let last = messages
        .iter()
        .rev()
        .find(|m| m.role == engine::Role::User)?;
    (last.remember && !last.text.trim().is_empty()).then(|| last.text.clone())
}

/// The request body's `model` string. It is stored with the exchange, so it is held to the
/// bound of a stored memory's model here, before the provider is called.
pub(crate) fn model_field(body: &Map<String, Value>) -> Result<String, ApiError> {
    match body.get("model") {
        Some(Value::String(model)) => {
            check_model(model).map_err(|_| {
                ProxyError::invalid_param(
                    format!("model is longer than {MODEL_CHARS_MAX} characters"),
                    "model",
                )
            })?;
            Ok(model.clone())
        }
        Some(_) => Err(ProxyError::invalid_param("model must be a string", "model").into()),
        None => {
            Err(ProxyError::invalid_param("model is required (\"provider/model\")", "model").into())
        }
    }
}

/// Whether the provider answered with an SSE stream.
pub(crate) fn is_event_stream<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sse_answers_take_the_stream_relay() {
        let with = |ct: &str| {
            Response::builder()
                .header(CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        assert!(is_event_stream(&with("text/event-stream")));
        assert!(is_event_stream(&with("Text/Event-Stream; charset=utf-8")));
        assert!(!is_event_stream(&with("application/json")));
        assert!(!is_event_stream(&Response::new(())));
    }
}
