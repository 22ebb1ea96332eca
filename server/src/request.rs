//! Request pieces shared by prepare, ingest, search and the proxy: chat messages (string or
//! content-part content), filters, the session id and the memory-mode spellings; and the
//! one way a message becomes a stored memory ([`to_new_memory`]).
//!
//! Long (~630 lines, a third of them tests) because every request shape and the one
//! validation of a stored message must read the same limits in one place.
//!
//! Every check here answers 400 (wrong shape or type), 413 (over a configured limit) or 422
//! (well-formed but meaningless value) with `param` naming the field, never a panic.
//!
//! **Invariant:** every memory stored — by ingest, by the proxy after an answer, by an
//! import or upload line, by `memoryrouter import` — is built by [`to_new_memory`], so it
//! has a non-empty text, a `created_at` every reader can format (1970 to the end of 9999,
//! UTC: [`check_created_at`]), a session id of at most [`SESSION_ID_BYTES_MAX`] bytes, a
//! model of at most [`MODEL_CHARS_MAX`] characters and metadata of at most
//! [`METADATA_BYTES_MAX`] bytes. So whatever is acknowledged can be listed, searched,
//! prepared and exported, and whatever export writes, import reads. The configured `message_chars_max` bounds what clients
//! send ([`check_text_length`]: messages, import and upload lines), not the proxy's
//! answers or the CLI's import of an export.

use engine::{Filter, Metadata, NewMemory, Role};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Limits;
use crate::error::ApiError;
use crate::http::header;

/// Longest session id accepted, in bytes.
pub(crate) const SESSION_ID_BYTES_MAX: usize = 256;
/// Longest `model` string stored with a memory, in characters.
pub(crate) const MODEL_CHARS_MAX: usize = 256;
/// Largest `metadata` object accepted, serialised, in bytes (it is stored with every
/// memory of the request).
pub(crate) const METADATA_BYTES_MAX: usize = 16 * 1024;

/// A value outside the bounds a stored memory is held to. The checks are shared; the
/// words are each path's own, as they were before the checks were: [`Invalid::api_error`]
/// for the memory API, `Display` for an import or upload line, and the proxy words its
/// own (it can only meet the session and model bounds, checked before it calls the
/// provider).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// The text is empty or white space (the memory API skips such messages instead).
    EmptyText,
    /// The text is longer than `max` characters (the configured `message_chars_max`).
    TextTooLong { max: usize },
    /// The session id is longer than [`SESSION_ID_BYTES_MAX`] bytes.
    SessionTooLong,
    /// The model is longer than [`MODEL_CHARS_MAX`] characters.
    ModelTooLong,
    /// The metadata is larger than [`METADATA_BYTES_MAX`] bytes, serialised.
    MetadataTooLarge,
    /// `created_at` is outside the range every reader formats ([`check_created_at`]).
    CreatedAtOutOfRange,
}

/// What [`Invalid::CreatedAtOutOfRange`] says, on every path.
const CREATED_AT_RANGE: &str = "`created_at` must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z (in UTC, after its offset)";

impl Invalid {
    /// The memory API's error: 413 with its code (the field's `param` where there is one
    /// field; a message's caller adds the message's index).
    pub(crate) fn api_error(self) -> ApiError {
        match self {
            Invalid::EmptyText => {
                ApiError::bad_request("empty_content", "A message to store has no text.")
            }
            Invalid::TextTooLong { max } => ApiError::too_large(
                "message_too_long",
                format!("A message is longer than the limit of {max} characters."),
            ),
            Invalid::SessionTooLong => ApiError::too_large(
                "session_id_too_long",
                format!("`session_id` is longer than {SESSION_ID_BYTES_MAX} bytes."),
            )
            .with_param("session_id"),
            Invalid::ModelTooLong => ApiError::too_large(
                "model_too_long",
                format!("`model` is longer than {MODEL_CHARS_MAX} characters."),
            )
            .with_param("model"),
            Invalid::MetadataTooLarge => ApiError::too_large(
                "metadata_too_large",
                format!("`metadata` is larger than {METADATA_BYTES_MAX} bytes."),
            )
            .with_param("metadata"),
            Invalid::CreatedAtOutOfRange => {
                ApiError::bad_request("invalid_created_at", format!("{CREATED_AT_RANGE}."))
                    .with_param("created_at")
            }
        }
    }
}

