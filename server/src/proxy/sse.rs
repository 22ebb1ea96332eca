//! An incremental Server-Sent Events parser: bytes in as they arrive, whole events out.
//!
//! Provider streams split events across TCP reads at arbitrary byte positions (even inside
//! a UTF-8 sequence), so the parser keeps the unfinished line and completes it on the next
//! push. It follows the SSE spec's line rules for `\n` and `\r\n` endings, `:` comments,
//! `event:` and multi-line `data:` fields; bare-`\r` line endings (which no provider sends)
//! are not supported.

use bytes::{Bytes, BytesMut};

/// Longest line held while waiting for its end; a provider sending more without a newline
/// is broken or hostile, and the stream is failed instead of growing memory without bound.
pub(crate) const SSE_LINE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, if any (Anthropic names every event; OpenAI sends none).
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// The stream broke the line limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LineTooLong;

/// Parser state between pushes.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes of the line not yet ended by `\n`.
    pending: BytesMut,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds `chunk`, appending every event it completes to `out`.
    pub(crate) fn push(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<SseEvent>,
    ) -> Result<(), LineTooLong> {
        let mut rest = chunk;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(newline);
            rest = &tail[1..];
            if self.pending.is_empty() {
                self.line(head, out);
            } else {
                self.pending.extend_from_slice(head);
                let line = std::mem::take(&mut self.pending);
                self.line(&line, out);
            }
        }
        if self.pending.len() + rest.len() > SSE_LINE_BYTES_MAX {
            return Err(LineTooLong);
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// Ends the stream: an event left without its blank line is dispatched, as browsers do
    /// not but providers that close right after the last `data:` line expect.
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.line(&line, out);
        }
        self.dispatch(out);
    }

    /// The bytes that end whatever the stream so far left open (a line without its newline,
    /// an event without its blank line). A relay that forwards provider bytes unchanged
    /// writes these before an event of its own, so that event is never merged into the
    /// provider's unfinished one.
    pub(crate) fn open_event_terminator(&self) -> &'static [u8] {
        if !self.pending.is_empty() {
            b"\n\n"
        } else if self.has_data || self.event.is_some() {
            b"\n"
        } else {
            b""
        }
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = Some(value.into_owned()),
            _ => {} // `id:` and `retry:` mean nothing to a relay.
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        }
        self.event = None;
        self.has_data = false;
    }
}

/// `data: {json}\n\n` — one OpenAI-style event.
pub(crate) fn data_event(json: &serde_json::Value) -> Bytes {
    let mut text = String::with_capacity(256);
    text.push_str("data: ");
    text.push_str(&json.to_string());
    text.push_str("\n\n");
    Bytes::from(text)
}

/// `event: NAME\ndata: {json}\n\n` — one Anthropic-style event.
pub(crate) fn named_event(name: &str, json: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// The terminator OpenAI clients wait for.
pub(crate) const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            parser.push(chunk, &mut out).unwrap();
        }
        parser.finish(&mut out);
        out
    }

    #[test]
    fn events_survive_any_split() {
        let input = "event: message_start\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: line1\ndata: line2\n\ndata: caf\u{e9} \u{1f600}\n\ndata: [DONE]\n\n";
        let expected = vec![
            SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: None,
                data: "line1\nline2".into(),
            },
            SseEvent {
                event: None,
                data: "caf\u{e9} \u{1f600}".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for piece in 1..=input.len() {
            assert_eq!(
                parse_in_pieces(input.as_bytes(), piece),
                expected,
                "piece {piece}"
            );
        }
    }

    #[test]
    fn unterminated_last_event_is_dispatched_at_finish() {
        let out = parse_in_pieces(b"data: {\"x\":2}", 4);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, "{\"x\":2}");
        assert!(
            parse_in_pieces(b"event: ping\n\n", 3).is_empty(),
            "no data, no event"
        );
    }

    #[test]
    fn endless_line_is_refused() {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        let chunk = vec![b'a'; SSE_LINE_BYTES_MAX / 2 + 1];
        parser.push(&chunk, &mut out).unwrap();
        assert_eq!(parser.push(&chunk, &mut out), Err(LineTooLong));
    }

    #[test]
    fn events_render_in_wire_form() {
        let v = serde_json::json!({"k": "v"});
        assert_eq!(&data_event(&v)[..], b"data: {\"k\":\"v\"}\n\n");
        assert_eq!(
            &named_event("ping", &v)[..],
            b"event: ping\ndata: {\"k\":\"v\"}\n\n"
        );
    }
}
