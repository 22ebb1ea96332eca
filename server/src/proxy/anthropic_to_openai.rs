//! Anthropic client → OpenAI-format provider: `POST /v1/messages` with an OpenAI-format
//! model (`openai/…`, `ollama/…`, a configured vLLM), for clients that speak only
//! Anthropic's format. The Anthropic Messages request is translated into an OpenAI Chat
//! Completions request ([`to_chat_request`]), and the answer back into Anthropic's format:
//! a `chat.completion` into a `message` ([`to_message`]), a chunk stream into Messages
//! events ([`OpenAiToAnthropic`], named, like the answer, in the other direction), errors
//! into Anthropic's error shape ([`error_body`]). The mirror image of
//! [`super::openai_to_anthropic`].
//!
//! Translated: `system` (string or text blocks), user/assistant messages with text and image
//! blocks, `max_tokens`, `stop_sequences`, `temperature`, `top_p`, `metadata.user_id`,
//! `stream`; the answer, stop reason, usage and streaming events back. Tool use is not
//! translated (`tools` and tool blocks are refused with 400), as in the other direction.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::ProxyError;
use super::openai::content_text;
use super::relay::{Answer, StreamTransform};
use super::sse::{SseEvent, SseParser, named_event};

/// Builds a Chat Completions request from an Anthropic request `body` (without `messages`,
/// `system` already memory-injected) and its `messages`, for upstream model id `model`.
pub(crate) fn to_chat_request(
    body: &Map<String, Value>,
    messages: &[Value],
    model: &str,
) -> Result<Value, ProxyError> {
    for field in ["tools", "tool_choice"] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ProxyError::invalid_param(
                format!("{field} is not translated for OpenAI-format providers"),
                "tools",
            ));
        }
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    let system = body.get("system").map(content_text).unwrap_or_default();
    if !system.trim().is_empty() {
        out.push(json!({"role": "system", "content": system}));
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = match m.get("content") {
            Some(Value::Array(blocks)) => Value::Array(
                blocks
                    .iter()
                    .map(|b| part(b, i))
                    .collect::<Result<_, _>>()?,
            ),
            Some(other) => other.clone(),
            None => Value::Null,
        };
        out.push(json!({"role": role, "content": content}));
    }
    let mut request = Map::new();
    request.insert("model".into(), Value::String(model.to_owned()));
    request.insert("messages".into(), Value::Array(out));
    if let Some(n) = body.get("max_tokens").filter(|v| v.is_u64()) {
        request.insert("max_tokens".into(), n.clone());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        if let Some(v) = body.get(from).filter(|v| v.is_number()) {
            request.insert(to.into(), v.clone());
        }
    }
    if let Some(stop) = body.get("stop_sequences").filter(|v| v.is_array()) {
        request.insert("stop".into(), stop.clone());
    }
    if let Some(user) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        request.insert("user".into(), Value::String(user.to_owned()));
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        request.insert("stream".into(), Value::Bool(true));
        // Anthropic streams always end with usage; ask the OpenAI side for it too.
        request.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(request))
}

/// One Anthropic content block → one OpenAI content part.
fn part(block: &Value, i: usize) -> Result<Value, ProxyError> {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => Ok(
            json!({"type": "text", "text": block.get("text").and_then(Value::as_str).unwrap_or("")}),
        ),
        Some("image") => {
            let source = block.get("source").unwrap_or(&Value::Null);
            let url = match source.get("type").and_then(Value::as_str) {
                Some("base64") => format!(
                    "data:{};base64,{}",
                    source
                        .get("media_type")
                        .and_then(Value::as_str)
                        .unwrap_or("image/png"),
                    source.get("data").and_then(Value::as_str).unwrap_or("")
                ),
                _ => source
                    .get("url")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            };
            Ok(json!({"type": "image_url", "image_url": {"url": url}}))
        }
        other => Err(ProxyError::invalid_param(
            format!(
                "messages[{i}]: content block type {other:?} is not translated for OpenAI-format providers"
            ),
            "messages",
        )),
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub(crate) fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// A `chat.completion` body → an Anthropic `message` body, plus the answer text.
pub(crate) fn to_message(body: &[u8]) -> Result<(Bytes, String), String> {
    #[derive(Deserialize)]
    struct Completion {
        #[serde(default)]
        id: String,
        #[serde(default)]
        model: String,
        #[serde(default)]
        choices: Vec<Value>,
        #[serde(default)]
        usage: Option<Usage>,
    }
    let completion: Completion =
        serde_json::from_slice(body).map_err(|e| format!("not a chat.completion: {e}"))?;
    let choice = completion.choices.first().cloned().unwrap_or(Value::Null);
    let text = content_text(choice.pointer("/message/content").unwrap_or(&Value::Null));
    let usage = completion.usage.unwrap_or_default();
    let message = json!({
        "id": completion.id,
        "type": "message",
        "role": "assistant",
        "model": completion.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
    });
    Ok((Bytes::from(message.to_string()), text))
}

/// A provider error → Anthropic's error shape, keeping the message.
pub(crate) fn error_body(status: u16, body: &[u8]) -> Bytes {
    let openai: Value = serde_json::from_slice(&super::openai::upstream_error_body(status, body))
        .unwrap_or(Value::Null);
    let message = openai
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("provider error")
        .to_owned();
    let kind = match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    Bytes::from(json!({"type": "error", "error": {"type": kind, "message": message}}).to_string())
}

/// Translates a `chat.completion.chunk` stream into Anthropic Messages events.
#[derive(Debug, Default)]
pub(crate) struct OpenAiToAnthropic {
    parser: SseParser,
    events: Vec<SseEvent>,
    started: bool,
    finish: Option<String>,
    usage: (u64, u64),
    /// The answer to store (bounded: [`super::answer`]).
    text: super::answer::AnswerText,
    closed: bool,
    saw_error: bool,
}

impl OpenAiToAnthropic {
    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        self.started = true;
        let message = json!({"type": "message_start", "message": {
            "id": chunk.get("id").cloned().unwrap_or(Value::Null), "type": "message", "role": "assistant",
            "model": chunk.get("model").cloned().unwrap_or(Value::Null), "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}});
        out.extend_from_slice(&named_event("message_start", &message));
        let block = json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}});
        out.extend_from_slice(&named_event("content_block_start", &block));
    }

    fn close(&mut self, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        self.closed = true;
        if !self.started {
            self.start(&Value::Null, out);
        }
        out.extend_from_slice(&named_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null},
            "usage": {"input_tokens": self.usage.0, "output_tokens": self.usage.1}});
        out.extend_from_slice(&named_event("message_delta", &delta));
        out.extend_from_slice(&named_event(
            "message_stop",
            &json!({"type": "message_stop"}),
        ));
    }

    fn translate(&mut self, out: &mut BytesMut) {
        let events = std::mem::take(&mut self.events);
        for event in &events {
            if event.data.trim() == "[DONE]" {
                self.close(out);
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            if let Some(error) = chunk.get("error") {
                self.saw_error = true;
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("provider stream error");
                out.extend_from_slice(&self.error_event(message, "api_error"));
                continue;
            }
            if !self.started {
                self.start(&chunk, out);
            }
            if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
                let usage: Usage = serde_json::from_value(usage.clone()).unwrap_or_default();
                self.usage = (usage.prompt_tokens, usage.completion_tokens);
            }
            let choice = chunk.pointer("/choices/0").unwrap_or(&Value::Null);
            if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str)
                && !text.is_empty()
            {
                self.text.push_str(text);
                let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
                out.extend_from_slice(&named_event("content_block_delta", &delta));
            }
            if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(finish.to_owned());
            }
        }
        self.events = events;
        self.events.clear();
    }
}

