//! OpenAI client → Anthropic provider: `POST /v1/chat/completions` with an
//! Anthropic-format model (`anthropic/…`). The OpenAI Chat Completions request is
//! translated into an Anthropic Messages request ([`to_messages_request`]), and the answer
//! back into OpenAI's format: a whole `message` into a `chat.completion`
//! ([`to_chat_completion`]), a Messages event stream into `chat.completion.chunk` events
//! ([`AnthropicToOpenAi`], named, like the answer, in the other direction). The reverse
//! translation is [`super::anthropic_to_openai`].
//!
//! Long (~670 lines, 200 of them tests): the request, answer and stream translations
//! are one mapping table and read best side by side.
//!
//! Also here, because they read the same Messages responses: what `/v1/messages` uses when
//! it forwards to an Anthropic-format provider untranslated ([`message_text`],
//! [`AnthropicRelay`]), and the [`ANTHROPIC_VERSION`] header every Anthropic request gets.
//!
//! Translated: system/developer messages (joined into `system`), user/assistant messages
//! with string or text/image content parts, `max_tokens`/`max_completion_tokens` (default
//! [`MAX_TOKENS_DEFAULT`]), `temperature` (clamped to Anthropic's 0–1), `top_p`, `stop`,
//! `user`, `stream`, `stream_options.include_usage`; stop reasons, usage, and the streaming
//! events. Tool calling is not translated: `tools`, `functions` and `tool` messages are
//! refused with 400 rather than silently dropped, as is `n` > 1.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::ProxyError;
use super::openai::content_text;
use super::relay::{Answer, StreamTransform};
use super::sse::{DONE_EVENT, SseEvent, SseParser, data_event, named_event};

/// `max_tokens` is required by Anthropic and optional in OpenAI's format.
pub(crate) const MAX_TOKENS_DEFAULT: u64 = 4096;
/// The Messages API version sent when the client names none.
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Builds a Messages request from an OpenAI request `body` (without `messages`) and its
/// (already memory-injected) `messages`, for upstream model id `model`.
pub(crate) fn to_messages_request(
    body: &Map<String, Value>,
    messages: &[Value],
    model: &str,
) -> Result<Value, ProxyError> {
    for field in ["tools", "functions", "tool_choice", "function_call"] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ProxyError::invalid_param(
                format!(
                    "{field} is not translated for anthropic/ models; call POST /v1/messages for tool use"
                ),
                "tools",
            ));
        }
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(ProxyError::invalid_param(
            "n > 1 is not supported by anthropic/ models",
            "n",
        ));
    }
    let mut system = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(content_text(content)),
            "user" | "assistant" => {
                if content.is_null() {
                    continue;
                }
                out.push(json!({"role": role, "content": content_blocks(content, i)?}));
            }
            _ => {
                return Err(ProxyError::invalid_param(
                    format!(
                        "messages[{i}]: role {role:?} (tool results) is not translated for anthropic/ models"
                    ),
                    "messages",
                ));
            }
        }
    }
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(MAX_TOKENS_DEFAULT);
    let mut request = Map::new();
    request.insert("model".into(), Value::String(model.to_owned()));
    request.insert("max_tokens".into(), max_tokens.into());
    let system: Vec<String> = system
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .collect();
    if !system.is_empty() {
        request.insert("system".into(), Value::String(system.join("\n\n")));
    }
    request.insert("messages".into(), Value::Array(out));
    if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
        request.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = body.get("top_p").filter(|v| v.is_number()) {
        request.insert("top_p".into(), p.clone());
    }
    match body.get("stop") {
        Some(Value::String(s)) => {
            request.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            request.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        request.insert("metadata".into(), json!({"user_id": user}));
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        request.insert("stream".into(), Value::Bool(true));
    }
    Ok(Value::Object(request))
}

/// OpenAI content (string or parts) → Anthropic content (string or blocks).
fn content_blocks(content: &Value, i: usize) -> Result<Value, ProxyError> {
    let Value::Array(parts) = content else {
        return Ok(content.clone());
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => blocks.push(json!({"type": "text", "text": part.get("text").and_then(Value::as_str).unwrap_or("")})),
            Some("image_url") => {
                let url = part.pointer("/image_url/url").and_then(Value::as_str).unwrap_or("");
                let source = match url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) {
                    Some((media_type, data)) => json!({"type": "base64", "media_type": media_type, "data": data}),
                    None => json!({"type": "url", "url": url}),
                };
                blocks.push(json!({"type": "image", "source": source}));
            }
            other => {
                return Err(ProxyError::invalid_param(
                    format!("messages[{i}]: content part type {other:?} is not translated for anthropic/ models"),
                    "messages",
                ));
            }
        }
    }
    Ok(Value::Array(blocks))
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub(crate) fn finish_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    Some(match stop_reason? {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop", // end_turn, stop_sequence, pause_turn
    })
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl Usage {
    fn prompt_tokens(&self) -> u64 {
        // Saturating: the counts come from the provider, and a bogus one must not panic.
        self.input_tokens
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
    }
}

