//! The BERT WordPiece tokenizer, read from a Hugging Face `tokenizer.json`, reproducing what
//! the `tokenizers` library does for BERT-family and model2vec models:
//!
//! 1. `BertNormalizer`: drop NUL, U+FFFD and control/format/private-use characters, map
//!    whitespace to spaces, put spaces around CJK ideographs, strip accents (NFD, drop Mn
//!    marks; on by default when lowercasing) and lowercase;
//! 2. `BertPreTokenizer`: split on whitespace and isolate every punctuation character;
//! 3. `WordPiece`: greedy longest-match-first pieces, continuation pieces prefixed (`##`),
//!    a word with any unmatched rest, or longer than `max_input_chars_per_word`, becomes the
//!    unknown token.
//!
//! Differences, all rare in chat text: added tokens written literally in the input (`[MASK]`)
//! are tokenized as text, not matched as special tokens; unassigned code points (Cn) are kept
//! where `tokenizers` drops them. Anything else in `tokenizer.json` (another model type,
//! normalizer or pre-tokenizer) is refused at open with [`Error::Model`].

use super::unicode_class::{NONSPACING_MARK, OTHER, PUNCTUATION_NON_ASCII, in_ranges};
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

/// `max_input_chars_per_word` when the file leaves it out (the `tokenizers` default).
const WORD_CHARS_MAX_DEFAULT: usize = 100;

/// What `BertNormalizer` does, as configured.
#[derive(Debug, Clone, Copy)]
struct Normalizer {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

/// A loaded WordPiece tokenizer.
#[derive(Debug)]
pub(crate) struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    prefix: String,
    word_chars_max: usize,
    normalizer: Option<Normalizer>,
}

impl WordPiece {
    pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::model(path, reason);
        let json: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let model = json
            .get("model")
            .ok_or_else(|| bad("has no \"model\" section".into()))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("?");
        if kind != "WordPiece" {
            return Err(bad(format!(
                "tokenizer model {kind:?} is not supported (only WordPiece)"
            )));
        }
        let vocab: HashMap<String, u32> = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("WordPiece model has no \"vocab\" object".into()))?
            .iter()
            .map(|(piece, id)| {
                id.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .map(|id| (piece.clone(), id))
                    .ok_or_else(|| bad(format!("vocab entry {piece:?} has a non-integer id")))
            })
            .collect::<Result<_>>()?;
        let unk_token = model
            .get("unk_token")
            .and_then(Value::as_str)
            .unwrap_or("[UNK]");
        let unk = *vocab
            .get(unk_token)
            .ok_or_else(|| bad(format!("unknown token {unk_token:?} is not in the vocab")))?;
        let prefix = model
            .get("continuing_subword_prefix")
            .and_then(Value::as_str)
            .unwrap_or("##")
            .to_owned();
        let word_chars_max = model
            .get("max_input_chars_per_word")
            .and_then(Value::as_u64)
            .map_or(WORD_CHARS_MAX_DEFAULT, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            });

        let normalizer = match json.get("normalizer") {
            None | Some(Value::Null) => None,
            Some(n) if n.get("type").and_then(Value::as_str) == Some("BertNormalizer") => {
                let flag = |key: &str, default: bool| {
                    n.get(key).and_then(Value::as_bool).unwrap_or(default)
                };
                let lowercase = flag("lowercase", true);
                Some(Normalizer {
                    clean_text: flag("clean_text", true),
                    handle_chinese_chars: flag("handle_chinese_chars", true),
                    // null means "follow lowercase", as in `tokenizers`.
                    strip_accents: flag("strip_accents", lowercase),
                    lowercase,
                })
            }
            Some(n) => {
                return Err(bad(format!(
                    "normalizer {} is not supported (only BertNormalizer)",
                    n.get("type").unwrap_or(&Value::Null)
                )));
            }
        };
        match json
            .get("pre_tokenizer")
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
        {
            Some("BertPreTokenizer") => {}
            other => {
                return Err(bad(format!(
                    "pre-tokenizer {other:?} is not supported (only BertPreTokenizer)"
                )));
            }
        }
        Ok(Self {
            vocab,
            unk,
            prefix,
            word_chars_max,
            normalizer,
        })
    }

    /// The id of `token` (`[CLS]`, `[SEP]`), if the vocabulary has it.
    pub(crate) fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    pub(crate) fn unk_id(&self) -> u32 {
        self.unk
    }

    /// Largest id in the vocabulary (the embedding matrix needs a row for each).
    pub(crate) fn id_max(&self) -> u32 {
        self.vocab.values().copied().max().unwrap_or(0)
    }

    /// Appends the ids of `text`'s pieces to `out`, stopping once `out` holds `tokens_max`
    /// (so a 100 kB message costs a normalization pass, not a full tokenization).
    pub(crate) fn encode(&self, text: &str, tokens_max: usize, out: &mut Vec<u32>) {
        let normalized = match self.normalizer {
            Some(n) => normalize(n, text),
            None => text.to_owned(),
        };
        let mut word_start: Option<usize> = None;
        for (i, c) in normalized.char_indices() {
            if out.len() >= tokens_max {
                return;
            }
            let punct = is_punctuation(c);
            if c.is_whitespace() || punct {
                if let Some(start) = word_start.take() {
                    self.word(&normalized[start..i], tokens_max, out);
                }
                if punct && out.len() < tokens_max {
                    self.word(&normalized[i..i + c.len_utf8()], tokens_max, out);
                }
            } else if word_start.is_none() {
                word_start = Some(i);
            }
        }
        if let Some(start) = word_start {
            self.word(&normalized[start..], tokens_max, out);
        }
    }

    /// WordPiece of one pre-token: greedy longest match from the left.
    fn word(&self, word: &str, tokens_max: usize, out: &mut Vec<u32>) {
        if word.chars().count() > self.word_chars_max {
            out.push(self.unk);
            return;
        }
        let mark = out.len();
        let mut start = 0;
        let mut candidate = String::with_capacity(word.len() + self.prefix.len());
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                candidate.clear();
                if start > 0 {
                    candidate.push_str(&self.prefix);
                }
                candidate.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(&candidate) {
                    found = Some(id);
                    break;
                }
                // Shorten by one character (end stays on a char boundary).
                end = word[..end]
                    .char_indices()
                    .next_back()
                    .map_or(start, |(j, _)| j);
            }
            let Some(id) = found else {
                out.truncate(mark);
                out.push(self.unk);
                return;
            };
            out.push(id);
            start = end;
        }
        // `encode` calls this only while `out` has room, so at least one piece stays.
        out.truncate(tokens_max);
    }
}

fn normalize(n: Normalizer, text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if n.clean_text {
            if c == '\0' || c == '\u{fffd}' || in_ranges(OTHER, c) {
                continue;
            }
            if c.is_whitespace() {
                s.push(' ');
                continue;
            }
        }
        if n.handle_chinese_chars && is_cjk(c) {
            s.push(' ');
            s.push(c);
            s.push(' ');
        } else {
            s.push(c);
        }
    }
    if n.strip_accents {
        s = s
            .nfd()
            .filter(|&c| !in_ranges(NONSPACING_MARK, c))
            .collect();
    }
    if n.lowercase {
        s = s.chars().flat_map(char::to_lowercase).collect();
    }
    s
}

/// The CJK ideograph blocks BERT isolates like punctuation (its `_is_chinese_char`).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// BERT's punctuation: any ASCII punctuation (which includes symbols like `$` and `+`) or a
/// Unicode P* character.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || (!c.is_ascii() && in_ranges(PUNCTUATION_NON_ASCII, c))
}
