//! The memtable's mutable BM25 index, and the per-text term counts both indexes are built from.
//!
//! Compact by construction, because a memtable holds it until the seal: a vault's chat texts
//! bring hundreds of thousands of distinct terms (numbers, names, ids), most with one or two
//! postings. The first version kept a `HashMap<String, Vec<(u32, u32)>>`: two heap blocks per
//! term (its key and its list) and a 48-byte bucket, ~130 bytes for a term seen once —
//! heaptrack put 228 of 711 MiB at the peak of four 8 MiB ingests there. Now:
//! - every term's bytes sit once in one arena (`term_bytes`), and the term table is a
//!   `Vec<Term>` of 16-byte entries indexed by a dense term id;
//! - the lookup table maps a 64-bit hash of the term to its id (12 bytes a bucket); the rare
//!   term whose hash another term already holds goes to a small overflow map;
//! - every posting list lives in one pool of `(doc, tf)` pairs, in a region of a power-of-two
//!   capacity: a list that outgrows its region moves to one twice as large and leaves the old
//!   one on a free list of its size, which the next list to grow through that size reuses.
//!   Lists stay contiguous, so searches read them as plain slices, as before.
//!
//! A term seen once thus costs its bytes plus ~40 (entry, bucket, one pair); each further
//! posting 8 bytes and the spare half of its region at worst.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use super::file::encode;
use super::{DocLens, LexicalSource, Postings};
use crate::analyzer::TermCounts;

/// Counts each distinct term of `text` once, with its frequency, in first-seen order; and
/// the text's length in terms.
pub(crate) fn term_counts(text: &str) -> (Vec<(String, u32)>, u32) {
    let counts = TermCounts::of(text);
    let pairs = counts.iter().map(|(t, tf)| (t.to_owned(), tf)).collect();
    (pairs, counts.n_terms())
}

/// One distinct term: where its bytes and its posting list are.
#[derive(Debug, Clone, Copy)]
struct Term {
    bytes_off: u32,
    bytes_len: u32,
    /// First pair of its region in `pool` (meaningless while `len` is 0).
    start: u32,
    /// Postings in the list; the region's capacity is `len.next_power_of_two()`.
    len: u32,
}

/// Heap bytes per bucket of `by_hash`: a `(u64, u32)` padded to 16, one control byte, and
/// the eighth of the buckets a hash table keeps empty.
const BUCKET_BYTES: usize = 19;
/// Heap bytes per entry of the overflow map (key `Box<str>` header and block, bucket).
const OVERFLOW_ENTRY_BYTES: usize = 96;