/// How an import or upload line reports it.
impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::EmptyText => f.write_str("`content` is empty"),
            Invalid::TextTooLong { max } => {
                write!(f, "`content` is longer than {max} characters")
            }
            Invalid::SessionTooLong => f.write_str("`session_id` must be a short string"),
            Invalid::ModelTooLong => {
                write!(f, "`model` is longer than {MODEL_CHARS_MAX} characters")
            }
            Invalid::MetadataTooLarge => {
                write!(f, "`metadata` is larger than {METADATA_BYTES_MAX} bytes")
            }
            Invalid::CreatedAtOutOfRange => f.write_str(CREATED_AT_RANGE),
        }
    }
}

/// A text a client sent, against the configured `message_chars_max` (`chars_max`).
pub(crate) fn check_text_length(text: &str, chars_max: usize) -> Result<(), Invalid> {
    // Bytes bound characters from above: count them only when the byte length is over.
    if text.len() > chars_max && text.chars().count() > chars_max {
        return Err(Invalid::TextTooLong { max: chars_max });
    }
    Ok(())
}

/// A session id against [`SESSION_ID_BYTES_MAX`].
pub(crate) fn check_session_id(session_id: &str) -> Result<(), Invalid> {
    if session_id.len() > SESSION_ID_BYTES_MAX {
        return Err(Invalid::SessionTooLong);
    }
    Ok(())
}

/// A `created_at` (epoch milliseconds, UTC) against the range every reader and formatter
/// handles: 1970 to the end of 9999 ([`crate::time::MS_MIN`]..=[`crate::time::MS_MAX`]).
/// Before this check, `253402300800000`, `1e300` or `"9999-12-31T23:59:59-23:59"` were
/// acknowledged and then failed every read of the vault.
pub(crate) fn check_created_at(created_at_ms: i64) -> Result<(), Invalid> {
    if (crate::time::MS_MIN..=crate::time::MS_MAX).contains(&created_at_ms) {
        Ok(())
    } else {
        Err(Invalid::CreatedAtOutOfRange)
    }
}

/// A model string against [`MODEL_CHARS_MAX`].
pub(crate) fn check_model(model: &str) -> Result<(), Invalid> {
    if model.chars().count() > MODEL_CHARS_MAX {
        return Err(Invalid::ModelTooLong);
    }
    Ok(())
}

/// What the memories of one request share — its session, model and metadata — against
/// their bounds, in that order. The memory API checks this once before anything is
/// stored; [`to_new_memory`] checks it again for every memory.
pub(crate) fn check_memory_fields(
    session_id: &str,
    model: Option<&str>,
    metadata: Option<&Metadata>,
) -> Result<(), Invalid> {
    check_session_id(session_id)?;
    if let Some(model) = model {
        check_model(model)?;
    }
    if let Some(metadata) = metadata
        && serde_json::to_vec(metadata).map_or(0, |b| b.len()) > METADATA_BYTES_MAX
    {
        return Err(Invalid::MetadataTooLarge);
    }
    Ok(())
}

/// The memory to store for one message: the only place a [`NewMemory`] is built. Refuses
/// an empty text, a `created_at` [`check_created_at`] refuses and the fields
/// [`check_memory_fields`] refuses.
pub(crate) fn to_new_memory(
    session_id: &str,
    role: Role,
    text: String,
    created_at_ms: i64,
    model: Option<&str>,
    metadata: Option<Metadata>,
) -> Result<NewMemory, Invalid> {
    if text.trim().is_empty() {
        return Err(Invalid::EmptyText);
    }
    check_created_at(created_at_ms)?;
    check_memory_fields(session_id, model, metadata.as_ref())?;
    Ok(NewMemory::new(session_id, role, text, created_at_ms)
        .with_model(model.map(str::to_owned))
        .with_metadata(metadata))
}

/// One chat message as the memory paths see it: its role, its text (text parts joined),
/// and the per-message options clients send.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ChatMessage {
    pub role: Role,
    pub text: String,
    /// `created_at` for backfill (RFC 3339 or epoch ms), if the client gave one.
    pub created_at_ms: Option<i64>,
    /// False when the client sent `"memory": false`: never store this message.
    pub remember: bool,
}