#[derive(Deserialize)]
struct MessageResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Value>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Usage,
}

/// The text blocks of a Messages response, joined.
pub(crate) fn message_text(body: &[u8]) -> Option<String> {
    let message: MessageResponse = serde_json::from_slice(body).ok()?;
    Some(blocks_text(&message.content))
}

fn blocks_text(blocks: &[Value]) -> String {
    blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect()
}

/// A Messages response → a `chat.completion` body, plus the answer text.
pub(crate) fn to_chat_completion(body: &[u8]) -> Result<(Bytes, String), String> {
    let message: MessageResponse =
        serde_json::from_slice(body).map_err(|e| format!("not a Messages response: {e}"))?;
    let text = blocks_text(&message.content);
    let prompt = message.usage.prompt_tokens();
    let completion = json!({
        "id": message.id,
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": message.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish_reason(message.stop_reason.as_deref()).unwrap_or("stop"),
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": message.usage.output_tokens,
            "total_tokens": prompt.saturating_add(message.usage.output_tokens),
        },
    });
    Ok((Bytes::from(completion.to_string()), text))
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Translates a Messages event stream into `chat.completion.chunk` events.
#[derive(Debug, Default)]
pub(crate) struct AnthropicToOpenAi {
    parser: SseParser,
    events: Vec<SseEvent>,
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// The answer to store (bounded: [`super::answer`]).
    text: super::answer::AnswerText,
    saw_stop: bool,
    saw_error: bool,
}

impl AnthropicToOpenAi {
    /// `include_usage` mirrors the request's `stream_options.include_usage`.
    pub(crate) fn new(include_usage: bool) -> Self {
        AnthropicToOpenAi {
            include_usage,
            created: unix_seconds(),
            ..Default::default()
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        data_event(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    }

    fn translate(&mut self, out: &mut BytesMut) {
        let events = std::mem::take(&mut self.events);
        for event in &events {
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            let kind = event
                .event
                .as_deref()
                .or_else(|| data.get("type").and_then(Value::as_str));
            match kind {
                Some("message_start") => {
                    let message = &data["message"];
                    self.id = message["id"].as_str().unwrap_or_default().to_owned();
                    self.model = message["model"].as_str().unwrap_or_default().to_owned();
                    let usage: Usage =
                        serde_json::from_value(message["usage"].clone()).unwrap_or_default();
                    self.prompt_tokens = usage.prompt_tokens();
                    out.extend_from_slice(
                        &self.chunk(json!({"role": "assistant", "content": ""}), None),
                    );
                }
                Some("content_block_start") => {
                    if let Some(text) = data.pointer("/content_block/text").and_then(Value::as_str)
                        && !text.is_empty()
                    {
                        self.text.push_str(text);
                        out.extend_from_slice(&self.chunk(json!({"content": text}), None));
                    }
                }
                Some("content_block_delta")
                    if data.pointer("/delta/type").and_then(Value::as_str)
                        == Some("text_delta") =>
                {
                    let text = data
                        .pointer("/delta/text")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    self.text.push_str(text);
                    out.extend_from_slice(&self.chunk(json!({"content": text}), None));
                }
                Some("message_delta") => {
                    if let Some(n) = data.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                        self.completion_tokens = n;
                    }
                    let reason =
                        finish_reason(data.pointer("/delta/stop_reason").and_then(Value::as_str));
                    if reason.is_some() {
                        out.extend_from_slice(&self.chunk(json!({}), reason));
                    }
                }
                Some("message_stop") => {
                    self.saw_stop = true;
                    if self.include_usage {
                        out.extend_from_slice(&data_event(&json!({
                            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.model, "choices": [],
                            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                                      "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens)},
                        })));
                    }
                    out.extend_from_slice(DONE_EVENT);
                }
                Some("error") => {
                    self.saw_error = true;
                    let message = data
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("provider stream error");
                    let kind = data
                        .pointer("/error/type")
                        .and_then(Value::as_str)
                        .unwrap_or("api_error");
                    out.extend_from_slice(&data_event(&json!({"error": {"message": message, "type": kind, "param": null, "code": null}})));
                }
                _ => {} // ping, content_block_stop, unknown future events
            }
        }
        self.events = events;
        self.events.clear();
    }
}

impl StreamTransform for AnthropicToOpenAi {
    fn on_chunk(&mut self, chunk: Bytes) -> Result<Bytes, String> {
        self.parser
            .push(&chunk, &mut self.events)
            .map_err(|_| "provider stream line too long".to_owned())?;
        let mut out = BytesMut::new();
        self.translate(&mut out);
        Ok(out.freeze())
    }