impl StreamTransform for OpenAiToAnthropic {
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
        if !self.closed && !self.saw_error {
            if self.finish.is_some() {
                // Some OpenAI-compatible servers close without `[DONE]` after the last chunk.
                self.close(&mut out);
            } else {
                out.extend_from_slice(
                    &self.error_event("provider stream ended before the answer did", "api_error"),
                );
                self.saw_error = true;
            }
        }
        out.freeze()
    }

    fn error_event(&self, message: &str, code: &str) -> Bytes {
        named_event(
            "error",
            &json!({"type": "error", "error": {"type": code, "message": message}}),
        )
    }

    fn complete(&self) -> bool {
        self.closed && !self.saw_error
    }

    fn ended(&self) -> bool {
        self.closed
    }

    fn take_answer(&mut self) -> Answer {
        self.text.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_translation() {
        let body = json!({"model": "ollama/llama", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."}],
                          "stop_sequences": ["END"], "temperature": 0.2, "stream": true, "metadata": {"user_id": "u"}});
        let messages = vec![
            json!({"role": "user", "content": [{"type": "text", "text": "look"},
                   {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}),
            json!({"role": "assistant", "content": "ok"}),
        ];
        let r = to_chat_request(body.as_object().unwrap(), &messages, "llama").unwrap();
        assert_eq!(r["model"], "llama");
        assert_eq!(
            r["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            r["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(
            r["messages"][2],
            json!({"role": "assistant", "content": "ok"})
        );
        assert_eq!(
            (r["max_tokens"].as_u64(), r["stop"].clone()),
            (Some(50), json!(["END"]))
        );
        assert_eq!(r["stream_options"]["include_usage"], true);
        assert_eq!(r["user"], "u");
        let tool = [
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "4"}]}),
        ];
        assert_eq!(
            to_chat_request(&Map::new(), &tool, "m")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn response_and_error_translation() {
        let body = br#"{"id":"c1","model":"llama","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let (bytes, text) = to_message(body).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(text, "Hi");
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["text"], "Hi");
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["usage"], json!({"input_tokens": 3, "output_tokens": 1}));
        let e: Value = serde_json::from_slice(&error_body(
            429,
            br#"{"error":{"message":"slow down","type":"x"}}"#,
        ))
        .unwrap();
        assert_eq!(
            e,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
    }

    #[test]
    fn stream_translation() {
        let stream = "data: {\"id\":\"c1\",\"model\":\"llama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
                      data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                      data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n\
                      data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
                      data: [DONE]\n\n";
        let mut t = OpenAiToAnthropic::default();
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(9) {
            out.extend_from_slice(&t.on_chunk(Bytes::copy_from_slice(piece)).unwrap());
        }
        out.extend_from_slice(&t.on_end());
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        parser.push(&out, &mut events).unwrap();
        let names: Vec<&str> = events.iter().filter_map(|e| e.event.as_deref()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let delta: Value = serde_json::from_str(&events[5].data).unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 2);
        assert!(t.complete());
        assert_eq!(t.take_answer().text, "Hello");

        let mut cut = OpenAiToAnthropic::default();
        cut.on_chunk(Bytes::from_static(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
        ))
        .unwrap();
        assert!(String::from_utf8_lossy(&cut.on_end()).contains("event: error"));
        assert!(!cut.complete());
    }
}
