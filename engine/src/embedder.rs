//! Embedders turn text into unit vectors. [`Embedder`] is the plug-in point (an
//! OpenAI-compatible endpoint or a local model later); [`BuiltinEmbedder`] is the default
//! that needs no network and no model file.
//!
//! The built-in embedder is honest about what it is: a *lexical* sketch, not a semantic
//! model. It hashes three kinds of features of the analyzed text into a fixed number of
//! dimensions with a random sign (the "hashing trick"), so cosine similarity approximates
//! the weighted overlap of:
//! - word unigrams (stopwords dropped, Porter-stemmed) — the main signal;
//! - word bigrams of adjacent content words — phrases ("support group");
//! - character 3–5-grams of each content word with boundary marks — typos, inflections
//!   the stemmer misses, compounds ("educaton" still meets "education").
//!
//! Term frequencies are sublinear (1 + ln tf) and each word's character n-grams share one
//! word's worth of weight, so long words do not dominate. It cannot know that "identity"
//! and "transgender" are related; fused with BM25 it adds fuzzy matching, not meaning.

use crate::analyzer::Analysis;
use crate::error::{Error, Result};

/// What an embedder's vectors capture; retrieval defaults (fusion weights, the relevance
/// gate) depend on it (`policy.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbedderKind {
    /// Hashed words and character n-grams (the built-in embedder): a fuzzy BM25, no meaning.
    Lexical,
    /// A static (model2vec) model: meaning per word piece, cosines on their own scale.
    Static,
    /// A transformer sentence encoder (BERT family, or a remote model).
    Transformer,
    /// A retrieval-trained transformer (multilingual-e5): questions and stored texts are
    /// embedded differently ([`Embedder::embed_query_batch`]) and its cosines carry meaning
    /// strongly enough to weigh as much as BM25.
    Retrieval,
}

/// Turns texts into vectors of `dim()` floats with unit L2 norm (a retrieval model's stored
/// memory vectors, [`Embedder::embed_memories`], are a mix of two unit vectors: norm ≤ 1).
///
/// Fallible and batched, so an embedder that calls a service or runs a heavy model can say
/// it failed (ingest is then not acknowledged, and nothing is written) and amortise its
/// cost over a request's texts. The vault checks every returned batch: one vector per text,
/// of `dim()` finite floats, or the operation fails with [`Error::Embedder`].
pub trait Embedder: Send + Sync {
    /// Names the algorithm, its version and dimension; a vault refuses vectors from
    /// another id.
    fn id(&self) -> &str;
    fn dim(&self) -> usize;
    fn kind(&self) -> EmbedderKind;

    /// One vector per text, in order.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;

    /// The vectors of search queries. A retrieval-trained model embeds a question unlike a
    /// stored text (e5's `query: ` prefix); every other embedder returns
    /// [`Embedder::embed_batch`].
    fn embed_query_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_batch(texts)
    }

    /// [`Embedder::embed_batch`] of one text.
    fn embed(&self, text: &str) -> Result<Vec<f32>> {
        self.embed_batch(&[text])?
            .pop()
            .ok_or_else(|| Error::embedder(self.id(), "returned no vector"))
    }

    /// [`Embedder::embed_batch`] given each text's [`Analysis`] (`analyses[i]` is
    /// `texts[i]`'s), which ingest computes once per record for the BM25 index anyway; an
    /// embedder that analyses text the same way (the built-in one) skips its own pass. Must
    /// return exactly what `embed_batch(texts)` returns.
    fn embed_analyzed_batch(
        &self,
        texts: &[&str],
        analyses: &[&Analysis],
    ) -> Result<Vec<Vec<f32>>> {
        let _ = analyses;
        self.embed_batch(texts)
    }

    /// The cosine (query vector · stored vector) at which a memory that shares no word with
    /// the query still counts as relevant to a prepare, as measured for this embedder's
    /// vectors; `None` when none was (the operator must set `retrieval.similarity_min`). By
    /// default the measured value of its kind (`policy::similarity_min_of`).
    fn similarity_min(&self) -> Option<f32> {
        crate::policy::similarity_min_of(self.kind())
    }

    /// The vectors of stored memories: `indexed[i]` is memory `i`'s text with its context
    /// (what BM25 indexes, analysed as `analyses[i]`) and `own[i]` its text alone. By default
    /// the vector of `indexed`; a retrieval model returns [`memory_vector`] of the two
    /// texts' vectors, so a memory matches a question about itself and one about its
    /// context, in one stored vector.
    fn embed_memories(
        &self,
        own: &[&str],
        indexed: &[&str],
        analyses: &[&Analysis],
    ) -> Result<Vec<Vec<f32>>> {
        let _ = own;
        self.embed_analyzed_batch(indexed, analyses)
    }
}