    fn on_end(&mut self) -> Bytes {
        self.parser.finish(&mut self.events);
        let mut out = BytesMut::new();
        self.translate(&mut out);
        if !self.saw_stop && !self.saw_error {
            out.extend_from_slice(&self.error_event(
                "provider stream ended before message_stop",
                "bad_provider_response",
            ));
        }
        out.freeze()
    }

    fn error_event(&self, message: &str, code: &str) -> Bytes {
        data_event(
            &json!({"error": {"message": message, "type": "api_error", "param": null, "code": code}}),
        )
    }

    fn complete(&self) -> bool {
        self.saw_stop && !self.saw_error
    }

    fn ended(&self) -> bool {
        self.saw_stop
    }

    fn take_answer(&mut self) -> Answer {
        self.text.take()
    }
}

/// Relays a Messages event stream unchanged (for `/v1/messages`), assembling the text.
#[derive(Debug, Default)]
pub(crate) struct AnthropicRelay {
    parser: SseParser,
    events: Vec<SseEvent>,
    /// The answer to store (bounded: [`super::answer`]).
    text: super::answer::AnswerText,
    saw_stop: bool,
    saw_error: bool,
}

impl AnthropicRelay {
    fn read_events(&mut self) {
        for event in self.events.drain(..) {
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            match event
                .event
                .as_deref()
                .or_else(|| data.get("type").and_then(Value::as_str))
            {
                Some("content_block_start") => {
                    if let Some(t) = data.pointer("/content_block/text").and_then(Value::as_str) {
                        self.text.push_str(t);
                    }
                }
                Some("content_block_delta") => {
                    if data.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta")
                        && let Some(t) = data.pointer("/delta/text").and_then(Value::as_str)
                    {
                        self.text.push_str(t);
                    }
                }
                Some("message_stop") => self.saw_stop = true,
                Some("error") => self.saw_error = true,
                _ => {}
            }
        }
    }
}

impl StreamTransform for AnthropicRelay {
    fn on_chunk(&mut self, chunk: Bytes) -> Result<Bytes, String> {
        self.parser
            .push(&chunk, &mut self.events)
            .map_err(|_| "provider stream line too long".to_owned())?;
        self.read_events();
        Ok(chunk)
    }

    fn on_end(&mut self) -> Bytes {
        // Provider bytes pass unchanged, so an unfinished last event is closed here.
        let close = self.parser.open_event_terminator();
        self.parser.finish(&mut self.events);
        self.read_events();
        Bytes::from_static(close)
    }

    fn error_event(&self, message: &str, code: &str) -> Bytes {
        let event = named_event(
            "error",
            &json!({"type": "error", "error": {"type": code, "message": message}}),
        );
        [self.parser.open_event_terminator(), &event[..]]
            .concat()
            .into()
    }

    fn complete(&self) -> bool {
        self.saw_stop && !self.saw_error
    }

    fn ended(&self) -> bool {
        self.saw_stop
    }

