//! The OpenAI Chat Completions side: validating and cleaning the request's messages,
//! reading the answer text out of a completion or a stream, and shaping provider errors.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::ProxyError;
use super::relay::{Answer, StreamTransform};
use super::sse::{DONE_EVENT, SseEvent, SseParser, data_event};

/// Roles a Chat Completions request may carry.
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];
/// Most messages accepted in one request.
pub(crate) const MESSAGES_MAX: usize = 10_000;

/// Takes `messages` out of a request body after checking its shape: a non-empty array of
/// objects with a known `role` (from `roles`) and a string, part-array or null `content`.
pub(crate) fn take_messages(
    body: &mut Map<String, Value>,
    roles: &[&str],
) -> Result<Vec<Value>, ProxyError> {
    let messages = match body.remove("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ProxyError::invalid_param(
                "messages must not be empty",
                "messages",
            ));
        }
        Some(_) => {
            return Err(ProxyError::invalid_param(
                "messages must be an array",
                "messages",
            ));
        }
        None => {
            return Err(ProxyError::invalid_param(
                "messages is required",
                "messages",
            ));
        }
    };
    if messages.len() > MESSAGES_MAX {
        return Err(ProxyError::invalid_param(
            format!("at most {MESSAGES_MAX} messages per request"),
            "messages",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !roles.contains(&role) {
            return Err(ProxyError::invalid_param(
                format!(
                    "messages[{i}].role {role:?} is not one of {}",
                    roles.join(", ")
                ),
                "messages",
            ));
        }
        match m.get("content") {
            None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(ProxyError::invalid_param(
                    format!("messages[{i}].content must be a string or an array of parts"),
                    "messages",
                ));
            }
        }
    }
    Ok(messages)
}

/// The OpenAI role list for [`take_messages`].
pub(crate) fn chat_roles() -> &'static [&'static str] {
    ROLES
}

/// Removes MemoryRouter's per-message `"memory"` flag; returns, per message, whether it may
/// be stored (`"memory": false` opts a message out).
pub(crate) fn strip_memory_flags(messages: &mut [Value]) -> Vec<bool> {
    messages
        .iter_mut()
        .map(|m| {
            let flag = m.as_object_mut().and_then(|o| o.remove("memory"));
            !matches!(flag, Some(Value::Bool(false)))
        })
        .collect()
}

/// The text of a message content: the string itself, or the `text` parts joined by newlines.
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// `choices[0].message.content` of a chat.completion body.
pub(crate) fn completion_text(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Completion {
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        message: Option<Message>,
    }
    #[derive(Deserialize)]
    struct Message {
        content: Option<Value>,
    }
    let completion: Completion = serde_json::from_slice(body).ok()?;
    let content = completion.choices.into_iter().next()?.message?.content?;
    Some(content_text(&content))
}

/// A provider's error answer as `{"error":{"message","type","param","code"}}`: bodies
/// already in that shape pass unchanged; Anthropic-style, string-valued or non-JSON
/// errors are rewrapped keeping their message.
pub(crate) fn upstream_error_body(status: u16, body: &[u8]) -> Bytes {
    /// Longest non-JSON error text quoted back to the client.
    const QUOTED_BYTES_MAX: usize = 2048;
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let (message, kind, param, code) = match error {
        Some(Value::Object(e)) if e.get("message").is_some_and(Value::is_string) => {
            let is_openai_shape = parsed.as_ref().and_then(|v| v.get("type")).is_none();
            if is_openai_shape {
                return Bytes::copy_from_slice(body);
            }
            (
                e["message"].clone(),
                e.get("type").cloned(),
                e.get("param").cloned(),
                e.get("code").cloned(),
            )
        }
        Some(Value::String(m)) => (Value::String(m.clone()), None, None, None),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("provider answered HTTP {status}")
            } else {
                let cut = text
                    .char_indices()
                    .nth(QUOTED_BYTES_MAX)
                    .map_or(text.len(), |(i, _)| i);
                format!("provider answered HTTP {status}: {}", &text[..cut])
            };
            (Value::String(message), None, None, None)
        }
    };
    let kind = kind.unwrap_or_else(|| Value::String(error_type_for(status).to_owned()));
    let body = json!({"error": {
        "message": message,
        "type": kind,
        "param": param.unwrap_or(Value::Null),
        "code": code.unwrap_or(Value::Null),
    }});
    Bytes::from(body.to_string())
}

