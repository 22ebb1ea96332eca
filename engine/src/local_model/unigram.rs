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

use std::collections::HashMap;

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

/// A loaded Unigram vocabulary.
#[derive(Debug)]
pub(crate) struct Unigram {
    ids: HashMap<Box<[u8]>, u32>,
    scores: Vec<f32>,
    unk: u32,
    unk_score: f32,
    piece_bytes_max: usize,
    normalizer: CharMap,
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
        })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.scores.len()
    }

    /// Appends the ids of `text`'s pieces to `out` until `out` holds `len_max` ids.
    pub(crate) fn encode(&self, text: &str, len_max: usize, s: &mut Scratch, out: &mut Vec<u32>) {
        self.normalize(text, &mut s.text);
        let text = std::mem::take(&mut s.text);
        for word in split_words(&text) {
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
        let push = |out: &mut String, c: char| {
            let c = if c == ' ' { META } else { c };
            // Collapse runs of spaces (already turned into META) to one.
            if c == META && out.ends_with(META) {
                return;
            }
            out.push(c);
        };
        for c in text.chars() {
            match self.normalizer.get(c) {
                Some(to) => to.iter().for_each(|&c| push(out, c)),
                None => push(out, c),
            }
        }
        if !out.starts_with(META) {
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
