//! Text analysis shared by the lexical index and the built-in embedder: how a message
//! becomes a sequence of terms.
//!
//! Pipeline: split on anything that is not a Unicode letter or digit (an apostrophe inside a
//! word is kept so that "Caroline's" and "don't" stay one word), lowercase, drop a trailing
//! possessive `'s` and the remaining apostrophes, drop over-long tokens, then (for index
//! terms) drop English stopwords and apply the Porter stemmer.
//!
//! The exact output is part of the on-disk lexical format and of the embedder id: changing
//! it means bumping `lexical::FORMAT_VERSION` and the embedder version.

use std::collections::hash_map::Entry;

use crate::stem::stem_into;

/// Tokens longer than this are dropped: they are hashes, base64 or URLs run together, and
/// would only bloat the term dictionary.
pub const TOKEN_BYTES_MAX: usize = 48;

/// English function words plus the contraction stems left after apostrophes are removed
/// ("i'm" → "im"). Sorted, so membership is a binary search (a test checks the order).
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

/// Longest stopword, in bytes ("themselves", "yourselves"): longer tokens skip the lookup.
const STOPWORD_BYTES_MAX: usize = 10;

/// `STOPWORD_BUCKETS[b]..STOPWORD_BUCKETS[b + 1]` is the range of [`STOPWORDS`] starting
/// with byte `b'a' + b`, so a lookup binary-searches ~8 words instead of ~190.
const STOPWORD_BUCKETS: [usize; 27] = stopword_buckets();

const fn stopword_buckets() -> [usize; 27] {
    let mut buckets = [0; 27];
    let mut letter = 0;
    while letter < 26 {
        let mut i = buckets[letter];
        while i < STOPWORDS.len() && STOPWORDS[i].as_bytes()[0] <= b'a' + letter as u8 {
            i += 1;
        }
        buckets[letter + 1] = i;
        letter += 1;
    }
    buckets
}

const _: () = assert!(STOPWORD_BUCKETS[26] == STOPWORDS.len());

/// True for English function words that carry no retrieval signal on their own.
pub fn is_stopword(token: &str) -> bool {
    let Some(&first) = token.as_bytes().first() else {
        return false;
    };
    if token.len() > STOPWORD_BYTES_MAX || !first.is_ascii_lowercase() {
        return false;
    }
    let letter = usize::from(first - b'a');
    STOPWORDS[STOPWORD_BUCKETS[letter]..STOPWORD_BUCKETS[letter + 1]]
        .binary_search(&token)
        .is_ok()
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

/// Calls `f` with every normalised (lowercased, apostrophe-free) token of `text`, in order,
/// stopwords included. This is the one tokenizer; [`Analysis`] and [`analyze`] build on it.
pub fn for_each_token(text: &str, mut f: impl FnMut(&str)) {
    let mut word = Word::default();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // ASCII letters and digits are most of any text: `is_alphanumeric` and
        // `to_lowercase` agree with their ASCII versions on them, which cost far less.
        if c.is_ascii_alphanumeric() {
            word.text.push(c.to_ascii_lowercase());
            continue;
        }
        if !c.is_ascii() && c.is_alphanumeric() {
            word.text.extend(c.to_lowercase());
            continue;
        }
        let inner_apostrophe = is_apostrophe(c)
            && !word.text.is_empty()
            && chars.peek().is_some_and(|n| n.is_alphanumeric());
        if inner_apostrophe {
            word.text.push('\'');
            word.apostrophes = true;
            continue;
        }
        word.emit(&mut f);
    }
    word.emit(&mut f);
}

/// The token being read, and whether it holds an apostrophe to strip (most do not, and
/// skipping the strip pass for them is measurable).
#[derive(Default)]
struct Word {
    text: String,
    apostrophes: bool,
}

impl Word {
    fn emit(&mut self, f: &mut impl FnMut(&str)) {
        if self.text.is_empty() {
            return;
        }
        if self.apostrophes {
            if self.text.ends_with("'s") {
                self.text.truncate(self.text.len() - 2);
            }
            self.text.retain(|c| c != '\'');
            self.apostrophes = false;
        }
        if !self.text.is_empty() && self.text.len() <= TOKEN_BYTES_MAX {
            f(&self.text);
        }
        self.text.clear();
    }
}