/// The OpenAI error type conventionally used with `status`.
pub(crate) fn error_type_for(status: u16) -> &'static str {
    match status {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// Relays an OpenAI-format stream unchanged, assembling `choices[0].delta.content`, and
/// makes sure it ends with `data: [DONE]`.
#[derive(Debug, Default)]
pub(crate) struct OpenAiRelay {
    parser: SseParser,
    events: Vec<SseEvent>,
    /// The answer to store (bounded: [`super::answer`]).
    text: super::answer::AnswerText,
    saw_done: bool,
    /// A `finish_reason` arrived: the answer ended, even if `[DONE]` never comes.
    saw_finish: bool,
    saw_error: bool,
}

impl OpenAiRelay {
    fn read_events(&mut self) {
        #[derive(Deserialize)]
        struct Chunk {
            #[serde(default)]
            choices: Vec<ChunkChoice>,
            error: Option<Value>,
        }
        #[derive(Deserialize)]
        struct ChunkChoice {
            #[serde(default)]
            index: u32,
            delta: Option<Delta>,
            finish_reason: Option<String>,
        }
        #[derive(Deserialize)]
        struct Delta {
            content: Option<String>,
        }
        for event in self.events.drain(..) {
            if event.data.trim() == "[DONE]" {
                self.saw_done = true;
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<Chunk>(&event.data) else {
                continue; // Not ours to judge: the client gets the bytes unchanged.
            };
            self.saw_error |= chunk.error.is_some();
            for choice in chunk.choices {
                self.saw_finish |= choice.finish_reason.is_some();
                if choice.index == 0
                    && let Some(content) = choice.delta.and_then(|d| d.content)
                {
                    self.text.push_str(&content);
                }
            }
        }
    }
}

impl StreamTransform for OpenAiRelay {
    fn on_chunk(&mut self, chunk: Bytes) -> Result<Bytes, String> {
        self.parser
            .push(&chunk, &mut self.events)
            .map_err(|_| "provider stream line too long".to_owned())?;
        self.read_events();
        Ok(chunk)
    }

    fn on_end(&mut self) -> Bytes {
        let close = self.parser.open_event_terminator();
        self.parser.finish(&mut self.events);
        self.read_events();
        let mut out = close.to_vec();
        if self.saw_done || self.saw_error {
            return Bytes::from(out);
        }
        if self.saw_finish {
            // Some OpenAI-compatible servers close without the terminator after the last
            // chunk; clients wait for it.
            out.extend_from_slice(DONE_EVENT);
        } else {
            // Neither `[DONE]` nor a finish_reason: the stream was cut mid-answer (an
            // intermediary closing cleanly). Saying `[DONE]` would pass it off as whole.
            self.saw_error = true;
            out.extend_from_slice(&data_event(&json!({"error": {
                "message": "provider stream ended before the answer did",
                "type": "api_error", "param": null, "code": "bad_provider_response"}})));
        }
        Bytes::from(out)
    }

    fn error_event(&self, message: &str, code: &str) -> Bytes {
        let event = data_event(
            &json!({"error": {"message": message, "type": "api_error", "param": null, "code": code}}),
        );
        [self.parser.open_event_terminator(), &event[..]]
            .concat()
            .into()
    }

    fn complete(&self) -> bool {
        !self.saw_error
    }

    fn ended(&self) -> bool {
        self.saw_done
    }

    fn take_answer(&mut self) -> Answer {
        self.text.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_validated_and_flags_stripped() {
        let mut body = json!({"model": "m", "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "secret", "memory": false},
            {"role": "assistant", "content": null},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]},
        ]}).as_object().unwrap().clone();
        let mut messages = take_messages(&mut body, chat_roles()).unwrap();
        assert!(!body.contains_key("messages"));
        // The user turn the proxy stores is read from the parsed messages, before the
        // flags are stripped (as `forward::chat_messages` does).
        let parsed = crate::request::parse_messages(
            &Value::Array(messages.clone()),
            &crate::config::Limits::default(),
        )
        .unwrap();
        let storable = strip_memory_flags(&mut messages);
        assert_eq!(storable, vec![true, false, true, true]);
        assert!(
            messages[1].get("memory").is_none(),
            "the flag never reaches the provider"
        );
        assert_eq!(
            super::super::forward::user_turn(&parsed).as_deref(),
            Some("a\nb")
        );
        assert_eq!(
            super::super::forward::user_turn(&parsed[..2]),
            None,
            "memory:false is not stored"
        );

        for bad in [
            json!({}),
            json!({"messages": []}),
            json!({"messages": "x"}),
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": 5}]}),
        ] {
            let mut b = bad.as_object().unwrap().clone();
            assert_eq!(
                take_messages(&mut b, chat_roles()).unwrap_err().status(),
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn completion_text_reads_the_first_choice() {
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}]}"#;
        assert_eq!(completion_text(body).as_deref(), Some("Hello"));
        assert_eq!(completion_text(b"{}"), None);
    }

    #[test]
    fn provider_errors_become_openai_shaped() {
        let openai = br#"{"error":{"message":"bad key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        assert_eq!(
            &upstream_error_body(401, openai)[..],
            &openai[..],
            "already OpenAI-shaped: unchanged"
        );
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let v: Value = serde_json::from_slice(&upstream_error_body(529, anthropic)).unwrap();
        assert_eq!(v["error"]["message"], "Overloaded");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert!(v["error"]["param"].is_null() && v["error"]["code"].is_null());
        let v: Value =
            serde_json::from_slice(&upstream_error_body(404, br#"{"error":"model not found"}"#))
                .unwrap();
        assert_eq!(
            (v["error"]["message"].as_str(), v["error"]["type"].as_str()),
            (Some("model not found"), Some("invalid_request_error"))
        );
        let v: Value =
            serde_json::from_slice(&upstream_error_body(502, b"<html>Bad gateway</html>")).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Bad gateway")
        );
        assert_eq!(v["error"]["type"], "api_error");
    }

    /// Everything a client would parse from `relayed`.
    fn client_events(relayed: &[u8]) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        parser.push(relayed, &mut events).unwrap();
        parser.finish(&mut events);
        events
    }

    #[test]
    fn added_events_never_merge_into_an_unterminated_last_event() {
        let last = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}";
        for ending in ["", "\n", "\r\n", "\r"] {
            let mut relay = OpenAiRelay::default();
            let mut out = relay
                .on_chunk(Bytes::from(format!("{last}{ending}")))
                .unwrap()
                .to_vec();
            out.extend_from_slice(&relay.on_end());
            let events = client_events(&out);
            let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(data, vec![&last[6..], "[DONE]"], "ending {ending:?}");

            let mut relay = OpenAiRelay::default();
            let mut out = relay
                .on_chunk(Bytes::from(format!("{last}{ending}")))
                .unwrap()
                .to_vec();
            out.extend_from_slice(&relay.error_event("connection reset", "provider_unreachable"));
            let events = client_events(&out);
            assert_eq!(events.len(), 2, "ending {ending:?}: {events:?}");
            assert!(events[1].data.contains("connection reset"), "{events:?}");
        }
    }

    #[test]
    fn a_stream_cut_before_the_answer_finished_is_not_passed_off_as_complete() {
        let cut =
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"The first half\"}}]}\n\n";
        let mut relay = OpenAiRelay::default();
        let mut out = relay
            .on_chunk(Bytes::from_static(cut.as_bytes()))
            .unwrap()
            .to_vec();
        out.extend_from_slice(&relay.on_end());
        let events = client_events(&out);
        assert!(
            events.iter().all(|e| e.data != "[DONE]"),
            "a cut stream must not end like a finished one: {events:?}"
        );
        assert!(
            events.last().is_some_and(|e| e.data.contains("\"error\"")),
            "the client is told the answer was cut: {events:?}"
        );
        assert!(!relay.complete(), "a cut answer is not stored");
    }

    #[test]
    fn relay_passes_bytes_and_assembles_text() {
        let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
                      data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                      data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n";
        let mut relay = OpenAiRelay::default();
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
            out.extend_from_slice(&relay.on_chunk(Bytes::copy_from_slice(piece)).unwrap());
        }
        assert_eq!(out, stream.as_bytes(), "relayed unchanged");
        assert_eq!(
            &relay.on_end()[..],
            DONE_EVENT,
            "missing terminator is added"
        );
        assert!(relay.complete());
        assert_eq!(relay.take_answer().text, "Hello");

        let mut done = OpenAiRelay::default();
        done.on_chunk(Bytes::from_static(b"data: [DONE]\n\n"))
            .unwrap();
        assert!(done.on_end().is_empty(), "no second terminator");

        let mut failed = OpenAiRelay::default();
        failed
            .on_chunk(Bytes::from_static(
                b"data: {\"error\":{\"message\":\"x\"}}\n\n",
            ))
            .unwrap();
        failed.on_end();
        assert!(!failed.complete());
    }
}
