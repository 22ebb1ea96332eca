//! Deterministic synthetic text for load and throughput benchmarks.
//!
//! Not evaluation data (retrieval quality is measured on LoCoMo): this only gives benchmarks
//! realistic word counts and a realistic vocabulary spread without shipping a corpus.

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

/// A sentence of `n` words drawn from a fixed vocabulary.
pub fn sentence(rng: &mut Rng, n: usize) -> String {
    let mut s = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len())]);
    }
    s
}
