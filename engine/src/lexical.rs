//! BM25 lexical retrieval: the analyzer's terms, an in-memory index for the memtable
//! ([`MemLexical`]), an immutable serialized one for segments ([`LexicalBuilder`] →
//! [`LexicalView`], format in `docs/format.md`), and [`bm25`] scoring over any mix of them.
//!
//! Documents are dense `u32` ids `0..n_docs` within one source (a segment's record
//! ordinals); mapping them to memory ids is the caller's business.

mod file;
mod mem;

pub use crate::analyzer::analyze;
use file::POSTING_BYTES;
pub use file::{FORMAT_VERSION, LexicalBuilder, LexicalView, MAGIC};
pub use mem::MemLexical;
pub(crate) use mem::term_counts;

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
    /// The documents containing `term` with their term frequencies, docs ascending.
    fn postings(&self, term: &str) -> Postings<'_>;
    /// Length of `doc` in terms; 0 for an unknown doc.
    fn doc_len(&self, doc: u32) -> u32;
    /// Every document's length, for scoring loops (no call per posting).
    fn doc_lens(&self) -> DocLens<'_>;
}

/// Document lengths of one source, indexed by doc.
#[derive(Clone, Copy, Debug)]
pub enum DocLens<'a> {
    Words(&'a [u32]),
    /// Little-endian `u32`s.
    Bytes(&'a [u8]),
}

impl DocLens<'_> {
    /// Length of `doc`; 0 for an unknown doc.
    #[inline]
    pub fn get(&self, doc: u32) -> u32 {
        let i = doc as usize;
        match self {
            DocLens::Words(w) => w.get(i).copied().unwrap_or(0),
            DocLens::Bytes(b) => b
                .get(i * 4..i * 4 + 4)
                .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
        }
    }
}