/// `Hasher` for keys that are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; fold anything else in rather than drop it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The mutable index of a memtable. Each doc id is meant to be added once, in increasing
/// order (a memtable appends); adding the most recent id again extends that document.
#[derive(Debug, Default)]
pub struct MemLexical {
    /// Keyed by the user's own terms in the user's own vault, so a fast unkeyed-quality
    /// hash is enough (SipHash showed up in ingest profiles); foldhash still seeds per map.
    seed: foldhash::fast::RandomState,
    /// Term hash → term id, for the first term with that hash.
    by_hash: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    /// Terms whose hash an earlier term holds in `by_hash` (64-bit collisions: rare).
    overflow: foldhash::HashMap<Box<str>, u32>,
    terms: Vec<Term>,
    /// Every term's UTF-8, concatenated in id order.
    term_bytes: String,
    /// Every posting list, each in its own region (see the module docs).
    pool: Vec<(u32, u32)>,
    /// `free[c]`: starts of unused regions of `2^c` pairs.
    free: Vec<Vec<u32>>,
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
            let hash = self.hash(term);
            let id = match self.find(hash, term) {
                Some(id) => id,
                None => self.intern(hash, term),
            };
            self.push(id, doc, tf);
        }
    }

    fn hash(&self, term: &str) -> u64 {
        self.seed.hash_one(term.as_bytes())
    }

    fn find(&self, hash: u64, term: &str) -> Option<u32> {
        let id = *self.by_hash.get(&hash)?;
        if self.term(id) == term {
            return Some(id);
        }
        self.overflow.get(term).copied()
    }

    /// Adds `term` (not present yet) with an empty list; returns its id.
    fn intern(&mut self, hash: u64, term: &str) -> u32 {
        let id = to_u32(self.terms.len());
        match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.overflow.insert(term.into(), id);
            }
        }
        self.terms.push(Term {
            bytes_off: to_u32(self.term_bytes.len()),
            bytes_len: to_u32(term.len()),
            start: 0,
            len: 0,
        });
        self.term_bytes.push_str(term);
        id
    }

    /// Appends `(doc, tf)` to term `id`'s list, or adds `tf` to its last posting when that is
    /// `doc` already (only the last can be: docs are added in order).
    fn push(&mut self, id: u32, doc: u32, tf: u32) {
        let Term { start, len, .. } = self.terms[id as usize];
        let (start, len) = (start as usize, len as usize);
        if len > 0 && self.pool[start + len - 1].0 == doc {
            let last = &mut self.pool[start + len - 1].1;
            *last = last.saturating_add(tf);
            return;
        }
        // A full region (len 0 or a power of two) moves to one twice as large.
        let start = if len.is_power_of_two() || len == 0 {
            let moved = self.alloc(if len == 0 { 1 } else { 2 * len });
            if len > 0 {
                self.pool.copy_within(start..start + len, moved);
                self.free_region(start, len);
            }
            moved
        } else {
            start
        };
        self.pool[start + len] = (doc, tf);
        let term = &mut self.terms[id as usize];
        term.start = to_u32(start);
        term.len = to_u32(len + 1);
    }

    /// A region of `cap` pairs (a power of two): a free one of that size, or new at the end.
    fn alloc(&mut self, cap: usize) -> usize {
        let class = cap.trailing_zeros() as usize;
        if let Some(start) = self.free.get_mut(class).and_then(Vec::pop) {
            return start as usize;
        }
        let start = self.pool.len();
        self.pool.resize(start + cap, (0, 0));
        start
    }

    fn free_region(&mut self, start: usize, cap: usize) {
        let class = cap.trailing_zeros() as usize;
        if self.free.len() <= class {
            self.free.resize_with(class + 1, Vec::new);
        }
        self.free[class].push(to_u32(start));
    }

    fn term(&self, id: u32) -> &str {
        let t = &self.terms[id as usize];
        &self.term_bytes[t.bytes_off as usize..(t.bytes_off + t.bytes_len) as usize]
    }

    fn list(&self, id: u32) -> &[(u32, u32)] {
        let t = &self.terms[id as usize];
        &self.pool[t.start as usize..(t.start + t.len) as usize]
    }

    /// Number of distinct terms.
    pub fn n_terms(&self) -> usize {
        self.terms.len()
    }

    /// Heap bytes held, from capacities (every table and arena), O(1 + size classes).
    pub fn heap_bytes(&self) -> usize {
        self.pool.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.terms.capacity() * std::mem::size_of::<Term>()
            + self.term_bytes.capacity()
            + self.by_hash.capacity() * BUCKET_BYTES
            + self.overflow.capacity() * OVERFLOW_ENTRY_BYTES
            + self.free.iter().map(Vec::capacity).sum::<usize>() * std::mem::size_of::<u32>()
            + self.doc_lens.capacity() * std::mem::size_of::<u32>()
    }

    /// Term ids in the byte order of their terms: the order of a segment file's dictionary.
    /// Sorted by a key holding each term's first 16 bytes, so most comparisons read the
    /// contiguous keys and only ties look the terms up: comparing through the arena was a
    /// cache miss or two per comparison, and made a seal cost more than the analysis it
    /// replaces (a third of a large ingest's CPU in the first version, against 8 %).
    pub(crate) fn sorted_terms(&self) -> Vec<u32> {
        let mut keyed: Vec<(u128, u32)> = (0..to_u32(self.terms.len()))
            .map(|id| (prefix_key(self.term(id).as_bytes()), id))
            .collect();
        keyed.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| self.term(a.1).as_bytes().cmp(self.term(b.1).as_bytes()))
        });
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    /// The lexical file of a segment whose doc `i` is this index's doc `docs[i]`, built from
    /// the postings held here instead of analysing every text again: the same bytes
    /// [`super::LexicalBuilder`] writes for those docs' texts. `order` is
    /// [`MemLexical::sorted_terms`] (computed once for all the segments of a seal).
    pub(crate) fn segment_file(&self, order: &[u32], docs: &[u32]) -> Vec<u8> {
        const ABSENT: u32 = u32::MAX;
        let mut local = vec![ABSENT; self.doc_lens.len()];
        for (i, &doc) in docs.iter().enumerate() {
            if let Some(slot) = local.get_mut(doc as usize) {
                *slot = to_u32(i);
            }
        }
        let doc_lens: Vec<u32> = docs.iter().map(|&d| self.doc_len(d)).collect();
        // Per term present in these docs: the term and its range in `postings`.
        let mut entries: Vec<(&str, usize, usize)> = Vec::new();
        let mut postings: Vec<(u32, u32)> = Vec::new();
        for &id in order {
            let from = postings.len();
            for &(doc, tf) in self.list(id) {
                match local.get(doc as usize) {
                    Some(&l) if l != ABSENT => postings.push((l, tf)),
                    _ => {}
                }
            }
            if postings.len() > from {
                // Memtable docs follow the WAL, segment docs the ids: concurrent ingests
                // can append out of id order.
                let list = &mut postings[from..];
                if !list.is_sorted_by_key(|p| p.0) {
                    list.sort_unstable_by_key(|p| p.0);
                }
                entries.push((self.term(id), from, postings.len()));
            }
        }
        encode(
            &doc_lens,
            entries
                .iter()
                .map(|&(term, from, to)| (term, &postings[from..to])),
        )
    }
}