/// A text analysed once for both indexes: each content word (stopwords dropped) as the
/// normalised token the embedder's character n-grams read and the stemmed term BM25 and the
/// embedder's word features use. Ingest builds one per record outside the vault's locks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// Every token and (when it differs) its stem, concatenated; `words` index into it.
    bytes: String,
    /// Per content word, in text order: the byte ranges of its token and of its term.
    words: Vec<[usize; 4]>,
}

impl Analysis {
    pub fn of(text: &str) -> Analysis {
        // Tokens and stems together are rarely longer than the text, and English averages
        // over 5 bytes a word with its separator (stopwords, dropped, are shorter still):
        // one allocation each for most texts.
        let mut analysis = Analysis {
            bytes: String::with_capacity(text.len()),
            words: Vec::with_capacity(text.len() / 8),
        };
        let mut scratch = Vec::new();
        for_each_token(text, |token| {
            if is_stopword(token) {
                return;
            }
            let token_start = analysis.bytes.len();
            analysis.bytes.push_str(token);
            let token_end = analysis.bytes.len();
            let term = stem_into(token, &mut scratch);
            let (term_start, term_end) = if term == token {
                (token_start, token_end)
            } else {
                analysis.bytes.push_str(term);
                (token_end, analysis.bytes.len())
            };
            analysis
                .words
                .push([token_start, token_end, term_start, term_end]);
        });
        analysis
    }

    /// (token, term) of each content word, in text order.
    pub fn words(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.words
            .iter()
            .map(|w| (&self.bytes[w[0]..w[1]], &self.bytes[w[2]..w[3]]))
    }

    /// The index terms, in text order (what [`analyze`] returns).
    pub fn terms(&self) -> impl Iterator<Item = &str> + '_ {
        self.words.iter().map(|w| &self.bytes[w[2]..w[3]])
    }

    /// Number of content words: the document length BM25 normalises by.
    pub fn n_terms(&self) -> usize {
        self.words.len()
    }

    /// The BM25 input of this text: each distinct term once, with its frequency.
    pub fn term_counts(&self) -> TermCounts {
        let mut out = TermCounts {
            n_terms: u32::try_from(self.n_terms()).unwrap_or(u32::MAX),
            ..TermCounts::default()
        };
        let mut index: foldhash::HashMap<&str, usize> =
            foldhash::HashMap::with_capacity_and_hasher(self.n_terms(), Default::default());
        for term in self.terms() {
            match index.entry(term) {
                Entry::Occupied(seen) => out.counts[*seen.get()].2 += 1,
                Entry::Vacant(slot) => {
                    slot.insert(out.counts.len());
                    // Offsets fit: an analysed text is at most one request body (1 GiB).
                    let start = out.bytes.len() as u32;
                    out.bytes.push_str(term);
                    out.counts.push((start, out.bytes.len() as u32, 1));
                }
            }
        }
        out.bytes.shrink_to_fit();
        out.counts.shrink_to_fit();
        out
    }
}

/// One document's BM25 input: each distinct term with its frequency, in first-seen order,
/// and the document's length in terms. Two allocations per document, whatever its length.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TermCounts {
    /// The distinct terms, concatenated; `counts` index into it.
    bytes: String,
    /// Per distinct term: its byte range in `bytes` and its frequency. `u32`s, and both
    /// vectors shrunk to fit once counted: an ingest holds one `TermCounts` per chunk from
    /// its analysis until the memtable takes the terms, ~20 bytes a distinct term.
    counts: Vec<(u32, u32, u32)>,
    n_terms: u32,
}

impl TermCounts {
    pub fn of(text: &str) -> TermCounts {
        Analysis::of(text).term_counts()
    }

    /// (term, frequency) of each distinct term, in first-seen order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.counts
            .iter()
            .map(|&(start, end, tf)| (&self.bytes[start as usize..end as usize], tf))
    }

    /// The document's length in terms (stopwords excluded, repeats included).
    pub fn n_terms(&self) -> u32 {
        self.n_terms
    }
}

/// The index terms of `text`: normalised tokens without stopwords, Porter-stemmed.
pub fn analyze(text: &str) -> Vec<String> {
    Analysis::of(text).terms().map(str::to_owned).collect()
}

/// The analyzer, stemmer and embedder as they were before the ingest path was optimised:
/// the oracle the proptests below and in `embedder.rs` hold the fast versions to.
#[cfg(test)]
#[path = "reference_analysis.rs"]
pub(crate) mod reference;

