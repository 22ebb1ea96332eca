//! BM25 lexical retrieval: the analyzer's terms, an in-memory index for the memtable
//! ([`MemLexical`]), an immutable serialized one for segments ([`LexicalBuilder`] →
//! [`LexicalView`], format in `docs/format.md`), and [`bm25`] scoring over any mix of them.
//!
//! Documents are dense `u32` ids `0..n_docs` within one source (a segment's record
//! ordinals); mapping them to memory ids is the caller's business.

mod file;

pub use crate::analyzer::analyze;
pub use file::{FORMAT_VERSION, LexicalBuilder, LexicalView, MAGIC};

use std::collections::HashMap;

/// BM25 term-frequency saturation (the usual 1.2: a term's second occurrence counts ~half).
pub const BM25_K1: f32 = 1.2;
/// BM25 length normalisation (the usual 0.75).
pub const BM25_B: f32 = 0.75;

/// A lexical file that cannot be used. Every variant names what was wrong and where, so a
/// `verify` tool can print it as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LexicalError {
    #[error("lexical index is {len} bytes, shorter than its {needed}-byte header and footer")]
    TooShort { len: usize, needed: usize },
    #[error("lexical index has bad magic {found:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error("lexical index version {found} unsupported (this build reads {oldest}..={newest})")]
    UnsupportedVersion {
        found: u32,
        oldest: u32,
        newest: u32,
    },
    #[error("lexical index checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
    #[error("lexical index section {section} does not fit: needs {needed} bytes, file has {len}")]
    SectionOutOfBounds {
        section: &'static str,
        needed: u64,
        len: usize,
    },
    #[error("lexical index entry {index} of {section} is invalid: {reason}")]
    BadEntry {
        section: &'static str,
        index: u64,
        reason: &'static str,
    },
}

/// Read access to one set of documents' postings, whatever its storage.
pub trait LexicalSource {
    /// Documents are `0..n_docs()`; ids never added count as empty documents.
    fn n_docs(&self) -> u32;
    /// Sum of all document lengths (in terms).
    fn total_len(&self) -> u64;
    /// Number of documents containing `term` (an analyzed term).
    fn doc_freq(&self, term: &str) -> u32;
    /// Calls `f(doc, term_frequency)` for every document containing `term`.
    fn for_each_posting(&self, term: &str, f: &mut dyn FnMut(u32, u32));
    /// Length of `doc` in terms; 0 for an unknown doc.
    fn doc_len(&self, doc: u32) -> u32;
}

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
    fn for_each_posting(&self, term: &str, f: &mut dyn FnMut(u32, u32)) {
        if let Some(list) = self.postings.get(term) {
            for &(doc, tf) in list {
                f(doc, tf);
            }
        }
    }
    fn doc_len(&self, doc: u32) -> u32 {
        self.doc_lens.get(doc as usize).copied().unwrap_or(0)
    }
}

/// Okapi BM25 over several sources as one corpus: N, average length and document
/// frequencies are summed over all `sources`, so a term's weight does not depend on which
/// segment a document happens to sit in. `accept(source, doc)` is asked once per matching
/// document, during scoring, so filtered-out and deleted documents never take a result slot.
/// Returns up to `k` `(source index, doc, score)`, best first (ties by source then doc).
pub fn bm25(
    sources: &[&dyn LexicalSource],
    query: &str,
    k: usize,
    accept: &dyn Fn(usize, u32) -> bool,
) -> Vec<(usize, u32, f32)> {
    if k == 0 || sources.is_empty() {
        return Vec::new();
    }
    let (query_terms, _) = term_counts(query);
    let n: f64 = sources.iter().map(|s| f64::from(s.n_docs())).sum();
    let total: f64 = sources.iter().map(|s| s.total_len() as f64).sum();
    if n == 0.0 || query_terms.is_empty() {
        return Vec::new();
    }
    let avgdl = (total / n).max(1.0) as f32;
    let weights: Vec<(String, f32)> = query_terms
        .into_iter()
        .filter_map(|(term, qtf)| {
            let df: f64 = sources.iter().map(|s| f64::from(s.doc_freq(&term))).sum();
            (df > 0.0).then(|| {
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln() as f32;
                (term, idf * qtf as f32)
            })
        })
        .collect();

    let mut hits: Vec<(usize, u32, f32)> = Vec::new();
    for (si, source) in sources.iter().enumerate() {
        // Dense per-source accumulators (a hash map costs more than zeroed memory once a
        // query term is common): `state` is 0 untouched, 1 accepted, 2 rejected, so
        // `accept` is asked once per document however many query terms match it.
        let n_docs = source.n_docs() as usize;
        // Allocated on the first matching posting: most sources of a many-segment vault
        // match no query term at all.
        let mut acc: Option<(Vec<f32>, Vec<u8>)> = None;
        let mut touched: Vec<u32> = Vec::new();
        for (term, weight) in &weights {
            source.for_each_posting(term, &mut |doc, tf| {
                let (scores, state) =
                    acc.get_or_insert_with(|| (vec![0.0; n_docs], vec![0; n_docs]));
                let Some(st) = state.get_mut(doc as usize) else {
                    return;
                };
                if *st == 0 {
                    *st = if accept(si, doc) { 1 } else { 2 };
                    if *st == 1 {
                        touched.push(doc);
                    }
                }
                if *st != 1 {
                    return;
                }
                let tf = tf as f32;
                let norm = 1.0 - BM25_B + BM25_B * source.doc_len(doc) as f32 / avgdl;
                scores[doc as usize] += weight * tf * (BM25_K1 + 1.0) / (tf + BM25_K1 * norm);
            });
        }
        let Some((scores, _)) = acc else {
            continue;
        };
        hits.extend(
            touched
                .into_iter()
                .map(|doc| (si, doc, scores[doc as usize])),
        );
    }
    top_k(&mut hits, k);
    hits
}

/// Sorts best first (score desc, then source, then doc for determinism) and keeps `k`.
fn top_k(hits: &mut Vec<(usize, u32, f32)>, k: usize) {
    let order = |a: &(usize, u32, f32), b: &(usize, u32, f32)| {
        b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1))
    };
    if hits.len() > k {
        hits.select_nth_unstable_by(k - 1, order);
        hits.truncate(k);
    }
    hits.sort_unstable_by(order);
}

#[cfg(test)]
mod tests;