/// One term's postings in one source: `(doc, tf)` pairs, docs strictly ascending.
#[derive(Clone, Copy, Debug)]
pub enum Postings<'a> {
    /// A memtable's list.
    Pairs(&'a [(u32, u32)]),
    /// A segment file's little-endian `doc u32, tf u32` pairs (whole pairs only).
    Bytes(&'a [u8]),
}

impl Postings<'_> {
    pub fn len(&self) -> usize {
        match self {
            Postings::Pairs(p) => p.len(),
            Postings::Bytes(b) => b.len() / POSTING_BYTES,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th `(doc, tf)`; `i < len()`.
    #[inline]
    pub fn get(&self, i: usize) -> (u32, u32) {
        match self {
            Postings::Pairs(p) => p[i],
            Postings::Bytes(b) => {
                let at = i * POSTING_BYTES;
                let word = |o: usize| {
                    let mut w = [0u8; 4];
                    w.copy_from_slice(&b[o..o + 4]);
                    u32::from_le_bytes(w)
                };
                (word(at), word(at + 4))
            }
        }
    }

    /// Calls `f(doc, tf)` for every posting in order: one match for the whole list, so a
    /// scoring loop does not decode through the enum per posting.
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(u32, u32)) {
        match self {
            Postings::Pairs(p) => p.iter().for_each(|&(doc, tf)| f(doc, tf)),
            Postings::Bytes(b) => {
                for pair in b.chunks_exact(POSTING_BYTES) {
                    let doc = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
                    let tf = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
                    f(doc, tf);
                }
            }
        }
    }

    /// The first index at or after `from` whose doc is `>= doc` (or `len()`), found by
    /// galloping: cheap when the target is near, logarithmic when it is far.
    pub fn seek(&self, from: usize, doc: u32) -> usize {
        let len = self.len();
        if from >= len || self.get(from).0 >= doc {
            return from.min(len);
        }
        // Invariant: get(lo).0 < doc; find hi with get(hi).0 >= doc (or hi = len).
        let mut lo = from;
        let mut step = 1;
        let mut hi = loop {
            let probe = lo + step;
            if probe >= len {
                break len;
            }
            if self.get(probe).0 >= doc {
                break probe;
            }
            lo = probe;
            step *= 2;
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid).0 >= doc {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

/// Okapi BM25 over several sources as one corpus: N, average length and document
/// frequencies are summed over all `sources`, so a term's weight does not depend on which
/// segment a document happens to sit in. `accept(source, doc)` is asked once per matching
/// document, during scoring, so filtered-out and deleted documents never take a result slot.
/// Returns up to `k` `(source index, doc, score)`, best first (ties by source then doc).
/// Exact, with max-score pruning (see [`Bm25Query`]).
pub fn bm25(
    sources: &[&dyn LexicalSource],
    query: &str,
    k: usize,
    accept: &dyn Fn(usize, u32) -> bool,
) -> Vec<(usize, u32, f32)> {
    let Some(plan) = Bm25Query::new(sources, query) else {
        return Vec::new();
    };
    let mut hits: Vec<(usize, u32, f32)> = Vec::new();
    for si in 0..plan.n_sources() {
        hits.extend(
            plan.source_top_k(si, k, &|doc| accept(si, doc))
                .into_iter()
                .map(|(doc, score)| (si, doc, score)),
        );
    }
    merge_top_k(&mut hits, k);
    hits
}

/// One BM25 query planned over several sources as one corpus: term weights (from document
/// frequencies summed over every source) and score bounds are global; each source is then
/// scored on its own — on any thread — and the per-source top-k lists merge into the global
/// top k ([`merge_top_k`]). Exact: the global top k lies within the union of the sources'.
///
/// Per source, max-score pruning: terms are scored rarest (heaviest) first, and a term adds
/// at most `weight · (k1 + 1)` to any document. Once the source's k-th best score so far
/// exceeds what all the remaining terms together could add, no document untouched so far
/// can reach its top k, so the remaining terms — the common ones, whose posting lists are
/// the longest — only update the documents already scored, found by galloping through their
/// postings. A query mixing rare and common words thus reads a small part of the common
/// words' lists, with the same result as scoring every posting.
pub struct Bm25Query<'a> {
    avgdl: f32,
    /// Per term, heaviest first: its postings in each source and its weight (idf · qtf).
    terms: Vec<(Vec<Postings<'a>>, f32)>,
    /// `bound[i]`: the most terms `i..` can add to one document (with a rounding margin).
    bound: Vec<f32>,
    /// Per source: document count and lengths.
    docs: Vec<(usize, DocLens<'a>)>,
}

impl<'a> Bm25Query<'a> {
    /// `None` when nothing can match (no sources, no documents, no query term in any).
    pub fn new(sources: &[&'a dyn LexicalSource], query: &str) -> Option<Bm25Query<'a>> {
        let (query_terms, _) = term_counts(query);
        let n: f64 = sources.iter().map(|s| f64::from(s.n_docs())).sum();
        let total: f64 = sources.iter().map(|s| s.total_len() as f64).sum();
        if n == 0.0 || query_terms.is_empty() {
            return None;
        }
        let avgdl = (total / n).max(1.0) as f32;
        let mut terms: Vec<(Vec<Postings<'a>>, f32)> = query_terms
            .into_iter()
            .filter_map(|(term, qtf)| {
                let lists: Vec<Postings<'a>> = sources.iter().map(|s| s.postings(&term)).collect();
                let df = lists.iter().map(|p| p.len() as f64).sum::<f64>();
                (df > 0.0).then(|| {
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln() as f32;
                    (lists, idf * qtf as f32)
                })
            })
            .collect();
        if terms.is_empty() {
            return None;
        }
        terms.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut bound = vec![0.0f32; terms.len() + 1];
        for i in (0..terms.len()).rev() {
            bound[i] = bound[i + 1] + terms[i].1 * (BM25_K1 + 1.0) * BM25_BOUND_MARGIN;
        }
        let docs = sources
            .iter()
            .map(|s| (s.n_docs() as usize, s.doc_lens()))
            .collect();
        Some(Bm25Query {
            avgdl,
            terms,
            bound,
            docs,
        })
    }

    pub fn n_sources(&self) -> usize {
        self.docs.len()
    }

    /// Source `si`'s best `k` `(doc, score)` among the docs `accept` lets through (asked once
    /// per matching doc), best first, ties by doc.
    pub fn source_top_k(
        &self,
        si: usize,
        k: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let Some(&(n_docs, lens)) = self.docs.get(si) else {
            return Vec::new();
        };
        if k == 0 {
            return Vec::new();
        }
        ACCUMULATOR.with(|cell| {
            let mut acc = cell.borrow_mut();
            acc.prepare(n_docs);
            let top = self.score_source(&mut acc, si, lens, k, accept);
            acc.reset();
            top
        })
    }

    /// [`Bm25Query::source_top_k`] on a clean accumulator sized for the source.
    fn score_source(
        &self,
        acc: &mut Accumulator,
        si: usize,
        lens: DocLens<'_>,
        k: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let avgdl = self.avgdl;
        // True while a document not scored yet may still reach the top k.
        let mut open = true;
        for (ti, (lists, weight)) in self.terms.iter().enumerate() {
            let list = lists[si];
            if list.is_empty() {
                continue;
            }
            // The k-th score cannot exceed what the terms scored so far could add
            // (`bound[0] - bound[ti]`): skip the selection while that alone rules closing out.
            let may_close = !open || self.bound[ti] < self.bound[0] - self.bound[ti];
            if acc.touched.len() >= k && (may_close || list.len() >= PRUNE_LIST_MIN) {
                let kth = acc.kth_score(k);
                if open && self.bound[ti] < kth {
                    open = false;
                }
                // A doc that cannot reach the k-th score even with every remaining term is
                // out for good (the k-th score only grows): drop it, so the common terms'
                // long lists are probed, and the candidates selected and sorted, for fewer
                // docs. Open or not: a doc dropped now is rejected, never re-added later.
                acc.prune(kth - self.bound[ti], !open);
            }
            let score = |tf: u32, doc: u32| {
                let tf = tf as f32;
                let norm = 1.0 - BM25_B + BM25_B * lens.get(doc) as f32 / avgdl;
                weight * tf * (BM25_K1 + 1.0) / (tf + BM25_K1 * norm)
            };
            if open {
                let acc = &mut *acc;
                list.for_each(|doc, tf| {
                    let Some(st) = acc.state.get_mut(doc as usize) else {
                        return;
                    };
                    if *st == UNSEEN {
                        *st = if accept(doc) { ACCEPTED } else { REJECTED };
                        acc.seen.push(doc);
                        if *st == ACCEPTED {
                            acc.touched.push(doc);
                        }
                    }
                    if *st == ACCEPTED {
                        acc.scores[doc as usize] += score(tf, doc);
                    }
                });
            } else if acc.touched.len() * GALLOP_FACTOR < list.len() {
                // Few candidates against a long list: gallop to each (in doc order).
                let mut at = 0;
                for &doc in &acc.touched {
                    at = list.seek(at, doc);
                    if at == list.len() {
                        break;
                    }
                    let (d, tf) = list.get(at);
                    if d == doc {
                        acc.scores[doc as usize] += score(tf, doc);
                    }
                }
            } else {
                // Candidates are dense in this list: one pass, no new docs.
                let acc = &mut *acc;
                list.for_each(|doc, tf| {
                    if acc.state.get(doc as usize) == Some(&ACCEPTED) {
                        acc.scores[doc as usize] += score(tf, doc);
                    }
                });
            }
        }
        let mut hits: Vec<(usize, u32, f32)> = acc
            .touched
            .iter()
            .map(|&doc| (si, doc, acc.scores[doc as usize]))
            .collect();
        merge_top_k(&mut hits, k);
        hits.into_iter()
            .map(|(_, doc, score)| (doc, score))
            .collect()
    }
}

/// In open mode, candidates are pruned before a list at least this long (before shorter
/// ones only when the cheap test says the top k may close): the selection it costs is
/// repaid by the candidates a long list would otherwise keep updating. Unit tests use a
/// small value so their small corpora take this path too.
const PRUNE_LIST_MIN: usize = if cfg!(test) { 8 } else { 1024 };
/// Slack on a term's score bound so float rounding can never make pruning drop a document
/// that exact scoring would keep.
const BM25_BOUND_MARGIN: f32 = 1.001;
/// Galloping to each scored doc costs a few probes where a pass over the list costs one
/// step per posting: gallop only while the list is this many times longer.
const GALLOP_FACTOR: usize = 8;
/// Per-document states of an [`Accumulator`]: `accept` is asked once per document.
const UNSEEN: u8 = 0;
const ACCEPTED: u8 = 1;
const REJECTED: u8 = 2;

/// One source's scores: dense arrays (a hash map costs more than zeroed memory once a query
/// term is common), kept per thread and cleaned after each use by resetting only the docs
/// touched — allocating and zeroing them per query and source cost page faults on every
/// prepare of a large vault.
#[derive(Default)]
struct Accumulator {
    scores: Vec<f32>,
    state: Vec<u8>,
    /// Candidates: accepted documents that may still reach the top k, in first-scored order
    /// until pruning starts, then in doc order.
    touched: Vec<u32>,
    /// Every document whose state left `UNSEEN` (what [`Accumulator::reset`] must clean).
    seen: Vec<u32>,
    /// Reused buffer for [`Accumulator::kth_score`]'s selection.
    scratch: Vec<f32>,
    /// Set while a search uses the arrays: one interrupted by a panic left them dirty.
    in_use: bool,
    sorted: bool,
}

impl Accumulator {
    fn prepare(&mut self, n_docs: usize) {
        if self.in_use {
            self.scores.fill(0.0);
            self.state.fill(UNSEEN);
            self.touched.clear();
            self.seen.clear();
        }
        if self.scores.len() < n_docs {
            self.scores.resize(n_docs, 0.0);
            self.state.resize(n_docs, UNSEEN);
        }
        self.in_use = true;
        self.sorted = false;
    }

    fn reset(&mut self) {
        for &doc in &self.seen {
            self.scores[doc as usize] = 0.0;
            self.state[doc as usize] = UNSEEN;
        }
        self.touched.clear();
        self.seen.clear();
        self.in_use = false;
    }

    /// The `k`-th best score among the candidates (`touched.len() >= k`).
    fn kth_score(&mut self, k: usize) -> f32 {
        let scores = &self.scores;
        self.scratch.clear();
        self.scratch
            .extend(self.touched.iter().map(|&d| scores[d as usize]));
        let (_, kth, _) = self
            .scratch
            .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        *kth
    }

    /// Drops the candidates scoring below `min` (marking them rejected, so a one-pass update
    /// skips them), and puts the rest in doc order for galloping.
    fn prune(&mut self, min: f32, sort: bool) {
        let (scores, state) = (&self.scores, &mut self.state);
        self.touched.retain(|&d| {
            let keep = scores[d as usize] >= min;
            if !keep {
                state[d as usize] = REJECTED;
            }
            keep
        });
        if sort && !self.sorted {
            self.touched.sort_unstable();
            self.sorted = true;
        }
    }
}

thread_local! {
    static ACCUMULATOR: std::cell::RefCell<Accumulator> =
        std::cell::RefCell::new(Accumulator::default());
}

/// Sorts best first (score desc, then source, then doc for determinism) and keeps `k`.
pub fn merge_top_k(hits: &mut Vec<(usize, u32, f32)>, k: usize) {
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
