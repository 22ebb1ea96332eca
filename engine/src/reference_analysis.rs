//! Test-only oracle: the analyzer, Porter stemmer, BM25 term counts and built-in embedder
//! exactly as they were before the ingest path was optimised (November 2026). The fast
//! versions must reproduce these terms and vector bits for every input (proptests in
//! `analyzer.rs` and `embedder.rs`): segments on disk and the embedder id
//! `builtin-hash-v1-384` depend on them. Keep this file frozen.
//!
//! Long (~680 lines) on purpose: a frozen, test-only copy that must not be refactored.

#![allow(dead_code)]

use std::collections::HashMap;

const TOKEN_BYTES_MAX: usize = 48;

// ---- analyzer ----

const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "aren",
    "arent",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "cant",
    "could",
    "couldn",
    "couldnt",
    "d",
    "did",
    "didn",
    "didnt",
    "do",
    "does",
    "doesn",
    "doesnt",
    "doing",
    "don",
    "dont",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "hadn",
    "hadnt",
    "has",
    "hasn",
    "hasnt",
    "have",
    "haven",
    "havent",
    "having",
    "he",
    "hed",
    "hell",
    "her",
    "here",
    "hers",
    "herself",
    "hes",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "id",
    "if",
    "ill",
    "im",
    "in",
    "into",
    "is",
    "isn",
    "isnt",
    "it",
    "itd",
    "itll",
    "its",
    "itself",
    "ive",
    "just",
    "ll",
    "m",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "re",
    "s",
    "same",
    "shan",
    "she",
    "shed",
    "shell",
    "shes",
    "should",
    "shouldn",
    "shouldnt",
    "so",
    "some",
    "such",
    "t",
    "than",
    "that",
    "thats",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "theres",
    "these",
    "they",
    "theyd",
    "theyll",
    "theyre",
    "theyve",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "ve",
    "very",
    "was",
    "wasn",
    "wasnt",
    "we",
    "wed",
    "were",
    "weren",
    "werent",
    "weve",
    "what",
    "whats",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "whos",
    "why",
    "will",
    "with",
    "won",
    "wont",
    "would",
    "wouldn",
    "wouldnt",
    "you",
    "youd",
    "youll",
    "your",
    "youre",
    "yours",
    "yourself",
    "yourselves",
    "youve",
];

/// True for English function words that carry no retrieval signal on their own.
pub(crate) fn is_stopword(token: &str) -> bool {
    STOPWORDS.binary_search(&token).is_ok()
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

/// Calls `f` with every normalised (lowercased, apostrophe-free) token of `text`, in order,
/// stopwords included. This is the one tokenizer; [`analyze`] and the embedder build on it.
pub(crate) fn for_each_token(text: &str, mut f: impl FnMut(&str)) {
    let mut word = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
            continue;
        }
        let inner_apostrophe = is_apostrophe(c)
            && !word.is_empty()
            && chars.peek().is_some_and(|n| n.is_alphanumeric());
        if inner_apostrophe {
            word.push('\'');
            continue;
        }
        emit(&mut word, &mut f);
    }
    emit(&mut word, &mut f);
}

fn emit(word: &mut String, f: &mut impl FnMut(&str)) {
    if word.is_empty() {
        return;
    }
    if word.ends_with("'s") {
        word.truncate(word.len() - 2);
    }
    word.retain(|c| c != '\'');
    if !word.is_empty() && word.len() <= TOKEN_BYTES_MAX {
        f(word);
    }
    word.clear();
}

/// The index terms of `text`: normalised tokens without stopwords, Porter-stemmed.
pub(crate) fn analyze(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    for_each_token(text, |token| {
        if !is_stopword(token) {
            terms.push(stem(token));
        }
    });
    terms
}

/// The BM25 term counts of `text`, as `lexical::term_counts` computed them.
pub(crate) fn term_counts(text: &str) -> (Vec<(String, u32)>, u32) {
    let terms = analyze(text);
    let len = u32::try_from(terms.len()).unwrap_or(u32::MAX);
    let mut counts: Vec<(String, u32)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for term in terms {
        match index.get(&term) {
            Some(&i) => counts[i].1 += 1,
            None => {
                index.insert(term.clone(), counts.len());
                counts.push((term, 1));
            }
        }
    }
    (counts, len)
}

// ---- stemmer ----

const STEM_BYTES_MIN: usize = 3;

/// Stems one lowercase word. Returns the input unchanged unless it is pure ASCII
/// lowercase letters.
pub(crate) fn stem(word: &str) -> String {
    if word.len() < STEM_BYTES_MIN || !word.bytes().all(|c| c.is_ascii_lowercase()) {
        return word.to_owned();
    }
    let mut s = Stemmer {
        b: word.as_bytes().to_vec(),
        k: word.len() as isize - 1,
        j: 0,
    };
    s.step1ab();
    if s.k > 0 {
        s.step1c();
        s.step2();
        s.step3();
        s.step4();
        s.step5();
    }
    s.b.truncate((s.k + 1) as usize);
    // Every byte is still ASCII: the steps only remove bytes or write ASCII suffixes.
    String::from_utf8(s.b).unwrap_or_default()
}

