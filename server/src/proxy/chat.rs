//! `POST /v1/chat/completions`: OpenAI format in, OpenAI format out, memory added; and
//! `GET /v1/models`.

use std::sync::Arc;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::error::ProxyError;
use super::forward::{
    ExchangeDraft, begin, call, chat_messages, is_event_stream, model_field, ms, provider_key,
    retrieve_for, timing_headers, upstream_request, user_turn,
};
use super::inject::inject_openai;
use super::openai::{OpenAiRelay, chat_roles, completion_text, take_messages, upstream_error_body};
use super::openai_to_anthropic::{AnthropicToOpenAi, to_chat_completion, to_messages_request};
use super::providers::ProviderKind;
use super::relay::{Answer, OnComplete, RelayBody};
use crate::AppState;
use crate::auth::authenticate;
use crate::error::ApiError;
use crate::http::{Body, full, json_response};

/// The handler.
pub(crate) async fn handle(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let mut request = begin(state, req).await?;
    let model = model_field(&request.body)?;
    let (provider, model_id) = state.proxy.providers.resolve(&model)?;
    let key = provider_key(state, &request.auth, &request.parts.headers, provider)?;
    let mut messages = take_messages(&mut request.body, chat_roles())?;
    let parsed = chat_messages(state, &mut messages)?;
    let draft = ExchangeDraft::new(state, &request, &model, user_turn(&parsed));
    let retrieved = retrieve_for(state, &request.auth, &request.plan, parsed).await?;
    inject_openai(&mut messages, &retrieved.context);

    let body = &mut request.body;
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let upstream_body = match provider.kind {
        ProviderKind::Openai => {
            body.insert("model".into(), Value::String(model_id.to_owned()));
            body.insert("messages".into(), Value::Array(messages));
            serde_json::to_vec(&body)
        }
        ProviderKind::Anthropic => {
            serde_json::to_vec(&to_messages_request(body, &messages, model_id)?)
        }
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

    if !status.is_success() {
        let bytes = state
            .proxy
            .client
            .read_body(&provider.name, response.into_body(), deadline)
            .await?;
        let provider_ms = ms(sent.elapsed());
        let mut out = Response::new(full(upstream_error_body(status.as_u16(), &bytes)));
        *out.status_mut() = status;
        out.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        timing_headers(out.headers_mut(), request.started, provider_ms, &retrieved);
        return Ok(out);
    }

    // A provider that ignores `stream` answers JSON: relay that as a whole answer rather
    // than feed it through the SSE relay.
    if stream && is_event_stream(&response) {
        let provider_ms = ms(sent.elapsed());
        let on_complete: OnComplete = Box::new(move |answer: Answer| {
            draft.charge_answer(answer.bytes);
            draft.finish(answer.text)
        });
        let idle = state.proxy.client.timeout();
        let upstream = response.into_body();
        let body: Body = match provider.kind {
            ProviderKind::Openai => RelayBody::new(
                upstream,
                OpenAiRelay::default(),
                &provider.name,
                idle,
                on_complete,
            )
            .map_err(|never| match never {})
            .boxed(),
            ProviderKind::Anthropic => RelayBody::new(
                upstream,
                AnthropicToOpenAi::new(include_usage),
                &provider.name,
                idle,
                on_complete,
            )
            .map_err(|never| match never {})
            .boxed(),
        };
        let mut out = Response::new(body);
        let headers = out.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Reverse proxies in front of MemoryRouter must not buffer the stream either.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        timing_headers(headers, request.started, provider_ms, &retrieved);
        return Ok(out);
    }

    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let bytes = state
        .proxy
        .client
        .read_body(&provider.name, response.into_body(), deadline)
        .await?;
    let provider_ms = ms(sent.elapsed());
    draft.charge_answer(bytes.len());
    let (bytes, answer, content_type) = match provider.kind {
        ProviderKind::Openai => {
            let answer = if draft.stores_anything() {
                completion_text(&bytes)
            } else {
                None
            };
            (
                bytes,
                answer,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            )
        }
        ProviderKind::Anthropic => {
            let (bytes, answer) =
                to_chat_completion(&bytes).map_err(|reason| ProxyError::BadUpstreamResponse {
                    provider: provider.name.clone(),
                    reason,
                })?;
            (
                bytes,
                Some(answer),
                HeaderValue::from_static("application/json"),
            )
        }
    };
    // The body goes out only once the exchange is in the durable outbox (see `relay.rs`).
    let _ = draft.finish_whole(answer.unwrap_or_default()).await;
    let mut out = Response::new(full(bytes));
    out.headers_mut().insert(CONTENT_TYPE, content_type);
    timing_headers(out.headers_mut(), request.started, provider_ms, &retrieved);
    Ok(out)
}

/// `GET /v1/models`: the configured providers' models, prefixed, in the OpenAI list shape.
pub(crate) async fn models(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    authenticate(state, req.headers()).await?;
    let created_s = u64::try_from(crate::time::now_ms() / 1000).unwrap_or(0);
    Ok(json_response(
        StatusCode::OK,
        &state.proxy.providers.models_list(created_s),
    ))
}