/// Parses a role, including the spellings OpenAI and Anthropic clients send for the same
/// thing (`developer` is the new name of `system`, `function` the old name of `tool`).
pub(crate) fn parse_role(text: &str) -> Option<Role> {
    match text {
        "developer" => Some(Role::System),
        "function" => Some(Role::Tool),
        other => Role::parse(other),
    }
}

/// Parses and validates `messages`. `allow_empty` is false for prepare/ingest.
pub(crate) fn parse_messages(value: &Value, limits: &Limits) -> Result<Vec<ChatMessage>, ApiError> {
    let items = message_items(value, limits)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(fields) => parse_message(i, fields, limits, || {
                content_text(fields.get("content").unwrap_or(&Value::Null))
            }),
            _ => Err(not_an_object(i)),
        })
        .collect()
}

/// [`parse_messages`] taking `messages` by value: each message's text is moved out of the
/// parsed body, not copied, so a large ingest holds its text once (issue 14 item 3). Each
/// message's JSON is dropped as soon as it has been read.
pub(crate) fn take_messages(value: Value, limits: &Limits) -> Result<Vec<ChatMessage>, ApiError> {
    message_items(&value, limits)?;
    let Value::Array(items) = value else {
        return Ok(Vec::new());
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut fields) = item else {
            return Err(not_an_object(i));
        };
        let content = fields.remove("content").unwrap_or(Value::Null);
        messages.push(parse_message(i, &fields, limits, move || {
            content_into_text(content)
        })?);
    }
    Ok(messages)
}

/// The items of `messages`, checked to be a non-empty array within the count limit.
fn message_items<'a>(value: &'a Value, limits: &Limits) -> Result<&'a [Value], ApiError> {
    let Value::Array(items) = value else {
        return Err(ApiError::bad_request(
            "invalid_type",
            "`messages` must be an array of messages.",
        )
        .with_param("messages"));
    };
    if items.is_empty() {
        return Err(
            ApiError::bad_request("empty_messages", "`messages` must not be empty.")
                .with_param("messages"),
        );
    }
    if items.len() > limits.messages_per_request_max {
        return Err(ApiError::too_large(
            "too_many_messages",
            format!(
                "{} messages exceed the limit of {} per request.",
                items.len(),
                limits.messages_per_request_max
            ),
        )
        .with_param("messages"));
    }
    Ok(items)
}

fn not_an_object(index: usize) -> ApiError {
    ApiError::bad_request("invalid_type", "Each message must be an object.")
        .with_param(format!("messages[{index}]"))
}

/// One message's fields; `text` reads its `content` (after the role is checked, so the
/// first error reported is the same whichever way the content is read).
fn parse_message(
    index: usize,
    fields: &serde_json::Map<String, Value>,
    limits: &Limits,
    text: impl FnOnce() -> Result<String, ApiError>,
) -> Result<ChatMessage, ApiError> {
    let at = |field: &str| format!("messages[{index}]{field}");
    let role = match fields.get("role") {
        Some(Value::String(role)) => parse_role(role).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_role",
                format!(
                    "Unknown role `{}`; expected user, assistant, system, tool or note.",
                    truncate(role, 32)
                ),
            )
            .with_param(at(".role"))
        })?,
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_type", "`role` must be a string.")
                    .with_param(at(".role")),
            );
        }
        None => {
            return Err(
                ApiError::bad_request("missing_role", "Each message needs a `role`.")
                    .with_param(at(".role")),
            );
        }
    };
    let text = text().map_err(|e| e.with_param(at(".content")))?;
    check_text_length(&text, limits.message_chars_max)
        .map_err(|e| e.api_error().with_param(at(".content")))?;
    let created_at_ms = match fields.get("created_at") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let ms = crate::time::parse_json_ms(value).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_created_at",
                    "`created_at` must be an RFC 3339 string or epoch milliseconds.",
                )
                .with_param(at(".created_at"))
            })?;
            check_created_at(ms).map_err(|e| e.api_error().with_param(at(".created_at")))?;
            Some(ms)
        }
    };
    let remember = match fields.get("memory") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_type", "`memory` must be a boolean.")
                    .with_param(at(".memory")),
            );
        }
    };
    Ok(ChatMessage {
        role,
        text,
        created_at_ms,
        remember,
    })
}