/// Weight of the text-with-context vector in a retrieval model's stored memory vector
/// ([`memory_vector`]; the own text's vector has the rest). Measured with
/// multilingual-e5-small on LoCoMo, leave-one-conversation-out (`docs/benchmarks.md`): the
/// folds, choosing among 0.5, 0.7 and the context vector alone on their three training
/// conversations, chose 0.7 in two of four (0.5 and the context vector one each); held out
/// with each fixed, 0.7 gives the recall@10 of 0.5 and 0.01 more recall@5.
pub const MEMORY_CONTEXT_WEIGHT: f32 = 0.7;

/// The stored vector of a retrieval model's memory, from the unit vectors `with_context`
/// (`c`, its text with context) and `alone` (`o`, its own text):
/// `w·c + (1 − w)·o` with `w` = [`MEMORY_CONTEXT_WEIGHT`], **not rescaled**. A query's dot
/// product with it is exactly `w·cos(q, c) + (1 − w)·cos(q, o)`: two vectors per memory,
/// fused with fixed weights, in one stored vector. Its norm, `√(w² + (1−w)² + 2w(1−w)·cos(c,
/// o))`, is at most 1 (0.95–1 for e5, whose vectors of related texts lie close). Rescaling it
/// to unit length ([`mean_direction`], what the vault stored before) divides each memory's
/// score by that norm, which lifts the memories whose context is least like their own text:
/// on LoCoMo that cost 0.01–0.02 of recall@10 held out.
pub fn memory_vector(with_context: &[f32], alone: &[f32]) -> Vec<f32> {
    let w = MEMORY_CONTEXT_WEIGHT;
    with_context
        .iter()
        .zip(alone)
        .map(|(c, o)| w * c + (1.0 - w) * o)
        .collect()
}

/// The unit vector along `a + b` (`a` when the sum vanishes): a cosine against it is the
/// mean of the cosines against `a` and `b`, scaled by `2 / |a + b|`, close to constant when
/// `a` and `b` are near (a memory's own text and its text with context).
pub fn mean_direction(a: &[f32], b: &[f32]) -> Vec<f32> {
    let sum: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm.is_finite() && norm > 1e-6 {
        sum.into_iter().map(|x| x / norm).collect()
    } else {
        a.to_vec()
    }
}

/// `embedder`'s vectors for `texts`, checked: one per text, each of the embedder's
/// dimension, every float finite. An embedder that breaks its contract fails the operation
/// with [`Error::Embedder`] instead of storing or searching garbage.
pub(crate) fn checked(
    embedder: &dyn Embedder,
    texts: usize,
    vectors: Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let vectors = vectors?;
    let fail = |reason: String| Err(Error::embedder(embedder.id(), reason));
    if vectors.len() != texts {
        return fail(format!(
            "returned {} vectors for {texts} texts",
            vectors.len()
        ));
    }
    let dim = embedder.dim();
    if let Some(v) = vectors.iter().find(|v| v.len() != dim) {
        return fail(format!(
            "returned a vector of length {}, not {dim}",
            v.len()
        ));
    }
    if vectors.iter().flatten().any(|x| !x.is_finite()) {
        return fail("returned a vector with a NaN or infinite value".into());
    }
    Ok(vectors)
}

/// Output dimension of the built-in embedder.
pub const BUILTIN_DIM: usize = 384;
/// Algorithm version: bump on any change to features, weights, hashing or the analyzer.
pub const BUILTIN_VERSION: u32 = 1;

/// Feature weights, relative to a content word's unigram (1.0).
const BIGRAM_WEIGHT: f32 = 0.5;
/// Total weight of one word's character n-grams together.
const CHAR_NGRAMS_WEIGHT: f32 = 0.6;
const CHAR_NGRAM_MIN: usize = 3;
const CHAR_NGRAM_MAX: usize = 5;
const _: () = assert!(
    CHAR_NGRAM_MIN == 3 && CHAR_NGRAM_MAX == 5,
    "CharNgrams::add lays out 3..=5"
);