/// The word being stemmed: `b[..=k]` is the current word, `b[..=j]` the stem that the last
/// successful `ends` left (signed because a suffix may cover the whole word, making j = -1).
struct Stemmer {
    b: Vec<u8>,
    k: isize,
    j: isize,
}

impl Stemmer {
    fn at(&self, i: isize) -> u8 {
        self.b[i as usize]
    }

    /// True if `b[i]` is a consonant; `y` is a consonant at the start or after a vowel.
    fn cons(&self, i: isize) -> bool {
        match self.at(i) {
            b'a' | b'e' | b'i' | b'o' | b'u' => false,
            b'y' => i == 0 || !self.cons(i - 1),
            _ => true,
        }
    }

    /// The number of vowel-consonant sequences in `b[..=j]` (Porter's m).
    fn m(&self) -> usize {
        let mut n = 0;
        let mut i = 0;
        loop {
            if i > self.j {
                return n;
            }
            if !self.cons(i) {
                break;
            }
            i += 1;
        }
        i += 1;
        loop {
            loop {
                if i > self.j {
                    return n;
                }
                if self.cons(i) {
                    break;
                }
                i += 1;
            }
            i += 1;
            n += 1;
            loop {
                if i > self.j {
                    return n;
                }
                if !self.cons(i) {
                    break;
                }
                i += 1;
            }
            i += 1;
        }
    }

    fn vowel_in_stem(&self) -> bool {
        (0..=self.j).any(|i| !self.cons(i))
    }

    fn double_c(&self, j: isize) -> bool {
        j >= 1 && self.at(j) == self.at(j - 1) && self.cons(j)
    }

    /// consonant-vowel-consonant ending at i, the last not w, x or y ("hop", not "snow").
    fn cvc(&self, i: isize) -> bool {
        if i < 2 || !self.cons(i) || self.cons(i - 1) || !self.cons(i - 2) {
            return false;
        }
        !matches!(self.at(i), b'w' | b'x' | b'y')
    }

    fn ends(&mut self, s: &str) -> bool {
        let len = s.len() as isize;
        if len > self.k + 1 {
            return false;
        }
        let start = (self.k + 1 - len) as usize;
        if &self.b[start..=(self.k as usize)] != s.as_bytes() {
            return false;
        }
        self.j = self.k - len;
        true
    }

    fn set_to(&mut self, s: &str) {
        let start = (self.j + 1) as usize;
        self.b.truncate(start);
        self.b.extend_from_slice(s.as_bytes());
        self.k = self.j + s.len() as isize;
    }

    fn replace_if_m(&mut self, s: &str) {
        if self.m() > 0 {
            self.set_to(s);
        }
    }

    /// Plurals and -ed / -ing.
    fn step1ab(&mut self) {
        if self.at(self.k) == b's' {
            if self.ends("sses") {
                self.k -= 2;
            } else if self.ends("ies") {
                self.set_to("i");
            } else if self.k >= 1 && self.at(self.k - 1) != b's' {
                self.k -= 1;
            }
        }
        if self.ends("eed") {
            if self.m() > 0 {
                self.k -= 1;
            }
        } else if (self.ends("ed") || self.ends("ing")) && self.vowel_in_stem() {
            self.k = self.j;
            if self.ends("at") {
                self.set_to("ate");
            } else if self.ends("bl") {
                self.set_to("ble");
            } else if self.ends("iz") {
                self.set_to("ize");
            } else if self.double_c(self.k) {
                self.k -= 1;
                if matches!(self.at(self.k), b'l' | b's' | b'z') {
                    self.k += 1;
                }
            } else if self.m() == 1 && self.cvc(self.k) {
                self.set_to("e");
            }
        }
    }

    /// Terminal y → i when there is another vowel in the stem.
    fn step1c(&mut self) {
        if self.ends("y") && self.vowel_in_stem() {
            let k = self.k as usize;
            self.b[k] = b'i';
        }
    }

    /// Double suffixes to single ones, e.g. -ization → -ize.
    fn step2(&mut self) {
        const RULES: &[(&str, &str)] = &[
            ("ational", "ate"),
            ("tional", "tion"),
            ("enci", "ence"),
            ("anci", "ance"),
            ("izer", "ize"),
            ("bli", "ble"),
            ("alli", "al"),
            ("entli", "ent"),
            ("eli", "e"),
            ("ousli", "ous"),
            ("ization", "ize"),
            ("ation", "ate"),
            ("ator", "ate"),
            ("alism", "al"),
            ("iveness", "ive"),
            ("fulness", "ful"),
            ("ousness", "ous"),
            ("aliti", "al"),
            ("iviti", "ive"),
            ("biliti", "ble"),
            ("logi", "log"),
        ];
        self.apply_first(RULES);
    }

    /// -ic-, -full, -ness etc.
    fn step3(&mut self) {
        const RULES: &[(&str, &str)] = &[
            ("icate", "ic"),
            ("ative", ""),
            ("alize", "al"),
            ("iciti", "ic"),
            ("ical", "ic"),
            ("ful", ""),
            ("ness", ""),
        ];
        self.apply_first(RULES);
    }

