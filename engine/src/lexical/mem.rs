//! The memtable's mutable BM25 index, and the per-text term counts both indexes are built from.

use super::{DocLens, LexicalSource, Postings, analyze};
use std::collections::HashMap;

/// Counts each distinct term of `text` once, with its frequency, in first-seen order.
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

/// The mutable index of a memtable. Each doc id is meant to be added once, in increasing
/// order (a memtable appends); adding the most recent id again extends that document.
#[derive(Debug, Default, Clone)]
pub struct MemLexical {
    postings: HashMap<String, Vec<(u32, u32)>>,
    doc_lens: Vec<u32>,
    total_len: u64,
}

impl MemLexical {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, doc: u32, text: &str) {
        let (counts, len) = term_counts(text);
        let slot = doc as usize;
        if self.doc_lens.len() <= slot {
            self.doc_lens.resize(slot + 1, 0);
        }
        self.doc_lens[slot] = self.doc_lens[slot].saturating_add(len);
        self.total_len += u64::from(len);
        for (term, tf) in counts {
            let list = self.postings.entry(term).or_default();
            // Only the last posting can be this doc when docs are added in order; looking
            // further back would make ingest quadratic in a common term's document count.
            match list.last_mut() {
                Some(last) if last.0 == doc => last.1 = last.1.saturating_add(tf),
                _ => list.push((doc, tf)),
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