/// The first 16 bytes of `term`, big-endian, zero-padded: keys compare as the terms' first
/// 16 bytes do, a shorter term first among equal bytes (zero is the least byte); equal keys
/// need the whole terms compared.
fn prefix_key(term: &[u8]) -> u128 {
    let mut key = [0u8; 16];
    let n = term.len().min(16);
    key[..n].copy_from_slice(&term[..n]);
    u128::from_be_bytes(key)
}

/// Positions and counts in the index are `u32`: a memtable is sealed long before 4 G terms,
/// term bytes or postings (`VaultOptions::memtable_bytes_max` is bounded far below).
fn to_u32(n: usize) -> u32 {
    debug_assert!(u32::try_from(n).is_ok(), "memtable lexical index past u32");
    n as u32
}

impl LexicalSource for MemLexical {
    fn n_docs(&self) -> u32 {
        u32::try_from(self.doc_lens.len()).unwrap_or(u32::MAX)
    }
    fn total_len(&self) -> u64 {
        self.total_len
    }
    fn doc_freq(&self, term: &str) -> u32 {
        self.find(self.hash(term), term)
            .map_or(0, |id| self.terms[id as usize].len)
    }
    fn postings(&self, term: &str) -> Postings<'_> {
        match self.find(self.hash(term), term) {
            Some(id) => Postings::Pairs(self.list(id)),
            None => Postings::Pairs(&[]),
        }
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
    use crate::lexical::{LexicalBuilder, LexicalView};
    use proptest::prelude::*;

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

