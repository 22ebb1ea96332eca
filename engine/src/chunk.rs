//! Splitting long messages into overlapping chunks, each stored as its own record.
//!
//! Why chunk at all: one vector for a 20 kB message averages its topics into mush, and BM25
//! length normalisation buries it. Chunks keep each record about one thing.

/// Longest chunk, in characters. About 250 tokens of English: inside the window of every
/// common embedding model (256-512 tokens), and short enough that one record is about one
/// topic; a typical chat turn (median well under 500 characters) stays whole.
pub const CHUNK_CHARS_MAX: usize = 1000;

/// Characters shared by consecutive chunks, so a sentence cut at a boundary still appears
/// whole in one of them (about one to two sentences).
pub const CHUNK_OVERLAP_CHARS: usize = 150;

/// How far back from the hard limit we look for whitespace to cut at, in characters.
const CUT_SEARCH_CHARS: usize = 200;

const _: () = assert!(CHUNK_OVERLAP_CHARS + CUT_SEARCH_CHARS < CHUNK_CHARS_MAX);

/// Splits `text` into chunks of at most [`CHUNK_CHARS_MAX`] characters that overlap by about
/// [`CHUNK_OVERLAP_CHARS`], cutting at whitespace when there is some near the limit. Texts up
/// to the limit come back as one chunk, unchanged. Always returns at least one chunk.
pub fn chunk_text(text: &str) -> Vec<&str> {
    // At most CHUNK_CHARS_MAX bytes is at most that many chars: most chat turns (ingest
    // chunks every message twice) return here without collecting their char offsets.
    if text.len() <= CHUNK_CHARS_MAX {
        return vec![text];
    }
    // Byte offset of every char boundary, plus the end, so we can count in characters.
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let n_chars = bounds.len() - 1;
    if n_chars <= CHUNK_CHARS_MAX {
        return vec![text];
    }
    let chars: Vec<char> = text.chars().collect();
    let mut chunks = Vec::new();
    let mut start = 0usize;
    loop {
        let hard_end = start + CHUNK_CHARS_MAX;
        if hard_end >= n_chars {
            chunks.push(&text[bounds[start]..]);
            break;
        }
        // Cut just after the last whitespace within the search window, else at the hard limit.
        let window_start = hard_end - CUT_SEARCH_CHARS;
        let end = (window_start..hard_end)
            .rev()
            .find(|&i| chars[i].is_whitespace())
            .map_or(hard_end, |i| i + 1);
        chunks.push(&text[bounds[start]..bounds[end]]);
        // Step back by the overlap, then forward to a word start so chunks begin cleanly.
        let mut next = end - CHUNK_OVERLAP_CHARS;
        while next < end && next > start && !chars[next - 1].is_whitespace() {
            next += 1;
        }
        if next >= end {
            next = end - CHUNK_OVERLAP_CHARS;
        }
        start = next;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(chunk_text(""), vec![""]);
        let t = "a".repeat(CHUNK_CHARS_MAX);
        assert_eq!(chunk_text(&t), vec![t.as_str()]);
    }

    #[test]
    fn long_text_chunks_cover_everything_with_overlap() {
        let words: Vec<String> = (0..2000).map(|i| format!("w{i}é")).collect();
        let text = words.join(" ");
        let chunks = chunk_text(&text);
        assert!(chunks.len() > 1);
        for c in &chunks {
            assert!(c.chars().count() <= CHUNK_CHARS_MAX);
        }
        // Every word appears in some chunk, and consecutive chunks share text.
        for w in &words {
            assert!(chunks.iter().any(|c| c.contains(w.as_str())), "{w}");
        }
        for pair in chunks.windows(2) {
            let tail: String = pair[0]
                .chars()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            assert!(pair[1].contains(tail.trim()), "no overlap");
        }
        assert!(text.ends_with(chunks.last().unwrap()));
    }

    #[test]
    fn text_without_whitespace_is_cut_hard() {
        let text = "x".repeat(3 * CHUNK_CHARS_MAX);
        let chunks = chunk_text(&text);
        assert!(chunks.len() >= 3);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_CHARS_MAX));
    }
}