/// Seeds that keep the three feature families in separate hash spaces.
const SEED_UNIGRAM: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_BIGRAM: u64 = 0xc2b2_ae3d_27d4_eb4f;
const SEED_CHAR: u64 = 0x1656_67b1_9e37_79f9;
/// The feature an input without any content word (empty, or only stopwords) maps to, so
/// that every output is a unit vector and cosine is always defined.
const EMPTY_FEATURE: &str = "\u{0}empty";

/// The default, network-free embedder. Deterministic across runs and platforms (its hash
/// is written out here, not `std`'s randomly seeded one).
#[derive(Debug, Clone)]
pub struct BuiltinEmbedder {
    id: String,
}

impl BuiltinEmbedder {
    pub fn new() -> Self {
        Self {
            id: format!("builtin-hash-v{BUILTIN_VERSION}-{BUILTIN_DIM}"),
        }
    }
}

impl Default for BuiltinEmbedder {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a over `bytes` then a SplitMix64 finaliser so low bits are well mixed. Only integer
/// arithmetic, `sqrt` and division (both correctly rounded by IEEE 754) enter the output.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    hash_parts(seed, &[bytes])
}

/// [`hash`] of the concatenation of `parts`, without building it.
fn hash_parts(seed: u64, parts: &[&[u8]]) -> u64 {
    let h = parts.iter().fold(fnv_start(seed), |h, p| fnv_feed(h, p));
    fnv_finish(h)
}

/// [`hash`] in three steps, so n-grams that share a prefix can share its FNV pass.
fn fnv_start(seed: u64) -> u64 {
    0xcbf2_9ce4_8422_2325 ^ seed
}

fn fnv_feed(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn fnv_finish(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// `1 + ln(tf)`, written out for tf 1..=16 (and flat beyond) so the output does not depend
/// on a platform's `ln` rounding: the vectors must be bit-identical everywhere.
const SUBLINEAR_TF: [f32; 16] = [
    1.0, 1.693147, 2.098612, 2.386294, 2.609438, 2.791759, 2.94591, 3.079442, 3.197225, 3.302585,
    3.397895, 3.484907, 3.564949, 3.639057, 3.70805, 3.772589,
];

fn sublinear_tf(count: u32) -> f32 {
    SUBLINEAR_TF[(count.clamp(1, 16) - 1) as usize]
}

/// Collected features: (hash, summed weight, occurrences).
struct Features(Vec<(u64, f32, u32)>);

impl Features {
    fn push(&mut self, h: u64, weight: f32) {
        self.0.push((h, weight, 1));
    }

    /// Merges equal features and writes them into `out` with sublinear tf and a sign bit.
    fn project(mut self, out: &mut [f32]) {
        // The sort and the summation order below decide the output bits: both must stay
        // exactly as they are (`output_is_pinned`, `matches_the_reference_embedder`).
        self.0.sort_unstable_by_key(|f| f.0);
        self.0.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
                kept.2 += 1;
            }
            same
        });
        let dim = out.len() as u64;
        for (h, weight_sum, count) in self.0 {
            let mean = weight_sum / count as f32;
            let value = mean * sublinear_tf(count);
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            out[((h & 0x7fff_ffff_ffff_ffff) % dim) as usize] += sign * value;
        }
    }
}

impl Embedder for BuiltinEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        BUILTIN_DIM
    }

    fn kind(&self) -> EmbedderKind {
        EmbedderKind::Lexical
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }

    fn embed_analyzed_batch(
        &self,
        _texts: &[&str],
        analyses: &[&Analysis],
    ) -> Result<Vec<Vec<f32>>> {
        Ok(analyses.iter().map(|a| self.embed_analysis(a)).collect())
    }
}

/// Features one content word adds, for sizing: a unigram, a bigram and the character
/// 3-5-grams of a typical 6-8 letter word.
const FEATURES_PER_WORD: usize = 24;

impl BuiltinEmbedder {
    /// The vector of `text`: what [`Embedder::embed`] returns, without the `Result` (the
    /// built-in embedder cannot fail).
    pub fn vector(&self, text: &str) -> Vec<f32> {
        self.embed_analysis(&Analysis::of(text))
    }

