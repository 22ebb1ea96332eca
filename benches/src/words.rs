//! Deterministic synthetic text for load and throughput benchmarks.
//!
//! Not evaluation data (retrieval quality is measured on LoCoMo): this only gives benchmarks
//! realistic word counts and a Zipf-shaped vocabulary without shipping a corpus.

/// xorshift64*: tiny, seedable, good enough to pick words.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "morning",
    "training",
    "coach",
    "run",
    "marathon",
    "diet",
    "protein",
    "sleep",
    "meeting",
    "project",
    "deadline",
    "family",
    "sister",
    "brother",
    "dinner",
    "recipe",
    "garden",
    "tomato",
    "guitar",
    "concert",
    "travel",
    "paris",
    "tokyo",
    "flight",
    "hotel",
    "budget",
    "savings",
    "mortgage",
    "doctor",
    "allergy",
    "peanut",
    "medicine",
    "birthday",
    "gift",
    "book",
    "novel",
    "painting",
    "museum",
    "weekend",
    "hiking",
    "mountain",
    "camping",
    "dog",
    "cat",
    "vet",
    "school",
    "exam",
    "physics",
    "python",
    "rust",
    "database",
    "server",
    "release",
    "bug",
    "review",
    "manager",
    "promotion",
    "salary",
    "interview",
    "resume",
    "coffee",
    "tea",
    "breakfast",
    "lunch",
    "yoga",
    "swimming",
    "bike",
    "commute",
    "train",
    "bus",
    "car",
    "insurance",
    "holiday",
    "christmas",
    "wedding",
    "anniversary",
    "movie",
    "series",
    "podcast",
    "language",
    "spanish",
    "french",
    "piano",
    "lesson",
    "teacher",
    "friend",
    "neighbor",
    "party",
    "moved",
    "apartment",
    "rent",
    "furniture",
    "kitchen",
    "plants",
    "volunteer",
    "charity",
    "shelter",
    "adopted",
    "prefers",
    "likes",
    "hates",
    "wants",
    "plans",
    "remember",
    "always",
    "never",
    "usually",
    "tomorrow",
    "yesterday",
    "today",
    "evening",
    "early",
    "late",
    "quick",
];

/// Syllables for the long tail of the vocabulary: real text has a few very common words and
/// thousands of rare ones (names, places, topics), and BM25's cost depends on exactly that
/// spread, so a benchmark over a small flat vocabulary would measure a workload no one has.
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ren", "ta", "vo", "shi", "mar", "den", "el", "qua", "tor", "bi", "sa", "nu",
    "pel", "gri", "do", "fen", "ho", "zu", "ran", "lis", "mo",
];

/// Vocabulary size: the fixed words above, then synthetic rare words.
pub const VOCABULARY: usize = 20_000;

fn word(rank: usize) -> String {
    if let Some(w) = WORDS.get(rank) {
        return (*w).to_string();
    }
    // Three syllables from the rank's digits in base 24: 13,824 distinct words, plus a
    // fourth syllable past that, so every rank below VOCABULARY is a distinct word.
    let n = SYLLABLES.len();
    let mut r = rank - WORDS.len();
    let mut w = String::new();
    for _ in 0..3 {
        w.push_str(SYLLABLES[r % n]);
        r /= n;
    }
    if r > 0 {
        w.push_str(SYLLABLES[r % n]);
    }
    w
}

/// A word rank drawn from a Zipf-like distribution (s = 1) over `VOCABULARY` ranks, by
/// inverting the continuous approximation of its CDF: rank ≈ V^u for u uniform in [0, 1).
fn zipf_rank(rng: &mut Rng) -> usize {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let rank = (VOCABULARY as f64).powf(u) as usize - 1;
    rank.min(VOCABULARY - 1)
}

/// A sentence of `n` words: Zipf-distributed ranks over a 20,000-word vocabulary whose most
/// frequent words are everyday chat words.
pub fn sentence(rng: &mut Rng, n: usize) -> String {
    let mut s = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&word(zipf_rank(rng)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_across_the_vocabulary() {
        let all: std::collections::HashSet<String> = (0..VOCABULARY).map(word).collect();
        assert_eq!(all.len(), VOCABULARY);
    }

    #[test]
    fn frequent_words_are_frequent_and_the_tail_is_long() {
        let mut rng = Rng::new(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100_000 {
            *counts.entry(zipf_rank(&mut rng)).or_insert(0usize) += 1;
        }
        let top: usize = (0..10).map(|r| counts.get(&r).copied().unwrap_or(0)).sum();
        assert!(
            top > 15_000,
            "the 10 most common words should be ~23% of text: {top}"
        );
        assert!(
            counts.len() > 5_000,
            "a long tail of distinct words: {}",
            counts.len()
        );
    }
}
