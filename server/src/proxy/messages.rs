//! `POST /v1/messages`: Anthropic Messages format in, Anthropic format out, memory added to
//! `system`, for clients that speak Anthropic natively (the Anthropic SDKs, Claude tools).
//!
//! `model` may be bare (`claude-haiku-4-5`, as those clients send it: the `anthropic`
//! provider) or prefixed (`anthropic/…`, `ollama/…`, any configured provider). To an
//! Anthropic-format provider the request is forwarded untouched (tools included) and its
//! errors come back unchanged; to an OpenAI-format provider it is translated both ways by
//! [`super::anthropic_to_openai`], errors included, so the client always sees Anthropic's format.

use std::sync::Arc;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::anthropic_to_openai;
use super::error::ProxyError;
use super::forward::{
    ExchangeDraft, begin, call, chat_messages, is_event_stream, model_field, ms, provider_key,
    retrieve_for, timing_headers, upstream_request, user_turn,
};
use super::inject::inject_anthropic;
use super::openai::take_messages;
use super::openai_to_anthropic::{AnthropicRelay, message_text};
use super::providers::ProviderKind;
use super::relay::{Answer, OnComplete, RelayBody};
use crate::AppState;
use crate::error::ApiError;
use crate::http::{Body, full};

/// Roles of the Messages API (`system` is a top-level field there).
const MESSAGE_ROLES: &[&str] = &["user", "assistant"];
/// The provider of a bare model name.
const DEFAULT_PROVIDER: &str = "anthropic";

/// The handler.
pub(crate) async fn handle(
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
    let key = provider_key(state, &request.auth, &request.parts.headers, provider)?;
    let mut messages = take_messages(&mut request.body, MESSAGE_ROLES)?;
    let parsed = chat_messages(state, &mut messages)?;
    let draft = ExchangeDraft::new(state, &request, &model, user_turn(&parsed));
    let retrieved = retrieve_for(state, &request.auth, &request.plan, parsed).await?;

    let body = &mut request.body;
    inject_anthropic(body, &retrieved.context);
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let translated = provider.kind == ProviderKind::Openai;
    let upstream_body = if translated {
        serde_json::to_vec(&anthropic_to_openai::to_chat_request(
            body, &messages, model_id,
        )?)
    } else {
        body.insert("model".into(), Value::String(model_id.to_owned()));
        body.insert("messages".into(), Value::Array(messages));
        serde_json::to_vec(&body)
    }
    .map_err(|e| {
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

    if status.is_success() && stream && is_event_stream(&response) {
        let provider_ms = ms(sent.elapsed());
        let on_complete: OnComplete = Box::new(move |answer: Answer| {
            draft.charge_answer(answer.bytes);
            draft.finish(answer.text)
        });
        let (upstream, idle) = (response.into_body(), state.proxy.client.timeout());
        let body: Body = if translated {
            let transform = anthropic_to_openai::OpenAiToAnthropic::default();
            RelayBody::new(upstream, transform, &provider.name, idle, on_complete)
                .map_err(|never| match never {})
                .boxed()
        } else {
            RelayBody::new(
                upstream,
                AnthropicRelay::default(),
                &provider.name,
                idle,
                on_complete,
            )
            .map_err(|never| match never {})
            .boxed()
        };
        let mut out = Response::new(body);
        let headers = out.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        timing_headers(headers, request.started, provider_ms, &retrieved);
        return Ok(out);
    }

    let mut content_type = response
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
        draft.charge_answer(bytes.len());
    }
    let bytes = match (translated, status.is_success()) {
        (false, true) => {
            let answer = if draft.stores_anything() {
                message_text(&bytes)
            } else {
                None
            };
            // Released only once the exchange is durable (see `relay.rs`).
            let _ = draft.finish_whole(answer.unwrap_or_default()).await;
            bytes
        }
        (false, false) => bytes,
        (true, true) => {
            let (bytes, answer) = anthropic_to_openai::to_message(&bytes).map_err(|reason| {
                ProxyError::BadUpstreamResponse {
                    provider: provider.name.clone(),
                    reason,
                }
            })?;
            let _ = draft.finish_whole(answer).await;
            content_type = HeaderValue::from_static("application/json");
            bytes
        }
        (true, false) => {
            content_type = HeaderValue::from_static("application/json");
            anthropic_to_openai::error_body(status.as_u16(), &bytes)
        }
    };
    let mut out = Response::new(full(bytes));
    *out.status_mut() = status;
    out.headers_mut().insert(CONTENT_TYPE, content_type);
    timing_headers(out.headers_mut(), request.started, provider_ms, &retrieved);
    Ok(out)
}