    /// The first rule whose suffix matches decides; it replaces only when m > 0.
    fn apply_first(&mut self, rules: &[(&str, &str)]) {
        if self.k < 1 {
            return;
        }
        for (suffix, replacement) in rules {
            if self.ends(suffix) {
                self.replace_if_m(replacement);
                return;
            }
        }
    }

    /// Removes -ant, -ence etc. in context <c>vcvc<v>.
    fn step4(&mut self) {
        const SUFFIXES: &[&str] = &[
            "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion",
            "ou", "ism", "ate", "iti", "ous", "ive", "ize",
        ];
        if self.k < 1 {
            return;
        }
        for suffix in SUFFIXES {
            if self.ends(suffix) {
                if *suffix == "ion" && !(self.j >= 0 && matches!(self.at(self.j), b's' | b't')) {
                    // "-ion" only goes after s or t; no other suffix can end in "n".
                    return;
                }
                if self.m() > 1 {
                    self.k = self.j;
                }
                return;
            }
        }
    }

    /// Removes a final -e and reduces -ll when m > 1.
    fn step5(&mut self) {
        self.j = self.k;
        if self.at(self.k) == b'e' {
            let a = self.m();
            if a > 1 || (a == 1 && !self.cvc(self.k - 1)) {
                self.k -= 1;
            }
        }
        if self.at(self.k) == b'l' && self.double_c(self.k) && self.m() > 1 {
            self.k -= 1;
        }
    }
}

// ---- embedder ----

const BUILTIN_DIM: usize = 384;

/// Feature weights, relative to a content word's unigram (1.0).
const BIGRAM_WEIGHT: f32 = 0.5;
/// Total weight of one word's character n-grams together.
const CHAR_NGRAMS_WEIGHT: f32 = 0.6;
const CHAR_NGRAM_MIN: usize = 3;
const CHAR_NGRAM_MAX: usize = 5;

/// Seeds that keep the three feature families in separate hash spaces.
const SEED_UNIGRAM: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_BIGRAM: u64 = 0xc2b2_ae3d_27d4_eb4f;
const SEED_CHAR: u64 = 0x1656_67b1_9e37_79f9;
/// The feature an input without any content word (empty, or only stopwords) maps to, so
/// that every output is a unit vector and cosine is always defined.
const EMPTY_FEATURE: &str = "\u{0}empty";

/// FNV-1a over `bytes` then a SplitMix64 finaliser so low bits are well mixed. Only integer
/// arithmetic, `sqrt` and division (both correctly rounded by IEEE 754) enter the output.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
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
        self.0.sort_unstable_by_key(|f| f.0);
        let mut merged: Vec<(u64, f32, u32)> = Vec::with_capacity(self.0.len());
        for f in self.0 {
            match merged.last_mut() {
                Some(last) if last.0 == f.0 => {
                    last.1 += f.1;
                    last.2 += 1;
                }
                _ => merged.push(f),
            }
        }
        let dim = out.len() as u64;
        for (h, weight_sum, count) in merged {
            let mean = weight_sum / count as f32;
            let value = mean * sublinear_tf(count);
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            out[((h & 0x7fff_ffff_ffff_ffff) % dim) as usize] += sign * value;
        }
    }
}

pub(crate) fn embed(text: &str) -> Vec<f32> {
    let mut features = Features(Vec::new());
    let mut previous_stem: Option<String> = None;
    let mut gram = String::new();
    for_each_token(text, |token| {
        if is_stopword(token) {
            return;
        }
        let stemmed = stem(token);
        features.push(hash(SEED_UNIGRAM, stemmed.as_bytes()), 1.0);
        if let Some(prev) = &previous_stem {
            gram.clear();
            gram.push_str(prev);
            gram.push(' ');
            gram.push_str(&stemmed);
            features.push(hash(SEED_BIGRAM, gram.as_bytes()), BIGRAM_WEIGHT);
        }
        add_char_ngrams(token, &mut features);
        previous_stem = Some(stemmed);
    });
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
        return embed("");
    }
    out
}

/// Character n-grams of `<word>`, sharing [`CHAR_NGRAMS_WEIGHT`] between them.
fn add_char_ngrams(word: &str, features: &mut Features) {
    let chars: Vec<char> = std::iter::once('<')
        .chain(word.chars())
        .chain(std::iter::once('>'))
        .collect();
    let count: usize = (CHAR_NGRAM_MIN..=CHAR_NGRAM_MAX)
        .map(|n| chars.len().saturating_sub(n - 1))
        .sum();
    if count == 0 {
        return;
    }
    let weight = CHAR_NGRAMS_WEIGHT / (count as f32).sqrt();
    let mut buf = String::new();
    for n in CHAR_NGRAM_MIN..=CHAR_NGRAM_MAX {
        for window in chars.windows(n) {
            buf.clear();
            buf.extend(window);
            features.push(hash(SEED_CHAR, buf.as_bytes()), weight);
        }
    }
}
