//! The answer text the proxy stores, bounded: a streamed answer is relayed to the client
//! whole, however long, but at most [`STORED_ANSWER_BYTES_MAX`] bytes of it are kept (in
//! memory while it streams, then in the vault), followed by a marker saying how much was
//! left out. Before this bound a provider (or a key's caller asking for an endless answer)
//! made the server hold and store the whole stream (issue 14 item 3).

/// Most bytes of one answer kept for storing. Far above any chat answer (1 MiB is ~250k
/// tokens), and far below what a runaway stream can reach.
pub(crate) const STORED_ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// An answer's text as it streams in, keeping the first [`STORED_ANSWER_BYTES_MAX`] bytes.
#[derive(Debug, Default)]
pub(crate) struct AnswerText {
    kept: String,
    /// Bytes of the whole answer, kept or not.
    seen: usize,
}

impl AnswerText {
    /// Appends a piece of the answer (only as much as fits the bound is kept, cut at a
    /// character boundary).
    pub(crate) fn push_str(&mut self, piece: &str) {
        self.seen = self.seen.saturating_add(piece.len());
        let room = STORED_ANSWER_BYTES_MAX.saturating_sub(self.kept.len());
        self.kept.push_str(prefix(piece, room));
    }

    /// The answer to store (with the marker if it was longer than the bound) and the size
    /// of the whole answer; leaves this empty.
    pub(crate) fn take(&mut self) -> Answer {
        let seen = std::mem::take(&mut self.seen);
        let mut text = std::mem::take(&mut self.kept);
        if seen > text.len() {
            text.push_str(&marker(text.len(), seen));
        }
        Answer { text, bytes: seen }
    }
}

/// A finished answer: the text to store, bounded, and the bytes of the whole answer as it
/// was relayed — what the key's proxy token budget is charged for, so an answer longer than
/// the bound costs its full length, not the 1 MiB kept of it.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) text: String,
    pub(crate) bytes: usize,
}

/// `text` bounded as [`AnswerText`] bounds a stream (for answers read whole).
pub(crate) fn bounded(text: String) -> String {
    if text.len() <= STORED_ANSWER_BYTES_MAX {
        return text;
    }
    let mut answer = AnswerText::default();
    answer.push_str(&text);
    answer.take().text
}

/// What follows a truncated answer in the vault.
fn marker(kept: usize, seen: usize) -> String {
    format!("\n[answer truncated by MemoryRouter: {kept} of {seen} bytes stored]")
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a character boundary.
fn prefix(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_stream_keeps_the_bound_and_says_what_it_left_out() {
        let mut answer = AnswerText::default();
        answer.push_str("short ");
        answer.push_str("answer");
        let short = answer.take();
        assert_eq!((short.text.as_str(), short.bytes), ("short answer", 12));

        let piece = "é".repeat(1000); // 2,000 bytes of two-byte characters
        let mut answer = AnswerText::default();
        let pieces = STORED_ANSWER_BYTES_MAX / 1000 + 7;
        for _ in 0..pieces {
            answer.push_str(&piece);
        }
        assert!(answer.kept.len() <= STORED_ANSWER_BYTES_MAX);
        let whole = answer.take();
        assert_eq!(whole.bytes, pieces * 2000);
        let stored = whole.text;
        let (text, tail) = stored.split_once("\n[answer truncated").unwrap();
        assert_eq!(text.len(), STORED_ANSWER_BYTES_MAX);
        assert!(text.chars().all(|c| c == 'é'));
        assert!(
            tail.contains(&format!("{} of {} bytes", text.len(), pieces * 2000)),
            "{tail}"
        );
        // Read whole, the same text is stored the same way.
        assert_eq!(bounded(piece.repeat(pieces)), stored);
        assert_eq!(bounded("x".into()), "x");
    }

    #[test]
    fn the_cut_never_splits_a_character() {
        assert_eq!(prefix("aé", 2), "a");
        assert_eq!(prefix("aé", 3), "aé");
        assert_eq!(prefix("é", 0), "");
    }
}
