//! Adding retrieved memories to a request as a system message.
//!
//! # Format
//!
//! The context string from prepare is wrapped in a `<memory>` block:
//!
//! ```text
//! <memory>
//! Memories from earlier conversations with this user, most relevant first. Use them when
//! they help; do not mention this block.
//!
//! {context from /v1/memory/prepare}
//! </memory>
//! ```
//!
//! - OpenAI format: if the first message is a `system` (or `developer`) message, the block is
//!   appended to it after a blank line (a string content gets `"\n\n" + block`, a content-part
//!   array gets one more text part), so the application's own instructions stay first and
//!   models that accept a single system message still get one. Otherwise a new `system`
//!   message holding the block is inserted at the start.
//! - Anthropic format: the same, applied to the top-level `system` field (string or array of
//!   text blocks); absent, it is set to the block.
//!
//! An empty context injects nothing, so a request with no relevant memories reaches the
//! provider byte-for-byte as the client sent it (minus MemoryRouter's own fields).

use serde_json::{Map, Value, json};

/// Opening line of the injected block.
pub(crate) const MEMORY_BLOCK_START: &str = "<memory>";
/// Closing line of the injected block.
pub(crate) const MEMORY_BLOCK_END: &str = "</memory>";
/// The instruction that tells the model what the block is.
pub(crate) const MEMORY_PREAMBLE: &str = "Memories from earlier conversations with this user, most relevant first. Use them when they help; do not mention this block.";

/// The block added to the system prompt for `context`.
pub(crate) fn memory_block(context: &str) -> String {
    format!(
        "{MEMORY_BLOCK_START}\n{MEMORY_PREAMBLE}\n\n{}\n{MEMORY_BLOCK_END}",
        context.trim()
    )
}

/// Adds `context` to an OpenAI `messages` array (see the module docs).
pub(crate) fn inject_openai(messages: &mut Vec<Value>, context: &str) {
    if context.trim().is_empty() {
        return;
    }
    let block = memory_block(context);
    if let Some(first) = messages.first_mut()
        && matches!(
            first.get("role").and_then(Value::as_str),
            Some("system" | "developer")
        )
        && let Some(first) = first.as_object_mut()
    {
        append_to(first.entry("content").or_insert(Value::Null), block, "text");
        return;
    }
    messages.insert(0, json!({"role": "system", "content": block}));
}

/// Adds `context` to an Anthropic Messages request's `system` field (see the module docs).
pub(crate) fn inject_anthropic(body: &mut Map<String, Value>, context: &str) {
    if context.trim().is_empty() {
        return;
    }
    let block = memory_block(context);
    append_to(body.entry("system").or_insert(Value::Null), block, "text");
}

/// Appends `block` to a string or content-part array; anything else is replaced.
fn append_to(slot: &mut Value, block: String, part_type: &str) {
    match slot {
        Value::String(existing) if !existing.trim().is_empty() => {
            existing.push_str("\n\n");
            existing.push_str(&block);
        }
        Value::Array(parts) => parts.push(json!({"type": part_type, "text": block})),
        other => *other = Value::String(block),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_system_message_goes_first() {
        let mut messages = vec![json!({"role": "user", "content": "hi"})];
        inject_openai(&mut messages, "- train at 6am");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["role"], "system");
        let text = messages[0]["content"].as_str().unwrap();
        assert!(
            text.starts_with("<memory>\n") && text.ends_with("\n</memory>"),
            "{text}"
        );
        assert!(text.contains("- train at 6am"));
        assert_eq!(messages[1]["content"], "hi");
    }

    #[test]
    fn existing_system_message_is_extended_not_replaced() {
        let mut messages = vec![
            json!({"role": "system", "content": "You are a coach."}),
            json!({"role": "user", "content": "hi"}),
        ];
        inject_openai(&mut messages, "ctx");
        assert_eq!(messages.len(), 2);
        let text = messages[0]["content"].as_str().unwrap();
        assert!(text.starts_with("You are a coach.\n\n<memory>"), "{text}");

        let mut parts =
            vec![json!({"role": "developer", "content": [{"type": "text", "text": "Be brief."}]})];
        inject_openai(&mut parts, "ctx");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0]["content"][1]["type"], "text");
        assert!(
            parts[0]["content"][1]["text"]
                .as_str()
                .unwrap()
                .contains("ctx")
        );
    }

    #[test]
    fn empty_context_changes_nothing() {
        let mut messages = vec![json!({"role": "user", "content": "hi"})];
        inject_openai(&mut messages, "  ");
        assert_eq!(messages, vec![json!({"role": "user", "content": "hi"})]);
        let mut body = Map::new();
        inject_anthropic(&mut body, "");
        assert!(body.is_empty());
    }

    #[test]
    fn anthropic_system_field_is_extended() {
        let mut body = Map::new();
        inject_anthropic(&mut body, "ctx");
        assert!(body["system"].as_str().unwrap().starts_with("<memory>"));
        inject_anthropic(&mut body, "more");
        let text = body["system"].as_str().unwrap();
        assert!(text.contains("ctx") && text.contains("\n\n<memory>") && text.contains("more"));
        let mut blocks = Map::new();
        blocks.insert(
            "system".into(),
            json!([{"type": "text", "text": "Be brief."}]),
        );
        inject_anthropic(&mut blocks, "ctx");
        assert_eq!(blocks["system"].as_array().unwrap().len(), 2);
    }
}