/// Texts that exercise every branch of the tokenizer and stemmer: English words with
/// suffixes and contractions, stopwords, both apostrophes, mixed case, digits, non-ASCII
/// letters whose lowercase differs in length, and over-long tokens.
#[cfg(test)]
pub(crate) fn arbitrary_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    const WORDS: &[&str] = &[
        "Caroline's",
        "painting",
        "paintings",
        "sunrises",
        "relational",
        "generalization",
        "hopefulness",
        "don't",
        "I'm",
        "it\u{2019}s",
        "the",
        "THEMSELVES",
        "yourselves",
        "controlling",
        "agreed",
        "happy",
        "sky",
        "ies",
        "eed",
        "ational",
        "LGBTQ",
        "2023",
        "3pm",
        "café",
        "Straße",
        "İstanbul",
        "ΑΘΗΝΑ",
        "東京タワー",
        "naïve",
        "educaton",
    ];
    let token = prop_oneof![
        proptest::sample::select(WORDS).prop_map(str::to_owned),
        "[a-z]{1,14}",
        "[A-Za-z0-9'\u{2019}]{1,10}",
        "[a-z]{45,52}",
        "\\PC{1,6}",
    ];
    let sep = proptest::sample::select(&[" ", "  ", ", ", "'", "\u{2019}", "\n", "-", "? "][..]);
    proptest::collection::vec((token, sep), 0..40).prop_map(|parts| {
        parts
            .into_iter()
            .flat_map(|(t, s)| [t, s.to_owned()])
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn tokens_and_terms_match_the_reference_analyzer(text in arbitrary_text()) {
            let mut expected = Vec::new();
            reference::for_each_token(&text, |t| expected.push(t.to_owned()));
            prop_assert_eq!(tokens(&text), expected);
            prop_assert_eq!(analyze(&text), reference::analyze(&text));
            let analysis = Analysis::of(&text);
            prop_assert_eq!(analysis.n_terms(), reference::analyze(&text).len());
            for (token, term) in analysis.words() {
                prop_assert!(!is_stopword(token) && reference::stem(token) == term);
            }
        }

        #[test]
        fn stopword_lookup_matches_a_full_binary_search(token in "[a-z']{0,12}|\\PC{0,4}") {
            prop_assert_eq!(is_stopword(&token), reference::is_stopword(&token));
        }
    }

    #[test]
    fn every_stopword_is_found() {
        for word in STOPWORDS {
            assert!(
                word.len() <= STOPWORD_BYTES_MAX && is_stopword(word),
                "{word}"
            );
        }
        assert!(!is_stopword("") && !is_stopword("zebra") && !is_stopword("Then"));
    }

    fn tokens(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_token(text, |t| out.push(t.to_owned()));
        out
    }

    #[test]
    fn stopword_list_is_sorted_and_unique() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn splits_lowercases_and_handles_apostrophes() {
        assert_eq!(
            tokens("Caroline's new car—it's FAST! I'm  sure, don't worry."),
            [
                "caroline", "new", "car", "it", "fast", "im", "sure", "dont", "worry"
            ]
        );
        assert_eq!(tokens("Melanie\u{2019}s kids"), ["melanie", "kids"]);
        assert_eq!(tokens("'quoted' words'"), ["quoted", "words"]);
    }

    #[test]
    fn unicode_aware() {
        assert_eq!(
            tokens("Ünïcode Straße café 東京タワー"),
            ["ünïcode", "straße", "café", "東京タワー"]
        );
        assert_eq!(tokens("ΑΘΗΝΑ"), ["αθηνα"]);
    }

    #[test]
    fn drops_overlong_tokens() {
        let long = "x".repeat(TOKEN_BYTES_MAX + 1);
        assert_eq!(tokens(&format!("a {long} b")), ["a", "b"]);
    }

    #[test]
    fn analyze_removes_stopwords_and_stems() {
        assert_eq!(
            analyze("When did Caroline go to the LGBTQ support groups?"),
            ["carolin", "go", "lgbtq", "support", "group"]
        );
        assert_eq!(
            analyze("She was painting sunrises in 2022"),
            ["paint", "sunris", "2022"]
        );
        assert!(analyze("").is_empty());
        assert!(analyze("the and of it's").is_empty());
    }
}
