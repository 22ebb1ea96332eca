//! `POST /v1/messages`: Anthropic Messages format in, Anthropic format out, memory added to
//! `system`, for clients that speak Anthropic natively (the Anthropic SDKs, Claude tools).
//!
//! `model` may be bare (`claude-haiku-4-5`, as those clients send it: the `anthropic`
//! provider) or prefixed with an Anthropic-format provider (`anthropic/…`, or a configured
//! `kind = "anthropic"` one). The request is otherwise forwarded untouched (tools included);
//! provider errors come back unchanged, in Anthropic's own error shape.

use std::sync::Arc;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::anthropic::{AnthropicRelay, message_text};
use super::error::ProxyError;
use super::forward::{
    ExchangeDraft, begin, call, chat_messages, model_field, ms, provider_key, retrieve_for,
    timing_headers, upstream_request, user_turn,
};
use super::inject::inject_anthropic;
use super::openai::take_messages;
use super::providers::ProviderKind;
use super::relay::{OnComplete, RelayBody};
use crate::AppState;
use crate::error::ApiError;
use crate::http::{Body, full};

/// Roles of the Messages API (`system` is a top-level field there).
const MESSAGE_ROLES: &[&str] = &["user", "assistant"];
/// The provider of a bare model name.
const DEFAULT_PROVIDER: &str = "anthropic";

/// The handler.
pub async fn handle(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let mut request = begin(state, req).await?;
    let model = model_field(&request.body)?;
    let (provider, model_id) =
        if model.contains('/') {
            state.proxy.providers.resolve(&model)?
        } else {
            let provider = state.proxy.providers.get(DEFAULT_PROVIDER).ok_or_else(|| {
                ProxyError::BadModel {
                    model: model.clone(),
                }
            })?;
            (provider, model.as_str())
        };
    if provider.kind != ProviderKind::Anthropic {
        return Err(ProxyError::invalid_param(
            format!(
                "provider {:?} speaks the OpenAI format; POST /v1/messages forwards to Anthropic-format providers (use /v1/chat/completions)",
                provider.name
            ),
            "model",
        )
        .into());
    }
    let key = provider_key(state, &request.auth, &request.parts.headers, provider)?;
    let mut messages = take_messages(&mut request.body, MESSAGE_ROLES)?;
    let parsed = chat_messages(state, &mut messages)?;
    let draft = ExchangeDraft::new(state, &request, &model, user_turn(&parsed));
    let retrieved = retrieve_for(state, &request.auth, &request.plan, parsed).await?;

    let body = &mut request.body;
    inject_anthropic(body, &retrieved.context);
    body.insert("model".into(), Value::String(model_id.to_owned()));
    body.insert("messages".into(), Value::Array(messages));
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let upstream_body = serde_json::to_vec(&body).map_err(|e| {
        ApiError::from(ProxyError::invalid(format!(
            "request could not be encoded: {e}"
        )))
    })?;
    let upstream = upstream_request(
        provider,
        key.as_deref(),
        &request.parts.headers,
        upstream_body,
    )?;
    let (response, sent, deadline) = call(state, provider, upstream).await?;
    let status = response.status();

    if status.is_success() && stream {
        let provider_ms = ms(sent.elapsed());
        let on_complete: OnComplete = Box::new(move |answer| draft.finish(answer));
        let relay = RelayBody::new(
            response.into_body(),
            AnthropicRelay::default(),
            &provider.name,
            state.proxy.client.timeout(),
            on_complete,
        );
        let mut out = Response::new(relay.map_err(|never| match never {}).boxed());
        let headers = out.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        timing_headers(headers, request.started, provider_ms, &retrieved);
        return Ok(out);
    }

    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let bytes = state
        .proxy
        .client
        .read_body(&provider.name, response.into_body(), deadline)
        .await?;
    let provider_ms = ms(sent.elapsed());
    if status.is_success() {
        let answer = if draft.stores_anything() {
            message_text(&bytes)
        } else {
            None
        };
        draft.finish(answer.unwrap_or_default());
    }
    let mut out = Response::new(full(bytes));
    *out.status_mut() = status;
    out.headers_mut().insert(CONTENT_TYPE, content_type);
    timing_headers(out.headers_mut(), request.started, provider_ms, &retrieved);
    Ok(out)
}