    /// The vector of an analysed text: per content word, its term's unigram, the bigram with
    /// the previous term, and its token's character n-grams, in that order.
    fn embed_analysis(&self, analysis: &Analysis) -> Vec<f32> {
        let mut features = Features(Vec::with_capacity(
            analysis.n_terms() * FEATURES_PER_WORD + 1,
        ));
        let mut ngrams = CharNgrams::default();
        let mut previous: Option<&str> = None;
        for (token, term) in analysis.words() {
            features.push(hash(SEED_UNIGRAM, term.as_bytes()), 1.0);
            if let Some(prev) = previous {
                let gram = [prev.as_bytes(), b" ", term.as_bytes()];
                features.push(hash_parts(SEED_BIGRAM, &gram), BIGRAM_WEIGHT);
            }
            ngrams.add(token, &mut features);
            previous = Some(term);
        }
        if features.0.is_empty() {
            features.push(hash(SEED_UNIGRAM, EMPTY_FEATURE.as_bytes()), 1.0);
        }
        let mut out = vec![0.0f32; BUILTIN_DIM];
        features.project(&mut out);
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|x| *x /= norm);
        } else {
            // Features cancelled exactly (astronomically unlikely): fall back to the empty
            // text's vector rather than return zeros.
            return self.vector("");
        }
        out
    }
}

/// Buffers for the character n-grams of one word after another.
#[derive(Default)]
struct CharNgrams {
    /// `<word>` as bytes.
    bytes: Vec<u8>,
    /// Byte offset of every char of `bytes`, then its length: n-gram `i` of `n` chars is
    /// `bytes[bounds[i]..bounds[i + n]]`, the UTF-8 of those chars as the hash has always read.
    bounds: Vec<usize>,
    /// The n-gram hashes in push order: every 3-gram, then every 4-gram, then every 5-gram.
    hashes: Vec<u64>,
}

