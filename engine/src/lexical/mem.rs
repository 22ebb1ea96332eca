//! The memtable's mutable BM25 index, and the per-text term counts both indexes are built from.

use super::{DocLens, LexicalSource, Postings};
use crate::analyzer::TermCounts;

/// Counts each distinct term of `text` once, with its frequency, in first-seen order; and
/// the text's length in terms.
pub(crate) fn term_counts(text: &str) -> (Vec<(String, u32)>, u32) {
    let counts = TermCounts::of(text);
    let pairs = counts.iter().map(|(t, tf)| (t.to_owned(), tf)).collect();
    (pairs, counts.n_terms())
}

/// The mutable index of a memtable. Each doc id is meant to be added once, in increasing
/// order (a memtable appends); adding the most recent id again extends that document.
#[derive(Debug, Default, Clone)]
pub struct MemLexical {
    /// Keyed by the user's own terms in the user's own vault, so a fast unkeyed-quality
    /// hash is enough (SipHash showed up in ingest profiles); foldhash still seeds per map.
    postings: foldhash::HashMap<String, Vec<(u32, u32)>>,
    doc_lens: Vec<u32>,
    total_len: u64,
}

impl MemLexical {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, doc: u32, text: &str) {
        self.add_counts(doc, &TermCounts::of(text));
    }

    /// [`MemLexical::add`] of a text already counted (ingest counts outside the vault's lock).
    pub fn add_counts(&mut self, doc: u32, terms: &TermCounts) {
        let slot = doc as usize;
        if self.doc_lens.len() <= slot {
            self.doc_lens.resize(slot + 1, 0);
        }
        let len = terms.n_terms();
        self.doc_lens[slot] = self.doc_lens[slot].saturating_add(len);
        self.total_len += u64::from(len);
        for (term, tf) in terms.iter() {
            // Look up by `&str` first: only a term new to the memtable costs an allocation.
            match self.postings.get_mut(term) {
                // Only the last posting can be this doc when docs are added in order; looking
                // further back would make ingest quadratic in a common term's document count.
                Some(list) => match list.last_mut() {
                    Some(last) if last.0 == doc => last.1 = last.1.saturating_add(tf),
                    _ => list.push((doc, tf)),
                },
                None => {
                    self.postings.insert(term.to_owned(), vec![(doc, tf)]);
                }
            }
        }
    }

    /// Number of distinct terms (for memory accounting).
    pub fn n_terms(&self) -> usize {
        self.postings.len()
    }
}

impl LexicalSource for MemLexical {
    fn n_docs(&self) -> u32 {
        u32::try_from(self.doc_lens.len()).unwrap_or(u32::MAX)
    }
    fn total_len(&self) -> u64 {
        self.total_len
    }
    fn doc_freq(&self, term: &str) -> u32 {
        self.postings
            .get(term)
            .map_or(0, |p| u32::try_from(p.len()).unwrap_or(u32::MAX))
    }
    fn postings(&self, term: &str) -> Postings<'_> {
        self.postings
            .get(term)
            .map_or(Postings::Pairs(&[]), |list| Postings::Pairs(list))
    }
    fn doc_len(&self, doc: u32) -> u32 {
        self.doc_lens.get(doc as usize).copied().unwrap_or(0)
    }
    fn doc_lens(&self) -> DocLens<'_> {
        DocLens::Words(&self.doc_lens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::{arbitrary_text, reference};
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #[test]
        fn counts_and_postings_match_the_reference(
            docs in proptest::collection::vec(arbitrary_text(), 1..8),
        ) {
            let mut index = MemLexical::new();
            let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
            let mut total_len = 0u64;
            for (doc, text) in docs.iter().enumerate() {
                let doc = doc as u32;
                let (counts, len) = reference::term_counts(text);
                prop_assert_eq!(term_counts(text), (counts.clone(), len));
                index.add(doc, text);
                prop_assert_eq!(index.doc_len(doc), len);
                total_len += u64::from(len);
                for (term, tf) in counts {
                    postings.entry(term).or_default().push((doc, tf));
                }
            }
            prop_assert_eq!(index.total_len(), total_len);
            prop_assert_eq!(index.n_terms(), postings.len());
            for (term, list) in &postings {
                let Postings::Pairs(got) = index.postings(term) else {
                    panic!("the memtable index hands out pairs");
                };
                prop_assert_eq!(got, list.as_slice());
            }
        }
    }
}
