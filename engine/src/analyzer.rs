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

use crate::stem::stem;

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

/// True for English function words that carry no retrieval signal on their own.
pub fn is_stopword(token: &str) -> bool {
    STOPWORDS.binary_search(&token).is_ok()
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

/// Calls `f` with every normalised (lowercased, apostrophe-free) token of `text`, in order,
/// stopwords included. This is the one tokenizer; [`analyze`] and the embedder build on it.
pub fn for_each_token(text: &str, mut f: impl FnMut(&str)) {
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
pub fn analyze(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    for_each_token(text, |token| {
        if !is_stopword(token) {
            terms.push(stem(token));
        }
    });
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

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