        /// The seal's lexical files come from the memtable's postings: for any docs, any
        /// split into segments, any order of docs within them and any docs left out
        /// (deleted), the bytes are exactly those `LexicalBuilder` writes from the texts.
        #[test]
        fn segment_files_from_postings_are_the_builders_bytes(
            texts in proptest::collection::vec(arbitrary_text(), 1..24),
            keep in proptest::collection::vec(any::<bool>(), 24),
            shuffle in any::<u64>(),
            split in 1usize..6,
        ) {
            let mut index = MemLexical::new();
            for (doc, text) in texts.iter().enumerate() {
                index.add(doc as u32, text);
            }
            let mut docs: Vec<u32> =
                (0..texts.len() as u32).filter(|&d| keep[d as usize]).collect();
            // A deterministic shuffle: memtable order is not segment order.
            let mut x = shuffle | 1;
            for i in (1..docs.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                docs.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let order = index.sorted_terms();
            for part in docs.chunks(split) {
                let mut builder = LexicalBuilder::new();
                for (i, &d) in part.iter().enumerate() {
                    builder.add(i as u32, &texts[d as usize]);
                }
                let expected = builder.finish();
                let got = index.segment_file(&order, part);
                prop_assert!(LexicalView::parse(&got).is_ok());
                prop_assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn lists_grow_through_reused_regions_and_stay_exact() {
        // Many terms growing at different rates: regions move and are reused; every list
        // must still read back exactly, and the pool stays within twice the postings.
        let mut index = MemLexical::new();
        let mut expected: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        for doc in 0..600u32 {
            let text: Vec<String> = (0..40)
                .filter(|t| doc % (t + 1) == 0)
                .map(|t| format!("term{t}x"))
                .collect();
            let text = text.join(" ");
            index.add(doc, &text);
            for (term, tf) in term_counts(&text).0 {
                expected.entry(term).or_default().push((doc, tf));
            }
        }
        let postings: usize = expected.values().map(Vec::len).sum();
        for (term, list) in &expected {
            let Postings::Pairs(got) = index.postings(term) else {
                panic!("pairs");
            };
            assert_eq!(got, list.as_slice(), "{term}");
        }
        // A list of n postings sits in a region of at most 2n and left regions of less than
        // 2n behind it (some of them reused by other lists since).
        assert!(
            index.pool.len() <= 4 * postings,
            "{} pairs for {postings}",
            index.pool.len()
        );
        assert!(
            index.free.iter().any(|f| !f.is_empty()),
            "some regions wait on free lists"
        );
    }

    #[test]
    fn terms_sort_in_byte_order_past_their_16_byte_keys() {
        let mut index = MemLexical::new();
        let terms = [
            "abcdefghijklmnopqrst",
            "abcdefghijklmnopq",
            "abcdefghijklmnopqz",
            "abcdefghijklmnop",
            "abc",
            "b",
            "abc\u{0}",
            "zé",
            "abcdefghijklmnopqrss",
        ];
        for t in terms {
            let hash = index.hash(t);
            index.intern(hash, t);
        }
        let got: Vec<&str> = index
            .sorted_terms()
            .into_iter()
            .map(|id| index.term(id))
            .collect();
        let mut want = terms.to_vec();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn terms_that_share_a_hash_stay_apart() {
        // Force every term into one hash bucket: lookups must go through the overflow map.
        let mut index = MemLexical::new();
        let counts = |text: &str| TermCounts::of(text);
        for (doc, text) in ["alpha beta", "beta gamma", "gamma alpha delta"]
            .iter()
            .enumerate()
        {
            let terms = counts(text);
            for (term, tf) in terms.iter() {
                let id = index.find(7, term).unwrap_or_else(|| index.intern(7, term));
                index.push(id, doc as u32, tf);
            }
        }
        assert_eq!(index.overflow.len(), 3);
        let id = |index: &MemLexical, t: &str| index.find(7, t).map(|id| index.list(id).to_vec());
        assert_eq!(id(&index, "alpha"), Some(vec![(0, 1), (2, 1)]));
        assert_eq!(id(&index, "beta"), Some(vec![(0, 1), (1, 1)]));
        assert_eq!(id(&index, "gamma"), Some(vec![(1, 1), (2, 1)]));
        assert_eq!(id(&index, "delta"), Some(vec![(2, 1)]));
        assert_eq!(id(&index, "epsilon"), None);
    }

    #[test]
    fn heap_bytes_grow_with_terms_and_postings() {
        let mut index = MemLexical::new();
        assert_eq!(index.heap_bytes(), 0);
        index.add(0, "one two three");
        let small = index.heap_bytes();
        assert!(small >= 3 * 16 + 3 * 8, "{small}");
        let text: String = (0..5000).map(|i| format!("w{i} ")).collect();
        index.add(1, &text);
        // 5000 more terms: entries, pairs and buckets at least.
        assert!(
            index.heap_bytes() >= small + 5000 * (16 + 8 + 12),
            "{}",
            index.heap_bytes()
        );
    }
}