/// [`content_text`] of a `content` taken by value: a string is moved, not copied.
fn content_into_text(content: Value) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text),
        other => content_text(&other),
    }
}

/// The text of a `content`: a string, `null` (assistant tool calls), or an array of content
/// parts whose text parts are joined by newlines (images, audio and files are skipped).
pub(crate) fn content_text(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for part in parts {
                match part {
                    Value::String(text) => texts.push(text.as_str()),
                    Value::Object(fields) => {
                        let kind = fields.get("type").and_then(Value::as_str);
                        match kind {
                            Some("text" | "input_text" | "output_text") => match fields.get("text")
                            {
                                Some(Value::String(text)) => texts.push(text),
                                _ => {
                                    return Err(ApiError::bad_request(
                                        "invalid_content_part",
                                        "A text content part needs a string `text`.",
                                    ));
                                }
                            },
                            Some(_) => {}
                            None => {
                                return Err(ApiError::bad_request(
                                    "invalid_content_part",
                                    "Each content part needs a string `type`.",
                                ));
                            }
                        }
                    }
                    _ => {
                        return Err(ApiError::bad_request(
                            "invalid_content_part",
                            "`content` parts must be objects like {\"type\":\"text\",\"text\":\"…\"}.",
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(ApiError::bad_request(
            "invalid_type",
            "`content` must be a string or an array of content parts.",
        )),
    }
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// The session: body `session_id` beats the `X-Session-ID` header; "" = none.
pub(crate) fn session_id(body: Option<&str>, headers: &HeaderMap) -> Result<String, ApiError> {
    let session = body
        .or_else(|| header(headers, "x-session-id"))
        .unwrap_or("");
    check_session_id(session).map_err(Invalid::api_error)?;
    Ok(session.to_owned())
}

/// Memory mode: what a request may do with memory. Only [`MemoryMode::On`] does both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum MemoryMode {
    #[default]
    On,
    /// Retrieve only.
    Read,
    /// Store only.
    Write,
    /// Neither (plain proxy).
    Off,
}

impl MemoryMode {
    /// Every spelling clients use: `on`/`default`/`all`, `read`/`selective`, `write`,
    /// `off`/`none` (case-insensitive).
    pub(crate) fn parse(text: &str) -> Option<MemoryMode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "on" | "default" | "all" => Some(MemoryMode::On),
            "read" | "selective" => Some(MemoryMode::Read),
            "write" => Some(MemoryMode::Write),
            "off" | "none" => Some(MemoryMode::Off),
            _ => None,
        }
    }

    pub(crate) fn retrieves(self) -> bool {
        matches!(self, MemoryMode::On | MemoryMode::Read)
    }

    pub(crate) fn stores(self) -> bool {
        matches!(self, MemoryMode::On | MemoryMode::Write)
    }

    /// Resolves the mode: body `memory_mode` > `?mode=` > `X-Memory-Mode` > key suffix.
    pub(crate) fn resolve(
        key_suffix: MemoryMode,
        headers: &HeaderMap,
        query_mode: Option<&str>,
        body_mode: Option<&str>,
    ) -> Result<MemoryMode, ApiError> {
        let given = [
            (body_mode, "memory_mode"),
            (query_mode, "mode"),
            (header(headers, "x-memory-mode"), "X-Memory-Mode"),
        ];
        for (value, param) in given {
            if let Some(value) = value {
                return MemoryMode::parse(value).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_memory_mode",
                        "Memory mode must be on, read, write or off.",
                    )
                    .with_param(param)
                });
            }
        }
        Ok(key_suffix)
    }
}

/// `filters` in prepare/search bodies.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FiltersBody {
    pub session_id: Option<String>,
    pub role: Option<String>,
    pub roles: Option<Vec<String>>,
    pub created_after: Option<Value>,
    pub created_before: Option<Value>,
    pub metadata: Option<serde_json::Map<String, Value>>,
}

