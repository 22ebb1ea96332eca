//! SentencePiece's compiled normaliser, the `Precompiled` step of a Hugging Face
//! `tokenizer.json` (XLM-R models such as multilingual-e5 and bge-m3 carry SentencePiece's
//! `nmt_nfkc` rules in it: NFKC, control characters dropped, odd spaces made plain).
//!
//! `precompiled_charsmap` (base64 in the JSON) is `trie bytes: u32 LE`, then that many bytes
//! of a Darts double-array trie over UTF-8 byte strings (little-endian `u32` units), then
//! the replacement strings, each ended by a NUL; a trie leaf's value is the byte offset of
//! its replacement.
//!
//! Text is rewritten as Hugging Face `tokenizers` does it (`spm_precompiled`, checked against
//! it in `tests.rs`): per extended grapheme cluster of fewer than 6 bytes, if the trie holds
//! a prefix of it, the **shortest** such prefix's replacement stands for the whole cluster;
//! otherwise each code point is looked up alone and kept when it has no entry. (That first
//! rule drops the rest of a cluster whose prefix matches; it is what SentencePiece-trained
//! models saw, so it is reproduced, not fixed.)

use unicode_segmentation::UnicodeSegmentation;

/// Clusters of this many bytes or more are looked up code point by code point only.
const CLUSTER_BYTES_MAX: usize = 6;

/// A parsed `precompiled_charsmap`.
#[derive(Debug)]
pub(crate) struct Precompiled {
    trie: Vec<u32>,
    /// Replacement strings, NUL-terminated; valid UTF-8 as a whole.
    normalized: String,
}

impl Precompiled {
    /// `None` if `bytes` is shorter than its trie length says, the trie length is not a
    /// multiple of 4, or the replacements are not UTF-8.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if !len.is_multiple_of(4) || rest.len() < len || len == 0 {
            return None;
        }
        let (trie, normalized) = rest.split_at(len);
        let trie = trie
            .chunks_exact(4)
            .map(|u| u32::from_le_bytes([u[0], u[1], u[2], u[3]]))
            .collect();
        let normalized = String::from_utf8(normalized.to_vec()).ok()?;
        Some(Self { trie, normalized })
    }

    /// The value of the shortest key of the trie that is a prefix of `key` (Darts'
    /// `commonPrefixSearch`, first result). A unit outside the array (a corrupt trie) ends
    /// the search.
    fn shortest_prefix(&self, key: &[u8]) -> Option<usize> {
        let has_leaf = |unit: u32| (unit >> 8) & 1 == 1;
        let value = |unit: u32| (unit & 0x7fff_ffff) as usize;
        let label = |unit: u32| unit & 0x8000_00ff;
        let offset = |unit: u32| ((unit >> 10) << ((unit & (1 << 9)) >> 6)) as usize;
        let mut pos = offset(*self.trie.first()?);
        for &c in key {
            if c == 0 {
                break;
            }
            pos ^= usize::from(c);
            let unit = *self.trie.get(pos)?;
            if label(unit) != u32::from(c) {
                return None;
            }
            pos ^= offset(unit);
            if has_leaf(unit) {
                return Some(value(*self.trie.get(pos)?));
            }
        }
        None
    }

    /// The replacement of the shortest prefix of `chunk` the trie holds.
    fn transform(&self, chunk: &str) -> Option<&str> {
        let start = self.shortest_prefix(chunk.as_bytes())?;
        let rest = self.normalized.get(start..)?;
        Some(rest.split('\0').next().unwrap_or(rest))
    }

    /// Appends the normalised `text` to `out` (see the module docs).
    pub(crate) fn normalize(&self, text: &str, out: &mut String) {
        for cluster in text.graphemes(true) {
            if cluster.len() < CLUSTER_BYTES_MAX
                && let Some(to) = self.transform(cluster)
            {
                out.push_str(to);
                continue;
            }
            for (i, c) in cluster.char_indices() {
                match self.transform(&cluster[i..i + c.len_utf8()]) {
                    Some(to) => out.push_str(to),
                    None => out.push(c),
                }
            }
        }
    }
}

/// Standard base64 (with `=` padding, as `tokenizers` writes the charsmap); `None` on any
/// other character or a bad length.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    if !text.len().is_multiple_of(4) || text.len() - bytes.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for quad in bytes.chunks(4) {
        let mut acc = 0u32;
        for &c in quad {
            acc = (acc << 6) | sextet(c)?;
        }
        match quad.len() {
            4 => out.extend_from_slice(&acc.to_be_bytes()[1..]),
            3 => out.extend_from_slice(&(acc << 6).to_be_bytes()[1..3]),
            2 => out.push((acc >> 4) as u8),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("/+8=").unwrap(), [0xff, 0xef]);
        assert!(base64_decode("Zm9").is_none());
        assert!(base64_decode("Zm9v!A==").is_none());
        assert!(base64_decode("Z===").is_none());
    }

    #[test]
    fn corrupt_charsmaps_are_refused_or_harmless() {
        assert!(Precompiled::parse(&[]).is_none());
        assert!(Precompiled::parse(&[8, 0, 0, 0, 1, 2, 3]).is_none());
        assert!(Precompiled::parse(&[3, 0, 0, 0, 1, 2, 3]).is_none());
        // A trie whose units point outside it: every lookup misses, text passes unchanged.
        let p = Precompiled::parse(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, b'x', 0]).unwrap();
        let mut out = String::new();
        p.normalize("héllo ✓", &mut out);
        assert_eq!(out, "héllo ✓");
    }
}