impl CharNgrams {
    /// Character n-grams of `<word>`, sharing [`CHAR_NGRAMS_WEIGHT`] between them.
    fn add(&mut self, word: &str, features: &mut Features) {
        self.bytes.clear();
        self.bytes.push(b'<');
        self.bytes.extend_from_slice(word.as_bytes());
        self.bytes.push(b'>');
        self.bounds.clear();
        if word.is_ascii() {
            self.bounds.extend(0..=self.bytes.len());
        } else {
            self.bounds.push(0);
            self.bounds.extend(word.char_indices().map(|(i, _)| i + 1));
            self.bounds.extend([self.bytes.len() - 1, self.bytes.len()]);
        }
        let n_chars = self.bounds.len() - 1;
        let count: usize = (CHAR_NGRAM_MIN..=CHAR_NGRAM_MAX)
            .map(|n| n_chars.saturating_sub(n - 1))
            .sum();
        if count == 0 {
            return;
        }
        let weight = CHAR_NGRAMS_WEIGHT / (count as f32).sqrt();
        // The n-grams starting at one char extend each other, so one FNV pass per start
        // yields all three; they are pushed in the order the features have always had.
        let windows = |n: usize| n_chars.saturating_sub(n - 1);
        let block = [0, windows(3), windows(3) + windows(4)];
        self.hashes.clear();
        self.hashes.resize(count, 0);
        for start in 0..windows(CHAR_NGRAM_MIN) {
            let mut h = fnv_start(SEED_CHAR);
            h = fnv_feed(h, &self.bytes[self.bounds[start]..self.bounds[start + 2]]);
            for (n, offset) in (CHAR_NGRAM_MIN..=CHAR_NGRAM_MAX).zip(block) {
                if start + n > n_chars {
                    break;
                }
                h = fnv_feed(
                    h,
                    &self.bytes[self.bounds[start + n - 1]..self.bounds[start + n]],
                );
                self.hashes[offset + start] = fnv_finish(h);
            }
        }
        for &h in &self.hashes {
            features.push(h, weight);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A query's dot product with a stored memory vector is the fixed mix of its cosines
    /// with the two texts, whatever the angle between them (no rescaling).
    #[test]
    fn memory_vector_mixes_the_two_cosines() {
        let w = super::MEMORY_CONTEXT_WEIGHT;
        let c = [0.6f32, 0.8, 0.0];
        for o in [[0.0f32, 1.0, 0.0], [0.0, 0.6, 0.8], [1.0, 0.0, 0.0]] {
            let m = super::memory_vector(&c, &o);
            for q in [[1.0f32, 0.0, 0.0], [0.0, 0.0, 1.0], [0.48, 0.64, 0.6]] {
                let want = w * cos(&q, &c) + (1.0 - w) * cos(&q, &o);
                assert!((cos(&q, &m) - want).abs() < 1e-6, "{o:?} {q:?}");
            }
            assert!(cos(&m, &m) <= 1.0 + 1e-6);
        }
    }

    #[test]
    fn mean_direction_is_the_unit_bisector() {
        let m = super::mean_direction(&[1.0, 0.0], &[0.0, 1.0]);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((m[0] - h).abs() < 1e-6 && (m[1] - h).abs() < 1e-6);
        // Opposite vectors have no mean direction: the first is kept.
        assert_eq!(
            super::mean_direction(&[1.0, 0.0], &[-1.0, 0.0]),
            vec![1.0, 0.0]
        );
    }

    use super::*;
    use crate::analyzer::{arbitrary_text, reference};
    use proptest::prelude::*;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    proptest! {
        #[test]
        fn matches_the_reference_embedder(text in arbitrary_text()) {
            let e = BuiltinEmbedder::new();
            let expected = bits(&reference::embed(&text));
            prop_assert_eq!(bits(&e.vector(&text)), expected.clone());
            prop_assert_eq!(bits(&e.embed_analyzed_batch(&[&text], &[&Analysis::of(&text)]).unwrap()[0]), expected);
        }
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    const PINNED_FINGERPRINT: u64 = 0x22b4_1f3a_8f3b_b307;

    #[test]
    fn id_encodes_version_and_dim() {
        let e = BuiltinEmbedder::new();
        assert_eq!(e.id(), "builtin-hash-v1-384");
        assert_eq!(e.dim(), 384);
    }

    #[test]
    fn deterministic_and_unit_norm() {
        let e = BuiltinEmbedder::new();
        for text in [
            "",
            "the of and",
            "Hello world",
            "Caroline went to a LGBTQ support group",
            "東京",
        ] {
            let a = e.vector(text);
            assert_eq!(a.len(), BUILTIN_DIM);
            assert_eq!(a, e.vector(text));
            let norm = cos(&a, &a).sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{text:?}: norm {norm}");
        }
        let v = e.vector("painting sunrise");
        let nonzero = v.iter().filter(|x| **x != 0.0).count();
        assert!(nonzero > 10 && nonzero < 60, "{nonzero} nonzero dims");
    }

    #[test]
    fn output_is_pinned() {
        // Stored vectors depend on these exact bits: if this fails, the algorithm changed
        // and BUILTIN_VERSION (hence the id, which vaults pin) must be bumped.
        let e = BuiltinEmbedder::new();
        let mut bits = Vec::new();
        for text in [
            "",
            "Caroline: I went to a LGBTQ support group yesterday.",
            "Ünïcode café 2023",
        ] {
            bits.extend(
                e.vector(text)
                    .iter()
                    .flat_map(|x| x.to_bits().to_le_bytes()),
            );
        }
        assert_eq!(
            hash(0, &bits),
            PINNED_FINGERPRINT,
            "fingerprint {:#x}",
            hash(0, &bits)
        );
    }

    #[test]
    fn similar_texts_are_closer() {
        let e = BuiltinEmbedder::new();
        let q = e.vector("When did Melanie paint a sunrise?");
        let near = e.vector("Melanie: I painted that sunrise last year, it was so calming.");
        let far = e.vector("Caroline: I went to a support group yesterday.");
        assert!(cos(&q, &near) > cos(&q, &far) + 0.1);
        // Character n-grams forgive a typo the stemmer cannot.
        let typo = e.vector("educaton");
        let right = e.vector("education counseling");
        let other = e.vector("painting a sunset");
        assert!(
            cos(&typo, &right) > cos(&typo, &other) + 0.05,
            "{} vs {}",
            cos(&typo, &right),
            cos(&typo, &other)
        );
    }

    #[test]
    fn stopword_only_texts_share_the_empty_vector() {
        let e = BuiltinEmbedder::new();
        assert_eq!(e.vector(""), e.vector("the and of it"));
    }
}