impl FiltersBody {
    pub(crate) fn to_filter(&self) -> Result<Filter, ApiError> {
        let mut roles = Vec::new();
        for name in self.role.iter().chain(self.roles.iter().flatten()) {
            roles.push(parse_role(name).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_role",
                    format!("Unknown role `{}` in filters.", truncate(name, 32)),
                )
                .with_param("filters.roles")
            })?);
        }
        let time = |value: &Option<Value>, param: &str| -> Result<Option<i64>, ApiError> {
            match value {
                None | Some(Value::Null) => Ok(None),
                Some(v) => crate::time::parse_json_ms(v).map(Some).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_time",
                        "Times must be RFC 3339 strings or epoch milliseconds.",
                    )
                    .with_param(param)
                }),
            }
        };
        Ok(Filter {
            session_id: self.session_id.clone().filter(|s| !s.is_empty()),
            roles: (!roles.is_empty()).then_some(roles),
            created_after_ms: time(&self.created_after, "filters.created_after")?,
            created_before_ms: time(&self.created_before, "filters.created_before")?,
            metadata: self
                .metadata
                .clone()
                .map(|m| m.into_iter().collect())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            messages_per_request_max: 3,
            message_chars_max: 10,
            ..Limits::default()
        }
    }

    #[test]
    fn parses_strings_parts_and_options() {
        let messages = parse_messages(
            &json!([
                {"role": "user", "content": "hi", "created_at": 5, "memory": false},
                {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null},
            ]),
            &limits(),
        )
        .unwrap();
        assert_eq!(
            messages[0],
            ChatMessage {
                role: Role::User,
                text: "hi".into(),
                created_at_ms: Some(5),
                remember: false
            }
        );
        assert_eq!(messages[1].role, Role::System);
        assert_eq!(messages[1].text, "a\nb");
        assert_eq!(messages[2].text, "");
    }

    /// Ingest's by-value parse accepts and refuses exactly what the borrowing one does.
    #[test]
    fn taking_messages_by_value_agrees_with_parsing_them() {
        let cases = [
            json!([
                {"role": "user", "content": "hi", "created_at": 5, "memory": false},
                {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null},
            ]),
            json!({}),
            json!([]),
            json!([3]),
            json!([{"role": "wizard", "content": 7}]),
            json!([{"role": "user", "content": 7}]),
            json!([{"role": "user", "content": "more than ten chars"}]),
            json!([{"role": "user", "content": "x", "created_at": "soon"}]),
            json!([{"role": "user"}, {"role": "user"}, {"role": "user"}, {"role": "user"}]),
        ];
        for case in cases {
            let borrowed = parse_messages(&case, &limits());
            let owned = take_messages(case.clone(), &limits());
            match (borrowed, owned) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{case}"),
                (Err(a), Err(b)) => assert_eq!(
                    (a.status, a.code, a.param),
                    (b.status, b.code, b.param),
                    "{case}"
                ),
                (a, b) => panic!("{case}: {:?} vs {:?}", a.is_ok(), b.is_ok()),
            }
        }
    }

    #[test]
    fn refuses_bad_messages_with_the_right_status() {
        let status = |v: Value| parse_messages(&v, &limits()).unwrap_err().status.as_u16();
        assert_eq!(status(json!({})), 400);
        assert_eq!(status(json!([])), 400);
        assert_eq!(status(json!([{"role": "wizard", "content": "x"}])), 400);
        assert_eq!(status(json!([{"role": 1, "content": "x"}])), 400);
        assert_eq!(status(json!([{"content": "x"}])), 400);
        assert_eq!(status(json!([{"role": "user", "content": 7}])), 400);
        assert_eq!(
            status(json!([{"role": "user", "content": [{"type": "text"}]}])),
            400
        );
        assert_eq!(status(json!([{"role": "user", "content": [3]}])), 400);
        assert_eq!(
            status(json!([{"role": "user", "content": "x", "created_at": "soon"}])),
            400
        );
        assert_eq!(
            status(json!([{"role": "user", "content": "x", "memory": "no"}])),
            400
        );
        // The repro: each was acknowledged, then every read of the vault was a 500.
        for created_at in [
            json!(253_402_300_800_000_i64),
            json!(1e300),
            json!("9999-12-31T23:59:59-23:59"),
            json!("1970-01-01T00:00:00+00:01"),
            json!(u64::MAX),
        ] {
            let error = parse_messages(
                &json!([{"role": "user", "content": "x", "created_at": created_at}]),
                &limits(),
            )
            .unwrap_err();
            assert_eq!(
                (error.status.as_u16(), error.code, error.param.as_deref()),
                (400, "invalid_created_at", Some("messages[0].created_at")),
                "{created_at}"
            );
        }
        assert_eq!(
            status(json!([{"role": "user", "content": "more than ten chars"}])),
            413
        );
        assert_eq!(
            status(json!([{"role": "user"}, {"role": "user"}, {"role": "user"}, {"role": "user"}])),
            413
        );
    }

    #[test]
    fn every_memory_is_held_to_the_same_bounds() {
        let memory =
            |session: &str, text: &str, model: Option<&str>, metadata: Option<Metadata>| {
                to_new_memory(session, Role::User, text.into(), 5, model, metadata)
            };
        let built = memory("s", "hi", Some("m"), None).unwrap();
        assert_eq!(
            (
                built.session_id.as_str(),
                built.text.as_str(),
                built.created_at_ms
            ),
            ("s", "hi", 5)
        );
        assert_eq!(built.model.as_deref(), Some("m"));
        assert_eq!(
            memory("", " \n", None, None).err(),
            Some(Invalid::EmptyText)
        );
        let long_session = "s".repeat(SESSION_ID_BYTES_MAX + 1);
        assert_eq!(
            memory(&long_session, "hi", None, None).err(),
            Some(Invalid::SessionTooLong)
        );
        assert!(memory(&long_session[1..], "hi", None, None).is_ok());
        let long_model = "é".repeat(MODEL_CHARS_MAX + 1);
        assert_eq!(
            memory("", "hi", Some(&long_model), None).err(),
            Some(Invalid::ModelTooLong)
        );
        assert!(memory("", "hi", Some(&long_model[2..]), None).is_ok());
        let mut metadata = Metadata::new();
        metadata.insert("k".into(), Value::String("x".repeat(METADATA_BYTES_MAX)));
        assert_eq!(
            memory("", "hi", None, Some(metadata)).err(),
            Some(Invalid::MetadataTooLarge)
        );
        let at = |ms| to_new_memory("", Role::User, "hi".into(), ms, None, None).err();
        assert_eq!(at(crate::time::MS_MAX), None);
        assert_eq!(at(0), None);
        assert_eq!(
            at(crate::time::MS_MAX + 1),
            Some(Invalid::CreatedAtOutOfRange)
        );
        assert_eq!(at(-1), Some(Invalid::CreatedAtOutOfRange));
        assert_eq!(at(i64::MAX), Some(Invalid::CreatedAtOutOfRange));
        assert_eq!(check_text_length("ééé", 3), Ok(()));
        assert_eq!(
            check_text_length("éééé", 3),
            Err(Invalid::TextTooLong { max: 3 })
        );
        // The memory API's words and an upload line's words for the same check.
        assert_eq!(Invalid::ModelTooLong.api_error().status.as_u16(), 413);
        assert_eq!(Invalid::ModelTooLong.api_error().code, "model_too_long");
        assert_eq!(
            Invalid::SessionTooLong.to_string(),
            "`session_id` must be a short string"
        );
    }

    #[test]
    fn mode_precedence_is_body_query_header_suffix() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            MemoryMode::resolve(MemoryMode::Read, &headers, None, None).unwrap(),
            MemoryMode::Read
        );
        headers.insert("x-memory-mode", "none".parse().unwrap());
        assert_eq!(
            MemoryMode::resolve(MemoryMode::Read, &headers, None, None).unwrap(),
            MemoryMode::Off
        );
        assert_eq!(
            MemoryMode::resolve(MemoryMode::Read, &headers, Some("selective"), None).unwrap(),
            MemoryMode::Read
        );
        assert_eq!(
            MemoryMode::resolve(MemoryMode::Read, &headers, Some("off"), Some("all")).unwrap(),
            MemoryMode::On
        );
        assert_eq!(
            MemoryMode::resolve(MemoryMode::On, &headers, None, Some("sometimes"))
                .unwrap_err()
                .status
                .as_u16(),
            400
        );
    }

    #[test]
    fn session_from_body_beats_header() {
        let mut headers = HeaderMap::new();
        headers.insert("x-session-id", "from-header".parse().unwrap());
        assert_eq!(
            session_id(Some("from-body"), &headers).unwrap(),
            "from-body"
        );
        assert_eq!(session_id(None, &headers).unwrap(), "from-header");
        assert_eq!(
            session_id(Some(&"x".repeat(300)), &headers)
                .unwrap_err()
                .status
                .as_u16(),
            413
        );
    }
}