    fn take_answer(&mut self) -> Answer {
        self.text.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn request_translation() {
        let body = obj(
            json!({"model": "anthropic/claude", "temperature": 1.5, "stop": "END", "user": "u1",
                              "stream": true, "top_p": 0.9}),
        );
        let messages = vec![
            json!({"role": "system", "content": "You are a coach."}),
            json!({"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}),
            json!({"role": "user", "content": [{"type": "text", "text": "look"},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}),
            json!({"role": "assistant", "content": "ok"}),
            json!({"role": "user", "content": "next"}),
        ];
        let r = to_messages_request(&body, &messages, "claude-haiku-4-5").unwrap();
        assert_eq!(r["model"], "claude-haiku-4-5");
        assert_eq!(r["max_tokens"], MAX_TOKENS_DEFAULT);
        assert_eq!(r["system"], "You are a coach.\n\nBe brief.");
        assert_eq!(r["messages"].as_array().unwrap().len(), 3);
        assert_eq!(
            r["messages"][0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
        );
        assert_eq!(r["messages"][2], json!({"role": "user", "content": "next"}));
        assert_eq!(r["temperature"], 1.0);
        assert_eq!(r["stop_sequences"], json!(["END"]));
        assert_eq!(r["metadata"]["user_id"], "u1");
        assert_eq!(r["stream"], true);
        let limited = to_messages_request(
            &obj(json!({"max_completion_tokens": 7})),
            &messages[4..],
            "m",
        )
        .unwrap();
        assert_eq!(limited["max_tokens"], 7);
        assert!(limited.get("system").is_none());

        assert_eq!(
            to_messages_request(&obj(json!({"tools": []})), &messages, "m")
                .unwrap_err()
                .status(),
            400
        );
        let tool = [json!({"role": "tool", "content": "42", "tool_call_id": "t"})];
        assert_eq!(
            to_messages_request(&obj(json!({})), &tool, "m")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn passthrough_closes_an_unfinished_last_event_before_its_own() {
        let mut relay = AnthropicRelay::default();
        let mut out = relay
            .on_chunk(Bytes::from_static(
                b"event: ping\ndata: {\"type\":\"ping\"}",
            ))
            .unwrap()
            .to_vec();
        out.extend_from_slice(&relay.error_event("reset", "provider_unreachable"));
        out.extend_from_slice(&relay.on_end());
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        parser.push(&out, &mut events).unwrap();
        parser.finish(&mut events);
        let names: Vec<Option<&str>> = events.iter().map(|e| e.event.as_deref()).collect();
        assert_eq!(names, vec![Some("ping"), Some("error")], "{events:?}");
    }

    #[test]
    fn absurd_usage_counts_saturate_instead_of_panicking() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn",
            "usage":{"input_tokens":18446744073709551615,"output_tokens":18446744073709551615,
                     "cache_read_input_tokens":1}}"#;
        let (bytes, _) = to_chat_completion(body).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["usage"]["total_tokens"], u64::MAX);

        let max = u64::MAX;
        let stream = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\"model\":\"c\",\"usage\":{{\"input_tokens\":{max},\"cache_creation_input_tokens\":{max}}}}}}}\n\n\
             event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":{max}}}}}\n\n\
             event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        );
        let mut relay = AnthropicToOpenAi::new(true);
        let out = relay.on_chunk(Bytes::from(stream)).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(&format!("\"total_tokens\":{max}")), "{text}");
    }

    #[test]
    fn response_translation() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}],
            "stop_reason":"max_tokens","usage":{"input_tokens":10,"output_tokens":3,"cache_read_input_tokens":2}}"#;
        let (bytes, text) = to_chat_completion(body).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(text, "Hi there");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "Hi there");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
        );
        assert_eq!(message_text(body).as_deref(), Some("Hi there"));
        assert!(to_chat_completion(b"nope").is_err());
        for (reason, expected) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(finish_reason(Some(reason)), Some(expected));
        }
    }

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
        event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
        event: ping\ndata: {\"type\":\"ping\"}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n\
        event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
        event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n\
        event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn stream_translation() {
        let mut t = AnthropicToOpenAi::new(true);
        let mut out = Vec::new();
        for piece in STREAM.as_bytes().chunks(13) {
            out.extend_from_slice(&t.on_chunk(Bytes::copy_from_slice(piece)).unwrap());
        }
        out.extend_from_slice(&t.on_end());
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        parser.push(&out, &mut events).unwrap();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data.last(), Some(&"[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        assert_eq!(chunks[0]["id"], "msg_1");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello");
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "stop"
        );
        assert_eq!(chunks[chunks.len() - 1]["usage"]["total_tokens"], 7);
        assert!(t.complete());
        assert_eq!(t.take_answer().text, "Hello");
    }

    #[test]
    fn truncated_or_failed_stream_is_incomplete() {
        let cut = STREAM.find("event: message_stop").unwrap();
        let mut t = AnthropicToOpenAi::new(false);
        t.on_chunk(Bytes::copy_from_slice(&STREAM.as_bytes()[..cut]))
            .unwrap();
        let tail = t.on_end();
        assert!(String::from_utf8_lossy(&tail).contains("\"error\""));
        assert!(!t.complete());

        let mut relay = AnthropicRelay::default();
        let relayed = relay
            .on_chunk(Bytes::from_static(STREAM.as_bytes()))
            .unwrap();
        assert_eq!(&relayed[..], STREAM.as_bytes());
        assert!(relay.on_end().is_empty());
        assert!(relay.complete());
        assert_eq!(relay.take_answer().text, "Hello");

        let mut failed = AnthropicRelay::default();
        failed.on_chunk(Bytes::from_static(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n")).unwrap();
        failed.on_end();
        assert!(!failed.complete());
    }
}
